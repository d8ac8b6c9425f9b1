//! The Watson Assistant v2 runtime calls relaybot makes (channels-and-bots.md §1.3–§1.5, §1.8):
//! create a session, send a message (stateful or stateless), with `?version=…` and a bearer
//! token on every request, and errors read the way IBM's SDK core reads them.
//!
//! Path style ([`Paths`]):
//! - only `WATSON_ENVIRONMENT_ID` (or only `WATSON_ASSISTANT_ID`, classic experience): the legacy
//!   `/v2/assistants/{id}/…` that every released SDK but Node 12.x uses;
//! - both IDs: the newer `/v2/assistants/{assistant_id}/environments/{environment_id}/…` (IBM's
//!   current API definition, Node SDK 12.x). It is not yet confirmed on a live instance, so a
//!   404 there that is not `Invalid Session` switches this process to the legacy path with the
//!   environment ID (logged once) and the call is made again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};

use super::iam::{Token, Tokens};
use crate::{agent::LlmError, config::WatsonConfig};

/// Longest wait for one HTTP request (IAM or Watson), answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest answer read from Watson (a search answer with many results is the big one).
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;
/// Longest error body read.
const MAX_ERROR_BYTES: usize = 8 * 1024;
/// Longest wait for an error body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the assistant's calls go.
#[derive(Debug, Clone, PartialEq)]
pub enum Paths {
    /// `/v2/assistants/{id}/…`: `id` is the environment ID (new experience) or the assistant ID
    /// (classic).
    Legacy(String),
    /// `/v2/assistants/{assistant}/environments/{environment}/…`.
    Environments {
        /// The assistant ID.
        assistant: String,
        /// The environment ID.
        environment: String,
    },
}

impl Paths {
    /// The style `config` asks for (see the module documentation).
    pub fn for_config(config: &WatsonConfig) -> Result<Self, String> {
        match (&config.assistant_id, &config.environment_id) {
            (Some(assistant), Some(environment)) => Ok(Paths::Environments {
                assistant: assistant.clone(),
                environment: environment.clone(),
            }),
            (None, Some(id)) | (Some(id), None) => Ok(Paths::Legacy(id.clone())),
            (None, None) => Err("WATSON_ENVIRONMENT_ID or WATSON_ASSISTANT_ID is required".into()),
        }
    }

    fn segments(&self) -> Vec<&str> {
        match self {
            Paths::Legacy(id) => vec!["v2", "assistants", id],
            Paths::Environments {
                assistant,
                environment,
            } => vec!["v2", "assistants", assistant, "environments", environment],
        }
    }
}

/// A failed call, with the token it carried (so a 401 drops exactly that one).
#[derive(Debug)]
pub struct CallError {
    /// What went wrong, as the turn reports it.
    pub error: LlmError,
    /// The token sent, when the request went out.
    pub token: Option<Token>,
}

impl CallError {
    fn status(&self) -> Option<u16> {
        match &self.error {
            LlmError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Watson refused the token (401); a new one is worth one more try.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401) && self.token.is_some()
    }

    /// The session expired or never existed: `404` with `Invalid Session` (§1.4).
    pub fn is_invalid_session(&self) -> bool {
        matches!(&self.error, LlmError::Status { status: 404, message }
            if message.to_ascii_lowercase().contains("invalid session"))
    }

    fn is_other_not_found(&self) -> bool {
        self.status() == Some(404) && !self.is_invalid_session()
    }
}

impl From<LlmError> for CallError {
    fn from(error: LlmError) -> Self {
        CallError { error, token: None }
    }
}

/// The Watson Assistant v2 client for one assistant.
pub struct Api {
    http: reqwest::Client,
    base: url::Url,
    version: String,
    paths: Paths,
    /// The newer path answered 404: the legacy one with the environment ID is used instead.
    legacy_fallback: AtomicBool,
    tokens: Arc<Tokens>,
}

impl Api {
    /// The client `config` describes.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built or the service URL is not a base URL.
    pub fn new(config: &WatsonConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for Watson: {e}"))?;
        let base = url::Url::parse(config.url.trim_end_matches('/'))
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| format!("WATSON_URL {:?} is not a base URL", config.url))?;
        Ok(Api {
            tokens: Arc::new(Tokens::new(
                http.clone(),
                &config.iam_url,
                config.apikey.clone(),
            )),
            http,
            base,
            version: config.version.clone(),
            paths: Paths::for_config(config)?,
            legacy_fallback: AtomicBool::new(false),
        })
    }

    /// The IAM token cache.
    pub fn tokens(&self) -> &Arc<Tokens> {
        &self.tokens
    }

    fn paths(&self) -> Paths {
        match &self.paths {
            Paths::Environments { environment, .. }
                if self.legacy_fallback.load(Ordering::Relaxed) =>
            {
                Paths::Legacy(environment.clone())
            }
            paths => paths.clone(),
        }
    }

    /// After `failure` of a call on the newer path: whether to switch to the legacy path and
    /// make the call again.
    pub fn fall_back(&self, failure: &CallError) -> bool {
        if !failure.is_other_not_found()
            || !matches!(self.paths, Paths::Environments { .. })
            || self.legacy_fallback.swap(true, Ordering::Relaxed)
        {
            return false;
        }
        tracing::warn!(
            error = %failure.error,
            "Watson answered 404 on /v2/assistants/{{assistant_id}}/environments/{{environment_id}}/…; using /v2/assistants/{{environment_id}}/… from now on"
        );
        true
    }

    fn url(&self, tail: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        {
            let paths = self.paths();
            let mut segments = url
                .path_segments_mut()
                .expect("checked to be a base URL in Api::new");
            segments.pop_if_empty();
            segments.extend(paths.segments());
            segments.extend(tail);
        }
        url.query_pairs_mut().append_pair("version", &self.version);
        url
    }

    /// `POST …/sessions` → the new session's ID.
    ///
    /// # Errors
    /// [`CallError`] as [`Api::post`].
    pub async fn create_session(&self) -> Result<String, CallError> {
        let answer = self.post(&["sessions"], &json!({})).await?;
        match answer["session_id"].as_str() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(LlmError::Decode("the session answer has no session_id".into()).into()),
        }
    }

    /// `POST …/sessions/{session}/message`, or the stateless `POST …/message` without a
    /// session; the answer as JSON.
    ///
    /// # Errors
    /// [`CallError`] as [`Api::post`].
    pub async fn message(&self, session: Option<&str>, body: &Value) -> Result<Value, CallError> {
        match session {
            Some(session) => self.post(&["sessions", session, "message"], body).await,
            None => self.post(&["message"], body).await,
        }
    }

    /// POSTs `body` to the assistant's path + `tail` with a bearer token; the JSON answer.
    ///
    /// # Errors
    /// [`CallError`]: [`LlmError::Status`] with the error body's message for an HTTP error,
    /// [`LlmError::Timeout`], [`LlmError::Transport`], or [`LlmError::Decode`] for an answer
    /// that is not JSON.
    async fn post(&self, tail: &[&str], body: &Value) -> Result<Value, CallError> {
        let token = self.tokens.token().await?;
        let failed = |error: LlmError| CallError {
            error,
            token: Some(token.clone()),
        };
        let response = self
            .http
            .post(self.url(tail))
            .bearer_auth(token.bearer())
            .header(reqwest::header::ACCEPT, "application/json")
            // Asks IBM not to use the conversation to improve its services (§1.6).
            .header("X-Watson-Learning-Opt-Out", "true")
            .json(body)
            .send()
            .await
            .map_err(|e| failed(transport_error(&e, "Watson answer")))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(failed(error_response(status, response).await));
        }
        let bytes = read_answer(response).await.map_err(|e| failed(e.clone()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| failed(LlmError::Decode(format!("Watson answered: {e}"))))
    }
}

/// A request error as a turn error: a timeout, or a transport failure (with its causes).
pub fn transport_error(error: &reqwest::Error, what: &'static str) -> LlmError {
    if error.is_timeout() {
        return LlmError::Timeout(what);
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    LlmError::Transport(text)
}

/// The body of a successful answer, up to [`MAX_ANSWER_BYTES`].
async fn read_answer(mut response: reqwest::Response) -> Result<Vec<u8>, LlmError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(LlmError::Decode(format!(
                        "Watson's answer is over {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport_error(&e, "Watson answer")),
        }
    }
}

/// An HTTP error answer as [`LlmError::Status`], its message read from the body.
pub async fn error_response(status: u16, mut response: reqwest::Response) -> LlmError {
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_ERROR_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BYTES - body.len())])
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    LlmError::Status {
        status,
        message: error_message(&String::from_utf8_lossy(&body)),
    }
}

/// The message of an error body, where IBM's SDK core looks for it (§1.4): `errors[0].message`,
/// then `error`, `message`, `errorMessage` (IAM); else the body itself (cut to 300 characters).
pub fn error_message(body: &str) -> String {
    let text = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        [
            &v["errors"][0]["message"],
            &v["error"],
            &v["message"],
            &v["errorMessage"],
        ]
        .into_iter()
        .find_map(|m| {
            m.as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        })
    });
    text.unwrap_or_else(|| body.trim().to_owned())
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn config(assistant: Option<&str>, environment: Option<&str>) -> WatsonConfig {
        WatsonConfig {
            apikey: SecretString::from("key".to_owned()),
            iam_url: "https://iam.cloud.ibm.com/identity/token".into(),
            url: "https://api.eu-de.assistant.watson.cloud.ibm.com/instances/abc-123/".into(),
            assistant_id: assistant.map(str::to_owned),
            environment_id: environment.map(str::to_owned),
            version: "2024-08-25".into(),
            stateless: false,
        }
    }

    #[test]
    fn error_messages_are_read_where_the_sdk_reads_them() {
        assert_eq!(
            error_message(r#"{"errors":[{"message":"first"}],"error":"second"}"#),
            "first"
        );
        assert_eq!(
            error_message(r#"{"error":"Invalid Session","code":404}"#),
            "Invalid Session"
        );
        assert_eq!(error_message(r#"{"message":"m","code":500}"#), "m");
        assert_eq!(
            error_message(
                r#"{"errorCode":"BXNIM0415E","errorMessage":"Provided API key could not be found"}"#
            ),
            "Provided API key could not be found"
        );
        assert_eq!(error_message(" Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_message(&"x".repeat(1000)).len(), 300);
    }

    #[test]
    fn an_invalid_session_is_told_from_other_404s() {
        let e = |status, message: &str| CallError {
            error: LlmError::Status {
                status,
                message: message.into(),
            },
            token: None,
        };
        assert!(e(404, "Invalid Session").is_invalid_session());
        assert!(!e(404, "Resource not found").is_invalid_session());
        assert!(e(404, "Resource not found").is_other_not_found());
        assert!(!e(400, "Invalid Session").is_invalid_session());
    }

    #[test]
    fn paths_follow_the_ids_configured() {
        let api = Api::new(&config(None, Some("env-1"))).unwrap();
        assert_eq!(
            api.url(&["sessions"]).as_str(),
            "https://api.eu-de.assistant.watson.cloud.ibm.com/instances/abc-123/v2/assistants/env-1/sessions?version=2024-08-25"
        );
        let api = Api::new(&config(Some("asst-1"), None)).unwrap();
        assert_eq!(
            api.url(&["message"]).path(),
            "/instances/abc-123/v2/assistants/asst-1/message"
        );
        let api = Api::new(&config(Some("asst-1"), Some("env 1"))).unwrap();
        assert_eq!(
            api.url(&["sessions", "s/1", "message"]).path(),
            "/instances/abc-123/v2/assistants/asst-1/environments/env%201/sessions/s%2F1/message"
        );
        // A 404 that is not an expired session switches to the legacy path, once.
        let not_found = CallError {
            error: LlmError::Status {
                status: 404,
                message: "Not Found".into(),
            },
            token: None,
        };
        assert!(api.fall_back(&not_found));
        assert!(!api.fall_back(&not_found));
        assert_eq!(
            api.url(&["sessions"]).path(),
            "/instances/abc-123/v2/assistants/env%201/sessions"
        );
    }
}
