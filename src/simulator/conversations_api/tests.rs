//! The fake against the real clients, and the customer's signed deliveries.

use super::*;
use crate::chat::WEBHOOK_PATH;
use crate::simulator::chat_customer::{iso8601, ChatCustomer};
use crate::twilio::signature;
use crate::twilio::{
    conversations::ConversationsClient,
    flex::{
        ChannelProperties, InteractionChannel, InteractionRouting, InteractionsClient,
        RoutingProperties,
    },
    rest::{Rest, RestError},
};
use secrecy::SecretString;
use std::time::UNIX_EPOCH;

fn rest() -> Rest {
    Rest::new(
        "AC123",
        SecretString::from("token".to_owned()),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// A short name for an event's variant.
fn kind(event: &ApiEvent) -> &'static str {
    match event {
        ApiEvent::ConversationCreated { .. } => "created",
        ApiEvent::ParticipantAdded { .. } => "participant",
        ApiEvent::WebhookCreated { .. } => "webhook created",
        ApiEvent::MessagePosted { .. } => "message",
        ApiEvent::WebhookDeleted { .. } => "webhook deleted",
        ApiEvent::ConversationUpdated { .. } => "updated",
        ApiEvent::InteractionCreated(_) => "interaction",
        ApiEvent::Refused { .. } => "refused",
    }
}

#[test]
fn paths_match_by_trailing_segments() {
    assert!(path_matches("/Messages", "/v1/Conversations/CH1/Messages"));
    assert!(path_matches("/v1/Conversations/*", "/v1/Conversations/CH1"));
    assert!(!path_matches(
        "/v1/Conversations/*",
        "/v1/Conversations/CH1/Messages"
    ));
    assert!(path_matches(
        "/Webhooks/*",
        "/v1/Conversations/CH1/Webhooks/WH1"
    ));
    assert!(path_matches("/v1/Interactions", "/v1/Interactions"));
    assert!(!path_matches("/Messages/x", "/Messages"));
}

#[test]
fn timestamps_are_utc_iso8601() {
    let t = UNIX_EPOCH + Duration::from_millis(1_772_446_500_042);
    assert_eq!(iso8601(t, false), "2026-03-02T10:15:00Z");
    assert_eq!(iso8601(t, true), "2026-03-02T10:15:00.042Z");
    assert_eq!(iso8601(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
}

/// The real clients against the fake: every call they make is answered in a shape they
/// read, and the state and events follow.
#[tokio::test]
async fn the_clients_work_against_the_fake() {
    let fake = FakeConversationsApi::start().await.unwrap();
    let wh = fake.add_conversation("CH1", "https://bot.example/conversations/webhook");
    let client = ConversationsClient::new(&fake.base_url, rest());
    let mut events = fake.subscribe();

    let sid = client
        .post_message("CH1", "relaybot", "Hello")
        .await
        .unwrap();
    assert!(sid.starts_with("IM"));
    let hooks = client.webhooks("CH1").await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].sid, wh);
    assert_eq!(
        hooks[0].configuration.url.as_deref(),
        Some("https://bot.example/conversations/webhook")
    );
    client.delete_webhook("CH1", &wh).await.unwrap();
    client
        .delete_webhook("CH1", &wh)
        .await
        .expect("a 404 counts as deleted");
    client
        .update("CH1", Some(r#"{"handedOff":true}"#), None)
        .await
        .unwrap();
    let conversation = client.fetch("CH1").await.unwrap();
    assert_eq!(
        conversation.attributes.as_deref(),
        Some(r#"{"handedOff":true}"#)
    );
    assert_eq!(conversation.state.as_deref(), Some("active"));

    let interactions = InteractionsClient::new(&fake.base_url, rest());
    let kd = interactions
        .create(
            &InteractionChannel {
                kind: "web".into(),
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
                    attributes: json!({"from": "FX1"}),
                },
            },
        )
        .await
        .unwrap();
    assert!(kd.starts_with("KD"));
    assert_eq!(fake.interactions()[0].channel_type(), Some("web"));
    assert_eq!(fake.interactions()[0].task_attributes()["from"], "FX1");

    client.update("CH1", None, Some("closed")).await.unwrap();
    let refused = client.post_message("CH1", "relaybot", "Still there?").await;
    assert!(
        matches!(
            refused,
            Err(RestError::Status {
                status: 400,
                code: Some(50377),
                ..
            })
        ),
        "{refused:?}"
    );

    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(kind(&event));
    }
    assert_eq!(
        kinds,
        [
            "message",
            "webhook deleted",
            "refused",
            "updated",
            "interaction",
            "updated",
            "refused"
        ]
    );
    let conversation = fake.conversation("CH1").unwrap();
    assert!(conversation.is_closed() && conversation.handed_off());
    assert!(conversation.webhooks.is_empty());
    assert_eq!(fake.messages("CH1").len(), 1);
    let requests = fake.requests();
    assert_eq!(requests.len(), 9);
    assert_eq!(
        requests[0].basic_auth(),
        Some(("AC123".into(), "token".into()))
    );
    assert_eq!(requests[0].field("Author"), Some("relaybot"));
}

#[tokio::test]
async fn injected_failures_are_served_then_cleared() {
    let fake = FakeConversationsApi::start().await.unwrap();
    fake.fail_next(Method::POST, "/Messages", 503, 2);
    let client = ConversationsClient::new(&fake.base_url, rest());
    let sid = Rest::with_retries("test", 3, || client.post_message("CH9", "relaybot", "Hi"))
        .await
        .unwrap();
    assert_eq!(fake.messages("CH9")[0].sid, sid);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 201]);
    let posted = fake
        .wait_for_message("CH9", 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(posted.body, "Hi");
    assert!(fake
        .wait_for_message("CH9", 2, Duration::from_millis(50))
        .await
        .is_none());

    fake.remove_conversation("CH9");
    assert!(matches!(
        client.fetch("CH9").await,
        Err(RestError::Status {
            status: 404,
            code: Some(20404),
            ..
        })
    ));
    fake.require_auth("AC123", "other");
    assert!(matches!(
        client.fetch("CH2").await,
        Err(RestError::Status {
            status: 401,
            code: Some(20003),
            ..
        })
    ));
}

/// The customer's deliveries: signed over the signing base, fields as Twilio sends them,
/// redeliveries with the same MessageSid and a RetryCount.
#[tokio::test]
async fn the_customer_signs_and_redelivers() {
    use axum::routing::post;
    /// The signature header and the form of each delivery.
    type Deliveries = Arc<Mutex<Vec<(Option<String>, Vec<(String, String)>)>>>;
    let seen: Deliveries = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        WEBHOOK_PATH,
        post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let sig = headers
                    .get(signature::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let form = serde_urlencoded::from_bytes(&body).unwrap();
                record.lock().unwrap().push((sig, form));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut customer = ChatCustomer::new(
        &base,
        "https://pub.example",
        Some("secret".into()),
        "CH1",
        "FXabc",
        "WH1",
    );
    assert_eq!(customer.conversation_added().await.unwrap(), StatusCode::OK);
    let (status, sid) = customer.send("Hello").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    customer.send_media_only().await.unwrap();
    customer.redeliver(&sid).await.unwrap();
    assert!(customer.redeliver("IMnope").await.is_err());
    server.abort();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for (sig, form) in &seen {
        assert_eq!(
            sig.as_deref(),
            Some(
                signature::sign("secret", "https://pub.example/conversations/webhook", form)
                    .as_str()
            )
        );
    }
    let get = |i: usize, name: &str| {
        seen[i]
            .1
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get(0, "EventType").as_deref(), Some("onConversationAdded"));
    assert_eq!(get(0, "WebhookSid"), None);
    assert_eq!(get(1, "EventType").as_deref(), Some("onMessageAdded"));
    assert_eq!(get(1, "Index").as_deref(), Some("0"));
    assert_eq!(get(1, "WebhookSid").as_deref(), Some("WH1"));
    assert_eq!(get(1, "ClientIdentity").as_deref(), Some("FXabc"));
    assert_eq!(get(1, "RetryCount"), None);
    assert_eq!(get(2, "Index").as_deref(), Some("1"));
    assert_eq!(get(2, "Body").as_deref(), Some(""));
    assert!(get(2, "Media").unwrap().contains("image/jpeg"));
    assert_eq!(get(3, "MessageSid"), Some(sid));
    assert_eq!(get(3, "RetryCount").as_deref(), Some("1"));
}

/// The form fields as `(&str, &str)` pairs, for exact comparisons.
fn form_of(request: &ApiRequest) -> Vec<(&str, &str)> {
    request
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

const FILTERS: [&str; 4] = [
    "onMessageAdded",
    "onParticipantAdded",
    "onParticipantRemoved",
    "onConversationStateUpdated",
];

/// The escalation's calls: create, add the visitor (twice: the second is a success naming the
/// same participant), subscribe with repeated filters, post a transcript line with attributes;
/// the forms exactly as sent, the state and the events.
#[tokio::test]
async fn the_escalation_calls_send_exact_forms() {
    let fake = FakeConversationsApi::start().await.unwrap();
    let client = ConversationsClient::new(&fake.base_url, rest());
    let attributes = r#"{"visitor":"v-1","reason":"billing"}"#;

    let ch = client.create("web-v-1", attributes).await.unwrap();
    assert!(ch.starts_with("CH") && ch.len() == 34, "{ch}");
    let mb = client
        .add_participant(&ch, "v-1", r#"{"friendlyName":"Visitor"}"#)
        .await
        .unwrap();
    assert!(mb.starts_with("MB"), "{mb}");
    let again = client.add_participant(&ch, "v-1", "{}").await.unwrap();
    assert_eq!(
        again, mb,
        "50433 is a success naming the existing participant"
    );
    let wh = client
        .create_webhook(&ch, "https://bot.example/conversations/webhook", &FILTERS)
        .await
        .unwrap();
    assert!(wh.starts_with("WH"), "{wh}");
    let im = client
        .post_message_with(
            &ch,
            "Relaybot",
            "Hi!",
            Some(r#"{"at":"2026-03-02T10:15:00Z"}"#),
        )
        .await
        .unwrap();
    assert!(im.starts_with("IM"));
    client.post_message(&ch, "v-1", "Hello").await.unwrap();

    let requests = fake.requests();
    let paths: Vec<(&str, &str, u16)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    let at = |rest: &str| format!("/v1/Conversations/{ch}{rest}");
    assert_eq!(
        paths,
        [
            ("POST", "/v1/Conversations", 201),
            ("POST", at("/Participants").as_str(), 201),
            ("POST", at("/Participants").as_str(), 409),
            ("GET", at("/Participants").as_str(), 200),
            ("POST", at("/Webhooks").as_str(), 201),
            ("POST", at("/Messages").as_str(), 201),
            ("POST", at("/Messages").as_str(), 201),
        ]
    );
    assert_eq!(
        form_of(&requests[0]),
        [
            ("FriendlyName", "web-v-1"),
            ("Attributes", attributes),
            ("State", "active")
        ]
    );
    assert_eq!(
        form_of(&requests[1]),
        [
            ("Identity", "v-1"),
            ("Attributes", r#"{"friendlyName":"Visitor"}"#)
        ]
    );
    assert_eq!(
        form_of(&requests[4]),
        [
            ("Target", "webhook"),
            (
                "Configuration.Url",
                "https://bot.example/conversations/webhook"
            ),
            ("Configuration.Method", "POST"),
            ("Configuration.Filters", "onMessageAdded"),
            ("Configuration.Filters", "onParticipantAdded"),
            ("Configuration.Filters", "onParticipantRemoved"),
            ("Configuration.Filters", "onConversationStateUpdated"),
        ]
    );
    assert_eq!(
        form_of(&requests[5]),
        [
            ("Author", "Relaybot"),
            ("Body", "Hi!"),
            ("Attributes", r#"{"at":"2026-03-02T10:15:00Z"}"#)
        ]
    );
    assert_eq!(
        form_of(&requests[6]),
        [("Author", "v-1"), ("Body", "Hello")]
    );

    let conversation = fake.conversation(&ch).unwrap();
    assert_eq!(conversation.friendly_name, "web-v-1");
    assert_eq!(conversation.attributes, attributes);
    assert_eq!(conversation.state, "active");
    assert_eq!(
        conversation.participants,
        [FakeParticipant {
            sid: mb.clone(),
            identity: "v-1".into(),
            attributes: r#"{"friendlyName":"Visitor"}"#.into(),
        }]
    );
    assert_eq!(conversation.webhooks[0].filters, FILTERS);
    assert_eq!(conversation.webhooks[0].method, "POST");
    let messages = fake.messages(&ch);
    assert_eq!(
        messages[0].attributes.as_deref(),
        Some(r#"{"at":"2026-03-02T10:15:00Z"}"#)
    );
    assert_eq!(messages[1].attributes, None);
    assert_eq!(
        client.participants(&ch).await.unwrap()[0]
            .identity
            .as_deref(),
        Some("v-1")
    );
    let hooks = client.webhooks(&ch).await.unwrap();
    assert_eq!(hooks[0].sid, wh);

    let events = fake.events();
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "participant",
            "refused",
            "webhook created",
            "message",
            "message"
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.conversation_sid().is_none_or(|c| c == ch)));
    assert_eq!(
        events[0],
        ApiEvent::ConversationCreated {
            conversation_sid: ch.clone(),
            friendly_name: "web-v-1".into(),
            attributes: attributes.into(),
        }
    );
    assert_eq!(
        events[3],
        ApiEvent::WebhookCreated {
            conversation_sid: ch.clone(),
            webhook_sid: wh,
            url: "https://bot.example/conversations/webhook".into(),
            filters: FILTERS.iter().map(|f| (*f).to_owned()).collect(),
        }
    );
    assert_eq!(
        fake.wait_for_message(&ch, 2, Duration::from_secs(1))
            .await
            .unwrap()
            .body,
        "Hello"
    );
}

/// The JSON Twilio answers, and its refusals: a sixth webhook (50361), an unknown filter
/// (50365), no filter (50370), no URL (50369), a closed conversation (50377), bad attributes.
#[tokio::test]
async fn the_fake_answers_in_twilios_shapes_and_refuses_like_it() {
    let fake = FakeConversationsApi::start().await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, form: &[(&str, &str)]| {
        http.post(format!("{}{path}", fake.base_url))
            .form(form)
            .send()
    };
    let created = post(
        "/v1/Conversations",
        &[("FriendlyName", "web-1"), ("Attributes", "{}")],
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let conversation: Value = created.json().await.unwrap();
    assert_eq!(conversation["friendly_name"], "web-1");
    assert_eq!(conversation["state"], "active");
    assert_eq!(conversation["attributes"], "{}");
    let ch = conversation["sid"].as_str().unwrap().to_owned();
    let code = |answer: Value| answer["code"].as_u64();

    let participant: Value = post(
        &format!("/v1/Conversations/{ch}/Participants"),
        &[("Identity", "v-1")],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(participant["identity"], "v-1");
    assert_eq!(participant["attributes"], "{}");
    assert_eq!(participant["conversation_sid"], ch.as_str());
    assert!(participant["messaging_binding"].is_null());
    let duplicate = post(
        &format!("/v1/Conversations/{ch}/Participants"),
        &[("Identity", "v-1")],
    )
    .await
    .unwrap();
    assert_eq!(duplicate.status(), 409);
    assert_eq!(code(duplicate.json().await.unwrap()), Some(50433));
    let list: Value = http
        .get(format!(
            "{}/v1/Conversations/{ch}/Participants",
            fake.base_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["participants"][0]["sid"], participant["sid"]);
    assert_eq!(list["meta"]["key"], "participants");

    let webhooks = format!("/v1/Conversations/{ch}/Webhooks");
    let hook = |filter: &'static str| {
        vec![
            ("Target", "webhook"),
            ("Configuration.Url", "https://bot.example/hook"),
            ("Configuration.Filters", filter),
        ]
    };
    let webhook: Value = post(&webhooks, &hook("onMessageAdded"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(webhook["target"], "webhook");
    assert_eq!(webhook["configuration"]["url"], "https://bot.example/hook");
    assert_eq!(webhook["configuration"]["method"], "POST");
    assert_eq!(
        webhook["configuration"]["filters"],
        json!(["onMessageAdded"])
    );
    for (form, status, want) in [
        (hook("onMessageSent"), 400, 50365),
        (
            vec![("Target", "webhook"), ("Configuration.Url", "https://x/")],
            400,
            50370,
        ),
        (
            vec![
                ("Target", "webhook"),
                ("Configuration.Filters", "onMessageAdded"),
            ],
            400,
            50369,
        ),
    ] {
        let answer = post(&webhooks, &form).await.unwrap();
        assert_eq!(answer.status(), status);
        assert_eq!(code(answer.json().await.unwrap()), Some(want), "{form:?}");
    }
    for _ in 1..5 {
        assert_eq!(
            post(&webhooks, &hook("onMessageAdded"))
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let sixth = post(&webhooks, &hook("onMessageAdded")).await.unwrap();
    assert_eq!(sixth.status(), 400);
    assert_eq!(code(sixth.json().await.unwrap()), Some(50361));

    let bad = post("/v1/Conversations", &[("Attributes", "not json")])
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let closed = post("/v1/Conversations", &[("State", "closed")])
        .await
        .unwrap();
    assert_eq!(code(closed.json().await.unwrap()), Some(50384));

    fake.set_conversation(&ch, None, Some("closed"));
    for path in ["/Participants", "/Webhooks", "/Messages"] {
        let answer = post(
            &format!("/v1/Conversations/{ch}{path}"),
            &[("Identity", "v-2"), ("Body", "Hi")],
        )
        .await
        .unwrap();
        assert_eq!(code(answer.json().await.unwrap()), Some(50377), "{path}");
    }
}

/// What a receiver saw of one delivery.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    form: Vec<(String, String)>,
}

impl Received {
    fn get(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Our server's side of a delivery, in miniature: `POST /conversations/webhook` answering 200
/// when the signature matches `token` over `signed_url` (or when there is no token), else 403.
async fn receiver(
    token: Option<&'static str>,
    signed_url: impl Fn(&str) -> String,
) -> (
    String,
    String,
    Arc<Mutex<Vec<Received>>>,
    tokio::task::JoinHandle<()>,
) {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = signed_url(&base);
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let record = seen.clone();
    let check_url = url.clone();
    let app = Router::new().route(
        WEBHOOK_PATH,
        post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let check_url = check_url.clone();
            async move {
                let signature = headers
                    .get(signature::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap();
                let valid = match (token, &signature) {
                    (None, _) => true,
                    (Some(token), Some(sig)) => signature::matches(token, &check_url, &form, sig),
                    (Some(_), None) => false,
                };
                record.lock().unwrap().push(Received { signature, form });
                if valid {
                    StatusCode::OK
                } else {
                    StatusCode::FORBIDDEN
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, url, seen, task)
}

/// The agent joins, writes, leaves, and the conversation closes: each delivers its event,
/// signed over the configured URL, to the webhooks that subscribe to it, with the fields our
/// server reads.
#[tokio::test]
async fn agent_actions_deliver_signed_webhooks() {
    let (_base, url, seen, server) =
        receiver(Some("secret"), |base| format!("{base}{WEBHOOK_PATH}")).await;
    let fake = FakeConversationsApi::start().await.unwrap();
    fake.sign_webhooks_with("secret");
    let client = ConversationsClient::new(&fake.base_url, rest());
    let ch = client.create("web-v-1", "{}").await.unwrap();
    client.add_participant(&ch, "v-1", "{}").await.unwrap();
    let wh = client.create_webhook(&ch, &url, &FILTERS).await.unwrap();
    // A second subscriber, to messages only.
    client
        .create_webhook(&ch, &url, &["onMessageAdded"])
        .await
        .unwrap();

    assert_eq!(
        fake.agent_joins(&ch, "alice@example.com", "Alice").await,
        [200]
    );
    assert_eq!(
        fake.agent_joins(&ch, "alice@example.com", "Alice").await,
        Vec::<u16>::new(),
        "already a participant: nothing happens"
    );
    assert_eq!(
        fake.agent_says(&ch, "alice@example.com", "Hi, I'm Alice")
            .await,
        [200, 200]
    );
    assert_eq!(fake.agent_leaves(&ch, "alice@example.com").await, [200]);
    assert_eq!(
        fake.agent_leaves(&ch, "alice@example.com").await,
        Vec::<u16>::new()
    );
    assert_eq!(fake.close(&ch).await, [200]);
    assert_eq!(fake.close(&ch).await, Vec::<u16>::new());
    assert_eq!(
        fake.agent_says(&ch, "v-1", "Hello?").await,
        Vec::<u16>::new()
    );
    server.abort();

    let conversation = fake.conversation(&ch).unwrap();
    assert!(conversation.is_closed());
    assert_eq!(conversation.participants.len(), 1);
    assert_eq!(conversation.messages.len(), 1);
    assert_eq!(conversation.messages[0].author, "alice@example.com");
    assert_eq!(conversation.messages[0].body, "Hi, I'm Alice");
    assert!(
        fake.events()
            .iter()
            .all(|e| !matches!(e, ApiEvent::MessagePosted { .. })),
        "Twilio's side is not announced as a request"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    for delivery in &seen {
        assert_eq!(
            delivery.signature.as_deref(),
            Some(signature::sign("secret", &url, &delivery.form).as_str())
        );
        assert_eq!(delivery.get("ConversationSid"), Some(ch.as_str()));
        assert_eq!(
            delivery.get("AccountSid"),
            Some(fake.shared.account_sid.as_str())
        );
        assert!(delivery
            .get("WebhookSid")
            .is_some_and(|w| w.starts_with("WH")));
    }
    let keys = |d: &Received| d.form.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();

    let joined = &seen[0];
    assert_eq!(
        keys(joined),
        [
            "AccountSid",
            "EventType",
            "ConversationSid",
            "ParticipantSid",
            "Identity",
            "RoleSid",
            "Attributes",
            "DateCreated",
            "Source",
            "ChatServiceSid",
            "WebhookSid"
        ]
    );
    assert_eq!(joined.get("EventType"), Some("onParticipantAdded"));
    assert_eq!(joined.get("Identity"), Some("alice@example.com"));
    assert_eq!(
        joined.get("Attributes"),
        Some(r#"{"friendlyName":"Alice"}"#)
    );
    assert_eq!(joined.get("Source"), Some("API"));
    assert_eq!(joined.get("WebhookSid"), Some(wh.as_str()));
    let agent_sid = joined.get("ParticipantSid").unwrap();
    assert!(agent_sid.starts_with("MB"));

    let (said, said_again) = (&seen[1], &seen[2]);
    assert_eq!(said.get("EventType"), Some("onMessageAdded"));
    assert_eq!(said.get("Body"), Some("Hi, I'm Alice"));
    assert_eq!(said.get("Author"), Some("alice@example.com"));
    assert_eq!(said.get("ClientIdentity"), Some("alice@example.com"));
    assert_eq!(said.get("ParticipantSid"), Some(agent_sid));
    assert_eq!(said.get("Index"), Some("0"));
    assert_eq!(said.get("Attributes"), Some("{}"));
    assert_eq!(said.get("Source"), Some("SDK"));
    assert_eq!(
        said.get("MessageSid"),
        Some(conversation.messages[0].sid.as_str())
    );
    assert!(said.get("DateCreated").unwrap().ends_with('Z'));
    assert_eq!(said.get("MessageSid"), said_again.get("MessageSid"));
    assert_ne!(said.get("WebhookSid"), said_again.get("WebhookSid"));

    let left = &seen[3];
    assert_eq!(left.get("EventType"), Some("onParticipantRemoved"));
    assert_eq!(left.get("ParticipantSid"), Some(agent_sid));
    assert_eq!(left.get("Identity"), Some("alice@example.com"));
    assert!(left.get("DateUpdated").is_some());

    let closed = &seen[4];
    assert_eq!(closed.get("EventType"), Some("onConversationStateUpdated"));
    assert_eq!(closed.get("StateFrom"), Some("active"));
    assert_eq!(closed.get("StateTo"), Some("closed"));
    assert_eq!(closed.get("Reason"), Some("API"));
    assert!(closed.get("StateUpdated").is_some());
}

/// Unsigned until a token is set; a wrong token is refused by the receiver; a public URL is
/// signed over but delivered to the server's real address; no subscriber, no delivery; no
/// server, status 0.
#[tokio::test]
async fn deliveries_are_unsigned_rerouted_or_refused_as_set() {
    let public = "https://pub.example/conversations/webhook?x=1";
    let (base, _url, seen, server) = receiver(Some("secret"), |_| public.to_owned()).await;
    let fake = FakeConversationsApi::start().await.unwrap();
    let client = ConversationsClient::new(&fake.base_url, rest());
    let ch = client.create("web", "{}").await.unwrap();
    client
        .create_webhook(&ch, public, &["onMessageAdded"])
        .await
        .unwrap();
    fake.deliver_webhooks_to(&base);

    assert_eq!(fake.agent_joins(&ch, "bob", "Bob").await, Vec::<u16>::new());
    assert_eq!(fake.agent_says(&ch, "bob", "unsigned").await, [403]);
    fake.sign_webhooks_with("wrong");
    assert_eq!(fake.agent_says(&ch, "bob", "wrong token").await, [403]);
    fake.sign_webhooks_with("secret");
    assert_eq!(fake.agent_says(&ch, "bob", "signed").await, [200]);
    server.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].signature, None);
    assert_eq!(seen[2].get("Body"), Some("signed"));
    assert_eq!(
        seen[2].get("ParticipantSid"),
        Some(fake.participants(&ch)[0].sid.as_str())
    );

    // Nobody listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    fake.deliver_webhooks_to(&nowhere);
    assert_eq!(fake.agent_says(&ch, "bob", "anyone?").await, [0]);
}

/// 50433 with a lookup that fails is still a success, with no SID.
#[tokio::test]
async fn an_existing_participant_is_a_success_even_unnamed() {
    let fake = FakeConversationsApi::start().await.unwrap();
    let client = ConversationsClient::new(&fake.base_url, rest());
    client.add_participant("CH1", "v-1", "{}").await.unwrap();
    fake.fail_next(Method::GET, "/Participants", 500, 1);
    assert_eq!(
        client.add_participant("CH1", "v-1", "{}").await,
        Ok(String::new())
    );
    fake.fail_next(Method::POST, "/Participants", 503, 1);
    assert!(matches!(
        client.add_participant("CH1", "v-2", "{}").await,
        Err(RestError::Status { status: 503, .. })
    ));
    assert_eq!(fake.participants("CH1").len(), 1);
}
