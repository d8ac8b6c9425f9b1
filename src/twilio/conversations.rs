//! A small typed client for the Twilio Conversations REST API calls a chat bot makes: create a
//! conversation for a web visitor and add the visitor to it, post its reply (with attributes),
//! read and update the conversation (attributes such as `handedOff`, `State=closed`), and
//! create, list and delete the conversation-scoped webhook that feeds it (subscribing to a
//! conversation; getting out of the loop after a handoff). Resources:
//! <https://www.twilio.com/docs/conversations/api/conversation-resource>,
//! <https://www.twilio.com/docs/conversations/api/conversation-participant-resource>,
//! <https://www.twilio.com/docs/conversations/api/conversation-message-resource>,
//! <https://www.twilio.com/docs/conversations/api/conversation-scoped-webhook-resource>; shared
//! notes `handoff.md` §3.1 and §3.3, `channels-and-bots.md` §3.
//!
//! One attempt per call: callers wrap them in [`Rest::with_retries`] (reads, updates, deletes)
//! or [`Rest::with_create_retries`] (the creating calls).
//!
//! The base URL is `TWILIO_CONVERSATIONS_BASE` (default `https://conversations.twilio.com`) so
//! tests point it at a fake. Requests made through this API do not fire the conversation's
//! webhooks (no `X-Twilio-Webhook-Enabled` header is sent), so the bot's own replies never come
//! back to it.

use reqwest::Method;
use serde::Deserialize;

use super::rest::{urlencode_path, Rest, RestError};

/// Twilio's Conversations API host.
pub const DEFAULT_CONVERSATIONS_BASE: &str = "https://conversations.twilio.com";

/// A conversation as the API returns it (the fields the bot reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Conversation {
    /// `CH…`.
    pub sid: String,
    /// The conversation's attributes: a JSON document, as a string (`"{}"` when unset).
    #[serde(default)]
    pub attributes: Option<String>,
    /// `active`, `inactive` or `closed`.
    #[serde(default)]
    pub state: Option<String>,
}

/// A participant of a conversation (the fields the bot reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Participant {
    /// `MB…`.
    pub sid: String,
    /// The chat identity (`None` for an SMS or WhatsApp participant).
    #[serde(default)]
    pub identity: Option<String>,
    /// The participant's attributes: a JSON document, as a string (`"{}"` when unset).
    #[serde(default)]
    pub attributes: Option<String>,
}

/// A conversation-scoped webhook (`WH…`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConversationWebhook {
    /// `WH…`.
    pub sid: String,
    /// `webhook`, `trigger` or `studio`.
    #[serde(default)]
    pub target: String,
    /// Where it posts.
    #[serde(default)]
    pub configuration: WebhookConfiguration,
}

/// A webhook's `configuration`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WebhookConfiguration {
    /// The URL it posts to (`webhook` target).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct WebhookPage {
    #[serde(default)]
    webhooks: Vec<ConversationWebhook>,
}

#[derive(Deserialize)]
struct ParticipantPage {
    #[serde(default)]
    participants: Vec<Participant>,
}

/// Twilio's error 50433, "Participant already exists".
pub const PARTICIPANT_EXISTS: u32 = 50433;

/// The Conversations API client.
#[derive(Debug, Clone)]
pub struct ConversationsClient {
    rest: Rest,
    base: String,
}

impl ConversationsClient {
    /// A client at `base` (`https://conversations.twilio.com`) sending through `rest` (shared
    /// with the other Twilio clients: one connection pool, one set of credentials).
    pub fn new(base: &str, rest: Rest) -> Self {
        ConversationsClient {
            rest,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, conversation_sid: &str, rest: &str) -> String {
        format!(
            "{}/v1/Conversations/{}{rest}",
            self.base,
            urlencode_path(conversation_sid)
        )
    }

    /// Creates a conversation (`POST /v1/Conversations` with `FriendlyName`, `Attributes` — a
    /// JSON document, as a string — and `State=active`); returns its `CH…` SID.
    /// <https://www.twilio.com/docs/conversations/api/conversation-resource#create-a-conversation-resource>
    ///
    /// The friendly name is visible to agents and in logs: Twilio advises keeping personal data
    /// out of it.
    ///
    /// # Errors
    /// [`RestError`]; a 2xx answer without a `sid` is a [`RestError::Status`] of that status.
    pub async fn create(&self, friendly_name: &str, attributes: &str) -> Result<String, RestError> {
        let request = self
            .rest
            .request(Method::POST, &format!("{}/v1/Conversations", self.base))
            .form(&[
                ("FriendlyName", friendly_name),
                ("Attributes", attributes),
                ("State", "active"),
            ]);
        let answer = self.rest.send(request).await?;
        created_sid(&answer)
    }

    /// Adds chat participant `identity` (a Conversations User identity, e.g. the web visitor's
    /// session id) with `attributes` (a JSON document, as a string) to the conversation
    /// (`POST /v1/Conversations/{CH}/Participants` with `Identity`, `Attributes`); returns its
    /// `MB…` SID.
    /// <https://www.twilio.com/docs/conversations/api/conversation-participant-resource#add-a-conversation-participant-chat>
    ///
    /// Idempotent: when Twilio answers 50433 "Participant already exists" (an earlier attempt
    /// got through), the participant is looked up by identity
    /// ([`ConversationsClient::participants`]) and its SID returned; if that lookup fails or
    /// does not find it, the answer is still `Ok`, with an **empty string** (the participant
    /// exists; only its SID is unknown). The attributes of an existing participant are not
    /// changed.
    ///
    /// # Errors
    /// [`RestError`] (other than 50433).
    pub async fn add_participant(
        &self,
        conversation_sid: &str,
        identity: &str,
        attributes: &str,
    ) -> Result<String, RestError> {
        let request = self
            .rest
            .request(Method::POST, &self.url(conversation_sid, "/Participants"))
            .form(&[("Identity", identity), ("Attributes", attributes)]);
        match self.rest.send(request).await {
            Ok(answer) => created_sid(&answer),
            Err(RestError::Status {
                code: Some(PARTICIPANT_EXISTS),
                ..
            }) => Ok(self
                .participants(conversation_sid)
                .await
                .ok()
                .and_then(|all| {
                    all.into_iter()
                        .find(|p| p.identity.as_deref() == Some(identity))
                })
                .map(|p| p.sid)
                .unwrap_or_default()),
            Err(e) => Err(e),
        }
    }

    /// The conversation's participants (`GET /v1/Conversations/{CH}/Participants`, first page
    /// of up to 100).
    /// <https://www.twilio.com/docs/conversations/api/conversation-participant-resource#read-multiple-conversationparticipant-resources>
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn participants(
        &self,
        conversation_sid: &str,
    ) -> Result<Vec<Participant>, RestError> {
        let request = self.rest.request(
            Method::GET,
            &self.url(conversation_sid, "/Participants?PageSize=100"),
        );
        let answer = self.rest.send(request).await?;
        serde_json::from_str::<ParticipantPage>(&answer)
            .map(|page| page.participants)
            .map_err(|e| unreadable(&e))
    }

    /// Subscribes `url` to the conversation's events with a conversation-scoped webhook
    /// (`POST /v1/Conversations/{CH}/Webhooks` with `Target=webhook`, `Configuration.Url`,
    /// `Configuration.Method=POST`, and `Configuration.Filters` repeated once per filter, e.g.
    /// `onMessageAdded`, `onParticipantAdded`, `onParticipantRemoved`,
    /// `onConversationStateUpdated`); returns the webhook's `WH…` SID.
    /// <https://www.twilio.com/docs/conversations/api/conversation-scoped-webhook-resource#create-a-conversationscopedwebhook-resource>
    ///
    /// Twilio signs each delivery over exactly `url`, so give the URL the server checks
    /// signatures against. A conversation has at most five such webhooks (error 50361).
    ///
    /// # Errors
    /// [`RestError`]; a 2xx answer without a `sid` is a [`RestError::Status`] of that status.
    pub async fn create_webhook(
        &self,
        conversation_sid: &str,
        url: &str,
        filters: &[&str],
    ) -> Result<String, RestError> {
        // An array is a repeated key in Twilio's forms: pairs, not a serialised `Vec` field.
        let mut form: Vec<(&str, &str)> = vec![
            ("Target", "webhook"),
            ("Configuration.Url", url),
            ("Configuration.Method", "POST"),
        ];
        form.extend(filters.iter().map(|f| ("Configuration.Filters", *f)));
        let request = self
            .rest
            .request(Method::POST, &self.url(conversation_sid, "/Webhooks"))
            .form(&form);
        let answer = self.rest.send(request).await?;
        created_sid(&answer)
    }

    /// Posts `body` as `author` (`POST /v1/Conversations/{CH}/Messages`); returns the new
    /// message's `IM…` SID. [`ConversationsClient::post_message_with`] without attributes.
    ///
    /// # Errors
    /// [`RestError`]; a 2xx answer without a `sid` is a [`RestError::Status`] of that status.
    pub async fn post_message(
        &self,
        conversation_sid: &str,
        author: &str,
        body: &str,
    ) -> Result<String, RestError> {
        self.post_message_with(conversation_sid, author, body, None)
            .await
    }

    /// Posts `body` as `author`, with message `attributes` (a JSON document, as a string, e.g.
    /// the original time of a transcript line) when given
    /// (`POST /v1/Conversations/{CH}/Messages` with `Author`, `Body`, `Attributes`); returns the
    /// new message's `IM…` SID.
    /// <https://www.twilio.com/docs/conversations/api/conversation-message-resource#create-a-conversationmessage-resource>
    ///
    /// # Errors
    /// [`RestError`]; a 2xx answer without a `sid` is a [`RestError::Status`] of that status.
    /// A closed conversation answers 400 with code 50377.
    pub async fn post_message_with(
        &self,
        conversation_sid: &str,
        author: &str,
        body: &str,
        attributes: Option<&str>,
    ) -> Result<String, RestError> {
        let mut form = vec![("Author", author), ("Body", body)];
        if let Some(attributes) = attributes {
            form.push(("Attributes", attributes));
        }
        let request = self
            .rest
            .request(Method::POST, &self.url(conversation_sid, "/Messages"))
            .form(&form);
        let answer = self.rest.send(request).await?;
        created_sid(&answer)
    }

    /// The conversation (`GET /v1/Conversations/{CH}`).
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn fetch(&self, conversation_sid: &str) -> Result<Conversation, RestError> {
        let request = self
            .rest
            .request(Method::GET, &self.url(conversation_sid, ""));
        let answer = self.rest.send(request).await?;
        serde_json::from_str(&answer).map_err(|e| unreadable(&e))
    }

    /// Sets the conversation's `Attributes` (a JSON document, whole) and/or its `State`
    /// (`closed` ends it) with `POST /v1/Conversations/{CH}`.
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn update(
        &self,
        conversation_sid: &str,
        attributes: Option<&str>,
        state: Option<&str>,
    ) -> Result<(), RestError> {
        let mut form: Vec<(&str, &str)> = Vec::new();
        if let Some(attributes) = attributes {
            form.push(("Attributes", attributes));
        }
        if let Some(state) = state {
            form.push(("State", state));
        }
        let request = self
            .rest
            .request(Method::POST, &self.url(conversation_sid, ""))
            .form(&form);
        self.rest.send(request).await.map(drop)
    }

    /// The conversation-scoped webhooks (`GET /v1/Conversations/{CH}/Webhooks`, first page:
    /// there are at most five).
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn webhooks(
        &self,
        conversation_sid: &str,
    ) -> Result<Vec<ConversationWebhook>, RestError> {
        let request = self
            .rest
            .request(Method::GET, &self.url(conversation_sid, "/Webhooks"));
        let answer = self.rest.send(request).await?;
        serde_json::from_str::<WebhookPage>(&answer)
            .map(|page| page.webhooks)
            .map_err(|e| unreadable(&e))
    }

    /// Deletes a conversation-scoped webhook (`DELETE /v1/Conversations/{CH}/Webhooks/{WH}`);
    /// one that is already gone (404) counts as deleted.
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn delete_webhook(
        &self,
        conversation_sid: &str,
        webhook_sid: &str,
    ) -> Result<(), RestError> {
        let path = format!("/Webhooks/{}", urlencode_path(webhook_sid));
        let request = self
            .rest
            .request(Method::DELETE, &self.url(conversation_sid, &path));
        match self.rest.send(request).await {
            Ok(_) | Err(RestError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The `sid` of a created resource.
pub(crate) fn created_sid(answer: &str) -> Result<String, RestError> {
    serde_json::from_str::<Created>(answer)
        .map(|c| c.sid)
        .map_err(|e| unreadable(&e))
}

/// A 2xx answer we cannot read.
fn unreadable(error: &serde_json::Error) -> RestError {
    RestError::Status {
        status: 200,
        code: None,
        message: format!("unreadable answer: {error}"),
    }
}
