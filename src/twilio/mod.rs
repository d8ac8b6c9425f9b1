//! Twilio's side of things: TwiML we write ([`twiml`]), webhooks we receive ([`webhooks`]) and
//! request signatures ([`signature`]).

pub mod signature;
pub mod twiml;
pub mod webhooks;
