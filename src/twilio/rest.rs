//! A small typed client for the one Twilio REST call we make: updating a live call with new TwiML
//! (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`, form field `Twiml`), per
//! <https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource>.
//!
//! Ours rather than `twilio-async`, which cannot update a call and has a fixed base URL. The base
//! URL comes from `TWILIO_API_BASE` so tests point it at a fake. Auth is HTTP Basic with the
//! account SID and auth token, or an API key SID (`SK…`) and secret; the account SID stays in the
//! path either way.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Why a call update failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RestError {
    /// Error 21220: the call is not in progress (the caller hung up). Not retryable.
    #[error("the call is no longer in progress (Twilio error 21220)")]
    CallNotInProgress,
    /// An error answer from Twilio. Retryable when 429 or 5xx.
    #[error("Twilio answered HTTP {status} (code {code:?}): {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Twilio error code, when the body had one.
        code: Option<u32>,
        /// Twilio's message.
        message: String,
    },
    /// No answer in time. Retryable.
    #[error("Twilio did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection could not be made: the request never reached Twilio. Retryable.
    #[error("cannot connect to Twilio: {0}")]
    Connect(String),
    /// The connection failed after it was made (the request may have been processed).
    /// Retryable for requests that are safe to repeat.
    #[error("cannot reach Twilio: {0}")]
    Transport(String),
}

impl RestError {
    /// Worth trying again: rate limits, server errors, timeouts and connection failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Status { status, .. } => *status == 429 || *status >= 500,
            RestError::Timeout(_) | RestError::Transport(_) | RestError::Connect(_) => true,
            RestError::CallNotInProgress => false,
        }
    }

    /// Worth trying again for a request that creates something (a message, an interaction):
    /// only when Twilio certainly did not act on it — a rate limit (429), unavailable (503), or
    /// no connection. A timeout or a broken connection may have come after Twilio created it,
    /// and a repeat would create it twice.
    pub fn is_retryable_create(&self) -> bool {
        match self {
            RestError::Status { status, .. } => *status == 429 || *status == 503,
            RestError::Connect(_) => true,
            _ => false,
        }
    }
}

/// Twilio's JSON error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<u32>,
    #[serde(default)]
    message: String,
}

/// What every Twilio REST client here shares: one HTTP client, HTTP Basic credentials (the
/// account SID and auth token, or an API key `SK…` and its secret), a per-request timeout,
/// JSON error bodies read into [`RestError`], and bounded retries.
#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    user: String,
    password: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Rest {
    /// Requests as `user`/`password`, each given `timeout`.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built.
    pub fn new(user: &str, password: SecretString, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // reqwest's default, stated: a handoff must not wait on Nagle's algorithm.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the Twilio HTTP client: {e}"))?;
        Ok(Rest {
            http,
            user: user.to_owned(),
            password,
            timeout,
        })
    }

    /// A request to `url`, authenticated, asking for JSON.
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// Sends `request`; the body of a 2xx answer, else [`RestError::Status`] with Twilio's code
    /// and message (from its JSON error body).
    ///
    /// # Errors
    /// [`RestError`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, RestError> {
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                RestError::Timeout(self.timeout)
            } else if e.is_connect() {
                RestError::Connect(e.to_string())
            } else {
                RestError::Transport(e.to_string())
            }
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body);
        }
        let parsed: Option<ErrorBody> = serde_json::from_str(&body).ok();
        Err(RestError::Status {
            status: status.as_u16(),
            code: parsed.as_ref().and_then(|b| b.code),
            message: parsed
                .map(|b| b.message)
                .unwrap_or_else(|| body.chars().take(200).collect()),
        })
    }

    /// Runs `attempt` up to `attempts` times while it fails with a retryable error, pausing
    /// 200 ms, then 400 ms, … (with jitter) in between; `what` names it in the log.
    ///
    /// # Errors
    /// The last [`RestError`].
    pub async fn with_retries<T, F, Fut>(
        what: &str,
        attempts: u32,
        attempt: F,
    ) -> Result<T, RestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RestError>>,
    {
        Self::with_retries_if(what, attempts, RestError::is_retryable, attempt).await
    }

    /// [`Rest::with_retries`] for a request that creates something: retried only when
    /// [`RestError::is_retryable_create`].
    ///
    /// # Errors
    /// The last [`RestError`].
    pub async fn with_create_retries<T, F, Fut>(
        what: &str,
        attempts: u32,
        attempt: F,
    ) -> Result<T, RestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RestError>>,
    {
        Self::with_retries_if(what, attempts, RestError::is_retryable_create, attempt).await
    }

    async fn with_retries_if<T, F, Fut>(
        what: &str,
        attempts: u32,
        retry: fn(&RestError) -> bool,
        mut attempt: F,
    ) -> Result<T, RestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RestError>>,
    {
        let mut tried = 1;
        loop {
            match attempt().await {
                Err(e) if retry(&e) && tried < attempts => {
                    let base = 200u64 << (tried - 1);
                    let pause = Duration::from_millis(base + rand::random_range(0..=base / 2));
                    tracing::warn!(error = %e, attempt = tried, pause_ms = pause.as_millis() as u64, "{what} failed; retrying");
                    tokio::time::sleep(pause).await;
                    tried += 1;
                }
                other => return other,
            }
        }
    }
}

/// The Calls API client.
#[derive(Clone)]
pub struct CallsClient {
    rest: Rest,
    base: String,
    account_sid: String,
}

impl std::fmt::Debug for CallsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallsClient")
            .field("base", &self.base)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

impl CallsClient {
    /// A client for `account_sid` at `base` (`https://api.twilio.com`) sending through `rest`
    /// (shared with the other Twilio clients).
    pub fn new(base: &str, account_sid: &str, rest: Rest) -> Self {
        CallsClient {
            rest,
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
        }
    }

    /// Replaces the live call's TwiML with `twiml` (one attempt).
    ///
    /// # Errors
    /// [`RestError`]; 21220 becomes [`RestError::CallNotInProgress`].
    pub async fn update_call_twiml(&self, call_sid: &str, twiml: &str) -> Result<(), RestError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{}.json",
            self.base,
            self.account_sid,
            urlencode_path(call_sid)
        );
        let request = self
            .rest
            .request(reqwest::Method::POST, &url)
            .form(&[("Twiml", twiml)]);
        match self.rest.send(request).await {
            Ok(_) => Ok(()),
            Err(RestError::Status {
                code: Some(21220), ..
            }) => Err(RestError::CallNotInProgress),
            Err(e) => Err(e),
        }
    }

    /// [`CallsClient::update_call_twiml`] with up to `attempts` tries for retryable errors.
    ///
    /// # Errors
    /// The last [`RestError`].
    pub async fn update_call_twiml_with_retries(
        &self,
        call_sid: &str,
        twiml: &str,
        attempts: u32,
    ) -> Result<(), RestError> {
        Rest::with_retries("Calls API", attempts, || {
            self.update_call_twiml(call_sid, twiml)
        })
        .await
    }
}

/// A call SID only ever holds `[A-Za-z0-9]`; anything else is percent-encoded so it cannot
/// change the path.
pub(crate) fn urlencode_path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors() {
        let status = |s| RestError::Status {
            status: s,
            code: None,
            message: String::new(),
        };
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!RestError::CallNotInProgress.is_retryable());
        assert!(RestError::Timeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(urlencode_path("CA12ab"), "CA12ab");
        assert_eq!(urlencode_path("../x"), "%2E%2E%2Fx");
    }
}
