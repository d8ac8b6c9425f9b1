//! Conversation Relay: the WebSocket protocol ([`protocol`]) and the per-call session that
//! speaks it ([`session`]), and what a dropped session leaves for a reconnect ([`resume`]).

pub mod protocol;
pub mod resume;
pub mod session;
