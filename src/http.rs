//! The HTTP edge: the routes Twilio (and operators) reach.
//!
//! | Route | What |
//! |---|---|
//! | `POST /twiml` (and `GET` with a query) | Voice webhook → `<Connect><ConversationRelay>` TwiML |
//! | `GET /ws` | The Conversation Relay WebSocket; one [`crate::relay::session`] per call |
//! | `POST /action` | `<Connect action>` callback when a session ends |
//! | `GET /healthz` | Liveness: `ok` |
//!
//! [`app`] builds the router from an [`AppState`]; [`serve`] runs it on a pre-bound listener until
//! a shutdown future resolves, then waits for live calls (axum does not wait for upgraded
//! WebSockets itself).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::{ws::WebSocketUpgrade, RawForm, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::trace::TraceLayer;

use crate::{
    agent::{mask_number, Agent},
    config::Config,
    relay::session::{self, SessionDeps},
    twilio::{
        twiml::{self, ConnectRelay},
        webhooks::{parse_form, ActionCallback, SessionStatus, VoiceWebhook},
    },
};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// The agent every call uses.
    pub agent: Arc<Agent>,
    /// Tracks call sessions and their turn tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when calls must stop.
    pub calls_cancel: CancellationToken,
}

impl AppState {
    /// State for `config` and `agent`.
    pub fn new(config: Config, agent: Agent) -> Self {
        AppState {
            config: Arc::new(config),
            agent: Arc::new(agent),
            tracker: TaskTracker::new(),
            calls_cancel: CancellationToken::new(),
        }
    }
}

/// The router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/twiml", any(voice_webhook))
        .route("/action", any(connect_action))
        .route("/ws", get(relay_socket))
        .route("/healthz", get(|| async { "ok" }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then gives live calls up to
/// `drain` to finish before cancelling them.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let tracker = state.tracker.clone();
    let calls_cancel = state.calls_cancel.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            live = tracker.len(),
            "calls still live after the drain time; ending them"
        );
        calls_cancel.cancel();
        tracker.wait().await;
    }
    Ok(())
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// The base URL Twilio reaches us at: `PUBLIC_URL`, else rebuilt from the proxy headers ngrok
/// and load balancers set, else the Host header.
fn public_base(config: &Config, headers: &HeaderMap) -> String {
    if let Some(url) = &config.public_url {
        return url.as_str().trim_end_matches('/').to_owned();
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let proto = match first("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let safe_host = |h: &&str| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
    };
    let host = first("x-forwarded-host")
        .filter(safe_host)
        .or_else(|| first("host").filter(safe_host))
        .map_or_else(|| format!("{}:{}", config.host, config.port), str::to_owned);
    format!("{proto}://{host}")
}

/// `http(s)://host` → `ws(s)://host`.
fn websocket_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// `POST /twiml`: answers an incoming call with `<Connect><ConversationRelay>`.
async fn voice_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawForm(form): RawForm,
) -> Response {
    let hook = match parse_form(&form) {
        Ok(params) => VoiceWebhook::from_params(params),
        Err(e) => {
            tracing::warn!(error = %e, "voice webhook with a malformed form");
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    let base = public_base(&state.config, &headers);
    let relay = &state.config.relay;
    let mut parameters: Vec<(String, String)> = [
        ("From", &hook.from),
        ("To", &hook.to),
        ("CallSid", &hook.call_sid),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
    .collect();
    parameters.extend(relay.parameters.iter().cloned());
    let body = ConnectRelay {
        action: &format!("{base}/action"),
        url: &format!("{}/ws", websocket_base(&base)),
        attributes: &relay.attributes,
        languages: &relay.languages,
        parameters: &parameters,
    }
    .to_xml();
    tracing::info!(
        call_sid = hook.call_sid.as_deref().unwrap_or("-"),
        from = %hook.from.as_deref().map(mask_number).unwrap_or_default(),
        "incoming call: connecting it to Conversation Relay"
    );
    xml(body)
}

/// `POST /action`: the session ended; tell Twilio what the call does next.
async fn connect_action(RawForm(form): RawForm) -> Response {
    let callback = match parse_form(&form) {
        Ok(params) => ActionCallback::from_params(params),
        Err(e) => {
            tracing::warn!(error = %e, "action callback with a malformed form");
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    tracing::info!(
        call_sid = callback.call_sid.as_deref().unwrap_or("-"),
        status = ?callback.session_status,
        duration_secs = callback.session_duration_secs,
        error_code = callback.error_code.as_deref(),
        error_message = callback.error_message.as_deref(),
        "conversation relay session ended"
    );
    match callback.session_status {
        SessionStatus::Completed => xml(twiml::empty_response()),
        _ => xml(twiml::say_and_hang_up(None)),
    }
}

/// `GET /ws`: upgrades to the Conversation Relay WebSocket and runs the call.
async fn relay_socket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let deps = SessionDeps {
        agent: state.agent.clone(),
        welcome_greeting: state.config.welcome_greeting.clone(),
        error_line: state.config.error_line.clone(),
        tracker: state.tracker.clone(),
    };
    let cancel = state.calls_cancel.child_token();
    let tracker = state.tracker.clone();
    upgrade.on_upgrade(move |socket| tracker.track_future(session::run(socket, deps, cancel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn public_base_prefers_public_url_then_forwarded_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert_eq!(public_base(&config(&[]), &headers), "http://127.0.0.1:8080");
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers.insert("x-forwarded-host", "abc.ngrok.app".parse().unwrap());
        assert_eq!(public_base(&config(&[]), &headers), "https://abc.ngrok.app");
        assert_eq!(
            public_base(
                &config(&[("PUBLIC_URL", "https://bot.example.com/")]),
                &headers
            ),
            "https://bot.example.com"
        );
        headers.insert("x-forwarded-host", "evil\"host".parse().unwrap());
        assert_eq!(
            public_base(&config(&[]), &headers),
            "https://127.0.0.1:8080"
        );
        assert_eq!(websocket_base("https://a.b"), "wss://a.b");
        assert_eq!(websocket_base("http://a.b:1"), "ws://a.b:1");
    }
}
