//! One call: the Conversation Relay WebSocket session.
//!
//! One task per call owns all of the call's state ([`Session`]) and the socket; no lock is
//! shared with anything else. Its loop selects over frames from Twilio, the running turn, events
//! from it, requests from call-control tools, the Calls API's answer, the call's timer, and the
//! call's cancellation. A turn ([`crate::agent::turn`]) is a future the loop polls next to the
//! socket (not a task of its own: that would cost a cross-thread wake-up per token) and reports
//! over a channel, so reading the socket never waits on the model: an `interrupt` is seen while
//! tokens are still streaming.
//!
//! The decisions are synchronous methods that queue outbound messages ([`Session::on_frame`],
//! [`Session::on_turn_event`], [`Session::on_control`]); the loop writes the queue to the socket.
//! Protocol semantics follow the shared protocol notes (§3, §4, §7.3): act on `prompt` only when
//! `last` is true; on `interrupt` stop the turn, close it with an empty `last:true` token, and
//! cut the history to what the caller heard.
//!
//! Leaving the call (handoff or end, at most once per call) waits until the caller has heard
//! everything: the model's words and the configured line go out with `last:true`, then the
//! session waits for `agentSpeaking off` (or a bound estimated from the text length, never
//! longer than `HANDOFF_MAX_WAIT_MS`) before it sends `end` or asks the Calls API to move the
//! call. A request from a turn that was interrupted or replaced is never carried out, and a
//! caller who talks over the goodbye line is not hung up on (a transfer they asked for still
//! goes ahead).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span};

use super::protocol::{Inbound, InfoEvent, Outbound};
use crate::{
    agent::{
        control::ControlMessage,
        mask_number,
        turn::{TurnEvent, TurnId},
        CallContext, Departure, Message,
    },
    config::LimitsConfig,
    conversation::{trim_to_heard, ChannelRequest, Conversation, Lazy, Output, Persona, Spoken},
    handoff::{
        now_ms, studio_redirect_twiml, HandoffData, HandoffPath, HandoffRecord, HandoffStore,
        Route, TranscriptLine,
    },
    relay::resume::{ResumeStore, Saved},
    telemetry,
    twilio::rest::RestError,
};

/// The `<Parameter>` that marks a reconnected session (its greeting is the reconnect line).
pub const RECONNECT_PARAMETER: &str = "relaybotReconnect";

/// How calls leave Conversation Relay.
#[derive(Debug, Clone)]
pub struct HandoffDeps {
    /// Calls API → Studio, or `end` + `/action`.
    pub route: Route,
    /// Where handoff records go.
    pub store: HandoffStore,
    /// Longest wait for the caller to hear the last line.
    pub max_wait: Duration,
}

/// What a call needs from the server.
#[derive(Clone)]
pub struct SessionDeps {
    /// The voice agent (prompt written for the ear, tools, lines), shared by every call.
    pub persona: Arc<Persona>,
    /// Spoken at the start of the call by Twilio; kept as the first assistant message.
    pub welcome_greeting: Option<String>,
    /// Handoff and end settings.
    pub handoff: Arc<HandoffDeps>,
    /// Limits and timers, with what is said when they hit.
    pub limits: Arc<LimitsConfig>,
    /// Where a dropped session leaves its conversation for a reconnect.
    pub resume: ResumeStore,
    /// Cancelled when a shutdown's drain time is up: hand off or end now.
    pub wrap_up: CancellationToken,
    /// Where turn tasks are tracked (so shutdown can wait for them).
    pub tracker: TaskTracker,
}

/// Why a turn stops early.
enum Stop<'a> {
    /// The caller barged in, having heard this much.
    Interrupted(&'a str),
    /// A new caller input replaces it; the caller heard everything sent.
    Superseded,
}

/// Where the call is on its way out (a departure a tool asked for but whose turn is still
/// running is the conversation core's).
#[derive(Debug)]
enum Exit {
    /// Not leaving.
    Staying,
    /// The last line is out; waiting for the caller to hear it.
    Speaking {
        action: Departure,
        line_sent: Instant,
        heard_on: bool,
        deadline: Instant,
    },
    /// Waiting for the Calls API to move the call.
    Moving { data: Box<HandoffData> },
    /// `end` sent, or the call moved.
    Gone,
}

/// A `agentSpeaking off` this soon after our line, with no `on` since, most likely belongs to
/// the audio before it.
const STALE_OFF: Duration = Duration::from_millis(300);

/// The state of one call.
pub struct Session {
    deps: SessionDeps,
    /// History, turns, failures and the decision to leave: the logic every channel shares. Its
    /// running turn and the turn's channels are polled by the socket loop.
    pub(super) core: Conversation,
    set_up: bool,
    /// The last finished turn (or the greeting), kept so a late `interrupt` can trim it: the model
    /// finishes streaming long before the caller finishes hearing.
    last_spoken: Option<Spoken>,
    /// The Calls API's answer to a handoff, on a channel made when first needed.
    pub(super) moved: Lazy<Result<(), RestError>>,
    /// Closed on our side (write failed, caller gone): the loop stops.
    closed: bool,
    pub(super) outbox: Vec<Outbound>,
    /// When the model chunk behind each queued token was read (relay-overhead metric).
    pub(super) relayed: Vec<Instant>,
    exit: Exit,
    span: Span,
    /// The CallSid the call token was minted for; `setup` must match it.
    expected_call_sid: Option<String>,
    /// Set when the session must end (for example a `setup` for another call).
    rejected: bool,
    /// Since when the caller has been silent with nothing playing; `None` while a turn runs or
    /// audio plays.
    idle_since: Option<Instant>,
    /// The caller was already asked "are you still there?".
    reprompted: bool,
    /// Twilio reports the caller talking (`clientSpeaking on`): no silence clock meanwhile.
    client_speaking: bool,
    /// When the call must end (`MAX_CALL_DURATION_SECS` after `setup`).
    call_deadline: Option<Instant>,
    /// When the session started (a `setup` must come soon after).
    created: Instant,
    /// When the call left Conversation Relay (`end` sent, or moved by the Calls API).
    left_at: Option<Instant>,
    /// The session is over on our side: close the socket.
    finished: bool,
}

/// How long an upgraded socket may go without `setup`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after `end` we wait for Twilio to close the socket before closing it ourselves.
const CLOSE_AFTER_END: Duration = Duration::from_secs(10);
/// The same after asking the Calls API to move the call (its retries included).
const CLOSE_AFTER_MOVE: Duration = Duration::from_secs(30);

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Waiting for the caller to hear the last line.
    Exit,
    /// Caller silence.
    Idle,
    /// Call length.
    Duration,
    /// No `setup` in time.
    Setup,
    /// The call left; Twilio should have closed the socket by now.
    Close,
}

impl Session {
    /// A new session.
    pub fn new(deps: SessionDeps, span: Span, expected_call_sid: Option<String>) -> Self {
        Session {
            core: Conversation::new(deps.persona.clone()),
            deps,
            set_up: false,
            last_spoken: None,
            moved: Lazy::new(1),
            closed: false,
            outbox: Vec::new(),
            relayed: Vec::new(),
            exit: Exit::Staying,
            span,
            expected_call_sid,
            rejected: false,
            idle_since: None,
            reprompted: false,
            client_speaking: false,
            call_deadline: None,
            created: Instant::now(),
            left_at: None,
            finished: false,
        }
    }

    /// The conversation so far (system prompt first).
    pub fn history(&self) -> &[Message] {
        self.core.history()
    }

    /// The timestamped transcript for the human agent.
    pub fn transcript(&self) -> &[TranscriptLine] {
        self.core.transcript()
    }

    /// The call, as `setup` described it.
    pub fn call(&self) -> &CallContext {
        &self.core.call
    }

    /// Messages queued for Twilio, in order; the caller sends them.
    pub fn take_outbox(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
    }

    /// The next timer to fire, if any.
    fn next_timer(&self) -> Option<(Instant, Timer)> {
        let exit = match self.exit {
            Exit::Speaking { deadline, .. } => Some((deadline, Timer::Exit)),
            _ => None,
        };
        let idle = match (
            &self.exit,
            self.core.turn_running() || self.client_speaking,
            self.idle_since,
        ) {
            (Exit::Staying, false, Some(since)) => {
                Some((since + self.deps.limits.idle_reprompt, Timer::Idle))
            }
            _ => None,
        };
        let duration = self
            .call_deadline
            .filter(|_| !self.leaving())
            .map(|d| (d, Timer::Duration));
        let setup = (!self.set_up).then(|| (self.created + SETUP_TIMEOUT, Timer::Setup));
        let close = match (&self.exit, self.left_at) {
            (Exit::Moving { .. }, Some(at)) => Some((at + CLOSE_AFTER_MOVE, Timer::Close)),
            (Exit::Gone, Some(at)) => Some((at + CLOSE_AFTER_END, Timer::Close)),
            _ => None,
        };
        [exit, idle, duration, setup, close]
            .into_iter()
            .flatten()
            .filter(|_| !self.finished)
            .min_by_key(|(at, _)| *at)
    }

    /// When the next timer fires, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// Runs the timers that are due at `now`.
    pub fn on_timer(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer().filter(|(at, _)| *at <= now) {
            let _ = at;
            match timer {
                Timer::Exit => {
                    tracing::debug!("no agentSpeaking off in time; leaving on the estimate");
                    self.leave_now();
                }
                Timer::Idle if !self.reprompted => {
                    tracing::info!("caller silent; asking if they are still there");
                    self.reprompted = true;
                    let line = self.deps.limits.idle_reprompt_line.clone();
                    self.last_spoken = Some(self.say(&line));
                    self.idle_since = Some(now);
                }
                Timer::Idle => {
                    tracing::info!("caller still silent; ending the call");
                    let line = self.deps.limits.idle_end_line.clone();
                    self.leave_with(
                        Departure::End {
                            reason: "The caller stayed silent.".into(),
                            by_customer_choice: false,
                        },
                        line,
                    );
                }
                Timer::Setup => {
                    tracing::warn!("no setup within {SETUP_TIMEOUT:?}; closing");
                    self.finished = true;
                }
                Timer::Close => {
                    tracing::info!(
                        "the call left Conversation Relay but the socket is still open; closing it"
                    );
                    self.finished = true;
                }
                Timer::Duration => {
                    tracing::info!("call reached MAX_CALL_DURATION_SECS; ending it");
                    let line = self.deps.limits.max_duration_line.clone();
                    self.leave_with(
                        Departure::End {
                            reason: "The call reached its time limit.".into(),
                            by_customer_choice: false,
                        },
                        line,
                    );
                }
            }
        }
    }

    /// The shutdown's drain time is up: hand the caller to a human, or end with a line.
    pub fn on_wrap_up(&mut self) {
        if self.leaving() {
            return;
        }
        tracing::warn!("drain time is up; moving the caller on");
        if self.core.persona().human_available {
            let line = self.core.persona().lines.handoff.clone();
            let action = Departure::Handoff {
                reason: "The voice agent is restarting.".into(),
                summary: String::new(),
            };
            self.leave_with(action, line);
        } else {
            let line = self.deps.limits.drain_line.clone();
            self.leave_with(
                Departure::End {
                    reason: "The voice agent is restarting.".into(),
                    by_customer_choice: false,
                },
                line,
            );
        }
    }

    /// Speaks a line of ours (not the model's) as a talk cycle of its own.
    fn say(&mut self, line: &str) -> Spoken {
        let spoken = self.core.say(line);
        self.outbox.push(Outbound::last(line));
        spoken
    }

    /// Stops whatever is in flight, speaks `line`, then leaves once it has been heard.
    fn leave_with(&mut self, action: Departure, line: String) {
        if self.leaving() {
            return;
        }
        self.stop_turn(Stop::Superseded);
        self.exit = Exit::Staying;
        let spoken = self.say(&line);
        self.last_spoken = Some(spoken);
        self.await_hearing(action, &line);
    }

    /// With a call token bound, nothing is answered before the `setup` that proves the call.
    fn awaiting_setup(&self) -> bool {
        let waiting = self.expected_call_sid.is_some() && !self.set_up;
        if waiting {
            tracing::warn!("caller input before setup; ignored");
        }
        waiting
    }

    /// Whether the session is over on our side and the socket should be closed.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether the session must end now (a rejected `setup`).
    pub fn rejected(&self) -> bool {
        self.rejected
    }

    /// What a dropped session leaves for a reconnect, unless the call already left on purpose.
    pub fn saved(&self) -> Option<(String, Saved)> {
        if !self.set_up || self.leaving() || self.rejected || self.core.call.call_sid.is_empty() {
            return None;
        }
        Some((
            self.core.call.call_sid.clone(),
            Saved {
                history: self.core.history().to_vec(),
                transcript: self.core.transcript().to_vec(),
            },
        ))
    }

    fn leaving(&self) -> bool {
        matches!(
            self.exit,
            Exit::Speaking { .. } | Exit::Moving { .. } | Exit::Gone
        )
    }

    /// Handles one text frame from Twilio. Malformed frames are logged and skipped.
    pub fn on_frame(&mut self, text: &str) {
        match Inbound::parse(text) {
            Ok(message) => self.on_message(message),
            Err(e) => tracing::warn!(error = %e, bytes = text.len(), "skipping a malformed frame"),
        }
    }

    /// Handles one parsed message from Twilio.
    pub fn on_message(&mut self, message: Inbound) {
        match message {
            Inbound::Setup(setup) => {
                if self.set_up {
                    tracing::warn!("ignoring a second setup on the same connection");
                    return;
                }
                self.set_up = true;
                let setup = *setup;
                if let Some(expected) = &self.expected_call_sid {
                    if *expected != setup.call_sid {
                        tracing::warn!(
                            token_call_sid = %expected,
                            "setup is for another call than the call token; closing"
                        );
                        self.rejected = true;
                        return;
                    }
                }
                self.span.record("call_sid", setup.call_sid.as_str());
                self.span.record("session_id", setup.session_id.as_str());
                tracing::info!(
                    from = %mask_number(&setup.from),
                    direction = %setup.direction,
                    parameters = setup.custom_parameters.len(),
                    "call set up"
                );
                self.core.call = Arc::new(CallContext {
                    call_sid: setup.call_sid,
                    session_id: setup.session_id,
                    from: setup.from,
                    to: setup.to,
                    direction: setup.direction,
                    custom_parameters: setup.custom_parameters,
                });
                self.call_deadline = Some(Instant::now() + self.deps.limits.max_call_duration);
                let reconnected = self
                    .core
                    .call
                    .custom_parameters
                    .contains_key(RECONNECT_PARAMETER);
                if let Some(saved) = self.deps.resume.take(&self.core.call.call_sid) {
                    tracing::info!(
                        messages = saved.history.len(),
                        "resuming the conversation of a reconnected call"
                    );
                    self.core.restore(saved.history, saved.transcript);
                }
                let greeting = if reconnected {
                    Some(self.deps.limits.reconnect_line.clone())
                } else {
                    self.deps.welcome_greeting.clone()
                };
                self.idle_since = Some(Instant::now());
                if let Some(greeting) = greeting {
                    // Twilio speaks the greeting; it is the assistant's first message, and a
                    // barge-in during it trims it like any reply.
                    self.last_spoken = Some(self.core.say(&greeting));
                }
                // From now on a dropped socket is reconnected to this conversation.
                if let Some((call_sid, saved)) = self.saved() {
                    self.deps.resume.save(&call_sid, saved);
                }
            }
            Inbound::Prompt(prompt) => {
                if !prompt.last {
                    // The caller is talking: not silence.
                    self.idle_since = None;
                    tracing::trace!("partial prompt");
                    return;
                }
                if self.awaiting_setup() {
                    return;
                }
                // The utterance is complete: the caller has stopped talking.
                self.client_speaking = false;
                let mut text = prompt.voice_prompt.trim();
                if text.is_empty() {
                    tracing::debug!("empty prompt ignored");
                    return;
                }
                let max = self.deps.limits.max_prompt_chars;
                if let Some((cut, _)) = text.char_indices().nth(max) {
                    tracing::warn!(max, "prompt longer than MAX_PROMPT_CHARS; cut");
                    text = &text[..cut];
                }
                if self.leaving() {
                    tracing::info!("caller spoke while the call is leaving; not answered");
                    return;
                }
                tracing::debug!(chars = text.chars().count(), "caller spoke");
                self.stop_turn(Stop::Superseded);
                self.core.note("caller", text);
                self.start_turn(text.to_owned(), None);
            }
            Inbound::Dtmf(dtmf) => {
                let digit = dtmf.digit.trim();
                let valid = digit.len() == 1
                    && digit
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'));
                if !valid {
                    tracing::warn!("skipping a dtmf frame without a single valid key");
                    return;
                }
                if self.awaiting_setup() {
                    return;
                }
                if self.leaving() {
                    tracing::info!("caller pressed a key while the call is leaving; ignored");
                    return;
                }
                // Digits are never logged, nor written to the transcript.
                tracing::info!("caller pressed a key");
                let digits = match self.core.take_mergeable() {
                    // Keys pressed while the last keypress is still being answered (nothing said
                    // yet) are merged into one input: "1234", not four turns.
                    Some(earlier) => earlier + digit,
                    None => {
                        self.stop_turn(Stop::Superseded);
                        self.core.note("caller", "(pressed keys)");
                        digit.to_owned()
                    }
                };
                self.start_turn(format!("The caller pressed {digits}."), Some(digits));
            }
            Inbound::Interrupt(interrupt) => {
                telemetry::metrics().interrupts.increment(1);
                self.idle_since = None;
                tracing::info!(
                    heard_chars = interrupt.utterance_until_interrupt.chars().count(),
                    played_ms = interrupt.duration_until_interrupt_ms,
                    "caller interrupted"
                );
                if self.core.turn_running() && !self.core.turn_silent() {
                    self.stop_turn(Stop::Interrupted(&interrupt.utterance_until_interrupt));
                } else if let Some(spoken) = self.last_spoken.take() {
                    // No turn is speaking (or the new one has not said a word yet): the caller
                    // cut into the previous reply. Trim that, and let a new turn run.
                    let heard = trim_to_heard(
                        self.core.history_mut(),
                        &spoken,
                        Some(&interrupt.utterance_until_interrupt),
                    );
                    self.core.mark_heard(&spoken, heard);
                }
                match &self.exit {
                    // The caller talked over the goodbye: they are still there and want
                    // something, so the call stays up and their words are answered.
                    Exit::Speaking {
                        action:
                            Departure::End {
                                by_customer_choice: true,
                                ..
                            },
                        ..
                    } => {
                        tracing::info!("caller spoke over the goodbye; staying on the line");
                        self.exit = Exit::Staying;
                        self.core.stay();
                        if let Some((call_sid, saved)) = self.saved() {
                            self.deps.resume.save(&call_sid, saved);
                        }
                    }
                    // A transfer the caller asked for goes ahead (they are most likely saying
                    // "thanks"), and so does an end imposed by a limit; there is nothing more to
                    // wait for.
                    Exit::Speaking { .. } => self.leave_now(),
                    _ => {}
                }
                if !self.core.turn_running() {
                    // Silence is counted from here if no prompt follows.
                    self.idle_since = Some(Instant::now());
                }
            }
            Inbound::Error(error) => {
                tracing::warn!(description = %error.description, "Twilio reported an error");
            }
            Inbound::Info(info) => match info.event() {
                InfoEvent::AgentSpeaking(on) => {
                    tracing::debug!(on, "agent speaking");
                    // Silence is counted from when our audio stops, not while it plays.
                    if !self.core.turn_running() {
                        self.idle_since = (!on).then(Instant::now);
                    }
                    if let Exit::Speaking {
                        line_sent,
                        heard_on,
                        ..
                    } = &mut self.exit
                    {
                        if on {
                            *heard_on = true;
                        } else if *heard_on || line_sent.elapsed() >= STALE_OFF {
                            self.leave_now();
                        }
                    }
                }
                InfoEvent::ClientSpeaking(on) => {
                    // A caller who is talking is not silent, barge-in or not.
                    self.client_speaking = on;
                    if on {
                        self.idle_since = None;
                    } else if !self.core.turn_running() {
                        self.idle_since = Some(Instant::now());
                    }
                }
                event => tracing::trace!(name = %info.name, ?event, "info"),
            },
            Inbound::Unknown { kind } => {
                tracing::debug!(%kind, "skipping a message type this version does not know");
            }
        }
    }

    fn start_turn(&mut self, user_text: String, dtmf: Option<String>) {
        self.idle_since = None;
        self.reprompted = false;
        // `last_spoken` stays until this turn speaks: an interrupt racing the new prompt still
        // trims the reply the caller actually cut into (unless its messages were trimmed away).
        if self.core.start_turn(user_text, dtmf) {
            self.last_spoken = None;
        }
    }

    /// Cancels the turn in flight, keeps in history what the caller heard, and closes the talk
    /// cycle if anything was sent.
    fn stop_turn(&mut self, why: Stop<'_>) {
        let heard = match why {
            Stop::Interrupted(utterance) => Some(utterance),
            Stop::Superseded => None,
        };
        let Some(stopped) = self.core.stop_turn(heard) else {
            return;
        };
        if stopped.spoke {
            self.outbox.push(Outbound::last(""));
            if heard.is_some() {
                self.core.mark_heard(&stopped.spoken, stopped.heard_end);
            } else {
                // Replaced, not barged in on: an interrupt that follows (the order is not
                // documented) still trims what the caller really heard of it.
                self.last_spoken = Some(stopped.spoken);
            }
        }
    }

    /// Handles an event from a turn task; events of turns no longer current are dropped.
    pub fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) {
        let silent = self.core.turn_silent();
        match self.core.on_turn_event(id, event) {
            None => {}
            Some(Output::Text(text, read_at)) => {
                if silent {
                    // This turn speaks now: a late interrupt is about it, not the last one.
                    self.last_spoken = None;
                }
                self.outbox.push(Outbound::token(text));
                if let Some(read_at) = read_at {
                    self.relayed.push(read_at.0);
                }
            }
            Some(Output::Finished {
                closing,
                departure,
                spoken,
            }) => {
                self.outbox.push(Outbound::last(closing));
                match departure {
                    Some(action) => self.await_hearing(action, &spoken.text),
                    None => self.idle_since = Some(Instant::now()),
                }
                self.last_spoken = Some(spoken);
                // Keep the conversation where a reconnect finds it, even if this task dies.
                if let Some((call_sid, saved)) = self.saved() {
                    self.deps.resume.save(&call_sid, saved);
                }
            }
        }
    }

    /// The last line is out: wait for `agentSpeaking off`, at most about as long as the text
    /// takes to say (~70 ms a character, plus a second), capped by `HANDOFF_MAX_WAIT_MS`.
    fn await_hearing(&mut self, action: Departure, unheard: &str) {
        self.deps
            .resume
            .mark_leaving(&self.core.call.call_sid, action.clone());
        self.core.depart();
        let estimate = Duration::from_millis(unheard.chars().count() as u64 * 70 + 1000);
        let now = Instant::now();
        self.exit = Exit::Speaking {
            action,
            line_sent: now,
            heard_on: false,
            deadline: now + estimate.min(self.deps.handoff.max_wait),
        };
    }

    /// Carries out the handoff or end.
    fn leave_now(&mut self) {
        let Exit::Speaking { action, .. } = std::mem::replace(&mut self.exit, Exit::Gone) else {
            return;
        };
        self.left_at = Some(Instant::now());
        let data = self.core.handoff_data(&action);
        match action {
            Departure::End { reason, .. } => {
                tracing::info!(%reason, "ending the call");
                self.outbox.push(Outbound::End {
                    handoff_data: Some(data.to_compact_json()),
                });
                self.left("end_call", "end_sent");
            }
            Departure::Handoff { reason, .. } => {
                let handoff = self.deps.handoff.clone();
                let path = match (&handoff.route, self.core.call.call_sid.is_empty()) {
                    (Route::CallsApiToStudio { .. }, false) => HandoffPath::CallsApiToStudio,
                    _ => HandoffPath::ConnectAction,
                };
                handoff.store.insert(HandoffRecord {
                    call_sid: data.call_sid.clone(),
                    conversation_sid: String::new(),
                    interaction_sid: None,
                    from: data.from.clone(),
                    to: self.core.call.to.clone(),
                    reason: data.reason.clone(),
                    summary: data.summary.clone(),
                    transcript: data.transcript.clone(),
                    handed_off_at_ms: now_ms(),
                    path,
                });
                tracing::info!(%reason, ?path, "handing the call to a human");
                match (&handoff.route, path) {
                    (Route::CallsApiToStudio { client, flow }, HandoffPath::CallsApiToStudio) => {
                        let twiml = studio_redirect_twiml(flow, &data);
                        let client = client.clone();
                        let call_sid = data.call_sid.clone();
                        let moved = self.moved.sender();
                        self.deps.tracker.spawn(
                            async move {
                                let result = client
                                    .update_call_twiml_with_retries(&call_sid, &twiml, 3)
                                    .await;
                                let _ = moved.send(result).await;
                            }
                            .instrument(self.span.clone()),
                        );
                        self.exit = Exit::Moving {
                            data: Box::new(data),
                        };
                    }
                    _ => self.send_end(&data, "end_sent"),
                }
            }
        }
    }

    fn send_end(&mut self, data: &HandoffData, outcome: &'static str) {
        self.left_at = Some(Instant::now());
        self.outbox.push(Outbound::End {
            handoff_data: Some(data.to_compact_json()),
        });
        self.exit = Exit::Gone;
        self.left("connect_action", outcome);
    }

    /// Counts a handoff or end carried out, and how long it took from being asked for.
    fn left(&mut self, path: &'static str, outcome: &'static str) {
        let elapsed = self.core.exit_asked.take().map(|at| at.elapsed());
        telemetry::handoff_done(path, outcome, elapsed);
    }

    /// The Calls API's answer to the redirect.
    pub fn on_moved(&mut self, result: Result<(), RestError>) {
        let Exit::Moving { data } = std::mem::replace(&mut self.exit, Exit::Gone) else {
            return;
        };
        match result {
            Ok(()) => {
                tracing::info!("call moved to the Studio flow");
                self.left("calls_api_studio", "moved");
            }
            Err(RestError::CallNotInProgress) => {
                tracing::info!("the caller hung up before the handoff; ending the session");
                self.left("calls_api_studio", "caller_gone");
                self.close();
            }
            Err(error) => {
                tracing::error!(%error, "Calls API could not move the call; handing off through end + <Connect action> instead");
                self.deps
                    .handoff
                    .store
                    .set_path(&data.call_sid, HandoffPath::ConnectAction);
                self.send_end(&data, "fallback");
            }
        }
    }

    /// A call-control tool's request: leaving is the core's decision; a language switch is
    /// carried out here.
    pub fn on_control(&mut self, message: ControlMessage) {
        if let Some(ChannelRequest::SwitchLanguage(language)) = self.core.on_control(message) {
            self.outbox.push(Outbound::Language {
                tts_language: Some(language.clone()),
                transcription_language: Some(language),
            });
        }
    }

    /// Stops everything the call owns; the loop then ends the session.
    pub fn close(&mut self) {
        self.core.close();
        self.closed = true;
    }

    /// Whether [`Session::close`] was called.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
