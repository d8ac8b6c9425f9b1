//! The web chat widget's WebSocket protocol (`GET /chat/ws`): JSON text frames, one object a
//! frame, tagged by `type`. Ours (the widget is ours too), kept small and documented here so
//! the widget script (`assets/widget.js`) and the server agree.
//!
//! The page opens `GET /chat/ws` (with `?token=…` to resume a session it was given before).
//! The server answers first with [`ServerFrame::Session`] (the token to keep: in
//! `sessionStorage`, so a reload resumes the conversation for `CHAT_IDLE_TIMEOUT`) and
//! [`ServerFrame::History`] (everything said so far, so a widget that comes back sees what it
//! missed), then streams.
//!
//! | Direction | Frame | Meaning |
//! |---|---|---|
//! | widget → server | `{"type":"message","text":"…"}` | the visitor wrote (≤ `MAX_PROMPT_CHARS`) |
//! | widget → server | `{"type":"end"}` | the visitor pressed "End chat" |
//! | server → widget | `{"type":"session","token":"…","visitor":"web-…","phase":"bot"}` | who you are; `phase` is `bot`, `escalating`, `live` or `closed` |
//! | server → widget | `{"type":"history","messages":[Line…]}` | everything so far, in order |
//! | server → widget | `{"type":"typing","on":true}` | the bot is working on a reply (`false`: stopped) |
//! | server → widget | `{"type":"delta","id":7,"text":"Hel"}` | a piece of bot message 7, as it streams |
//! | server → widget | `{"type":"line","line":Line}` | a finished message (bot, visitor echo, agent, or a notice) |
//! | server → widget | `{"type":"phase","phase":"live","agent":"Alice"}` | the conversation's phase changed (`agent`: who joined, when known) |
//! | server → widget | `{"type":"error","message":"…"}` | a frame the server could not read (the chat goes on) |
//!
//! A `Line` is `{"id":7,"from":"bot"|"visitor"|"agent"|"notice","name":"…","text":"…","at":ms}`:
//! `id` orders lines and ties deltas to their line; `name` is the agent's friendly name (or
//! empty); `at` is milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// Who a line is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum From {
    /// The visitor.
    Visitor,
    /// relaybot's agent.
    Bot,
    /// A human agent in Flex.
    Agent,
    /// A notice from the system ("Alice joined", "The chat has ended").
    Notice,
}

/// One line of the conversation as the widget shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Order of the line in the conversation (from 1).
    pub id: u64,
    /// Who said it.
    pub from: From,
    /// The human agent's friendly name, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The text.
    pub text: String,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
}

/// Where the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The bot answers.
    Bot,
    /// A person is being asked for (the conversation and interaction are being created).
    Escalating,
    /// A human agent's conversation: the visitor's words go to Flex.
    Live,
    /// Over.
    Closed,
}

/// A frame from the widget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// The visitor wrote.
    Message {
        /// What they wrote.
        text: String,
    },
    /// The visitor ended the chat.
    End,
}

/// A frame to the widget.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// Who the visitor is (sent first).
    Session {
        /// Keep it and send it back as `?token=` to resume.
        token: String,
        /// The visitor's id (the Conversations identity once escalated).
        visitor: String,
        /// Where the conversation is.
        phase: Phase,
    },
    /// Everything so far (sent after `session`).
    History {
        /// The lines, in order.
        messages: Vec<Line>,
    },
    /// The bot is (or stopped) working on a reply.
    Typing {
        /// On or off.
        on: bool,
    },
    /// A piece of a bot line being streamed.
    Delta {
        /// The line it belongs to.
        id: u64,
        /// The piece.
        text: String,
    },
    /// A finished line.
    Line {
        /// The line.
        line: Line,
    },
    /// The phase changed.
    Phase {
        /// The new phase.
        phase: Phase,
        /// The agent who joined, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// A frame the server could not read.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shapes() {
        let frame: ClientFrame = serde_json::from_str(r#"{"type":"message","text":"hi"}"#).unwrap();
        assert_eq!(frame, ClientFrame::Message { text: "hi".into() });
        let frame: ClientFrame = serde_json::from_str(r#"{"type":"end"}"#).unwrap();
        assert_eq!(frame, ClientFrame::End);
        let line = Line {
            id: 3,
            from: From::Agent,
            name: "Alice".into(),
            text: "Hello".into(),
            at: 1,
        };
        assert_eq!(
            serde_json::to_value(ServerFrame::Line { line }).unwrap(),
            serde_json::json!({"type":"line","line":{"id":3,"from":"agent","name":"Alice","text":"Hello","at":1}})
        );
        assert_eq!(
            serde_json::to_value(ServerFrame::Phase {
                phase: Phase::Live,
                agent: None
            })
            .unwrap(),
            serde_json::json!({"type":"phase","phase":"live"})
        );
    }
}
