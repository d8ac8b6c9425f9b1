//! IBM Cloud IAM bearer tokens for Watson (channels-and-bots.md §1.1): the API key is exchanged
//! at the IAM token URL (`grant_type=urn:ibm:params:oauth:grant-type:apikey`), the token is
//! cached and refreshed before it expires, as IBM's SDK core does:
//!
//! - fresh (less than 80 % of its lifetime gone): used as it is;
//! - due (past 80 %, not yet expired): used as it is while one background exchange replaces it;
//! - expired or missing: callers wait for one shared exchange (the others queue behind it and
//!   take its token). The lock is held only around that exchange, never while Watson answers.
//!
//! A 401 from Watson drops the token that was refused ([`Tokens::invalidate`]); the next call
//! exchanges the key again. Neither the key nor any token is ever logged.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::api::{error_response, transport_error};
use crate::agent::LlmError;

/// The lifetime assumed when IAM states none (IBM documents "at most one hour").
const DEFAULT_LIFETIME: Duration = Duration::from_secs(20 * 60);
/// Longest lifetime believed, whatever IAM says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is replaced once this share of its lifetime has gone (IBM's SDK: 80 %).
const REFRESH_AT: f64 = 0.8;
/// A token is treated as expired this long before it really is (clock skew, request time),
/// at most a tenth of its lifetime.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A bearer token and when to replace it.
#[derive(Clone)]
pub struct Token {
    secret: Arc<SecretString>,
    refresh_at: Instant,
    expires_at: Instant,
}

impl Token {
    /// The `Authorization: Bearer` value.
    pub fn bearer(&self) -> &str {
        self.secret.expose_secret()
    }

    fn is(&self, other: &Token) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// IAM's answer (`refresh_token`, `token_type`, `scope` … are not needed).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
    #[serde(default)]
    expiration: Option<f64>,
}

/// The token cache for one API key.
pub struct Tokens {
    http: reqwest::Client,
    url: String,
    apikey: SecretString,
    current: Mutex<Option<Token>>,
    /// Held while one exchange runs.
    exchanging: Arc<tokio::sync::Mutex<()>>,
}

impl Tokens {
    /// A cache exchanging `apikey` at `url` (the full token URL) with `http`.
    pub fn new(http: reqwest::Client, url: &str, apikey: SecretString) -> Self {
        Tokens {
            http,
            url: url.to_owned(),
            apikey,
            current: Mutex::new(None),
            exchanging: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn cached(&self) -> Option<Token> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A token to use now.
    ///
    /// # Errors
    /// The exchange's failure ([`LlmError::Status`] with IAM's status and message, a timeout or
    /// a transport error) when there is no usable token.
    pub async fn token(self: &Arc<Self>) -> Result<Token, LlmError> {
        let now = Instant::now();
        if let Some(token) = self.cached() {
            if now < token.refresh_at {
                return Ok(token);
            }
            if now < token.expires_at {
                // Due: replace it in the background, once; this caller goes on with it.
                if let Ok(guard) = self.exchanging.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let due = this.cached().is_none_or(|t| Instant::now() >= t.refresh_at);
                        if due {
                            if let Err(error) = this.exchange().await {
                                tracing::warn!(%error, "could not refresh the Watson IAM token; the current one is still valid");
                            }
                        }
                    });
                }
                return Ok(token);
            }
        }
        let _guard = self.exchanging.lock().await;
        // Another caller may have exchanged the key while this one waited.
        if let Some(token) = self.cached().filter(|t| Instant::now() < t.expires_at) {
            return Ok(token);
        }
        self.exchange().await
    }

    /// Drops `refused` (Watson answered 401 with it), unless it was already replaced.
    pub fn invalidate(&self, refused: &Token) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|t| t.is(refused)) {
            *current = None;
        }
    }

    /// Exchanges the API key for a new token and caches it.
    async fn exchange(&self) -> Result<Token, LlmError> {
        let started = Instant::now();
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "urn:ibm:params:oauth:grant-type:apikey"),
                ("apikey", self.apikey.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(&e, "IAM token"))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let error = error_response(status, response).await;
            tracing::warn!(status, %error, "the IAM token exchange failed");
            return Err(error);
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| LlmError::Decode(format!("IAM token response: {e}")))?;
        if body.access_token.is_empty() {
            return Err(LlmError::Decode(
                "IAM answered an empty access_token".into(),
            ));
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let lifetime = lifetime(body.expires_in, body.expiration, unix_now);
        let (refresh_in, expires_in) = schedule(lifetime);
        let token = Token {
            secret: Arc::new(SecretString::from(body.access_token)),
            refresh_at: started + refresh_in,
            expires_at: started + expires_in,
        };
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "exchanged the Watson API key for an IAM token"
        );
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }
}

/// A token's lifetime: `expires_in` (seconds from now), else `expiration` (a Unix time) less
/// `unix_now`, else [`DEFAULT_LIFETIME`]; never more than [`MAX_LIFETIME`].
fn lifetime(expires_in: Option<f64>, expiration: Option<f64>, unix_now: f64) -> Duration {
    let seconds = expires_in
        .filter(|s| s.is_finite() && *s > 0.0)
        .or_else(|| {
            expiration
                .map(|e| e - unix_now)
                .filter(|s| s.is_finite() && *s > 0.0)
        });
    seconds
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_LIFETIME)
        .min(MAX_LIFETIME)
}

/// (refresh after, treat as expired after) for a token of `lifetime`.
fn schedule(lifetime: Duration) -> (Duration, Duration) {
    let margin = EXPIRY_MARGIN.min(lifetime / 10);
    (lifetime.mul_f64(REFRESH_AT), lifetime - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_prefers_expires_in_then_expiration() {
        assert_eq!(
            lifetime(Some(3600.0), Some(10.0), 0.0),
            Duration::from_secs(3600)
        );
        assert_eq!(
            lifetime(None, Some(1_000_600.0), 1_000_000.0),
            Duration::from_secs(600)
        );
        // An expiration in the past, or nothing at all: the default.
        assert_eq!(lifetime(None, Some(5.0), 1_000.0), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(0.0), None, 0.0), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(1e12), None, 0.0), MAX_LIFETIME);
    }

    #[test]
    fn tokens_are_refreshed_at_80_percent_and_expire_early() {
        let (refresh, expire) = schedule(Duration::from_secs(3600));
        assert_eq!(refresh, Duration::from_secs(2880));
        assert_eq!(expire, Duration::from_secs(3540));
        // Short lifetimes keep a proportionate margin.
        let (refresh, expire) = schedule(Duration::from_secs(10));
        assert_eq!(refresh, Duration::from_secs(8));
        assert_eq!(expire, Duration::from_secs(9));
    }

    #[test]
    fn a_token_never_prints() {
        let token = Token {
            secret: Arc::new(SecretString::from("eyJ-secret".to_owned())),
            refresh_at: Instant::now(),
            expires_at: Instant::now(),
        };
        assert!(!format!("{token:?}").contains("eyJ"));
    }
}
