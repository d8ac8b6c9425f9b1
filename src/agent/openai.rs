//! The OpenAI-compatible model: Chat Completions with `stream: true`, pointed at any base URL
//! (OpenAI, vLLM, Ollama, Groq, gateways, or a test fake).
//!
//! Request bodies are async-openai's typed request structs (`CreateChatCompletionRequest`),
//! serialised with serde. The response is read straight from reqwest's body stream as
//! server-sent events (the `eventsource-stream` crate) into the lenient [`Chunk`] below. Wire
//! format: <https://platform.openai.com/docs/api-reference/chat/streaming>.
//!
//! Why not async-openai's client: its streaming reads the response in a task of its own and
//! forwards each chunk over an unbounded channel, one more task wake-up per token on the path
//! every caller waits on; and its default transport retries 429/5xx up to three times with
//! backoff of up to 8 s, which on a phone line is dead air. Here the turn ([`super::turn`])
//! polls the HTTP body itself and owns the retry decision, knowing the caller's deadline.
//! Chunks are read leniently because compatible servers differ in small ways (missing
//! `id`/`created`, finish reasons such as `eos`, tool-call fragments without `index`), and one
//! odd field must not cost the caller a reply.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, FunctionCall, FunctionObject,
};
use bytes::Bytes;
use eventsource_stream::Eventsource as _;
use futures::{future::BoxFuture, FutureExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ChatModel, ChatRequest, Delta, DeltaStream, LlmError, Message, ToolSpec};

/// A tool set and its `tools` array as JSON.
type ToolsJson = (Arc<[ToolSpec]>, Arc<RawValue>);

/// A streaming Chat Completions client for one model at one base URL.
pub struct OpenAiModel {
    /// The last tool set's `tools` array as JSON, kept by the set's identity: every turn of every
    /// call sends the same tools, and converting their schemas anew costs an allocation per
    /// JSON node per request.
    tools_json: Mutex<Option<ToolsJson>>,
    http: reqwest::Client,
    /// `{base}/chat/completions`.
    url: String,
    api_key: Option<SecretString>,
    model: String,
}

impl OpenAiModel {
    /// A client for `model` at `base_url` (for example `https://api.openai.com/v1`), with
    /// `api_key` as the bearer token. `connect_timeout` bounds the TCP/TLS connect.
    ///
    /// # Errors
    /// A message if the HTTP client cannot be built.
    pub fn new(
        base_url: &str,
        api_key: Option<&SecretString>,
        model: &str,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the model: {e}"))?;
        Ok(OpenAiModel {
            tools_json: Mutex::new(None),
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key: api_key.cloned(),
            model: model.to_owned(),
        })
    }

    /// The request in async-openai's types: our history, and the tools when `with_tools`.
    pub fn build_request(
        &self,
        request: &ChatRequest,
        with_tools: bool,
    ) -> CreateChatCompletionRequest {
        let tools = with_tools.then(|| openai_tools(&request.tools));
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: request.messages.iter().map(to_openai).collect(),
            stream: Some(true),
            tools: tools.filter(|t| !t.is_empty()),
            ..Default::default()
        }
    }

    /// The JSON body of a streaming Chat Completions request: [`OpenAiModel::build_request`]
    /// without tools, plus the cached `tools` array.
    ///
    /// # Errors
    /// Serialisation failures (not expected for these types).
    pub fn body(&self, request: &ChatRequest) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(flatten)]
            request: &'a CreateChatCompletionRequest,
            #[serde(skip_serializing_if = "Option::is_none")]
            tools: Option<&'a RawValue>,
        }
        let tools = if request.tools.is_empty() {
            None
        } else {
            Some(self.tools_json(&request.tools)?)
        };
        serde_json::to_vec(&Body {
            request: &self.build_request(request, false),
            tools: tools.as_deref(),
        })
    }

    fn tools_json(&self, tools: &Arc<[ToolSpec]>) -> serde_json::Result<Arc<RawValue>> {
        let mut cached = self
            .tools_json
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((set, json)) = cached.as_ref() {
            if Arc::ptr_eq(set, tools) {
                return Ok(json.clone());
            }
        }
        let json: Arc<RawValue> = serde_json::value::to_raw_value(&openai_tools(tools))?.into();
        *cached = Some((tools.clone(), json.clone()));
        Ok(json)
    }
}

/// Our tool specs as OpenAI function tools.
fn openai_tools(tools: &[ToolSpec]) -> Vec<ChatCompletionTools> {
    tools
        .iter()
        .map(|t| {
            ChatCompletionTools::Function(ChatCompletionTool {
                function: FunctionObject {
                    name: t.name.clone(),
                    description: Some(t.description.clone()),
                    parameters: Some(t.parameters.clone()),
                    strict: None,
                },
            })
        })
        .collect()
}

fn to_openai(message: &Message) -> ChatCompletionRequestMessage {
    match message {
        Message::System { content } => {
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(content.to_string()),
                name: None,
            })
        }
        Message::User { content } => {
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                content: ChatCompletionRequestUserMessageContent::Text(content.clone()),
                name: None,
            })
        }
        Message::Assistant {
            content,
            tool_calls,
            ..
        } => {
            let tool_calls: Vec<ChatCompletionMessageToolCalls> = tool_calls
                .iter()
                .map(|c| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: c.id.clone(),
                        function: FunctionCall {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        },
                    })
                })
                .collect();
            #[allow(deprecated)]
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content: (!content.is_empty() || tool_calls.is_empty())
                    .then(|| ChatCompletionRequestAssistantMessageContent::Text(content.clone())),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                ..Default::default()
            })
        }
        Message::Tool {
            tool_call_id,
            content,
        } => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(content.clone()),
            tool_call_id: tool_call_id.clone(),
        }),
    }
}

/// A streamed chunk, read leniently: every field optional, unknown fields ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Chunk {
    #[serde(deserialize_with = "null_as_default")]
    choices: Vec<ChunkChoice>,
    /// Some servers report errors inside the stream.
    error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkChoice {
    #[serde(deserialize_with = "null_as_default")]
    index: u32,
    #[serde(deserialize_with = "null_as_default")]
    delta: ChunkDelta,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkDelta {
    content: Option<String>,
    tool_calls: Option<Vec<ChunkToolCall>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<ChunkFunction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// `null` read as the type's default (some servers send `"delta": null`, `"choices": null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Chunk {
    /// The deltas of choice 0 in this chunk, in order: content, tool-call fragments, finish.
    fn into_deltas(self) -> Result<Vec<Delta>, LlmError> {
        if let Some(error) = self.error {
            return Err(LlmError::Transport(format!(
                "error inside the stream: {error}"
            )));
        }
        let mut out = Vec::new();
        for choice in self.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push(Delta::Content(text));
            }
            for (position, call) in choice
                .delta
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let function = call.function.unwrap_or_default();
                out.push(Delta::ToolCall {
                    index: call.index.unwrap_or(position as u32),
                    id: call.id,
                    name: function.name,
                    arguments: function.arguments,
                });
            }
            if let Some(reason) = choice.finish_reason {
                out.push(Delta::Finish(reason));
            }
        }
        Ok(out)
    }
}

/// A request body that notes when the HTTP client starts sending it, i.e. when the request
/// goes out on its connection (after any connect), for `relaybot_prompt_to_model_request_seconds`.
/// Its exact size is known, so the request still carries `Content-Length`.
struct OnTheWire {
    bytes: Option<Bytes>,
    on_the_wire: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

impl http_body::Body for OnTheWire {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let _ = self.on_the_wire.set(tokio::time::Instant::now());
        std::task::Poll::Ready(self.bytes.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Longest error body read from the model server (the rest is not waited for).
const MAX_ERROR_BODY_BYTES: usize = 8 * 1024;
/// Longest wait for an error body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_millis(500);

/// Up to `max` bytes of `response`'s body, within [`ERROR_BODY_TIMEOUT`], as text (lossy): an
/// error answer that is huge or never ends must not hold the turn until its deadline.
async fn read_capped(mut response: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk[..chunk.len().min(max - body.len())])
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// `bytes` with invalid UTF-8 replaced by U+FFFD. The SSE parser waits for more bytes after
/// an invalid sequence as if it were an unfinished character, which would stall the stream
/// until the idle timeout; a chunk's JSON is all we need, so a bad byte must not cost it.
fn lossy_utf8<S, E>(bytes: S) -> impl futures::Stream<Item = Result<Bytes, E>>
where
    S: futures::Stream<Item = Result<Bytes, E>>,
{
    bytes.scan(Vec::<u8>::new(), |carry, chunk| {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return futures::future::ready(Some(Err(e))),
        };
        // The usual case, passed through as it is: nothing carried over, all valid.
        if carry.is_empty() && std::str::from_utf8(&chunk).is_ok() {
            return futures::future::ready(Some(Ok(chunk)));
        }
        carry.extend_from_slice(&chunk);
        let mut out = Vec::with_capacity(carry.len());
        let mut rest: &[u8] = carry;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.extend_from_slice(valid.as_bytes());
                    rest = &[];
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.extend_from_slice(valid);
                    match e.error_len() {
                        Some(bad) => {
                            out.extend_from_slice("\u{FFFD}".as_bytes());
                            rest = &after[bad..];
                        }
                        // An unfinished character at the end: kept for the next chunk.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.to_vec();
        *carry = keep;
        futures::future::ready(Some(Ok(Bytes::from(out))))
    })
}

/// The error an HTTP error status carries: OpenAI's `{"error":{"message":…}}`, else the body.
fn status_error(status: u16, body: &str) -> LlmError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_str::<Body>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| body.to_owned());
    LlmError::Status {
        status,
        message: message.chars().take(300).collect(),
    }
}

impl ChatModel for OpenAiModel {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'static, Result<DeltaStream, LlmError>> {
        let body = self.body(&request);
        let mut post = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key.expose_secret());
        }
        let on_the_wire = request.on_the_wire.clone();
        async move {
            let body = body.map_err(|e| LlmError::Internal(format!("request body: {e}")))?;
            let response = post
                .body(reqwest::Body::wrap(OnTheWire {
                    bytes: Some(Bytes::from(body)),
                    on_the_wire,
                }))
                .send()
                .await
                .map_err(|e| LlmError::Transport(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                let text = read_capped(response, MAX_ERROR_BODY_BYTES).await;
                return Err(status_error(status.as_u16(), &text));
            }
            let json = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if json {
                return Err(LlmError::Decode(
                    "the model server answered with one JSON document, not an event stream: does it support \"stream\": true?".into(),
                ));
            }
            let events = lossy_utf8(response.bytes_stream()).eventsource();
            let deltas = events
                .take_while(|event| {
                    let done = matches!(event, Ok(e) if e.data.trim() == "[DONE]");
                    futures::future::ready(!done)
                })
                .filter(|event| {
                    let keepalive = matches!(event, Ok(e) if e.event == "keepalive");
                    futures::future::ready(!keepalive)
                })
                // Events that are not JSON objects (a `ping`, a comment-like payload) carry no
                // chunk; they are skipped, not fatal.
                .filter(|event| {
                    let other = matches!(event, Ok(e) if !e.data.trim_start().starts_with('{'));
                    if other {
                        tracing::debug!("skipping a model event that is not a JSON chunk");
                    }
                    futures::future::ready(!other)
                })
                .flat_map(|event| {
                    let deltas = match event {
                        Ok(event) => serde_json::from_str::<Chunk>(&event.data)
                            .map_err(|e| LlmError::Decode(e.to_string()))
                            .and_then(Chunk::into_deltas),
                        Err(e) => Err(LlmError::Transport(e.to_string())),
                    };
                    let items: Vec<Result<Delta, LlmError>> = match deltas {
                        Ok(deltas) => deltas.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    };
                    futures::stream::iter(items)
                });
            Ok(deltas.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_chunks_become_deltas() {
        let chunk: Chunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":"Hi ","tool_calls":[{"id":"c1","function":{"name":"f","arguments":"{\"a\""}}]},"finish_reason":"eos"}]}"#,
        )
        .unwrap();
        assert_eq!(
            chunk.into_deltas().unwrap(),
            vec![
                Delta::Content("Hi ".into()),
                Delta::ToolCall {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("f".into()),
                    arguments: Some("{\"a\"".into())
                },
                Delta::Finish("eos".into())
            ]
        );
        let err: Chunk = serde_json::from_str(r#"{"error":{"message":"overloaded"}}"#).unwrap();
        assert!(err.into_deltas().is_err());
    }

    #[test]
    fn null_fields_and_bad_utf8_never_cost_a_chunk() {
        let chunk: Chunk = serde_json::from_str(
            r#"{"choices":[{"index":null,"delta":null,"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(
            chunk.into_deltas().unwrap(),
            vec![Delta::Finish("stop".into())]
        );
        let chunk: Chunk = serde_json::from_str(r#"{"choices":null}"#).unwrap();
        assert!(chunk.into_deltas().unwrap().is_empty());

        let pieces: Vec<Result<Bytes, ()>> = vec![
            Ok(Bytes::from_static(b"data: A\xff")),
            Ok(Bytes::from_static(b"B caf\xc3")),
            Ok(Bytes::from_static(b"\xa9\n")),
        ];
        let out: Vec<u8> = futures::executor::block_on(
            lossy_utf8(futures::stream::iter(pieces))
                .map(|b| b.unwrap().to_vec())
                .concat(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: A\u{FFFD}B café\n",
            "a bad byte is replaced, a character split across chunks is kept whole"
        );
    }

    #[test]
    fn request_carries_history_and_tools() {
        let model =
            OpenAiModel::new("http://127.0.0.1:9/v1", None, "m", Duration::from_secs(1)).unwrap();
        let request = ChatRequest {
            messages: vec![
                Message::System {
                    content: "s".into(),
                },
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![super::super::ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    interrupted: false,
                },
                Message::Tool {
                    tool_call_id: "c1".into(),
                    content: "r".into(),
                },
            ],
            tools: vec![super::super::ToolSpec {
                name: "f".into(),
                description: "d".into(),
                parameters: serde_json::json!({"type":"object"}),
            }]
            .into(),
            on_the_wire: Default::default(),
        };
        let body = model.body(&request).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::to_value(model.build_request(&request, true)).unwrap(),
            "the cached tools serialise as the typed request would"
        );
        let again: serde_json::Value =
            serde_json::from_slice(&model.body(&request).unwrap()).unwrap();
        assert_eq!(again, json, "from the cache, the same");
        assert_eq!(json["stream"], true);
        assert_eq!(
            json["messages"][1]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(json["messages"][1]["tool_calls"][0]["type"], "function");
        assert!(json["messages"][1].get("content").is_none());
        assert_eq!(json["messages"][2]["tool_call_id"], "c1");
        assert_eq!(json["tools"][0]["type"], "function");
    }
}
