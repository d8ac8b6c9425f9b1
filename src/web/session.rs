//! One widget visitor's task: it owns their conversation core and their lines, streams the bot's
//! replies to the widget, escalates to a Flex agent, and then relays both ways.
//!
//! Like the other transports it polls the running turn next to its inputs. In the bot phase a
//! message that arrives during a turn waits for the next turn (answered together, as in
//! Conversations chat); once escalated, the visitor's messages are posted to the conversation
//! and the bot never answers again.

use std::{collections::BTreeMap, sync::Arc};

use tokio::{sync::mpsc, time::Instant};

use super::{
    escalation,
    protocol::{From, Line, Phase},
    ClientFrame, Input, ServerFrame, TwilioEvent, WebState,
};
use crate::{
    agent::{turn::TurnEvent, CallContext, Departure, TurnId},
    conversation::{spaced, Conversation, Output},
    handoff::now_ms,
    telemetry,
    twilio::rest::Rest,
};

/// Most lines kept for a widget that reconnects.
const MAX_LINES: usize = 500;
/// How long a visitor who has not written anything is kept.
const QUIET_VISITOR: std::time::Duration = std::time::Duration::from_secs(120);
/// Twilio message SIDs remembered per visitor (a redelivered agent message is shown once).
const SEEN_MESSAGES: usize = 256;

/// Runs `visitor`'s conversation until it is idle past `CHAT_IDLE_TIMEOUT`, or the drain.
pub(super) async fn run(state: WebState, visitor: String, mut inputs: mpsc::Receiver<Input>) {
    let chat = state.inner.chat.clone();
    let idle_for = chat.settings().chat.idle_timeout;
    let draining = chat.draining().clone();
    let stop = chat.stopping().clone();
    let mut v = Visitor::new(state.clone(), visitor.clone());
    let live = telemetry::LiveChat::start();
    // A visitor who has not written yet (a page that only opened the socket) is let go soon,
    // so bare connections cannot hold the CHAT_MAX_CONVERSATIONS slots.
    let quiet_for = idle_for.min(QUIET_VISITOR);
    let idle = tokio::time::sleep(quiet_for);
    tokio::pin!(idle);
    tracing::debug!("widget visitor started");
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            input = inputs.recv() => match input {
                Some(input) => {
                    let wrote = matches!(input, Input::Frame(ClientFrame::Message { .. }));
                    v.wrote |= wrote;
                    let wait = if v.wrote { idle_for } else { quiet_for };
                    idle.as_mut().reset(Instant::now() + wait);
                    v.on_input(input).await;
                }
                None => break,
            },
            () = crate::conversation::drive(&mut v.core.running) => v.core.running = None,
            Some((id, event)) = v.core.inbox.events.recv() => v.on_turn_event(id, event).await,
            Some(request) = v.core.inbox.control.recv() => {
                let _ = v.core.on_control(request);
            }
            () = &mut idle, if !v.core.turn_running() => {
                tracing::info!("widget chat idle past CHAT_IDLE_TIMEOUT; forgetting it");
                break;
            }
            () = draining.cancelled(), if !v.core.turn_running() => break,
        }
    }
    state.remove(&visitor);
    drop(live);
    tracing::debug!(lines = v.lines.len(), "widget visitor ended");
}

struct Visitor {
    state: WebState,
    core: Conversation,
    /// Everything shown, for a widget that reconnects.
    lines: Vec<Line>,
    next_line: u64,
    phase: Phase,
    /// The connected widget.
    widget: Option<mpsc::Sender<ServerFrame>>,
    /// Visitor messages waiting for the next bot turn.
    pending: Vec<String>,
    /// The bot line being streamed: its id and text so far.
    streaming: Option<(u64, String)>,
    /// The escalated conversation (`CH…`).
    conversation_sid: Option<String>,
    /// Agents' friendly names, by identity.
    agents: BTreeMap<String, String>,
    /// The visitor has written something.
    wrote: bool,
    /// Recent agent message SIDs (a redelivery is dropped).
    seen: std::collections::VecDeque<String>,
}

impl Visitor {
    fn new(state: WebState, visitor: String) -> Self {
        let chat = state.inner.chat.clone();
        let mut core = Conversation::new(chat.direct_persona());
        core.call = Arc::new(CallContext {
            call_sid: visitor.clone(),
            from: visitor,
            direction: "inbound".into(),
            custom_parameters: BTreeMap::from([("channelType".to_owned(), "web".to_owned())]),
            ..CallContext::default()
        });
        let mut v = Visitor {
            state,
            core,
            lines: Vec::new(),
            next_line: 1,
            phase: Phase::Bot,
            widget: None,
            pending: Vec::new(),
            streaming: None,
            conversation_sid: None,
            agents: BTreeMap::new(),
            wrote: false,
            seen: std::collections::VecDeque::new(),
        };
        if let Some(greeting) = chat.settings().chat.greeting.clone() {
            v.core.say(&greeting);
            v.push(From::Bot, String::new(), greeting);
        }
        v
    }

    fn visitor(&self) -> String {
        self.core.call.call_sid.clone()
    }

    /// Sends a frame to the widget, if one is connected (a gone widget is forgotten; it sees
    /// everything again when it comes back).
    fn send(&mut self, frame: ServerFrame) {
        if let Some(widget) = &self.widget {
            if widget.try_send(frame).is_err() {
                self.widget = None;
            }
        }
    }

    /// A new finished line, kept and shown.
    fn push(&mut self, from: From, name: String, text: String) -> u64 {
        let id = self.next_line;
        self.next_line += 1;
        self.finish_line(id, from, name, text);
        id
    }

    fn finish_line(&mut self, id: u64, from: From, name: String, text: String) {
        let line = Line {
            id,
            from,
            name,
            text,
            at: now_ms(),
        };
        self.lines.push(line.clone());
        if self.lines.len() > MAX_LINES {
            self.lines.remove(0);
        }
        self.send(ServerFrame::Line { line });
    }

    fn set_phase(&mut self, phase: Phase, agent: Option<String>) {
        self.phase = phase;
        self.send(ServerFrame::Phase { phase, agent });
    }

    fn notice(&mut self, text: &str) {
        self.push(From::Notice, String::new(), text.to_owned());
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Attach(widget, token) => {
                self.widget = Some(widget);
                let session = ServerFrame::Session {
                    token,
                    visitor: self.visitor(),
                    phase: self.phase,
                };
                let history = ServerFrame::History {
                    messages: self.lines.clone(),
                };
                self.send(session);
                self.send(history);
                if self.core.turn_running() {
                    self.send(ServerFrame::Typing { on: true });
                }
            }
            Input::Frame(ClientFrame::Message { text }) => self.on_visitor(text).await,
            Input::Frame(ClientFrame::End) => self.end().await,
            Input::Twilio(event) => self.on_twilio(event),
        }
    }

    async fn on_visitor(&mut self, text: String) {
        let max = self.state.inner.chat.settings().limits.max_prompt_chars;
        let mut text = text.trim().to_owned();
        crate::conversation::cut_chars(&mut text, max);
        if text.is_empty() {
            return;
        }
        match self.phase {
            Phase::Closed => {
                self.send(ServerFrame::Error {
                    message: "This chat has ended.".into(),
                });
            }
            Phase::Bot => {
                self.push(From::Visitor, String::new(), text.clone());
                self.pending.push(text);
                self.start_turn();
            }
            Phase::Escalating => {
                // Posted once the conversation exists (see `escalate`).
                self.push(From::Visitor, String::new(), text.clone());
                self.pending.push(text);
            }
            Phase::Live => {
                self.push(From::Visitor, String::new(), text.clone());
                self.post_as_visitor(&text).await;
            }
        }
    }

    /// Starts a bot turn answering the waiting messages, unless one runs.
    fn start_turn(&mut self) {
        if self.core.turn_running() || self.pending.is_empty() || self.phase != Phase::Bot {
            return;
        }
        let messages = std::mem::take(&mut self.pending);
        for message in &messages {
            self.core.note("caller", message);
        }
        self.streaming = None;
        self.send(ServerFrame::Typing { on: true });
        self.core.start_turn(messages.join("\n"), None);
    }

    async fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) {
        match self.core.on_turn_event(id, event) {
            Some(Output::Text(text, Some(_))) => {
                let line = match &mut self.streaming {
                    Some((line, so_far)) => {
                        so_far.push_str(&text);
                        *line
                    }
                    None => {
                        let line = self.next_line;
                        self.next_line += 1;
                        self.streaming = Some((line, text.clone()));
                        line
                    }
                };
                self.send(ServerFrame::Delta { id: line, text });
            }
            Some(Output::Text(_, None)) | None => {}
            Some(Output::Finished {
                closing, departure, ..
            }) => {
                self.send(ServerFrame::Typing { on: false });
                let (line, so_far) = self.streaming.take().unwrap_or_else(|| {
                    let line = self.next_line;
                    self.next_line += 1;
                    (line, String::new())
                });
                let text = (so_far.trim_end().to_owned()
                    + &spaced(so_far.trim_end(), closing.trim()))
                    .trim()
                    .to_owned();
                if !text.is_empty() {
                    self.finish_line(line, From::Bot, String::new(), text);
                }
                match departure {
                    Some(departure @ Departure::Handoff { .. }) => self.escalate(departure).await,
                    Some(Departure::End { .. }) => {
                        self.core.exit_asked = None;
                        self.close_chat(None).await;
                    }
                    None => self.start_turn(),
                }
            }
        }
    }

    /// Hands the visitor to a Flex agent (see [`escalation::escalate`]).
    async fn escalate(&mut self, departure: Departure) {
        self.set_phase(Phase::Escalating, None);
        let asked = self.core.exit_asked.take();
        let data = self.core.handoff_data(&departure);
        match escalation::escalate(&self.state, &self.visitor(), data, self.core.transcript()).await
        {
            Ok(conversation_sid) => {
                telemetry::handoff_done(
                    "widget_interaction",
                    "created",
                    asked.map(|a| a.elapsed()),
                );
                self.conversation_sid = Some(conversation_sid);
                self.set_phase(Phase::Live, None);
                self.notice("You're in the queue for an agent. They'll see this conversation.");
                // What the visitor wrote meanwhile, in order.
                for text in std::mem::take(&mut self.pending) {
                    self.post_as_visitor(&text).await;
                }
            }
            Err(error) => {
                telemetry::handoff_done("widget_interaction", "failed", asked.map(|a| a.elapsed()));
                tracing::error!(%error, "widget escalation failed; the bot carries on");
                self.core.stay();
                let line = self
                    .state
                    .inner
                    .chat
                    .settings()
                    .chat
                    .handoff_failed_line
                    .clone();
                self.core.say(&line);
                self.push(From::Bot, String::new(), line);
                self.set_phase(Phase::Bot, None);
                self.start_turn();
            }
        }
    }

    /// Posts `text` to the escalated conversation as the visitor.
    async fn post_as_visitor(&mut self, text: &str) {
        let Some(conversation_sid) = self.conversation_sid.clone() else {
            return;
        };
        let chat = self.state.inner.chat.clone();
        let Some(conversations) = chat.conversations() else {
            return;
        };
        let visitor = self.visitor();
        let attributes =
            serde_json::json!({"relaybot": {"from": "visitor", "at": now_ms()}}).to_string();
        let posted = Rest::with_create_retries("posting the visitor's message", 3, || {
            conversations.post_message_with(&conversation_sid, &visitor, text, Some(&attributes))
        })
        .await;
        if let Err(error) = posted {
            tracing::error!(%error, "could not post the visitor's message to the conversation");
            self.notice("Sorry, that message could not be delivered. Please try again.");
        }
    }

    fn on_twilio(&mut self, event: TwilioEvent) {
        let visitor = self.visitor();
        let bot = self.state.inner.chat.settings().chat.bot_author.clone();
        match event {
            TwilioEvent::Message { sid, author, body } => {
                if author == visitor || author == bot || body.trim().is_empty() {
                    return;
                }
                if !sid.is_empty() {
                    if self.seen.contains(&sid) {
                        tracing::info!("a redelivered agent message; shown once");
                        return;
                    }
                    if self.seen.len() >= SEEN_MESSAGES {
                        self.seen.pop_front();
                    }
                    self.seen.push_back(sid);
                }
                let name = self.agents.get(&author).cloned().unwrap_or(author);
                self.push(From::Agent, name, body);
            }
            TwilioEvent::Joined { identity, name } => {
                if identity == visitor || identity.is_empty() {
                    return;
                }
                self.agents.insert(identity, name.clone());
                self.notice(&format!("{name} joined the chat."));
                self.set_phase(Phase::Live, Some(name));
            }
            TwilioEvent::Left { identity, name } => {
                if identity == visitor || identity.is_empty() {
                    return;
                }
                self.agents.remove(&identity);
                self.notice(&format!("{name} left the chat."));
            }
            TwilioEvent::Closed => {
                if self.phase != Phase::Closed {
                    self.notice("The chat has ended.");
                    self.set_phase(Phase::Closed, None);
                }
            }
        }
    }

    /// The visitor pressed "End chat".
    async fn end(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let conversation_sid = self.conversation_sid.clone();
        self.close_chat(conversation_sid).await;
    }

    /// Ends the chat: closes the escalated conversation (if any) and tells the widget.
    async fn close_chat(&mut self, conversation_sid: Option<String>) {
        self.core.close();
        self.pending.clear();
        if let (Some(ch), Some(conversations)) = (
            conversation_sid,
            self.state.inner.chat.conversations().cloned(),
        ) {
            let closed = Rest::with_retries("closing the conversation", 3, || {
                conversations.update(&ch, None, Some("closed"))
            })
            .await;
            if let Err(error) = closed {
                tracing::error!(%error, "could not close the widget's conversation");
            }
        }
        self.send(ServerFrame::Typing { on: false });
        self.notice("The chat has ended.");
        self.set_phase(Phase::Closed, None);
    }
}
