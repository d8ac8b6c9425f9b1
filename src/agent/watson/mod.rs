//! IBM Watson Assistant v2 as the brain (`LLM_PROVIDER=watson`), over its REST API with reqwest
//! (channels-and-bots.md §1).
//!
//! Each turn sends the customer's words (or the keys pressed) to Watson and says what it
//! answers, item by item (`reply`); Watson decides handoffs itself (`connect_to_agent`), which
//! become the same [`Departure::Handoff`] the LLM's `agent_handoff` asks for, so every channel's
//! handoff path works unchanged.
//!
//! - `iam`: the API key exchanged for IAM bearer tokens, cached and refreshed.
//! - `api`: the v2 calls, their paths and errors.
//! - `reply`: `output.generic` read for voice or chat.
//! - `state`: the session ID (stateful, the default) or the returned `context` (stateless,
//!   `WATSON_STATELESS=true`) per conversation, in memory.
//!
//! Failures follow the LLM's policy: an HTTP error is [`LlmError::Status`] (429 and 5xx get one
//! quick retry before anything is said), a timeout [`LlmError::Timeout`], anything else on the
//! way [`LlmError::Transport`]; the core then apologises or offers a person. A refused token
//! (401) is exchanged again once, an expired session (404 `Invalid Session`) replaced once, and
//! the same input sent again.

mod api;
mod iam;
mod reply;
mod state;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, time::Instant};

use self::{
    api::{Api, CallError},
    reply::Item,
    state::{Conversations, MAX_CONTEXT_BYTES},
};
use super::{
    control::ControlRequest,
    turn::{ReadAt, TurnEvent, TurnInput},
    Brain, CallContext, Departure, LlmError, Message, TurnId,
};
use crate::{config::WatsonConfig, telemetry};

/// Longest a turn waits for Watson, retries included.
const TURN_TIMEOUT: Duration = Duration::from_secs(12);
/// Longest all of one answer's `pause` items wait together (chat).
const MAX_PAUSES: Duration = Duration::from_secs(10);
/// Watson's `input.text` limit, in characters.
const MAX_INPUT_CHARS: usize = 2048;
/// A stateful conversation's session ID is forgotten after this long unused (Watson's longest
/// inactivity timeout, Plus plan); Watson's own shorter timeout shows as `Invalid Session`.
const SESSION_IDLE: Duration = Duration::from_secs(24 * 3600);
/// A stateless conversation's context is forgotten after this long unused.
const CONTEXT_IDLE: Duration = Duration::from_secs(2 * 3600);

/// A Watson Assistant answering through the v2 message API.
pub struct WatsonBrain {
    api: Api,
    stateless: bool,
    conversations: Conversations,
}

impl WatsonBrain {
    /// The assistant `config` names. `offer_human_line` is not needed: Watson decides itself
    /// when to offer a person (its "Fallback" action), and an answer with nothing to say goes
    /// through the core's failure policy, which says that line.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built or the settings do not name an assistant.
    pub fn new(config: &WatsonConfig, offer_human_line: String) -> Result<Self, String> {
        let _ = offer_human_line;
        Ok(WatsonBrain {
            api: Api::new(config)?,
            stateless: config.stateless,
            conversations: Conversations::new(if config.stateless {
                CONTEXT_IDLE
            } else {
                SESSION_IDLE
            }),
        })
    }
}

impl Brain for WatsonBrain {
    fn turn(
        self: Arc<Self>,
        input: TurnInput,
        events: mpsc::Sender<(TurnId, TurnEvent)>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.run_turn(input, events))
    }

    fn system_prompt(&self) -> Arc<str> {
        "".into()
    }
}

/// Sends a turn's events; `false` once the session has gone.
struct Out<'a> {
    events: &'a mpsc::Sender<(TurnId, TurnEvent)>,
    id: TurnId,
    separator: &'static str,
    said: String,
}

impl Out<'_> {
    async fn send(&self, event: TurnEvent) -> bool {
        self.events.send((self.id, event)).await.is_ok()
    }

    async fn say(&mut self, text: &str) -> bool {
        let piece = if self.said.is_empty() {
            text.to_owned()
        } else {
            format!("{}{text}", self.separator)
        };
        self.said.push_str(&piece);
        self.send(TurnEvent::Content(piece, ReadAt::now())).await
    }
}

impl WatsonBrain {
    async fn run_turn(
        self: Arc<Self>,
        input: TurnInput,
        events: mpsc::Sender<(TurnId, TurnEvent)>,
    ) {
        let started = Instant::now();
        let key = input.call.call_sid.clone();
        let chat = input.channel == "chat";
        let mut out = Out {
            events: &events,
            id: input.id,
            separator: if chat { "\n" } else { " " },
            said: String::new(),
        };
        let words = match &input.keys {
            Some(keys) => keys.clone(),
            None => input
                .messages
                .iter()
                .rev()
                .find_map(|m| match m {
                    Message::User { content } => Some(content.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
        };
        let known = self.conversations.get(&key);
        let watson_input = match reply::choose(&known.choices, &words) {
            Some(choice) if choice.input.is_object() => {
                let mut chosen = choice.input.clone();
                let text = flatten(chosen["text"].as_str().unwrap_or(&choice.label));
                chosen["text"] = Value::String(text);
                if chosen.get("message_type").is_none() {
                    chosen["message_type"] = json!("text");
                }
                chosen
            }
            _ => json!({"message_type": "text", "text": flatten(&words)}),
        };

        let asked = tokio::time::timeout(
            TURN_TIMEOUT,
            self.ask(&key, &watson_input, &input.call, input.channel),
        )
        .await;
        let answer = match asked.unwrap_or(Err(LlmError::Timeout("Watson answer"))) {
            Ok(answer) => answer,
            Err(error) => {
                telemetry::model_error(&error);
                tracing::warn!(call_sid = %key, turn = input.id, %error, "Watson did not answer");
                out.send(TurnEvent::Failed(error)).await;
                return;
            }
        };
        telemetry::metrics()
            .model_first_token
            .record(started.elapsed().as_secs_f64());

        let read = reply::read(&answer["output"], input.channel);
        let context = answer
            .get("context")
            .filter(|c| self.stateless && c.is_object())
            .and_then(|c| {
                let bytes = serde_json::to_vec(c).map_or(usize::MAX, |v| v.len());
                if bytes > MAX_CONTEXT_BYTES {
                    tracing::warn!(call_sid = %key, bytes, "Watson's context is over 250 KB; not kept");
                    return None;
                }
                Some(Arc::new(c.clone()))
            });
        let choices = read.choices.clone();
        self.conversations.update(&key, |entry| {
            entry.choices = choices;
            if self.stateless {
                entry.context = context;
            }
        });
        tracing::debug!(
            call_sid = %key,
            turn = input.id,
            items = read.items.len(),
            watson_ms = started.elapsed().as_millis() as u64,
            "Watson answered"
        );

        let mut left = false;
        let mut pauses = MAX_PAUSES;
        for item in read.items {
            let sent = match item {
                Item::Say(text) => out.say(&text).await,
                Item::Pause(pause) if chat => {
                    let pause = pause.min(pauses);
                    pauses -= pause;
                    tokio::time::sleep(pause).await;
                    true
                }
                Item::Pause(_) => true,
                Item::Handoff(handoff) => {
                    left = true;
                    let departure = Departure::Handoff {
                        reason: handoff.reason,
                        summary: handoff.summary,
                    };
                    tracing::info!(call_sid = %key, turn = input.id, "Watson asked for a human agent");
                    match leave(&input, departure).await {
                        Ok(()) => match &handoff.available {
                            Some(line) => out.say(line).await,
                            None => true,
                        },
                        Err(refusal) => {
                            tracing::info!(%refusal, "Watson's handoff is not carried out");
                            match &handoff.unavailable {
                                Some(line) => out.say(line).await,
                                None => true,
                            }
                        }
                    }
                }
                Item::End => {
                    left = true;
                    let departure = Departure::End {
                        reason: "Watson ended the conversation".into(),
                        by_customer_choice: true,
                    };
                    tracing::info!(call_sid = %key, turn = input.id, "Watson ended the conversation");
                    if let Err(refusal) = leave(&input, departure).await {
                        tracing::info!(%refusal, "Watson's end is not carried out");
                    }
                    true
                }
            };
            if !sent {
                return; // the session is gone
            }
        }
        if out.said.is_empty() && !left {
            let error = LlmError::Decode(format!(
                "Watson's answer had nothing to say on {}",
                input.channel
            ));
            telemetry::model_error(&error);
            tracing::warn!(call_sid = %key, turn = input.id, %error, "Watson answered nothing");
            out.send(TurnEvent::Failed(error)).await;
            return;
        }
        if !out.said.is_empty() {
            let said = std::mem::take(&mut out.said);
            if !out
                .send(TurnEvent::Commit(vec![Message::assistant(said)]))
                .await
            {
                return;
            }
        }
        out.send(TurnEvent::Done).await;
        telemetry::metrics()
            .turn_duration
            .record(input.prompt_at.elapsed().as_secs_f64());
    }

    /// Watson's answer to `input` in the conversation `key`: a refused token is exchanged
    /// again once, an expired session replaced once, a 404 on the newer path retried on the
    /// legacy one, and a 429, 5xx or transport failure retried once after a short pause.
    async fn ask(
        &self,
        key: &str,
        input: &Value,
        call: &CallContext,
        channel: &str,
    ) -> Result<Value, LlmError> {
        let (mut new_token, mut new_session, mut retried) = (false, false, false);
        loop {
            let failure = match self.attempt(key, input, call, channel).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            if failure.is_unauthorized() && !new_token {
                new_token = true;
                if let Some(token) = &failure.token {
                    self.api.tokens().invalidate(token);
                }
                tracing::info!(call_sid = %key, "Watson refused the IAM token; exchanging the API key again");
                continue;
            }
            if failure.is_invalid_session() && !self.stateless && !new_session {
                new_session = true;
                self.conversations.update(key, |e| e.session_id = None);
                tracing::info!(call_sid = %key, "the Watson session expired; starting a new one and sending the input again");
                continue;
            }
            if self.api.fall_back(&failure) {
                continue;
            }
            if failure.error.is_retryable() && !retried {
                retried = true;
                telemetry::model_error(&failure.error);
                let pause = Duration::from_millis(rand::random_range(150..=350));
                tracing::info!(call_sid = %key, error = %failure.error, pause_ms = pause.as_millis() as u64, "retrying Watson once");
                tokio::time::sleep(pause).await;
                continue;
            }
            return Err(failure.error);
        }
    }

    /// One try: the session (made when there is none) and the message.
    async fn attempt(
        &self,
        key: &str,
        input: &Value,
        call: &CallContext,
        channel: &str,
    ) -> Result<Value, CallError> {
        let known = self.conversations.get(key);
        let body = json!({
            "input": input,
            "context": context(known.context.as_deref(), call, channel),
            "user_id": user_id(call),
        });
        if self.stateless {
            return self.api.message(None, &body).await;
        }
        let session = match known.session_id {
            Some(session) => session,
            None => {
                let session = self.api.create_session().await?;
                tracing::info!(call_sid = %key, "started a Watson session");
                self.conversations
                    .update(key, |e| e.session_id = Some(session.clone()));
                session
            }
        };
        self.api.message(Some(&session), &body).await
    }
}

/// Asks the session to leave as `departure`.
async fn leave(input: &TurnInput, departure: Departure) -> Result<(), String> {
    match &input.control {
        Some(control) => control
            .request(input.id, ControlRequest::Leave(departure))
            .await
            .map(drop),
        None => Err("call control is not available on this channel".into()),
    }
}

/// `text` as Watson takes it: no CR, LF or TAB (each run of whitespace becomes one space), at
/// most [`MAX_INPUT_CHARS`] characters.
fn flatten(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_INPUT_CHARS)
        .collect()
}

/// The context sent: the kept one (stateless) or a new one, with the caller's `from` and the
/// `channel` as session variables of the actions skill and user-defined values of the dialog
/// skill (§1.6).
fn context(kept: Option<&Value>, call: &CallContext, channel: &str) -> Value {
    let mut context = kept
        .filter(|c| c.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut values = json!({"channel": channel});
    if !call.from.is_empty() {
        values["from"] = json!(call.from);
    }
    for (skill, field) in [
        ("actions skill", "skill_variables"),
        ("main skill", "user_defined"),
    ] {
        let slot = &mut context["skills"][skill][field];
        if !slot.is_object() {
            *slot = json!({});
        }
        for (name, value) in values.as_object().into_iter().flatten() {
            slot[name] = value.clone();
        }
    }
    context
}

/// A stable pseudonymous ID for the customer (Watson bills per distinct `user_id`): a hash of
/// the caller's number or identity, or of the conversation when there is none.
fn user_id(call: &CallContext) -> String {
    let who = if call.from.is_empty() {
        &call.call_sid
    } else {
        &call.from
    };
    let digest = Sha256::digest(who.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("rb-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_text_has_no_line_breaks_or_tabs() {
        assert_eq!(
            flatten("It's order 123\r\nPlaced\tMonday  "),
            "It's order 123 Placed Monday"
        );
        assert_eq!(flatten(&"a".repeat(3000)).len(), MAX_INPUT_CHARS);
    }

    #[test]
    fn the_context_carries_from_and_channel_and_keeps_the_rest() {
        let call = CallContext {
            call_sid: "CA1".into(),
            from: "+15551230000".into(),
            ..CallContext::default()
        };
        let fresh = context(None, &call, "voice");
        assert_eq!(
            fresh,
            json!({"skills": {
                "actions skill": {"skill_variables": {"channel": "voice", "from": "+15551230000"}},
                "main skill": {"user_defined": {"channel": "voice", "from": "+15551230000"}}
            }})
        );
        let kept = json!({"global": {"system": {"turn_count": 3}},
                          "skills": {"actions skill": {"skill_variables": {"plan": "gold"}}}});
        let sent = context(Some(&kept), &call, "chat");
        assert_eq!(sent["global"]["system"]["turn_count"], 3);
        assert_eq!(
            sent["skills"]["actions skill"]["skill_variables"]["plan"],
            "gold"
        );
        assert_eq!(
            sent["skills"]["actions skill"]["skill_variables"]["channel"],
            "chat"
        );
    }

    #[test]
    fn user_ids_are_stable_and_hide_the_number() {
        let call = |from: &str| CallContext {
            call_sid: "CA1".into(),
            from: from.into(),
            ..CallContext::default()
        };
        let id = user_id(&call("+15551230000"));
        assert_eq!(id, user_id(&call("+15551230000")));
        assert_ne!(id, user_id(&call("+15551230001")));
        assert!(id.starts_with("rb-") && id.len() == 27);
        assert!(!id.contains("5551230000"));
        assert_ne!(user_id(&call("")), id);
    }
}
