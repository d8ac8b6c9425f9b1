//! What relaybot keeps per conversation for Watson, in memory: the session ID (stateful), the
//! last `context` Watson returned (stateless), and the choices last offered. Bounded: entries
//! expire when idle, and past [`MAX_CONVERSATIONS`] or [`MAX_CONTEXT_BYTES_TOTAL`] the least
//! recently used go first.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::reply::Choice;
use crate::store::Sweep;

/// Conversations remembered at once.
pub const MAX_CONVERSATIONS: usize = 10_000;
/// Stateless contexts kept in all, in bytes of JSON.
pub const MAX_CONTEXT_BYTES_TOTAL: usize = 64 * 1024 * 1024;
/// Largest stateless context kept: Watson's own cap on a stateless request (§1.4).
pub const MAX_CONTEXT_BYTES: usize = 250 * 1024;

/// One conversation's Watson state.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The Watson session (stateful).
    pub session_id: Option<String>,
    /// The context to send back (stateless).
    pub context: Option<Arc<Value>>,
    /// The choices of the last answer.
    pub choices: Vec<Choice>,
}

struct Slot {
    entry: Entry,
    used: Instant,
    /// Order of last use (least recently used first).
    seq: u64,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Slot>,
    bytes: usize,
    next_seq: u64,
    sweep: Sweep,
}

/// Every conversation's state, keyed by the CallSid / ConversationSid.
pub struct Conversations {
    inner: Mutex<Inner>,
    idle: Duration,
}

impl Conversations {
    /// Entries unused for `idle` are forgotten.
    pub fn new(idle: Duration) -> Self {
        Conversations {
            inner: Mutex::new(Inner::default()),
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of `key` (empty when unknown or expired).
    pub fn get(&self, key: &str) -> Entry {
        let inner = self.lock();
        inner
            .map
            .get(key)
            .filter(|slot| slot.used.elapsed() < self.idle)
            .map(|slot| slot.entry.clone())
            .unwrap_or_default()
    }

    /// Changes the state of `key` with `change` (from empty when unknown or expired).
    pub fn update(&self, key: &str, change: impl FnOnce(&mut Entry)) {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.sweep.due(now) {
            let idle = self.idle;
            let mut freed = 0;
            inner.map.retain(|_, slot| {
                let keep = now.duration_since(slot.used) < idle;
                if !keep {
                    freed += slot.bytes;
                }
                keep
            });
            inner.bytes -= freed;
        }
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let slot = inner.map.entry(key.to_owned()).or_insert_with(|| Slot {
            entry: Entry::default(),
            used: now,
            seq,
            bytes: 0,
        });
        if now.duration_since(slot.used) >= self.idle {
            slot.entry = Entry::default();
        }
        change(&mut slot.entry);
        slot.used = now;
        slot.seq = seq;
        let bytes = slot
            .entry
            .context
            .as_ref()
            .map_or(0, |c| serde_json::to_vec(c).map_or(0, |v| v.len()));
        inner.bytes = inner.bytes - slot.bytes + bytes;
        slot.bytes = bytes;
        while inner.map.len() > MAX_CONVERSATIONS || inner.bytes > MAX_CONTEXT_BYTES_TOTAL {
            let Some(oldest) = inner
                .map
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, slot)| slot.seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(slot) = inner.map.remove(&oldest) {
                inner.bytes -= slot.bytes;
            }
        }
    }

    /// Conversations remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_are_kept_updated_and_expire() {
        let conversations = Conversations::new(Duration::from_millis(50));
        assert!(conversations.get("CA1").session_id.is_none());
        conversations.update("CA1", |e| e.session_id = Some("s1".into()));
        conversations.update("CA1", |e| e.context = Some(Arc::new(json!({"a": 1}))));
        let entry = conversations.get("CA1");
        assert_eq!(entry.session_id.as_deref(), Some("s1"));
        assert_eq!(entry.context.as_deref(), Some(&json!({"a": 1})));
        std::thread::sleep(Duration::from_millis(60));
        assert!(conversations.get("CA1").session_id.is_none());
        // An expired entry is updated from empty.
        conversations.update("CA1", |e| e.choices.clear());
        assert!(conversations.get("CA1").session_id.is_none());
    }

    #[test]
    fn the_least_recently_used_go_first_when_full() {
        let conversations = Conversations::new(Duration::from_secs(3600));
        for i in 0..=MAX_CONVERSATIONS {
            conversations.update(&format!("CA{i}"), |e| e.session_id = Some(i.to_string()));
        }
        assert_eq!(conversations.len(), MAX_CONVERSATIONS);
        assert!(conversations.get("CA0").session_id.is_none());
        assert!(conversations
            .get(&format!("CA{MAX_CONVERSATIONS}"))
            .session_id
            .is_some());
    }
}
