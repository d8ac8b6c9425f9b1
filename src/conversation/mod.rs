//! The conversation core every channel shares: history, turns, the failure policy, the decision
//! to leave (handoff or end) and the record a human gets.
//!
//! A channel's transport (the Conversation Relay socket in [`crate::relay`], the Conversations
//! webhook in [`crate::chat`]) owns one [`Conversation`] and feeds it inputs: the customer's
//! words ([`Conversation::start_turn`]), the running turn's events
//! ([`Conversation::on_turn_event`]), call-control requests ([`Conversation::on_control`]).
//! Each method answers with what the transport must do — text to send now ([`Output::Text`]),
//! the end of a reply with its closing line and any departure ([`Output::Finished`]) — and the
//! transport turns that into its own wire format: streamed `text` tokens for voice, one posted
//! message per turn for chat.
//!
//! What stays in the transports: voice keeps barge-in (what the caller heard), DTMF, silence
//! reprompts and waiting for the last line to be heard; chat keeps message queuing, retries
//! and the Flex Interactions handoff.
//!
//! The turn itself ([`crate::agent::turn::run_turn`]) is a future the transport polls inside
//! its own task ([`Conversation::running`]) and that reports over [`Inbox::events`]; tools ask
//! for a handoff or an end over [`Inbox::control`].

mod heard;
mod persona;

use std::sync::Arc;

use futures::FutureExt;
use tokio::{sync::mpsc, time::Instant};

pub use heard::{heard_end, trim_to_heard};
pub use persona::{Lines, Persona};

use crate::{
    agent::{
        control::{CallControl, ControlMessage, ControlRequest},
        turn::{ReadAt, TurnEvent, TurnInput},
        CallContext, Departure, LlmError, Message, TurnId,
    },
    handoff::{now_ms, HandoffData, TranscriptLine},
    telemetry,
};

/// How far a turn's words reached: what was sent and which history messages hold it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Spoken {
    /// Everything sent to the customer in this turn, in order (model text and tool lines).
    pub text: String,
    /// `(history index, offset in text)` of each assistant message of this turn.
    pub spans: Vec<(usize, usize)>,
    /// Index of this turn's agent line in the transcript, once written.
    pub transcript_line: Option<usize>,
}

/// The turn in flight.
#[derive(Debug)]
struct ActiveTurn {
    id: TurnId,
    /// History index of the customer message that started it.
    start: usize,
    spoken: Spoken,
    /// Offset in `spoken.text` where the current step's model text begins.
    step_start: usize,
    /// Model text of the current step not yet committed to history.
    pending: String,
    /// An input the next one of its kind merges into while this turn has not answered yet
    /// (voice: keys pressed one after the other).
    mergeable: Option<String>,
}

/// What the transport does after an input.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send this text to the customer now (a piece of the reply as it streams, or a tool's
    /// "one moment" line), with when the model chunk behind it was read (model text only).
    Text(String, Option<ReadAt>),
    /// The turn is over. `closing` (maybe empty) ends the reply: an apology, or the handoff or
    /// goodbye line when the turn asked to leave; `spoken` is everything the turn said.
    /// With `departure` set the conversation is leaving: carry it out once the line is out.
    Finished {
        /// The line that ends the reply, already spaced from the text before it.
        closing: String,
        /// How the conversation leaves, when it does.
        departure: Option<Departure>,
        /// The whole reply as sent.
        spoken: Spoken,
    },
}

/// A channel-specific request the core does not carry out itself.
#[derive(Debug, PartialEq)]
pub enum ChannelRequest {
    /// Speak and listen in another language (voice).
    SwitchLanguage(String),
}

/// How a stopped turn ended.
#[derive(Debug, Default)]
pub struct Stopped {
    /// Whether it had sent anything (voice closes the talk cycle with an empty last token).
    pub spoke: bool,
    /// Where, in its text, the customer stopped hearing (barge-in); its length otherwise.
    pub heard_end: usize,
    /// Its words, for a late barge-in to trim.
    pub spoken: Spoken,
}

/// A channel made on first use: its sender for the session's tasks, its receiver for the loop.
pub struct Lazy<T> {
    tx: Option<mpsc::Sender<T>>,
    rx: Option<mpsc::Receiver<T>>,
    capacity: usize,
}

impl<T> Lazy<T> {
    /// A channel of `capacity` messages, made when [`Lazy::sender`] is first called.
    pub fn new(capacity: usize) -> Self {
        Lazy {
            tx: None,
            rx: None,
            capacity,
        }
    }

    /// The sender, making the channel the first time.
    pub fn sender(&mut self) -> mpsc::Sender<T> {
        if let Some(tx) = &self.tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        self.rx = Some(rx);
        self.tx.insert(tx).clone()
    }

    /// The next message; pending forever until the channel exists.
    pub async fn recv(&mut self) -> Option<T> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// The channels a conversation's turn reports on, made when first needed: a conversation that
/// never talks allocates none.
pub struct Inbox {
    /// Turn events.
    pub events: Lazy<(TurnId, TurnEvent)>,
    /// Call-control requests from tools.
    pub control: Lazy<ControlMessage>,
}

/// Where the conversation is on its way out, as far as the core knows.
#[derive(Debug)]
enum Exit {
    /// Not leaving.
    Staying,
    /// A tool asked; carried out when its turn ends (dropped if the turn is cut short).
    Pending { turn: TurnId, action: Departure },
    /// The transport is carrying out a departure.
    Leaving,
}

/// One conversation's state, whatever the channel.
pub struct Conversation {
    persona: Arc<Persona>,
    /// Who the customer is (the call, or the chat conversation).
    pub call: Arc<CallContext>,
    history: Vec<Message>,
    transcript: Vec<TranscriptLine>,
    turn: Option<ActiveTurn>,
    /// The current turn's work (model stream, tools), polled by the transport's loop.
    pub running: Option<futures::future::BoxFuture<'static, ()>>,
    next_turn: TurnId,
    /// What the running turn reports on.
    pub inbox: Inbox,
    exit: Exit,
    /// When the current handoff or end was asked for (handoff-duration metric).
    pub exit_asked: Option<Instant>,
    /// Model failures in a row.
    failures: u32,
}

impl Conversation {
    /// A new conversation with only the persona's system prompt.
    pub fn new(persona: Arc<Persona>) -> Self {
        let history = vec![Message::System {
            content: persona.brain.system_prompt(),
        }];
        Conversation {
            persona,
            call: Arc::new(CallContext::default()),
            history,
            transcript: Vec::new(),
            turn: None,
            running: None,
            next_turn: 1,
            inbox: Inbox {
                events: Lazy::new(256),
                control: Lazy::new(16),
            },
            exit: Exit::Staying,
            exit_asked: None,
            failures: 0,
        }
    }

    /// The channel's agent and lines.
    pub fn persona(&self) -> &Persona {
        &self.persona
    }

    /// The conversation so far (system prompt first).
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Mutable history, for a transport trimming what the customer heard.
    pub fn history_mut(&mut self) -> &mut Vec<Message> {
        &mut self.history
    }

    /// The timestamped transcript for the human agent.
    pub fn transcript(&self) -> &[TranscriptLine] {
        &self.transcript
    }

    /// Restores a conversation saved by an earlier instance of it (a reconnected call).
    pub fn restore(&mut self, history: Vec<Message>, transcript: Vec<TranscriptLine>) {
        self.history = history;
        self.transcript = transcript;
    }

    /// Whether a turn is running.
    pub fn turn_running(&self) -> bool {
        self.turn.is_some()
    }

    /// Whether the running turn has sent nothing yet.
    pub fn turn_silent(&self) -> bool {
        self.turn.as_ref().is_some_and(|t| t.spoken.text.is_empty())
    }

    /// The running turn's id.
    pub fn turn_id(&self) -> Option<TurnId> {
        self.turn.as_ref().map(|t| t.id)
    }

    /// Whether the running turn is `id`.
    pub fn is_current(&self, id: TurnId) -> bool {
        self.turn.as_ref().is_some_and(|t| t.id == id)
    }

    /// Whether a tool asked to leave and its turn is still running.
    pub fn departure_pending(&self) -> bool {
        matches!(self.exit, Exit::Pending { .. })
    }

    /// Whether the transport is carrying out a departure.
    pub fn leaving(&self) -> bool {
        matches!(self.exit, Exit::Leaving)
    }

    /// The transport carries out a departure from now on: no turn runs, no tool may ask again.
    pub fn depart(&mut self) {
        self.exit = Exit::Leaving;
        self.exit_asked.get_or_insert_with(Instant::now);
    }

    /// The departure is called off (the customer spoke over an end they had asked for).
    pub fn stay(&mut self) {
        self.exit = Exit::Staying;
        self.exit_asked = None;
    }

    /// Adds a transcript line; returns its index.
    pub fn note(&mut self, role: &str, text: &str) -> usize {
        self.transcript.push(TranscriptLine {
            role: role.to_owned(),
            text: text.to_owned(),
            at_ms: now_ms(),
            interrupted: false,
        });
        self.transcript.len() - 1
    }

    /// A line of ours (not the model's) as an assistant message and a transcript line.
    pub fn say(&mut self, line: &str) -> Spoken {
        let transcript_line = Some(self.note("agent", line));
        let spoken = Spoken {
            text: line.to_owned(),
            spans: vec![(self.history.len(), 0)],
            transcript_line,
        };
        self.history.push(Message::assistant(line));
        spoken
    }

    /// The line for `departure`: the persona's handoff or goodbye line.
    pub fn line_for(&self, departure: &Departure) -> String {
        match departure {
            Departure::Handoff { .. } => self.persona.lines.handoff.clone(),
            Departure::End { .. } => self.persona.lines.end.clone(),
        }
    }

    /// What the human (or the `end` message) gets for `departure`.
    pub fn handoff_data(&self, departure: &Departure) -> HandoffData {
        HandoffData::for_departure(
            departure,
            &self.call.call_sid,
            &self.call.from,
            &self.transcript,
        )
    }

    /// Starts a turn answering `user_text` (already in the transcript, if it belongs there).
    /// `mergeable`: see [`Conversation::take_mergeable`]. Returns whether old turns were dropped
    /// to keep the history within its budget (history indexes held elsewhere are then stale).
    pub fn start_turn(&mut self, user_text: String, mergeable: Option<String>) -> bool {
        let id = self.next_turn;
        self.next_turn += 1;
        self.history.push(Message::User { content: user_text });
        let trimmed = self.trim_history();
        let start = self.history.len() - 1;
        self.turn = Some(ActiveTurn {
            id,
            start,
            spoken: Spoken::default(),
            step_start: 0,
            pending: String::new(),
            mergeable: mergeable.clone(),
        });
        let input = TurnInput {
            id,
            call: self.call.clone(),
            messages: self.history.clone(),
            control: Some(CallControl::new(self.inbox.control.sender())),
            prompt_at: Instant::now(),
            keys: mergeable,
            channel: self.persona.channel,
        };
        telemetry::metrics().turns.increment(1);
        let brain = self.persona.brain.clone();
        let events = self.inbox.events.sender();
        // The turn runs inside the transport's task (its loop polls it), not as a task of its
        // own: every token would otherwise cost a wake-up on another thread. A turn stopped
        // early is dropped (see `stop_turn`).
        self.running = Some(Box::pin(async move {
            let turn =
                std::panic::AssertUnwindSafe(brain.turn(input, events.clone())).catch_unwind();
            if turn.await.is_err() {
                // A bug must not leave the customer in silence: the transport apologises.
                tracing::error!(turn = id, "turn panicked");
                let failed = TurnEvent::Failed(LlmError::Internal("panic".into()));
                let _ = events.send((id, failed)).await;
            }
        }));
        trimmed
    }

    /// When the running turn has not answered yet and was started by a mergeable input, cancels
    /// it (and its history) and returns that input, for the transport to start one turn with
    /// both: keys pressed while the last key is still being answered make "1234", not four turns.
    pub fn take_mergeable(&mut self) -> Option<String> {
        let earlier = self.turn.as_mut().and_then(|t| t.mergeable.take())?;
        let turn = self.turn.take().expect("checked above");
        self.running = None;
        self.drop_pending_exit(turn.id);
        self.history.truncate(turn.start);
        Some(earlier)
    }

    /// Keeps the history within the persona's `history_max_chars` (counting the customer's new
    /// message, which always stays): the system prompt always stays; whole turns (a customer
    /// message and everything after it up to the next one) go, oldest first, so tool calls are
    /// never separated from their results. Returns whether anything was dropped.
    fn trim_history(&mut self) -> bool {
        let budget = self.persona.history_max_chars;
        let size = |m: &Message| match m {
            Message::System { content } => content.len(),
            Message::User { content } => content.len(),
            Message::Assistant {
                content,
                tool_calls,
                ..
            } => {
                content.len()
                    + tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>()
            }
            Message::Tool { content, .. } => content.len(),
        };
        let mut total: usize = self.history.iter().map(size).sum();
        if total <= budget {
            return false;
        }
        let keep_from = 1; // the system prompt
        let newest = self.history.len() - 1; // the customer's new message always stays
        let mut cut = keep_from;
        while total > budget && cut < newest {
            // Drop up to (not including) the next customer message after `cut`.
            let mut end = cut + 1;
            while end < self.history.len() && !matches!(self.history[end], Message::User { .. }) {
                end += 1;
            }
            total -= self.history[cut..end].iter().map(size).sum::<usize>();
            cut = end;
        }
        tracing::debug!(
            dropped = cut - keep_from,
            "history over HISTORY_MAX_CHARS; oldest turns dropped"
        );
        self.history.drain(keep_from..cut);
        true
    }

    /// A handoff or end asked for by turn `id` is dropped with it.
    fn drop_pending_exit(&mut self, id: TurnId) {
        if matches!(self.exit, Exit::Pending { turn, .. } if turn == id) {
            tracing::info!(
                turn = id,
                "the customer cut in: the pending handoff/end is not carried out"
            );
            self.exit = Exit::Staying;
            self.exit_asked = None;
        }
    }

    /// Cancels the turn in flight and keeps in history what the customer got: everything sent,
    /// or with `heard` (a barge-in) what they heard of it. `None` when no turn was running.
    pub fn stop_turn(&mut self, heard: Option<&str>) -> Option<Stopped> {
        let mut turn = self.turn.take()?;
        // Dropping the turn's future drops the model's HTTP stream and any tool still running.
        self.running = None;
        self.drop_pending_exit(turn.id);
        if !turn.pending.is_empty() {
            turn.spoken
                .spans
                .push((self.history.len(), turn.step_start));
            self.history
                .push(Message::assistant(std::mem::take(&mut turn.pending)));
        }
        let heard_end = trim_to_heard(&mut self.history, &turn.spoken, heard);
        let spoke = !turn.spoken.text.is_empty();
        if spoke {
            let line = self.note("agent", &turn.spoken.text);
            turn.spoken.transcript_line = Some(line);
        }
        tracing::debug!(
            turn = turn.id,
            interrupted = heard.is_some(),
            "turn stopped"
        );
        Some(Stopped {
            spoke,
            heard_end,
            spoken: turn.spoken,
        })
    }

    /// Cuts the transcript line of `spoken` to what was heard.
    pub fn mark_heard(&mut self, spoken: &Spoken, heard_end: usize) {
        if let Some(line) = spoken
            .transcript_line
            .and_then(|i| self.transcript.get_mut(i))
        {
            let mut end = heard_end.min(spoken.text.len());
            while !spoken.text.is_char_boundary(end) {
                end -= 1;
            }
            line.text = spoken.text[..end].trim_end().to_owned();
            line.interrupted = true;
        }
    }

    /// Handles an event of the running turn; events of turns no longer current are dropped
    /// (`None`).
    pub fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) -> Option<Output> {
        let turn = self.turn.as_mut().filter(|t| t.id == id)?;
        match event {
            TurnEvent::Content(text, read_at) => {
                turn.mergeable = None;
                turn.spoken.text.push_str(&text);
                turn.pending.push_str(&text);
                Some(Output::Text(text, Some(read_at)))
            }
            TurnEvent::Filler(_) if !self.persona.fillers => None,
            TurnEvent::Filler(line) => {
                turn.mergeable = None;
                // Spaced on both sides so it never runs into the words around it.
                let line = spaced(&turn.spoken.text, &line) + " ";
                turn.spoken.text.push_str(&line);
                Some(Output::Text(line, None))
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
                None
            }
            TurnEvent::Done => Some(self.finish(None)),
            TurnEvent::Failed(error) => Some(self.finish(Some(error))),
        }
    }

    /// Ends the current turn: the failure policy, the closing line, the transcript.
    fn finish(&mut self, failed: Option<LlmError>) -> Output {
        let mut turn = self.turn.take().expect("the caller checked the turn");
        let mut departure = match std::mem::replace(&mut self.exit, Exit::Staying) {
            Exit::Pending { turn: t, action } if t == turn.id => Some(action),
            other => {
                self.exit = other;
                None
            }
        };
        if failed.is_none() {
            self.failures = 0;
        }
        let persona = &self.persona;
        let closing = match (&failed, &departure) {
            (_, Some(action)) => {
                if let Some(error) = &failed {
                    tracing::warn!(turn = turn.id, %error, "model failed after asking to leave; leaving anyway");
                }
                self.line_for(action)
            }
            (Some(error), None) => {
                self.failures += 1;
                if persona.human_available && self.failures >= persona.failures_before_handoff {
                    tracing::error!(turn = turn.id, %error, failures = self.failures, "model failed again; handing the customer to a human");
                    let action = Departure::Handoff {
                        reason: format!("The {} agent could not answer.", persona.channel),
                        summary: format!(
                            "The AI model failed repeatedly during this {}.",
                            persona.noun
                        ),
                    };
                    let line = self.line_for(&action);
                    departure = Some(action);
                    line
                } else if persona.human_available {
                    tracing::warn!(turn = turn.id, %error, "model failed; apologising and offering a person");
                    persona.lines.offer_human.clone()
                } else {
                    tracing::warn!(turn = turn.id, %error, "model failed; apologising to the customer");
                    persona.lines.error.clone()
                }
            }
            (None, None) => String::new(),
        };
        let closing = if closing.is_empty() {
            closing
        } else {
            spaced(&turn.spoken.text, &closing)
        };
        if !closing.is_empty() {
            turn.spoken
                .spans
                .push((self.history.len(), turn.step_start));
            turn.spoken.text.push_str(&closing);
            self.history.push(Message::assistant(
                std::mem::take(&mut turn.pending) + &closing,
            ));
        }
        if !turn.spoken.text.is_empty() {
            turn.spoken.transcript_line = Some(self.note("agent", &turn.spoken.text));
        }
        if departure.is_some() {
            self.depart();
        }
        tracing::debug!(turn = turn.id, chars = turn.spoken.text.len(), "turn done");
        Output::Finished {
            closing,
            departure,
            spoken: turn.spoken,
        }
    }

    /// A call-control tool's request. Leaving is decided here (at most once; never for a turn
    /// that is over); other requests go back to the transport, answered `Ok`.
    pub fn on_control(&mut self, message: ControlMessage) -> Option<ChannelRequest> {
        let ControlMessage {
            turn,
            request,
            reply,
        } = message;
        let mut channel = None;
        let answer = if !self.is_current(turn) {
            tracing::info!(
                turn,
                ?request,
                "refusing a call-control request from a turn that is over"
            );
            Err(self.persona.lines.turn_cancelled.clone())
        } else {
            match request {
                ControlRequest::SwitchLanguage { language } => {
                    tracing::info!(%language, "switching language");
                    let answer = format!(
                        "Switched to {language}. Answer only in that language from now on."
                    );
                    channel = Some(ChannelRequest::SwitchLanguage(language));
                    Ok(answer)
                }
                ControlRequest::Leave(_) if !matches!(self.exit, Exit::Staying) => {
                    tracing::info!("a handoff or end is already in progress; not doing it twice");
                    Err(self.persona.lines.already_leaving.clone())
                }
                ControlRequest::Leave(departure) => {
                    let answer = match &departure {
                        Departure::Handoff { .. } => self.persona.lines.handoff_started.clone(),
                        Departure::End { .. } => self.persona.lines.end_started.clone(),
                    };
                    self.exit_asked = Some(Instant::now());
                    self.exit = Exit::Pending {
                        turn,
                        action: departure,
                    };
                    Ok(answer)
                }
            }
        };
        let _ = reply.send(answer);
        channel
    }

    /// Stops everything in flight (the transport is closing).
    pub fn close(&mut self) {
        self.turn = None;
        self.running = None;
    }
}

/// `line`, with a space in front when it follows text that does not end in one.
pub fn spaced(before: &str, line: &str) -> String {
    if before.is_empty() || before.ends_with(char::is_whitespace) {
        line.to_owned()
    } else {
        format!(" {line}")
    }
}

/// Polls a transport's running turn ([`Conversation::running`]) to completion; pending forever
/// when there is none. Every transport's loop selects on it next to its inputs.
pub async fn drive(running: &mut Option<futures::future::BoxFuture<'static, ()>>) {
    match running {
        Some(turn) => turn.await,
        None => std::future::pending().await,
    }
}

/// Cuts `text` to at most `max` characters (`MAX_PROMPT_CHARS` for a customer's input); whether
/// it was cut.
pub fn cut_chars(text: &mut String, max: usize) -> bool {
    match text.char_indices().nth(max) {
        Some((cut, _)) => {
            text.truncate(cut);
            true
        }
        None => false,
    }
}

/// Of inputs waiting for one turn, the index of the first to keep so that the kept ones (the
/// newest, whose sizes `chars` gives) stay within `max` characters; the newest is always kept.
/// The oldest of a burst go first.
pub fn newest_within<T>(inputs: &[T], max: usize, chars: impl Fn(&T) -> usize) -> usize {
    let mut total = 0;
    inputs
        .iter()
        .rposition(|input| {
            total += chars(input);
            total > max
        })
        .map_or(0, |i| (i + 1).min(inputs.len().saturating_sub(1)))
}

/// A transport's drain: no new tasks on `tracker`; wait for those running (idle conversations
/// leave when the drain starts, busy ones after their turn) until `deadline`; then cancel
/// `stop`, which every task of the transport watches, and wait for them to end.
pub async fn drain_sessions(
    tracker: &tokio_util::task::TaskTracker,
    stop: &tokio_util::sync::CancellationToken,
    deadline: Instant,
    what: &str,
) {
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            live = tracker.len(),
            "drain time is up; stopping the {what} still busy"
        );
        stop.cancel();
        tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::newest_within;

    #[test]
    fn a_burst_keeps_its_newest_inputs_within_the_budget() {
        let sizes = [5usize, 4, 3, 2];
        assert_eq!(newest_within(&sizes, 100, |s| *s), 0, "all fit");
        assert_eq!(newest_within(&sizes, 5, |s| *s), 2, "the last two fit");
        assert_eq!(
            newest_within(&sizes, 1, |s| *s),
            3,
            "the newest always stays"
        );
        assert_eq!(newest_within::<usize>(&[], 1, |s| *s), 0);
    }
}
