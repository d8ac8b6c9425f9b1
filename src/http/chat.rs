//! The chat channel's HTTP edge: the Conversations post-event webhook, the Studio turn endpoint
//! and the chat handoff record. The work itself is [`crate::chat`]'s.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{record_answer, verify_webhook, AppState, SignedForm};
use crate::{
    chat::StudioAnswer,
    twilio::webhooks::{parse_form, ConversationEvent},
};

/// How long `/conversations/turn` waits for the turn: under the 10 s Studio's HTTP widget waits
/// (Studio widget library, "Make HTTP Request").
pub const STUDIO_TURN_WAIT: Duration = Duration::from_secs(9);

/// `POST /conversations/webhook`: the Twilio Conversations post-event webhook
/// (`onMessageAdded`, `onConversationAdded`, `onConversationStateUpdated`,
/// `onConversationRemoved`; form-encoded, signed like every Twilio webhook). Answered 200 at
/// once — Twilio waits 5 s at most — while the conversation's task does the work; 503 when the
/// event could not be taken ([`crate::chat::Busy`]: draining, a flooded conversation, or
/// `CHAT_MAX_CONVERSATIONS`).
pub(super) async fn conversations_webhook(
    State(state): State<AppState>,
    SignedForm(params): SignedForm,
) -> StatusCode {
    let event = ConversationEvent::from_params(params);
    // An escalated widget conversation's events are the widget's.
    if event
        .conversation_sid
        .as_deref()
        .is_some_and(|ch| state.web.owns(ch))
    {
        return match state.web.accept(&event) {
            Ok(()) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
    }
    match state.chat.accept(event) {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON a Studio flow's `make-http-request` widget posts to `/conversations/turn`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StudioTurn {
    conversation_sid: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    author: String,
}

/// `POST /conversations/turn`: one turn for a Studio chat flow (`studio/chat-flow.json`).
/// In: `{conversationSid, body, author}`; out: `{reply, action: "continue"|"handoff"|"end",
/// reason, summary}`. Studio signs a JSON request over its URL with a `bodySHA256` query
/// parameter (the hex SHA-256 of the body): both are checked before anything runs.
pub(super) async fn studio_turn(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = verify_webhook(&state, &Method::POST, &uri, &headers, &[]) {
        return refused.into_response();
    }
    if state.verifier.enabled() && !body_hash_matches(&uri, &body) {
        tracing::warn!("refusing a Studio turn whose bodySHA256 does not match its body");
        crate::telemetry::refused("signature");
        return (StatusCode::FORBIDDEN, "bodySHA256 does not match the body").into_response();
    }
    let turn: StudioTurn = match serde_json::from_slice(&body) {
        Ok(turn) => turn,
        Err(e) => {
            // serde's message can quote the customer's text: log where, not what.
            let at = format!(
                "{:?} at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            );
            tracing::warn!(error = %at, "a Studio turn that is not the expected JSON");
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({
                    "error": format!("expected {{conversationSid, body, author}} as JSON strings ({at})")
                })),
            )
                .into_response();
        }
    };
    if turn.conversation_sid.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "conversationSid is required"})),
        )
            .into_response();
    }
    let answer = state
        .chat
        .studio_turn(turn.conversation_sid.trim(), &turn.body, &turn.author);
    let answer = match tokio::time::timeout(STUDIO_TURN_WAIT, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => {
            tracing::warn!("the Studio turn was dropped (conversation over or busy)");
            fallback(&state)
        }
        Err(_) => {
            tracing::warn!(
                wait_secs = STUDIO_TURN_WAIT.as_secs(),
                "the turn took longer than Studio waits; answering with the error line"
            );
            fallback(&state)
        }
    };
    Json(answer).into_response()
}

/// What Studio gets when no turn answered in time.
fn fallback(state: &AppState) -> StudioAnswer {
    StudioAnswer {
        reply: state.config.chat.error_line.clone(),
        action: "continue",
        reason: String::new(),
        summary: String::new(),
    }
}

/// Whether the URL's `bodySHA256` is the hex SHA-256 of `body`.
fn body_hash_matches(uri: &Uri, body: &[u8]) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    let Ok(params) = parse_form(query.as_bytes()) else {
        return false;
    };
    let expected = format!("{:x}", Sha256::digest(body));
    params
        .iter()
        .any(|(k, v)| k == "bodySHA256" && v.eq_ignore_ascii_case(&expected))
}

/// `GET /conversations/{ConversationSid}/handoff`: the record of a chat handed to Flex (who,
/// why, summary, the transcript, the interaction). Needs `Authorization: Bearer <API_TOKEN>`;
/// off (404) without `API_TOKEN`.
pub(super) async fn handoff_record(
    State(state): State<AppState>,
    Path(conversation_sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    record_answer(&state, &headers, "conversation", |state| {
        state.chat.handoff_record(&conversation_sid)
    })
}
