//! A small typed client for the Flex Interactions API call that hands a conversation the bot
//! already owns to a Flex agent: `POST {TWILIO_FLEX_BASE}/v1/Interactions` with form fields
//! `Channel` and `Routing`, each a JSON document. Resource:
//! <https://www.twilio.com/docs/flex/developer/conversations/interactions-api/interactions>;
//! shared notes `handoff.md` §3.2.
//!
//! The call is asynchronous on Twilio's side: a 2xx means the interaction was accepted, and
//! the task reaches an agent through the workflow.

use reqwest::Method;
use serde::Serialize;

use super::{
    conversations::created_sid,
    rest::{Rest, RestError},
};

/// Twilio's Flex API host.
pub const DEFAULT_FLEX_BASE: &str = "https://flex-api.twilio.com";

/// The `Channel` of an interaction for an existing conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InteractionChannel {
    /// The customer's channel as Flex names it: `web`, `sms`, `whatsapp`, `chat`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `customer` for a conversation the customer started.
    pub initiated_by: String,
    /// What the channel carries.
    pub properties: ChannelProperties,
}

/// `Channel.properties`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelProperties {
    /// The conversation (`CH…`) the agent takes over.
    pub media_channel_sid: String,
}

/// The `Routing` of an interaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InteractionRouting {
    /// Where the task goes.
    pub properties: RoutingProperties,
}

/// `Routing.properties`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingProperties {
    /// The Flex TaskRouter workspace (`WS…`), required.
    pub workspace_sid: String,
    /// The workflow (`WW…`); Twilio accepts none only when the workspace has one workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_sid: Option<String>,
    /// The task channel, usually `chat`.
    pub task_channel_unique_name: String,
    /// Copied onto the task as they are (`from`, `name`, `handoff_reason`, `summary`, …).
    pub attributes: serde_json::Value,
}

/// The Interactions API client.
#[derive(Debug, Clone)]
pub struct InteractionsClient {
    rest: Rest,
    base: String,
}

impl InteractionsClient {
    /// A client at `base` (`https://flex-api.twilio.com`) sending through `rest` (shared with
    /// the other Twilio clients).
    pub fn new(base: &str, rest: Rest) -> Self {
        InteractionsClient {
            rest,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Creates an interaction (`POST /v1/Interactions`); returns its `KD…` SID.
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn create(
        &self,
        channel: &InteractionChannel,
        routing: &InteractionRouting,
    ) -> Result<String, RestError> {
        let channel = serde_json::to_string(channel).expect("plain structs serialise");
        let routing = serde_json::to_string(routing).expect("plain structs serialise");
        let request = self
            .rest
            .request(Method::POST, &format!("{}/v1/Interactions", self.base))
            .form(&[("Channel", channel.as_str()), ("Routing", routing.as_str())]);
        let answer = self.rest.send(request).await?;
        created_sid(&answer)
    }
}
