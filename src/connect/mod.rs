//! The Amazon Connect channel: relaybot as the Lex V2 code hook (handoff.md §4).
//!
//! A Connect contact flow's "Get customer input" block hands the customer to a Lex V2 bot
//! whose `FallbackIntent` calls a Lambda (the only code hook Lex has, §4.4); that Lambda —
//! `relaybot lambda`, or any thin proxy — forwards each Lex event to `POST /lex/v2`, or calls
//! [`ConnectState::answer`] in-process. Every customer input becomes one turn of the same
//! conversation core as calls and chats, and the answer is a Lex V2 response:
//!
//! | The turn… | `dialogAction.type` | `intent` | `sessionAttributes` (besides the event's own) |
//! |---|---|---|---|
//! | answers | `ElicitIntent` (Lex keeps listening) | `{name}` (the event's) | `relaybotAction: "continue"` (`shouldRouteToAgent` removed) |
//! | hands off (`agent_handoff`) | `Close` (back to the flow) | `{name, state: "Fulfilled"}` | `shouldRouteToAgent: "true"`, `handoffReason`, `handoffSummary`, `relaybotSessionId`, `relaybotAction: "handoff"` (+ `handoffRecordUrl`) |
//! | ends (`end_call`) | `Close` | `{name, state: "Fulfilled"}` | `shouldRouteToAgent: "false"`, `shouldTerminateContactFlow: "true"`, `relaybotAction: "end"` |
//!
//! `messages` are `PlainText` (`SSML` `<speak>…</speak>` with `LEX_SSML=true` on a voice
//! contact), each at most 1,000 characters (Lex takes 1,024), at most ten.
//!
//! **Sessions.** One task per Lex `sessionId` ([`session`]) owns the conversation, made on the
//! first event and forgotten after `CHAT_IDLE_TIMEOUT` without one (at most
//! `CHAT_MAX_CONVERSATIONS` at once, counted apart from chats). Its agent is chosen at its
//! first event: a voice contact (`inputMode` `Speech` or `DTMF`) gets the voice agent (the
//! prompt written for the ear), a chat (`Text`) the chat agent; both may always hand off, since
//! the Connect flow always has a queue to transfer to.
//!
//! **Time budget.** Lex waits for its code hook, and a caller hears silence meanwhile: an event
//! is answered within `LEX_TURN_BUDGET_MS`. A turn still running then is answered with
//! `LEX_HOLDING_LINE` (`ElicitIntent`) and keeps running; the next event of the session gets
//! its answer (at once if ready, else after waiting up to the budget again). The customer's
//! words in that next event are kept for the turn after, which answers them together with
//! whatever they say next; if the owed answer was a handoff, they go into the handoff record.
//!
//! **Refusals** still answer Lex properly: a new session while the server is draining or at
//! `CHAT_MAX_CONVERSATIONS`, or a session that stopped, gets `Close` with
//! `shouldRouteToAgent: "true"` (the caller reaches a person rather than an error).

pub mod auth;
pub mod event;
mod messages;
mod session;

use messages::attribute_text;
pub use messages::messages;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::Brain,
    chat::ChatState,
    config::Config,
    conversation::Persona,
    handoff::{HandoffPath, HandoffRecord},
};

pub use event::{EventError, InputMode, LexEvent, LexResponse};

/// Largest `/lex/v2` body taken (413 past it). A Lex event is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest message content sent (Lex V2 takes 1..=1,024 characters per message).
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Most messages in one response.
pub const MAX_MESSAGES: usize = 10;
/// Longest `handoffReason`.
pub const MAX_REASON_CHARS: usize = 256;
/// Longest `handoffSummary`.
pub const MAX_SUMMARY_CHARS: usize = 1000;

/// `"true"` when the flow should transfer the contact to a queue (AWS's third-party-bot
/// sample's key; handoff.md §4.2).
pub const SHOULD_ROUTE_TO_AGENT: &str = "shouldRouteToAgent";
/// `"true"` when the conversation is over and the flow may disconnect (the same sample's key
/// for "end chat").
pub const SHOULD_TERMINATE: &str = "shouldTerminateContactFlow";
/// Why the customer is handed off (≤ 256 characters).
pub const HANDOFF_REASON: &str = "handoffReason";
/// For the agent: what the customer wants and what is known (≤ 1,000 characters).
pub const HANDOFF_SUMMARY: &str = "handoffSummary";
/// Where the whole record is served (`PUBLIC_URL` + `API_TOKEN` set).
pub const HANDOFF_RECORD_URL: &str = "handoffRecordUrl";
/// The Lex session id, the key of the handoff record.
pub const RELAYBOT_SESSION_ID: &str = "relaybotSessionId";
/// `continue`, `handoff` or `end`.
pub const RELAYBOT_ACTION: &str = "relaybotAction";

/// Session (then request) attributes read as the Connect contact id, first found wins. The
/// flow sets them in "Get customer input" → `LexSessionAttributes` (e.g.
/// `"connectContactId": "$.ContactId"`, channels-and-bots.md §2.4).
pub const CONTACT_ID_KEYS: &[&str] = &["connectContactId", "ContactId", "contactId"];
/// Attributes read as the customer's number (`"customerNumber": "$.CustomerEndpoint.Address"`).
pub const CUSTOMER_NUMBER_KEYS: &[&str] = &[
    "customerNumber",
    "CustomerNumber",
    "customerEndpointAddress",
    "CustomerEndpointAddress",
    "callerNumber",
];
/// Attributes read as the number the customer called (`"systemNumber":
/// "$.SystemEndpoint.Address"`).
pub const SYSTEM_NUMBER_KEYS: &[&str] = &["systemNumber", "SystemEndpointAddress"];

/// Session-queue length: Lex sends one event at a time per session, so this is generous.
const QUEUE: usize = 16;

/// What a session answers one event with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// The words (never empty).
    pub text: String,
    /// What happens next.
    pub action: Action,
}

/// What the flow does after a reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Lex keeps listening (`ElicitIntent`).
    Continue,
    /// To a person (`Close`, `shouldRouteToAgent: "true"`).
    Handoff {
        /// Why.
        reason: String,
        /// For the agent.
        summary: String,
    },
    /// The conversation is over (`Close`, `shouldRouteToAgent: "false"`).
    End,
}

/// One customer input, as a session takes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Said {
    /// What the model reads.
    pub text: String,
    /// The transcript line (keys are never written there).
    pub note: String,
    /// The keys pressed, for DTMF input.
    pub keys: Option<String>,
}

/// One event, as a session takes it.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// The customer's words; `None` for an empty input.
    pub said: Option<Said>,
    /// How they were given.
    pub mode: InputMode,
    /// The Connect contact id, when the flow passes it.
    pub contact_id: Option<String>,
    /// The customer's number, when the flow passes it. Never logged unmasked.
    pub from: Option<String>,
    /// The number called, when the flow passes it.
    pub to: Option<String>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Reply>,
}

/// Why an event could not reach a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A new session while the server drains.
    Draining,
    /// `CHAT_MAX_CONVERSATIONS` sessions are live.
    Capacity,
    /// The session's queue is full.
    QueueFull,
    /// The session stopped without answering.
    Stopped,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Draining => "The AI agent is restarting and could not take this contact.",
            Refused::Capacity => "The AI agent is at capacity and could not take this contact.",
            Refused::QueueFull => "The AI agent could not keep up with this contact.",
            Refused::Stopped => "The AI agent stopped during this contact.",
        }
    }
}

/// The channel's shared state. Cheap to clone.
#[derive(Clone)]
pub struct ConnectState {
    inner: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    /// The agent of voice contacts (Speech, DTMF).
    voice: Arc<Persona>,
    /// The agent of chat contacts (Text).
    text: Arc<Persona>,
    /// For its handoff store (records are served like chats') and the drain tokens.
    chat: ChatState,
    verifier: auth::Verifier,
    registry: Registry,
    tracker: TaskTracker,
    /// Cancelled when the drain time is up: every session task stops.
    stop: CancellationToken,
}

impl ConnectState {
    /// The channel for `config`: `voice` answers voice contacts (the voice agent, with
    /// `agent_handoff`), `text` chat contacts (a chat agent that has `agent_handoff`); records
    /// and drain signals come from `chat`.
    pub fn new(
        config: Arc<Config>,
        voice: Arc<dyn Brain>,
        text: Arc<dyn Brain>,
        chat: ChatState,
    ) -> Self {
        // A whole reply goes out at once: a tool's "one moment" line would only sit in front
        // of the answer. A person is always available: the flow transfers to a queue.
        let mut voice = Persona::voice(&config, voice, true);
        voice.fillers = false;
        let text = Persona::chat(&config, text, true);
        ConnectState {
            inner: Arc::new(Shared {
                registry: Registry::new(config.chat.max_conversations),
                config,
                voice: Arc::new(voice),
                text: Arc::new(text),
                chat,
                verifier: auth::Verifier::default(),
                tracker: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Checks a request's signature over its raw `body` when `LEX_VALIDATE_SIGNATURES` is on
    /// (see [`auth`]); always `Ok` when it is off.
    ///
    /// # Errors
    /// [`auth::AuthError`]: the endpoint answers 401.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), auth::AuthError> {
        let settings = &self.inner.config.connect;
        if !settings.validate_signatures {
            return Ok(());
        }
        let Some(secret) = &settings.shared_secret else {
            return Err(auth::AuthError::Missing);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.inner.verifier.check(
            secret.expose_secret().as_bytes(),
            timestamp,
            signature,
            body,
            now,
        )
    }

    /// Answers one Lex V2 code-hook event (already authenticated) with the Lex V2 response,
    /// within `LEX_TURN_BUDGET_MS` (see the module docs).
    ///
    /// # Errors
    /// [`EventError`] when `event` is not a Lex event (no object, no `sessionId`); its
    /// `Display` is fit for a 400 answer (it never quotes the event).
    pub async fn answer(&self, event: Value) -> Result<Value, EventError> {
        let started = tokio::time::Instant::now();
        let event = LexEvent::parse(event)?;
        let session_id = event.session_id().to_owned();
        let mode = event.mode();
        tracing::debug!(
            %session_id,
            mode = mode.label(),
            source = event.invocation_source.as_deref().unwrap_or("-"),
            "Lex event"
        );
        let (tx, mut rx) = oneshot::channel();
        let incoming = Incoming {
            said: self.said(&event),
            mode,
            contact_id: event.attribute(CONTACT_ID_KEYS),
            from: event.attribute(CUSTOMER_NUMBER_KEYS),
            to: event.attribute(SYSTEM_NUMBER_KEYS),
            reply: tx,
        };
        let reply = match self.dispatch(&session_id, incoming) {
            Err(refused) => self.refusal(mode, refused),
            Ok(()) => {
                let deadline = started + self.inner.config.connect.turn_budget;
                match tokio::time::timeout_at(deadline, &mut rx).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => self.refusal(mode, Refused::Stopped),
                    Err(_) => {
                        // Closing first: an answer sent from now on stays with the session
                        // (owed to the next event); one sent just before is still taken here.
                        rx.close();
                        match rx.try_recv() {
                            Ok(reply) => reply,
                            Err(_) => {
                                tracing::info!(
                                    %session_id,
                                    budget_ms = self.inner.config.connect.turn_budget.as_millis() as u64,
                                    "the turn is past LEX_TURN_BUDGET_MS; answering with the holding line"
                                );
                                Reply {
                                    text: self.holding_line(),
                                    action: Action::Continue,
                                }
                            }
                        }
                    }
                }
            }
        };
        let response = self.respond(&event, &reply);
        Ok(serde_json::to_value(response).expect("plain data serialises"))
    }

    /// The handoff record of the Lex session `session_id` (`GET /lex/v2/{sessionId}/handoff`).
    pub fn handoff_record(&self, session_id: &str) -> Option<HandoffRecord> {
        self.inner
            .chat
            .handoff_record(session_id)
            .filter(|r| r.path == HandoffPath::ConnectQueue)
    }

    /// Sessions with a live task.
    pub fn live(&self) -> usize {
        self.inner.registry.live()
    }

    /// Waits for the session tasks (idle ones leave when the drain starts; busy ones after their
    /// turn, or after delivering an answer they owe) until `deadline`, then stops them.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        crate::conversation::drain_sessions(
            &self.inner.tracker,
            &self.inner.stop,
            deadline,
            "Lex sessions",
        )
        .await;
    }

    /// The customer's input in `event`: words, or keys as "The caller pressed N." (never
    /// logged); cut to `MAX_PROMPT_CHARS`.
    fn said(&self, event: &LexEvent) -> Option<Said> {
        let max = self.inner.config.limits.max_prompt_chars;
        let words = event.words();
        if event.mode() == InputMode::Dtmf {
            let keys: String = words
                .chars()
                .filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
                .take(max)
                .collect();
            if keys.is_empty() {
                return None;
            }
            return Some(Said {
                text: format!("The caller pressed {keys}."),
                note: "(pressed keys)".into(),
                keys: Some(keys),
            });
        }
        if words.is_empty() {
            return None;
        }
        let mut text = words;
        if crate::conversation::cut_chars(&mut text, max) {
            tracing::warn!(max, "input longer than MAX_PROMPT_CHARS; cut");
        }
        Some(Said {
            note: text.clone(),
            text,
            keys: None,
        })
    }

    /// Hands `incoming` to its session, starting one if needed.
    fn dispatch(&self, session_id: &str, incoming: Incoming) -> Result<(), Refused> {
        let shared = &self.inner;
        let mut incoming = incoming;
        // Twice at most: a task that ended just as this event was routed to it.
        for _ in 0..2 {
            match shared
                .registry
                .route(session_id, !shared.chat.draining().is_cancelled())
            {
                Route::Refused(refused) => {
                    tracing::warn!(
                        session_id,
                        ?refused,
                        "Lex event refused; routing the contact to an agent"
                    );
                    return Err(refused);
                }
                Route::Send(tx) => match tx.try_send(incoming) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(session_id, "the Lex session's queue is full");
                        return Err(Refused::QueueFull);
                    }
                    Err(mpsc::error::TrySendError::Closed(back)) => incoming = back,
                },
                Route::Start(tx, rx, generation) => {
                    let persona = if incoming.mode.is_voice() {
                        shared.voice.clone()
                    } else {
                        shared.text.clone()
                    };
                    tracing::info!(session_id, agent = persona.channel, "new Lex session");
                    let _ = tx.try_send(incoming);
                    let span = tracing::info_span!("lex", session_id = %session_id);
                    shared.tracker.spawn(tracing::Instrument::instrument(
                        session::run(self.clone(), session_id.to_owned(), generation, persona, rx),
                        span,
                    ));
                    return Ok(());
                }
            }
        }
        Err(Refused::Stopped)
    }

    /// The answer when no session could take the event: to a person.
    fn refusal(&self, mode: InputMode, refused: Refused) -> Reply {
        let persona = if mode.is_voice() {
            &self.inner.voice
        } else {
            &self.inner.text
        };
        Reply {
            text: persona.lines.handoff.clone(),
            action: Action::Handoff {
                reason: refused.reason().to_owned(),
                summary: String::new(),
            },
        }
    }

    /// `LEX_HOLDING_LINE` (a message may not be empty).
    fn holding_line(&self) -> String {
        let line = self.inner.config.connect.holding_line.trim();
        if line.is_empty() {
            "One moment, please.".to_owned()
        } else {
            line.to_owned()
        }
    }

    /// Where the record of `session_id` is served, when the server has a public URL and the
    /// record endpoint is on (`PUBLIC_URL`, `API_TOKEN`).
    fn record_url(&self, session_id: &str) -> Option<String> {
        let config = &self.inner.config;
        config.handoff.api_token.as_ref()?;
        let base = config.public_url.as_ref()?;
        let id: String = url::form_urlencoded::byte_serialize(session_id.as_bytes()).collect();
        Some(format!(
            "{}/lex/v2/{id}/handoff",
            base.as_str().trim_end_matches('/')
        ))
    }

    /// The Lex V2 response to `event` carrying `reply`.
    fn respond(&self, event: &LexEvent, reply: &Reply) -> LexResponse {
        let ssml = self.inner.config.connect.ssml && event.mode().is_voice();
        let mut attributes = event.session_state.session_attributes.clone();
        // Ours from an earlier answer go; an ordinary answer leaves `shouldRouteToAgent` unset,
        // so a flow that sees Lex close the intent on its own never reads a stale "false" as
        // "end" (see aws/contact-flow.json).
        for ours in [
            HANDOFF_REASON,
            HANDOFF_SUMMARY,
            HANDOFF_RECORD_URL,
            RELAYBOT_SESSION_ID,
            SHOULD_ROUTE_TO_AGENT,
            SHOULD_TERMINATE,
        ] {
            attributes.remove(ours);
        }
        let mut set = |k: &str, v: String| {
            attributes.insert(k.to_owned(), v);
        };
        let (kind, state, action) = match &reply.action {
            Action::Continue => ("ElicitIntent", None, "continue"),
            Action::Handoff { reason, summary } => {
                let reason = attribute_text(reason, MAX_REASON_CHARS);
                set(
                    HANDOFF_REASON,
                    if reason.is_empty() {
                        "The customer is handed to a person.".to_owned()
                    } else {
                        reason
                    },
                );
                set(HANDOFF_SUMMARY, attribute_text(summary, MAX_SUMMARY_CHARS));
                set(RELAYBOT_SESSION_ID, event.session_id().to_owned());
                if let Some(url) = self.record_url(event.session_id()) {
                    set(HANDOFF_RECORD_URL, url);
                }
                ("Close", Some("Fulfilled"), "handoff")
            }
            Action::End => ("Close", Some("Fulfilled"), "end"),
        };
        if !matches!(reply.action, Action::Continue) {
            set(
                SHOULD_ROUTE_TO_AGENT,
                matches!(reply.action, Action::Handoff { .. }).to_string(),
            );
            set(
                SHOULD_TERMINATE,
                matches!(reply.action, Action::End).to_string(),
            );
        }
        set(RELAYBOT_ACTION, action.to_owned());
        LexResponse {
            session_state: event::ResponseState {
                dialog_action: event::DialogAction {
                    kind: kind.to_owned(),
                },
                intent: event::ResponseIntent {
                    name: event.intent_name(),
                    state: state.map(str::to_owned),
                },
                session_attributes: attributes,
            },
            messages: messages(&reply.text, ssml),
        }
    }
}

/// Where an event goes.
enum Route {
    /// To the session's live task.
    Send(mpsc::Sender<Incoming>),
    /// To a new task (its generation, to unregister only itself).
    Start(mpsc::Sender<Incoming>, mpsc::Receiver<Incoming>, u64),
    /// Nowhere.
    Refused(Refused),
}

/// Live sessions (their queue and generation) and the last generation given out.
type Live = (HashMap<String, (mpsc::Sender<Incoming>, u64)>, u64);

/// Which Lex sessions have a live task. One short lock, never held across an await.
struct Registry {
    live: Mutex<Live>,
    max_live: usize,
}

impl Registry {
    fn new(max_live: usize) -> Self {
        Registry {
            live: Mutex::new((HashMap::new(), 0)),
            max_live,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self) -> usize {
        self.lock().0.len()
    }

    /// Where an event of `session_id` goes; `may_start`: whether a new task may start.
    fn route(&self, session_id: &str, may_start: bool) -> Route {
        let mut guard = self.lock();
        let (live, next) = &mut *guard;
        if let Some((tx, _)) = live.get(session_id).filter(|(tx, _)| !tx.is_closed()) {
            return Route::Send(tx.clone());
        }
        if !may_start {
            return Route::Refused(Refused::Draining);
        }
        if live.len() >= self.max_live {
            live.retain(|_, (tx, _)| !tx.is_closed());
            if live.len() >= self.max_live {
                return Route::Refused(Refused::Capacity);
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        *next += 1;
        live.insert(session_id.to_owned(), (tx.clone(), *next));
        Route::Start(tx, rx, *next)
    }

    /// The task `generation` of `session_id` is ending.
    fn remove(&self, session_id: &str, generation: u64) {
        let mut guard = self.lock();
        if guard
            .0
            .get(session_id)
            .is_some_and(|(_, g)| *g == generation)
        {
            guard.0.remove(session_id);
        }
    }
}

/// The record of a Connect handoff (served at `GET /lex/v2/{sessionId}/handoff`).
pub(crate) fn record(
    session_id: &str,
    data: crate::handoff::HandoffData,
    to: &str,
) -> HandoffRecord {
    HandoffRecord {
        call_sid: String::new(),
        conversation_sid: session_id.to_owned(),
        interaction_sid: None,
        from: data.from,
        to: to.to_owned(),
        reason: data.reason,
        summary: data.summary,
        transcript: data.transcript,
        handed_off_at_ms: crate::handoff::now_ms(),
        path: HandoffPath::ConnectQueue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_caps_and_forgets_only_its_own_task() {
        let registry = Registry::new(1);
        let Route::Start(_tx, rx, generation) = registry.route("s1", true) else {
            panic!("the first event starts a task");
        };
        assert!(matches!(registry.route("s1", true), Route::Send(_)));
        assert!(matches!(
            registry.route("s2", true),
            Route::Refused(Refused::Capacity)
        ));
        assert!(matches!(registry.route("s1", false), Route::Send(_)));
        assert!(matches!(
            registry.route("s3", false),
            Route::Refused(Refused::Draining)
        ));
        registry.remove("s1", generation + 1);
        assert_eq!(
            registry.live(),
            1,
            "another generation's removal is ignored"
        );
        drop(rx);
        assert!(matches!(registry.route("s2", true), Route::Start(..)));
        registry.remove("s1", generation);
        assert_eq!(registry.live(), 1);
    }
}
