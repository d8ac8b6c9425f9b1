//! Escalating a widget visitor to a live Flex agent on today's Twilio (channels-and-bots.md §3.0,
//! handoff.md §3.2): create a Conversation for the visitor, add them as a chat participant, post
//! the bot transcript in order (each message with its real author, the original time in its
//! attributes), subscribe relaybot to the conversation's events, and create a Flex interaction
//! for it (`Channel.type` `web`).
//!
//! Every step is retried within bounds (creates only when Twilio certainly did not act); if one
//! still fails, the conversation made so far is closed and the visitor stays with the bot.

use serde_json::json;

use super::WebState;
use crate::{
    chat::handoff::{record_url, task_attributes},
    handoff::{now_ms, HandoffData, HandoffPath, HandoffRecord, TranscriptLine},
    twilio::{
        flex::{ChannelProperties, InteractionChannel, InteractionRouting, RoutingProperties},
        rest::{Rest, RestError},
    },
};

/// Attempts for each REST call.
const ATTEMPTS: u32 = 3;

/// The events relaybot follows on an escalated conversation.
pub const FILTERS: [&str; 4] = [
    "onMessageAdded",
    "onParticipantAdded",
    "onParticipantRemoved",
    "onConversationStateUpdated",
];

/// Why an escalation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    /// No credentials, workspace or workflow.
    #[error("chat handoff is not configured: set FLEX_WORKSPACE_SID, TWILIO_WORKFLOW_SID and the Twilio credentials")]
    NotConfigured,
    /// A Conversations or Interactions call failed.
    #[error("{what} failed: {error}")]
    Rest {
        /// Which step.
        what: &'static str,
        /// Twilio's answer.
        error: RestError,
    },
}

fn step(what: &'static str) -> impl FnOnce(RestError) -> EscalationError {
    move |error| EscalationError::Rest { what, error }
}

/// Escalates `visitor` with the handoff `data` and the bot `transcript`; returns the new
/// conversation's SID.
///
/// # Errors
/// [`EscalationError`]; nothing is left open behind it.
pub(super) async fn escalate(
    state: &WebState,
    visitor: &str,
    mut data: HandoffData,
    transcript: &[TranscriptLine],
) -> Result<String, EscalationError> {
    let chat = state.inner.chat.clone();
    let (Some(conversations), Some(routing)) = (chat.conversations(), chat.routing()) else {
        return Err(EscalationError::NotConfigured);
    };
    let bot = chat.settings().chat.bot_author.clone();
    let attributes = json!({
        "source": "relaybot-web",
        // A person's conversation from the start: should its events ever reach the
        // Conversations chat channel (this visitor's task gone), the bot leaves it alone.
        "handedOff": true,
        "visitorId": visitor,
        "handoff_reason": data.reason,
        "summary": data.summary,
    })
    .to_string();
    let friendly_name = format!("Web chat {visitor}");
    let conversation_sid = Rest::with_create_retries("creating the conversation", ATTEMPTS, || {
        conversations.create(&friendly_name, &attributes)
    })
    .await
    .map_err(step("creating the conversation"))?;
    // Its events are this visitor's from now on (an agent could be quick).
    state.claim(&conversation_sid, visitor);
    let rest_of_it = async {
        let participant = json!({"friendlyName": "Website visitor"}).to_string();
        Rest::with_create_retries("adding the visitor", ATTEMPTS, || {
            conversations.add_participant(&conversation_sid, visitor, &participant)
        })
        .await
        .map_err(step("adding the visitor"))?;
        for line in transcript {
            let (author, from) = if line.role == "caller" {
                (visitor, "visitor")
            } else {
                (bot.as_str(), "bot")
            };
            let attributes = json!({"relaybot": {"from": from, "at": line.at_ms}}).to_string();
            Rest::with_create_retries("posting the transcript", ATTEMPTS, || {
                conversations.post_message_with(
                    &conversation_sid,
                    author,
                    &line.text,
                    Some(&attributes),
                )
            })
            .await
            .map_err(step("posting the transcript"))?;
        }
        let webhook_url = state.webhook_url();
        Rest::with_create_retries("subscribing to the conversation", ATTEMPTS, || {
            conversations.create_webhook(&conversation_sid, &webhook_url, &FILTERS)
        })
        .await
        .map_err(step("subscribing to the conversation"))?;
        data.call_sid.clone_from(&conversation_sid);
        let channel = InteractionChannel {
            kind: "web".into(),
            initiated_by: "customer".into(),
            properties: ChannelProperties {
                media_channel_sid: conversation_sid.clone(),
            },
        };
        let record = record_url(&chat, &conversation_sid);
        let routing_request = InteractionRouting {
            properties: RoutingProperties {
                workspace_sid: routing.workspace_sid.clone(),
                workflow_sid: Some(routing.workflow_sid.clone()),
                task_channel_unique_name: routing.task_channel.clone(),
                attributes: task_attributes(&data, "web", record.as_deref()),
            },
        };
        let interaction_sid =
            Rest::with_create_retries("creating the Flex interaction", ATTEMPTS, || {
                routing.client.create(&channel, &routing_request)
            })
            .await
            .map_err(step("creating the Flex interaction"))?;
        Ok::<_, EscalationError>(interaction_sid)
    };
    match rest_of_it.await {
        Ok(interaction_sid) => {
            tracing::info!(%conversation_sid, %interaction_sid, "widget visitor handed to Flex");
            chat.record_handoff(HandoffRecord {
                call_sid: String::new(),
                conversation_sid: conversation_sid.clone(),
                interaction_sid: Some(interaction_sid),
                from: visitor.to_owned(),
                to: String::new(),
                reason: data.reason,
                summary: data.summary,
                transcript: data.transcript,
                handed_off_at_ms: now_ms(),
                path: HandoffPath::FlexInteraction,
            });
            Ok(conversation_sid)
        }
        Err(error) => {
            state.unclaim(&conversation_sid);
            // Nothing half-made is left behind for an agent to find.
            let closed = Rest::with_retries("closing the unused conversation", ATTEMPTS, || {
                conversations.update(&conversation_sid, None, Some("closed"))
            })
            .await;
            if let Err(close_error) = closed {
                tracing::warn!(error = %close_error, %conversation_sid, "could not close the conversation of a failed escalation");
            }
            Err(error)
        }
    }
}
