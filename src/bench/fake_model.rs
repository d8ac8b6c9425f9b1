//! The bench's stand-in for the model: an OpenAI-compatible `POST /v1/chat/completions` that
//! streams Server-Sent Events at a set rate.
//!
//! Every reply is `tokens` content chunks, the first after `first`, then one every `interval`,
//! then a `finish_reason: "stop"` chunk and `data: [DONE]`. Each chunk's content is
//! `t<index>w<µs> `: its index in the reply and the time it was handed to the socket, in µs on
//! the bench's [`Clock`], so the caller can tell how long the server took to relay it. Each
//! chunk is its own body frame on a `TCP_NODELAY` socket, so nothing here holds a token back.
//!
//! The fake also measures "prompt → model request": the caller ends each prompt with `@<µs>`
//! (when it sent the prompt); the request's last user message carries it here, and the time from
//! then to this handler starting (the request read in full) is recorded.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::Response,
    routing::post,
    serve::ListenerExt as _,
    Router,
};

use super::Clock;

/// What the fake streams for each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamPlan {
    /// Content chunks per reply.
    pub tokens: usize,
    /// Request → first chunk.
    pub first: Duration,
    /// Between chunks.
    pub interval: Duration,
}

struct Shared {
    plan: StreamPlan,
    clock: Clock,
    /// Prompt sent by the caller → request read here, in µs.
    prompt_to_model: Mutex<Vec<u64>>,
    /// Requests whose last user message carried no `@<µs>`.
    unmarked: AtomicUsize,
    /// Requests received.
    requests: AtomicUsize,
}

/// The running fake model.
pub(crate) struct FakeModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fake saw during one level.
#[derive(Debug, Default)]
pub(crate) struct ModelSamples {
    /// Prompt → model request, in µs, one per marked request.
    pub prompt_to_model_us: Vec<u64>,
    /// Requests received.
    pub requests: usize,
    /// Requests without the caller's `@<µs>` mark.
    pub unmarked: usize,
}

impl FakeModel {
    /// Starts on `127.0.0.1:port` (`0`: any free port).
    pub(crate) async fn start(port: u16, plan: StreamPlan, clock: Clock) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            plan,
            clock,
            prompt_to_model: Mutex::new(Vec::new()),
            unmarked: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        // Nagle would hold a small chunk back until the previous one is acknowledged.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the bench's fake model stopped");
            }
        });
        Ok(FakeModel { addr, shared, task })
    }

    /// The base URL to give the server as `OPENAI_BASE_URL`: `http://127.0.0.1:port/v1`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Takes what was recorded since the last call, and starts afresh.
    pub(crate) fn take(&self) -> ModelSamples {
        let prompt_to_model_us = std::mem::take(
            &mut *self
                .shared
                .prompt_to_model
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        ModelSamples {
            prompt_to_model_us,
            requests: self.shared.requests.swap(0, Ordering::Relaxed),
            unmarked: self.shared.unmarked.swap(0, Ordering::Relaxed),
        }
    }
}

async fn completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let arrival = shared.clock.now_us();
    let start = tokio::time::Instant::now();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    match prompt_sent_at(&body) {
        Some(Err(())) => {} // a warm-up turn
        Some(Ok(sent)) => shared
            .prompt_to_model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(arrival.saturating_sub(sent)),
        None => {
            shared.unmarked.fetch_add(1, Ordering::Relaxed);
        }
    }
    let stream = futures::stream::unfold((0usize, shared), move |(i, shared)| async move {
        let plan = shared.plan;
        let frame = if i < plan.tokens {
            let due = start + plan.first + plan.interval * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
            content_chunk(i, shared.clock.now_us())
        } else if i == plan.tokens {
            Bytes::from_static(FINISH_CHUNK)
        } else if i == plan.tokens + 1 {
            Bytes::from_static(b"data: [DONE]\n\n")
        } else {
            return None;
        };
        Some((Ok::<_, Infallible>(frame), (i + 1, shared)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

const FINISH_CHUNK: &[u8] = b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

/// One SSE event with content `t<index>w<written µs> `.
fn content_chunk(index: usize, written_us: u64) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{index}w{written_us} \"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

#[derive(serde::Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<ChatMessage>,
}

#[derive(serde::Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

/// What a warm-up prompt ends with instead of its `@<µs>`: not measured, and not an error.
pub(crate) const WARMUP_MARK: &str = "@warm-up";

/// The `@<µs>` at the end of the request's last user message; `Err(())` for a warm-up prompt.
fn prompt_sent_at(body: &[u8]) -> Option<Result<u64, ()>> {
    let text = last_user_text(body)?;
    if text.ends_with(WARMUP_MARK) {
        return Some(Err(()));
    }
    mark(&text).map(Ok)
}

/// The text of the request's last user message.
fn last_user_text(body: &[u8]) -> Option<String> {
    let request: ChatRequest = serde_json::from_slice(body).ok()?;
    let message = request.messages.iter().rev().find(|m| m.role == "user")?;
    let text = match &message.content {
        serde_json::Value::String(s) => s.clone(),
        // Content parts: `[{"type": "text", "text": "…"}]`.
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
            .collect(),
        _ => return None,
    };
    Some(text)
}

/// The number after the last `@` in `text`.
pub(crate) fn mark(text: &str) -> Option<u64> {
    let after = &text[text.rfind('@')? + 1..];
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    after[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mark_of_the_last_user_message() {
        let body = serde_json::json!({
            "model": "bench", "stream": true,
            "messages": [
                {"role": "system", "content": "be brief @1"},
                {"role": "user", "content": "bench call 0 turn 0 @17"},
                {"role": "assistant", "content": "t0w5 "},
                {"role": "user", "content": [{"type": "text", "text": "bench call 0 turn 1 @123456"}]},
            ]
        });
        assert_eq!(
            prompt_sent_at(body.to_string().as_bytes()),
            Some(Ok(123_456))
        );
        assert_eq!(mark("no mark"), None);
        assert_eq!(mark("a @12."), Some(12));
    }

    #[test]
    fn chunks_are_valid_sse_json() {
        let chunk = content_chunk(3, 42);
        let text = std::str::from_utf8(&chunk).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["choices"][0]["delta"]["content"], "t3w42 ");
        let finish = std::str::from_utf8(FINISH_CHUNK).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(finish.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
    }
}
