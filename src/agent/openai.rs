//! The OpenAI-compatible model: Chat Completions with `stream: true` through async-openai,
//! pointed at any base URL (OpenAI, vLLM, Ollama, Groq, gateways, or a test fake).
//!
//! Requests use async-openai's typed request structs. Chunks are read with async-openai's
//! "bring your own type" streaming into the lenient [`Chunk`] below rather than its strict
//! response type: compatible servers differ in small ways (missing `id`/`created`, finish reasons
//! such as `eos`, tool-call fragments without `index`), and one odd field must not cost the
//! caller a reply. Wire format: <https://platform.openai.com/docs/api-reference/chat/streaming>.
//!
//! async-openai's default transport retries 429/5xx up to three times with backoff of up to 8 s
//! (longer with `Retry-After`). On a phone line that is dead air, so we give it a plain
//! transport (`ReqwestService`, no retry layer) and keep the retry decision in the turn
//! ([`super::turn`]), which knows the caller's deadline.

use std::{pin::Pin, time::Duration};

use async_openai::{
    config::OpenAIConfig,
    error::OpenAIError,
    middleware::ReqwestService,
    types::chat::{
        ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
        ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
        ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
        ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
        ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
        ChatCompletionRequestUserMessageContent, ChatCompletionTool, ChatCompletionTools,
        CreateChatCompletionRequest, FunctionCall, FunctionObject,
    },
    Client,
};
use futures::{future::BoxFuture, FutureExt, Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{ChatModel, ChatRequest, Delta, DeltaStream, LlmError, Message};

/// A streaming Chat Completions client for one model at one base URL.
pub struct OpenAiModel {
    client: Client<OpenAIConfig>,
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
        let config = OpenAIConfig::new().with_api_base(base_url).with_api_key(
            api_key
                .map(|k| k.expose_secret().to_owned())
                .unwrap_or_default(),
        );
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the model: {e}"))?;
        Ok(OpenAiModel {
            client: Client::with_config(config).with_http_service(ReqwestService::new(http)),
            model: model.to_owned(),
        })
    }

    /// The request body: our history in async-openai's types.
    pub fn build_request(&self, request: &ChatRequest) -> CreateChatCompletionRequest {
        let messages = request.messages.iter().map(to_openai).collect();
        let tools: Vec<ChatCompletionTools> = request
            .tools
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
            .collect();
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages,
            stream: Some(true),
            tools: (!tools.is_empty()).then_some(tools),
            ..Default::default()
        }
    }
}

fn to_openai(message: &Message) -> ChatCompletionRequestMessage {
    match message {
        Message::System { content } => {
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(content.clone()),
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
    choices: Vec<ChunkChoice>,
    /// Some servers report errors inside the stream.
    error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkChoice {
    index: u32,
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

fn map_error(error: OpenAIError) -> LlmError {
    match error {
        OpenAIError::ApiError(e) => LlmError::Status {
            status: e.status_code.as_u16(),
            message: e.api_error.message.chars().take(300).collect(),
        },
        OpenAIError::JSONDeserialize(e, _) => LlmError::Decode(e.to_string()),
        other => LlmError::Transport(other.to_string()),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, OpenAIError>> + Send>>;

impl ChatModel for OpenAiModel {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'static, Result<DeltaStream, LlmError>> {
        let body = self.build_request(&request);
        let client = self.client.clone();
        async move {
            let chunks: ChunkStream = client
                .chat()
                .create_stream_byot(body)
                .await
                .map_err(map_error)?;
            let deltas = chunks.flat_map(|chunk| {
                let items: Vec<Result<Delta, LlmError>> =
                    match chunk.map_err(map_error).and_then(Chunk::into_deltas) {
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
    fn request_carries_history_and_tools() {
        let model =
            OpenAiModel::new("http://127.0.0.1:9/v1", None, "m", Duration::from_secs(1)).unwrap();
        let body = model.build_request(&ChatRequest {
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
        });
        let json = serde_json::to_value(&body).unwrap();
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
