//! An in-process stand-in for Twilio's REST API (the Calls resource): records every request and
//! answers from a script (200 by default).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::json;
use tokio::sync::mpsc;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path, for example `/2010-04-01/Accounts/AC…/Calls/CA….json`.
    pub path: String,
    /// The `Authorization` header.
    pub authorization: String,
    /// The form fields.
    pub form: Vec<(String, String)>,
}

impl Recorded {
    /// The `Twiml` field.
    pub fn twiml(&self) -> &str {
        self.form
            .iter()
            .find(|(k, _)| k == "Twiml")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct FakeState {
    answers: Arc<Mutex<VecDeque<(u16, serde_json::Value)>>>,
    requests: mpsc::UnboundedSender<Recorded>,
}

/// The running fake.
pub struct FakeTwilio {
    /// Give it as `TWILIO_API_BASE`.
    pub base_url: String,
    answers: Arc<Mutex<VecDeque<(u16, serde_json::Value)>>>,
    requests: mpsc::UnboundedReceiver<Recorded>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeTwilio {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeTwilio {
        let (tx, rx) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let state = FakeState {
            answers: answers.clone(),
            requests: tx,
        };
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Calls/{call}",
                post(update_call),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeTwilio {
            base_url,
            answers,
            requests: rx,
            server,
        }
    }

    /// Queues an answer: an HTTP status and a JSON body.
    pub fn answer(&self, status: u16, body: serde_json::Value) {
        self.answers.lock().unwrap().push_back((status, body));
    }

    /// Queues Twilio's error answer with `code`.
    pub fn error(&self, status: u16, code: u32) {
        self.answer(
            status,
            json!({"code": code, "message": "fake error", "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}),
        );
    }

    /// The next request received.
    pub async fn next_request(&mut self) -> Recorded {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("Twilio was called within 10 s")
            .expect("fake running")
    }

    /// Requests received so far and not yet taken.
    pub fn take_received(&mut self) -> Vec<Recorded> {
        let mut out = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            out.push(r);
        }
        out
    }
}

async fn update_call(
    State(state): State<FakeState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let call = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".json")
        .to_owned();
    let _ = state.requests.send(Recorded {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        form,
    });
    let (status, body) = state
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| (200, json!({"sid": call, "status": "in-progress"})));
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}
