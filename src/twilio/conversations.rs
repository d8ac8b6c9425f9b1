//! A small typed client for the Twilio Conversations REST API calls a chat bot makes: post its
//! reply, read and update the conversation (attributes such as `handedOff`, `State=closed`), and
//! list and delete the conversation-scoped webhook that feeds it (to get out of the loop after a
//! handoff). Resources: <https://www.twilio.com/docs/conversations/api/conversation-message-resource>,
//! <https://www.twilio.com/docs/conversations/api/conversation-resource>,
//! <https://www.twilio.com/docs/conversations/api/conversation-scoped-webhook-resource>; shared
//! notes `handoff.md` §3.1 and §3.3.
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

    /// Posts `body` as `author` (`POST /v1/Conversations/{CH}/Messages`); returns the new
    /// message's `IM…` SID.
    ///
    /// # Errors
    /// [`RestError`]; a 2xx answer without a `sid` is a [`RestError::Status`] of that status.
    pub async fn post_message(
        &self,
        conversation_sid: &str,
        author: &str,
        body: &str,
    ) -> Result<String, RestError> {
        let request = self
            .rest
            .request(Method::POST, &self.url(conversation_sid, "/Messages"))
            .form(&[("Author", author), ("Body", body)]);
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
