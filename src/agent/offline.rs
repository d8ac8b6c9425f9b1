//! The offline agent: a deterministic, rule-based stand-in for an LLM, so the server runs and the
//! demo works with no API key. It is **not** a language model: it matches a few keywords.
//!
//! It sits behind the same [`ChatModel`] trait as the real model and streams the same way: its
//! reply word by word with a small delay, and, for a request for a person or a goodbye, the same
//! tool calls an LLM would make (`agent_handoff`, `end_call`) when those tools are registered.

use std::time::Duration;

use futures::{future::BoxFuture, FutureExt, StreamExt};
use serde_json::json;

use super::{ChatModel, ChatRequest, Delta, DeltaStream, LlmError, Message};

/// Words that mean "let me talk to a human".
const HUMAN_WORDS: &[&str] = &[
    "agent",
    "human",
    "person",
    "representative",
    "operator",
    "someone",
];
/// Words and phrases that end a call.
const GOODBYE_WORDS: &[&str] = &["bye", "goodbye", "bye-bye"];
const GOODBYE_PHRASES: &[&str] = &[
    "that's all",
    "that is all",
    "hang up",
    "end the call",
    "i'm done",
];

/// The rule-based model.
#[derive(Debug, Clone)]
pub struct OfflineModel {
    token_delay: Duration,
}

/// What the offline agent decided to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Say this.
    Say(String),
    /// Call this tool with these arguments.
    Call {
        /// Tool name.
        name: &'static str,
        /// Arguments object.
        arguments: serde_json::Value,
    },
}

impl OfflineModel {
    /// A model that pauses `token_delay` before each streamed word.
    pub fn new(token_delay: Duration) -> Self {
        OfflineModel { token_delay }
    }

    /// Decides the reply to a request (pure; no waiting).
    pub fn reply(request: &ChatRequest) -> Reply {
        let has_tool = |name: &str| request.tools.iter().any(|t| t.name == name);
        let Some(last) = request.messages.last() else {
            return Reply::Say("Hello! How can I help?".into());
        };
        let text = match last {
            Message::User { content } => content,
            Message::Tool { content, .. } => {
                return Reply::Say(if content.contains("\"error\"") {
                    "Sorry, that didn't work. Is there anything else I can do?".into()
                } else {
                    String::new()
                })
            }
            _ => return Reply::Say("Go ahead, I'm listening.".into()),
        };
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
            .filter(|w| !w.is_empty())
            .collect();
        let has_word = |list: &[&str]| words.iter().any(|w| list.contains(w));
        let has_phrase = |list: &[&str]| list.iter().any(|p| lower.contains(p));

        if let Some(digits) = lower.strip_prefix("the caller pressed ") {
            return Reply::Say(
                format!("You pressed {}", digits.trim_end_matches('.').trim()) + ".",
            );
        }
        if has_word(HUMAN_WORDS) || lower.contains("real person") {
            if has_tool("agent_handoff") {
                return Reply::Call {
                    name: "agent_handoff",
                    arguments: json!({
                        "reason": "The customer asked to speak to a person.",
                        "summary": summary(&request.messages),
                    }),
                };
            }
            return Reply::Say(
                "I can't transfer you to a person from this demo, but I'm happy to keep helping."
                    .into(),
            );
        }
        if has_word(GOODBYE_WORDS) || has_phrase(GOODBYE_PHRASES) {
            if has_tool("end_call") {
                return Reply::Call {
                    name: "end_call",
                    arguments: json!({ "reason": "The customer said goodbye." }),
                };
            }
            return Reply::Say("Thanks for calling. Goodbye!".into());
        }
        if has_phrase(&["what can you do", "how can you help", "how does this work"])
            || words.first() == Some(&"help")
        {
            return Reply::Say(
                "I can chat with you, answer a few questions about myself, and connect you to a \
                 person when you ask for one. Say goodbye when you're done."
                    .into(),
            );
        }
        if has_phrase(&[
            "who are you",
            "what are you",
            "your name",
            "are you a robot",
            "are you human",
            "are you real",
            "are you a bot",
        ]) {
            return Reply::Say(
                "I'm relaybot's offline demo agent. I'm a simple rule-based stand-in, not a real \
                 language model, so I only understand a few things. Connect an OpenAI key to talk \
                 to a real model."
                    .into(),
            );
        }
        if has_phrase(&["how are you"]) {
            return Reply::Say("I'm doing well, thanks for asking. How can I help you?".into());
        }
        if has_word(&["hello", "hi", "hey", "morning", "afternoon", "evening"]) {
            return Reply::Say(
                "Hello! I'm relaybot's offline demo agent. Ask me what I can do, or ask for a \
                 person and I'll connect you."
                    .into(),
            );
        }
        if has_word(&["thanks", "thank"]) {
            return Reply::Say("You're welcome. Anything else?".into());
        }
        Reply::Say(format!(
            "You said: {}. I'm the offline demo agent, so I only know a few things. Ask what I can \
             do, or ask for a person.",
            text.trim().trim_end_matches(['.', '!', '?'])
        ))
    }
}

/// A short account of the conversation for the human agent: the caller's last few lines.
fn summary(messages: &[Message]) -> String {
    let said: Vec<&str> = messages
        .iter()
        .filter_map(|m| match m {
            // Keypresses may be account numbers or PINs: they stay out of the summary.
            Message::User { content }
                if !content.trim().is_empty() && !content.starts_with("The caller pressed") =>
            {
                Some(content.trim())
            }
            _ => None,
        })
        .collect();
    let recent = &said[said.len().saturating_sub(3)..];
    format!(
        "The customer asked for a person. Their recent lines: {}",
        recent
            .iter()
            .map(|s| format!("\u{201c}{s}\u{201d}"))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// Splits text into word tokens that keep their trailing space, as LLM tokens do.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl ChatModel for OfflineModel {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'static, Result<DeltaStream, LlmError>> {
        let delay = self.token_delay;
        let deltas: Vec<Delta> = match Self::reply(&request) {
            Reply::Say(text) => tokens(&text)
                .into_iter()
                .map(Delta::Content)
                .chain([Delta::Finish("stop".into())])
                .collect(),
            Reply::Call { name, arguments } => {
                // Fragmented the way a real model streams a tool call.
                let args = arguments.to_string();
                let cut = args
                    .char_indices()
                    .nth(args.chars().count() / 2)
                    .map_or(0, |(i, _)| i);
                vec![
                    Delta::ToolCall {
                        index: 0,
                        id: Some(format!("call_offline_{name}")),
                        name: Some(name.to_owned()),
                        arguments: Some(args[..cut].to_owned()),
                    },
                    Delta::ToolCall {
                        index: 0,
                        id: None,
                        name: None,
                        arguments: Some(args[cut..].to_owned()),
                    },
                    Delta::Finish("tool_calls".into()),
                ]
            }
        };
        let stream = futures::stream::iter(deltas).then(move |delta| async move {
            if !delay.is_zero() && matches!(delta, Delta::Content(_)) {
                tokio::time::sleep(delay).await;
            }
            Ok(delta)
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ToolSpec;

    fn request(user: &str, tools: &[&str]) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::System {
                    content: "s".into(),
                },
                Message::User {
                    content: "my order is late".into(),
                },
                Message::User {
                    content: user.into(),
                },
            ],
            tools: tools
                .iter()
                .map(|n| ToolSpec {
                    name: (*n).into(),
                    description: String::new(),
                    parameters: json!({"type":"object"}),
                })
                .collect(),
            on_the_wire: Default::default(),
        }
    }

    #[test]
    fn asks_for_a_person_become_a_handoff_when_the_tool_exists() {
        for said in [
            "I want to talk to a person",
            "Agent please",
            "Get me a REPRESENTATIVE.",
            "operator",
        ] {
            let Reply::Call { name, arguments } =
                OfflineModel::reply(&request(said, &["agent_handoff", "end_call"]))
            else {
                panic!("{said}")
            };
            assert_eq!(name, "agent_handoff");
            assert!(arguments["summary"]
                .as_str()
                .unwrap()
                .contains("my order is late"));
            assert!(!arguments["reason"].as_str().unwrap().is_empty());
        }
        assert!(matches!(
            OfflineModel::reply(&request("a person please", &[])),
            Reply::Say(_)
        ));
    }

    #[test]
    fn goodbyes_end_the_call_when_the_tool_exists() {
        let reply = OfflineModel::reply(&request("ok bye", &["end_call"]));
        assert!(matches!(
            reply,
            Reply::Call {
                name: "end_call",
                ..
            }
        ));
        assert_eq!(
            OfflineModel::reply(&request("that's all, goodbye", &[])),
            Reply::Say("Thanks for calling. Goodbye!".into())
        );
    }

    #[test]
    fn answers_about_itself_and_echoes_the_rest() {
        let say = |s: &str| match OfflineModel::reply(&request(s, &[])) {
            Reply::Say(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(say("hello").starts_with("Hello!"));
        assert!(
            say("this is fine").starts_with("You said: this is fine."),
            "'this' must not match 'hi'"
        );
        assert!(say("who are you?").contains("rule-based"));
        assert!(say("What can you do").contains("connect you"));
        assert_eq!(say("The caller pressed 5."), "You pressed 5.");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_words_keeping_their_spaces() {
        let model = OfflineModel::new(Duration::from_millis(40));
        let deltas: Vec<Delta> = model
            .stream(request("hello", &[]))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Content(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(text.starts_with("Hello! I'm relaybot's"));
        assert!(deltas.len() > 5);
        assert_eq!(deltas.last(), Some(&Delta::Finish("stop".into())));
    }
}
