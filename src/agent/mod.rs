//! The agent: a streaming chat model, the tools it may call, and the turn loop that joins them.
//!
//! The agent knows nothing about WebSockets or Twilio: it takes a conversation history, streams
//! [`turn::TurnEvent`]s (text to speak, messages to keep), and runs tools. That is what lets the
//! same agent serve other channels later (chat, a Lex code hook).
//!
//! - [`ChatModel`]: the one trait both model back ends implement: [`openai::OpenAiModel`]
//!   (async-openai, any OpenAI-compatible base URL) and [`offline::OfflineModel`] (rule-based).
//! - [`tools`]: the tool registry.
//! - [`control`]: how a tool asks its session to act on the call; [`call_tools`]: the tools
//!   that do (`agent_handoff`, `end_call`, `switch_language`).
//! - [`turn`]: one caller turn: stream, assemble tool calls, run tools, loop.

pub mod call_tools;
pub mod control;
pub mod lex;
pub mod offline;
pub mod openai;
pub mod tools;
pub mod turn;
pub mod watson;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};
use serde::Serialize;

use crate::config::{Config, LlmProvider};

pub use crate::config::DEFAULT_SYSTEM_PROMPT;

/// Identifies a turn within a call; events of a turn that is no longer current are dropped.
pub type TurnId = u64;

/// What a tool answers: the text the model reads, or an error the model is told about.
pub type ToolResult = Result<String, String>;

/// How a conversation leaves the bot, on every channel and at every step: what a call-control
/// tool asks for, what a session carries out once its last line is heard, and what a dropped
/// call's store entry says so the next instance of it finishes the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Departure {
    /// To a human agent.
    Handoff {
        /// Why, in a few words.
        reason: String,
        /// What the customer wants and what is known so far, for the agent.
        summary: String,
    },
    /// The conversation ends.
    End {
        /// Why, in a few words.
        reason: String,
        /// Asked for by the model's `end_call`: a customer who talks over the goodbye cancels
        /// it. Ends imposed by limits (silence, call length, shutdown) are not cancellable.
        by_customer_choice: bool,
    },
}

/// Who is on the line: filled from the Conversation Relay `setup` message.
///
/// Channel-neutral on purpose: a chat channel fills the same fields from its own events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallContext {
    /// `CA…` (the conversation id on other channels).
    pub call_sid: String,
    /// Conversation Relay session (`VX…`).
    pub session_id: String,
    /// Caller number or identity. Never log it unmasked (see [`mask_number`]).
    pub from: String,
    /// Called number or identity.
    pub to: String,
    /// `inbound` / `outbound…`.
    pub direction: String,
    /// `<Parameter>` values from the TwiML.
    pub custom_parameters: BTreeMap<String, String>,
}

/// A caller number as it may appear in logs: all but the last four characters hidden
/// (`+14155550123` → `***0123`).
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 4 {
        return "***".into();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("***{tail}")
}

/// One message of the conversation history, in OpenAI Chat Completions terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions.
    System {
        /// Text, shared: every call's history starts with the same prompt.
        content: Arc<str>,
    },
    /// What the caller said (or pressed).
    User {
        /// Text.
        content: String,
    },
    /// What the agent said, and the tools it called.
    Assistant {
        /// Text that was spoken (cut to what the caller heard when interrupted).
        content: String,
        /// Tool calls made in this message.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// The caller cut this reply off; `content` is what they heard.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// A tool's result.
    Tool {
        /// The `id` of the [`ToolCall`] this answers.
        tool_call_id: String,
        /// The result text the model reads.
        content: String,
    },
}

impl Message {
    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::Assistant {
            content: content.into(),
            tool_calls: Vec::new(),
            interrupted: false,
        }
    }
}

/// A complete tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// The model's id for the call (`call_…`).
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments: JSON text as the model wrote it (not necessarily valid).
    pub arguments: String,
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// `[a-zA-Z0-9_-]{1,64}`.
    pub name: String,
    /// When and how to use it, written for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// One piece of a streamed model response.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Text to speak, exactly as streamed (spaces kept).
    Content(String),
    /// A fragment of a tool call; fragments with the same `index` belong together.
    ToolCall {
        /// Position of the call in the response.
        index: u32,
        /// Set on the first fragment.
        id: Option<String>,
        /// Set on the first fragment.
        name: Option<String>,
        /// A piece of the arguments JSON text.
        arguments: Option<String>,
    },
    /// The model finished (`stop`, `tool_calls`, `length`, …).
    Finish(String),
}

/// A stream of deltas; dropping it aborts the request.
pub type DeltaStream = BoxStream<'static, Result<Delta, LlmError>>;

/// What the model is asked.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The whole history, system prompt first.
    pub messages: Vec<Message>,
    /// Tools the model may call (shared by every turn of every call).
    pub tools: Arc<[ToolSpec]>,
    /// Set by a model with a network request when that request starts going out on its
    /// connection (after any connect): the "model request on the wire" of
    /// `relaybot_prompt_to_model_request_seconds`. Left unset by models without one.
    pub on_the_wire: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

/// Why a model request failed. None of these end the call: the caller hears an apology.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    /// The server answered with an HTTP error status (retryable when 429 or 5xx).
    #[error("model server answered HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Error text from the body.
        message: String,
    },
    /// Connection or protocol failure, including a stream that broke mid-way.
    #[error("model request failed: {0}")]
    Transport(String),
    /// A chunk that is not valid JSON of the expected shape.
    #[error("model sent a malformed chunk: {0}")]
    Decode(String),
    /// No first chunk, or no next chunk, in time.
    #[error("model timed out waiting for the {0}")]
    Timeout(&'static str),
    /// The stream ended without a finish reason: the response was cut.
    #[error("model stream ended before the response was finished")]
    Cut,
    /// The model kept calling tools past the step limit.
    #[error("model called tools for {0} steps without answering")]
    TooManySteps(usize),
    /// The turn itself broke (a bug: a panic in the turn task).
    #[error("the turn failed: {0}")]
    Internal(String),
}

impl LlmError {
    /// Worth one quick retry before anything is spoken: rate limits, server errors, and
    /// transport failures (refused or reset connections).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Transport(_) => true,
            _ => false,
        }
    }
}

/// What answers the customer, one turn at a time: the seam every channel drives.
///
/// A brain takes the conversation so far and the customer's new input ([`turn::TurnInput`]:
/// the history ending with it, the call or chat it belongs to, the keys pressed) and reports on
/// `events`: text to send as it comes ([`turn::TurnEvent::Content`]), messages to keep
/// ([`turn::TurnEvent::Commit`]), then [`turn::TurnEvent::Done`] or
/// [`turn::TurnEvent::Failed`] — every event tagged with the turn's id. To hand the customer to a
/// person or end the conversation it asks through `input.control`
/// ([`control::ControlRequest::Leave`]), exactly as the LLM's `agent_handoff` and `end_call`
/// tools do, so every handoff path works whatever the brain.
///
/// Implementations: [`Agent`] (an LLM with tools: OpenAI-compatible or the offline stand-in,
/// through [`turn::run_turn`]), [`lex::LexBrain`] (Amazon Lex V2) and [`watson::WatsonBrain`]
/// (IBM Watson Assistant v2), which keep their own session state keyed by the conversation's
/// id (`input.call.call_sid`: a CallSid or ConversationSid).
pub trait Brain: Send + Sync + 'static {
    /// Runs one turn to its end (dropping the future cancels it: the customer cut in).
    fn turn(
        self: Arc<Self>,
        input: turn::TurnInput,
        events: tokio::sync::mpsc::Sender<(TurnId, turn::TurnEvent)>,
    ) -> BoxFuture<'static, ()>;

    /// The system prompt the history starts with (empty for a bot that has its own).
    fn system_prompt(&self) -> Arc<str>;
}

impl Brain for Agent {
    fn turn(
        self: Arc<Self>,
        input: turn::TurnInput,
        events: tokio::sync::mpsc::Sender<(TurnId, turn::TurnEvent)>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(turn::run_turn(self, input, events))
    }

    fn system_prompt(&self) -> Arc<str> {
        self.system_prompt.clone()
    }
}

/// A streaming chat model. Implemented by the OpenAI-compatible client and the offline agent.
pub trait ChatModel: Send + Sync + 'static {
    /// Starts a streamed response. Dropping the returned stream aborts the request.
    fn stream(&self, request: ChatRequest) -> BoxFuture<'static, Result<DeltaStream, LlmError>>;
}

/// The agent every call shares: model, tools, prompt and limits.
pub struct Agent {
    /// The model back end.
    pub model: Arc<dyn ChatModel>,
    /// Tools offered to the model.
    pub tools: tools::ToolRegistry,
    /// The system prompt.
    pub system_prompt: Arc<str>,
    /// Request sent → first chunk.
    pub first_token_timeout: Duration,
    /// Longest gap between chunks.
    pub idle_timeout: Duration,
    /// Model calls per turn.
    pub max_tool_steps: usize,
    /// With no first token after this long, this line is spoken while waiting on (once a turn).
    pub filler: Option<(Duration, String)>,
    /// Longest a tool may run; then the model is told it did not answer.
    pub tool_timeout: Duration,
}

impl Agent {
    /// Builds the LLM agent `config` describes (OpenAI-compatible or offline), with `tools`.
    ///
    /// # Errors
    /// A message if the HTTP client for the model cannot be built (TLS set-up), or when the
    /// provider is a bot (Lex, Watson) rather than a chat model.
    pub fn from_config(config: &Config, tools: tools::ToolRegistry) -> Result<Self, String> {
        let model: Arc<dyn ChatModel> = match &config.llm.provider {
            LlmProvider::OpenAi {
                api_key,
                base_url,
                model,
            } => Arc::new(openai::OpenAiModel::new(
                base_url,
                api_key.as_ref(),
                model,
                config.llm.connect_timeout,
            )?),
            LlmProvider::Offline { token_delay } => {
                Arc::new(offline::OfflineModel::new(*token_delay))
            }
            LlmProvider::Lex(_) | LlmProvider::Watson(_) => {
                return Err("Lex and Watson are brains of their own, not chat models".into())
            }
        };
        Ok(Agent {
            model,
            tools,
            system_prompt: config.system_prompt.as_str().into(),
            first_token_timeout: config.llm.first_token_timeout,
            idle_timeout: config.llm.idle_timeout,
            max_tool_steps: config.llm.max_tool_steps,
            filler: Some((
                config.limits.llm_filler_after,
                config.limits.llm_filler_line.clone(),
            ))
            .filter(|(_, line)| !line.is_empty()),
            tool_timeout: config.limits.tool_timeout,
        })
    }
}

impl Agent {
    /// Another channel's agent on the same model (one connection pool) and timeouts, with its
    /// own `system_prompt` and `tools`, and without the "one moment" filler (a chat reply is
    /// posted whole, so a filler would only sit in front of it).
    pub fn for_channel(&self, system_prompt: &str, tools: tools::ToolRegistry) -> Agent {
        Agent {
            model: self.model.clone(),
            tools,
            system_prompt: system_prompt.into(),
            first_token_timeout: self.first_token_timeout,
            idle_timeout: self.idle_timeout,
            max_tool_steps: self.max_tool_steps,
            filler: None,
            tool_timeout: self.tool_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_masked() {
        assert_eq!(mask_number("+14155550123"), "***0123");
        assert_eq!(mask_number("123"), "***");
        assert_eq!(mask_number("client:alice"), "***lice");
    }
}
