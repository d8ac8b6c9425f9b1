//! The web chat widget: a script any website embeds (`GET /widget.js`), talking to relaybot over
//! a WebSocket (`GET /chat/ws`, [`protocol`]), answered by the same conversation core and chat
//! agent as Twilio Conversations, and escalated to a live Flex agent in the same window.
//!
//! Each visitor has one task ([`session`]) that owns their conversation, keyed by a visitor id
//! carried in a signed session token, so a reconnect or a page reload resumes the conversation
//! (for `CHAT_IDLE_TIMEOUT`). When the agent hands off, the task creates a Twilio Conversation
//! for the visitor, posts the bot transcript, subscribes relaybot to it and creates a Flex
//! interaction ([`escalation`]); from then on the visitor's words are posted to that
//! conversation and the agent's arrive through `POST /conversations/webhook`, routed here by
//! [`WebState::owns`]. Sources: handoff.md §3, channels-and-bots.md §3.0–3.9.

mod escalation;
pub mod protocol;
mod session;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::{chat::ChatState, telemetry, twilio::webhooks::ConversationEvent};

pub use protocol::{ClientFrame, ServerFrame};

/// The widget script, served at `GET /widget.js`.
pub const WIDGET_JS: &str = include_str!("../../assets/widget.js");
/// The widget's styles, served at `GET /widget.css`.
pub const WIDGET_CSS: &str = include_str!("../../assets/widget.css");
/// A page with the widget, served at `GET /chat`.
pub const CHAT_PAGE: &str = include_str!("../../assets/chat.html");

/// Inputs a visitor's task takes.
#[derive(Debug)]
enum Input {
    /// A widget connected; frames for it go to this sender (it replaces an earlier one).
    Attach(mpsc::Sender<ServerFrame>, String),
    /// A frame from the widget.
    Frame(ClientFrame),
    /// An event of the visitor's escalated conversation, from Twilio.
    Twilio(TwilioEvent),
}

/// What Twilio said about an escalated conversation.
#[derive(Debug, Clone, PartialEq)]
enum TwilioEvent {
    /// A message (the agent's, unless its author is the visitor or the bot).
    Message {
        sid: String,
        author: String,
        body: String,
    },
    /// Someone joined (`Identity`, and a friendly name from its attributes when there is one).
    Joined { identity: String, name: String },
    /// Someone left.
    Left { identity: String, name: String },
    /// The conversation was closed.
    Closed,
}

/// The widget channel's shared state. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Shared>,
}

struct Shared {
    chat: ChatState,
    key: SecretString,
    visitors: Mutex<Visitors>,
    tracker: TaskTracker,
    /// `http://ip:port` we listen on, for the webhook URL when `PUBLIC_URL` is unset.
    local_base: Arc<OnceLock<String>>,
}

#[derive(Default)]
struct Visitors {
    /// Each visitor's task.
    live: HashMap<String, mpsc::Sender<Input>>,
    /// Which visitor an escalated conversation (`CH…`) belongs to.
    by_conversation: HashMap<String, String>,
}

/// Why a widget connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `CHAT_MAX_CONVERSATIONS` visitors are live.
    #[error("too many chats")]
    Capacity,
    /// The server is shutting down.
    #[error("shutting down")]
    Draining,
}

impl WebState {
    /// The widget channel on top of `chat` (its clients, persona, routing and records). Session
    /// tokens are signed with `secret` (`CALL_TOKEN_SECRET`; random when unset, so tokens do not
    /// outlive the process).
    pub fn new(
        chat: ChatState,
        secret: Option<SecretString>,
        local_base: Arc<OnceLock<String>>,
    ) -> Self {
        let key = secret.unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::random();
            SecretString::from(hex(&bytes))
        });
        WebState {
            inner: Arc::new(Shared {
                chat,
                key,
                visitors: Mutex::default(),
                tracker: TaskTracker::new(),
                local_base,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Visitors> {
        self.inner
            .visitors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Visitors with a live task.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }

    /// The signed token of `visitor`, issued now: `visitor.issued.signature` (`issued` in Unix
    /// seconds). A widget gets a fresh one on every connection, so it stays valid for
    /// `CHAT_IDLE_TIMEOUT` after the visitor was last connected.
    fn token(&self, visitor: &str) -> String {
        let issued = crate::handoff::now_ms() / 1000;
        format!("{visitor}.{issued}.{}", self.signature(visitor, issued))
    }

    fn signature(&self, visitor: &str, issued: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.inner.key.expose_secret().as_bytes())
            .expect("HMAC takes any key");
        mac.update(b"relaybot-web:");
        mac.update(visitor.as_bytes());
        mac.update(b".");
        mac.update(issued.to_string().as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// The visitor a token names, when its signature holds and it is not older than
    /// `CHAT_IDLE_TIMEOUT`.
    fn visitor_of(&self, token: &str) -> Option<String> {
        let (rest, signature) = token.rsplit_once('.')?;
        let (visitor, issued) = rest.rsplit_once('.')?;
        let issued: u64 = issued.parse().ok()?;
        let valid = visitor.starts_with("web-")
            && visitor.len() <= 64
            && visitor[4..].chars().all(|c| c.is_ascii_alphanumeric());
        let now = crate::handoff::now_ms() / 1000;
        let max_age = self.inner.chat.settings().chat.idle_timeout.as_secs();
        let fresh = fresh(issued, now, max_age);
        let expected = self.signature(visitor, issued);
        (valid
            && fresh
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                expected.as_bytes(),
                signature.as_bytes(),
            )))
        .then(|| visitor.to_owned())
    }

    /// Connects a widget: resumes the visitor `token` names (while their conversation is still
    /// held), or starts a new visitor. Frames for the widget go to `frames`.
    ///
    /// # Errors
    /// [`Refused`] at the visitor cap or while draining.
    fn connect(
        &self,
        token: Option<&str>,
        frames: mpsc::Sender<ServerFrame>,
    ) -> Result<mpsc::Sender<Input>, Refused> {
        let chat = &self.inner.chat;
        let resumed = token.and_then(|t| self.visitor_of(t));
        let mut visitors = self.lock();
        if let Some(visitor) = &resumed {
            if let Some(tx) = visitors.live.get(visitor).filter(|tx| !tx.is_closed()) {
                let tx = tx.clone();
                drop(visitors);
                let _ = tx.try_send(Input::Attach(frames, self.token(visitor)));
                return Ok(tx);
            }
        }
        if chat.draining().is_cancelled() {
            return Err(Refused::Draining);
        }
        visitors.live.retain(|_, tx| !tx.is_closed());
        if visitors.live.len() >= chat.settings().chat.max_conversations {
            return Err(Refused::Capacity);
        }
        // A token for a conversation no longer held starts over under the same visitor id.
        let visitor = resumed.unwrap_or_else(|| {
            let bytes: [u8; 12] = rand::random();
            format!("web-{}", hex(&bytes))
        });
        let (tx, rx) = mpsc::channel(64);
        visitors.live.insert(visitor.clone(), tx.clone());
        drop(visitors);
        let _ = tx.try_send(Input::Attach(frames, self.token(&visitor)));
        telemetry::chat_event("widget_started");
        let span = tracing::info_span!("web", visitor = %visitor);
        self.inner.tracker.spawn(tracing::Instrument::instrument(
            session::run(self.clone(), visitor, rx),
            span,
        ));
        Ok(tx)
    }

    /// Whether `conversation_sid` is a conversation a visitor was escalated into (its webhook
    /// events are the widget's, not the Conversations chat channel's).
    pub fn owns(&self, conversation_sid: &str) -> bool {
        self.lock().by_conversation.contains_key(conversation_sid)
    }

    /// Takes a (verified) webhook event of an escalated conversation.
    ///
    /// # Errors
    /// [`Refused::Capacity`] when the visitor's queue is full: the webhook answers 503 so
    /// Twilio delivers it again (a redelivered message is shown once).
    pub fn accept(&self, event: &ConversationEvent) -> Result<(), Refused> {
        let Some(conversation_sid) = event.conversation_sid.as_deref() else {
            return Ok(());
        };
        let find = |name: &str| crate::twilio::webhooks::find(&event.params, name);
        let name_of = |identity: &str| {
            find("Attributes")
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                .and_then(|a| {
                    a["friendlyName"]
                        .as_str()
                        .or(a["friendly_name"].as_str())
                        .or(a["full_name"].as_str())
                        .map(str::to_owned)
                })
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| identity.to_owned())
        };
        let twilio = match event.event_type.as_deref() {
            Some("onMessageAdded") => TwilioEvent::Message {
                sid: event.message_sid.clone().unwrap_or_default(),
                author: event.author.clone().unwrap_or_default(),
                body: event.body.clone().unwrap_or_default(),
            },
            Some("onParticipantAdded") => {
                let identity = find("Identity").unwrap_or_default().to_owned();
                TwilioEvent::Joined {
                    name: name_of(&identity),
                    identity,
                }
            }
            Some("onParticipantRemoved") => {
                let identity = find("Identity").unwrap_or_default().to_owned();
                TwilioEvent::Left {
                    name: name_of(&identity),
                    identity,
                }
            }
            Some("onConversationStateUpdated") if find("StateTo") == Some("closed") => {
                TwilioEvent::Closed
            }
            Some("onConversationRemoved") => TwilioEvent::Closed,
            other => {
                tracing::debug!(event_type = ?other, "a widget conversation event relaybot does not act on");
                return Ok(());
            }
        };
        let tx = {
            let visitors = self.lock();
            visitors
                .by_conversation
                .get(conversation_sid)
                .and_then(|visitor| visitors.live.get(visitor))
                .cloned()
        };
        match tx {
            Some(tx) => match tx.try_send(Input::Twilio(twilio)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        conversation_sid,
                        "the visitor's queue is full; asking Twilio to deliver again"
                    );
                    Err(Refused::Capacity)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::info!(
                        conversation_sid,
                        "an event for a widget visitor who just left"
                    );
                    Ok(())
                }
            },
            None => {
                tracing::info!(
                    conversation_sid,
                    "an event for a widget conversation whose visitor is gone"
                );
                Ok(())
            }
        }
    }

    /// Notes that `conversation_sid` is `visitor`'s escalated conversation.
    fn claim(&self, conversation_sid: &str, visitor: &str) {
        self.lock()
            .by_conversation
            .insert(conversation_sid.to_owned(), visitor.to_owned());
    }

    /// `conversation_sid` is no longer anyone's (its escalation failed).
    fn unclaim(&self, conversation_sid: &str) {
        self.lock().by_conversation.remove(conversation_sid);
    }

    /// The visitor's task is over: forget it (and its conversation).
    fn remove(&self, visitor: &str) {
        let mut visitors = self.lock();
        visitors.live.remove(visitor);
        visitors.by_conversation.retain(|_, v| v != visitor);
    }

    /// Where Twilio posts the escalated conversations' events: our `/conversations/webhook`
    /// under `PUBLIC_URL` (else the address we listen on).
    fn webhook_url(&self) -> String {
        let config = self.inner.chat.settings();
        let base = match &config.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => self
                .inner
                .local_base
                .get()
                .cloned()
                .unwrap_or_else(|| format!("http://{}:{}", config.host, config.port)),
        };
        format!("{base}{}", crate::chat::WEBHOOK_PATH)
    }

    /// Waits for the visitors' tasks (they end when the drain starts, after any turn in
    /// flight) until `deadline`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        crate::conversation::drain_sessions(
            &self.inner.tracker,
            self.inner.chat.stopping(),
            deadline,
            "widget chats",
        )
        .await;
    }
}

/// Whether a token issued at `issued` (Unix seconds) is still good at `now`: not older than
/// `max_age` seconds, and not from the future (a minute of clock skew allowed).
fn fresh(issued: u64, now: u64, max_age: u64) -> bool {
    issued <= now + 60 && now.saturating_sub(issued) <= max_age
}

/// Lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The widget's WebSocket: frames in from the socket go to the visitor's task, frames out come
/// from it. Runs until either side closes.
pub async fn serve_socket(
    state: WebState,
    mut socket: axum::extract::ws::WebSocket,
    token: Option<String>,
) {
    use axum::extract::ws::Message as WsMessage;
    use futures::{SinkExt, StreamExt};
    let (frames_tx, mut frames) = mpsc::channel::<ServerFrame>(256);
    let visitor = match state.connect(token.as_deref(), frames_tx) {
        Ok(visitor) => visitor,
        Err(refused) => {
            tracing::warn!(%refused, "widget connection refused");
            let frame = ServerFrame::Error {
                message: format!("The chat is not available right now ({refused})."),
            };
            if let Ok(text) = serde_json::to_string(&frame) {
                let _ = socket.send(WsMessage::Text(text.into())).await;
            }
            let _ = socket.close().await;
            return;
        }
    };
    let max = state.inner.chat.settings().limits.max_frame_bytes;
    loop {
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(WsMessage::Text(text))) if text.len() > max => {
                    tracing::warn!(bytes = text.len(), "skipping a widget frame over MAX_FRAME_BYTES");
                }
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(frame) => {
                        if visitor.send(Input::Frame(frame)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.classify_name(), "skipping a malformed widget frame");
                        let frame = ServerFrame::Error { message: "unreadable frame".into() };
                        if let Ok(text) = serde_json::to_string(&frame) {
                            if socket.send(WsMessage::Text(text.into())).await.is_err() {
                                break;
                            }
                        }
                    }
                },
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            frame = frames.recv() => match frame {
                Some(frame) => match serde_json::to_string(&frame) {
                    Ok(text) => {
                        if socket.send(WsMessage::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "not sending an unserialisable frame"),
                },
                // The visitor's task let this socket go (another one took over, or it ended).
                None => break,
            },
        }
    }
    let _ = socket.close().await;
}

/// The name of a JSON error's class, for logs that must not quote the visitor's text.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fresh;

    #[test]
    fn tokens_last_as_long_as_a_conversation_is_kept() {
        let now = 1_800_000_000;
        assert!(fresh(now, now, 1800));
        assert!(fresh(now - 1800, now, 1800));
        assert!(
            !fresh(now - 1801, now, 1800),
            "older than CHAT_IDLE_TIMEOUT"
        );
        assert!(fresh(now + 30, now, 1800), "a little clock skew");
        assert!(!fresh(now + 3600, now, 1800), "from the future");
    }
}
