//! Conversations kept after a WebSocket drops, so a reconnected session resumes them.
//!
//! If the socket dies mid-call, Twilio requests the `<Connect action>` URL with
//! `SessionStatus=failed` while the call is still up (shared notes §7.1); `/action` answers with a
//! fresh `<ConversationRelay>` (at most `MAX_RECONNECTS` times per call), and when the new
//! `setup` arrives with the same callSid the session picks up the saved history. Entries expire
//! after `RECONNECT_GRACE_SECS` (swept at most once a second; reads check expiry themselves). In
//! memory, per instance; the lock is never held across an await.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    agent::{Departure, Message},
    handoff::TranscriptLine,
    store::Sweep,
};

/// What a dropped session leaves behind.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// The conversation, system prompt first.
    pub history: Vec<Message>,
    /// The transcript for the human agent.
    pub transcript: Vec<TranscriptLine>,
}

#[derive(Debug, Default)]
struct Entry {
    saved: Option<Saved>,
    /// The call was on its way out when its socket dropped: `/action` finishes the job
    /// instead of reconnecting it to the bot.
    leaving: Option<Departure>,
    reconnects: u32,
    expires: Option<Instant>,
}

/// Saved conversations and reconnect counts, by CallSid.
#[derive(Debug, Clone)]
pub struct ResumeStore {
    inner: Arc<Mutex<(HashMap<String, Entry>, Sweep)>>,
    grace: Duration,
}

impl ResumeStore {
    /// A store keeping conversations for `grace`.
    pub fn new(grace: Duration) -> Self {
        ResumeStore {
            inner: Arc::new(Mutex::new((HashMap::new(), Sweep::default()))),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Entry>, Sweep)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a dropped session's conversation.
    pub fn save(&self, call_sid: &str, saved: Saved) {
        if call_sid.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let (map, sweep) = &mut *guard;
        if sweep.due(now) {
            map.retain(|_, e| e.expires.is_none_or(|t| t > now));
        }
        let entry = map.entry(call_sid.to_owned()).or_default();
        entry.saved = Some(saved);
        entry.leaving = None;
        entry.expires = Some(now + self.grace);
    }

    /// The call is leaving (`how`): a drop from now on is not reconnected to the bot.
    pub fn mark_leaving(&self, call_sid: &str, how: Departure) {
        if call_sid.is_empty() {
            return;
        }
        let mut guard = self.lock();
        let entry = guard.0.entry(call_sid.to_owned()).or_default();
        entry.saved = None;
        entry.leaving = Some(how);
        entry.expires = Some(Instant::now() + self.grace);
    }

    /// How the call was leaving, if it was.
    pub fn leaving(&self, call_sid: &str) -> Option<Departure> {
        let now = Instant::now();
        self.lock()
            .0
            .get(call_sid)
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .and_then(|e| e.leaving.clone())
    }

    /// Whether a session of `call_sid` ran and left its conversation (only such calls are
    /// reconnected; a session that never started failed for another reason).
    pub fn has_saved(&self, call_sid: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .0
            .get(call_sid)
            .is_some_and(|e| e.saved.is_some() && e.expires.is_none_or(|t| t > now))
    }

    /// Counts a reconnect of `call_sid`; returns how many there have been, this one included.
    pub fn count_reconnect(&self, call_sid: &str) -> u32 {
        let now = Instant::now();
        let mut guard = self.lock();
        let entry = guard.0.entry(call_sid.to_owned()).or_default();
        if entry.expires.is_some_and(|t| t <= now) {
            // Expired but not swept yet: a new start.
            *entry = Entry::default();
        }
        entry.reconnects += 1;
        entry.expires = Some(now + self.grace);
        entry.reconnects
    }

    /// The saved conversation of `call_sid`, taken (a resumed session saves again when it ends).
    pub fn take(&self, call_sid: &str) -> Option<Saved> {
        let now = Instant::now();
        let mut guard = self.lock();
        let map = &mut guard.0;
        let entry = map.get_mut(call_sid)?;
        if entry.expires.is_some_and(|t| t <= now) {
            map.remove(call_sid);
            return None;
        }
        entry.saved.take()
    }

    /// Forgets `call_sid` (the call is over).
    pub fn forget(&self, call_sid: &str) {
        self.lock().0.remove(call_sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_counts_and_expires() {
        let store = ResumeStore::new(Duration::from_secs(60));
        store.save(
            "CA1",
            Saved {
                history: vec![Message::assistant("hi")],
                transcript: vec![],
            },
        );
        assert_eq!(store.count_reconnect("CA1"), 1);
        assert_eq!(store.count_reconnect("CA1"), 2);
        assert_eq!(store.take("CA1").unwrap().history.len(), 1);
        assert!(store.take("CA1").is_none(), "taken once");
        store.forget("CA1");
        assert_eq!(store.count_reconnect("CA1"), 1, "forgotten");
        store.save("CA3", Saved::default());
        let end = Departure::End {
            reason: "bye".into(),
            by_customer_choice: true,
        };
        store.mark_leaving("CA3", end.clone());
        assert!(
            !store.has_saved("CA3"),
            "a call on its way out is not reconnected"
        );
        assert_eq!(store.leaving("CA3"), Some(end));
        store.save("CA3", Saved::default());
        assert_eq!(store.leaving("CA3"), None, "back in conversation");
        let short = ResumeStore::new(Duration::ZERO);
        short.save("CA2", Saved::default());
        assert!(short.take("CA2").is_none(), "expired");
    }
}
