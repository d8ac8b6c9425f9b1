//! The Conversations and Flex Interactions REST clients against a fake Twilio that records what
//! it receives: the paths, methods, forms and credentials Twilio documents.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use relaybot::twilio::{
    conversations::{ConversationsClient, WebhookConfiguration},
    flex::{
        ChannelProperties, InteractionChannel, InteractionRouting, InteractionsClient,
        RoutingProperties,
    },
    rest::{Rest, RestError},
};
use secrecy::SecretString;
use serde_json::{json, Value};

/// One request as the fake received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    authorization: String,
    form: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Arc<Mutex<VecDeque<(u16, Value)>>>,
}

async fn record(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        form: serde_urlencoded::from_bytes(&body).unwrap_or_default(),
    });
    let (status, body) = fake
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, json!({})));
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn start() -> (String, Fake) {
    let fake = Fake::default();
    let app = Router::new().fallback(record).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, fake)
}

/// One REST core for both clients, as the server will share it.
fn rest() -> Rest {
    Rest::new(
        "AC123",
        SecretString::from("auth-token".to_owned()),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// Basic auth as Twilio expects it: the account SID and the auth token.
const BASIC: &str = "Basic QUMxMjM6YXV0aC10b2tlbg==";

#[tokio::test]
async fn conversations_calls_are_the_documented_requests() {
    let (base, fake) = start().await;
    let client = ConversationsClient::new(&base, rest());
    fake.answers.lock().unwrap().extend([
        (201, json!({"sid": "IM1", "body": "Hi"})),
        (200, json!({"sid": "CH1", "attributes": "{\"handedOff\":true}", "state": "active"})),
        (200, json!({})),
        (200, json!({"webhooks": [
            {"sid": "WH1", "target": "webhook", "configuration": {"url": "https://bot.example.com/conversations/webhook", "method": "POST", "filters": ["onMessageAdded"]}},
            {"sid": "WH2", "target": "studio", "configuration": {"flow_sid": "FW1"}}
        ], "meta": {}})),
        (204, Value::Null),
        (404, json!({"code": 20404, "message": "not found"})),
    ]);

    assert_eq!(
        client.post_message("CH1", "relaybot", "Hi").await.unwrap(),
        "IM1"
    );
    let conversation = client.fetch("CH1").await.unwrap();
    assert_eq!(
        conversation.attributes.as_deref(),
        Some("{\"handedOff\":true}")
    );
    assert_eq!(conversation.state.as_deref(), Some("active"));
    client
        .update("CH1", Some("{\"handedOff\":true}"), Some("closed"))
        .await
        .unwrap();
    let webhooks = client.webhooks("CH1").await.unwrap();
    assert_eq!(webhooks.len(), 2);
    assert_eq!(
        webhooks[0].configuration,
        WebhookConfiguration {
            url: Some("https://bot.example.com/conversations/webhook".into())
        }
    );
    client.delete_webhook("CH1", "WH1").await.unwrap();
    client
        .delete_webhook("CH1", "WH1")
        .await
        .expect("already gone counts as deleted");

    let seen = fake.seen.lock().unwrap().clone();
    let calls: Vec<(Method, &str)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        vec![
            (Method::POST, "/v1/Conversations/CH1/Messages"),
            (Method::GET, "/v1/Conversations/CH1"),
            (Method::POST, "/v1/Conversations/CH1"),
            (Method::GET, "/v1/Conversations/CH1/Webhooks"),
            (Method::DELETE, "/v1/Conversations/CH1/Webhooks/WH1"),
            (Method::DELETE, "/v1/Conversations/CH1/Webhooks/WH1"),
        ]
    );
    assert!(seen.iter().all(|s| s.authorization == BASIC));
    assert_eq!(seen[0].field("Author"), Some("relaybot"));
    assert_eq!(seen[0].field("Body"), Some("Hi"));
    assert_eq!(seen[2].field("Attributes"), Some("{\"handedOff\":true}"));
    assert_eq!(seen[2].field("State"), Some("closed"));
}

#[tokio::test]
async fn an_interaction_carries_the_documented_channel_and_routing() {
    let (base, fake) = start().await;
    let client = InteractionsClient::new(&base, rest());
    fake.answers
        .lock()
        .unwrap()
        .push_back((201, json!({"sid": "KD1", "interaction_context_sid": "UO1"})));
    let sid = client
        .create(
            &InteractionChannel {
                kind: "sms".into(),
                initiated_by: "customer".into(),
                properties: ChannelProperties {
                    media_channel_sid: "CH1".into(),
                },
            },
            &InteractionRouting {
                properties: RoutingProperties {
                    workspace_sid: "WS1".into(),
                    workflow_sid: Some("WW1".into()),
                    task_channel_unique_name: "chat".into(),
                    attributes: json!({"from": "+15551230000", "handoff_reason": "asked for a person"}),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(sid, "KD1");
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.clone(), seen.path.as_str()),
        (Method::POST, "/v1/Interactions")
    );
    assert_eq!(seen.authorization, BASIC);
    let channel: Value = serde_json::from_str(seen.field("Channel").unwrap()).unwrap();
    assert_eq!(
        channel,
        json!({"type": "sms", "initiated_by": "customer", "properties": {"media_channel_sid": "CH1"}})
    );
    let routing: Value = serde_json::from_str(seen.field("Routing").unwrap()).unwrap();
    assert_eq!(
        routing,
        json!({"properties": {
            "workspace_sid": "WS1", "workflow_sid": "WW1", "task_channel_unique_name": "chat",
            "attributes": {"from": "+15551230000", "handoff_reason": "asked for a person"}
        }})
    );
}

/// Twilio's error body becomes a typed error with its code; 429 and 5xx are retried (bounded),
/// a 4xx is not.
#[tokio::test]
async fn errors_carry_twilio_codes_and_only_retryable_ones_are_retried() {
    let (base, fake) = start().await;
    let client = ConversationsClient::new(&base, rest());
    fake.answers.lock().unwrap().extend([
        (429, json!({"code": 20429, "message": "Too Many Requests"})),
        (201, json!({"sid": "IM2"})),
        (400, json!({"code": 50407, "message": "bad author"})),
    ]);
    let sid = Rest::with_retries("Conversations API", 3, || {
        client.post_message("CH1", "relaybot", "Hi")
    })
    .await
    .unwrap();
    assert_eq!(sid, "IM2", "the 429 was retried");
    let refused = Rest::with_retries("Conversations API", 3, || {
        client.post_message("CH1", "relaybot", "Hi")
    })
    .await;
    assert_eq!(
        refused,
        Err(RestError::Status {
            status: 400,
            code: Some(50407),
            message: "bad author".into()
        })
    );
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        3,
        "the 400 was not retried"
    );
}
