//! A stand-in for Twilio's Conversations API and Flex Interactions API, with state, for the
//! tests and for `relaybot chat`; and [`ChatCustomer`], which plays Twilio Conversations
//! delivering post-event webhooks to our server.
//!
//! [`FakeConversationsApi`] answers exactly what [`crate::twilio::conversations`] and
//! [`crate::twilio::flex`] send (form-encoded bodies, HTTP Basic auth) with what they parse,
//! in Twilio's shapes (`handoff.md` §3, `channels-and-bots.md` §3):
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /v1/Conversations/{CH}/Messages` (`Author`, `Body`) | 201, the message (`IM…`, `index`, …) |
//! | `GET /v1/Conversations/{CH}` | 200, the conversation (`attributes` as a JSON string, `state`) |
//! | `POST /v1/Conversations/{CH}` (`Attributes`, `State`) | 200, the updated conversation |
//! | `GET /v1/Conversations/{CH}/Webhooks` | 200, `{"webhooks": […], "meta": {…}}` |
//! | `DELETE /v1/Conversations/{CH}/Webhooks/{WH}` | 204; unknown → 404 code 50360 |
//! | `POST /v1/Interactions` (`Channel`, `Routing` JSON) | 201, the interaction (`KD…`) |
//!
//! A conversation comes into being the first time it is named (state `active`, attributes
//! `{}`), unless [`FakeConversationsApi::remove_conversation`] took it away (then 404, code
//! 20404). Once closed it refuses new messages and updates with 400, code 50377, as Twilio does.
//! Errors have Twilio's body `{"code", "message", "more_info", "status"}`.
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

/// A conversation as the fake holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConversation {
    /// `CH…`.
    pub sid: String,
    /// The attributes: a JSON document, as a string (`"{}"` at first).
    pub attributes: String,
    /// `active`, `inactive` or `closed`.
    pub state: String,
    /// Its conversation-scoped webhooks.
    pub webhooks: Vec<FakeWebhook>,
    /// The messages posted through the API, in order.
    pub messages: Vec<PostedMessage>,
}

impl FakeConversation {
    fn new(sid: &str) -> Self {
        FakeConversation {
            sid: sid.to_owned(),
            attributes: "{}".into(),
            state: "active".into(),
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
            ApiEvent::MessagePosted {
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

    /// The messages posted to a conversation, in order.
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

    /// The `n`-th (from 1) message posted to `conversation_sid`, waiting up to `timeout`.
    pub async fn wait_for_message(
        &self,
        conversation_sid: &str,
        n: usize,
        timeout: Duration,
    ) -> Option<PostedMessage> {
        let mut count = 0;
        self.wait_for(
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
        self.messages(conversation_sid)
            .get(n.checked_sub(1)?)
            .cloned()
    }
}

mod routes;

use routes::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::WEBHOOK_PATH;
    use crate::simulator::chat_customer::{iso8601, ChatCustomer};
    use crate::twilio::signature;
    use crate::twilio::{
        conversations::ConversationsClient,
        flex::{
            ChannelProperties, InteractionChannel, InteractionRouting, InteractionsClient,
            RoutingProperties,
        },
        rest::{Rest, RestError},
    };
    use secrecy::SecretString;
    use std::time::UNIX_EPOCH;

    fn rest() -> Rest {
        Rest::new(
            "AC123",
            SecretString::from("token".to_owned()),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn paths_match_by_trailing_segments() {
        assert!(path_matches("/Messages", "/v1/Conversations/CH1/Messages"));
        assert!(path_matches("/v1/Conversations/*", "/v1/Conversations/CH1"));
        assert!(!path_matches(
            "/v1/Conversations/*",
            "/v1/Conversations/CH1/Messages"
        ));
        assert!(path_matches(
            "/Webhooks/*",
            "/v1/Conversations/CH1/Webhooks/WH1"
        ));
        assert!(path_matches("/v1/Interactions", "/v1/Interactions"));
        assert!(!path_matches("/Messages/x", "/Messages"));
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        let t = UNIX_EPOCH + Duration::from_millis(1_772_446_500_042);
        assert_eq!(iso8601(t, false), "2026-03-02T10:15:00Z");
        assert_eq!(iso8601(t, true), "2026-03-02T10:15:00.042Z");
        assert_eq!(iso8601(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
    }

    /// The real clients against the fake: every call they make is answered in a shape they
    /// read, and the state and events follow.
    #[tokio::test]
    async fn the_clients_work_against_the_fake() {
        let fake = FakeConversationsApi::start().await.unwrap();
        let wh = fake.add_conversation("CH1", "https://bot.example/conversations/webhook");
        let client = ConversationsClient::new(&fake.base_url, rest());
        let mut events = fake.subscribe();

        let sid = client
            .post_message("CH1", "relaybot", "Hello")
            .await
            .unwrap();
        assert!(sid.starts_with("IM"));
        let hooks = client.webhooks("CH1").await.unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].sid, wh);
        assert_eq!(
            hooks[0].configuration.url.as_deref(),
            Some("https://bot.example/conversations/webhook")
        );
        client.delete_webhook("CH1", &wh).await.unwrap();
        client
            .delete_webhook("CH1", &wh)
            .await
            .expect("a 404 counts as deleted");
        client
            .update("CH1", Some(r#"{"handedOff":true}"#), None)
            .await
            .unwrap();
        let conversation = client.fetch("CH1").await.unwrap();
        assert_eq!(
            conversation.attributes.as_deref(),
            Some(r#"{"handedOff":true}"#)
        );
        assert_eq!(conversation.state.as_deref(), Some("active"));

        let interactions = InteractionsClient::new(&fake.base_url, rest());
        let kd = interactions
            .create(
                &InteractionChannel {
                    kind: "web".into(),
                    initiated_by: "customer".into(),
                    properties: ChannelProperties {
                        media_channel_sid: "CH1".into(),
                    },
                },
                &InteractionRouting {
                    properties: RoutingProperties {
                        workspace_sid: "WS1".into(),
                        workflow_sid: Some("WW1".into()),
                        task_channel_unique_name: "chat".into(),
                        attributes: json!({"from": "FX1"}),
                    },
                },
            )
            .await
            .unwrap();
        assert!(kd.starts_with("KD"));
        assert_eq!(fake.interactions()[0].channel_type(), Some("web"));
        assert_eq!(fake.interactions()[0].task_attributes()["from"], "FX1");

        client.update("CH1", None, Some("closed")).await.unwrap();
        let refused = client.post_message("CH1", "relaybot", "Still there?").await;
        assert!(
            matches!(
                refused,
                Err(RestError::Status {
                    status: 400,
                    code: Some(50377),
                    ..
                })
            ),
            "{refused:?}"
        );

        let mut kinds = Vec::new();
        while let Ok(event) = events.try_recv() {
            kinds.push(match event {
                ApiEvent::MessagePosted { .. } => "message",
                ApiEvent::WebhookDeleted { .. } => "webhook deleted",
                ApiEvent::ConversationUpdated { .. } => "updated",
                ApiEvent::InteractionCreated(_) => "interaction",
                ApiEvent::Refused { .. } => "refused",
            });
        }
        assert_eq!(
            kinds,
            [
                "message",
                "webhook deleted",
                "refused",
                "updated",
                "interaction",
                "updated",
                "refused"
            ]
        );
        let conversation = fake.conversation("CH1").unwrap();
        assert!(conversation.is_closed() && conversation.handed_off());
        assert!(conversation.webhooks.is_empty());
        assert_eq!(fake.messages("CH1").len(), 1);
        let requests = fake.requests();
        assert_eq!(requests.len(), 9);
        assert_eq!(
            requests[0].basic_auth(),
            Some(("AC123".into(), "token".into()))
        );
        assert_eq!(requests[0].field("Author"), Some("relaybot"));
    }

    #[tokio::test]
    async fn injected_failures_are_served_then_cleared() {
        let fake = FakeConversationsApi::start().await.unwrap();
        fake.fail_next(Method::POST, "/Messages", 503, 2);
        let client = ConversationsClient::new(&fake.base_url, rest());
        let sid = Rest::with_retries("test", 3, || client.post_message("CH9", "relaybot", "Hi"))
            .await
            .unwrap();
        assert_eq!(fake.messages("CH9")[0].sid, sid);
        let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [503, 503, 201]);
        let posted = fake
            .wait_for_message("CH9", 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(posted.body, "Hi");
        assert!(fake
            .wait_for_message("CH9", 2, Duration::from_millis(50))
            .await
            .is_none());

        fake.remove_conversation("CH9");
        assert!(matches!(
            client.fetch("CH9").await,
            Err(RestError::Status {
                status: 404,
                code: Some(20404),
                ..
            })
        ));
        fake.require_auth("AC123", "other");
        assert!(matches!(
            client.fetch("CH2").await,
            Err(RestError::Status {
                status: 401,
                code: Some(20003),
                ..
            })
        ));
    }

    /// The customer's deliveries: signed over the signing base, fields as Twilio sends them,
    /// redeliveries with the same MessageSid and a RetryCount.
    #[tokio::test]
    async fn the_customer_signs_and_redelivers() {
        use axum::routing::post;
        /// The signature header and the form of each delivery.
        type Deliveries = Arc<Mutex<Vec<(Option<String>, Vec<(String, String)>)>>>;
        let seen: Deliveries = Arc::default();
        let record = seen.clone();
        let app = Router::new().route(
            WEBHOOK_PATH,
            post(move |headers: HeaderMap, body: Bytes| {
                let record = record.clone();
                async move {
                    let sig = headers
                        .get(signature::HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let form = serde_urlencoded::from_bytes(&body).unwrap();
                    record.lock().unwrap().push((sig, form));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut customer = ChatCustomer::new(
            &base,
            "https://pub.example",
            Some("secret".into()),
            "CH1",
            "FXabc",
            "WH1",
        );
        assert_eq!(customer.conversation_added().await.unwrap(), StatusCode::OK);
        let (status, sid) = customer.send("Hello").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        customer.send_media_only().await.unwrap();
        customer.redeliver(&sid).await.unwrap();
        assert!(customer.redeliver("IMnope").await.is_err());
        server.abort();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        for (sig, form) in &seen {
            assert_eq!(
                sig.as_deref(),
                Some(
                    signature::sign("secret", "https://pub.example/conversations/webhook", form)
                        .as_str()
                )
            );
        }
        let get = |i: usize, name: &str| {
            seen[i]
                .1
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(0, "EventType").as_deref(), Some("onConversationAdded"));
        assert_eq!(get(0, "WebhookSid"), None);
        assert_eq!(get(1, "EventType").as_deref(), Some("onMessageAdded"));
        assert_eq!(get(1, "Index").as_deref(), Some("0"));
        assert_eq!(get(1, "WebhookSid").as_deref(), Some("WH1"));
        assert_eq!(get(1, "ClientIdentity").as_deref(), Some("FXabc"));
        assert_eq!(get(1, "RetryCount"), None);
        assert_eq!(get(2, "Index").as_deref(), Some("1"));
        assert_eq!(get(2, "Body").as_deref(), Some(""));
        assert!(get(2, "Media").unwrap().contains("image/jpeg"));
        assert_eq!(get(3, "MessageSid"), Some(sid));
        assert_eq!(get(3, "RetryCount").as_deref(), Some("1"));
    }
}
