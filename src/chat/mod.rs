//! The chat channel: Twilio Conversations (Flex WebChat, SMS, WhatsApp) answered by the same
//! conversation core as calls, and handed to Flex through the Interactions API.
//!
//! Two ways in, one session logic:
//! - **Direct webhook** (`POST /conversations/webhook`, [`ChatState::accept`]): Twilio's
//!   post-event webhook. The request is acknowledged at once; the work goes to the
//!   conversation's own task ([`session`]), which answers through the Conversations REST API
//!   (one message per turn) and hands off through the Flex Interactions API ([`handoff`]).
//! - **Studio** (`POST /conversations/turn`, [`ChatState::studio_turn`]): a Studio flow's
//!   `make-http-request` widget asks for one turn and gets `{reply, action, reason, summary}`;
//!   the flow posts the reply and does the handoff itself (`send-to-flex`).
//!
//! One task per `ConversationSid` (made on the first event, freed after `CHAT_IDLE_TIMEOUT`)
//! owns that conversation's [`crate::conversation::Conversation`]: messages are handled in
//! order, one turn at a time, and messages that arrive during a turn are answered together in
//! the next one (chat has no barge-in). Retried deliveries (same `MessageSid`) are dropped here,
//! before they reach a session. Source: handoff.md §3 (Conversations webhooks, Interactions
//! API, getting the bot out of the loop).

pub mod handoff;
mod registry;
mod session;

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    conversation::Persona,
    handoff::HandoffStore,
    telemetry,
    twilio::{
        conversations::ConversationsClient, flex::InteractionsClient, rest::Rest,
        webhooks::ConversationEvent,
    },
};

use registry::Registry;

/// Where Twilio Conversations posts its webhooks to us.
pub const WEBHOOK_PATH: &str = "/conversations/webhook";

/// How long one Conversations or Interactions request may take before it is retried.
const REST_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting for one conversation's task; past this a conversation is being flooded and
/// further messages are dropped (logged).
const QUEUE: usize = 64;

/// The customer's channel, as the Interactions API's `Channel.type` names it
/// (channels-and-bots.md §3.9).
///
/// Derived from the message's `Author`, which Twilio sets to the participant's address:
/// `whatsapp:+1…` → `whatsapp`, `messenger:…` → `messenger`, `gbm:…` → `gbm`, a phone number
/// (`+` and digits) → `sms`, anything else (a Conversations identity, as Flex WebChat and our
/// own widget use) → `web`.
pub fn channel_type(author: &str) -> &'static str {
    let author = author.trim();
    if author.starts_with("whatsapp:") {
        "whatsapp"
    } else if author.starts_with("messenger:") {
        "messenger"
    } else if author.starts_with("gbm:") {
        "gbm"
    } else if author.starts_with('+')
        && author.len() > 4
        && author[1..].chars().all(|c| c.is_ascii_digit())
    {
        "sms"
    } else {
        "web"
    }
}

/// One customer message, as the session needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `MessageSid` (`IM…`), empty from Studio.
    pub message_sid: String,
    /// `Index`: the message's position in the conversation.
    pub index: Option<u64>,
    /// `Body`, trimmed.
    pub body: String,
    /// `Author`: the customer's identity or address.
    pub author: String,
    /// The message had media (`Media` was a non-empty list).
    pub has_media: bool,
    /// `WebhookSid`: the conversation-scoped webhook that delivered it (observed, not
    /// documented: handoff.md §3.1).
    pub webhook_sid: Option<String>,
}

/// What a Studio turn answers (`POST /conversations/turn`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StudioAnswer {
    /// The text to send the customer (never empty).
    pub reply: String,
    /// `continue`, `handoff` or `end`.
    pub action: &'static str,
    /// Why the conversation leaves (empty with `continue`).
    pub reason: String,
    /// For the human agent (empty unless `handoff`).
    pub summary: String,
}

/// What a conversation's task is told.
#[derive(Debug)]
enum Input {
    /// `onConversationAdded`: greet.
    Added,
    /// A customer message from the direct webhook.
    Message(Incoming),
    /// A customer message from Studio, answered on the channel.
    Studio(Incoming, oneshot::Sender<StudioAnswer>),
    /// The conversation was closed or removed: forget it.
    Gone,
}

/// Where chat handoffs go (`FLEX_WORKSPACE_SID`, `TWILIO_WORKFLOW_SID`,
/// `FLEX_CHAT_TASK_CHANNEL`).
#[derive(Debug, Clone)]
pub struct FlexRouting {
    /// The Interactions client.
    pub client: InteractionsClient,
    /// `WS…`.
    pub workspace_sid: String,
    /// `WW…`.
    pub workflow_sid: String,
    /// The task channel's unique name.
    pub task_channel: String,
}

/// Everything the chat channel shares. Cheap to clone.
#[derive(Clone)]
pub struct ChatState {
    inner: Arc<Shared>,
}

struct Shared {
    /// The agent of conversations that come through the direct webhook (it may hand off only
    /// when the Interactions API is configured).
    direct: Arc<Persona>,
    /// The agent of conversations a Studio flow drives (its `send-to-flex` always can).
    studio: Arc<Persona>,
    config: Arc<Config>,
    /// `None` without REST credentials: the direct webhook cannot answer then.
    conversations: Option<ConversationsClient>,
    /// `None` unless a workspace, a workflow and credentials are set.
    routing: Option<FlexRouting>,
    /// Chat handoff records, by `ConversationSid`.
    handoffs: HandoffStore,
    registry: Registry,
    /// The conversation tasks (their own, so a drain waits for calls and chats separately).
    tracker: TaskTracker,
    /// Cancelled when a shutdown starts: idle conversations let go, new events are refused.
    draining: CancellationToken,
    /// Cancelled when the drain time is up: every conversation task stops.
    stop: CancellationToken,
}

/// The chat brains [`ChatState::new`] takes (for an LLM: the same model, each with its tools).
pub struct ChatAgents {
    /// For the direct webhook: an LLM gets `agent_handoff` only when
    /// [`ChatState::human_available`].
    pub direct: Arc<dyn crate::agent::Brain>,
    /// For Studio turns: an LLM always gets `agent_handoff` (the flow's `send-to-flex` hands
    /// off).
    pub studio: Arc<dyn crate::agent::Brain>,
}

/// Why a chat event was not taken; the webhook answers 503 so that Twilio may deliver it again
/// (whether Twilio retries a post-event webhook after a 5xx is observed, not documented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Draining,
    /// The conversation's queue is full (a flood of messages).
    #[error("the conversation's queue is full")]
    QueueFull,
    /// `CHAT_MAX_CONVERSATIONS` conversations are live.
    #[error("CHAT_MAX_CONVERSATIONS conversations are live")]
    Capacity,
}

impl ChatState {
    /// The chat channel for `config`, answering with `agents`; conversations let go when
    /// `draining` is cancelled (see [`ChatState::drain`]).
    ///
    /// # Errors
    /// A message when the REST clients cannot be built.
    pub fn new(
        config: Arc<Config>,
        agents: ChatAgents,
        draining: CancellationToken,
    ) -> Result<Self, String> {
        let direct = Arc::new(Persona::chat(
            &config,
            agents.direct,
            Self::human_available(&config),
        ));
        let studio = Arc::new(Persona::chat(&config, agents.studio, true));
        let rest = match config.twilio.rest_credentials() {
            Some((user, password)) => Some(Rest::new(&user, password, REST_TIMEOUT)?),
            None => None,
        };
        let conversations = rest
            .clone()
            .map(|rest| ConversationsClient::new(&config.chat.conversations_base, rest));
        let routing = match (
            rest,
            &config.chat.workspace_sid,
            &config.handoff.workflow_sid,
        ) {
            (Some(rest), Some(workspace), Some(workflow)) => Some(FlexRouting {
                client: InteractionsClient::new(&config.chat.flex_base, rest),
                workspace_sid: workspace.clone(),
                workflow_sid: workflow.clone(),
                task_channel: config.chat.task_channel.clone(),
            }),
            _ => None,
        };
        Ok(ChatState {
            inner: Arc::new(Shared {
                direct,
                studio,
                handoffs: HandoffStore::new(config.handoff.record_ttl),
                registry: Registry::new(config.chat.max_conversations),
                config,
                conversations,
                routing,
                tracker: TaskTracker::new(),
                draining,
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Waits for the conversation tasks to finish (idle ones leave as soon as the drain starts;
    /// busy ones after their turn) until `deadline`, then stops them.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        crate::conversation::drain_sessions(
            &self.inner.tracker,
            &self.inner.stop,
            deadline,
            "chat conversations",
        )
        .await;
    }

    /// Whether chat handoffs can reach Flex (a workspace, a workflow and credentials are set).
    pub fn human_available(config: &Config) -> bool {
        config.chat.workspace_sid.is_some()
            && config.handoff.workflow_sid.is_some()
            && config.twilio.rest_credentials().is_some()
    }

    /// The record of a handed-off chat (`GET /conversations/{ConversationSid}/handoff`).
    pub fn handoff_record(&self, conversation_sid: &str) -> Option<crate::handoff::HandoffRecord> {
        self.inner.handoffs.get(conversation_sid)
    }

    /// The chat persona of the direct route (the web widget's too).
    pub(crate) fn direct_persona(&self) -> Arc<Persona> {
        self.inner.direct.clone()
    }

    /// The Conversations client, when REST credentials are set.
    pub(crate) fn conversations(&self) -> Option<&ConversationsClient> {
        self.inner.conversations.as_ref()
    }

    /// Where chat handoffs go, when configured.
    pub(crate) fn routing(&self) -> Option<&FlexRouting> {
        self.inner.routing.as_ref()
    }

    /// Keeps the record of a chat handed to a person (served at
    /// `GET /conversations/{ConversationSid}/handoff`).
    pub(crate) fn record_handoff(&self, record: crate::handoff::HandoffRecord) {
        self.inner.handoffs.insert(record);
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &Config {
        &self.inner.config
    }

    /// Cancelled when a shutdown starts.
    pub(crate) fn draining(&self) -> &CancellationToken {
        &self.inner.draining
    }

    /// Cancelled when the drain time is up.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Conversations with a live task.
    pub fn live(&self) -> usize {
        self.inner.registry.live()
    }

    /// Takes a (verified) post-event webhook: starts or feeds the conversation's task and
    /// returns at once. Events that need no work (our own messages, retries, events we do not
    /// act on, conversations already handed off) are logged and dropped.
    ///
    /// # Errors
    /// [`Busy`] when the event was not taken: the webhook answers 503.
    pub fn accept(&self, event: ConversationEvent) -> Result<(), Busy> {
        let Some(conversation_sid) = event.conversation_sid.clone().filter(|s| !s.is_empty())
        else {
            tracing::warn!(event_type = ?event.event_type, "a Conversations webhook without ConversationSid; skipped");
            return Ok(());
        };
        let input = match event.event_type.as_deref() {
            Some("onMessageAdded") => {
                let author = event.author.clone().unwrap_or_default();
                if author == self.inner.config.chat.bot_author {
                    telemetry::chat_event("ours");
                    tracing::debug!("our own message; not answered");
                    return Ok(());
                }
                if self.inner.conversations.is_none() {
                    tracing::error!("a chat message arrived but TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN (or an API key) are not set, so relaybot cannot answer through the Conversations API");
                    return Ok(());
                }
                Input::Message(incoming(&event))
            }
            Some("onConversationAdded") => Input::Added,
            Some("onConversationRemoved") => Input::Gone,
            Some("onConversationStateUpdated")
                if crate::twilio::webhooks::find(&event.params, "StateTo") == Some("closed") =>
            {
                Input::Gone
            }
            other => {
                telemetry::chat_event("ignored");
                tracing::debug!(event_type = ?other, "a Conversations event relaybot does not act on");
                return Ok(());
            }
        };
        self.dispatch(&conversation_sid, input).inspect_err(|busy| {
            tracing::warn!(%conversation_sid, %busy, "chat event refused; Twilio may deliver it again");
        })
    }

    /// One Studio turn: the customer's `body` from `author` in `conversation_sid`; answers when
    /// the turn is done (the caller bounds the wait).
    pub fn studio_turn(
        &self,
        conversation_sid: &str,
        body: &str,
        author: &str,
    ) -> oneshot::Receiver<StudioAnswer> {
        let (tx, rx) = oneshot::channel();
        let message = Incoming {
            message_sid: String::new(),
            index: None,
            body: body.trim().to_owned(),
            author: author.trim().to_owned(),
            has_media: false,
            webhook_sid: None,
        };
        if let Err(busy) = self.dispatch(conversation_sid, Input::Studio(message, tx)) {
            tracing::warn!(%conversation_sid, %busy, "Studio turn refused");
        }
        rx
    }

    /// Hands `input` to the conversation's task, starting one if needed.
    ///
    /// # Errors
    /// [`Busy`] when the event was not taken (a redelivery may be).
    fn dispatch(&self, conversation_sid: &str, input: Input) -> Result<(), Busy> {
        let shared = &self.inner;
        let starts = matches!(input, Input::Message(_) | Input::Studio(..) | Input::Added);
        if starts && shared.draining.is_cancelled() {
            telemetry::chat_event("draining");
            return Err(Busy::Draining);
        }
        let message_sid = match &input {
            Input::Message(m) => Some(m.message_sid.clone()),
            _ => None,
        };
        let mut input = input;
        // Twice at most: a task that ended just as this event was routed to it.
        for again in [false, true] {
            let sid = message_sid.as_deref().filter(|_| !again);
            match shared.registry.route(conversation_sid, sid, starts) {
                registry::Route::Drop(registry::Dropped::Capacity) => {
                    telemetry::chat_event("capacity");
                    return Err(Busy::Capacity);
                }
                registry::Route::Drop(dropped) => {
                    telemetry::chat_event(dropped.label());
                    tracing::info!(
                        conversation_sid,
                        why = dropped.why(),
                        "chat event not acted on"
                    );
                    return Ok(());
                }
                registry::Route::Send(tx) => match tx.try_send(input) {
                    Ok(()) => {
                        telemetry::chat_event("queued");
                        return Ok(());
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if let Some(sid) = &message_sid {
                            shared.registry.forget(sid);
                        }
                        telemetry::chat_event("full");
                        return Err(Busy::QueueFull);
                    }
                    Err(mpsc::error::TrySendError::Closed(back)) => input = back,
                },
                registry::Route::Start(tx, rx) => {
                    telemetry::chat_event("started");
                    let persona = if matches!(input, Input::Studio(..)) {
                        shared.studio.clone()
                    } else {
                        shared.direct.clone()
                    };
                    let _ = tx.try_send(input);
                    let state = self.clone();
                    let conversation_sid = conversation_sid.to_owned();
                    let span = tracing::info_span!("chat", conversation_sid = %conversation_sid);
                    shared.tracker.spawn(tracing::Instrument::instrument(
                        session::run(state, conversation_sid, persona, rx),
                        span,
                    ));
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The session-facing view of the state.
impl ChatState {
    fn config(&self) -> &Config {
        &self.inner.config
    }
}

/// A message event as the session needs it.
fn incoming(event: &ConversationEvent) -> Incoming {
    Incoming {
        message_sid: event.message_sid.clone().unwrap_or_default(),
        index: crate::twilio::webhooks::find(&event.params, "Index").and_then(|i| i.parse().ok()),
        body: event.body.as_deref().unwrap_or_default().trim().to_owned(),
        author: event.author.clone().unwrap_or_default(),
        has_media: event.media.is_some(),
        webhook_sid: event.webhook_sid.clone(),
    }
}

/// A new conversation's channel pair.
fn channel() -> (mpsc::Sender<Input>, mpsc::Receiver<Input>) {
    mpsc::channel(QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_types_follow_the_author() {
        assert_eq!(channel_type("whatsapp:+15551230000"), "whatsapp");
        assert_eq!(channel_type("+15551230000"), "sms");
        assert_eq!(channel_type("messenger:1234"), "messenger");
        assert_eq!(channel_type("FXa1b2c3"), "web");
        assert_eq!(channel_type("alice@example.com"), "web");
        assert_eq!(channel_type("+1"), "web");
    }
}
