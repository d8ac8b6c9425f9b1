//! What must never reach the logs: secrets, call tokens, DTMF digits, full caller numbers.

use relaybot::{agent::tools::ToolRegistry, simulator::DialOptions, twilio::twiml};

use crate::helpers::{capture_logs, reply, spawn_app_with};

/// A whole call at the most verbose log level, with keypresses, a refused upgrade and a
/// handoff: the logs hold none of the secrets, the call token, the digits or the number.
#[tokio::test]
async fn logs_never_hold_secrets_tokens_digits_or_numbers() {
    let (logs, _guard) = capture_logs("trace");

    let mut app = spawn_app_with(
        &[
            ("TWILIO_AUTH_TOKEN", "auth-token-SECRET-1"),
            ("TWILIO_AUTH_TOKEN_SECONDARY", "auth-token-SECRET-2"),
            ("API_TOKEN", "api-token-SECRET-3"),
            ("OPENAI_API_KEY", "sk-SECRET-4"),
        ],
        ToolRegistry::new(),
    )
    .await;
    app.dial_options = DialOptions {
        from: "+15557654321".into(),
        ..app.dial_options.clone()
    };
    let mut caller = app.dial().await;
    let token = caller
        .relay
        .attr("url")
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    for key in ["#", "*", "#"] {
        caller.press(key).await.unwrap();
    }
    reply(&mut caller).await;
    caller.say("hello").await.unwrap();
    reply(&mut caller).await;
    // A replayed upgrade with the same token, refused.
    let body = app.post_form("/twiml", &[("CallSid", "CA1")]).await.2;
    assert!(twiml::parse(&body).is_ok() || body.contains("signature"));
    let replay = format!(
        "{}/ws?token={token}",
        app.base_url.replace("http://", "ws://")
    );
    let _ = tokio_tungstenite::connect_async(replay).await;
    caller.hang_up().await;

    let text = logs.text();
    assert!(
        text.contains("caller pressed a key"),
        "the keypresses were logged as events"
    );
    for secret in [
        "SECRET-1",
        "SECRET-2",
        "SECRET-3",
        "SECRET-4",
        &token,
        "5557654321",
        "#*#",
        "pressed #",
        "pressed *",
    ] {
        assert!(!text.contains(secret), "{secret:?} reached the logs");
    }
}
