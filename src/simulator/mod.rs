//! `relaybot call`: a terminal caller that plays Twilio's part of a Conversation Relay call, so
//! the agent can be tried with no Twilio account. The integration tests drive the server with the
//! same [`Caller`].
//!
//! What it does, in Twilio's order: POST the voice webhook (`/twiml`, signed with
//! `TWILIO_AUTH_TOKEN` when set), read the `<Connect><ConversationRelay>` TwiML, open the
//! WebSocket (to the local server even when the TwiML names a public `wss://` host), send
//! `setup` with the `<Parameter>`s as `customParameters`, then `prompt`/`dtmf`/`interrupt` frames
//! for what the caller does, and `info agentSpeaking on/off` around each reply when the TwiML
//! subscribes to speaker events. When the session ends with `end`, it requests the
//! `<Connect action>` URL like Twilio does and prints the TwiML that comes back.

use std::{io::Write as _, time::Duration};

use futures::{SinkExt, StreamExt};
use rand::RngExt as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::{io::AsyncBufReadExt, net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, handshake::client::Request as UpgradeRequest,
        Message as WsMessage,
    },
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    relay::protocol::{Dtmf, Inbound, Info, Interrupt, Outbound, Prompt, Setup},
    twilio::{signature, twiml},
};

pub mod chat;
pub mod chat_customer;
pub mod conversations_api;

/// What can go wrong while playing Twilio.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An HTTP request to the server failed.
    #[error("HTTP request to {url} failed: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The TwiML was not a `<Connect><ConversationRelay url=…>` document.
    #[error("unexpected TwiML: {0}")]
    Twiml(String),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The server sent a frame that is not a valid outbound message.
    #[error("server sent an invalid frame: {0}")]
    BadFrame(String),
    /// Nothing came in time.
    #[error("timed out after {0:?} waiting for the agent")]
    Timeout(Duration),
}

/// How to place the call.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// `From`: the caller's number.
    pub from: String,
    /// `To`: the number called.
    pub to: String,
    /// Signs requests like Twilio when set.
    pub auth_token: Option<SecretString>,
    /// The public base URL the server believes it has (`PUBLIC_URL`), used for signing.
    pub public_url: Option<String>,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            from: "+15005550006".into(),
            to: "+15005550001".into(),
            auth_token: None,
            public_url: None,
        }
    }
}

/// One HTTP client for every simulated call (building one loads the TLS roots, which is slow).
fn http_client(base: &str) -> Result<reqwest::Client, SimError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| SimError::Http {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// A Twilio-style id: a two-letter prefix and 32 hex digits.
pub fn new_sid(prefix: &str) -> String {
    let mut rng = rand::rng();
    let hex: String = (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("digit < 16"))
        .collect();
    format!("{prefix}{hex}")
}

/// What a Twilio caller needs from a `<Response><Connect><ConversationRelay url=…>` answer.
#[derive(Debug, Clone)]
pub struct RelayTwiml {
    /// The `<Connect action>` URL, if any.
    pub action: Option<String>,
    /// The `<ConversationRelay>` element.
    pub relay: twiml::Element,
    /// Its `url` attribute: the WebSocket URL as Twilio would request (and sign) it.
    pub url: String,
}

impl RelayTwiml {
    /// Reads the `<Connect><ConversationRelay url=…>` of a TwiML document.
    ///
    /// # Errors
    /// [`SimError::Twiml`] when the document is not XML, has no `<Connect>` with a
    /// `<ConversationRelay>` in it (a server at capacity answers with `<Say>` and `<Hangup>`), or
    /// the relay has no `url`.
    pub fn parse(body: &str) -> Result<Self, SimError> {
        let root = twiml::parse(body).map_err(SimError::Twiml)?;
        let connect = root
            .find("Connect")
            .ok_or_else(|| SimError::Twiml(format!("no <Connect> in {body}")))?;
        let relay = connect
            .find("ConversationRelay")
            .ok_or_else(|| SimError::Twiml(format!("no <ConversationRelay> in {body}")))?;
        let url = relay
            .attr("url")
            .ok_or_else(|| SimError::Twiml("<ConversationRelay> has no url".into()))?
            .to_owned();
        Ok(RelayTwiml {
            action: connect.attr("action").map(str::to_owned),
            relay: relay.clone(),
            url,
        })
    }
}

/// The WebSocket URL to dial for a `<ConversationRelay url>` on the server at `base`
/// (`http://127.0.0.1:8080`): `base`'s host and port (`wss` when `base` is `https`) with
/// `relay_url`'s path and query, since the TwiML may name a public `wss://` host.
///
/// # Errors
/// [`SimError::Twiml`] when either URL does not parse.
pub fn local_ws_url(relay_url: &str, base: &str) -> Result<String, SimError> {
    let parsed = url::Url::parse(relay_url)
        .map_err(|e| SimError::Twiml(format!("bad url {relay_url:?}: {e}")))?;
    let local =
        url::Url::parse(base).map_err(|e| SimError::Twiml(format!("bad base {base:?}: {e}")))?;
    let scheme = if local.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    let mut target = format!(
        "{scheme}://{}{}{}",
        local.host_str().unwrap_or("127.0.0.1"),
        local.port().map(|p| format!(":{p}")).unwrap_or_default(),
        parsed.path()
    );
    if let Some(query) = parsed.query() {
        target.push('?');
        target.push_str(query);
    }
    Ok(target)
}

/// The WebSocket upgrade request Twilio would send for a `<ConversationRelay url>`, aimed at the
/// server at `base` (see [`local_ws_url`]) and, when `auth_token` is set, signed over `relay_url`
/// as written, as Twilio does.
///
/// # Errors
/// [`SimError::Twiml`] for a URL that does not parse, [`SimError::WebSocket`] for a request that
/// cannot be built.
pub fn relay_upgrade(
    relay_url: &str,
    base: &str,
    auth_token: Option<&str>,
) -> Result<UpgradeRequest, SimError> {
    let target = local_ws_url(relay_url, base)?;
    let mut request = target
        .as_str()
        .into_client_request()
        .map_err(|e| SimError::WebSocket(format!("request for {target}: {e}")))?;
    if let Some(token) = auth_token {
        let sig = signature::sign(token, relay_url, &[]);
        request.headers_mut().insert(
            signature::HEADER,
            sig.parse()
                .map_err(|_| SimError::WebSocket("bad signature header".into()))?,
        );
    }
    Ok(request)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One reply of the agent: the text frames up to and including `last: true`.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Every `text` token in order (including the empty closing one).
    pub tokens: Vec<String>,
    /// The tokens joined.
    pub text: String,
    /// Non-text frames seen while waiting (`play`, `sendDigits`, `language`, `end`).
    pub others: Vec<Outbound>,
}

/// A call in progress, seen from Twilio's side.
pub struct Caller {
    /// The call's `CallSid`.
    pub call_sid: String,
    /// The session's `sessionId`.
    pub session_id: String,
    /// The `<ConversationRelay>` element the server answered with.
    pub relay: twiml::Element,
    /// The `<Connect action>` URL, if any.
    pub action: Option<String>,
    base: String,
    options: DialOptions,
    http: reqwest::Client,
    socket: Socket,
    started: std::time::Instant,
}

impl Caller {
    /// Rings the server at `base` (`http://127.0.0.1:8080`) the way Twilio does and sends `setup`.
    ///
    /// # Errors
    /// [`SimError`] when the webhook, the TwiML or the WebSocket fails.
    pub async fn dial(base: &str, options: DialOptions) -> Result<Self, SimError> {
        let base = base.trim_end_matches('/').to_owned();
        let http = http_client(&base)?;
        let call_sid = new_sid("CA");
        let account_sid = new_sid("AC");
        let form = vec![
            ("AccountSid".to_owned(), account_sid.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
            ("CallSid".to_owned(), call_sid.clone()),
            ("CallStatus".to_owned(), "ringing".to_owned()),
            ("Direction".to_owned(), "inbound".to_owned()),
            ("From".to_owned(), options.from.clone()),
            ("To".to_owned(), options.to.clone()),
        ];
        let twiml_url = format!("{base}/twiml");
        let body = post_form(
            &http,
            &twiml_url,
            &signed_url(&options, &base, "/twiml"),
            &form,
            &options,
        )
        .await?;
        Self::connect(&base, &body, call_sid, options).await
    }

    /// Follows a `<Connect><ConversationRelay>` document for `call_sid` as Twilio does: opens the
    /// WebSocket and sends `setup`. Used by [`Caller::dial`], and to reconnect a call with the
    /// TwiML `/action` answered.
    ///
    /// # Errors
    /// [`SimError`] when the TwiML or the WebSocket fails.
    pub async fn connect(
        base: &str,
        body: &str,
        call_sid: String,
        options: DialOptions,
    ) -> Result<Self, SimError> {
        let base = base.trim_end_matches('/').to_owned();
        let http = http_client(&base)?;
        let account_sid = new_sid("AC");
        let RelayTwiml { action, relay, url } = RelayTwiml::parse(body)?;
        let request = relay_upgrade(
            &url,
            &base,
            options.auth_token.as_ref().map(|t| t.expose_secret()),
        )?;
        let target = request.uri().to_string();
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| SimError::WebSocket(format!("cannot connect to {target}: {e}")))?;

        let custom_parameters = relay.parameters();
        let session_id = new_sid("VX");
        let mut caller = Caller {
            call_sid: call_sid.clone(),
            session_id: session_id.clone(),
            action,
            relay,
            base,
            options: options.clone(),
            http,
            socket,
            started: std::time::Instant::now(),
        };
        caller
            .send(&Inbound::Setup(Box::new(Setup {
                session_id,
                account_sid,
                call_sid,
                from: options.from.clone(),
                to: options.to.clone(),
                call_type: "PSTN".into(),
                direction: "inbound".into(),
                call_status: "RINGING".into(),
                custom_parameters,
                ..Setup::default()
            })))
            .await?;
        Ok(caller)
    }

    /// The welcome greeting Twilio would speak.
    pub fn welcome_greeting(&self) -> Option<&str> {
        self.relay.attr("welcomeGreeting")
    }

    /// Whether the TwiML subscribes to `agentSpeaking`/`clientSpeaking` events.
    pub fn speaker_events(&self) -> bool {
        ["events", "debug"]
            .iter()
            .filter_map(|a| self.relay.attr(a))
            .any(|v| v.split_whitespace().any(|w| w == "speaker-events"))
    }

    /// Sends a message as Twilio would.
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn send(&mut self, message: &Inbound) -> Result<(), SimError> {
        let text = serde_json::to_string(message).map_err(|e| SimError::BadFrame(e.to_string()))?;
        self.send_raw(&text).await
    }

    /// Sends any text frame (for testing malformed input).
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn send_raw(&mut self, text: &str) -> Result<(), SimError> {
        self.socket
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|e| SimError::WebSocket(e.to_string()))
    }

    /// The caller says `text` (a final `prompt`).
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn say(&mut self, text: &str) -> Result<(), SimError> {
        self.send(&Inbound::Prompt(Prompt {
            voice_prompt: text.to_owned(),
            lang: Some("en-US".into()),
            last: true,
        }))
        .await
    }

    /// The caller presses a key.
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn press(&mut self, digit: &str) -> Result<(), SimError> {
        self.send(&Inbound::Dtmf(Dtmf {
            digit: digit.to_owned(),
        }))
        .await
    }

    /// The caller barges in, having heard `heard`.
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn interrupt(&mut self, heard: &str) -> Result<(), SimError> {
        self.send(&Inbound::Interrupt(Interrupt {
            utterance_until_interrupt: heard.to_owned(),
            // About 15 characters a second of speech.
            duration_until_interrupt_ms: Some(heard.chars().count() as u64 * 1000 / 15),
        }))
        .await
    }

    /// Reports `agentSpeaking` on or off, as Twilio does with `events="speaker-events"`.
    ///
    /// # Errors
    /// [`SimError::WebSocket`] when the socket is closed.
    pub async fn agent_speaking(&mut self, on: bool) -> Result<(), SimError> {
        self.send(&Inbound::Info(Info {
            name: "agentSpeaking".into(),
            value: if on { "on" } else { "off" }.into(),
        }))
        .await
    }

    /// The next frame from the server, or `None` when the socket closed.
    ///
    /// # Errors
    /// [`SimError::BadFrame`] for a frame that is not a valid outbound message, or
    /// [`SimError::Timeout`].
    pub async fn next(&mut self, within: Duration) -> Result<Option<Outbound>, SimError> {
        loop {
            let frame = tokio::time::timeout(within, self.socket.next())
                .await
                .map_err(|_| SimError::Timeout(within))?;
            match frame {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(SimError::WebSocket(e.to_string())),
                Some(Ok(WsMessage::Text(text))) => {
                    let message: Outbound = serde_json::from_str(text.as_str())
                        .map_err(|e| SimError::BadFrame(format!("{e}: {}", text.as_str())))?;
                    message
                        .validate()
                        .map_err(|e| SimError::BadFrame(format!("{e}: {}", text.as_str())))?;
                    return Ok(Some(message));
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err(SimError::BadFrame("binary frame".into()));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads frames until a `text` with `last: true` (or an `end`, or the socket closes).
    ///
    /// # Errors
    /// As [`Caller::next`].
    pub async fn reply(&mut self, within: Duration) -> Result<Reply, SimError> {
        let mut reply = Reply::default();
        while let Some(message) = self.next(within).await? {
            match message {
                Outbound::Text { token, last, .. } => {
                    reply.text.push_str(&token);
                    reply.tokens.push(token);
                    if last {
                        break;
                    }
                }
                Outbound::End { .. } => {
                    reply.others.push(message);
                    break;
                }
                other => reply.others.push(other),
            }
        }
        Ok(reply)
    }

    /// Requests the `<Connect action>` URL as Twilio does when the session ends, with
    /// `SessionStatus` and extra parameters; returns the TwiML.
    ///
    /// # Errors
    /// [`SimError::Http`] when the request fails.
    pub async fn post_action(
        &self,
        status: &str,
        call_status: &str,
        extra: &[(String, String)],
    ) -> Result<String, SimError> {
        let action = self
            .action
            .clone()
            .ok_or_else(|| SimError::Twiml("<Connect> has no action".into()))?;
        let path = url::Url::parse(&action)
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|_| action.clone());
        let mut form = vec![
            ("AccountSid".to_owned(), new_sid("AC")),
            ("CallSid".to_owned(), self.call_sid.clone()),
            ("CallStatus".to_owned(), call_status.to_owned()),
            ("Direction".to_owned(), "inbound".to_owned()),
            ("From".to_owned(), self.options.from.clone()),
            ("To".to_owned(), self.options.to.clone()),
            ("SessionId".to_owned(), self.session_id.clone()),
            ("SessionStatus".to_owned(), status.to_owned()),
            (
                "SessionDuration".to_owned(),
                self.started.elapsed().as_secs().to_string(),
            ),
        ];
        form.extend(extra.iter().cloned());
        let signed = signed_url(&self.options, &self.base, &path);
        post_form(
            &self.http,
            &format!("{}{path}", self.base),
            &signed,
            &form,
            &self.options,
        )
        .await
    }

    /// Hangs up: closes the socket as Twilio does when the caller hangs up.
    pub async fn hang_up(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// The URL Twilio would sign for `path`: on the public base when one is configured.
fn signed_url(options: &DialOptions, base: &str, path: &str) -> String {
    let public = options
        .public_url
        .as_deref()
        .unwrap_or(base)
        .trim_end_matches('/');
    format!("{public}{path}")
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    signed_url: &str,
    form: &[(String, String)],
    options: &DialOptions,
) -> Result<String, SimError> {
    let mut request = http.post(url).form(form);
    if let Some(token) = &options.auth_token {
        request = request.header(
            signature::HEADER,
            signature::sign(token.expose_secret(), signed_url, form),
        );
    }
    let fail = |reason: String| SimError::Http {
        url: url.to_owned(),
        reason,
    };
    let response = request.send().await.map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| fail(e.to_string()))?;
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}: {body}")));
    }
    Ok(body)
}

/// Settings of the `call` command.
#[derive(Debug)]
pub struct CallCommand {
    /// Server base URL, for example `http://127.0.0.1:8080`.
    pub url: String,
    /// Scripted caller lines (slash commands allowed); empty = interactive.
    pub script: Vec<String>,
    /// Dial options.
    pub options: DialOptions,
    /// Longest wait for one reply.
    pub reply_timeout: Duration,
    /// After the script, how long the caller stays on the line for anything more (a handoff or
    /// a goodbye).
    pub linger: Duration,
    /// Call updates received by our stand-in Calls API ([`FakeCallsApi`]), when the server uses it.
    pub calls_api: Option<mpsc::Receiver<CallUpdate>>,
}

/// A `POST …/Calls/{CallSid}.json` received by [`FakeCallsApi`].
#[derive(Debug, Clone, PartialEq)]
pub struct CallUpdate {
    /// The call updated.
    pub call_sid: String,
    /// The `Twiml` form field.
    pub twiml: String,
}

/// A stand-in for Twilio's Calls API, so the in-process server of `relaybot call` can move a
/// call to Studio and the terminal shows what Twilio would have been asked to do.
pub struct FakeCallsApi {
    /// `http://127.0.0.1:port`: give it to the server as `TWILIO_API_BASE`.
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCallsApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCallsApi {
    /// Starts on a free loopback port; updates arrive on the returned receiver.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start() -> std::io::Result<(Self, mpsc::Receiver<CallUpdate>)> {
        use axum::{extract::Path, routing::post, Router};
        let (tx, rx) = mpsc::channel(8);
        let app = Router::new().route(
            "/2010-04-01/Accounts/{account}/Calls/{call}",
            post(
                move |Path((_account, call)): Path<(String, String)>, body: String| {
                    let tx = tx.clone();
                    async move {
                        let call_sid = call.trim_end_matches(".json").to_owned();
                        let form: Vec<(String, String)> =
                            serde_urlencoded::from_str(&body).unwrap_or_default();
                        let twiml = form
                            .into_iter()
                            .find(|(k, _)| k == "Twiml")
                            .map(|(_, v)| v)
                            .unwrap_or_default();
                        let _ = tx
                            .send(CallUpdate {
                                call_sid: call_sid.clone(),
                                twiml,
                            })
                            .await;
                        axum::Json(serde_json::json!({"sid": call_sid, "status": "in-progress"}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((FakeCallsApi { base_url, task }, rx))
    }
}

/// Prints frames as they arrive and tracks what the caller has heard.
#[derive(Default)]
struct Printer {
    /// Text of the reply being printed (what a `/interrupt` reports as heard).
    current: String,
    open: bool,
}

impl Printer {
    fn show(&mut self, message: &Outbound) {
        let mut out = std::io::stdout().lock();
        match message {
            Outbound::Text { token, last, .. } => {
                if !self.open {
                    self.current.clear();
                    if token.is_empty() && *last {
                        return;
                    }
                    let _ = write!(out, "agent: ");
                    self.open = true;
                }
                self.current.push_str(token);
                let _ = write!(out, "{token}");
                if *last {
                    let _ = writeln!(out);
                    self.open = false;
                }
            }
            other => {
                if self.open {
                    let _ = writeln!(out);
                    self.open = false;
                }
                let line = match other {
                    Outbound::End { handoff_data } => {
                        format!(
                            "[end] handoffData: {}",
                            handoff_data.as_deref().unwrap_or("(none)")
                        )
                    }
                    Outbound::Play { source, .. } => format!("[play] {source}"),
                    Outbound::SendDigits { digits } => format!("[sendDigits] {digits}"),
                    Outbound::Language {
                        tts_language,
                        transcription_language,
                    } => format!(
                        "[language] ttsLanguage={} transcriptionLanguage={}",
                        tts_language.as_deref().unwrap_or("-"),
                        transcription_language.as_deref().unwrap_or("-")
                    ),
                    Outbound::Text { .. } => unreachable!("handled above"),
                };
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
}

/// What one line of caller input means.
enum Action<'a> {
    Say(&'a str),
    Dtmf(&'a str),
    Interrupt,
    Quit,
    Help,
}

fn action(line: &str) -> Action<'_> {
    let line = line.trim();
    match line
        .split_once(' ')
        .map_or((line, ""), |(a, b)| (a, b.trim()))
    {
        ("/dtmf", keys) => Action::Dtmf(keys),
        ("/interrupt", _) => Action::Interrupt,
        ("/quit" | "/hangup", _) => Action::Quit,
        ("/help", _) => Action::Help,
        _ => Action::Say(line),
    }
}

/// What the caller notices next.
enum Event {
    Frame(Option<Outbound>),
    Moved(CallUpdate),
    Quiet,
}

async fn next_event(
    caller: &mut Caller,
    calls_api: &mut Option<mpsc::Receiver<CallUpdate>>,
    within: Duration,
    quiet_ok: bool,
) -> Result<Event, SimError> {
    let moved = async {
        match calls_api.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(update) = moved => Ok(Event::Moved(update)),
        frame = caller.next(within) => match frame {
            Err(SimError::Timeout(_)) if quiet_ok => Ok(Event::Quiet),
            other => other.map(Event::Frame),
        },
    }
}

/// Runs the `call` command: a scripted call when `script` is non-empty, else interactive.
///
/// # Errors
/// [`SimError`] when the server cannot be reached or misbehaves.
pub async fn run_call(mut command: CallCommand) -> Result<(), SimError> {
    let mut caller = Caller::dial(&command.url, command.options.clone()).await?;
    println!(
        "ringing {} as {} (CallSid {})",
        command.url, command.options.from, caller.call_sid
    );
    if let Some(greeting) = caller.welcome_greeting() {
        println!("agent: {greeting}");
    }
    let speaker_events = caller.speaker_events();
    let mut printer = Printer::default();
    let calls_api = &mut command.calls_api;
    if command.script.is_empty() {
        println!("Type what the caller says and press Enter. /dtmf 5 presses keys, /interrupt barges in, /quit hangs up.");
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    if !perform(&mut caller, &mut printer, &line).await? {
                        break;
                    }
                }
                event = next_event(&mut caller, calls_api, Duration::from_secs(24 * 3600), true) => {
                    if on_event(&mut caller, &mut printer, event?, speaker_events).await? {
                        caller.hang_up().await;
                        return Ok(());
                    }
                }
            }
        }
    } else {
        let script = command.script.clone();
        for line in &script {
            println!("caller: {line}");
            if !perform(&mut caller, &mut printer, line).await? {
                break;
            }
            // Help and barge-in get no reply of their own to wait for.
            if matches!(action(line), Action::Help | Action::Interrupt) {
                continue;
            }
            // Wait for the reply to this line to finish (or for the call to leave).
            loop {
                let event =
                    next_event(&mut caller, calls_api, command.reply_timeout, false).await?;
                let closes = matches!(event, Event::Frame(Some(Outbound::Text { last: true, .. })));
                if on_event(&mut caller, &mut printer, event, speaker_events).await? {
                    caller.hang_up().await;
                    return Ok(());
                }
                if closes {
                    break;
                }
            }
        }
        // Stay on the line briefly: a handoff or goodbye may follow the last reply.
        loop {
            let event = next_event(&mut caller, calls_api, command.linger, true).await?;
            if matches!(event, Event::Quiet) {
                break;
            }
            if on_event(&mut caller, &mut printer, event, speaker_events).await? {
                caller.hang_up().await;
                return Ok(());
            }
        }
    }
    println!("[caller hung up]");
    if caller.action.is_some() {
        let _ = caller.post_action("completed", "completed", &[]).await;
    }
    caller.hang_up().await;
    Ok(())
}

/// Shows what happened. Returns `true` when the call has left Conversation Relay.
async fn on_event(
    caller: &mut Caller,
    printer: &mut Printer,
    event: Event,
    speaker_events: bool,
) -> Result<bool, SimError> {
    match event {
        Event::Quiet => Ok(false),
        Event::Frame(None) => {
            println!("[call ended by the server]");
            Ok(true)
        }
        Event::Frame(Some(message)) => on_frame(caller, printer, &message, speaker_events).await,
        Event::Moved(update) => {
            if printer.open {
                println!();
                printer.open = false;
            }
            println!(
                "[twilio] Calls API update for {}: {}",
                update.call_sid, update.twiml
            );
            if let Ok(root) = twiml::parse(&update.twiml) {
                if let Some(redirect) = root.find("Redirect") {
                    println!(
                        "[twilio] the call leaves Conversation Relay and is redirected to {}",
                        redirect.text
                    );
                }
            }
            Ok(true)
        }
    }
}

/// Acts on one caller line. Returns `false` to hang up.
async fn perform(caller: &mut Caller, printer: &mut Printer, line: &str) -> Result<bool, SimError> {
    match action(line) {
        Action::Say("") => {}
        Action::Say(text) => caller.say(text).await?,
        Action::Dtmf(keys) => {
            for key in keys.chars().filter(|c| !c.is_whitespace()) {
                caller.press(&key.to_string()).await?;
            }
        }
        Action::Interrupt => {
            let heard = printer.current.clone();
            if printer.open {
                println!(" [interrupted]");
                printer.open = false;
            }
            caller.interrupt(&heard).await?;
        }
        Action::Quit => return Ok(false),
        Action::Help => println!("/dtmf 5 presses keys, /interrupt barges in, /quit hangs up."),
    }
    Ok(true)
}

/// Shows a frame and plays Twilio's part. Returns `true` when the session has ended.
async fn on_frame(
    caller: &mut Caller,
    printer: &mut Printer,
    message: &Outbound,
    speaker_events: bool,
) -> Result<bool, SimError> {
    let first_of_reply =
        !printer.open && matches!(message, Outbound::Text { token, .. } if !token.is_empty());
    printer.show(message);
    match message {
        // Twilio reports the agent's audio starting and, when the talk cycle is over, stopping.
        // (Playback here is instant.)
        Outbound::Text { last, .. } if speaker_events => {
            if first_of_reply {
                caller.agent_speaking(true).await?;
            }
            if *last {
                caller.agent_speaking(false).await?;
            }
        }
        Outbound::End { handoff_data } => {
            let extra: Vec<(String, String)> = handoff_data
                .iter()
                .map(|d| ("HandoffData".to_owned(), d.clone()))
                .collect();
            if caller.action.is_some() {
                let twiml = caller.post_action("ended", "in-progress", &extra).await?;
                println!("[twilio] <Connect action> answered: {twiml}");
            }
            return Ok(true);
        }
        _ => {}
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_twiml_reads_connect_and_conversation_relay() {
        let twiml = r#"<Response><Connect action="https://pub.example/action"><ConversationRelay url="wss://pub.example/ws?t=1"><Parameter name="k" value="v"/></ConversationRelay></Connect></Response>"#;
        let relay = RelayTwiml::parse(twiml).unwrap();
        assert_eq!(relay.action.as_deref(), Some("https://pub.example/action"));
        assert_eq!(relay.url, "wss://pub.example/ws?t=1");
        assert_eq!(relay.relay.parameters()["k"], "v");
        for bad in [
            "<Response><Say>busy</Say><Hangup/></Response>",
            "<Response><Connect/></Response>",
            "<Response><Connect><ConversationRelay/></Connect></Response>",
            "<Response>",
        ] {
            assert!(
                matches!(RelayTwiml::parse(bad), Err(SimError::Twiml(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_upgrade_goes_to_the_local_server_and_is_signed_as_written() {
        let relay_url = "wss://pub.example/ws?t=1&b=2";
        assert_eq!(
            local_ws_url(relay_url, "http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/ws?t=1&b=2"
        );
        assert_eq!(
            local_ws_url("wss://pub.example/ws", "https://localhost").unwrap(),
            "wss://localhost/ws"
        );
        assert!(local_ws_url("not a url", "http://127.0.0.1:8080").is_err());
        assert!(local_ws_url(relay_url, "127.0.0.1:8080/").is_err());

        let unsigned = relay_upgrade(relay_url, "http://127.0.0.1:8080", None).unwrap();
        assert_eq!(unsigned.uri(), "ws://127.0.0.1:8080/ws?t=1&b=2");
        assert!(unsigned.headers().get(signature::HEADER).is_none());
        let signed = relay_upgrade(relay_url, "http://127.0.0.1:8080", Some("secret")).unwrap();
        assert_eq!(
            signed.headers()[signature::HEADER],
            signature::sign("secret", relay_url, &[]).as_str()
        );
    }
}
