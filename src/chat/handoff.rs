//! Handing a chat to a Flex agent (handoff.md §3.2–3.3): create an interaction for the existing
//! conversation, then take the bot out of the loop — delete its conversation-scoped webhook and
//! mark the conversation `handedOff` in its `Attributes`, which every later turn checks first.

use serde_json::{json, Value};

use super::{channel_type, ChatState};
use crate::{
    handoff::{now_ms, shorten, HandoffData, HandoffPath, HandoffRecord},
    twilio::{
        conversations::ConversationsClient,
        flex::{ChannelProperties, InteractionChannel, InteractionRouting, RoutingProperties},
        rest::{Rest, RestError},
    },
};

/// Attempts for each REST call of a handoff (429, 5xx and timeouts are retried).
const ATTEMPTS: u32 = 3;

/// Why a chat handoff did not reach Flex.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// No workspace, workflow or credentials.
    #[error("chat handoff is not configured: set FLEX_WORKSPACE_SID, TWILIO_WORKFLOW_SID and the Twilio credentials")]
    NotConfigured,
    /// The Interactions API refused or could not be reached.
    #[error("the Flex Interactions API failed: {0}")]
    Interactions(#[from] RestError),
}

/// Flex task attributes of a chat handoff: the same context as a call's (handoff.md §2.3) —
/// `from`, `name`, `handoff_reason`, `summary` — plus `conversationSid` (the conversation,
/// whose messages are the whole transcript the agent sees), `channelType`, `conversations` for
/// Flex Insights, and `handoffRecordUrl` (the bot's timestamped transcript and reason at
/// `GET /conversations/{ConversationSid}/handoff`) when `record_url` is known. They are copied
/// onto the task as they are.
pub fn task_attributes(data: &HandoffData, channel: &str, record_url: Option<&str>) -> Value {
    let name = if data.from.is_empty() {
        "Customer"
    } else {
        &data.from
    };
    let mut attributes = json!({
        "name": name,
        "from": data.from,
        "channelType": channel,
        "handoff_reason": data.reason,
        "summary": data.summary,
        "conversationSid": data.call_sid,
        "conversations": {
            "initiated_by": "customer",
            "communication_channel": channel,
            "direction": "inbound",
            "conversation_attribute_1": shorten(&data.reason, 128),
        }
    });
    if let Some(url) = record_url {
        attributes["handoffRecordUrl"] = Value::String(url.to_owned());
    }
    attributes
}

/// `attributes` (the conversation's `Attributes` JSON string) with `handedOff` and
/// `interactionSid` merged in; anything that is not a JSON object is replaced.
pub fn merged_attributes(attributes: Option<&str>, interaction_sid: &str) -> String {
    let mut map = attributes
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    map.insert("handedOff".into(), Value::Bool(true));
    map.insert(
        "interactionSid".into(),
        Value::String(interaction_sid.into()),
    );
    map.insert("handoffTimestamp".into(), json!(now_ms()));
    Value::Object(map).to_string()
}

/// Whether the conversation's `Attributes` mark it handed off.
pub fn is_handed_off(attributes: Option<&str>) -> bool {
    attributes
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .is_some_and(|v| v["handedOff"] == Value::Bool(true))
}

/// Gives the conversation `data.call_sid` to Flex with `data` (a handoff's, from
/// [`crate::conversation::Conversation::handoff_data`]); returns the interaction's SID.
/// After the interaction exists, failures to remove the webhook or mark the conversation are
/// logged, not returned: the agent has the conversation either way, and the local mark stops
/// the bot.
///
/// # Errors
/// [`HandoffError`] when no interaction was created.
pub(super) async fn hand_off(
    state: &ChatState,
    data: HandoffData,
    webhook_sid: Option<&str>,
) -> Result<String, HandoffError> {
    let shared = &state.inner;
    let (Some(routing), Some(conversations)) = (&shared.routing, &shared.conversations) else {
        return Err(HandoffError::NotConfigured);
    };
    let conversation_sid = data.call_sid.clone();
    let channel_type = channel_type(&data.from);
    let channel = InteractionChannel {
        kind: channel_type.to_owned(),
        initiated_by: "customer".into(),
        properties: ChannelProperties {
            media_channel_sid: conversation_sid.clone(),
        },
    };
    let routing_request = InteractionRouting {
        properties: RoutingProperties {
            workspace_sid: routing.workspace_sid.clone(),
            workflow_sid: Some(routing.workflow_sid.clone()),
            task_channel_unique_name: routing.task_channel.clone(),
            attributes: task_attributes(
                &data,
                channel_type,
                record_url(state, &conversation_sid).as_deref(),
            ),
        },
    };
    let interaction_sid =
        Rest::with_create_retries("creating the Flex interaction", ATTEMPTS, || {
            routing.client.create(&channel, &routing_request)
        })
        .await?;
    tracing::info!(%interaction_sid, channel_type, reason = %data.reason, "chat handed to Flex");
    shared.registry.mark_handed_off(&conversation_sid);
    shared.handoffs.insert(HandoffRecord {
        call_sid: String::new(),
        conversation_sid: conversation_sid.clone(),
        interaction_sid: Some(interaction_sid.clone()),
        from: data.from.clone(),
        to: String::new(),
        reason: data.reason.clone(),
        summary: data.summary.clone(),
        transcript: data.transcript,
        handed_off_at_ms: now_ms(),
        path: HandoffPath::FlexInteraction,
    });
    leave_the_loop(
        state,
        conversations,
        &conversation_sid,
        webhook_sid,
        &interaction_sid,
    )
    .await;
    Ok(interaction_sid)
}

/// Where the handoff record of `conversation_sid` is served, when the server has a public URL
/// and the record endpoint is on (`PUBLIC_URL`, `API_TOKEN`).
pub(crate) fn record_url(state: &ChatState, conversation_sid: &str) -> Option<String> {
    let config = state.config();
    config.handoff.api_token.as_ref()?;
    let base = config.public_url.as_ref()?;
    Some(format!(
        "{}/conversations/{conversation_sid}/handoff",
        base.as_str().trim_end_matches('/')
    ))
}

/// Deletes the bot's webhook and marks the conversation handed off.
async fn leave_the_loop(
    state: &ChatState,
    conversations: &ConversationsClient,
    conversation_sid: &str,
    webhook_sid: Option<&str>,
    interaction_sid: &str,
) {
    let webhooks = match webhook_sid {
        Some(sid) => vec![sid.to_owned()],
        None => ours(state, conversations, conversation_sid).await,
    };
    for webhook_sid in webhooks {
        let deleted = Rest::with_retries("deleting the bot's webhook", ATTEMPTS, || {
            conversations.delete_webhook(conversation_sid, &webhook_sid)
        })
        .await;
        if let Err(error) = deleted {
            tracing::error!(%error, %webhook_sid, "could not delete the bot's conversation webhook; the handedOff mark still keeps the bot quiet");
        }
    }
    let marked = Rest::with_retries("marking the conversation handed off", ATTEMPTS, || async {
        let current = conversations.fetch(conversation_sid).await?;
        let attributes = merged_attributes(current.attributes.as_deref(), interaction_sid);
        conversations
            .update(conversation_sid, Some(&attributes), None)
            .await
    })
    .await;
    if let Err(error) = marked {
        tracing::error!(%error, "could not mark the conversation handedOff in its Attributes");
    }
}

/// Our webhooks on the conversation, when the payload did not say which one delivered it:
/// those whose URL is our `/conversations/webhook` (under `PUBLIC_URL` when set).
async fn ours(
    state: &ChatState,
    conversations: &ConversationsClient,
    conversation_sid: &str,
) -> Vec<String> {
    let listed = Rest::with_retries("listing the conversation's webhooks", ATTEMPTS, || {
        conversations.webhooks(conversation_sid)
    })
    .await;
    let public = state
        .config()
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned());
    match listed {
        Ok(webhooks) => webhooks
            .into_iter()
            .filter(|w| {
                w.configuration.url.as_deref().is_some_and(|url| {
                    let path = url.split('?').next().unwrap_or_default();
                    path.ends_with(super::WEBHOOK_PATH)
                        && public.as_deref().is_none_or(|base| url.starts_with(base))
                })
            })
            .map(|w| w.sid)
            .collect(),
        Err(error) => {
            tracing::error!(%error, "could not list the conversation's webhooks to remove the bot's");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_merged_not_replaced() {
        let merged: Value =
            serde_json::from_str(&merged_attributes(Some(r#"{"topic":"billing"}"#), "KD1"))
                .unwrap();
        assert_eq!(merged["topic"], "billing");
        assert_eq!(merged["handedOff"], true);
        assert_eq!(merged["interactionSid"], "KD1");
        let fresh: Value = serde_json::from_str(&merged_attributes(Some("[1]"), "KD2")).unwrap();
        assert_eq!(fresh["interactionSid"], "KD2");
        assert!(is_handed_off(Some(&merged.to_string())));
        assert!(!is_handed_off(Some("{}")));
        assert!(!is_handed_off(Some("not json")));
        assert!(!is_handed_off(None));
    }
}
