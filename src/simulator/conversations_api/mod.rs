//! A stand-in for Twilio's Conversations API and Flex Interactions API, with state, for the
//! tests and for `relaybot chat`; and [`ChatCustomer`], which plays Twilio Conversations
//! delivering post-event webhooks to our server.
//!
//! [`ChatCustomer`]: crate::simulator::chat_customer::ChatCustomer
//!
//! [`FakeConversationsApi`] answers exactly what [`crate::twilio::conversations`] and
//! [`crate::twilio::flex`] send (form-encoded bodies, HTTP Basic auth) with what they parse,
//! in Twilio's shapes (`handoff.md` §3, `channels-and-bots.md` §3):
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /v1/Conversations` (`FriendlyName`, `Attributes`, `State`) | 201, the new conversation (`CH…`, `friendly_name`, …) |
//! | `POST /v1/Conversations/{CH}/Participants` (`Identity`, `Attributes`) | 201, the participant (`MB…`); the same identity again → 409 code 50433 |
//! | `GET /v1/Conversations/{CH}/Participants` | 200, `{"participants": […], "meta": {…}}` |
//! | `POST /v1/Conversations/{CH}/Messages` (`Author`, `Body`, `Attributes`) | 201, the message (`IM…`, `index`, …) |
//! | `GET /v1/Conversations/{CH}` | 200, the conversation (`attributes` as a JSON string, `state`) |
//! | `POST /v1/Conversations/{CH}` (`Attributes`, `State`) | 200, the updated conversation |
//! | `POST /v1/Conversations/{CH}/Webhooks` (`Target`, `Configuration.Url`, `Configuration.Method`, `Configuration.Filters` repeated) | 201, the webhook (`WH…`); a sixth → 400 code 50361 |
//! | `GET /v1/Conversations/{CH}/Webhooks` | 200, `{"webhooks": […], "meta": {…}}` |
//! | `DELETE /v1/Conversations/{CH}/Webhooks/{WH}` | 204; unknown → 404 code 50360 |
//! | `POST /v1/Interactions` (`Channel`, `Routing` JSON) | 201, the interaction (`KD…`) |
//!
//! A conversation comes into being the first time it is named (state `active`, attributes
//! `{}`), unless [`FakeConversationsApi::remove_conversation`] took it away (then 404, code
//! 20404). Once closed it refuses new messages, participants, webhooks and updates with 400,
//! code 50377, as Twilio does. Errors have Twilio's body `{"code", "message", "more_info",
//! "status"}`.
//!
//! Twilio's side acts too (`twilio_side.rs`): a Flex agent joins
//! ([`FakeConversationsApi::agent_joins`]), writes ([`FakeConversationsApi::agent_says`]), leaves
//! ([`FakeConversationsApi::agent_leaves`]), or the conversation is closed
//! ([`FakeConversationsApi::close`]); each changes the state and delivers the post-event webhook
//! (`onParticipantAdded`, `onMessageAdded`, `onParticipantRemoved`,
//! `onConversationStateUpdated`) to every conversation-scoped webhook that subscribes to it,
//! form-encoded and signed ([`FakeConversationsApi::sign_webhooks_with`]). These are not
//! requests: they are neither recorded nor announced as events.
//!
//! Everything is recorded ([`FakeConversationsApi::requests`]) and announced as an
//! [`ApiEvent`] ([`FakeConversationsApi::subscribe`], [`FakeConversationsApi::wait_for`]) so
//! tests wait on what happened instead of sleeping. [`FakeConversationsApi::fail_next`] makes
//! chosen requests fail (a 503 or 429 with a Twilio error body) to exercise retries and
//! fallbacks.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::new_sid;

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `POST`, `DELETE`.
    pub method: Method,
    /// The path, as sent (`/v1/Conversations/CH…/Messages`).
    pub path: String,
    /// The `Authorization` header, if any (`Basic …`).
    pub authorization: Option<String>,
    /// Every request header, lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// The form fields, in order.
    pub form: Vec<(String, String)>,
    /// The HTTP status the fake answered.
    pub status: u16,
}

impl ApiRequest {
    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user and password of HTTP Basic auth.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    }

    /// A request header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A message posted through the fake.
#[derive(Debug, Clone, PartialEq)]
pub struct PostedMessage {
    /// `IM…`.
    pub sid: String,
    /// Its index in the conversation (0, 1, …).
    pub index: u64,
    /// `Author` (Twilio's default `system` when none was sent).
    pub author: String,
    /// `Body`.
    pub body: String,
    /// `Attributes`, when sent.
    pub attributes: Option<String>,
}

/// A conversation-scoped webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeWebhook {
    /// `WH…`.
    pub sid: String,
    /// `webhook`, `trigger` or `studio`.
    pub target: String,
    /// `configuration.url`.
    pub url: String,
    /// `configuration.method`.
    pub method: String,
    /// `configuration.filters`.
    pub filters: Vec<String>,
}

/// A participant of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeParticipant {
    /// `MB…`.
    pub sid: String,
    /// The chat identity.
    pub identity: String,
    /// The attributes: a JSON document, as a string (`"{}"` when none were sent).
    pub attributes: String,
}

/// A conversation as the fake holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConversation {
    /// `CH…`.
    pub sid: String,
    /// `FriendlyName` (empty when none was given; `null` in the JSON).
    pub friendly_name: String,
    /// The attributes: a JSON document, as a string (`"{}"` at first).
    pub attributes: String,
    /// `active`, `inactive` or `closed`.
    pub state: String,
    /// Its participants, in the order they joined.
    pub participants: Vec<FakeParticipant>,
    /// Its conversation-scoped webhooks.
    pub webhooks: Vec<FakeWebhook>,
    /// Its messages in order: posted through the API, or written by an agent
    /// ([`FakeConversationsApi::agent_says`]).
    pub messages: Vec<PostedMessage>,
}

impl FakeConversation {
    fn new(sid: &str) -> Self {
        FakeConversation {
            sid: sid.to_owned(),
            friendly_name: String::new(),
            attributes: "{}".into(),
            state: "active".into(),
            participants: Vec::new(),
            webhooks: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// The attributes parsed (`Value::Null` when they are not JSON).
    pub fn attributes_json(&self) -> Value {
        serde_json::from_str(&self.attributes).unwrap_or(Value::Null)
    }

    /// Whether the attributes say `handedOff: true`.
    pub fn handed_off(&self) -> bool {
        self.attributes_json()["handedOff"] == Value::Bool(true)
    }

    /// Whether the conversation is closed.
    pub fn is_closed(&self) -> bool {
        self.state == "closed"
    }

    /// The participant with chat identity `identity`.
    pub fn participant(&self, identity: &str) -> Option<&FakeParticipant> {
        self.participants.iter().find(|p| p.identity == identity)
    }
}

/// An interaction created through the fake.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// `KD…`.
    pub sid: String,
    /// The `Channel` form field, parsed.
    pub channel: Value,
    /// The `Routing` form field, parsed.
    pub routing: Value,
}

impl Interaction {
    /// `Channel.type` (`web`, `sms`, `whatsapp`, `chat`, …).
    pub fn channel_type(&self) -> Option<&str> {
        self.channel["type"].as_str()
    }

    /// `Channel.properties.media_channel_sid`: the conversation handed over.
    pub fn media_channel_sid(&self) -> Option<&str> {
        self.channel["properties"]["media_channel_sid"].as_str()
    }

    /// `Routing.properties.workspace_sid`.
    pub fn workspace_sid(&self) -> Option<&str> {
        self.routing["properties"]["workspace_sid"].as_str()
    }

    /// `Routing.properties.workflow_sid`.
    pub fn workflow_sid(&self) -> Option<&str> {
        self.routing["properties"]["workflow_sid"].as_str()
    }

    /// `Routing.properties.task_channel_unique_name`.
    pub fn task_channel(&self) -> Option<&str> {
        self.routing["properties"]["task_channel_unique_name"].as_str()
    }

    /// `Routing.properties.attributes`: what the task will carry.
    pub fn task_attributes(&self) -> &Value {
        &self.routing["properties"]["attributes"]
    }
}

/// Something the fake was asked to do (and did), or refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiEvent {
    /// `POST /v1/Conversations` created a conversation.
    ConversationCreated {
        /// The new `CH…`.
        conversation_sid: String,
        /// `FriendlyName` (empty when none was sent).
        friendly_name: String,
        /// `Attributes` (`"{}"` when none were sent).
        attributes: String,
    },
    /// `POST …/Participants` added a participant.
    ParticipantAdded {
        /// `CH…`.
        conversation_sid: String,
        /// `Identity`.
        identity: String,
        /// `Attributes` (`"{}"` when none were sent).
        attributes: String,
    },
    /// `POST …/Webhooks` created a conversation-scoped webhook.
    WebhookCreated {
        /// `CH…`.
        conversation_sid: String,
        /// The new `WH…`.
        webhook_sid: String,
        /// `Configuration.Url`.
        url: String,
        /// `Configuration.Filters`, in the order sent.
        filters: Vec<String>,
    },
    /// `POST …/Messages` succeeded.
    MessagePosted {
        /// `CH…`.
        conversation_sid: String,
        /// `IM…`.
        sid: String,
        /// Its index.
        index: u64,
        /// `Author`.
        author: String,
        /// `Body`.
        body: String,
    },
    /// `POST /v1/Conversations/{CH}` succeeded; the conversation as it now is.
    ConversationUpdated {
        /// `CH…`.
        conversation_sid: String,
        /// The attributes now (a JSON string).
        attributes: String,
        /// The state now.
        state: String,
        /// Whether this request set `Attributes`.
        attributes_changed: bool,
        /// Whether this request set `State`.
        state_changed: bool,
    },
    /// `DELETE …/Webhooks/{WH}` removed a webhook.
    WebhookDeleted {
        /// `CH…`.
        conversation_sid: String,
        /// `WH…`.
        webhook_sid: String,
    },
    /// `POST /v1/Interactions` succeeded.
    InteractionCreated(Interaction),
    /// A request was answered with an error (an injected failure, a closed conversation, …).
    Refused {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Twilio's error code.
        code: u32,
    },
}

impl ApiEvent {
    /// The conversation the event is about, if any (an interaction names its
    /// `media_channel_sid`).
    pub fn conversation_sid(&self) -> Option<&str> {
        match self {
            ApiEvent::ConversationCreated {
                conversation_sid, ..
            }
            | ApiEvent::ParticipantAdded {
                conversation_sid, ..
            }
            | ApiEvent::WebhookCreated {
                conversation_sid, ..
            }
            | ApiEvent::MessagePosted {
                conversation_sid, ..
            }
            | ApiEvent::ConversationUpdated {
                conversation_sid, ..
            }
            | ApiEvent::WebhookDeleted {
                conversation_sid, ..
            } => Some(conversation_sid),
            ApiEvent::InteractionCreated(interaction) => interaction.media_channel_sid(),
            ApiEvent::Refused { .. } => None,
        }
    }
}

/// A failure waiting to be served.
#[derive(Debug, Clone)]
struct Failure {
    method: Method,
    path: String,
    status: u16,
    code: u32,
    times: u32,
}

/// Whether `pattern` matches the end of `path`, segment by segment; `*` stands for any one
/// segment. `/Messages` matches every conversation's messages, `/v1/Conversations/*` only the
/// conversation resources, `/v1/Interactions` the interactions.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if pattern.is_empty() || pattern.len() > path.len() {
        return pattern.is_empty();
    }
    path[path.len() - pattern.len()..]
        .iter()
        .zip(&pattern)
        .all(|(segment, want)| *want == "*" || segment == want)
}

#[derive(Default)]
struct Inner {
    requests: Vec<ApiRequest>,
    conversations: BTreeMap<String, FakeConversation>,
    removed: HashSet<String>,
    interactions: Vec<Interaction>,
    failures: Vec<Failure>,
    events: Vec<ApiEvent>,
    credentials: Option<String>,
    /// The auth token Twilio's side signs its deliveries with.
    webhook_token: Option<String>,
    /// Where deliveries go instead of the configured URL's origin.
    webhook_server_base: Option<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Every event, for subscribers.
    events: broadcast::Sender<ApiEvent>,
    /// How many events there have been, for [`FakeConversationsApi::wait_for`].
    count: watch::Sender<usize>,
    base_url: String,
    account_sid: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, inner: &mut Inner, event: ApiEvent) {
        inner.events.push(event.clone());
        let _ = self.events.send(event);
        self.count.send_modify(|n| *n += 1);
    }
}

/// Twilio's Conversations and Flex Interactions APIs on a loopback port, with state.
pub struct FakeConversationsApi {
    /// `http://127.0.0.1:port`: give it to the server as both `TWILIO_CONVERSATIONS_BASE` and
    /// `TWILIO_FLEX_BASE`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConversationsApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FakeConversationsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConversationsApi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeConversationsApi {
    /// Starts on a free loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(0).await
    }

    /// Starts on loopback port `port` (0: any free one), so a server started elsewhere can be
    /// pointed at it.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start_on(port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let (events, _) = broadcast::channel(1024);
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            events,
            count,
            base_url: base_url.clone(),
            account_sid: new_sid("AC"),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeConversationsApi {
            base_url,
            shared,
            task,
        })
    }

    /// Seeds conversation `conversation_sid` (created if new) with one conversation-scoped
    /// webhook posting `onMessageAdded` to `webhook_url`, as a Flex Conversations address with
    /// a webhook integration would; returns the webhook's `WH…` SID.
    pub fn add_conversation(&self, conversation_sid: &str, webhook_url: &str) -> String {
        let sid = new_sid("WH");
        let mut inner = self.shared.lock();
        inner.removed.remove(conversation_sid);
        inner
            .conversations
            .entry(conversation_sid.to_owned())
            .or_insert_with(|| FakeConversation::new(conversation_sid))
            .webhooks
            .push(FakeWebhook {
                sid: sid.clone(),
                target: "webhook".into(),
                url: webhook_url.to_owned(),
                method: "POST".into(),
                filters: vec!["onMessageAdded".into()],
            });
        sid
    }

    /// Sets a conversation's attributes and/or state from Twilio's side (an agent, a timer),
    /// without a request or an event.
    pub fn set_conversation(
        &self,
        conversation_sid: &str,
        attributes: Option<&str>,
        state: Option<&str>,
    ) {
        let mut inner = self.shared.lock();
        let conversation = inner
            .conversations
            .entry(conversation_sid.to_owned())
            .or_insert_with(|| FakeConversation::new(conversation_sid));
        if let Some(attributes) = attributes {
            conversation.attributes = attributes.to_owned();
        }
        if let Some(state) = state {
            conversation.state = state.to_owned();
        }
    }

    /// Deletes a conversation: from now on every request naming it answers 404 (code 20404).
    pub fn remove_conversation(&self, conversation_sid: &str) {
        let mut inner = self.shared.lock();
        inner.conversations.remove(conversation_sid);
        inner.removed.insert(conversation_sid.to_owned());
    }

    /// Refuses requests whose Basic auth is not `user`/`password` with 401 (code 20003), as
    /// Twilio does. Off by default (everything is accepted and recorded).
    pub fn require_auth(&self, user: &str, password: &str) {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.shared.lock().credentials = Some(format!("Basic {encoded}"));
    }

    /// Answers the next `times` requests with `method` whose path ends with `path` (see
    /// [`path_matches`]: `/Messages`, `/v1/Conversations/*`, `/Webhooks/*`,
    /// `/v1/Interactions`) with `status` and a Twilio error body; the code is Twilio's usual one
    /// for the status (429 → 20429, 503 → 20503, 500 → 20500, 404 → 20404, 401 → 20003,
    /// else 20001). Failures are served in the order they were added.
    pub fn fail_next(&self, method: Method, path: &str, status: u16, times: u32) {
        self.fail_next_with_code(method, path, status, default_code(status), times);
    }

    /// [`FakeConversationsApi::fail_next`] with Twilio error code `code` (50377 to pretend the
    /// conversation closed, 50391 for a conflicting modification, …).
    pub fn fail_next_with_code(
        &self,
        method: Method,
        path: &str,
        status: u16,
        code: u32,
        times: u32,
    ) {
        if times == 0 {
            return;
        }
        self.shared.lock().failures.push(Failure {
            method,
            path: path.to_owned(),
            status,
            code,
            times,
        });
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.shared.lock().requests.clone()
    }

    /// The messages of a conversation in order: posted through the API, or written by an agent
    /// ([`FakeConversationsApi::agent_says`]).
    pub fn messages(&self, conversation_sid: &str) -> Vec<PostedMessage> {
        self.shared
            .lock()
            .conversations
            .get(conversation_sid)
            .map(|c| c.messages.clone())
            .unwrap_or_default()
    }

    /// A conversation as it now is.
    pub fn conversation(&self, conversation_sid: &str) -> Option<FakeConversation> {
        self.shared
            .lock()
            .conversations
            .get(conversation_sid)
            .cloned()
    }

    /// The interactions created, in order.
    pub fn interactions(&self) -> Vec<Interaction> {
        self.shared.lock().interactions.clone()
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<ApiEvent> {
        self.shared.lock().events.clone()
    }

    /// The events from now on (subscribe before acting, so none is missed).
    pub fn subscribe(&self) -> broadcast::Receiver<ApiEvent> {
        self.shared.events.subscribe()
    }

    /// The first event, past or future, for which `predicate` holds; `None` when none came
    /// within `timeout`. A predicate that counts (`FnMut`) can wait for the n-th one.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&ApiEvent) -> bool,
        timeout: Duration,
    ) -> Option<ApiEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.count.subscribe();
        let mut seen = 0;
        loop {
            changes.borrow_and_update();
            {
                let inner = self.shared.lock();
                if let Some(event) = inner.events[seen..].iter().find(|e| predicate(e)) {
                    return Some(event.clone());
                }
                seen = inner.events.len();
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The `n`-th (from 1) message posted to `conversation_sid` through the API, waiting up to
    /// `timeout` (an agent's messages, which are not requests, are not counted).
    pub async fn wait_for_message(
        &self,
        conversation_sid: &str,
        n: usize,
        timeout: Duration,
    ) -> Option<PostedMessage> {
        let mut count = 0;
        let event = self
            .wait_for(
                |e| {
                    if matches!(e, ApiEvent::MessagePosted { conversation_sid: ch, .. } if ch == conversation_sid)
                    {
                        count += 1;
                    }
                    count >= n
                },
                timeout,
            )
            .await?;
        let ApiEvent::MessagePosted { sid, .. } = event else {
            return None;
        };
        self.messages(conversation_sid)
            .into_iter()
            .find(|m| m.sid == sid)
    }

    /// The participants of a conversation, in the order they joined.
    pub fn participants(&self, conversation_sid: &str) -> Vec<FakeParticipant> {
        self.shared
            .lock()
            .conversations
            .get(conversation_sid)
            .map(|c| c.participants.clone())
            .unwrap_or_default()
    }
}

mod routes;
mod twilio_side;

use routes::*;

#[cfg(test)]
mod tests;
