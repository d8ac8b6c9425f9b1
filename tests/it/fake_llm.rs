//! An in-process OpenAI-compatible Chat Completions server that streams real SSE.
//!
//! Each request takes the next [`Script`] from a queue (a plain "OK." reply when the queue is
//! empty) and every request body is handed to the test through [`FakeLlm::next_request`]. Scripts
//! can stream content and tool-call fragments split across chunks, answer an HTTP error, stall,
//! cut the connection mid-stream, or hold the stream at a gate so a test can barge in and then
//! check that the client dropped the stream.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// One SSE chunk of a streamed response.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// `delta.content`.
    Text(&'static str),
    /// The first fragment of a tool call: id and name, and maybe some arguments.
    CallStart {
        index: u32,
        id: &'static str,
        name: &'static str,
        args: &'static str,
    },
    /// A later fragment: more argument text only.
    CallArgs { index: u32, args: &'static str },
    /// `finish_reason`.
    Finish(&'static str),
    /// `delta.content` built at run time.
    Owned(String),
    /// A raw `data:` payload, sent as is (for malformed streams).
    Raw(&'static str),
}

impl Chunk {
    fn to_json(&self) -> Value {
        let (delta, finish) = match self {
            Chunk::Text(t) => (json!({ "content": t }), Value::Null),
            Chunk::CallStart {
                index,
                id,
                name,
                args,
            } => (
                json!({ "tool_calls": [{ "index": index, "id": id, "type": "function",
                                         "function": { "name": name, "arguments": args } }] }),
                Value::Null,
            ),
            Chunk::CallArgs { index, args } => (
                json!({ "tool_calls": [{ "index": index, "function": { "arguments": args } }] }),
                Value::Null,
            ),
            Chunk::Finish(reason) => (json!({}), json!(reason)),
            Chunk::Owned(t) => (json!({ "content": t }), Value::Null),
            Chunk::Raw(raw) => return Value::String((*raw).to_owned()),
        };
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
        })
    }
}

/// A gate the test opens, and a signal that the client went away.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// Notified by the test to release the rest of the stream.
    pub open: Arc<Notify>,
    /// Notified by the fake when the client dropped the response.
    pub dropped: Arc<Notify>,
}

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Stream the chunks, then `data: [DONE]`.
    Stream(Vec<Chunk>),
    /// Answer this HTTP status with an OpenAI-style error body.
    Status(u16),
    /// Never answer.
    Stall,
    /// Answer with one JSON completion, as a server that ignores `stream: true` would.
    NotStreaming,
    /// Answer this HTTP status with a body that never ends.
    EndlessError(u16),
    /// Stream the chunks, then break the connection.
    Cut(Vec<Chunk>),
    /// Stream `before`, wait for the gate, then stream `after` and `[DONE]`.
    Gated {
        before: Vec<Chunk>,
        after: Vec<Chunk>,
        gate: Gate,
    },
}

impl Script {
    /// One complete tool call (id, name, arguments JSON), ending with `tool_calls`.
    pub fn call(id: &'static str, name: &'static str, args: &'static str) -> Script {
        Script::Stream(vec![
            Chunk::CallStart {
                index: 0,
                id,
                name,
                args,
            },
            Chunk::Finish("tool_calls"),
        ])
    }

    /// A complete text reply, one chunk per piece, ending with `stop`.
    pub fn text(pieces: &[&'static str]) -> Script {
        let mut chunks: Vec<Chunk> = pieces.iter().map(|p| Chunk::Text(p)).collect();
        chunks.push(Chunk::Finish("stop"));
        Script::Stream(chunks)
    }
}

#[derive(Clone)]
struct FakeState {
    default: Arc<Mutex<Option<Script>>>,
    scripts: Arc<Mutex<VecDeque<Script>>>,
    requests: mpsc::UnboundedSender<Value>,
}

/// The running fake.
pub struct FakeLlm {
    /// `http://127.0.0.1:port/v1`: give it as `OPENAI_BASE_URL`.
    pub base_url: String,
    default: Arc<Mutex<Option<Script>>>,
    scripts: Arc<Mutex<VecDeque<Script>>>,
    requests: mpsc::UnboundedReceiver<Value>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeLlm {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeLlm {
        let (tx, rx) = mpsc::unbounded_channel();
        let scripts = Arc::new(Mutex::new(VecDeque::new()));
        let default = Arc::new(Mutex::new(None));
        let state = FakeState {
            default: default.clone(),
            scripts: scripts.clone(),
            requests: tx,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            default,
            scripts,
            requests: rx,
            server,
        }
    }

    /// The answer when no script is queued (a plain "OK." otherwise).
    pub fn set_default(&self, script: Script) {
        *self.default.lock().unwrap() = Some(script);
    }

    /// Queues the answer to a future request.
    pub fn push(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    /// A request already received and not yet taken, if any.
    pub fn next_request_now(&mut self) -> Option<Value> {
        self.requests.try_recv().ok()
    }

    /// The next request body the fake received.
    pub async fn next_request(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("the model was asked within 10 s")
            .expect("fake running")
    }
}

fn sse(chunk: &Value) -> Bytes {
    match chunk {
        // A raw payload goes out exactly as written.
        Value::String(raw) => Bytes::from(format!("data: {raw}\n\n")),
        _ => Bytes::from(format!("data: {chunk}\n\n")),
    }
}

async fn completions(State(state): State<FakeState>, Json(body): Json<Value>) -> Response {
    let _ = state.requests.send(body);
    let script = state
        .scripts
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or_else(|| Script::text(&["OK."]));
    let (before, after, gate, finish) = match script {
        Script::Status(status) => {
            let body = json!({"error": {"message": "fake failure", "type": "server_error"}});
            return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
        }
        Script::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Script::NotStreaming => {
            let body = json!({"id": "chatcmpl-fake", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Whole answer."}, "finish_reason": "stop"}
            ]});
            return Json(body).into_response();
        }
        Script::EndlessError(status) => {
            let endless = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, std::io::Error>(Bytes::from_static(b"overloaded ")),
                    (),
                ))
            });
            return Response::builder()
                .status(status)
                .header("content-type", "text/plain")
                .body(Body::from_stream(endless))
                .unwrap();
        }
        Script::Stream(chunks) => (chunks, vec![], None, true),
        Script::Cut(chunks) => (chunks, vec![], None, false),
        Script::Gated {
            before,
            after,
            gate,
        } => (before, after, Some(gate), true),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for chunk in &before {
            if tx.send(Ok(sse(&chunk.to_json()))).await.is_err() {
                return;
            }
        }
        if let Some(gate) = gate {
            tokio::select! {
                () = tx.closed() => { gate.dropped.notify_one(); return; }
                () = gate.open.notified() => {}
            }
        }
        for chunk in &after {
            if tx.send(Ok(sse(&chunk.to_json()))).await.is_err() {
                return;
            }
        }
        if finish {
            let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        } else {
            // Let the chunks reach the client before the connection breaks.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err(std::io::Error::other("connection cut"))).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(tokio_stream_from(rx)))
        .unwrap()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
