//! The Amazon Connect channel's HTTP edge: `POST /lex/v2` (the Lex V2 code hook, reached
//! through a Lambda) and the handoff record. The work itself is [`crate::connect`]'s.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{record_answer, AppState};
use crate::connect::{
    auth::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
    EventError,
};

/// `POST /lex/v2`: one Lex V2 code-hook event in (the Lambda's input event, as JSON), the Lex V2
/// response out, within `LEX_TURN_BUDGET_MS` ([`crate::connect`]). Bodies over
/// [`crate::connect::MAX_BODY_BYTES`] get 413 (the route's body limit); with
/// `LEX_VALIDATE_SIGNATURES` the `X-Relaybot-Timestamp`/`X-Relaybot-Signature` pair is checked
/// over the raw body before anything else runs (401 with the reason); a body that is not a
/// Lex event gets 400 with what is wrong (never the body's text).
pub(super) async fn code_hook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(refused) =
        state
            .connect
            .verify(header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER), &body)
    {
        tracing::warn!(reason = %refused, "refusing a /lex/v2 request that is not signed with LEX_SHARED_SECRET");
        crate::telemetry::refused("signature");
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": refused.to_string()})),
        )
            .into_response();
    }
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            // serde's message can quote the customer's text: say where, not what.
            let at = format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            );
            return bad_request(EventError::NotJson(at));
        }
    };
    match state.connect.answer(event).await {
        Ok(response) => Json(response).into_response(),
        Err(error) => bad_request(error),
    }
}

fn bad_request(error: EventError) -> Response {
    tracing::warn!(%error, "a /lex/v2 request that is not a Lex V2 event");
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": error.to_string()})),
    )
        .into_response()
}

/// `GET /lex/v2/{sessionId}/handoff`: the record of a Connect contact handed to a queue (who,
/// why, summary, the timestamped transcript). Needs `Authorization: Bearer <API_TOKEN>`; off
/// (404) without `API_TOKEN`.
pub(super) async fn handoff_record(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record_answer(&state, &headers, "Lex session", |state| {
        state.connect.handoff_record(&session_id)
    })
}
