//! Twilio's side of things: TwiML we write ([`twiml`]), webhooks we receive ([`webhooks`]),
//! request signatures ([`signature`]) and the Calls REST API ([`rest`]).

pub mod rest;
pub mod signature;
pub mod twiml;
pub mod webhooks;
