//! `relaybot lambda` end to end: the real binary, started as AWS Lambda starts a custom runtime
//! (`AWS_LAMBDA_RUNTIME_API` and the function's variables), polls a fake Lambda Runtime API on
//! loopback for Lex V2 events and posts its answers back. In-process with the offline agent,
//! forwarding to a (fake) relaybot server's signed `/lex/v2`, and forwarding to nothing (the
//! fallback that routes the caller to an agent). Run with `cargo test --features lambda --test
//! lambda`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use relaybot::{
    connect::auth::{Verifier, SIGNATURE_HEADER, TIMESTAMP_HEADER},
    lambda,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
    sync::{mpsc, oneshot},
};

const SECRET: &str = "lambda-test-secret-0123456789";
const CALLER: &str = "+14155550123";
/// The longest wait for one answer (the offline agent answers in milliseconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A Lex V2 code-hook event shaped like AWS's (handoff.md §4.1): a DialogCodeHook text turn
/// that Lex matched to nothing (FallbackIntent), with Connect's session attributes.
fn lex_event(session: &str, said: &str) -> Value {
    json!({
        "messageVersion": "1.0",
        "invocationSource": "DialogCodeHook",
        "inputMode": "Text",
        "responseContentType": "text/plain; charset=utf-8",
        "sessionId": session,
        "inputTranscript": said,
        "bot": {
            "id": "BOTID12345", "name": "RelaybotBot", "localeId": "en_US",
            "version": "DRAFT", "aliasId": "TSTALIASID", "aliasName": "TestBotAlias"
        },
        "interpretations": [
            {
                "interpretationSource": "Lex",
                "intent": {
                    "name": "FallbackIntent", "confirmationState": "None",
                    "state": "InProgress", "slots": {}
                }
            },
            {
                "interpretationSource": "Lex",
                "intent": {
                    "name": "TalkToAgent", "confirmationState": "None",
                    "state": "InProgress", "slots": { "Topic": null }
                },
                "nluConfidence": 0.41
            }
        ],
        "proposedNextState": null,
        "requestAttributes": { "x-amz-lex:channels:platform": "Connect" },
        "sessionState": {
            "sessionAttributes": { "callerNumber": CALLER, "language": "en" },
            "activeContexts": [],
            "intent": {
                "name": "FallbackIntent", "confirmationState": "None",
                "state": "InProgress", "slots": {}
            },
            "originatingRequestId": "4f8b2c6e-0d1a-4b7e-9c3f-2a5d6e7f8a9b"
        },
        "transcriptions": [
            { "transcription": said, "transcriptionConfidence": 1.0,
              "resolvedContext": { "intent": "FallbackIntent" } }
        ]
    })
}

/// What the runtime got back for one invocation.
#[derive(Debug)]
enum Outcome {
    Response(String),
    Error(String),
}

/// The fake Lambda Runtime API (`/2018-06-01/runtime/...`).
#[derive(Clone)]
struct RuntimeApi {
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, String)>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>,
    init_errors: Arc<Mutex<Vec<String>>>,
    /// How long each invocation may run (its `Lambda-Runtime-Deadline-Ms`), in ms.
    time_limit_ms: Arc<AtomicU64>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// `GET /next`: long-polls for the next event, as the real API does.
async fn next_invocation(State(api): State<RuntimeApi>) -> Response {
    let Some((id, event)) = api.queue.lock().await.recv().await else {
        return StatusCode::GONE.into_response();
    };
    Response::builder()
        .header("Lambda-Runtime-Aws-Request-Id", id)
        .header(
            "Lambda-Runtime-Deadline-Ms",
            (now_ms() + u128::from(api.time_limit_ms.load(Ordering::Relaxed))).to_string(),
        )
        .header(
            "Lambda-Runtime-Invoked-Function-Arn",
            "arn:aws:lambda:us-east-1:123456789012:function:relaybot-lex",
        )
        .header(
            "Lambda-Runtime-Trace-Id",
            "Root=1-5f84c7a1-6c1f2d3e4b5a69788a9b0c1d;Parent=1a2b3c4d5e6f7a8b;Sampled=0",
        )
        .header("Content-Type", "application/json")
        .body(axum::body::Body::from(event))
        .unwrap()
}

async fn invocation_response(
    State(api): State<RuntimeApi>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    api.finish(&id, Outcome::Response(body))
}

async fn invocation_error(
    State(api): State<RuntimeApi>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    api.finish(&id, Outcome::Error(body))
}

async fn init_error(State(api): State<RuntimeApi>, body: String) -> StatusCode {
    api.init_errors.lock().unwrap().push(body);
    StatusCode::ACCEPTED
}

impl RuntimeApi {
    fn finish(&self, id: &str, outcome: Outcome) -> StatusCode {
        match self.waiting.lock().unwrap().remove(id) {
            Some(tx) => {
                let _ = tx.send(outcome);
                StatusCode::ACCEPTED
            }
            None => StatusCode::NOT_FOUND,
        }
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// `relaybot lambda` running against its own fake Runtime API. Dropping it kills the child.
struct Lambda {
    child: Child,
    events: mpsc::UnboundedSender<(String, String)>,
    api: RuntimeApi,
    logs: Arc<Mutex<String>>,
    next_id: AtomicU64,
}

impl Lambda {
    /// `relaybot lambda` with `settings`.
    async fn start(settings: &[(&str, &str)]) -> Self {
        Self::start_as(&["lambda"], settings).await
    }

    /// The binary with `args` and `settings`.
    async fn start_as(args: &[&str], settings: &[(&str, &str)]) -> Self {
        let (events, queue) = mpsc::unbounded_channel();
        let api = RuntimeApi {
            queue: Arc::new(tokio::sync::Mutex::new(queue)),
            waiting: Arc::default(),
            init_errors: Arc::default(),
            time_limit_ms: Arc::new(AtomicU64::new(30_000)),
        };
        let addr = serve(
            Router::new()
                .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
                .route(
                    "/2018-06-01/runtime/invocation/{id}/response",
                    post(invocation_response),
                )
                .route(
                    "/2018-06-01/runtime/invocation/{id}/error",
                    post(invocation_error),
                )
                .route("/2018-06-01/runtime/init/error", post(init_error))
                .with_state(api.clone()),
        )
        .await;
        let mut child = lambda_command(args, &addr.to_string(), settings)
            .spawn()
            .expect("start relaybot lambda");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Self {
            child,
            events,
            api,
            logs,
            next_id: AtomicU64::new(1),
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends `event` through the runtime and returns the function's raw answer.
    async fn invoke_raw(&mut self, event: &Value) -> String {
        let id = format!(
            "8476a536-e9f4-11e8-9739-{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        self.api.waiting.lock().unwrap().insert(id.clone(), tx);
        self.events
            .send((id, serde_json::to_string(event).unwrap()))
            .unwrap();
        let outcome = tokio::select! {
            outcome = rx => outcome.unwrap(),
            status = self.child.wait() => panic!(
                "relaybot lambda exited ({status:?}); init errors {:?}; its log:\n{}",
                self.api.init_errors.lock().unwrap(),
                self.logs()
            ),
            () = tokio::time::sleep(ANSWER_TIMEOUT) => panic!(
                "no answer within {ANSWER_TIMEOUT:?}; its log:\n{}",
                self.logs()
            ),
        };
        match outcome {
            Outcome::Response(body) => body,
            Outcome::Error(body) => panic!(
                "the function reported an error: {body}; its log:\n{}",
                self.logs()
            ),
        }
    }

    async fn invoke(&mut self, event: &Value) -> Value {
        let raw = self.invoke_raw(event).await;
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
    }
}

impl Drop for Lambda {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The binary with `args`, only the variables the Lambda service sets plus `settings`, in a
/// folder with no `.env`.
fn lambda_command(args: &[&str], runtime_api: &str, settings: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relaybot"));
    command
        .args(args)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "relaybot-lex")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/01/01/[$LATEST]0123456789abcdef",
        )
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/relaybot-lex")
        .env("RUST_LOG", "relaybot=info,warn")
        .envs(settings.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Checks the route-to-agent fallback's shape.
fn assert_routes_to_agent(answer: &Value, reason: &str) {
    let state = &answer["sessionState"];
    assert_eq!(state["dialogAction"]["type"], "Close", "{answer}");
    assert_eq!(state["intent"]["name"], "FallbackIntent", "{answer}");
    assert_eq!(state["intent"]["state"], "Fulfilled", "{answer}");
    let attributes = &state["sessionAttributes"];
    assert_eq!(attributes["shouldRouteToAgent"], "true", "{answer}");
    assert_eq!(attributes["handoffReason"], reason, "{answer}");
    assert_eq!(attributes["relaybotAction"], "handoff", "{answer}");
    assert_eq!(
        attributes["shouldTerminateContactFlow"], "false",
        "{answer}"
    );
    // The event's own attributes are kept.
    assert_eq!(attributes["callerNumber"], CALLER, "{answer}");
    assert_eq!(attributes["language"], "en", "{answer}");
    assert_eq!(
        answer["messages"],
        json!([{ "contentType": "PlainText", "content": "One moment while I connect you to an agent." }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_the_offline_agent_answers_and_hands_off() {
    let mut lambda =
        Lambda::start(&[("LLM_PROVIDER", "offline"), ("OFFLINE_TOKEN_DELAY_MS", "1")]).await;

    let answer = lambda.invoke(&lex_event("contact-1", "hello")).await;
    let state = &answer["sessionState"];
    assert_eq!(state["dialogAction"]["type"], "ElicitIntent", "{answer}");
    assert_eq!(state["intent"]["name"], "FallbackIntent", "{answer}");
    let said = answer["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(said.contains("offline demo agent"), "{answer}");
    assert_eq!(answer["messages"][0]["contentType"], "PlainText");

    let answer = lambda
        .invoke(&lex_event("contact-1", "I want to talk to a person"))
        .await;
    let state = &answer["sessionState"];
    assert_eq!(state["dialogAction"]["type"], "Close", "{answer}");
    assert_eq!(state["intent"]["state"], "Fulfilled", "{answer}");
    assert_eq!(
        state["sessionAttributes"]["shouldRouteToAgent"], "true",
        "{answer}"
    );
    assert!(lambda.api.init_errors.lock().unwrap().is_empty());
}

/// The fake relaybot server: `/lex/v2` answers `CANNED` to requests signed with `SECRET`, 401
/// to others, and keeps the bodies it accepted; or fails as `failure` says.
#[derive(Clone, Default)]
struct FakeServer {
    verifier: Arc<Verifier>,
    accepted: Arc<Mutex<Vec<String>>>,
    failure: Arc<Mutex<Option<Failure>>>,
}

/// How the fake server fails a signed request.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// HTTP 500.
    Status,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with JSON that is not a Lex response.
    NotLex,
    /// The answer, after this long.
    Slow(Duration),
}

/// The server's answer, with formatting a re-serialization would change (spaces, key order,
/// `0.50`): the Lambda must return it byte for byte.
const CANNED: &str = r#"{"sessionState": {"sessionAttributes": {"shouldRouteToAgent": "false", "score": "0.50"}, "intent": {"state": "InProgress", "name": "FallbackIntent"}, "dialogAction": {"type": "ElicitIntent"}}, "messages": [{"contentType": "PlainText", "content": "Hi from the server.", "weight": 0.50}]}"#;

async fn lex_v2(State(server): State<FakeServer>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    match server.verifier.check(
        SECRET.as_bytes(),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
    ) {
        Ok(()) => {
            let failure = *server.failure.lock().unwrap();
            match failure {
                Some(Failure::Status) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                Some(Failure::Garbage) => return "<html>Bad gateway</html>".into_response(),
                Some(Failure::NotLex) => return r#"{"ok":true}"#.into_response(),
                Some(Failure::Slow(pause)) => tokio::time::sleep(pause).await,
                None => {}
            }
            server
                .accepted
                .lock()
                .unwrap()
                .push(String::from_utf8(body.to_vec()).unwrap());
            ([("content-type", "application/json")], CANNED).into_response()
        }
        Err(e) => (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_returns_the_servers_answer_unchanged() {
    let server = FakeServer::default();
    let addr = serve(
        Router::new()
            .route("/lex/v2", post(lex_v2))
            .with_state(server.clone()),
    )
    .await;
    let url = format!("http://{addr}/lex/v2");
    let mut lambda = Lambda::start(&[
        ("LEX_FORWARD_URL", url.as_str()),
        ("LEX_SHARED_SECRET", SECRET),
    ])
    .await;

    // Two turns (the server refuses a signature it has seen: each is signed afresh).
    let events = [
        lex_event(CALLER, "what are your hours"),
        lex_event(CALLER, "and on sundays"),
    ];
    for event in &events {
        let raw = lambda.invoke_raw(event).await;
        assert_eq!(raw, CANNED, "its log:\n{}", lambda.logs());
    }
    // The events went out as Lex sent them.
    let accepted = server.accepted.lock().unwrap().clone();
    let sent: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert_eq!(accepted, sent);
    let logs = lambda.logs();
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(
        !logs.contains(CALLER),
        "the caller's number is logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_routes_the_caller_to_an_agent() {
    let server = FakeServer::default();
    let addr = serve(
        Router::new()
            .route("/lex/v2", post(lex_v2))
            .with_state(server.clone()),
    )
    .await;
    let url = format!("http://{addr}/lex/v2");
    let mut lambda = Lambda::start(&[
        ("LEX_FORWARD_URL", url.as_str()),
        ("LEX_SHARED_SECRET", SECRET),
    ])
    .await;
    for (turn, failure) in [Failure::Status, Failure::Garbage, Failure::NotLex]
        .into_iter()
        .enumerate()
    {
        *server.failure.lock().unwrap() = Some(failure);
        let answer = lambda
            .invoke(&lex_event(CALLER, &format!("turn {turn}")))
            .await;
        assert_routes_to_agent(&answer, "relaybot could not be reached");
    }
    // Slower than the invocation's deadline allows: the fallback comes before the deadline
    // (1.5 s away: the wait is cut to 1.2 s), not when the server would answer (4 s).
    *server.failure.lock().unwrap() = Some(Failure::Slow(Duration::from_secs(4)));
    lambda.api.time_limit_ms.store(1500, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let answer = lambda.invoke(&lex_event(CALLER, "slow")).await;
    let took = started.elapsed();
    assert_routes_to_agent(&answer, "relaybot could not be reached");
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let logs = lambda.logs();
    for why in [
        "the server answered HTTP 500",
        "not a Lex V2 response: unreadable JSON",
        "not a Lex V2 response: no sessionState",
        "no answer within ",
    ] {
        assert!(logs.contains(why), "{why:?} is not logged:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_forwarding_to_nothing_routes_the_caller_to_an_agent() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/lex/v2");
    // Started as Lambda starts a `bootstrap`: no arguments.
    let mut lambda = Lambda::start_as(
        &[],
        &[
            ("LEX_FORWARD_URL", url.as_str()),
            ("LEX_SHARED_SECRET", SECRET),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let answer = lambda.invoke(&lex_event(CALLER, "hello")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_routes_to_agent(&answer, "relaybot could not be reached");
    let logs = lambda.logs();
    assert!(
        logs.contains("forwarding the Lex event failed"),
        "the failure is not logged:\n{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(
        !logs.contains(CALLER),
        "the caller's number is logged:\n{logs}"
    );
}

#[tokio::test]
async fn forwarding_without_the_secret_refuses_to_start() {
    let output = lambda_command(
        &["lambda"],
        "127.0.0.1:9",
        &[("LEX_FORWARD_URL", "http://127.0.0.1:9/lex/v2")],
    )
    .stderr(Stdio::piped())
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("configuration error: LEX_SHARED_SECRET"),
        "{stderr}"
    );
}

// The fallback and the time budget, without a process.

#[test]
fn the_fallback_keeps_attributes_and_routes_to_an_agent() {
    let event = json!({
        "sessionId": "s1",
        "sessionState": {
            "sessionAttributes": {
                "lang": "en", "n": 3, "relaybotAction": "continue",
                "shouldRouteToAgent": "false", "handoffSummary": "old"
            },
            "intent": { "name": "TalkToAgent", "state": "InProgress", "slots": {} }
        }
    });
    let answer = lambda::route_to_agent(&event, lambda::UNREACHABLE_REASON, "One moment.");
    assert_eq!(
        answer,
        json!({
            "sessionState": {
                "sessionAttributes": {
                    "lang": "en", "n": "3",
                    "shouldRouteToAgent": "true",
                    "shouldTerminateContactFlow": "false",
                    "relaybotAction": "handoff",
                    "relaybotSessionId": "s1",
                    "handoffReason": "relaybot could not be reached",
                    "handoffSummary": lambda::NO_SUMMARY
                },
                "dialogAction": { "type": "Close" },
                "intent": { "name": "TalkToAgent", "state": "Fulfilled" }
            },
            "messages": [ { "contentType": "PlainText", "content": "One moment." } ]
        })
    );
    // No session state: the first interpretation's intent, else FallbackIntent.
    let bare = json!({ "interpretations": [ { "intent": { "name": "Billing" } } ] });
    assert_eq!(
        lambda::route_to_agent(&bare, lambda::FAILED_REASON, "x")["sessionState"]["intent"]["name"],
        "Billing"
    );
    assert_eq!(
        lambda::route_to_agent(&Value::Null, lambda::FAILED_REASON, "x")["sessionState"]["intent"]
            ["name"],
        "FallbackIntent"
    );
}

#[test]
fn the_budget_leaves_a_margin_before_the_deadline_but_never_drops_to_nothing() {
    let in_10s = SystemTime::now() + Duration::from_secs(10);
    let left = lambda::invocation_budget(in_10s);
    assert!(left <= Duration::from_secs(10) - lambda::DEADLINE_MARGIN);
    assert!(left > Duration::from_secs(9));
    assert_eq!(lambda::invocation_budget(UNIX_EPOCH), lambda::MIN_WAIT);
}
