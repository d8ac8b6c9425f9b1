//! Pieces shared by the in-memory stores (call tokens, handoff records, saved conversations).
//!
//! Each store is a `Mutex<HashMap>` whose entries expire. Sweeping every expired entry on every
//! write makes each write O(live entries) under a process-wide lock, which at a thousand calls
//! is most of the lock's hold time; [`Sweep`] spaces full sweeps out instead, and reads check
//! an entry's own expiry, so a late sweep never returns stale data.

use std::time::{Duration, Instant};

/// How often a store may sweep all its entries (about once a second).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// When a store last swept; lives inside the store's mutex next to its map.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    next: Instant,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep {
            next: Instant::now() + SWEEP_EVERY,
        }
    }
}

impl Sweep {
    /// Whether a full sweep is due at `now`; when it is, the next one is due a [`SWEEP_EVERY`]
    /// later (so the caller must sweep now).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + SWEEP_EVERY;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_at_most_once_a_second() {
        let mut sweep = Sweep::default();
        let now = Instant::now();
        assert!(!sweep.due(now));
        let later = now + SWEEP_EVERY * 2;
        assert!(sweep.due(later));
        assert!(!sweep.due(later + Duration::from_millis(10)));
        assert!(sweep.due(later + SWEEP_EVERY));
    }
}
