//! Conversation Relay: the WebSocket protocol ([`protocol`]) and the per-call session that
//! speaks it ([`session`]).

pub mod protocol;
pub mod session;
