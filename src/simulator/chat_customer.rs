//! [`ChatCustomer`]: Twilio Conversations delivering a customer's events to our server as
//! signed post-event webhooks.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use reqwest::StatusCode;
use serde_json::json;

use super::{http_client, new_sid, SimError};
use crate::{chat::WEBHOOK_PATH, twilio::signature};

/// `2026-03-02T10:15:00Z` (or with milliseconds, `…00.123Z`), in UTC.
pub fn iso8601(time: SystemTime, millis: bool) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if millis {
        format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
            since.subsec_millis()
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Plays Twilio Conversations delivering post-event webhooks for one conversation to our
/// server: form-encoded `POST {server_base}/conversations/webhook`, signed with
/// `X-Twilio-Signature` over `{signing_base}/conversations/webhook` when an auth token is set.
///
/// `onConversationAdded` comes as from a service-level webhook (no `WebhookSid`: Twilio's
/// conversation-scoped webhooks cannot filter on it); messages come as from the
/// conversation-scoped webhook `webhook_sid` (with `WebhookSid`).
#[derive(Debug)]
pub struct ChatCustomer {
    /// `CH…`.
    pub conversation_sid: String,
    /// `Author` of the customer's messages: `+1…` (SMS), `whatsapp:+1…`, or a chat identity
    /// (`FX…` for Flex web chat).
    pub author: String,
    /// The conversation-scoped webhook delivering the messages (`WH…`); empty leaves
    /// `WebhookSid` out.
    pub webhook_sid: String,
    /// `AccountSid` of every delivery.
    pub account_sid: String,
    /// `ChatServiceSid` (`IS…`).
    pub chat_service_sid: String,
    /// `MessagingServiceSid` (`MG…`).
    pub messaging_service_sid: String,
    /// `ParticipantSid` of the customer (`MB…`).
    pub participant_sid: String,
    server_base: String,
    signing_base: String,
    auth_token: Option<String>,
    next_index: u64,
    sent: HashMap<String, Vec<(String, String)>>,
}

impl ChatCustomer {
    /// A customer of conversation `conversation_sid` writing as `author`, whose messages reach
    /// the server at `server_base` through webhook `webhook_sid`; requests are signed over
    /// `signing_base` (the server's `PUBLIC_URL`, else `server_base`) with `auth_token`.
    pub fn new(
        server_base: &str,
        signing_base: &str,
        auth_token: Option<String>,
        conversation_sid: &str,
        author: &str,
        webhook_sid: &str,
    ) -> Self {
        ChatCustomer {
            conversation_sid: conversation_sid.to_owned(),
            author: author.to_owned(),
            webhook_sid: webhook_sid.to_owned(),
            account_sid: new_sid("AC"),
            chat_service_sid: new_sid("IS"),
            messaging_service_sid: new_sid("MG"),
            participant_sid: new_sid("MB"),
            server_base: server_base.trim_end_matches('/').to_owned(),
            signing_base: signing_base.trim_end_matches('/').to_owned(),
            auth_token,
            next_index: 0,
            sent: HashMap::new(),
        }
    }

    /// The URL deliveries go to.
    pub fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.server_base)
    }

    /// The URL deliveries are signed over (the webhook's configured URL).
    pub fn signed_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.signing_base)
    }

    /// Whether the author is a chat identity (an SDK user) rather than a phone address.
    fn is_identity(&self) -> bool {
        !(self.author.starts_with('+') || self.author.contains(':'))
    }

    /// `onConversationAdded`, as a service-level webhook delivers it.
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached.
    pub async fn conversation_added(&self) -> Result<StatusCode, SimError> {
        let form = pairs(&[
            ("AccountSid", &self.account_sid),
            ("EventType", "onConversationAdded"),
            ("ConversationSid", &self.conversation_sid),
            ("Source", "API"),
            ("DateCreated", &iso8601(SystemTime::now(), true)),
            ("State", "active"),
            ("Attributes", "{}"),
            ("ChatServiceSid", &self.chat_service_sid),
            ("MessagingServiceSid", &self.messaging_service_sid),
        ]);
        self.deliver(&form).await
    }

    /// The customer writes `body` (`onMessageAdded`); returns the server's status and the new
    /// message's `IM…` SID.
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached.
    pub async fn send(&mut self, body: &str) -> Result<(StatusCode, String), SimError> {
        self.message(body, None).await
    }

    /// The customer sends a picture with no text (`Media` set, `Body` empty).
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached.
    pub async fn send_media_only(&mut self) -> Result<(StatusCode, String), SimError> {
        let media = json!([{
            "sid": new_sid("ME"),
            "content_type": "image/jpeg",
            "filename": "x.jpg",
            "size": 123,
        }])
        .to_string();
        self.message("", Some(media)).await
    }

    async fn message(
        &mut self,
        body: &str,
        media: Option<String>,
    ) -> Result<(StatusCode, String), SimError> {
        let message_sid = new_sid("IM");
        let index = self.next_index.to_string();
        self.next_index += 1;
        let mut form = pairs(&[
            ("AccountSid", &self.account_sid),
            ("EventType", "onMessageAdded"),
            ("ConversationSid", &self.conversation_sid),
            ("MessageSid", &message_sid),
            ("Index", &index),
            ("Body", body),
            ("Author", &self.author),
            ("ParticipantSid", &self.participant_sid),
            ("Source", "SDK"),
            ("Attributes", "{}"),
            ("DateCreated", &iso8601(SystemTime::now(), true)),
            ("MessagingServiceSid", &self.messaging_service_sid),
            ("ChatServiceSid", &self.chat_service_sid),
        ]);
        if self.is_identity() {
            form.push(("ClientIdentity".into(), self.author.clone()));
        }
        if let Some(media) = media {
            form.push(("Media".into(), media));
        }
        if !self.webhook_sid.is_empty() {
            form.push(("WebhookSid".into(), self.webhook_sid.clone()));
        }
        let status = self.deliver(&form).await?;
        self.sent.insert(message_sid.clone(), form);
        Ok((status, message_sid))
    }

    /// Delivers message `message_sid` again, as Twilio does when our answer was late or an
    /// error: the same fields with `RetryCount` 1 (then 2, …).
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached or this customer never sent
    /// `message_sid`.
    pub async fn redeliver(&mut self, message_sid: &str) -> Result<StatusCode, SimError> {
        let Some(form) = self.sent.get_mut(message_sid) else {
            return Err(SimError::Http {
                url: self.webhook_url(),
                reason: format!("this customer sent no message {message_sid}"),
            });
        };
        match form.iter_mut().find(|(k, _)| k == "RetryCount") {
            Some((_, n)) => *n = (n.parse::<u32>().unwrap_or(0) + 1).to_string(),
            None => form.push(("RetryCount".into(), "1".into())),
        }
        let form = form.clone();
        self.deliver(&form).await
    }

    /// Posts `form` to the webhook as Twilio would (signed when a token is set); the server's
    /// HTTP status.
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached.
    pub async fn deliver(&self, form: &[(String, String)]) -> Result<StatusCode, SimError> {
        let url = self.webhook_url();
        let http = http_client(&url)?;
        let mut request = http.post(&url).form(form);
        if let Some(token) = &self.auth_token {
            request = request.header(
                signature::HEADER,
                signature::sign(token, &self.signed_url(), form),
            );
        }
        let response = request.send().await.map_err(|e| SimError::Http {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        // Read the body so the connection can be reused.
        let _ = response.bytes().await;
        Ok(status)
    }
}

fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
