//! Any WebSocket text frame: `Inbound::parse` must return `Ok` or `Err`, never panic, and what it
//! parsed must serialise (for logs) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybot::relay::protocol::Inbound;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the WebSocket protocol; anything else never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = Inbound::parse(text) {
        if let Inbound::Info(info) = &message {
            let _ = info.event();
        }
        // `Unknown` is not serialisable: that is an error, not a panic.
        let _ = serde_json::to_string(&message);
    }
});
