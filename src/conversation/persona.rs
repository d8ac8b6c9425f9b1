//! The agent as one channel presents it: what answers (a [`Brain`]: an LLM with its system
//! prompt and tools, or a Lex or Watson bot), the lines
//! the conversation core adds on its own, and the policy on failures. Voice and chat share the
//! model and the tools' code but not the words: a voice prompt is written for the ear, a chat
//! prompt for the eye.

use std::sync::Arc;

use crate::{agent::Brain, config::Config};

/// The lines the core adds to a reply on its own, and what the model reads when it asks to
/// leave.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    /// Before a handoff (`HANDOFF_LINE`, `CHAT_HANDOFF_LINE`).
    pub handoff: String,
    /// Before the conversation ends (`END_CALL_LINE`, `CHAT_END_LINE`).
    pub end: String,
    /// When the model fails and no human can take over (`LLM_ERROR_LINE`).
    pub error: String,
    /// When the model fails and a human could take over (`LLM_OFFER_HUMAN_LINE`).
    pub offer_human: String,
    /// The `agent_handoff` tool's result (the model reads it).
    pub handoff_started: String,
    /// The `end_call` tool's result (the model reads it).
    pub end_started: String,
    /// A call-control tool's answer when its turn was cut short (the model reads it).
    pub turn_cancelled: String,
    /// A call-control tool's answer when a handoff or end is already under way.
    pub already_leaving: String,
}

/// One channel's agent.
pub struct Persona {
    /// `voice` or `chat`: in logs and in the reason of a handoff after repeated failures.
    pub channel: &'static str,
    /// What one conversation is called on this channel (`call`, `conversation`), in the summary
    /// of a handoff after repeated failures.
    pub noun: &'static str,
    /// Whether a tool's "while running" line is sent (voice: it fills dead air); chat posts one
    /// message per turn, so it would only sit in front of the answer and in the transcript.
    pub fillers: bool,
    /// What answers: an LLM with tools and its system prompt, or a Lex or Watson bot.
    pub brain: Arc<dyn Brain>,
    /// What the core says on its own.
    pub lines: Lines,
    /// Whether a human can take over on this channel (a handoff route is configured).
    pub human_available: bool,
    /// Model failures in a row before the customer is handed to a human
    /// (`LLM_FAILURES_BEFORE_HANDOFF`), when one is available.
    pub failures_before_handoff: u32,
    /// `HISTORY_MAX_CHARS`: the history budget, in characters (bytes of UTF-8).
    pub history_max_chars: usize,
}

impl Persona {
    /// The voice channel's persona: `brain` (for an LLM, the prompt written for the ear) and
    /// the spoken lines of `config`.
    pub fn voice(config: &Config, brain: Arc<dyn Brain>, human_available: bool) -> Self {
        Persona {
            channel: "voice",
            noun: "call",
            fillers: true,
            brain,
            lines: Lines {
                handoff: config.handoff.handoff_line.clone(),
                end: config.handoff.end_call_line.clone(),
                error: config.error_line.clone(),
                offer_human: config.limits.llm_offer_human_line.clone(),
                handoff_started: "The transfer to a human agent has started; a transfer message is spoken for you.".into(),
                end_started: "The call will end after a goodbye message spoken for you.".into(),
                turn_cancelled: "This request was cancelled because the caller cut in. Do not repeat it unless the caller asks again.".into(),
                already_leaving: "A transfer or hang-up is already in progress. Do not call it again and say nothing more.".into(),
            },
            human_available,
            failures_before_handoff: config.limits.llm_failures_before_handoff,
            history_max_chars: config.limits.history_max_chars,
        }
    }

    /// The chat channel's persona: `brain` (for an LLM, the prompt written for the eye) and the
    /// chat lines of `config`.
    pub fn chat(config: &Config, brain: Arc<dyn Brain>, human_available: bool) -> Self {
        let chat = &config.chat;
        Persona {
            channel: "chat",
            noun: "conversation",
            fillers: false,
            brain,
            lines: Lines {
                handoff: chat.handoff_line.clone(),
                end: chat.end_line.clone(),
                error: chat.error_line.clone(),
                offer_human: chat.offer_human_line.clone(),
                handoff_started: "The conversation is being passed to a human agent; a message telling the customer is sent for you.".into(),
                end_started: "The conversation will be closed after a goodbye message sent for you.".into(),
                turn_cancelled: "This request was cancelled because the customer wrote again. Do not repeat it unless the customer asks again.".into(),
                already_leaving: "A transfer or close is already in progress. Do not call it again and write nothing more.".into(),
            },
            human_available,
            failures_before_handoff: config.limits.llm_failures_before_handoff,
            history_max_chars: config.limits.history_max_chars,
        }
    }
}
