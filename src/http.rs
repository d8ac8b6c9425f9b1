//! The HTTP edge: the routes Twilio (and operators) reach.
//!
//! | Route | What |
//! |---|---|
//! | `POST /twiml` (and `GET` with a query) | Voice webhook → `<Connect><ConversationRelay>` TwiML |
//! | `GET /ws` | The Conversation Relay WebSocket; one [`crate::relay::session`] per call |
//! | `POST /action` | `<Connect action>` callback when a session ends: hand off, hang up, … |
//! | `GET /calls/{callSid}/handoff` | The handoff record for the human agent (bearer `API_TOKEN`) |
//! | `GET /healthz` | Liveness: `ok` |
//!
//! [`app`] builds the router from an [`AppState`]; [`serve`] runs it on a pre-bound listener until
//! a shutdown future resolves, then waits for live calls (axum does not wait for upgraded
//! WebSockets itself).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::{ws::WebSocketUpgrade, Path, RawForm, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Json, Router,
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::trace::TraceLayer;

use crate::{
    agent::{mask_number, Agent},
    config::Config,
    handoff::{self, HandoffData, HandoffPath, HandoffStore, Route},
    relay::session::{self, HandoffDeps, SessionDeps},
    twilio::{
        rest::CallsClient,
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
    /// How calls leave Conversation Relay, and the handoff records.
    pub handoff: Arc<HandoffDeps>,
    /// Tracks call sessions and their turn tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when calls must stop.
    pub calls_cancel: CancellationToken,
}

/// How long one Calls API request may take before it is retried.
const CALLS_API_TIMEOUT: Duration = Duration::from_secs(5);

impl AppState {
    /// State for `config` and `agent`. The handoff route is chosen here: Calls API → Studio when
    /// `STUDIO_FLOW_URL` and REST credentials are set, else `end` + `/action`.
    ///
    /// # Errors
    /// A message when the Calls API client cannot be built.
    pub fn new(config: Config, agent: Agent) -> Result<Self, String> {
        let route = match (
            &config.handoff.studio_flow_url,
            config.twilio.rest_credentials(),
            &config.twilio.account_sid,
        ) {
            (Some(flow), Some((user, password)), Some(account)) => Route::CallsApiToStudio {
                client: CallsClient::new(
                    &config.twilio.api_base,
                    account,
                    &user,
                    password,
                    CALLS_API_TIMEOUT,
                )?,
                flow: flow.clone(),
            },
            _ => Route::ConnectAction,
        };
        let handoff = HandoffDeps {
            route,
            store: HandoffStore::new(config.handoff.record_ttl),
            handoff_line: config.handoff.handoff_line.clone(),
            end_call_line: config.handoff.end_call_line.clone(),
            max_wait: config.handoff.max_wait,
        };
        Ok(AppState {
            config: Arc::new(config),
            agent: Arc::new(agent),
            handoff: Arc::new(handoff),
            tracker: TaskTracker::new(),
            calls_cancel: CancellationToken::new(),
        })
    }

    /// A one-line description of where handoffs go, for the startup log.
    pub fn describe_handoff(&self) -> String {
        let h = &self.config.handoff;
        match (&self.handoff.route, &h.workflow_sid, &h.studio_flow_url) {
            (Route::CallsApiToStudio { flow, .. }, _, _) => {
                format!("handoffs redirect the live call to the Studio flow {flow} through the Calls API")
            }
            (Route::ConnectAction, Some(ww), _) => {
                format!("handoffs end the session and /action enqueues the caller in workflow {ww}")
            }
            (Route::ConnectAction, None, Some(flow)) => format!(
                "handoffs end the session and /action redirects to the Studio flow {flow} (set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to move calls through the Calls API instead)"
            ),
            (Route::ConnectAction, None, None) => {
                "no human is configured: set TWILIO_WORKFLOW_SID or STUDIO_FLOW_URL for handoffs to reach Flex".into()
            }
        }
    }
}

/// The router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/twiml", any(voice_webhook))
        .route("/action", any(connect_action))
        .route("/ws", get(relay_socket))
        .route("/calls/{call_sid}/handoff", get(handoff_record))
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
///
/// - `completed` (caller hung up) → `<Response/>`.
/// - A call the Calls API already moved → `<Response/>` (harmless; Twilio runs the redirect).
/// - `ended` with a handoff's `HandoffData` → a human: `<Enqueue>` (`TWILIO_WORKFLOW_SID`), else
///   `<Redirect>` to Studio (`STUDIO_FLOW_URL`), else an apology and `<Hangup/>`.
/// - `ended` from `end_call` (or with no data) → `<Hangup/>`.
/// - `failed` with the call still up → a human if configured, else an apology and `<Hangup/>`.
async fn connect_action(State(state): State<AppState>, RawForm(form): RawForm) -> Response {
    let callback = match parse_form(&form) {
        Ok(params) => ActionCallback::from_params(params),
        Err(e) => {
            tracing::warn!(error = %e, "action callback with a malformed form");
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    let call_sid = callback.call_sid.clone().unwrap_or_default();
    tracing::info!(
        call_sid = %call_sid,
        status = ?callback.session_status,
        call_status = callback.call_status.as_deref(),
        duration_secs = callback.session_duration_secs,
        error_code = callback.error_code.as_deref(),
        error_message = callback.error_message.as_deref(),
        "conversation relay session ended"
    );
    let record = state.handoff.store.get(&call_sid);
    let moved = record
        .as_ref()
        .is_some_and(|r| r.path == HandoffPath::CallsApiToStudio);
    let call_over = callback
        .call_status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("completed"));
    let body = match &callback.session_status {
        SessionStatus::Completed => twiml::empty_response(),
        _ if call_over => twiml::empty_response(),
        _ if moved => {
            tracing::info!("the Calls API already moved this call; nothing more to do here");
            twiml::empty_response()
        }
        SessionStatus::Ended => {
            let data = callback.handoff_data.as_deref().and_then(|raw| {
                serde_json::from_str::<HandoffData>(raw)
                    .map_err(|e| tracing::warn!(error = %e, "HandoffData is not ours; hanging up"))
                    .ok()
            });
            match data {
                Some(data) if data.is_handoff() => to_human(&state, &data),
                _ => twiml::say_and_hang_up(None),
            }
        }
        SessionStatus::Failed => {
            let data = HandoffData {
                reason_code: handoff::REASON_HANDOFF.into(),
                reason: "The voice agent lost the call's connection.".into(),
                summary: record.map(|r| r.summary).unwrap_or_default(),
                call_sid: call_sid.clone(),
                from: callback
                    .params
                    .iter()
                    .find(|(k, _)| k == "From")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
                transcript: Vec::new(),
            };
            to_human(&state, &data)
        }
        SessionStatus::Other(_) => twiml::say_and_hang_up(None),
    };
    xml(body)
}

/// TwiML that puts the caller through to a person, or apologises when none is configured.
fn to_human(state: &AppState, data: &HandoffData) -> String {
    let config = &state.config.handoff;
    if let Some(workflow) = &config.workflow_sid {
        tracing::info!(%workflow, "enqueuing the caller for Flex");
        handoff::enqueue_twiml(workflow, data)
    } else if let Some(flow) = &config.studio_flow_url {
        tracing::info!("returning the caller to the Studio flow");
        handoff::studio_redirect_twiml(flow, data)
    } else {
        tracing::error!(
            "a handoff was asked for but no human is configured: set TWILIO_WORKFLOW_SID (Flex workflow) or STUDIO_FLOW_URL (Studio flow); the caller heard an apology"
        );
        twiml::say_and_hang_up(Some(&config.unavailable_line))
    }
}

/// `GET /calls/{callSid}/handoff`: the handoff record (caller, reason, summary, transcript) as
/// JSON, for a Flex plugin or CRM. Needs `Authorization: Bearer <API_TOKEN>`; off (404) when
/// `API_TOKEN` is unset. Records are in memory, per instance, and expire.
async fn handoff_record(
    State(state): State<AppState>,
    Path(call_sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = &state.config.handoff.api_token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = token.expose_secret().as_bytes();
    if !bool::from(presented.as_bytes().ct_eq(expected)) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required",
        )
            .into_response();
    }
    match state.handoff.store.get(&call_sid) {
        Some(record) => Json(record).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no handoff record for this call"})),
        )
            .into_response(),
    }
}

/// `GET /ws`: upgrades to the Conversation Relay WebSocket and runs the call.
async fn relay_socket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let deps = SessionDeps {
        agent: state.agent.clone(),
        welcome_greeting: state.config.welcome_greeting.clone(),
        error_line: state.config.error_line.clone(),
        handoff: state.handoff.clone(),
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
