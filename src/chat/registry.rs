//! Which conversations have a live task, which messages were already taken (Twilio retries a
//! delivery it thinks failed, with the same `MessageSid`), and which conversations were handed
//! to a human. One short lock, never held across an await.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::Input;
use crate::store::Sweep;

/// How long a `MessageSid` is remembered: Twilio's retries of one delivery come within
/// seconds or minutes (observed; the schedule is not documented). A live conversation also
/// drops messages at or below the last `Index` it took.
const SEEN_FOR: Duration = Duration::from_secs(15 * 60);
/// How long a handed-off conversation is remembered here (the conversation's `handedOff`
/// attribute is the lasting mark; this spares a REST read per message meanwhile).
const HANDED_OFF_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// Where an event goes.
pub(super) enum Route {
    /// To the conversation's live task.
    Send(mpsc::Sender<Input>),
    /// To a new task, to be started with this receiver.
    Start(mpsc::Sender<Input>, mpsc::Receiver<Input>),
    /// Nowhere, for this reason.
    Drop(Dropped),
}

/// Why an event goes nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// A retried delivery of a message already taken.
    Retry,
    /// The conversation was handed to a human.
    HandedOff,
    /// No live conversation, and the event does not start one.
    NotLive,
    /// At `CHAT_MAX_CONVERSATIONS`.
    Capacity,
}

impl Dropped {
    /// The `outcome` label of `relaybot_chat_events_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Dropped::Retry => "retry",
            Dropped::HandedOff => "handed_off",
            Dropped::NotLive => "ignored",
            Dropped::Capacity => "capacity",
        }
    }

    /// For the log.
    pub(super) fn why(self) -> &'static str {
        match self {
            Dropped::Retry => "a retried delivery of a message already taken",
            Dropped::HandedOff => "the conversation was handed to a human",
            Dropped::NotLive => "no live conversation",
            Dropped::Capacity => "at CHAT_MAX_CONVERSATIONS",
        }
    }
}

#[derive(Default)]
struct Maps {
    live: HashMap<String, mpsc::Sender<Input>>,
    seen: HashMap<String, Instant>,
    handed_off: HashMap<String, Instant>,
    sweep: Sweep,
}

/// The chat channel's bookkeeping.
pub(super) struct Registry {
    maps: Mutex<Maps>,
    max_live: usize,
}

impl Registry {
    /// At most `max_live` conversations with a task at once.
    pub(super) fn new(max_live: usize) -> Self {
        Registry {
            maps: Mutex::new(Maps::default()),
            max_live,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Conversations with a live task.
    pub(super) fn live(&self) -> usize {
        self.lock().live.len()
    }

    /// Where an event of `conversation_sid` goes. `message_sid`: a message seen before is
    /// dropped (and remembered otherwise); `starts`: whether the event may start a task.
    pub(super) fn route(
        &self,
        conversation_sid: &str,
        message_sid: Option<&str>,
        starts: bool,
    ) -> Route {
        let now = Instant::now();
        let mut maps = self.lock();
        let maps = &mut *maps;
        if maps.sweep.due(now) {
            maps.seen.retain(|_, until| *until > now);
            maps.handed_off.retain(|_, until| *until > now);
        }
        let message_sid = message_sid.filter(|s| !s.is_empty());
        if let Some(sid) = message_sid {
            if maps.seen.get(sid).is_some_and(|until| *until > now) {
                return Route::Drop(Dropped::Retry);
            }
        }
        if message_sid.is_some()
            && maps
                .handed_off
                .get(conversation_sid)
                .is_some_and(|until| *until > now)
        {
            return Route::Drop(Dropped::HandedOff);
        }
        // From here the event is taken (unless its queue turns out full: see `forget`).
        let taken = |maps: &mut Maps| {
            if let Some(sid) = message_sid {
                maps.seen.insert(sid.to_owned(), now + SEEN_FOR);
            }
        };
        if let Some(tx) = maps.live.get(conversation_sid).filter(|tx| !tx.is_closed()) {
            let tx = tx.clone();
            taken(maps);
            return Route::Send(tx);
        }
        if !starts {
            return Route::Drop(Dropped::NotLive);
        }
        if maps.live.len() >= self.max_live {
            maps.live.retain(|_, tx| !tx.is_closed());
            if maps.live.len() >= self.max_live {
                return Route::Drop(Dropped::Capacity);
            }
        }
        let (tx, rx) = super::channel();
        maps.live.insert(conversation_sid.to_owned(), tx.clone());
        taken(maps);
        Route::Start(tx, rx)
    }

    /// `message_sid` was not taken after all (its conversation's queue was full): a redelivery
    /// may try again.
    pub(super) fn forget(&self, message_sid: &str) {
        self.lock().seen.remove(message_sid);
    }

    /// The task of `conversation_sid` is ending: later events start a new one.
    pub(super) fn remove(&self, conversation_sid: &str) {
        self.lock().live.remove(conversation_sid);
    }

    /// Marks `conversation_sid` handed off: its messages are dropped from now on.
    pub(super) fn mark_handed_off(&self, conversation_sid: &str) {
        self.lock()
            .handed_off
            .insert(conversation_sid.to_owned(), Instant::now() + HANDED_OFF_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_handoffs_and_the_cap() {
        let registry = Registry::new(1);
        let Route::Start(_tx, _rx) = registry.route("CH1", Some("IM1"), true) else {
            panic!("the first message starts a task");
        };
        assert!(matches!(
            registry.route("CH1", Some("IM1"), true),
            Route::Drop(_)
        ));
        assert!(matches!(
            registry.route("CH1", Some("IM2"), true),
            Route::Send(_)
        ));
        assert!(
            matches!(
                registry.route("CH2", Some("IM3"), true),
                Route::Drop(Dropped::Capacity)
            ),
            "past the cap"
        );
        registry.mark_handed_off("CH1");
        assert!(matches!(
            registry.route("CH1", Some("IM4"), true),
            Route::Drop(_)
        ));
        registry.remove("CH1");
        assert_eq!(registry.live(), 0);
        assert!(matches!(registry.route("CH3", None, false), Route::Drop(_)));
    }
}
