//! Conversation Relay: the WebSocket protocol ([`protocol`]), the per-call session that speaks it
//! ([`session`]: the call's logic), the socket loop that drives a session ([`socket`]), and what a
//! dropped session leaves for a reconnect ([`resume`]).

pub mod protocol;
pub mod resume;
pub mod session;
pub mod socket;
