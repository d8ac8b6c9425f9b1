//! Who may talk to us: Twilio request signatures and per-call tokens.
//!
//! - [`Verifier`] checks `X-Twilio-Signature` (HMAC-SHA1, base64) on the voice webhook, the
//!   `<Connect action>` callback and the WebSocket upgrade, over the **public** URL (from
//!   `PUBLIC_URL`, never the request's Host header), with and without the default port, with the
//!   primary and the secondary auth token (rotation). For the WebSocket, whose signed URL form is
//!   not documented, both the full URL with its query and the URL with its query parameters as
//!   sorted "form" parameters are accepted, and the variant that matched is logged.
//!   Rules: <https://www.twilio.com/docs/usage/webhooks/webhooks-security>; shared notes §5.
//! - [`CallTokens`]: a signature can be replayed, so `/twiml` mints a short-lived, single-use
//!   token bound to the CallSid, carried in the ConversationRelay `url`; `/ws` checks it before
//!   the upgrade and the session checks `setup.callSid` against it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;

use tokio::sync::OwnedSemaphorePermit;

use crate::{store::Sweep, twilio::signature};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    #[error("no X-Twilio-Signature header")]
    Missing,
    /// The signature matches none of the URL variants under any configured token.
    #[error("X-Twilio-Signature does not match")]
    Mismatch,
}

/// Which signed-URL form matched a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocketVariant {
    /// The full URL with its query, no parameters (twilio-node's generic validator).
    FullUrl,
    /// The URL without its query, query parameters as sorted parameters (Twilio's TAC SDKs).
    SortedQuery,
}

/// Checks Twilio's request signatures.
pub struct Verifier {
    tokens: Vec<SecretString>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting signatures made with any of `tokens` (primary first). With no token,
    /// every request is accepted (signature checks off).
    pub fn new(tokens: Vec<SecretString>) -> Self {
        Verifier { tokens }
    }

    /// Whether signatures are checked at all.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn any_token(&self, check: impl Fn(&str) -> bool) -> bool {
        self.tokens.iter().any(|t| check(t.expose_secret()))
    }

    /// Checks a webhook: `url` as Twilio requested it (public base + path + query), `params` the
    /// form body (empty for GET).
    ///
    /// # Errors
    /// [`SignatureError`] when the header is missing or matches nothing.
    pub fn check_webhook(
        &self,
        url: &str,
        params: &[(String, String)],
        header: Option<&str>,
    ) -> Result<(), SignatureError> {
        if !self.enabled() {
            return Ok(());
        }
        let header = header.ok_or(SignatureError::Missing)?;
        if self.any_token(|t| signature::matches(t, url, params, header)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// Checks a WebSocket upgrade to `url` (the `wss://` URL with its query).
    ///
    /// # Errors
    /// [`SignatureError`] when the header is missing or matches no variant.
    pub fn check_websocket(
        &self,
        url: &str,
        header: Option<&str>,
    ) -> Result<Option<WebSocketVariant>, SignatureError> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = header.ok_or(SignatureError::Missing)?;
        if self.any_token(|t| signature::matches(t, url, &[], header)) {
            return Ok(Some(WebSocketVariant::FullUrl));
        }
        let (bare, query) = url.split_once('?').unwrap_or((url, ""));
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if self.any_token(|t| signature::matches(t, bare, &params, header)) {
            return Ok(Some(WebSocketVariant::SortedQuery));
        }
        Err(SignatureError::Mismatch)
    }
}

/// Why a call token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallTokenError {
    /// No `token` in the WebSocket URL.
    #[error("no call token")]
    Missing,
    /// Not a token we minted (bad format or signature).
    #[error("call token is not valid")]
    Invalid,
    /// Minted by us, but its time is up.
    #[error("call token has expired")]
    Expired,
    /// Already used for an upgrade.
    #[error("call token was already used")]
    Replayed,
}

/// Mints and checks the per-call tokens.
///
/// A token minted by [`CallTokens::mint_reserved`] carries the caller's call slot (a
/// `MAX_CONCURRENT_CALLS` permit taken when `/twiml` answered): the upgrade that redeems it gets
/// the slot, and a token that expires unused gives it back. So a burst of webhooks can never
/// hand out more relay sessions than there are slots.
pub struct CallTokens {
    key: SecretString,
    ttl: Duration,
    used: Mutex<(HashMap<String, Instant>, Sweep)>,
    /// Minted and not yet redeemed: callers who have their TwiML but have not connected yet.
    pending: Mutex<PendingTokens>,
}

/// Tokens waiting for their upgrade, by token and by CallSid.
#[derive(Default)]
struct PendingTokens {
    by_token: HashMap<String, Pending>,
    /// The newest pending token of each call: a retried webhook for the same call reuses its
    /// slot instead of taking another.
    by_call: HashMap<String, String>,
    sweep: Sweep,
}

impl PendingTokens {
    fn remove(&mut self, token: &str) -> Option<Pending> {
        let pending = self.by_token.remove(token)?;
        if self
            .by_call
            .get(&pending.call_sid)
            .is_some_and(|t| t == token)
        {
            self.by_call.remove(&pending.call_sid);
        }
        Some(pending)
    }

    fn drop_expired(&mut self, now_ms: u64) {
        self.by_token.retain(|_, p| p.expires_ms > now_ms);
        let by_token = &self.by_token;
        self.by_call.retain(|_, token| by_token.contains_key(token));
    }
}

/// A minted token waiting for its upgrade.
struct Pending {
    /// ms since the Unix epoch.
    expires_ms: u64,
    /// The call slot reserved for it, if any.
    slot: Option<OwnedSemaphorePermit>,
    /// The call it was minted for (as the webhook gave it).
    call_sid: String,
}

impl std::fmt::Debug for CallTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CallTokens {
    /// Tokens signed with `key` (a random one when `None`), valid for `ttl`.
    pub fn new(key: Option<SecretString>, ttl: Duration) -> Self {
        let key = key.unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::random();
            SecretString::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        });
        CallTokens {
            key,
            ttl,
            used: Mutex::new((HashMap::new(), Sweep::default())),
            pending: Mutex::new(PendingTokens::default()),
        }
    }

    fn mac(&self, body: &str) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A token for `call_sid`: `CallSid.expiryMs.signature` (URL-safe characters only), with no
    /// call slot reserved (the upgrade takes one if it can).
    pub fn mint(&self, call_sid: &str) -> String {
        self.mint_with(call_sid, None)
    }

    /// A token for `call_sid` holding `slot` until it is redeemed (the session keeps the slot)
    /// or expires unused (the slot is freed).
    pub fn mint_reserved(&self, call_sid: &str, slot: OwnedSemaphorePermit) -> String {
        self.mint_with(call_sid, Some(slot))
    }

    fn mint_with(&self, call_sid: &str, slot: Option<OwnedSemaphorePermit>) -> String {
        let now = now_ms();
        let expires_ms = now + self.ttl.as_millis() as u64;
        let token = self.mint_expiring_at(call_sid, expires_ms);
        let mut pending = self.lock_pending();
        if pending.sweep.due(Instant::now()) {
            pending.drop_expired(now);
        }
        if !call_sid.is_empty() {
            if let Some(older) = pending.by_call.insert(call_sid.to_owned(), token.clone()) {
                pending.by_token.remove(&older);
            }
        }
        pending.by_token.insert(
            token.clone(),
            Pending {
                expires_ms,
                slot,
                call_sid: call_sid.to_owned(),
            },
        );
        token
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingTokens> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The call slot held by `call_sid`'s unredeemed token, taken from it (the token still
    /// works, without a slot). A retried webhook for a call reuses its slot this way.
    pub fn take_slot(&self, call_sid: &str) -> Option<OwnedSemaphorePermit> {
        let now = now_ms();
        let mut pending = self.lock_pending();
        let token = pending.by_call.get(call_sid)?.clone();
        let entry = pending.remove(&token)?;
        (entry.expires_ms > now).then_some(entry.slot).flatten()
    }

    /// Drops `call_sid`'s unredeemed token and frees its slot: the session it was for has ended
    /// (Twilio requested `/action`), so nobody will connect with it.
    pub fn release_call(&self, call_sid: &str) {
        drop(self.take_slot(call_sid));
    }

    /// Drops the tokens whose time is up, freeing the call slots they held. Returns how many
    /// are still pending.
    pub fn release_expired(&self) -> usize {
        let mut pending = self.lock_pending();
        pending.drop_expired(now_ms());
        pending.by_token.len()
    }

    /// Tokens minted and neither redeemed nor expired: calls about to connect (a drain waits for
    /// them).
    pub fn pending(&self) -> usize {
        self.release_expired()
    }

    /// A token for `call_sid` that expires at `expires_ms` (ms since the Unix epoch).
    pub fn mint_expiring_at(&self, call_sid: &str, expires_ms: u64) -> String {
        let call_sid: String = call_sid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let body = format!("{call_sid}.{expires_ms}");
        format!("{body}.{}", self.mac(&body))
    }

    /// Checks `token` and uses it up; returns the CallSid it is bound to.
    ///
    /// # Errors
    /// [`CallTokenError`].
    pub fn redeem(&self, token: Option<&str>) -> Result<String, CallTokenError> {
        self.redeem_with_slot(token).map(|(call_sid, _)| call_sid)
    }

    /// [`CallTokens::redeem`], also handing over the call slot reserved when the token was
    /// minted (`None` for a token minted without one, for example by another instance).
    ///
    /// # Errors
    /// [`CallTokenError`]; a refused token's slot (if any) is freed.
    pub fn redeem_with_slot(
        &self,
        token: Option<&str>,
    ) -> Result<(String, Option<OwnedSemaphorePermit>), CallTokenError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(CallTokenError::Missing)?;
        let slot = self.lock_pending().remove(token).and_then(|p| p.slot);
        let mut parts = token.splitn(3, '.');
        let (Some(call_sid), Some(expires), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CallTokenError::Invalid);
        };
        let expires: u64 = expires.parse().map_err(|_| CallTokenError::Invalid)?;
        let expected = self.mac(&format!("{call_sid}.{expires}"));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            mac.as_bytes(),
        )) {
            return Err(CallTokenError::Invalid);
        }
        if now_ms() > expires {
            return Err(CallTokenError::Expired);
        }
        let now = Instant::now();
        let mut guard = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (used, sweep) = &mut *guard;
        if sweep.due(now) {
            used.retain(|_, until| *until > now);
        }
        if used.get(token).is_some_and(|until| *until > now) {
            return Err(CallTokenError::Replayed);
        }
        let left = Duration::from_millis(expires.saturating_sub(now_ms()));
        used.insert(token.to_owned(), now + left);
        Ok((call_sid.to_owned(), slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> SecretString {
        SecretString::from(t.to_owned())
    }

    #[test]
    fn webhooks_need_a_valid_signature_from_either_token() {
        let url = "https://bot.example.com/twiml";
        let params = vec![("CallSid".to_owned(), "CA1".to_owned())];
        let v = Verifier::new(vec![token("primary"), token("secondary")]);
        let good = signature::sign("primary", url, &params);
        let rotated = signature::sign("secondary", url, &params);
        assert_eq!(v.check_webhook(url, &params, Some(&good)), Ok(()));
        assert_eq!(v.check_webhook(url, &params, Some(&rotated)), Ok(()));
        assert_eq!(
            v.check_webhook(url, &params, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            v.check_webhook(url, &params, Some(&signature::sign("other", url, &params))),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.check_webhook(url, &[], Some(&good)),
            Err(SignatureError::Mismatch),
            "parameters are covered"
        );
        let with_port = signature::sign("primary", "https://bot.example.com:443/twiml", &params);
        assert_eq!(v.check_webhook(url, &params, Some(&with_port)), Ok(()));
        assert_eq!(
            Verifier::new(vec![]).check_webhook(url, &params, None),
            Ok(())
        );
    }

    /// The shared notes' WebSocket vectors (token `12345`): both variants verify.
    #[test]
    fn websocket_variants() {
        let v = Verifier::new(vec![token("12345")]);
        let url = "wss://example.com/ws?token=abc&foo=bar";
        assert_eq!(
            v.check_websocket(url, Some("wwBh7j3VdG6m6VtFADyihrw7AYk=")),
            Ok(Some(WebSocketVariant::FullUrl))
        );
        assert_eq!(
            v.check_websocket(url, Some("bK75SJpzG4xThNyqsCx8yah0Ebw=")),
            Ok(Some(WebSocketVariant::SortedQuery))
        );
        assert_eq!(
            v.check_websocket("wss://example.com/ws", Some("HXrgvHt0qTHu33oSxSjpOvWtO60=")),
            Ok(Some(WebSocketVariant::FullUrl))
        );
        assert_eq!(
            v.check_websocket(url, Some("HXrgvHt0qTHu33oSxSjpOvWtO60=")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn call_tokens_are_bound_single_use_and_expire() {
        let tokens = CallTokens::new(None, Duration::from_secs(60));
        let t = tokens.mint("CA123");
        assert_eq!(tokens.pending(), 1, "a caller about to connect");
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        assert_eq!(tokens.redeem(Some(&t)), Ok("CA123".into()));
        assert_eq!(tokens.pending(), 0);
        assert_eq!(tokens.redeem(Some(&t)), Err(CallTokenError::Replayed));
        assert_eq!(tokens.redeem(None), Err(CallTokenError::Missing));
        assert_eq!(tokens.redeem(Some("CA1.1.x")), Err(CallTokenError::Invalid));
        let forged = t.replacen("CA123", "CA999", 1);
        assert_eq!(tokens.redeem(Some(&forged)), Err(CallTokenError::Invalid));
        let old = tokens.mint_expiring_at("CA5", now_ms() - 1);
        assert_eq!(tokens.redeem(Some(&old)), Err(CallTokenError::Expired));
        let other = CallTokens::new(None, Duration::from_secs(60));
        assert_eq!(
            other.redeem(Some(&tokens.mint("CA7"))),
            Err(CallTokenError::Invalid)
        );
        let shared = SecretString::from("a-fleet-wide-secret".to_owned());
        let a = CallTokens::new(Some(shared.clone()), Duration::from_secs(60));
        let b = CallTokens::new(Some(shared), Duration::from_secs(60));
        assert_eq!(
            b.redeem(Some(&a.mint("CA8"))),
            Ok("CA8".into()),
            "a fleet shares the key"
        );
    }

    #[test]
    fn a_token_holds_its_call_slot_until_redeemed_or_expired() {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let tokens = CallTokens::new(None, Duration::from_secs(60));
        let slot = slots.clone().try_acquire_owned().unwrap();
        let t = tokens.mint_reserved("CA1", slot);
        assert_eq!(
            slots.available_permits(),
            0,
            "reserved while the caller connects"
        );
        let (call_sid, slot) = tokens.redeem_with_slot(Some(&t)).unwrap();
        assert_eq!(call_sid, "CA1");
        assert!(slot.is_some(), "the upgrade gets the reserved slot");
        assert_eq!(slots.available_permits(), 0, "the session holds it");
        drop(slot);
        assert_eq!(slots.available_permits(), 1, "freed when the session ends");

        // A token nobody redeems gives its slot back when it expires.
        let short = CallTokens::new(None, Duration::ZERO);
        let _unused = short.mint_reserved("CA2", slots.clone().try_acquire_owned().unwrap());
        assert_eq!(slots.available_permits(), 0);
        assert_eq!(short.release_expired(), 0);
        assert_eq!(
            slots.available_permits(),
            1,
            "an abandoned reservation is freed"
        );

        // A refused (replayed) token carries no slot.
        let t = tokens.mint_reserved("CA3", slots.clone().try_acquire_owned().unwrap());
        let first = tokens.redeem_with_slot(Some(&t)).unwrap();
        assert_eq!(
            tokens.redeem_with_slot(Some(&t)).map(|(sid, _)| sid),
            Err(CallTokenError::Replayed)
        );
        drop(first);
        assert_eq!(slots.available_permits(), 1);
    }

    /// A retried webhook for a call reuses its slot; `/action` frees an unused one.
    #[test]
    fn one_slot_per_call_however_often_its_webhook_comes() {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
        let tokens = CallTokens::new(None, Duration::from_secs(60));
        let _first = tokens.mint_reserved("CA1", slots.clone().try_acquire_owned().unwrap());
        // The retry: the webhook handler takes the call's slot and mints a new token with it.
        let slot = tokens.take_slot("CA1").expect("the call's slot");
        let second = tokens.mint_reserved("CA1", slot);
        assert_eq!(slots.available_permits(), 1, "still one slot for CA1");
        assert_eq!(tokens.pending(), 1);
        tokens.release_call("CA1");
        assert_eq!(slots.available_permits(), 2, "freed when the session ended");
        let (call_sid, slot) = tokens.redeem_with_slot(Some(&second)).unwrap();
        assert_eq!(call_sid, "CA1");
        assert!(
            slot.is_none(),
            "a released token still works, without a slot"
        );
        assert!(tokens.take_slot("CA-unknown").is_none());
    }
}
