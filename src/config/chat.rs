//! Settings of the chat channel (Twilio Conversations: Flex WebChat, SMS, WhatsApp) and its
//! handoff through the Flex Interactions API.

use std::time::Duration;

use super::{check_sid, duration, http_url, invalid, prompt_file, ConfigError, LimitsConfig, Vars};
use crate::twilio::{conversations::DEFAULT_CONVERSATIONS_BASE, flex::DEFAULT_FLEX_BASE};

/// The built-in chat prompt: written for the eye (short paragraphs, no speech conventions).
pub const DEFAULT_CHAT_SYSTEM_PROMPT: &str = "\
You are relaybot, a friendly assistant answering customers in a chat window (web chat, SMS or \
WhatsApp). Keep replies short and easy to read on a phone: one to three short sentences, plain \
text. You may use digits for numbers, times and amounts. No markdown headings, tables or code \
blocks; a short list is fine when the customer asks for steps. Ask one question at a time. \
If several customer messages arrive together, answer them together in one reply. \
If the customer asks for a person, or you cannot help, use the agent_handoff tool. When the \
customer is done, say a short goodbye and use the end_call tool to close the conversation.";

/// The chat channel's settings.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// `TWILIO_CONVERSATIONS_BASE` (default `https://conversations.twilio.com`); tests point it
    /// at a fake.
    pub conversations_base: String,
    /// `TWILIO_FLEX_BASE` (default `https://flex-api.twilio.com`); tests point it at a fake.
    pub flex_base: String,
    /// `CHAT_BOT_AUTHOR` (default `relaybot`): the `Author` of our messages. Messages with this
    /// author are ours and never answered.
    pub bot_author: String,
    /// `FLEX_WORKSPACE_SID` (`WS…`): the TaskRouter workspace of chat handoffs. With
    /// `TWILIO_WORKFLOW_SID` and REST credentials it turns chat handoffs on.
    pub workspace_sid: Option<String>,
    /// `FLEX_CHAT_TASK_CHANNEL` (default `chat`): the TaskRouter task channel of chat handoffs.
    pub task_channel: String,
    /// `CHAT_IDLE_TIMEOUT` (default 30m; seconds, or with `s`/`m`/`h`): a conversation with no
    /// customer message for this long is forgotten (its memory freed).
    pub idle_timeout: Duration,
    /// `CHAT_GREETING`: posted when a conversation is added (`onConversationAdded`); empty
    /// turns it off.
    pub greeting: Option<String>,
    /// `CHAT_SYSTEM_PROMPT_FILE`'s contents, or the built-in chat prompt.
    pub system_prompt: String,
    /// `CHAT_HANDOFF_LINE`: posted before the conversation goes to a person.
    pub handoff_line: String,
    /// `CHAT_END_LINE`: posted before the conversation is closed.
    pub end_line: String,
    /// `CHAT_ERROR_LINE`: posted when the model fails and no person can take over.
    pub error_line: String,
    /// `CHAT_OFFER_HUMAN_LINE`: posted when the model fails and a person could take over.
    pub offer_human_line: String,
    /// `CHAT_HANDOFF_FAILED_LINE`: posted when the handoff to Flex fails.
    pub handoff_failed_line: String,
    /// `CHAT_MEDIA_ONLY_LINE`: the answer to a message with media and no text.
    pub media_only_line: String,
    /// `CHAT_ALLOWED_ORIGINS`: the web origins whose pages may embed the widget
    /// (`https://shop.example.com`, comma-separated; `*` any). Unset: the server's own origin
    /// only. Checked on the widget's WebSocket upgrade.
    pub allowed_origins: Vec<String>,
    /// `CHAT_MAX_CONVERSATIONS` (default `MAX_CONCURRENT_CALLS` × 10): conversations held in
    /// memory at once; past it new conversations get the error line.
    pub max_conversations: usize,
}

/// Reads the chat settings.
pub(super) fn read(vars: &Vars, limits: &LimitsConfig) -> Result<ChatConfig, ConfigError> {
    let line = |var: &str, default: &str| vars.get(var).unwrap_or(default).trim().to_owned();
    let workspace_sid = vars.get("FLEX_WORKSPACE_SID").map(|s| s.trim().to_owned());
    if let Some(sid) = &workspace_sid {
        check_sid(
            "FLEX_WORKSPACE_SID",
            sid,
            "WS",
            "a TaskRouter workspace SID",
        )?;
    }
    let bot_author = line("CHAT_BOT_AUTHOR", "relaybot");
    let task_channel = line("FLEX_CHAT_TASK_CHANNEL", "chat");
    let idle_timeout = duration(vars, "CHAT_IDLE_TIMEOUT", Duration::from_secs(30 * 60))?;
    if idle_timeout.is_zero() {
        return Err(invalid("CHAT_IDLE_TIMEOUT", "must be greater than 0"));
    }
    let system_prompt = prompt_file(vars, "CHAT_SYSTEM_PROMPT_FILE", DEFAULT_CHAT_SYSTEM_PROMPT)?;
    let greeting = match vars.raw("CHAT_GREETING") {
        None => Some("Hi! I'm relaybot, a virtual assistant. How can I help you today?".into()),
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(v.trim().to_owned()),
    };
    let max_conversations = vars.parse(
        "CHAT_MAX_CONVERSATIONS",
        limits.max_concurrent_calls.saturating_mul(10),
        "a whole number",
    )?;
    if max_conversations == 0 {
        return Err(invalid("CHAT_MAX_CONVERSATIONS", "must be greater than 0"));
    }
    let mut allowed_origins = Vec::new();
    for origin in vars
        .get("CHAT_ALLOWED_ORIGINS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let origin = origin.trim_end_matches('/');
        let valid = origin == "*"
            || url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.path() == "/"
            });
        if !valid {
            return Err(invalid(
                "CHAT_ALLOWED_ORIGINS",
                format!("{origin:?} is not an origin such as https://shop.example.com (or *)"),
            ));
        }
        allowed_origins.push(origin.to_owned());
    }
    Ok(ChatConfig {
        conversations_base: http_url(vars, "TWILIO_CONVERSATIONS_BASE", DEFAULT_CONVERSATIONS_BASE)?,
        flex_base: http_url(vars, "TWILIO_FLEX_BASE", DEFAULT_FLEX_BASE)?,
        bot_author,
        workspace_sid,
        task_channel,
        idle_timeout,
        greeting,
        system_prompt,
        handoff_line: line(
            "CHAT_HANDOFF_LINE",
            "I'm passing you to a member of our team. They can see this conversation, so you won't need to repeat anything.",
        ),
        end_line: line("CHAT_END_LINE", "Thanks for chatting with us. Goodbye!"),
        error_line: line(
            "CHAT_ERROR_LINE",
            "Sorry, something went wrong on my side. Please try again in a moment.",
        ),
        offer_human_line: line(
            "CHAT_OFFER_HUMAN_LINE",
            "Sorry, I'm having trouble right now. I can pass you to a person if you'd like, or you can try again.",
        ),
        handoff_failed_line: line(
            "CHAT_HANDOFF_FAILED_LINE",
            "I'm sorry, I couldn't reach an agent just now. Please try again in a few minutes, or write here and I'll keep helping.",
        ),
        media_only_line: line(
            "CHAT_MEDIA_ONLY_LINE",
            "Sorry, I can only read text. Could you type your question?",
        ),
        max_conversations,
        allowed_origins,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(vars: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_and_bad_values_name_the_variable() {
        let chat = config(&[]).unwrap().chat;
        assert_eq!(chat.bot_author, "relaybot");
        assert_eq!(chat.task_channel, "chat");
        assert_eq!(chat.idle_timeout.as_secs(), 1800);
        assert_eq!(
            chat.conversations_base,
            crate::twilio::conversations::DEFAULT_CONVERSATIONS_BASE
        );
        assert!(chat.greeting.is_some());
        assert_eq!(
            config(&[("CHAT_GREETING", " ")]).unwrap().chat.greeting,
            None
        );
        assert_eq!(
            config(&[("CHAT_IDLE_TIMEOUT", "2h")])
                .unwrap()
                .chat
                .idle_timeout
                .as_secs(),
            7200
        );
        for (var, value) in [
            ("FLEX_WORKSPACE_SID", "WW123"),
            ("CHAT_IDLE_TIMEOUT", "soon"),
            ("CHAT_IDLE_TIMEOUT", "0"),
            ("TWILIO_FLEX_BASE", "ftp://x"),
            ("CHAT_MAX_CONVERSATIONS", "0"),
            ("CHAT_ALLOWED_ORIGINS", "shop.example.com"),
            ("CHAT_ALLOWED_ORIGINS", "https://a.example/path"),
        ] {
            assert_eq!(
                config(&[(var, value)]).unwrap_err().var,
                var,
                "{var}={value}"
            );
        }
    }
}
