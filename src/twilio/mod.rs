//! Twilio's side of things: TwiML we write ([`twiml`]), webhooks we receive ([`webhooks`]),
//! request signatures ([`signature`]), and the REST APIs we call: Calls ([`rest`], which also
//! holds what every client shares), Conversations ([`conversations`]) and Flex Interactions
//! ([`flex`]).

pub mod conversations;
pub mod flex;
pub mod rest;
pub mod signature;
pub mod twiml;
pub mod webhooks;
