//! An in-process IBM Cloud IAM token endpoint and Watson Assistant v2 runtime, speaking their
//! wire formats (channels-and-bots.md §1): a form-encoded API-key exchange answering
//! `{access_token, refresh_token, token_type, expires_in, expiration}`; sessions created,
//! messaged and deleted under either path style, `version` required on every call, a bearer
//! token IAM issued required on every call, `404 Invalid Session` for an unknown session, and
//! the stateless message API returning the context. Message answers are scripted; faults can be
//! queued.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, post},
    Json, Router,
};
use serde_json::{json, Value};

/// The API key the fake IAM accepts.
pub const APIKEY: &str = "watson-test-apikey-5f2c";
/// The assistant's IDs.
pub const ASSISTANT_ID: &str = "asst-0001";
pub const ENVIRONMENT_ID: &str = "env-live-0001";
/// The instance part of the service URL.
pub const INSTANCE: &str = "x";

/// What a Watson call was.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    CreateSession,
    Message { session: Option<String> },
    DeleteSession(String),
}

/// One Watson request as received.
#[derive(Debug, Clone)]
pub struct WatsonRequest {
    pub kind: Kind,
    /// Path after `/instances/x`.
    pub path: String,
    pub version: Option<String>,
    pub bearer: Option<String>,
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

impl WatsonRequest {
    /// `input.text` of a message.
    pub fn text(&self) -> &str {
        self.body["input"]["text"].as_str().unwrap_or_default()
    }
}

/// One IAM request as received.
#[derive(Debug, Clone)]
pub struct IamRequest {
    pub content_type: String,
    pub form: HashMap<String, String>,
}

struct Inner {
    iam: Vec<IamRequest>,
    tokens: HashSet<String>,
    issued: u32,
    expires_in: u64,
    sessions: HashSet<String>,
    next_session: u32,
    requests: Vec<WatsonRequest>,
    answers: VecDeque<Value>,
    faults: VecDeque<(u16, Value)>,
    accept_newer_paths: bool,
}

/// The fake, on 127.0.0.1.
pub struct FakeWatson {
    /// `http://127.0.0.1:port`.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWatson {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeWatson {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            iam: Vec::new(),
            tokens: HashSet::new(),
            issued: 0,
            expires_in: 3600,
            sessions: HashSet::new(),
            next_session: 0,
            requests: Vec::new(),
            answers: VecDeque::new(),
            faults: VecDeque::new(),
            accept_newer_paths: true,
        }));
        let app = Router::new()
            .route("/identity/token", post(iam))
            .route("/instances/{instance}/v2/{*rest}", any(watson))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeWatson {
            base_url,
            inner,
            server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// `WATSON_URL`.
    pub fn service_url(&self) -> String {
        format!("{}/instances/{INSTANCE}", self.base_url)
    }

    /// `WATSON_IAM_URL`.
    pub fn iam_url(&self) -> String {
        format!("{}/identity/token", self.base_url)
    }

    /// The next message answers `output` (queued in order; "OK." when none is queued).
    pub fn answer(&self, output: Value) {
        self.lock().answers.push_back(output);
    }

    /// The next answer is a plain text.
    pub fn answer_text(&self, text: &str) {
        self.answer(json!({"generic": [{"response_type": "text", "text": text}]}));
    }

    /// The next `times` message calls fail with `status` and `body`.
    pub fn fail_next(&self, status: u16, body: Value, times: usize) {
        let mut inner = self.lock();
        for _ in 0..times {
            inner.faults.push_back((status, body.clone()));
        }
    }

    /// Every session ends (Watson's inactivity timeout).
    pub fn expire_sessions(&self) {
        self.lock().sessions.clear();
    }

    /// Every token issued so far stops being accepted.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Tokens issued from now on say they live `seconds`.
    pub fn set_expires_in(&self, seconds: u64) {
        self.lock().expires_in = seconds;
    }

    /// `/v2/assistants/{assistant_id}/environments/{environment_id}/…` answers 404.
    pub fn refuse_newer_paths(&self) {
        self.lock().accept_newer_paths = false;
    }

    pub fn iam_requests(&self) -> Vec<IamRequest> {
        self.lock().iam.clone()
    }

    pub fn requests(&self) -> Vec<WatsonRequest> {
        self.lock().requests.clone()
    }

    /// The message calls answered 200.
    pub fn messages(&self) -> Vec<WatsonRequest> {
        self.requests()
            .into_iter()
            .filter(|r| matches!(r.kind, Kind::Message { .. }) && r.status == 200)
            .collect()
    }

    pub fn sessions_created(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.kind == Kind::CreateSession && r.status == 201)
            .count()
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (
        status,
        Json(json!({"error": message, "code": status.as_u16()})),
    )
        .into_response()
}

async fn iam(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let mut inner = inner.lock().unwrap();
    inner.iam.push(IamRequest {
        content_type: content_type.clone(),
        form: form.clone(),
    });
    if !content_type.starts_with("application/x-www-form-urlencoded")
        || form.get("grant_type").map(String::as_str)
            != Some("urn:ibm:params:oauth:grant-type:apikey")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty.", "context": {}})),
        )
            .into_response();
    }
    if form.get("apikey").map(String::as_str) != Some(APIKEY) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.", "context": {}})),
        )
            .into_response();
    }
    inner.issued += 1;
    let token = format!("eyJfake.{}.sig", inner.issued);
    inner.tokens.insert(token.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Json(json!({
        "access_token": token,
        "refresh_token": "not_supported",
        "token_type": "Bearer",
        "expires_in": inner.expires_in,
        "expiration": now + inner.expires_in,
        "scope": "ibm openid"
    }))
    .into_response()
}

async fn watson(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    Path((instance, rest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let version = query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str::<HashMap<String, String>>(q).ok())
        .and_then(|q| q.get("version").cloned());
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = rest.split('/').collect();
    let mut inner = inner.lock().unwrap();
    let inner = &mut *inner;
    // The assistant part of the path, either style.
    let (known, tail) = match segments.as_slice() {
        ["assistants", a, "environments", e, tail @ ..] => (
            inner.accept_newer_paths && *a == ASSISTANT_ID && *e == ENVIRONMENT_ID,
            tail,
        ),
        ["assistants", id, tail @ ..] => (*id == ENVIRONMENT_ID, tail),
        _ => (false, &[][..]),
    };
    let kind = match (method.clone(), tail) {
        (Method::POST, ["sessions"]) => Some(Kind::CreateSession),
        (Method::POST, ["sessions", s, "message"]) => Some(Kind::Message {
            session: Some(s.to_string()),
        }),
        (Method::DELETE, ["sessions", s]) => Some(Kind::DeleteSession(s.to_string())),
        (Method::POST, ["message"]) => Some(Kind::Message { session: None }),
        _ => None,
    };
    let request = |kind: Kind, status: u16| WatsonRequest {
        kind,
        path: format!("/v2/{rest}"),
        version: version.clone(),
        bearer: bearer.clone(),
        body: body.clone(),
        status,
    };
    let (Some(kind), true, true) = (kind, known, instance == INSTANCE) else {
        inner.requests.push(request(Kind::CreateSession, 404));
        return error(404, "Resource not found");
    };
    if version.is_none() {
        inner.requests.push(request(kind, 400));
        return error(400, "Missing required query parameter 'version'");
    }
    if !bearer.as_ref().is_some_and(|t| inner.tokens.contains(t)) {
        inner.requests.push(request(kind, 401));
        return error(401, "Unauthorized");
    }
    match kind.clone() {
        Kind::CreateSession => {
            inner.next_session += 1;
            let id = format!("sess-{}", inner.next_session);
            inner.sessions.insert(id.clone());
            inner.requests.push(request(kind, 201));
            (StatusCode::CREATED, Json(json!({"session_id": id}))).into_response()
        }
        Kind::DeleteSession(id) => {
            let found = inner.sessions.remove(&id);
            inner
                .requests
                .push(request(kind, if found { 200 } else { 404 }));
            if found {
                Json(json!({})).into_response()
            } else {
                error(404, "Invalid Session")
            }
        }
        Kind::Message { session } => {
            if let Some((status, fault)) = inner.faults.pop_front() {
                inner.requests.push(request(kind, status));
                return (StatusCode::from_u16(status).unwrap(), Json(fault)).into_response();
            }
            if let Some(id) = &session {
                if !inner.sessions.contains(id) {
                    inner.requests.push(request(kind, 404));
                    return error(404, "Invalid Session");
                }
            }
            let text = &body["input"]["text"];
            if text
                .as_str()
                .is_some_and(|t| t.contains(['\r', '\n', '\t']))
            {
                inner.requests.push(request(kind, 400));
                return error(
                    400,
                    "input.text cannot contain carriage return, newline, or tab characters",
                );
            }
            let output = inner
                .answers
                .pop_front()
                .unwrap_or_else(|| json!({"generic": [{"response_type": "text", "text": "OK."}]}));
            let mut answer = json!({"output": output, "user_id": body["user_id"]});
            if session.is_none() {
                // Stateless: the context always comes back, one turn on.
                let mut context = body["context"].clone();
                if !context.is_object() {
                    context = json!({});
                }
                let turn = context["global"]["system"]["turn_count"]
                    .as_u64()
                    .unwrap_or(0);
                context["global"]["session_id"] = json!("stateless-1");
                context["global"]["system"]["turn_count"] = json!(turn + 1);
                context["global"]["system"]["state"] = json!(format!("opaque-state-{}", turn + 1));
                answer["context"] = context;
            } else if body["input"]["options"]["return_context"] == true {
                answer["context"] = json!({"global": {"system": {}}});
            }
            inner.requests.push(request(kind, 200));
            Json(answer).into_response()
        }
    }
}
