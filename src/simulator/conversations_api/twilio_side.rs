//! Twilio's side acting on a conversation (a Flex agent joining, writing, leaving; the
//! conversation closing) and delivering the post-event webhooks that follow to the
//! conversation-scoped webhooks subscribed to them.
//!
//! Each delivery is what Twilio sends (`handoff.md` §3.1, `channels-and-bots.md` §3.5): a
//! form-encoded `POST` (a `GET` with the fields in the query when the webhook's method is
//! `GET`) to the webhook's `Configuration.Url`, with `WebhookSid`, signed in
//! `X-Twilio-Signature` over exactly that URL with the token given to
//! [`FakeConversationsApi::sign_webhooks_with`]. Flat form names (`Identity`, `StateFrom`, …) are
//! our reading of Twilio's event schemas, like the rest of the fake.

use super::*;
use crate::simulator::chat_customer::iso8601;
use crate::twilio::signature;

use routes::{CHAT_SERVICE_SID, MESSAGING_SERVICE_SID, PARTICIPANT_ROLE_SID};

/// Twilio's timeout on a webhook delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One delivery to make: where, signed over what, and the form.
struct Delivery {
    url: String,
    method: String,
    form: Vec<(String, String)>,
}

impl FakeConversationsApi {
    /// Signs every webhook delivery from now on with `auth_token` (`X-Twilio-Signature`);
    /// deliveries are unsigned until this is called.
    pub fn sign_webhooks_with(&self, auth_token: &str) {
        self.shared.lock().webhook_token = Some(auth_token.to_owned());
    }

    /// Sends deliveries to `server_base` (`http://127.0.0.1:port`) instead of the scheme, host
    /// and port of each webhook's configured URL, keeping its path and query; the signature is
    /// still computed over the configured URL. For a server that registered its public URL
    /// (`PUBLIC_URL`) that does not lead to it. Off by default: deliveries go to the configured
    /// URL itself.
    pub fn deliver_webhooks_to(&self, server_base: &str) {
        self.shared.lock().webhook_server_base = Some(server_base.trim_end_matches('/').to_owned());
    }

    /// A Flex agent joins `conversation_sid` as chat participant `identity` with attributes
    /// `{"friendlyName": friendly_name}`, and `onParticipantAdded` is delivered (fields
    /// `AccountSid`, `EventType`, `ConversationSid`, `ParticipantSid`, `Identity`, `RoleSid`,
    /// `Attributes`, `DateCreated`, `Source=API`, `ChatServiceSid`, `WebhookSid`).
    ///
    /// Returns the HTTP status of each delivery, in webhook order (0: no answer within 5 s or
    /// no connection); empty when no webhook subscribes, or nothing happened: the conversation
    /// is closed, unknown, or `identity` is already a participant.
    pub async fn agent_joins(
        &self,
        conversation_sid: &str,
        identity: &str,
        friendly_name: &str,
    ) -> Vec<u16> {
        let deliveries = {
            let mut inner = self.shared.lock();
            let Some(conversation) = inner.conversations.get_mut(conversation_sid) else {
                return Vec::new();
            };
            if conversation.is_closed() || conversation.participant(identity).is_some() {
                return Vec::new();
            }
            let participant = FakeParticipant {
                sid: new_sid("MB"),
                identity: identity.to_owned(),
                attributes: json!({ "friendlyName": friendly_name }).to_string(),
            };
            let fields = participant_fields(&participant);
            conversation.participants.push(participant);
            self.deliveries(&inner, conversation_sid, "onParticipantAdded", fields)
        };
        self.deliver(deliveries).await
    }

    /// Participant `identity` writes `body` in `conversation_sid` (an agent in Flex: through
    /// the SDK): the message is recorded with `author` = `identity`, and `onMessageAdded` is
    /// delivered (fields `AccountSid`, `EventType`, `ConversationSid`, `MessageSid`, `Index`,
    /// `Body`, `Author`, `ParticipantSid` (when `identity` is a participant), `Attributes={}`,
    /// `DateCreated`, `Source=SDK`, `ClientIdentity`, `MessagingServiceSid`, `ChatServiceSid`,
    /// `WebhookSid`).
    ///
    /// Returns the HTTP status of each delivery (see [`FakeConversationsApi::agent_joins`]);
    /// empty, and nothing recorded, when the conversation is closed or unknown.
    pub async fn agent_says(&self, conversation_sid: &str, identity: &str, body: &str) -> Vec<u16> {
        let deliveries = {
            let mut inner = self.shared.lock();
            let Some(conversation) = inner.conversations.get_mut(conversation_sid) else {
                return Vec::new();
            };
            if conversation.is_closed() {
                return Vec::new();
            }
            let message = PostedMessage {
                sid: new_sid("IM"),
                index: conversation.messages.len() as u64,
                author: identity.to_owned(),
                body: body.to_owned(),
                attributes: None,
            };
            let mut fields = pairs(&[
                ("MessageSid", &message.sid),
                ("Index", &message.index.to_string()),
                ("Body", body),
                ("Author", identity),
            ]);
            if let Some(participant) = conversation.participant(identity) {
                fields.push(("ParticipantSid".into(), participant.sid.clone()));
            }
            fields.extend(pairs(&[
                ("Attributes", "{}"),
                ("DateCreated", &iso8601(SystemTime::now(), true)),
                ("Source", "SDK"),
                ("ClientIdentity", identity),
                ("MessagingServiceSid", MESSAGING_SERVICE_SID),
                ("ChatServiceSid", CHAT_SERVICE_SID),
            ]));
            conversation.messages.push(message);
            self.deliveries(&inner, conversation_sid, "onMessageAdded", fields)
        };
        self.deliver(deliveries).await
    }

    /// Participant `identity` leaves `conversation_sid` (the agent ends the task in Flex) and
    /// `onParticipantRemoved` is delivered (the fields of `onParticipantAdded` plus
    /// `DateUpdated`).
    ///
    /// Returns the HTTP status of each delivery (see [`FakeConversationsApi::agent_joins`]);
    /// empty, and nothing changed, when `identity` is not a participant.
    pub async fn agent_leaves(&self, conversation_sid: &str, identity: &str) -> Vec<u16> {
        let deliveries = {
            let mut inner = self.shared.lock();
            let Some(conversation) = inner.conversations.get_mut(conversation_sid) else {
                return Vec::new();
            };
            let Some(i) = conversation
                .participants
                .iter()
                .position(|p| p.identity == identity)
            else {
                return Vec::new();
            };
            let participant = conversation.participants.remove(i);
            let mut fields = participant_fields(&participant);
            fields.push(("DateUpdated".into(), iso8601(SystemTime::now(), true)));
            self.deliveries(&inner, conversation_sid, "onParticipantRemoved", fields)
        };
        self.deliver(deliveries).await
    }

    /// `conversation_sid` is closed from Twilio's side (the agent wraps up in Flex) and
    /// `onConversationStateUpdated` is delivered (fields `AccountSid`, `EventType`,
    /// `ConversationSid`, `StateFrom` (the state it had), `StateTo=closed`, `Reason=API`,
    /// `StateUpdated`, `Source=API`, `MessagingServiceSid`, `ChatServiceSid`, `WebhookSid`).
    ///
    /// Returns the HTTP status of each delivery (see [`FakeConversationsApi::agent_joins`]);
    /// empty, and nothing changed, when it is already closed or unknown.
    pub async fn close(&self, conversation_sid: &str) -> Vec<u16> {
        let deliveries = {
            let mut inner = self.shared.lock();
            let Some(conversation) = inner.conversations.get_mut(conversation_sid) else {
                return Vec::new();
            };
            if conversation.is_closed() {
                return Vec::new();
            }
            let from = std::mem::replace(&mut conversation.state, "closed".into());
            let fields = pairs(&[
                ("StateFrom", &from),
                ("StateTo", "closed"),
                ("Reason", "API"),
                ("StateUpdated", &iso8601(SystemTime::now(), true)),
                ("Source", "API"),
                ("MessagingServiceSid", MESSAGING_SERVICE_SID),
                ("ChatServiceSid", CHAT_SERVICE_SID),
            ]);
            self.deliveries(
                &inner,
                conversation_sid,
                "onConversationStateUpdated",
                fields,
            )
        };
        self.deliver(deliveries).await
    }

    /// The deliveries of `event` to the webhooks of `conversation_sid` that subscribe to it:
    /// `AccountSid`, `EventType`, `ConversationSid`, then `fields`, then `WebhookSid`.
    fn deliveries(
        &self,
        inner: &Inner,
        conversation_sid: &str,
        event: &str,
        fields: Vec<(String, String)>,
    ) -> Vec<Delivery> {
        let Some(conversation) = inner.conversations.get(conversation_sid) else {
            return Vec::new();
        };
        conversation
            .webhooks
            .iter()
            .filter(|w| w.target == "webhook" && w.filters.iter().any(|f| f == event))
            .map(|webhook| {
                let mut form = pairs(&[
                    ("AccountSid", &self.shared.account_sid),
                    ("EventType", event),
                    ("ConversationSid", conversation_sid),
                ]);
                form.extend(fields.iter().cloned());
                form.push(("WebhookSid".into(), webhook.sid.clone()));
                Delivery {
                    url: webhook.url.clone(),
                    method: webhook.method.clone(),
                    form,
                }
            })
            .collect()
    }

    /// Makes the deliveries one after the other, as Twilio would; the status of each.
    async fn deliver(&self, deliveries: Vec<Delivery>) -> Vec<u16> {
        let (token, server_base) = {
            let inner = self.shared.lock();
            (
                inner.webhook_token.clone(),
                inner.webhook_server_base.clone(),
            )
        };
        let mut statuses = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            statuses.push(send(&delivery, token.as_deref(), server_base.as_deref()).await);
        }
        statuses
    }
}

/// The fields describing a participant in `onParticipantAdded`/`Removed`.
fn participant_fields(participant: &FakeParticipant) -> Vec<(String, String)> {
    pairs(&[
        ("ParticipantSid", &participant.sid),
        ("Identity", &participant.identity),
        ("RoleSid", PARTICIPANT_ROLE_SID),
        ("Attributes", &participant.attributes),
        ("DateCreated", &iso8601(SystemTime::now(), true)),
        ("Source", "API"),
        ("ChatServiceSid", CHAT_SERVICE_SID),
    ])
}

fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `url` with its scheme, host and port replaced by `server_base`.
fn rebased(url: &str, server_base: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path_at = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    format!("{server_base}{}", &url[path_at..])
}

/// One delivery; the server's HTTP status, or 0 when it did not answer.
async fn send(delivery: &Delivery, token: Option<&str>, server_base: Option<&str>) -> u16 {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let is_get = delivery.method.eq_ignore_ascii_case("GET");
    // A GET carries the fields in the query, and is signed over the whole URL with no form.
    let signed_url = if is_get {
        let query = serde_urlencoded::to_string(&delivery.form).unwrap_or_default();
        let joiner = if delivery.url.contains('?') { '&' } else { '?' };
        format!("{}{joiner}{query}", delivery.url)
    } else {
        delivery.url.clone()
    };
    let url = server_base.map_or_else(|| signed_url.clone(), |base| rebased(&signed_url, base));
    let mut request = if is_get {
        client.get(&url)
    } else {
        client.post(&url).form(&delivery.form)
    };
    if let Some(token) = token {
        let params: &[(String, String)] = if is_get { &[] } else { &delivery.form };
        request = request.header(
            signature::HEADER,
            signature::sign(token, &signed_url, params),
        );
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection can be reused.
            let _ = response.bytes().await;
            status
        }
        Err(e) => {
            tracing::debug!(url, error = %e, "webhook delivery failed");
            0
        }
    }
}
