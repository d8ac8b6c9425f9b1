//! `relaybot lambda`: the binary as the AWS Lambda that Amazon Lex V2 calls as its code hook
//! (a Lex V2 code hook can only be a Lambda). Built only with `--features lambda`.
//!
//! Two modes, chosen by `LEX_FORWARD_URL`:
//! - **forwarding** (`LEX_FORWARD_URL` set): each Lex event is POSTed, byte for byte, to a
//!   relaybot server's `/lex/v2`, signed with `LEX_SHARED_SECRET`
//!   ([`crate::connect::auth::sign`]), and the server's answer is returned unchanged;
//! - **in-process** (unset): the agent runs in the Lambda: the state is built once at cold start
//!   from the environment and each event is answered by
//!   [`ConnectState::answer`](crate::connect::ConnectState::answer).
//!
//! Whatever fails (the server cannot be reached, times out, answers non-2xx or not a Lex
//! response; the in-process agent errs), the Lambda still answers: a `Close` with
//! `shouldRouteToAgent="true"` ([`route_to_agent`]), so the contact flow transfers the caller to
//! a person instead of Lex playing its error prompt.
//!
//! Logs go to stderr (CloudWatch): the Lex session id, the invocation source and input mode,
//! the forward host, and why something failed; never the secret, the transcript or a number.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lambda_runtime::{service_fn, LambdaEvent};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, value::RawValue, Map, Value};

use crate::{
    agent::tools::ToolRegistry,
    config::{Config, ConfigError},
    connect::{
        auth::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER},
        HANDOFF_REASON, HANDOFF_RECORD_URL, HANDOFF_SUMMARY, RELAYBOT_ACTION, RELAYBOT_SESSION_ID,
        SHOULD_ROUTE_TO_AGENT, SHOULD_TERMINATE,
    },
    http::AppState,
};

/// The longest wait for the relaybot server's answer: a little over its own turn budget
/// (`LEX_TURN_BUDGET_MS`, 4.5 s by default, after which it answers with a holding line) and
/// under what Lex and the caller will wait.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Kept free before the Lambda's own deadline, to send the fallback answer in time.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(300);

/// The shortest wait for an answer, whatever the deadline says (a deadline in the past or a
/// skewed clock must not turn every turn into a handoff).
pub const MIN_WAIT: Duration = Duration::from_secs(1);

/// `handoffReason` of the fallback when the relaybot server failed (forwarding mode).
pub const UNREACHABLE_REASON: &str = "relaybot could not be reached";

/// `handoffReason` of the fallback when the in-process agent failed.
pub const FAILED_REASON: &str = "relaybot could not answer";

/// `handoffSummary` of the fallback: the conversation so far is not at hand.
pub const NO_SUMMARY: &str =
    "No summary: the AI agent could not answer, so the customer was sent to a person.";

/// The Lambda's response payload limit (buffered), 6 MB: a larger answer cannot be returned.
const MAX_ANSWER_BYTES: usize = 6 * 1024 * 1024;

/// Environment variables the Lambda runtime sets and `lambda_runtime` requires (it panics
/// without them).
const RUNTIME_VARS: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// Why `relaybot lambda` cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// A setting is missing or wrong.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// Not running inside AWS Lambda (a runtime variable is missing).
    #[error("{0} is not set: `relaybot lambda` runs inside AWS Lambda (the Lambda runtime sets it; locally, `cargo lambda watch` does)")]
    NotInLambda(&'static str),
    /// The agent or the HTTP client could not be built.
    #[error("cannot start: {0}")]
    Setup(String),
    /// The Lambda Runtime API failed (the runtime loop ended).
    #[error("the Lambda runtime stopped: {0}")]
    Runtime(String),
}

/// Runs the Lambda runtime loop until it fails: the code hook is built once (cold start), then
/// each Lex event is answered by [`CodeHook::answer`] within the invocation's deadline.
///
/// # Errors
/// [`LambdaError`]: a setting, a missing Lambda runtime variable, or the runtime failing.
pub async fn run(config: Config) -> Result<(), LambdaError> {
    if let Some(var) = RUNTIME_VARS
        .into_iter()
        .find(|var| std::env::var_os(var).is_none_or(|v| v.is_empty()))
    {
        return Err(LambdaError::NotInLambda(var));
    }
    let hook = Arc::new(CodeHook::from_config(config)?);
    tracing::info!("relaybot lambda ready: {}", hook.describe());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        let hook = Arc::clone(&hook);
        async move {
            let budget = invocation_budget(event.context.deadline());
            Ok::<_, std::convert::Infallible>(hook.answer(&event.payload, budget).await)
        }
    }))
    .await
    .map_err(|e| LambdaError::Runtime(with_causes(&*e)))
}

/// `e` and its causes, `: `-separated.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What an invocation may spend: the time left before its `deadline` less [`DEADLINE_MARGIN`],
/// at least [`MIN_WAIT`].
pub fn invocation_budget(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(DEADLINE_MARGIN)
        .max(MIN_WAIT)
}

/// The code hook: answers Lex events by forwarding them or in-process.
pub struct CodeHook {
    mode: Mode,
    /// The fallback's message (`HANDOFF_LINE`).
    handoff_line: String,
}

enum Mode {
    Forward(Forwarder),
    InProcess(Box<AppState>),
}

impl CodeHook {
    /// Forwarding when `LEX_FORWARD_URL` is set (then `LEX_SHARED_SECRET` is required), else
    /// in-process with the agent `config` describes.
    ///
    /// # Errors
    /// [`LambdaError::Config`] when forwarding without a secret; [`LambdaError::Setup`] when the
    /// agent or the HTTP client cannot be built.
    pub fn from_config(config: Config) -> Result<Self, LambdaError> {
        let handoff_line = config.handoff.handoff_line.clone();
        let mode = match &config.connect.forward_url {
            Some(url) => {
                let secret = config.connect.shared_secret.clone().ok_or_else(|| ConfigError {
                    var: "LEX_SHARED_SECRET".into(),
                    problem: "LEX_FORWARD_URL is set, so the Lambda signs what it forwards: set LEX_SHARED_SECRET to the same secret as the relaybot server's".into(),
                })?;
                Mode::Forward(Forwarder::new(url, secret).map_err(LambdaError::Setup)?)
            }
            None => Mode::InProcess(Box::new(
                crate::build_state(config, ToolRegistry::new()).map_err(LambdaError::Setup)?,
            )),
        };
        Ok(Self { mode, handoff_line })
    }

    /// What this hook does, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Forward(f) => format!("forwarding Lex events to {} (signed)", f.target),
            Mode::InProcess(state) => format!(
                "answering Lex events in-process with {}",
                state.config.describe_llm()
            ),
        }
    }

    /// The Lex V2 response to `event` (the raw event JSON), within `budget`. Never fails: on any
    /// failure it is [`route_to_agent`].
    pub async fn answer(&self, event: &RawValue, budget: Duration) -> Box<RawValue> {
        let parsed: Value = serde_json::from_str(event.get()).unwrap_or(Value::Null);
        let session = loggable_session(str_at(&parsed, &["sessionId"]).unwrap_or("-"));
        let session = session.as_str();
        let source = str_at(&parsed, &["invocationSource"]).unwrap_or("-");
        let input = str_at(&parsed, &["inputMode"]).unwrap_or("-");
        let started = Instant::now();
        let failure = match &self.mode {
            Mode::Forward(forwarder) => {
                match forwarder
                    .forward(event.get().as_bytes(), budget.min(FORWARD_TIMEOUT))
                    .await
                {
                    Ok(answer) => {
                        tracing::info!(
                            session,
                            source,
                            input,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "Lex event forwarded and answered"
                        );
                        return answer;
                    }
                    Err(e) => {
                        tracing::warn!(
                            session,
                            source,
                            input,
                            to = %forwarder.target,
                            error = %e,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "forwarding the Lex event failed; routing the caller to an agent"
                        );
                        UNREACHABLE_REASON
                    }
                }
            }
            Mode::InProcess(state) => {
                match tokio::time::timeout(budget, state.connect.answer(parsed.clone())).await {
                    Ok(Ok(answer)) => match serde_json::value::to_raw_value(&answer) {
                        Ok(raw) => {
                            tracing::info!(
                                session,
                                source,
                                input,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "Lex event answered"
                            );
                            return raw;
                        }
                        Err(e) => {
                            tracing::warn!(session, error = %e, "the answer is not JSON; routing the caller to an agent");
                            FAILED_REASON
                        }
                    },
                    Ok(Err(e)) => {
                        tracing::warn!(
                            session,
                            source,
                            input,
                            error = %e,
                            "the Lex event could not be answered; routing the caller to an agent"
                        );
                        FAILED_REASON
                    }
                    Err(_) => {
                        tracing::warn!(
                            session,
                            source,
                            input,
                            budget_ms = budget.as_millis() as u64,
                            "no answer before the Lambda's deadline; routing the caller to an agent"
                        );
                        FAILED_REASON
                    }
                }
            }
        };
        let fallback = route_to_agent(&parsed, failure, &self.handoff_line);
        serde_json::value::to_raw_value(&fallback).expect("a JSON value serializes")
    }
}

/// Forwards Lex events to a relaybot server's `/lex/v2`, signed.
pub struct Forwarder {
    client: reqwest::Client,
    url: String,
    /// Scheme, host and port of `url`, for logs (a path or query may hold a token).
    target: String,
    secret: SecretString,
}

/// Why a forward failed.
#[derive(Debug)]
pub enum ForwardError {
    /// No answer within the time allowed.
    Timeout(Duration),
    /// The request failed (connect, TLS, reset); the message carries no URL.
    Request(String),
    /// The server answered with a non-2xx status.
    Status(u16),
    /// The answer is not a Lex V2 response (not JSON, no `sessionState`, too large).
    BadAnswer(String),
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
            Self::Request(e) => write!(f, "request failed: {e}"),
            Self::Status(s) => write!(f, "the server answered HTTP {s}"),
            Self::BadAnswer(e) => write!(f, "not a Lex V2 response: {e}"),
        }
    }
}

impl std::error::Error for ForwardError {}

impl Forwarder {
    /// A forwarder to `url` (a relaybot server's `/lex/v2`), signing with `secret`.
    ///
    /// # Errors
    /// The URL does not parse or the HTTP client cannot be built.
    pub fn new(url: &str, secret: SecretString) -> Result<Self, String> {
        let parsed =
            url::Url::parse(url).map_err(|e| format!("LEX_FORWARD_URL is not a URL: {e}"))?;
        let target = match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}", parsed.scheme()),
            (None, _) => parsed.scheme().to_owned(),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // A frozen Lambda's pooled connections may have been closed by the server or a
            // load balancer meanwhile: don't keep them long.
            .pool_idle_timeout(Duration::from_secs(20))
            .user_agent(concat!("relaybot-lambda/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            target,
            secret,
        })
    }

    /// POSTs `body` (the raw event), signed, and returns the server's answer unchanged, within
    /// `timeout`.
    ///
    /// # Errors
    /// [`ForwardError`].
    pub async fn forward(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Box<RawValue>, ForwardError> {
        match tokio::time::timeout(timeout, self.exchange(body)).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }

    async fn exchange(&self, body: &[u8]) -> Result<Box<RawValue>, ForwardError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(self.secret.expose_secret().as_bytes(), timestamp, body);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| ForwardError::Request(describe_reqwest(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ForwardError::Status(status.as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ForwardError::Request(describe_reqwest(e)))?;
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(ForwardError::BadAnswer(format!(
                "{} bytes, over Lambda's 6 MB",
                bytes.len()
            )));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ForwardError::BadAnswer(format!("unreadable JSON: {e}")))?;
        if !answer.get("sessionState").is_some_and(Value::is_object) {
            return Err(ForwardError::BadAnswer("no sessionState object".into()));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ForwardError::BadAnswer(format!("unreadable JSON: {e}")))
    }
}

/// A reqwest error with its cause chain and without the URL.
fn describe_reqwest(e: reqwest::Error) -> String {
    with_causes(&e.without_url())
}

/// The answer that sends the caller to a person when relaybot cannot answer: `Close`, the
/// event's intent `Fulfilled`, the event's session attributes with the ones a relaybot handoff
/// sets (`shouldRouteToAgent="true"`, `handoffReason` = `reason`, a `handoffSummary` saying
/// there is none, `relaybotAction="handoff"`, `shouldTerminateContactFlow="false"`,
/// `relaybotSessionId`), and `message` (PlainText). The contact flow's check of
/// `$.Lex.SessionAttributes.shouldRouteToAgent` then transfers the contact to the queue.
pub fn route_to_agent(event: &Value, reason: &str, message: &str) -> Value {
    let mut attributes = Map::new();
    if let Some(existing) = event
        .pointer("/sessionState/sessionAttributes")
        .and_then(Value::as_object)
    {
        for (key, value) in existing {
            // A previous handoff's details are not this one's.
            if [HANDOFF_SUMMARY, HANDOFF_RECORD_URL].contains(&key.as_str()) {
                continue;
            }
            // Lex's session attributes are a string → string map.
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Bool(_) | Value::Number(_) => value.to_string(),
                _ => continue,
            };
            attributes.insert(key.clone(), Value::String(value));
        }
    }
    let mut set = |key: &str, value: &str| {
        attributes.insert(key.to_owned(), Value::String(value.to_owned()));
    };
    set(SHOULD_ROUTE_TO_AGENT, "true");
    set(SHOULD_TERMINATE, "false");
    set(RELAYBOT_ACTION, "handoff");
    set(HANDOFF_REASON, reason);
    set(HANDOFF_SUMMARY, NO_SUMMARY);
    if let Some(session) = str_at(event, &["sessionId"]) {
        set(RELAYBOT_SESSION_ID, session);
    }
    let intent = str_at(event, &["sessionState", "intent", "name"])
        .or_else(|| {
            event
                .get("interpretations")
                .and_then(Value::as_array)
                .and_then(|i| i.first())
                .and_then(|i| str_at(i, &["intent", "name"]))
        })
        .filter(|name| !name.is_empty())
        .unwrap_or("FallbackIntent");
    json!({
        "sessionState": {
            "sessionAttributes": attributes,
            "dialogAction": { "type": "Close" },
            "intent": { "name": intent, "state": "Fulfilled" },
        },
        "messages": [ { "contentType": "PlainText", "content": message } ],
    })
}

/// The Lex session id as it may appear in logs: Connect uses the contact id, but a channel
/// may use the caller's number, which is masked ([`crate::agent::mask_number`]).
fn loggable_session(id: &str) -> String {
    // `+14155550123`, `whatsapp:+14155550123`, `(415) 555-0123`…
    let number = id.rsplit(':').next().unwrap_or(id);
    let phone_like = number.chars().filter(char::is_ascii_digit).count() >= 7
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')' | '.'));
    if phone_like {
        crate::agent::mask_number(id)
    } else {
        id.to_owned()
    }
}

/// The string at `path` in `value`, if any.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_masked_in_logs() {
        assert_eq!(loggable_session("+14155550123"), "***0123");
        assert_eq!(loggable_session("whatsapp:+14155550123"), "***0123");
        let contact = "6f2b5a3c-1d4e-4f6a-9b8c-7d6e5f4a3b2c";
        assert_eq!(loggable_session(contact), contact);
    }
}
