//! The code hook's request signature: `X-Relaybot-Timestamp: <unix seconds>` and
//! `X-Relaybot-Signature: v1=<lowercase hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`.
//! Checked in constant time; a timestamp more than [`MAX_SKEW`] away, or a signature seen
//! before (a replay), is refused. `relaybot lambda` signs its forwards with [`sign`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::Sweep;

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-relaybot-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-relaybot-signature";
/// The furthest a request's timestamp may be from our clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No timestamp or signature header, or not in the expected form.
    #[error("missing or malformed X-Relaybot-Timestamp / X-Relaybot-Signature")]
    Missing,
    /// The timestamp is more than five minutes away.
    #[error("stale timestamp")]
    Stale,
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
    /// This signature was already used.
    #[error("replayed request")]
    Replay,
}

/// Checks signatures and remembers those seen within [`MAX_SKEW`] (a replay is refused).
#[derive(Debug, Default)]
pub struct Verifier {
    seen: Mutex<(HashMap<String, Instant>, Sweep)>,
}

impl Verifier {
    /// Checks `signature` over `timestamp` and `body` with `secret`, at `now_secs` (Unix
    /// seconds).
    ///
    /// # Errors
    /// [`AuthError`].
    pub fn check(
        &self,
        secret: &[u8],
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), AuthError> {
        let timestamp: u64 = timestamp
            .and_then(|t| t.trim().parse().ok())
            .ok_or(AuthError::Missing)?;
        let signature = signature
            .map(str::trim)
            .filter(|s| s.starts_with("v1="))
            .ok_or(AuthError::Missing)?;
        if timestamp.abs_diff(now_secs) > MAX_SKEW.as_secs() {
            return Err(AuthError::Stale);
        }
        let expected = sign(secret, timestamp, body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            signature.as_bytes(),
        )) {
            return Err(AuthError::Mismatch);
        }
        let now = Instant::now();
        let mut guard = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seen, sweep) = &mut *guard;
        if sweep.due(now) {
            seen.retain(|_, until| *until > now);
        }
        if seen.get(signature).is_some_and(|until| *until > now) {
            return Err(AuthError::Replay);
        }
        seen.insert(signature.to_owned(), now + MAX_SKEW * 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_timestamps_and_replays() {
        let verifier = Verifier::default();
        let secret = b"0123456789abcdef";
        let body = br#"{"sessionId":"s"}"#;
        let now = 1_800_000_000;
        let good = sign(secret, now, body);
        assert!(good.starts_with("v1=") && good.len() == 3 + 64);
        let ts = now.to_string();
        assert_eq!(
            verifier.check(secret, Some(&ts), Some(&good), body, now),
            Ok(())
        );
        assert_eq!(
            verifier.check(secret, Some(&ts), Some(&good), body, now),
            Err(AuthError::Replay)
        );
        let other = sign(secret, now, b"{}");
        assert_eq!(
            verifier.check(secret, Some(&ts), Some(&other), body, now),
            Err(AuthError::Mismatch)
        );
        let old = (now - 301).to_string();
        let stale = sign(secret, now - 301, body);
        assert_eq!(
            verifier.check(secret, Some(&old), Some(&stale), body, now),
            Err(AuthError::Stale)
        );
        assert_eq!(
            verifier.check(secret, None, Some(&good), body, now),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verifier.check(secret, Some(&ts), Some("abc"), body, now),
            Err(AuthError::Missing)
        );
    }
}
