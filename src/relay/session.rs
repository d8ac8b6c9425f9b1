//! One call: the Conversation Relay WebSocket session.
//!
//! One task per call owns all of the call's state ([`Session`]) and the socket's write half; no
//! lock is shared with anything else. Its loop selects over three things: frames from Twilio,
//! events from the running turn, and the call's cancellation. Turns ([`crate::agent::turn`])
//! run as separate tasks and report over a channel, so reading the socket never waits on the
//! model: an `interrupt` is seen while tokens are still streaming.
//!
//! The decisions are synchronous methods that queue outbound messages ([`Session::on_frame`],
//! [`Session::on_turn_event`]); the loop writes the queue to the socket. Protocol semantics follow
//! the shared protocol notes (§3, §4, §7.3): act on `prompt` only when `last` is true; on
//! `interrupt` stop the turn, close it with an empty `last:true` token, and cut the history to
//! what the caller heard.

use std::{sync::Arc, time::Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{field, Instrument, Span};

use super::protocol::{Inbound, InfoEvent, Outbound};
use crate::agent::{
    mask_number,
    turn::{run_turn, TurnEvent, TurnId, TurnInput},
    Agent, CallContext, Message,
};

/// What a call needs from the server.
#[derive(Clone)]
pub struct SessionDeps {
    /// The shared agent.
    pub agent: Arc<Agent>,
    /// Spoken at the start of the call by Twilio; kept as the first assistant message.
    pub welcome_greeting: Option<String>,
    /// Spoken when the model fails.
    pub error_line: String,
    /// Where turn tasks are tracked (so shutdown can wait for them).
    pub tracker: TaskTracker,
}

/// How far a turn's words reached: what was sent and which history messages hold it.
#[derive(Debug, Default)]
struct Spoken {
    /// Everything sent to Twilio in this turn, in order (model text and tool lines).
    text: String,
    /// `(history index, offset in text)` of each assistant message of this turn.
    spans: Vec<(usize, usize)>,
}

/// The turn in flight.
#[derive(Debug)]
struct ActiveTurn {
    id: TurnId,
    cancel: CancellationToken,
    /// History index of the caller message that started it.
    start: usize,
    spoken: Spoken,
    /// Offset in `spoken.text` where the current step's model text begins.
    step_start: usize,
    /// Model text of the current step not yet committed to history.
    pending: String,
    /// Keys pressed, while this turn was started by keypresses and has not spoken yet.
    dtmf: Option<String>,
}

/// Why a turn stops early.
enum Stop<'a> {
    /// The caller barged in, having heard this much.
    Interrupted(&'a str),
    /// A new caller input replaces it; the caller heard everything sent.
    Superseded,
}

/// The state of one call.
pub struct Session {
    deps: SessionDeps,
    call: Arc<CallContext>,
    set_up: bool,
    history: Vec<Message>,
    turn: Option<ActiveTurn>,
    /// The last finished turn (or the greeting), kept so a late `interrupt` can trim it: the model
    /// finishes streaming long before the caller finishes hearing.
    last_spoken: Option<Spoken>,
    next_turn: TurnId,
    events_tx: mpsc::Sender<(TurnId, TurnEvent)>,
    cancel: CancellationToken,
    outbox: Vec<Outbound>,
    agent_speaking: bool,
    span: Span,
}

impl Session {
    /// A new session whose turns report on `events_tx`; `cancel` ends the call's tasks.
    pub fn new(
        deps: SessionDeps,
        events_tx: mpsc::Sender<(TurnId, TurnEvent)>,
        cancel: CancellationToken,
        span: Span,
    ) -> Self {
        let history = vec![Message::System {
            content: deps.agent.system_prompt.clone(),
        }];
        Session {
            deps,
            call: Arc::new(CallContext::default()),
            set_up: false,
            history,
            turn: None,
            last_spoken: None,
            next_turn: 1,
            events_tx,
            cancel,
            outbox: Vec::new(),
            agent_speaking: false,
            span,
        }
    }

    /// The conversation so far (system prompt first).
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// The call, as `setup` described it.
    pub fn call(&self) -> &CallContext {
        &self.call
    }

    /// Messages queued for Twilio, in order; the caller sends them.
    pub fn take_outbox(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
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
                self.span.record("call_sid", setup.call_sid.as_str());
                self.span.record("session_id", setup.session_id.as_str());
                tracing::info!(
                    from = %mask_number(&setup.from),
                    direction = %setup.direction,
                    parameters = setup.custom_parameters.len(),
                    "call set up"
                );
                let setup = *setup;
                self.call = Arc::new(CallContext {
                    call_sid: setup.call_sid,
                    session_id: setup.session_id,
                    from: setup.from,
                    to: setup.to,
                    direction: setup.direction,
                    custom_parameters: setup.custom_parameters,
                });
                if let Some(greeting) = self.deps.welcome_greeting.clone() {
                    // Twilio speaks the greeting; it is the assistant's first message, and a
                    // barge-in during it trims it like any reply.
                    self.last_spoken = Some(Spoken {
                        spans: vec![(self.history.len(), 0)],
                        text: greeting.clone(),
                    });
                    self.history.push(Message::assistant(greeting));
                }
            }
            Inbound::Prompt(prompt) => {
                if !prompt.last {
                    tracing::trace!("partial prompt");
                    return;
                }
                let text = prompt.voice_prompt.trim();
                if text.is_empty() {
                    tracing::debug!("empty prompt ignored");
                    return;
                }
                tracing::info!(chars = text.chars().count(), "caller spoke");
                self.stop_turn(Stop::Superseded);
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
                // Digits are never logged.
                tracing::info!("caller pressed a key");
                let digits = match self.turn.as_mut().and_then(|t| t.dtmf.take()) {
                    // Keys pressed while the last keypress is still being answered (nothing said
                    // yet) are merged into one input: "1234", not four turns.
                    Some(earlier) => {
                        let turn = self.turn.take().expect("checked above");
                        turn.cancel.cancel();
                        self.history.truncate(turn.start);
                        earlier + digit
                    }
                    None => {
                        self.stop_turn(Stop::Superseded);
                        digit.to_owned()
                    }
                };
                self.start_turn(format!("The caller pressed {digits}."), Some(digits));
            }
            Inbound::Interrupt(interrupt) => {
                tracing::info!(
                    heard_chars = interrupt.utterance_until_interrupt.chars().count(),
                    played_ms = interrupt.duration_until_interrupt_ms,
                    "caller interrupted"
                );
                if self.turn.is_some() {
                    self.stop_turn(Stop::Interrupted(&interrupt.utterance_until_interrupt));
                } else if let Some(spoken) = self.last_spoken.take() {
                    trim_to_heard(
                        &mut self.history,
                        &spoken,
                        Some(&interrupt.utterance_until_interrupt),
                    );
                }
            }
            Inbound::Error(error) => {
                tracing::warn!(description = %error.description, "Twilio reported an error");
            }
            Inbound::Info(info) => match info.event() {
                InfoEvent::AgentSpeaking(on) => {
                    self.agent_speaking = on;
                    tracing::debug!(on, "agent speaking");
                }
                event => tracing::trace!(name = %info.name, ?event, "info"),
            },
            Inbound::Unknown { kind } => {
                tracing::debug!(%kind, "skipping a message type this version does not know");
            }
        }
    }

    /// Whether Twilio last reported the agent's audio as playing (`agentSpeaking`).
    pub fn agent_speaking(&self) -> bool {
        self.agent_speaking
    }

    fn start_turn(&mut self, user_text: String, dtmf: Option<String>) {
        let id = self.next_turn;
        self.next_turn += 1;
        let start = self.history.len();
        self.history.push(Message::User { content: user_text });
        let cancel = self.cancel.child_token();
        self.turn = Some(ActiveTurn {
            id,
            cancel: cancel.clone(),
            start,
            spoken: Spoken::default(),
            step_start: 0,
            pending: String::new(),
            dtmf,
        });
        self.last_spoken = None;
        let input = TurnInput {
            id,
            call: self.call.clone(),
            messages: self.history.clone(),
        };
        let agent = self.deps.agent.clone();
        let events = self.events_tx.clone();
        self.deps.tracker.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = run_turn(agent, input, events) => {}
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// Cancels the turn in flight, keeps in history what the caller heard, and closes the talk
    /// cycle if anything was sent.
    fn stop_turn(&mut self, why: Stop<'_>) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        turn.cancel.cancel();
        if !turn.pending.is_empty() {
            turn.spoken
                .spans
                .push((self.history.len(), turn.step_start));
            self.history
                .push(Message::assistant(std::mem::take(&mut turn.pending)));
        }
        let heard = match why {
            Stop::Interrupted(utterance) => Some(utterance),
            Stop::Superseded => None,
        };
        trim_to_heard(&mut self.history, &turn.spoken, heard);
        if !turn.spoken.text.is_empty() {
            self.outbox.push(Outbound::last(""));
        }
        tracing::debug!(
            turn = turn.id,
            interrupted = heard.is_some(),
            "turn stopped"
        );
    }

    /// Handles an event from a turn task; events of turns no longer current are dropped.
    pub fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) {
        let Some(turn) = self.turn.as_mut().filter(|t| t.id == id) else {
            return;
        };
        match event {
            TurnEvent::Content(text) => {
                turn.dtmf = None;
                turn.spoken.text.push_str(&text);
                turn.pending.push_str(&text);
                self.outbox.push(Outbound::token(text));
            }
            TurnEvent::Filler(line) => {
                turn.dtmf = None;
                // Spaced on both sides so it never runs into the words around it.
                let line = spaced(&turn.spoken.text, &line) + " ";
                turn.spoken.text.push_str(&line);
                self.outbox.push(Outbound::token(line));
            }
            TurnEvent::Commit(messages) => {
                for message in messages {
                    if matches!(message, Message::Assistant { .. }) {
                        turn.spoken
                            .spans
                            .push((self.history.len(), turn.step_start));
                    }
                    self.history.push(message);
                }
                turn.pending.clear();
                turn.step_start = turn.spoken.text.len();
            }
            TurnEvent::Done => {
                let turn = self.turn.take().expect("matched above");
                self.outbox.push(Outbound::last(""));
                tracing::debug!(turn = turn.id, chars = turn.spoken.text.len(), "turn done");
                self.last_spoken = Some(turn.spoken);
            }
            TurnEvent::Failed(error) => {
                let mut turn = self.turn.take().expect("matched above");
                tracing::warn!(turn = turn.id, %error, "model failed; apologising to the caller");
                let apology = spaced(&turn.spoken.text, &self.deps.error_line);
                turn.spoken
                    .spans
                    .push((self.history.len(), turn.step_start));
                turn.spoken.text.push_str(&apology);
                self.history.push(Message::assistant(
                    std::mem::take(&mut turn.pending) + &apology,
                ));
                self.outbox.push(Outbound::last(apology));
                self.last_spoken = Some(turn.spoken);
            }
        }
    }

    /// Cancels everything the call owns.
    pub fn close(&mut self) {
        if let Some(turn) = self.turn.take() {
            turn.cancel.cancel();
        }
        self.cancel.cancel();
    }
}

/// `line`, with a space in front when it follows text that does not end in one.
fn spaced(before: &str, line: &str) -> String {
    if before.is_empty() || before.ends_with(char::is_whitespace) {
        line.to_owned()
    } else {
        format!(" {line}")
    }
}

/// Cuts a turn's assistant messages to what the caller heard and marks them interrupted.
/// With no utterance (superseded), or one that cannot be found, everything sent counts as heard.
fn trim_to_heard(history: &mut Vec<Message>, spoken: &Spoken, utterance: Option<&str>) {
    let Some(utterance) = utterance else {
        return;
    };
    let heard_end = heard_end(&spoken.text, utterance).unwrap_or(spoken.text.len());
    for &(index, offset) in spoken.spans.iter().rev() {
        let Some(Message::Assistant {
            content,
            tool_calls,
            interrupted,
        }) = history.get_mut(index)
        else {
            continue;
        };
        let keep = heard_end.saturating_sub(offset).min(content.len());
        let end = offset + content.len();
        if keep < content.len() || (offset <= heard_end && heard_end <= end) {
            let mut cut = keep;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
            *interrupted = true;
        }
        if content.is_empty() && tool_calls.is_empty() && index + 1 == history.len() {
            history.pop();
        }
    }
}

/// Where, in `spoken`, the caller's `utterance` ends: matched case- and whitespace-tolerantly,
/// then ignoring punctuation. `None` when it cannot be found.
fn heard_end(spoken: &str, utterance: &str) -> Option<usize> {
    if utterance.trim().is_empty() {
        return Some(0);
    }
    // Normalised text, and for each of its bytes the end (in `spoken`) of the source character.
    fn normalise(text: &str, keep: impl Fn(char) -> bool, spaces: bool) -> (String, Vec<usize>) {
        let mut out = String::new();
        let mut ends = Vec::new();
        let mut pending_space = false;
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if c.is_whitespace() {
                pending_space = spaces && !out.is_empty();
                continue;
            }
            if !keep(c) {
                continue;
            }
            if pending_space {
                out.push(' ');
                ends.push(i);
                pending_space = false;
            }
            for lower in c.to_lowercase() {
                let before = out.len();
                out.push(lower);
                ends.extend(std::iter::repeat_n(end, out.len() - before));
            }
        }
        (out, ends)
    }
    let attempts: [(&dyn Fn(char) -> bool, bool); 2] =
        [(&|_| true, true), (&|c: char| c.is_alphanumeric(), false)];
    for (keep, spaces) in attempts {
        let (text, ends) = normalise(spoken, keep, spaces);
        let (needle, _) = normalise(utterance, keep, spaces);
        if needle.is_empty() {
            continue;
        }
        if let Some(at) = text.find(&needle) {
            return Some(ends[at + needle.len() - 1]);
        }
    }
    None
}

/// Runs a call over an upgraded socket until either side ends it.
pub async fn run(socket: WebSocket, deps: SessionDeps, cancel: CancellationToken) {
    let span = tracing::info_span!("call", call_sid = field::Empty, session_id = field::Empty);
    let started = Instant::now();
    let (events_tx, mut events_rx) = mpsc::channel(256);
    let mut session = Session::new(deps, events_tx, cancel.clone(), span.clone());
    let (mut sink, mut stream) = socket.split();
    async move {
        tracing::debug!("websocket open");
        loop {
            tokio::select! {
                // Frames first: an interrupt must be seen before more tokens are written.
                biased;
                () = cancel.cancelled() => break,
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => session.on_frame(text.as_str()),
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        tracing::warn!(bytes = bytes.len(), "skipping a binary frame");
                    }
                    Some(Ok(WsMessage::Close(_))) | None => break,
                    Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "websocket read failed");
                        break;
                    }
                },
                Some((id, event)) = events_rx.recv() => session.on_turn_event(id, event),
            }
            for message in session.take_outbox() {
                match message.to_frame() {
                    Ok(frame) => {
                        if let Err(e) = sink.send(WsMessage::Text(frame.into())).await {
                            tracing::info!(error = %e, "websocket write failed");
                            session.close();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, ?message, "not sending an invalid message")
                    }
                }
            }
        }
        session.close();
        tracing::info!(
            seconds = started.elapsed().as_secs(),
            messages = session.history().len(),
            "call ended"
        );
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_end_tolerates_case_whitespace_and_punctuation() {
        let spoken = "Life is a complex set of  experiences. More later.";
        assert_eq!(heard_end(spoken, "Life is a complex set of"), Some(24));
        assert_eq!(heard_end(spoken, "life IS a\ncomplex"), Some(17));
        assert_eq!(heard_end(spoken, "set of experiences"), Some(37));
        assert_eq!(heard_end(spoken, "Life, is a complex"), Some(17));
        assert_eq!(heard_end(spoken, "something else"), None);
        assert_eq!(heard_end(spoken, ""), Some(0));
        assert_eq!(
            heard_end("Ça va très bien", "ça va TRÈS"),
            Some("Ça va très".len())
        );
    }

    #[test]
    fn trimming_cuts_every_message_of_the_turn_and_drops_unheard_text() {
        let mut history = vec![
            Message::User {
                content: "q".into(),
            },
            Message::Assistant {
                content: "Let me check. ".into(),
                tool_calls: vec![crate::agent::ToolCall {
                    id: "c".into(),
                    name: "t".into(),
                    arguments: "{}".into(),
                }],
                interrupted: false,
            },
            Message::Tool {
                tool_call_id: "c".into(),
                content: "r".into(),
            },
            Message::assistant("Your order ships Monday."),
        ];
        let spoken = Spoken {
            text: "Let me check. One moment. Your order ships Monday.".into(),
            spans: vec![(1, 0), (3, 26)],
        };
        trim_to_heard(
            &mut history,
            &spoken,
            Some("Let me check. One moment. Your order"),
        );
        assert_eq!(
            history[3],
            Message::Assistant {
                content: "Your order".into(),
                tool_calls: vec![],
                interrupted: true
            }
        );
        let mut again = history.clone();
        again[3] = Message::assistant("Your order ships Monday.");
        trim_to_heard(&mut again, &spoken, Some("Let me"));
        assert_eq!(again.len(), 3, "an unheard text-only reply is dropped");
        let Message::Assistant {
            content,
            interrupted,
            ..
        } = &again[1]
        else {
            panic!()
        };
        assert_eq!((content.as_str(), *interrupted), ("Let me", true));
    }
}
