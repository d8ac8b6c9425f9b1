//! The web widget's HTTP edge: the script and its styles, a page to try it, and the widget's
//! WebSocket (origin-checked before the upgrade). The chat itself is [`crate::web`]'s.

use axum::{
    extract::{ws::WebSocketUpgrade, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{voice::public_base, AppState};
use crate::web::{serve_socket, CHAT_PAGE, WIDGET_CSS, WIDGET_JS};

/// `GET /widget.js`: the script a website embeds (`<script src="…/widget.js">`).
pub(super) async fn widget_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// `GET /widget.css`: the widget's styles.
pub(super) async fn widget_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_CSS,
    )
        .into_response()
}

/// `GET /chat`: a page with the widget, to try it.
pub(super) async fn chat_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CHAT_PAGE,
    )
        .into_response()
}

/// The query of the widget's WebSocket URL.
#[derive(Debug, serde::Deserialize)]
pub(super) struct WidgetQuery {
    token: Option<String>,
}

/// `GET /chat/ws`: the widget's WebSocket. A browser's `Origin` must be relaybot's own or one of
/// `CHAT_ALLOWED_ORIGINS` (403 otherwise, before the upgrade); a request without `Origin` is not
/// a browser page and is let through. `?token=` resumes a visitor's conversation.
pub(super) async fn widget_socket(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<WidgetQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !origin_allowed(&state, &headers, origin) {
            tracing::warn!(%origin, "refusing a widget connection from an origin not in CHAT_ALLOWED_ORIGINS");
            crate::telemetry::refused("origin");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let web = state.web.clone();
    let max = state.config.limits.max_frame_bytes;
    upgrade
        .max_message_size(max)
        .read_buffer_size(super::WS_READ_BUFFER_BYTES)
        .write_buffer_size(super::WS_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| serve_socket(web, socket, query.token))
}

/// Whether a page at `origin` may open the widget's WebSocket.
fn origin_allowed(state: &AppState, headers: &HeaderMap, origin: &str) -> bool {
    let allowed = &state.config.chat.allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // relaybot's own pages (`/chat`).
    let own = public_base(&state.config, headers);
    own.eq_ignore_ascii_case(origin)
}
