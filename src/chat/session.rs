//! One chat conversation's task: it owns the conversation core, takes the conversation's
//! events in order, runs one turn at a time and posts one message per turn.
//!
//! Like a call's loop it polls the running turn next to its inputs (see
//! [`crate::relay::socket`]); unlike a call, a new message never stops the turn in flight: it
//! waits, with any others, for the next turn, which answers them together.

use std::{collections::BTreeMap, sync::Arc};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{handoff, ChatState, Incoming, Input, StudioAnswer};
use crate::{
    agent::{turn::TurnEvent, CallContext, Departure, TurnId},
    conversation::{cut_chars, newest_within, spaced, Conversation, Output, Persona},
    handoff::{now_ms, shorten, HandoffPath, HandoffRecord},
    telemetry,
    twilio::rest::{Rest, RestError},
};

/// Attempts for posting a message (429, 5xx and timeouts are retried).
const POST_ATTEMPTS: u32 = 3;
/// Twilio's error for a conversation in its final `closed` state (channels-and-bots.md §3.8).
const CLOSED_CONVERSATION: u32 = 50377;
/// Longest message body Twilio Conversations takes, in characters (channels-and-bots.md §3.3).
pub const MAX_BODY_CHARS: usize = 1600;
/// `reason` and `summary` sent to Studio, in characters: they end up in `send-to-flex`
/// attributes, which Studio caps at 1,024 characters in all.
const STUDIO_REASON_CHARS: usize = 128;
const STUDIO_SUMMARY_CHARS: usize = 600;

/// Runs the conversation `conversation_sid` until it goes idle, leaves the bot, or the server
/// drains; events still queued then go to a fresh task.
pub(super) async fn run(
    state: ChatState,
    conversation_sid: String,
    persona: Arc<Persona>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let idle_for = state.config().chat.idle_timeout;
    let draining = state.inner.draining.clone();
    let stop = state.inner.stop.clone();
    let mut chat = ChatSession::new(state.clone(), conversation_sid.clone(), persona);
    let live = telemetry::LiveChat::start();
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    tracing::debug!("chat session started");
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                tracing::warn!("stopping the conversation (drain time is up)");
                break;
            }
            input = inputs.recv() => match input {
                Some(input) => {
                    idle.as_mut().reset(Instant::now() + idle_for);
                    chat.on_input(input).await;
                    // Messages that came in together are answered together.
                    while let Ok(more) = inputs.try_recv() {
                        chat.on_input(more).await;
                    }
                    chat.start_next().await;
                }
                None => break,
            },
            () = crate::conversation::drive(&mut chat.core.running) => chat.core.running = None,
            Some((id, event)) = chat.core.inbox.events.recv() => chat.on_turn_event(id, event).await,
            Some(request) = chat.core.inbox.control.recv() => {
                // Chat has no channel-specific requests (no language switch): leaving is the
                // core's decision, carried out when the turn ends.
                let _ = chat.core.on_control(request);
            }
            () = &mut idle, if !chat.busy() => {
                tracing::info!(idle_secs = idle_for.as_secs(), "chat idle past CHAT_IDLE_TIMEOUT; forgetting it");
                break;
            }
            () = draining.cancelled(), if !chat.busy() => break,
        }
        if chat.done {
            break;
        }
    }
    state.inner.registry.remove(&conversation_sid);
    inputs.close();
    let done = chat.done;
    while let Ok(input) = inputs.try_recv() {
        if done {
            tracing::info!("an event for a conversation the bot has left; not acted on");
        } else {
            if let Err(busy) = state.dispatch(&conversation_sid, input) {
                tracing::warn!(%busy, "an event that came in as the conversation ended was lost");
            }
        }
    }
    drop(live);
    tracing::debug!(messages = chat.core.history().len(), "chat session ended");
}

struct ChatSession {
    state: ChatState,
    core: Conversation,
    /// Messages waiting for the next turn.
    pending: Vec<Incoming>,
    /// Studio requests waiting for the next turn's answer.
    pending_studio: Vec<oneshot::Sender<StudioAnswer>>,
    /// Studio requests the running turn answers.
    answering: Vec<oneshot::Sender<StudioAnswer>>,
    /// The running turn's model text so far.
    reply: String,
    /// The webhook that delivers this conversation (`WebhookSid`), to delete at handoff.
    webhook_sid: Option<String>,
    /// The bot is out of this conversation (handed off, closed, gone).
    done: bool,
    /// The `Index` of every message taken (a redelivery that outlived the `MessageSid`
    /// memory is still recognised).
    indexes: std::collections::HashSet<u64>,
}

impl ChatSession {
    fn new(state: ChatState, conversation_sid: String, persona: Arc<Persona>) -> Self {
        let mut core = Conversation::new(persona);
        core.call = Arc::new(CallContext {
            call_sid: conversation_sid,
            direction: "inbound".into(),
            ..CallContext::default()
        });
        ChatSession {
            state,
            core,
            pending: Vec::new(),
            pending_studio: Vec::new(),
            answering: Vec::new(),
            reply: String::new(),
            webhook_sid: None,
            done: false,
            indexes: std::collections::HashSet::new(),
        }
    }

    fn sid(&self) -> &str {
        &self.core.call.call_sid
    }

    /// A turn runs or messages wait for one.
    fn busy(&self) -> bool {
        self.core.turn_running() || !self.pending.is_empty()
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Added => {
                let Some(greeting) = self.state.config().chat.greeting.clone() else {
                    return;
                };
                if self.core.history().len() > 1 {
                    return;
                }
                tracing::info!("new conversation; greeting");
                if self.post(&greeting).await {
                    self.core.say(&greeting);
                }
            }
            Input::Message(message) => {
                if let Some(index) = message.index {
                    if !self.indexes.insert(index) {
                        tracing::info!(index, "a message already taken (same Index); not answered");
                        return;
                    }
                }
                if message.webhook_sid.is_some() {
                    self.webhook_sid.clone_from(&message.webhook_sid);
                }
                if message.body.is_empty() {
                    if message.has_media {
                        tracing::info!("a media-only message; asking for text");
                        self.core.note("caller", "(sent media)");
                        let line = self.state.config().chat.media_only_line.clone();
                        if self.post(&line).await {
                            self.core.say(&line);
                        }
                    } else {
                        tracing::debug!("an empty message; ignored");
                    }
                    return;
                }
                self.queue(message);
            }
            Input::Studio(message, answer) => {
                if message.body.is_empty() {
                    let reply = self.state.config().chat.media_only_line.clone();
                    let _ = answer.send(StudioAnswer {
                        reply,
                        action: "continue",
                        reason: String::new(),
                        summary: String::new(),
                    });
                    return;
                }
                self.queue(message);
                self.pending_studio.push(answer);
            }
            Input::Gone => {
                tracing::info!("the conversation was closed or removed");
                self.done = true;
            }
        }
    }

    /// Keeps `message` for the next turn: at most [`super::QUEUE`] messages wait (a flood
    /// loses its oldest).
    fn queue(&mut self, message: Incoming) {
        if self.pending.len() >= super::QUEUE {
            tracing::warn!(
                waiting = self.pending.len(),
                "too many messages waiting for one turn; dropping the oldest"
            );
            self.pending.remove(0);
        }
        self.pending.push(message);
    }

    /// Starts a turn answering every waiting message, unless one runs already or the
    /// conversation has left the bot.
    async fn start_next(&mut self) {
        if self.core.turn_running() || self.pending.is_empty() || self.done {
            return;
        }
        let direct = self.pending_studio.is_empty();
        if direct && self.left_the_bot().await {
            tracing::info!(
                dropped = self.pending.len(),
                "the conversation is handed off or closed; not answering"
            );
            self.pending.clear();
            self.done = true;
            return;
        }
        let mut messages = std::mem::take(&mut self.pending);
        messages.sort_by_key(|m| m.index);
        let author = messages
            .last()
            .map(|m| m.author.clone())
            .unwrap_or_default();
        if self.core.call.from != author && !author.is_empty() {
            let mut call = (*self.core.call).clone();
            call.custom_parameters = BTreeMap::from([(
                "channelType".to_owned(),
                super::channel_type(&author).to_owned(),
            )]);
            call.from = author;
            self.core.call = Arc::new(call);
        }
        // The turn's input stays within MAX_PROMPT_CHARS, like a caller's utterance: each
        // message is cut to it, and the oldest of a burst go first (the newest always stays).
        let max = self.state.config().limits.max_prompt_chars;
        for message in &mut messages {
            if cut_chars(&mut message.body, max) {
                tracing::warn!(max, "message longer than MAX_PROMPT_CHARS; cut");
            }
        }
        let keep_from = newest_within(&messages, max, |m| m.body.chars().count());
        if keep_from > 0 {
            tracing::warn!(
                dropped = keep_from,
                max,
                "messages waiting for one turn exceed MAX_PROMPT_CHARS; the oldest are left out"
            );
            messages.drain(..keep_from);
        }
        let mut text = String::new();
        for message in &messages {
            self.core.note("caller", &message.body);
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&message.body);
        }
        tracing::debug!(
            messages = messages.len(),
            chars = text.chars().count(),
            "customer wrote"
        );
        self.answering = std::mem::take(&mut self.pending_studio);
        self.reply.clear();
        self.core.start_turn(text, None);
    }

    /// Whether the conversation is marked handed off or closed (read before every turn: the
    /// mark may come from another instance, or from Flex).
    async fn left_the_bot(&mut self) -> bool {
        let state = self.state.clone();
        let Some(conversations) = &state.inner.conversations else {
            return false;
        };
        match conversations.fetch(self.sid()).await {
            Ok(conversation) => {
                let handed_off = handoff::is_handed_off(conversation.attributes.as_deref());
                if handed_off {
                    self.state.inner.registry.mark_handed_off(self.sid());
                }
                handed_off || conversation.state.as_deref() == Some("closed")
            }
            Err(error) => {
                // Answering is better than silence when Twilio cannot be read; the post that
                // follows fails too if the conversation is really gone.
                tracing::warn!(%error, "could not read the conversation before the turn; answering anyway");
                false
            }
        }
    }

    async fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) {
        match self.core.on_turn_event(id, event) {
            // Tool "one moment" lines are for the ear; in chat the reply comes whole.
            Some(Output::Text(text, Some(_))) => self.reply.push_str(&text),
            Some(Output::Text(_, None)) | None => {}
            Some(Output::Finished {
                closing, departure, ..
            }) => {
                let model = std::mem::take(&mut self.reply);
                let text = (model.trim_end().to_owned()
                    + &spaced(model.trim_end(), closing.trim()))
                    .trim()
                    .to_owned();
                if self.answering.is_empty() {
                    self.finish_direct(&text, departure).await;
                } else {
                    self.finish_studio(text, departure);
                }
                self.start_next().await;
            }
        }
    }

    /// Posts the reply, then carries out a departure.
    async fn finish_direct(&mut self, text: &str, departure: Option<Departure>) {
        if !text.is_empty() && !self.post(text).await && self.done {
            return;
        }
        match departure {
            None => {}
            Some(departure @ Departure::Handoff { .. }) => {
                let asked = self.core.exit_asked.take();
                let data = self.core.handoff_data(&departure);
                let webhook_sid = self.webhook_sid.clone();
                match handoff::hand_off(&self.state, data, webhook_sid.as_deref()).await {
                    Ok(_) => {
                        telemetry::handoff_done(
                            "flex_interaction",
                            "created",
                            asked.map(|a| a.elapsed()),
                        );
                        self.done = true;
                    }
                    Err(error) => {
                        tracing::error!(%error, code = ?twilio_code(&error), "chat handoff failed; telling the customer");
                        telemetry::handoff_done(
                            "flex_interaction",
                            "failed",
                            asked.map(|a| a.elapsed()),
                        );
                        let line = self.state.config().chat.handoff_failed_line.clone();
                        self.core.stay();
                        if self.post(&line).await {
                            self.core.say(&line);
                        }
                    }
                }
            }
            Some(Departure::End { reason, .. }) => {
                tracing::info!(%reason, "closing the conversation");
                let asked = self.core.exit_asked.take();
                let state = self.state.clone();
                let sid = self.sid().to_owned();
                if let Some(conversations) = &state.inner.conversations {
                    let closed =
                        Rest::with_retries("closing the conversation", POST_ATTEMPTS, || {
                            conversations.update(&sid, None, Some("closed"))
                        })
                        .await;
                    let outcome = match closed {
                        Ok(()) => "closed",
                        Err(error) => {
                            tracing::error!(%error, "could not close the conversation");
                            "failed"
                        }
                    };
                    telemetry::handoff_done(
                        "conversation_closed",
                        outcome,
                        asked.map(|a| a.elapsed()),
                    );
                }
                self.done = true;
            }
        }
    }

    /// Answers the Studio requests of the turn; Studio posts the reply and hands off itself.
    fn finish_studio(&mut self, text: String, departure: Option<Departure>) {
        if self.answering.iter().all(oneshot::Sender::is_closed) {
            // Studio gave up waiting (`STUDIO_TURN_WAIT`) and sent the customer the error line:
            // this reply was never seen, and a departure it asked for never happens.
            tracing::warn!("the Studio flow stopped waiting for this turn; its answer is dropped");
            self.answering.clear();
            if departure.is_some() {
                self.core.stay();
            }
            return;
        }
        // Studio's `send-to-flex` attributes are capped (1,024 characters, handoff.md §1.5).
        let (action, reason, summary) = match &departure {
            None => ("continue", String::new(), String::new()),
            Some(Departure::Handoff { reason, summary }) => (
                "handoff",
                shorten(reason, STUDIO_REASON_CHARS),
                shorten(summary, STUDIO_SUMMARY_CHARS),
            ),
            Some(Departure::End { reason, .. }) => {
                ("end", shorten(reason, STUDIO_REASON_CHARS), String::new())
            }
        };
        if let Some(departure @ Departure::Handoff { .. }) = &departure {
            let data = self.core.handoff_data(departure);
            self.state.inner.handoffs.insert(HandoffRecord {
                call_sid: String::new(),
                conversation_sid: self.sid().to_owned(),
                interaction_sid: None,
                from: data.from,
                to: String::new(),
                reason: data.reason,
                summary: data.summary,
                transcript: data.transcript,
                handed_off_at_ms: now_ms(),
                path: HandoffPath::StudioChat,
            });
        }
        if departure.is_some() {
            let asked = self.core.exit_asked.take();
            telemetry::handoff_done("studio_chat", action, asked.map(|a| a.elapsed()));
            // The flow carries it out; a later message starts a fresh session.
            self.done = true;
        }
        let reply = if text.is_empty() {
            self.state.config().chat.error_line.clone()
        } else {
            text
        };
        for waiter in self.answering.drain(..) {
            let _ = waiter.send(StudioAnswer {
                reply: reply.clone(),
                action,
                reason: reason.clone(),
                summary: summary.clone(),
            });
        }
    }

    /// Posts `body` as the bot, in parts of at most [`MAX_BODY_CHARS`]; whether all of it was
    /// posted. A conversation that is closed for good ends the session.
    async fn post(&mut self, body: &str) -> bool {
        for part in split_body(body, MAX_BODY_CHARS) {
            if !self.post_one(part).await {
                return false;
            }
        }
        true
    }

    async fn post_one(&mut self, body: &str) -> bool {
        let state = self.state.clone();
        let Some(conversations) = &state.inner.conversations else {
            return false;
        };
        let author = &state.config().chat.bot_author;
        let sid = self.sid().to_owned();
        let posted = Rest::with_create_retries("posting the reply", POST_ATTEMPTS, || {
            conversations.post_message(&sid, author, body)
        })
        .await;
        match posted {
            Ok(_) => true,
            Err(error) => {
                let code = match &error {
                    RestError::Status { code, .. } => *code,
                    _ => None,
                };
                if code == Some(CLOSED_CONVERSATION) {
                    tracing::info!("the conversation is closed; the bot leaves it");
                    self.done = true;
                } else {
                    tracing::error!(%error, ?code, "could not post the reply to the conversation");
                }
                false
            }
        }
    }
}

/// `body` in parts of at most `max` characters, cut after a paragraph, else a sentence, else a
/// word, where one falls in the second half of a part (else anywhere).
pub fn split_body(body: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = body.trim();
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        let half = window.char_indices().nth(max / 2).map_or(0, |(i, _)| i);
        let cut = ["\n\n", "\n", ". ", "! ", "? ", " "]
            .iter()
            .filter_map(|sep| window.rfind(sep).map(|at| at + sep.len()))
            .find(|&at| at > half)
            .unwrap_or(limit);
        parts.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// The Twilio error code behind a failed handoff, for the log.
fn twilio_code(error: &handoff::HandoffError) -> Option<u32> {
    match error {
        handoff::HandoffError::Interactions(RestError::Status { code, .. }) => *code,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::split_body;

    #[test]
    fn long_replies_are_split_at_natural_breaks() {
        assert_eq!(split_body("short", 1600), ["short"]);
        assert!(split_body("  ", 10).is_empty());
        let text = "First sentence here. Second one is longer than that. Third.";
        let parts = split_body(text, 30);
        assert_eq!(
            parts,
            [
                "First sentence here.",
                "Second one is longer than",
                "that. Third."
            ]
        );
        let long = "word ".repeat(1000);
        let parts = split_body(&long, 1600);
        assert!(parts.iter().all(|p| p.chars().count() <= 1600));
        assert_eq!(parts.join(" "), long.trim());
        let unbroken = "é".repeat(40);
        let parts = split_body(&unbroken, 16);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [16, 16, 8]
        );
    }
}
