//! `relaybot bench`: measures the real server under simulated Twilio calls.
