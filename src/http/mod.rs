//! The HTTP edge: the routes Twilio (and operators) reach.
//!
//! | Route | What |
//! |---|---|
//! | `POST /twiml` (and `GET` with a query) | Voice webhook → `<Connect><ConversationRelay>` TwiML |
//! | `GET /ws` | The Conversation Relay WebSocket; one [`crate::relay::session`] per call |
//! | `POST /action` | `<Connect action>` callback when a session ends: hand off, hang up, … |
//! | `GET /calls/{callSid}/handoff` | The handoff record for the human agent (bearer `API_TOKEN`) |
//! | `POST /lex/v2` | The Amazon Connect Lex V2 code hook, through a Lambda ([`crate::connect`]) |
//! | `GET /lex/v2/{sessionId}/handoff` | A Connect handoff's record (bearer `API_TOKEN`) |
//! | `GET /healthz` | Liveness: `ok` |
//! | `GET /metrics` | Prometheus metrics ([`crate::telemetry`]); bearer `API_TOKEN` when set |
//!
//! [`app`] builds the router from an [`AppState`]; [`serve`] runs it on a pre-bound listener. When
//! the shutdown future resolves it drains: new calls are turned away politely (`/twiml` answers
//! with a line and a handoff or hang-up, `/healthz` says `draining`), live calls may finish for
//! `DRAIN_TIMEOUT`, then those left are handed to a human or ended with a line, and only then
//! does the HTTP server stop (axum does not wait for upgraded WebSockets itself).
//!
//! `X-Twilio-Signature` is checked on `/twiml`, `/action` and the upgrade before anything else
//! runs ([`crate::security`]); the upgrade also needs the call token `/twiml` minted.

mod chat;
mod connect;
mod voice;
mod web;

use voice::{connect_action, handoff_record, relay_socket, voice_webhook};
#[cfg(test)]
use voice::{public_base, websocket_base};
pub use voice::{WS_READ_BUFFER_BYTES, WS_WRITE_BUFFER_BYTES};

use std::{
    future::{Future, IntoFuture},
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    extract::{ws::WebSocketUpgrade, Path, Query, RawForm, State},
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{any, get},
    serve::ListenerExt as _,
    Json, Router,
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::trace::TraceLayer;

use crate::{
    agent::{mask_number, Brain, Departure},
    chat::{ChatAgents, ChatState},
    config::Config,
    conversation::Persona,
    handoff::{self, HandoffData, HandoffPath, HandoffStore, Route},
    relay::{
        resume::ResumeStore,
        session::{self, HandoffDeps, SessionDeps},
    },
    security::{CallTokens, Verifier},
    telemetry,
    twilio::{
        rest::{CallsClient, Rest},
        signature,
        twiml::{self, ConnectRelay},
        webhooks::{parse_form, ActionCallback, SessionStatus, VoiceWebhook},
    },
};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// The voice agent every call uses (prompt written for the ear, tools, spoken lines).
    pub voice: Arc<Persona>,
    /// How calls leave Conversation Relay, and the handoff records.
    pub handoff: Arc<HandoffDeps>,
    /// Tracks call sessions and their turn tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The chat channel (Twilio Conversations).
    pub chat: ChatState,
    /// The web chat widget.
    pub web: crate::web::WebState,
    /// The Amazon Connect channel (the Lex V2 code hook).
    pub connect: crate::connect::ConnectState,
    /// Cancelled when calls must stop at once (after the drain); always after `wrap_up`.
    pub calls_cancel: CancellationToken,
    /// Cancelled when a shutdown starts: no new calls.
    pub draining: CancellationToken,
    /// Cancelled when the drain time is up: live calls are handed off or ended.
    pub wrap_up: CancellationToken,
    /// One permit per live call (`MAX_CONCURRENT_CALLS`).
    pub call_slots: Arc<Semaphore>,
    /// Checks `X-Twilio-Signature`.
    pub verifier: Arc<Verifier>,
    /// Mints and redeems call tokens.
    pub call_tokens: Arc<CallTokens>,
    /// Dropped calls' conversations, for reconnects.
    pub resume: ResumeStore,
    /// `http://ip:port` we listen on, used as the signed URL's base when `PUBLIC_URL` is unset
    /// (loopback binds only).
    pub local_base: Arc<OnceLock<String>>,
    /// `config.limits`, shared by every call (not copied per call).
    pub limits: Arc<crate::config::LimitsConfig>,
}

/// How long one Calls API request may take before it is retried.
const CALLS_API_TIMEOUT: Duration = Duration::from_secs(5);

impl AppState {
    /// State for `config`, answering calls with `voice` and chats with `chat_agents`. The handoff route is chosen here: Calls API → Studio when
    /// `STUDIO_FLOW_URL` and REST credentials are set, else `end` + `/action`.
    ///
    /// # Errors
    /// A message when the Calls API client cannot be built.
    pub fn new(
        config: Config,
        voice: Arc<dyn Brain>,
        chat_agents: ChatAgents,
    ) -> Result<Self, String> {
        let human_available =
            config.handoff.workflow_sid.is_some() || config.handoff.studio_flow_url.is_some();
        // Connect's agents: the voice brain, and the chat brain that may always hand off.
        let connect_brains = (voice.clone(), chat_agents.studio.clone());
        let voice = Arc::new(Persona::voice(&config, voice, human_available));
        let route = match (
            &config.handoff.studio_flow_url,
            config.twilio.rest_credentials(),
            &config.twilio.account_sid,
        ) {
            (Some(flow), Some((user, password)), Some(account)) => Route::CallsApiToStudio {
                client: CallsClient::new(
                    &config.twilio.api_base,
                    account,
                    Rest::new(&user, password, CALLS_API_TIMEOUT)?,
                ),
                flow: flow.clone(),
            },
            _ => Route::ConnectAction,
        };
        let handoff = HandoffDeps {
            route,
            store: HandoffStore::new(config.handoff.record_ttl),
            max_wait: config.handoff.max_wait,
        };
        let mut tokens = Vec::new();
        if config.security.validate_signatures {
            tokens.extend(config.twilio.auth_token.clone());
            tokens.extend(config.security.secondary_auth_token.clone());
        }
        // Installs the Prometheus recorder before the first call records anything.
        telemetry::metrics();
        let config = Arc::new(config);
        let tracker = TaskTracker::new();
        let draining = CancellationToken::new();
        let chat = ChatState::new(config.clone(), chat_agents, draining.clone())?;
        let connect = crate::connect::ConnectState::new(
            config.clone(),
            connect_brains.0,
            connect_brains.1,
            chat.clone(),
        );
        let local_base = Arc::new(OnceLock::new());
        let web = crate::web::WebState::new(
            chat.clone(),
            config.security.call_token_secret.clone(),
            local_base.clone(),
        );
        Ok(AppState {
            verifier: Arc::new(Verifier::new(tokens)),
            call_tokens: Arc::new(CallTokens::new(
                config.security.call_token_secret.clone(),
                config.security.call_token_ttl,
            )),
            call_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_calls)),
            resume: ResumeStore::new(config.limits.reconnect_grace),
            limits: Arc::new(config.limits.clone()),
            config,
            chat,
            web,
            connect,
            voice,
            handoff: Arc::new(handoff),
            tracker,
            calls_cancel: CancellationToken::new(),
            draining,
            wrap_up: CancellationToken::new(),
            local_base,
        })
    }

    /// Whether a human can take calls (a Flex workflow or a Studio flow is configured).
    pub fn human_available(&self) -> bool {
        self.config.handoff.workflow_sid.is_some() || self.config.handoff.studio_flow_url.is_some()
    }

    /// The base of the URLs Twilio signs: `PUBLIC_URL`, else the address we listen on.
    pub fn signing_base(&self) -> String {
        match &self.config.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => self
                .local_base
                .get()
                .cloned()
                .unwrap_or_else(|| format!("http://{}:{}", self.config.host, self.config.port)),
        }
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
        .route(crate::chat::WEBHOOK_PATH, any(chat::conversations_webhook))
        .route("/conversations/turn", axum::routing::post(chat::studio_turn))
        .route(
            "/conversations/{conversation_sid}/handoff",
            get(chat::handoff_record),
        )
        .route(
            "/lex/v2",
            axum::routing::post(connect::code_hook).layer(axum::extract::DefaultBodyLimit::max(
                crate::connect::MAX_BODY_BYTES,
            )),
        )
        .route("/lex/v2/{session_id}/handoff", get(connect::handoff_record))
        .route("/widget.js", get(web::widget_js))
        .route("/widget.css", get(web::widget_css))
        .route("/chat", get(web::chat_page))
        .route("/chat/ws", get(web::widget_socket))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics_page))
        // Spans name the path only: the WebSocket URL's query carries the call token.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
                })
                // Our 5xx answers are decisions already logged by their handlers (a draining
                // `/healthz`, a refused upgrade at the cap): not errors to log again.
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        .with_state(state)
}

/// `GET /healthz`: `ok`, or 503 `draining` once a shutdown has started.
async fn health(State(state): State<AppState>) -> Response {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ok".into_response()
    }
}

/// A request refused for its signature: 403.
struct Forbidden;

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, "invalid Twilio signature").into_response()
    }
}

/// Refuses (403) a request whose `X-Twilio-Signature` does not match, before anything runs.
fn verify_webhook(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), Forbidden> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", state.signing_base());
    // GET signs the URL (its query included) alone; POST adds the form body's parameters.
    let params: &[(String, String)] = if *method == Method::GET { &[] } else { form };
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    state
        .verifier
        .check_webhook(&url, params, header)
        .map_err(|e| {
            // A GET webhook's query holds the caller's number: log the bare URL only.
            let checked = url.split('?').next().unwrap_or_default();
            tracing::warn!(error = %e, url = %checked, "refusing a request that is not signed by Twilio");
            telemetry::refused("signature");
            Forbidden
        })
}

/// A Twilio webhook's form parameters, read (body for POST, query for GET) and checked against
/// `X-Twilio-Signature` before the handler runs: 400 for a malformed form, 403 for a bad
/// signature.
pub(crate) struct SignedForm(pub(crate) Vec<(String, String)>);

impl axum::extract::FromRequest<AppState> for SignedForm {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let RawForm(form) = RawForm::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let params = parse_form(&form).map_err(|e| {
            tracing::warn!(error = %e, path = uri.path(), "webhook with a malformed form");
            (StatusCode::BAD_REQUEST, e).into_response()
        })?;
        verify_webhook(state, &method, &uri, &headers, &params)
            .map_err(IntoResponse::into_response)?;
        Ok(SignedForm(params))
    }
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then drains (see the module
/// docs) and returns.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let _ = state.local_base.set(format!("http://{addr}"));
    }
    let stop_http = CancellationToken::new();
    // Histogram samples are folded into buckets on a scrape; without scrapes, here.
    let upkeep = stop_http.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(telemetry::UPKEEP_EVERY);
        while upkeep.run_until_cancelled(every.tick()).await.is_some() {
            telemetry::metrics().upkeep();
        }
    });
    let mut server = tokio::spawn(
        axum::serve(low_latency(listener), app(state.clone()))
            .with_graceful_shutdown(stop_http.clone().cancelled_owned())
            .into_future(),
    );
    tokio::select! {
        () = shutdown => drain(&state).await,
        // The server only stops by itself on an I/O error.
        result = &mut server => return result.map_err(std::io::Error::other)?,
    }
    stop_http.cancel();
    // Let requests in flight (a last /action) finish, within reason.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(result) => result.map_err(std::io::Error::other)?,
        Err(_) => Ok(()),
    }
}

/// `listener`, with `TCP_NODELAY` set on every accepted socket.
///
/// Conversation Relay frames are small (a token is ~60 bytes): with Nagle's algorithm on, a
/// frame written while the previous one waits for its (delayed, up to 40 ms) ACK is held back,
/// which a caller hears as stutter. Every other socket we open sets it too (the model's and the
/// Calls API's reqwest clients).
pub fn low_latency(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    })
}

/// How long `/action` callbacks are still answered after the last call left.
const ACTION_GRACE: Duration = Duration::from_secs(2);

/// Turns new calls away, lets live ones finish, then hands off or ends the rest.
async fn drain(state: &AppState) {
    state.draining.cancel();
    telemetry::metrics().draining.set(1.0);
    let limits = &state.config.limits;
    let tracker = &state.tracker;
    let live = tracker.len() + state.call_tokens.pending();
    tracing::info!(
        live,
        timeout_secs = limits.drain_timeout.as_secs(),
        "draining: new calls are turned away; live calls may finish"
    );
    let deadline = tokio::time::Instant::now() + limits.drain_timeout;
    // Callers who got their TwiML just before the signal still connect: wait for their tokens
    // to be redeemed (or to expire), within the drain time.
    let waiting = state.call_tokens.pending();
    if waiting > 0 {
        tracing::info!(
            callers = waiting,
            "waiting for callers who got their TwiML to connect (at most CALL_TOKEN_TTL_SECS); a second Ctrl-C stops now"
        );
    }
    while state.call_tokens.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            live = tracker.len(),
            "drain time is up; handing off or ending the calls still live"
        );
        state.wrap_up.cancel();
        let leave = state.config.handoff.max_wait + Duration::from_secs(10);
        if tokio::time::timeout(leave, tracker.wait()).await.is_err() {
            tracing::warn!(
                live = tracker.len(),
                "ending calls that did not leave in time"
            );
            state.calls_cancel.cancel();
            tracker.wait().await;
        }
    }
    // Chats: idle ones left when the drain started; busy ones finish their turn.
    let chat_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
    state.chat.drain(chat_deadline).await;
    state.web.drain(chat_deadline).await;
    state.connect.drain(chat_deadline).await;
    if live > 0 {
        // Twilio requests the action URL right after a session ends (handoffs!).
        tokio::time::sleep(ACTION_GRACE).await;
    }
    tracing::info!("drained; stopping");
}

/// A request without the right `API_TOKEN` bearer token: 401.
struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required",
        )
            .into_response()
    }
}

/// Checks `Authorization: Bearer <API_TOKEN>` in constant time when `API_TOKEN` is set.
fn check_api_token(state: &AppState, headers: &HeaderMap) -> Result<(), Unauthorized> {
    let Some(token) = &state.config.handoff.api_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = token.expose_secret().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(Unauthorized)
    }
}

/// `GET /metrics`: every metric in the Prometheus text format (see [`crate::telemetry`] for
/// the names and units). Needs `Authorization: Bearer <API_TOKEN>` when `API_TOKEN` is set.
async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = check_api_token(&state, &headers) {
        return refused.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::metrics().render(),
    )
        .into_response()
}

/// A handoff record as JSON, behind `API_TOKEN` (404 when it is unset or there is no record of
/// this `what`).
fn record_answer(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    find: impl FnOnce(&AppState) -> Option<handoff::HandoffRecord>,
) -> Response {
    if state.config.handoff.api_token.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Err(refused) = check_api_token(state, headers) {
        return refused.into_response();
    }
    match find(state) {
        Some(record) => Json(record).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no handoff record for this {what}")})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    /// Nagle's algorithm holds a small frame back while the previous one waits for its ACK:
    /// every socket the server accepts must have it off.
    #[tokio::test]
    async fn accepted_sockets_have_tcp_nodelay() {
        use axum::serve::Listener as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = low_latency(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
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
