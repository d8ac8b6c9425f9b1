//! One Lex session's task: it owns the conversation core, takes the session's events in order,
//! runs one turn at a time and answers each event exactly once.
//!
//! Like the other transports it polls the running turn next to its inputs. An event gets, in
//! this order: an answer owed from a turn that outran the budget; else the running turn's answer
//! (the endpoint waits up to the budget, then says the holding line and the answer becomes
//! owed); else a new turn answering every input still waiting. Inputs that arrive while an answer
//! is owed or a turn runs wait for the next turn, which answers them together (nothing the
//! customer said is dropped; a handoff writes them into the record).

use std::{collections::BTreeMap, sync::Arc};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{record, Action, ConnectState, Incoming, InputMode, Reply, Said};
use crate::{
    agent::{mask_number, turn::TurnEvent, CallContext, Departure, TurnId},
    conversation::{spaced, ChannelRequest, Conversation, Output, Persona},
    telemetry,
};

/// Inputs waiting for one turn; past this the oldest go (a flood).
const MAX_WAITING: usize = 16;

/// Runs the Lex session `session_id` until it goes idle (`CHAT_IDLE_TIMEOUT`), leaves the bot
/// (a delivered handoff or end), or the server drains.
pub(super) async fn run(
    state: ConnectState,
    session_id: String,
    generation: u64,
    persona: Arc<Persona>,
    mut inputs: mpsc::Receiver<Incoming>,
) {
    let idle_for = state.inner.config.chat.idle_timeout;
    let draining = state.inner.chat.draining().clone();
    let stop = state.inner.stop.clone();
    let mut s = Session::new(state.clone(), session_id.clone(), persona);
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                tracing::warn!("stopping the Lex session (drain time is up)");
                break;
            }
            input = inputs.recv() => match input {
                Some(incoming) => {
                    idle.as_mut().reset(Instant::now() + idle_for);
                    s.on_event(incoming, draining.is_cancelled());
                }
                None => break,
            },
            () = crate::conversation::drive(&mut s.core.running) => s.core.running = None,
            Some((id, event)) = s.core.inbox.events.recv() => s.on_turn_event(id, event),
            Some(request) = s.core.inbox.control.recv() => {
                if let Some(ChannelRequest::SwitchLanguage(language)) = s.core.on_control(request) {
                    tracing::info!(%language, "switch_language is not carried out on Amazon Connect: the Lex bot's locale and voice stay");
                }
            }
            () = &mut idle, if !s.core.turn_running() => {
                if s.owed.is_some() {
                    tracing::info!("Lex session idle past CHAT_IDLE_TIMEOUT with an answer never delivered (the customer left)");
                } else {
                    tracing::info!(idle_secs = idle_for.as_secs(), "Lex session idle past CHAT_IDLE_TIMEOUT; forgetting it");
                }
                break;
            }
            () = draining.cancelled(), if s.may_leave_on_drain() => break,
        }
        if s.done {
            break;
        }
    }
    state.inner.registry.remove(&session_id, generation);
    inputs.close();
    // Events that came in as the session ended go to a fresh task (or, refused, their endpoint
    // answers with a route to a person).
    while let Ok(incoming) = inputs.try_recv() {
        let _ = state.dispatch(&session_id, incoming);
    }
    tracing::debug!(messages = s.core.history().len(), "Lex session ended");
}

/// A finished reply and the departure behind it (for the record, once delivered).
struct Answer {
    reply: Reply,
    departure: Option<Departure>,
}

struct Session {
    state: ConnectState,
    core: Conversation,
    /// Inputs waiting for the next turn.
    pending: Vec<Said>,
    /// The endpoint waiting for the running turn's answer.
    waiter: Option<oneshot::Sender<Reply>>,
    /// A finished answer no endpoint took (it gave the holding line): the next event gets it.
    owed: Option<Answer>,
    /// The running turn's model text so far.
    reply: String,
    /// The bot is out of this session (a handoff or end was delivered).
    done: bool,
}

impl Session {
    fn new(state: ConnectState, session_id: String, persona: Arc<Persona>) -> Self {
        let channel = if persona.channel == "voice" {
            "voice"
        } else {
            "chat"
        };
        let mut core = Conversation::new(persona);
        core.call = Arc::new(CallContext {
            call_sid: session_id,
            direction: "inbound".into(),
            custom_parameters: BTreeMap::from([
                ("channelType".to_owned(), channel.to_owned()),
                ("platform".to_owned(), "amazon-connect".to_owned()),
            ]),
            ..CallContext::default()
        });
        Session {
            state,
            core,
            pending: Vec::new(),
            waiter: None,
            owed: None,
            reply: String::new(),
            done: false,
        }
    }

    /// Nothing in flight and nothing owed: a drain may end the session.
    fn may_leave_on_drain(&self) -> bool {
        !self.core.turn_running() && self.waiter.is_none() && self.owed.is_none()
    }

    fn on_event(&mut self, incoming: Incoming, draining: bool) {
        let Incoming {
            said,
            mode,
            contact_id,
            from,
            to,
            reply,
        } = incoming;
        self.learn(contact_id, from, to);
        if let Some(earlier) = self.waiter.take() {
            // Lex sends one event at a time: an earlier endpoint still waiting is a retry's.
            if !earlier.is_closed() {
                let _ = earlier.send(Reply {
                    text: self.state.holding_line(),
                    action: Action::Continue,
                });
            }
        }
        if let Some(said) = said {
            self.queue(said);
        }
        if let Some(owed) = self.owed.take() {
            tracing::info!("delivering the answer of the turn that outran the budget");
            self.deliver(reply, owed);
            return;
        }
        if self.core.turn_running() {
            self.waiter = Some(reply);
            return;
        }
        if draining {
            // The server is going away: the customer goes to a person, with the story so far.
            let departure = Departure::Handoff {
                reason: "The AI agent is restarting.".into(),
                summary:
                    "The AI agent was shutting down during this conversation; see the transcript."
                        .into(),
            };
            self.core.depart();
            let text = self.core.line_for(&departure);
            self.core.say(&text);
            let answer = Answer {
                reply: Reply {
                    text,
                    action: action_for(Some(&departure)),
                },
                departure: Some(departure),
            };
            self.deliver(reply, answer);
            return;
        }
        if self.pending.is_empty() {
            // An empty input (silence, or a chat attachment): ask again.
            let line = if mode == InputMode::Text {
                self.state.inner.config.chat.media_only_line.clone()
            } else {
                self.state.inner.config.limits.idle_reprompt_line.clone()
            };
            tracing::debug!("an empty input; asking again");
            self.core.say(&line);
            let _ = reply.send(Reply {
                text: line,
                action: Action::Continue,
            });
            return;
        }
        self.start_turn();
        self.waiter = Some(reply);
    }

    /// Takes what the flow passed about the contact (the number is never logged unmasked).
    fn learn(&mut self, contact_id: Option<String>, from: Option<String>, to: Option<String>) {
        let call = &self.core.call;
        let contact_changed = contact_id
            .as_ref()
            .is_some_and(|c| call.custom_parameters.get("contactId") != Some(c));
        let from_changed = from.as_ref().is_some_and(|f| *f != call.from);
        let to_changed = to.as_ref().is_some_and(|t| *t != call.to);
        if !(contact_changed || from_changed || to_changed) {
            return;
        }
        let mut call = (*self.core.call).clone();
        if let Some(contact_id) = contact_id {
            tracing::info!(%contact_id, "Connect contact");
            call.custom_parameters
                .insert("contactId".to_owned(), contact_id);
        }
        if let Some(from) = from {
            tracing::info!(from = %mask_number(&from), "caller number from the flow");
            call.from = from;
        }
        if let Some(to) = to {
            call.to = to;
        }
        self.core.call = Arc::new(call);
    }

    /// Keeps `said` for the next turn: at most [`MAX_WAITING`] wait (a flood loses its oldest).
    fn queue(&mut self, said: Said) {
        if self.pending.len() >= MAX_WAITING {
            tracing::warn!(
                waiting = self.pending.len(),
                "too many inputs waiting for one turn; dropping the oldest"
            );
            let dropped = self.pending.remove(0);
            self.core.note("caller", &dropped.note);
        }
        self.pending.push(said);
    }

    /// Starts a turn answering every waiting input (the newest first within
    /// `MAX_PROMPT_CHARS`; all of them go into the transcript).
    fn start_turn(&mut self) {
        let mut said = std::mem::take(&mut self.pending);
        for s in &said {
            self.core.note("caller", &s.note);
        }
        let max = self.state.inner.config.limits.max_prompt_chars;
        let keep_from = crate::conversation::newest_within(&said, max, |s| s.text.chars().count());
        if keep_from > 0 {
            tracing::warn!(
                dropped = keep_from,
                max,
                "inputs waiting for one turn exceed MAX_PROMPT_CHARS; the oldest are left out"
            );
            said.drain(..keep_from);
        }
        let keys = match said.as_slice() {
            [only] => only.keys.clone(),
            _ => None,
        };
        let text = said
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        tracing::debug!(
            inputs = said.len(),
            chars = text.chars().count(),
            "customer input"
        );
        self.reply.clear();
        self.core.start_turn(text, keys);
    }

    fn on_turn_event(&mut self, id: TurnId, event: TurnEvent) {
        match self.core.on_turn_event(id, event) {
            // Tool "one moment" lines would only sit in front of the answer, sent whole.
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
                let text = if text.is_empty() {
                    self.core.persona().lines.error.clone()
                } else {
                    text
                };
                let answer = Answer {
                    reply: Reply {
                        text,
                        action: action_for(departure.as_ref()),
                    },
                    departure,
                };
                match self.waiter.take() {
                    Some(waiter) => self.deliver(waiter, answer),
                    None => self.owed = Some(answer),
                }
            }
        }
    }

    /// Gives `answer` to `waiter`; kept as owed when the endpoint stopped waiting. A delivered
    /// handoff or end ends the session.
    fn deliver(&mut self, waiter: oneshot::Sender<Reply>, answer: Answer) {
        let Answer { reply, departure } = answer;
        match waiter.send(reply) {
            Ok(()) => {
                if let Some(departure) = departure {
                    self.departed(&departure);
                }
            }
            Err(reply) => {
                tracing::debug!(
                    "the endpoint gave the holding line; the answer waits for the next event"
                );
                self.owed = Some(Answer { reply, departure });
            }
        }
    }

    /// A handoff or end went back to the Connect flow: the record is kept, the session ends.
    fn departed(&mut self, departure: &Departure) {
        // Words no turn will answer still reach the human agent, in the transcript.
        for said in std::mem::take(&mut self.pending) {
            self.core.note("caller", &said.note);
        }
        let asked = self.core.exit_asked.take();
        match departure {
            Departure::Handoff { reason, .. } => {
                let data = self.core.handoff_data(departure);
                let to = self.core.call.to.clone();
                let session_id = self.core.call.call_sid.clone();
                self.state
                    .inner
                    .chat
                    .record_handoff(record(&session_id, data, &to));
                tracing::info!(%reason, "handed back to the Connect flow for a queue");
                telemetry::handoff_done("connect_queue", "handoff", asked.map(|a| a.elapsed()));
            }
            Departure::End { reason, .. } => {
                tracing::info!(%reason, "conversation ended; back to the Connect flow");
                telemetry::handoff_done("connect_queue", "end", asked.map(|a| a.elapsed()));
            }
        }
        self.done = true;
    }
}

/// What the flow does for `departure`.
fn action_for(departure: Option<&Departure>) -> Action {
    match departure {
        None => Action::Continue,
        Some(Departure::Handoff { reason, summary }) => Action::Handoff {
            reason: reason.clone(),
            summary: summary.clone(),
        },
        Some(Departure::End { .. }) => Action::End,
    }
}
