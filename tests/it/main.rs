//! Integration tests: the real server on 127.0.0.1:0, driven over real HTTP and WebSocket by
//! the simulator's caller, with an in-process fake model. No network.

mod fake_lex;
mod fake_llm;
mod fake_twilio;
mod helpers;

mod bench;
mod capacity;
mod chat;
mod chat_rest;
mod cli;
mod connect;
mod handoff;
mod lex;
mod metrics;
mod model_wire;
mod privacy;
mod reliability;
mod session;
mod soak;
mod turns;
mod twiml;
mod watson;
mod web;
