//! Any `/action` request body: `parse_form` and the typed readers must not panic, the typed
//! callback keeps every parameter as received, and `HandoffData` (our own JSON, echoed back by
//! Twilio, but reachable by anyone who can post to the URL) is read without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybot::{
    handoff::HandoffData,
    twilio::webhooks::{parse_form, ActionCallback, VoiceWebhook},
};

fuzz_target!(|data: &[u8]| {
    let Ok(params) = parse_form(data) else {
        return;
    };
    let callback = ActionCallback::from_params(params.clone());
    assert_eq!(callback.params, params);
    if let Some(handoff) = &callback.handoff_data {
        assert!(!handoff.is_empty());
        if let Ok(data) = serde_json::from_str::<HandoffData>(handoff) {
            let _ = data.is_handoff();
            let _ = data.to_compact_json();
            let _ = data.task_attributes();
        }
    }
    let webhook = VoiceWebhook::from_params(params.clone());
    assert_eq!(webhook.params, params);
});
