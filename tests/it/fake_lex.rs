//! An in-process Amazon Lex V2 runtime speaking `RecognizeText` over its REST/JSON protocol:
//! `POST /bots/{botId}/botAliases/{botAliasId}/botLocales/{localeId}/sessions/{sessionId}/text`
//! (the path `aws-sdk-lexruntimev2` builds), SigV4-signed.
//!
//! Each request is recorded (path ids, signing headers, JSON body) and answered by the next
//! [`LexScript`]: a turn in Lex's response shape (the fake adds `sessionId`, `interpretations`
//! and the session attributes, which it stores per session the way Lex does: a request that
//! sends `sessionState.sessionAttributes` replaces them), a raw body exactly as written, an AWS
//! JSON error (`x-amzn-errortype` header + `{"message"}`), or no answer at all. A request
//! without SigV4 headers gets a 403 `MissingAuthenticationTokenException`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct LexRequest {
    pub bot_id: String,
    pub bot_alias_id: String,
    pub locale_id: String,
    pub session_id: String,
    /// `Authorization` (SigV4: `AWS4-HMAC-SHA256 Credential=…/lex/aws4_request, …`).
    pub authorization: String,
    /// The JSON body: `text`, `sessionState`, `requestAttributes`.
    pub body: Value,
}

impl LexRequest {
    /// `text`.
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }

    /// `sessionState.sessionAttributes[key]`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.body["sessionState"]["sessionAttributes"][key].as_str()
    }
}

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub enum LexScript {
    /// A turn: `messages`, `sessionState.dialogAction` and `sessionState.intent` as given; the
    /// fake adds the rest. `lambda_attributes` are set as a code hook would set them.
    Turn {
        messages: Vec<Value>,
        dialog_action: Value,
        intent: Value,
        lambda_attributes: Vec<(&'static str, &'static str)>,
    },
    /// This body, byte for byte, with status 200.
    Raw(String),
    /// An AWS JSON error: status, `x-amzn-errortype`, message.
    Error(u16, &'static str, &'static str),
    /// Never answer.
    Stall,
}

/// `{"contentType": "PlainText", "content": text}`.
pub fn plain(text: &str) -> Value {
    json!({"contentType": "PlainText", "content": text})
}

/// An intent as Lex writes it (`slots` as given: `null` marks an unfilled one).
pub fn intent(name: &str, state: &str, slots: Value) -> Value {
    json!({"name": name, "slots": slots, "state": state, "confirmationState": "None"})
}

impl LexScript {
    /// A turn of `intent` in `state` with dialog action `action`, saying `messages`.
    pub fn turn(messages: Vec<Value>, action: &str, intent: Value) -> LexScript {
        LexScript::Turn {
            messages,
            dialog_action: json!({"type": action}),
            intent,
            lambda_attributes: Vec::new(),
        }
    }

    /// Lex did not understand: `FallbackIntent` closes with `ReadyForFulfillment` (no code
    /// hook), saying `text`.
    pub fn fallback(text: &str) -> LexScript {
        LexScript::turn(
            vec![plain(text)],
            "Close",
            intent("FallbackIntent", "ReadyForFulfillment", json!({})),
        )
    }

    /// A plain answer that keeps the conversation going.
    pub fn say(text: &str) -> LexScript {
        LexScript::turn(
            vec![plain(text)],
            "ElicitIntent",
            intent("Greeting", "InProgress", json!({})),
        )
    }
}

#[derive(Clone, Default)]
struct FakeState {
    scripts: Arc<Mutex<VecDeque<LexScript>>>,
    /// Session attributes by session id, as Lex stores them.
    sessions: Arc<Mutex<HashMap<String, Value>>>,
    requests: Arc<Mutex<Vec<LexRequest>>>,
    seen: Option<mpsc::UnboundedSender<LexRequest>>,
}

/// The running fake.
pub struct FakeLex {
    /// `http://127.0.0.1:port`: give it as `LEX_ENDPOINT_URL`.
    pub url: String,
    state: FakeState,
    seen: mpsc::UnboundedReceiver<LexRequest>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLex {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeLex {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeLex {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = FakeState {
            seen: Some(tx),
            ..FakeState::default()
        };
        let app = Router::new()
            .route(
                "/bots/{bot}/botAliases/{alias}/botLocales/{locale}/sessions/{session}/text",
                post(recognize_text),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLex {
            url: format!("http://{addr}"),
            state,
            seen: rx,
            server,
        }
    }

    /// Queues the answer to a future request (an unscripted request gets [`LexScript::say`]
    /// "OK.").
    pub fn push(&self, script: LexScript) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// The next request the fake received (waits up to 10 s).
    pub async fn next_request(&mut self) -> LexRequest {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("Lex was asked within 10 s")
            .expect("fake running")
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LexRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn aws_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json"),
            ("x-amzn-requestid", "00000000-0000-0000-0000-000000000000"),
            (
                "x-amzn-errortype",
                &format!("{kind}:http://internal.amazon.com/coral/com.amazonaws.lexruntimev2/"),
            ),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn recognize_text(
    State(state): State<FakeState>,
    Path((bot, alias, locale, session)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let authorization = header("authorization");
    let request = LexRequest {
        bot_id: bot,
        bot_alias_id: alias,
        locale_id: locale,
        session_id: session.clone(),
        authorization: authorization.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    state.requests.lock().unwrap().push(request.clone());
    if let Some(seen) = &state.seen {
        let _ = seen.send(request.clone());
    }
    let signed = authorization.starts_with("AWS4-HMAC-SHA256 Credential=")
        && authorization.contains("/lex/aws4_request")
        && authorization.contains("SignedHeaders=")
        && authorization.contains("Signature=")
        && !header("x-amz-date").is_empty();
    if !signed {
        return aws_error(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    }
    let text = request.text();
    if text.is_empty() || text.encode_utf16().count() > 1024 {
        return aws_error(
            400,
            "ValidationException",
            "1 validation error detected: Value at 'text' failed to satisfy constraint",
        );
    }
    let script = state
        .scripts
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| LexScript::say("OK."));
    let (messages, dialog_action, intent, lambda_attributes) = match script {
        LexScript::Raw(body) => {
            return (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        }
        LexScript::Error(status, kind, message) => return aws_error(status, kind, message),
        LexScript::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        LexScript::Turn {
            messages,
            dialog_action,
            intent,
            lambda_attributes,
        } => (messages, dialog_action, intent, lambda_attributes),
    };
    // Session attributes as Lex keeps them: replaced by a request that sends some, then
    // changed by the code hook.
    let attributes = {
        let mut sessions = state.sessions.lock().unwrap();
        let stored = sessions.entry(session.clone()).or_insert_with(|| json!({}));
        if let Some(sent) = request.body["sessionState"].get("sessionAttributes") {
            *stored = sent.clone();
        }
        for (key, value) in lambda_attributes {
            stored[key] = json!(value);
        }
        stored.clone()
    };
    // Lex's FallbackIntent candidate comes without state or confidence.
    let fallback = json!({"name": "FallbackIntent", "slots": {}, "confirmationState": "None"});
    let mut body = json!({
        "sessionState": {
            "dialogAction": dialog_action,
            "intent": intent,
            "sessionAttributes": attributes,
            "originatingRequestId": "0f7a3b1c-0000-0000-0000-000000000000"
        },
        "interpretations": [
            {"intent": intent, "nluConfidence": {"score": 0.92}, "interpretationSource": "Lex"},
            {"intent": fallback, "interpretationSource": "Lex"}
        ],
        "sessionId": session,
    });
    if !messages.is_empty() {
        body["messages"] = Value::Array(messages);
    }
    if let Some(attributes) = request.body.get("requestAttributes") {
        body["requestAttributes"] = attributes.clone();
    }
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("x-amzn-requestid", "0f7a3b1c-0000-0000-0000-000000000000"),
        ],
        body.to_string(),
    )
        .into_response()
}
