//! Amazon Lex V2 as the brain (`LLM_PROVIDER=lex`): each customer turn is one `RecognizeText`
//! call through the official AWS SDK (`aws-sdk-lexruntimev2`; credentials and region from the
//! standard AWS provider chain), with the conversation's id as Lex's `sessionId`, so Lex keeps
//! the dialog state.
//!
//! - [`reply`]: Lex's messages as text, and the rules mapping intents to a handoff, an end or
//!   an offer of a person.
//! - [`nulls`]: the SDK interceptor that keeps Lex's `null` slots from failing a turn.
//!
//! Session attributes: `from`, `channel`, and `relaybot_fallbacks` (the count of
//! `FallbackIntent` turns in a row). Lex *replaces* a session's stored attributes with whatever
//! a request sends, so to keep the bot's own (set by its Lambda) each request sends back the set
//! Lex returned last time with relaybot's on top, remembered per session in memory (bounded;
//! idle sessions are forgotten). Without that memory (a restart, another instance) a later turn
//! sends no session state at all, so nothing of the bot's is lost, and the fallback count is
//! read back from Lex.
//!
//! Keys pressed on a call are sent as their digits after a short wait for more keys (Lex keeps
//! state: an input it has seen cannot be taken back when the next key merges with it); `#`
//! ends an entry at once.

pub mod nulls;
pub mod reply;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_lexruntimev2::{
    config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion},
    error::{ProvideErrorMetadata, SdkError},
    operation::recognize_text::{RecognizeTextError, RecognizeTextOutput},
    types::SessionState,
    Client,
};
use futures::future::BoxFuture;
use tokio::{
    sync::{mpsc, OnceCell},
    time::Instant,
};

use super::{
    control::ControlRequest,
    turn::{ReadAt, TurnEvent, TurnInput},
    Brain, LlmError, Message, TurnId,
};
use crate::{config::LexConfig, telemetry};

use self::reply::{Answer, Plan};

/// Longest a turn waits for Lex, both tries together (as long as the LLM's default first-token
/// limit).
const LEX_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest a connection to Lex may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a keypress waits for the next key before going to Lex (keys pressed within it
/// reach Lex as one input; `#` sends at once).
const KEYS_SETTLE: Duration = Duration::from_millis(500);
/// Lex's limit on `text`, in UTF-16 code units.
const MAX_TEXT: usize = 1024;
/// Longest session attribute value relaybot writes itself (`from`), in characters.
const MAX_OWN_VALUE: usize = 256;
/// The most session-attribute bytes (keys and values) relaybot sends back: Lex's 12 KB.
const MAX_ATTRIBUTES_BYTES: usize = 12 * 1024;
/// The session attribute holding the count of `FallbackIntent` turns in a row.
pub const FALLBACKS_ATTRIBUTE: &str = "relaybot_fallbacks";
/// A session's remembered attributes are forgotten after this long without a turn.
const SESSION_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// The most sessions remembered at once (the least recently used go first).
const MAX_SESSIONS: usize = 20_000;

/// A Lex V2 bot answering through `RecognizeText`.
pub struct LexBrain {
    config: LexConfig,
    offer_human_line: String,
    /// Built on the first turn (loading the AWS configuration is asynchronous).
    client: OnceCell<Result<Client, String>>,
    sessions: Sessions,
}

impl LexBrain {
    /// The bot `config` names; `offer_human_line` is added after too many fallbacks in a row.
    ///
    /// # Errors
    /// A message when the client cannot be set up.
    pub fn new(config: &LexConfig, offer_human_line: String) -> Result<Self, String> {
        if config.bot_id.is_empty() || config.bot_alias_id.is_empty() {
            return Err("LEX_BOT_ID and LEX_BOT_ALIAS_ID must not be empty".into());
        }
        Ok(LexBrain {
            config: config.clone(),
            offer_human_line,
            client: OnceCell::new(),
            sessions: Sessions::default(),
        })
    }

    /// The client, loading the AWS configuration (region, credentials chain) on first use.
    async fn client(&self) -> Result<Client, LlmError> {
        let client = self
            .client
            .get_or_init(|| async {
                let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
                if shared.region().is_none() {
                    return Err(
                        "no AWS region is configured (set AWS_REGION or a profile's region)"
                            .to_owned(),
                    );
                }
                let mut config = aws_sdk_lexruntimev2::config::Builder::from(&shared)
                    .interceptor(nulls::DropNulls)
                    // One quick retry is ours (see `recognize`), as on the LLM path.
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .operation_timeout(LEX_TIMEOUT)
                            .build(),
                    );
                if let Some(url) = &self.config.endpoint_url {
                    config = config.endpoint_url(url.trim_end_matches('/'));
                }
                Ok(Client::from_conf(config.build()))
            })
            .await;
        client.clone().map_err(|message| {
            tracing::error!(%message, "the Lex client cannot be set up");
            LlmError::Internal(message)
        })
    }

    /// One `RecognizeText`, retried once after a short pause on a rate limit, a server error or
    /// a broken connection (nothing has been said yet), all within [`LEX_TIMEOUT`].
    async fn recognize(
        &self,
        session_id: &str,
        text: &str,
        state: Option<SessionState>,
    ) -> Result<RecognizeTextOutput, LlmError> {
        let deadline = Instant::now() + LEX_TIMEOUT;
        let attempt = || async {
            let client = self.client().await?;
            client
                .recognize_text()
                .bot_id(&self.config.bot_id)
                .bot_alias_id(&self.config.bot_alias_id)
                .locale_id(&self.config.locale_id)
                .session_id(session_id)
                .text(text)
                .set_session_state(state.clone())
                .send()
                .await
                .map_err(lex_error)
        };
        let timeout = |_| LlmError::Timeout("Lex answer");
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Err(e)) if e.is_retryable() => {
                telemetry::model_error(&e);
                let pause = Duration::from_millis(rand::random_range(150..=350));
                tracing::info!(error = %e, pause_ms = pause.as_millis() as u64, "retrying Lex once");
                tokio::time::timeout_at(deadline, async {
                    tokio::time::sleep(pause).await;
                    attempt().await
                })
                .await
                .map_err(timeout)?
            }
            other => other.map_err(timeout)?,
        }
    }

    /// The session state to send: see the module documentation.
    fn session_state(
        &self,
        input: &TurnInput,
        memo: Option<&Memo>,
        first: bool,
    ) -> Option<SessionState> {
        let mut attributes = match memo {
            Some(memo) => memo.attributes.clone(),
            None if first => HashMap::new(),
            None => return None,
        };
        attributes.insert(
            "from".into(),
            reply::cut_chars(&input.call.from, MAX_OWN_VALUE).to_owned(),
        );
        attributes.insert("channel".into(), input.channel.to_owned());
        attributes.insert(
            FALLBACKS_ATTRIBUTE.into(),
            memo.map_or(0, |m| m.fallbacks).to_string(),
        );
        attributes.retain(|k, v| !k.is_empty() && !v.is_empty());
        let size: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_ATTRIBUTES_BYTES {
            // Over Lex's limit (the bot's own attributes): send none and keep what Lex has.
            tracing::warn!(
                bytes = size,
                "Lex session attributes too large to send back; leaving them as Lex has them"
            );
            return None;
        }
        Some(
            SessionState::builder()
                .set_session_attributes(Some(attributes))
                .build(),
        )
    }

    async fn run(&self, input: TurnInput, events: &mpsc::Sender<(TurnId, TurnEvent)>) -> bool {
        let id = input.id;
        let send = |event: TurnEvent| async move { events.send((id, event)).await.is_ok() };
        let customer: Vec<&str> = input
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::User { content } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        // The digits when keys started the turn (never logged); else the customer's words.
        let text = match (&input.keys, customer.last()) {
            (Some(keys), _) => {
                // Lex keeps state, so a keypress that reached it cannot be taken back when the
                // next key merges with it: wait for more keys first, unless `#` ends the entry.
                match keys.strip_suffix('#').filter(|k| !k.is_empty()) {
                    Some(entered) => entered,
                    None => {
                        tokio::time::sleep(KEYS_SETTLE).await;
                        keys.as_str()
                    }
                }
            }
            (None, Some(said)) => said.trim(),
            (None, None) => "",
        };
        let text = reply::cut_utf16(text, MAX_TEXT);
        if text.is_empty() {
            return send(TurnEvent::Commit(Vec::new())).await && send(TurnEvent::Done).await;
        }
        let session_id = reply::session_id(&input.call.call_sid);
        let memo = self.sessions.get(&session_id);
        let first = customer.len() <= 1;
        let state = self.session_state(&input, memo.as_ref(), first);
        let asked = Instant::now();
        let output = match self.recognize(&session_id, text, state).await {
            Ok(output) => output,
            Err(error) => {
                telemetry::model_error(&error);
                tracing::warn!(call_sid = %input.call.call_sid, %error, "Lex failed");
                return send(TurnEvent::Failed(error)).await;
            }
        };
        let latency = asked.elapsed();
        telemetry::metrics()
            .model_first_token
            .record(latency.as_secs_f64());
        let answer = Answer::from_output(&output);
        let fallbacks = match &memo {
            Some(memo) => memo.fallbacks,
            None => answer
                .session_attributes
                .as_ref()
                .and_then(|a| a.get(FALLBACKS_ATTRIBUTE)?.parse().ok())
                .unwrap_or(0),
        };
        // For a handoff summary: the customer's lines up to this one, keypresses hidden.
        let lines: Vec<&str> = input
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::User { content } => Some(shown_line(content)),
                _ => None,
            })
            .collect();
        let plan = reply::plan(&self.config, &answer, fallbacks, &lines);
        self.sessions.put(
            session_id,
            Memo {
                attributes: answer.session_attributes.clone().unwrap_or_default(),
                fallbacks: plan.fallbacks,
                used: Instant::now(),
            },
        );
        tracing::info!(
            call_sid = %input.call.call_sid,
            intent = answer.intent.as_ref().map(|i| i.name.as_str()),
            intent_state = answer.intent.as_ref().and_then(|i| i.state.as_deref()),
            dialog_action = answer.dialog_action.as_deref(),
            messages = answer.texts.len(),
            fallbacks = plan.fallbacks,
            latency_ms = latency.as_millis() as u64,
            "Lex answered"
        );
        self.say(&input, answer, plan, send).await
    }

    /// Sends the messages one at a time, asks to leave if the plan says so, and ends the turn.
    async fn say<F, Fut>(&self, input: &TurnInput, answer: Answer, plan: Plan, send: F) -> bool
    where
        F: Fn(TurnEvent) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let separator = if input.channel == "chat" { "\n\n" } else { " " };
        let mut said = String::new();
        let offer = plan
            .offer_human
            .then(|| self.offer_human_line.trim().to_owned())
            .filter(|l| !l.is_empty());
        for text in answer.texts.into_iter().chain(offer) {
            let piece = if said.is_empty() {
                text
            } else {
                format!("{separator}{text}")
            };
            said.push_str(&piece);
            if !send(TurnEvent::Content(piece, ReadAt::now())).await {
                return false;
            }
        }
        if let Some(departure) = plan.leave {
            match &input.control {
                Some(control) => {
                    let leave = ControlRequest::Leave(departure);
                    match control.request(input.id, leave).await {
                        Ok(_) => tracing::info!("Lex's intent: leaving the bot"),
                        Err(why) => tracing::info!(%why, "Lex's intent: not leaving"),
                    }
                }
                None => tracing::warn!("Lex asked to leave, but this channel has no call control"),
            }
        }
        let commit = if said.is_empty() {
            Vec::new()
        } else {
            vec![Message::assistant(said)]
        };
        send(TurnEvent::Commit(commit)).await && send(TurnEvent::Done).await
    }
}

/// A customer line as a summary may show it: keypresses stay hidden, as in the transcript.
fn shown_line(content: &str) -> &str {
    if content.starts_with("The caller pressed ") {
        "(pressed keys)"
    } else {
        content
    }
}

impl Brain for LexBrain {
    fn turn(
        self: Arc<Self>,
        input: TurnInput,
        events: mpsc::Sender<(TurnId, TurnEvent)>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let started = input.prompt_at;
            if self.run(input, &events).await {
                telemetry::metrics()
                    .turn_duration
                    .record(started.elapsed().as_secs_f64());
            }
        })
    }

    fn system_prompt(&self) -> Arc<str> {
        "".into()
    }
}

/// An SDK error as the conversation core reads model errors: an HTTP status when Lex answered
/// one (so a 429 or 5xx is retried and counted like the LLM's), else transport, timeout or
/// internal. AWS's message is kept to its first line (a signature error spells out the
/// canonical request).
fn lex_error(error: SdkError<RecognizeTextError>) -> LlmError {
    let status = error.raw_response().map(|r| r.status().as_u16());
    match &error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message = first_line(e.message().unwrap_or_default());
            let message = if message.is_empty() {
                code.to_owned()
            } else {
                format!("{code}: {message}")
            };
            match status {
                Some(status) if status >= 400 => LlmError::Status { status, message },
                // A success status that still failed to parse.
                _ => LlmError::Decode(message),
            }
        }
        SdkError::ResponseError(_) => match status {
            Some(status) if status >= 400 => LlmError::Status {
                status,
                message: "unreadable error response".into(),
            },
            _ => LlmError::Decode(first_line(&error_chain(&error))),
        },
        SdkError::TimeoutError(_) => LlmError::Timeout("Lex answer"),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            LlmError::Timeout("Lex answer")
        }
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            LlmError::Transport(first_line(&error_chain(&error)))
        }
        // Credentials that cannot be loaded, an endpoint that cannot be resolved, …: retrying
        // would not help.
        _ => LlmError::Internal(first_line(&error_chain(&error))),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn first_line(text: &str) -> String {
    reply::cut_chars(text.lines().next().unwrap_or_default().trim(), 300).to_owned()
}

/// What is remembered of a Lex session between turns.
#[derive(Debug, Clone)]
struct Memo {
    /// The session attributes Lex returned last.
    attributes: HashMap<String, String>,
    /// `FallbackIntent` turns in a row so far.
    fallbacks: u32,
    used: Instant,
}

/// Remembered sessions, by Lex session id: bounded, idle ones forgotten.
#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Memo>>);

impl Sessions {
    fn get(&self, id: &str) -> Option<Memo> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|m| m.used.elapsed() < SESSION_IDLE)
            .cloned()
    }

    fn put(&self, id: String, memo: Memo) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS && !map.contains_key(&id) {
            map.retain(|_, m| m.used.elapsed() < SESSION_IDLE);
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, m)| m.used)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(id, memo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::CallContext;

    fn brain() -> LexBrain {
        let config = LexConfig {
            bot_id: "ABCDEFGHIJ".into(),
            bot_alias_id: "TSTALIASID".into(),
            locale_id: "en_US".into(),
            endpoint_url: None,
            handoff_intents: vec!["Agent".into()],
            end_on_fulfilled: true,
            fallbacks_before_handoff: 2,
            fallback_line: "Want a person?".into(),
        };
        LexBrain::new(&config, "Want a person?".into()).unwrap()
    }

    fn input(from: &str) -> TurnInput {
        TurnInput {
            id: 1,
            call: Arc::new(CallContext {
                call_sid: "CA1".into(),
                from: from.into(),
                ..CallContext::default()
            }),
            messages: vec![],
            control: None,
            prompt_at: Instant::now(),
            keys: None,
            channel: "voice",
        }
    }

    fn memo(attributes: &[(&str, &str)], fallbacks: u32) -> Memo {
        Memo {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fallbacks,
            used: Instant::now(),
        }
    }

    fn sent(state: Option<SessionState>) -> Option<Vec<(String, String)>> {
        let mut attributes: Vec<(String, String)> = state?
            .session_attributes()?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.sort();
        Some(attributes)
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// First turn: the context; later turns: Lex's attributes back with ours on top; a later
    /// turn with nothing remembered (a restart): no session state, so nothing is replaced.
    #[test]
    fn session_attributes_are_sent_back_whole_or_not_at_all() {
        let brain = brain();
        let caller = input("+15551230000");
        assert_eq!(
            sent(brain.session_state(&caller, None, true)),
            pairs(&[
                ("channel", "voice"),
                ("from", "+15551230000"),
                ("relaybot_fallbacks", "0")
            ])
        );
        let remembered = memo(&[("orderId", "42"), ("relaybot_fallbacks", "0")], 1);
        assert_eq!(
            sent(brain.session_state(&caller, Some(&remembered), false)),
            pairs(&[
                ("channel", "voice"),
                ("from", "+15551230000"),
                ("orderId", "42"),
                ("relaybot_fallbacks", "1")
            ])
        );
        assert!(brain.session_state(&caller, None, false).is_none());
        let huge = "x".repeat(MAX_ATTRIBUTES_BYTES);
        let too_big = memo(&[("blob", &huge)], 0);
        assert!(brain
            .session_state(&caller, Some(&too_big), false)
            .is_none());
        let anonymous = input("");
        assert_eq!(
            sent(brain.session_state(&anonymous, None, true)),
            pairs(&[("channel", "voice"), ("relaybot_fallbacks", "0")]),
            "Lex refuses empty values"
        );
    }

    /// No credentials at all: an error that no retry fixes, said as such.
    #[tokio::test]
    async fn missing_credentials_are_not_retryable() {
        let config = aws_sdk_lexruntimev2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_lexruntimev2::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let error = Client::from_conf(config)
            .recognize_text()
            .bot_id("ABCDEFGHIJ")
            .bot_alias_id("TSTALIASID")
            .locale_id("en_US")
            .session_id("CA1")
            .text("hi")
            .send()
            .await
            .unwrap_err();
        let error = lex_error(error);
        assert!(matches!(error, LlmError::Internal(_)), "{error:?}");
        assert!(!error.is_retryable());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let start = Instant::now() - Duration::from_secs(60);
        for i in 0..MAX_SESSIONS + 5 {
            let mut m = memo(&[], 0);
            m.used = start + Duration::from_micros(i as u64);
            sessions.put(format!("s{i}"), m);
        }
        assert_eq!(sessions.0.lock().unwrap().len(), MAX_SESSIONS);
        assert!(
            sessions.get("s0").is_none(),
            "the least recently used went first"
        );
        assert!(sessions.get(&format!("s{}", MAX_SESSIONS + 4)).is_some());
    }
}
