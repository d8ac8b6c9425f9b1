//! The Amazon Connect channel: relaybot as the Lex V2 code hook. Being written (issue 12).

pub mod auth;
