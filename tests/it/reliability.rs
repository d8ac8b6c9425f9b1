//! Security and reliability: signatures, call tokens, model faults, reconnect, limits, drain.

use std::time::Duration;

use relaybot::{
    agent::tools::ToolRegistry,
    relay::protocol::Outbound,
    security::CallTokens,
    simulator::{new_sid, Caller, DialOptions},
    twilio::{signature, twiml},
};
use secrecy::SecretString;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError};

use crate::{
    fake_llm::{Chunk, Script},
    fake_twilio::FakeTwilio,
    helpers::{messages, reply, spawn_app_with, TestApp, WAIT},
};

const TOKEN: &str = "primary-auth-token";
const PUBLIC: &str = "https://bot.example.com";
const SECRET: &str = "call-token-secret-for-tests";

async fn secured(extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("PUBLIC_URL", PUBLIC),
        ("CALL_TOKEN_SECRET", SECRET),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings, ToolRegistry::new()).await
}

/// POSTs `/twiml` with the signature `sign` computes for the signed URL; returns the status.
async fn post_twiml(app: &TestApp, signature: Option<String>) -> u16 {
    let form = [("CallSid", "CA1"), ("From", "+15551230000")];
    let mut request = reqwest::Client::new()
        .post(format!("{}/twiml", app.base_url))
        .form(&form);
    if let Some(sig) = signature {
        request = request.header(signature::HEADER, sig);
    }
    request.send().await.unwrap().status().as_u16()
}

fn twiml_params() -> Vec<(String, String)> {
    vec![
        ("CallSid".into(), "CA1".into()),
        ("From".into(), "+15551230000".into()),
    ]
}

/// Every signature case on the webhook: good, bad, missing, the default-port variant, the
/// secondary token during rotation; and `/action` is checked the same way.
#[tokio::test]
async fn webhooks_are_refused_without_a_valid_signature() {
    let app = secured(&[("TWILIO_AUTH_TOKEN_SECONDARY", "old-token")]).await;
    let url = format!("{PUBLIC}/twiml");
    assert_eq!(
        post_twiml(&app, Some(signature::sign(TOKEN, &url, &twiml_params()))).await,
        200
    );
    assert_eq!(post_twiml(&app, None).await, 403, "missing");
    assert_eq!(
        post_twiml(&app, Some(signature::sign("wrong", &url, &twiml_params()))).await,
        403,
        "bad"
    );
    assert_eq!(
        post_twiml(
            &app,
            Some(signature::sign(
                TOKEN,
                &format!("{PUBLIC}/other"),
                &twiml_params()
            ))
        )
        .await,
        403,
        "signed for another URL"
    );
    let with_port = "https://bot.example.com:443/twiml";
    assert_eq!(
        post_twiml(
            &app,
            Some(signature::sign(TOKEN, with_port, &twiml_params()))
        )
        .await,
        200,
        "port variant"
    );
    assert_eq!(
        post_twiml(
            &app,
            Some(signature::sign("old-token", &url, &twiml_params()))
        )
        .await,
        200,
        "secondary token"
    );
    let action = reqwest::Client::new()
        .post(format!("{}/action", app.base_url))
        .form(&[("CallSid", "CA1"), ("SessionStatus", "completed")])
        .send()
        .await
        .unwrap();
    assert_eq!(action.status(), 403, "/action is checked too");
    // The simulator signs like Twilio: a whole call works.
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
}

async fn upgrade(app: &TestApp, query: &str, signature: Option<String>) -> Result<(), u16> {
    let local = format!("{}/ws{query}", app.base_url.replace("http://", "ws://"));
    let mut request = local.as_str().into_client_request().unwrap();
    if let Some(sig) = signature {
        request
            .headers_mut()
            .insert(signature::HEADER, sig.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

/// The upgrade is refused before 101 without a valid signature (either URL form), without a
/// call token, with an expired one, and with a replayed one.
#[tokio::test]
async fn websocket_upgrades_need_a_signature_and_a_fresh_call_token() {
    let app = secured(&[]).await;
    let tokens = CallTokens::new(
        Some(SecretString::from(SECRET.to_owned())),
        Duration::from_secs(60),
    );
    let sign_full =
        |query: &str| signature::sign(TOKEN, &format!("wss://bot.example.com/ws{query}"), &[]);

    let fresh = format!("?token={}", tokens.mint("CA1"));
    assert_eq!(upgrade(&app, &fresh, None).await, Err(403), "no signature");
    assert_eq!(
        upgrade(
            &app,
            &fresh,
            Some(signature::sign("wrong", "wss://bot.example.com/ws", &[]))
        )
        .await,
        Err(403),
        "bad signature"
    );
    assert_eq!(
        upgrade(&app, "", Some(sign_full(""))).await,
        Err(403),
        "no call token"
    );
    let expired = format!("?token={}", tokens.mint_expiring_at("CA1", 1));
    assert_eq!(
        upgrade(&app, &expired, Some(sign_full(&expired))).await,
        Err(403),
        "expired"
    );

    assert_eq!(
        upgrade(&app, &fresh, Some(sign_full(&fresh))).await,
        Ok(()),
        "full-URL form"
    );
    assert_eq!(
        upgrade(&app, &fresh, Some(sign_full(&fresh))).await,
        Err(403),
        "replayed token"
    );

    let other = tokens.mint("CA2");
    let sorted = signature::sign(
        TOKEN,
        "wss://bot.example.com/ws",
        &[("token".to_owned(), other.clone())],
    );
    assert_eq!(
        upgrade(&app, &format!("?token={other}"), Some(sorted)).await,
        Ok(()),
        "sorted-query form"
    );
}

/// A `setup` for another call than the token's is refused: the socket closes (1008).
#[tokio::test]
async fn setup_must_match_the_call_token() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    let body = reqwest::Client::new()
        .post(format!("{}/twiml", app.base_url))
        .form(&[("CallSid", "CAaaaa"), ("From", "+1555")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut impostor = Caller::connect(
        &app.base_url,
        &body,
        "CAbbbb".into(),
        DialOptions::default(),
    )
    .await
    .unwrap();
    impostor.say("hello").await.ok();
    assert_eq!(
        impostor.next(WAIT).await.unwrap(),
        None,
        "closed without a reply"
    );
}

/// A malformed SSE chunk is a model fault like any other: apology, `last:true`, call goes on.
#[tokio::test]
async fn malformed_model_stream_gets_an_apology() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::Stream(vec![
        Chunk::Text("Hi "),
        Chunk::Raw("{not json"),
        Chunk::Finish("stop"),
    ]));
    app.llm.push(Script::text(&["Fine now."]));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        format!("Hi {}", relaybot::config::DEFAULT_ERROR_LINE)
    );
    caller.say("again").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Fine now.");
}

/// A slow model: the filler line after LLM_FILLER_AFTER_MS, then (stalled) the apology.
#[tokio::test]
async fn slow_model_gets_a_filler_line_then_an_apology() {
    let app = spawn_app_with(
        &[
            ("LLM_FILLER_AFTER_MS", "50"),
            ("LLM_FIRST_TOKEN_TIMEOUT_MS", "400"),
        ],
        ToolRegistry::new(),
    )
    .await;
    app.llm.push(Script::Stall);
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.tokens[0], "One moment. ");
    assert_eq!(
        answer.text,
        format!("One moment. {}", relaybot::config::DEFAULT_ERROR_LINE)
    );
}

/// With a human configured, a model failure offers one; the second failure in a row hands the
/// caller over.
#[tokio::test]
async fn repeated_model_failures_hand_the_caller_to_a_human() {
    let app = spawn_app_with(
        &[
            ("TWILIO_WORKFLOW_SID", "WW0123456789abcdef0123456789abcdef"),
            ("HANDOFF_MAX_WAIT_MS", "100"),
        ],
        ToolRegistry::new(),
    )
    .await;
    for _ in 0..4 {
        app.llm.push(Script::Status(500));
    }
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::lines::LLM_OFFER_HUMAN
    );
    caller.say("hello?").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::DEFAULT_HANDOFF_LINE
    );
    match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End {
            handoff_data: Some(data),
        }) => assert!(data.contains("live-agent-handoff")),
        other => panic!("expected end, got {other:?}"),
    }
}

/// A Calls API fault during a handoff whose turn the caller talks over: nothing stale is said,
/// the caller's words are not answered, and the fallback `end` still hands them over.
#[tokio::test]
async fn rest_fault_during_an_interrupted_handoff_still_reaches_a_human() {
    let twilio = FakeTwilio::start().await;
    for _ in 0..3 {
        twilio.error(503, 20500);
    }
    let base = twilio.base_url.clone();
    let app = spawn_app_with(
        &[
            ("STUDIO_FLOW_URL", "https://webhooks.twilio.com/v1/Accounts/AC0123456789abcdef0123456789abcdef/Flows/FW0123456789abcdef0123456789abcdef"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_API_BASE", base.as_str()),
        ],
        ToolRegistry::new(),
    )
    .await;
    app.llm
        .push(Script::call("h", "agent_handoff", "{\"reason\":\"asked\"}"));
    let mut caller = app.dial().await;
    caller.say("a person").await.unwrap();
    reply(&mut caller).await;
    caller.agent_speaking(true).await.unwrap();
    caller.agent_speaking(false).await.unwrap();
    caller.interrupt("One moment").await.unwrap();
    caller.say("hello? are you there?").await.unwrap();
    match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End {
            handoff_data: Some(data),
        }) => assert!(data.contains("\"reason\":\"asked\"")),
        other => panic!("expected the fallback end and nothing else, got {other:?}"),
    }
}

/// A dropped socket: `/action` (failed, call in progress) answers fresh ConversationRelay TwiML
/// with the reconnect line, and the new session resumes the conversation.
#[tokio::test]
async fn a_dropped_call_reconnects_and_resumes_the_conversation() {
    let mut app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::text(&["Nice to meet you, Ann."]));
    app.llm.push(Script::text(&["Your name is Ann."]));
    let mut caller = app.dial().await;
    let call_sid = caller.call_sid.clone();
    caller.say("My name is Ann").await.unwrap();
    reply(&mut caller).await;
    let twiml_body = caller
        .post_action(
            "failed",
            "in-progress",
            &[("ErrorCode".into(), "64105".into())],
        )
        .await;
    caller.hang_up().await;
    let twiml_body = twiml_body.unwrap();
    let relay = twiml::parse(&twiml_body).unwrap();
    let relay = relay.find("ConversationRelay").unwrap().clone();
    assert_eq!(
        relay.attr("welcomeGreeting"),
        Some(relaybot::config::lines::RECONNECT)
    );

    let mut rejoined =
        Caller::connect(&app.base_url, &twiml_body, call_sid, DialOptions::default())
            .await
            .unwrap();
    rejoined.say("What's my name?").await.unwrap();
    assert_eq!(reply(&mut rejoined).await.text, "Your name is Ann.");
    let _ = app.llm.next_request().await;
    let resumed = app.llm.next_request().await;
    let contents: Vec<&str> = messages(&resumed)
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(contents.contains(&"My name is Ann"), "{contents:?}");
    assert!(contents.contains(&"Nice to meet you, Ann."), "{contents:?}");
    assert!(
        contents.contains(&relaybot::config::lines::RECONNECT),
        "{contents:?}"
    );
}

/// Oversized frames are logged and dropped (never parsed, never answered); the call goes on.
#[tokio::test]
async fn oversized_frames_are_dropped_and_the_call_goes_on() {
    let mut app = spawn_app_with(&[("MAX_FRAME_BYTES", "1024")], ToolRegistry::new()).await;
    let mut caller = app.dial().await;
    let huge = format!(
        r#"{{"type":"prompt","voicePrompt":"HUGE {}","last":true}}"#,
        "a".repeat(100_000)
    );
    caller.send_raw(&huge).await.unwrap();
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
    let first = app.llm.next_request().await;
    assert_eq!(
        messages(&first).last().unwrap()["content"],
        "hello",
        "the oversized prompt never reached the model"
    );
}

/// Long prompts are cut to MAX_PROMPT_CHARS; the history sent to the model stays within
/// HISTORY_MAX_CHARS (system prompt and the new message included) by dropping the oldest turns.
#[tokio::test]
async fn prompts_and_history_are_bounded() {
    let mut app = spawn_app_with(
        &[
            ("MAX_PROMPT_CHARS", "300"),
            ("HISTORY_MAX_CHARS", "3000"),
            ("WELCOME_GREETING", ""),
        ],
        ToolRegistry::new(),
    )
    .await;
    let mut caller = app.dial().await;
    caller.say(&"z".repeat(1000)).await.unwrap();
    reply(&mut caller).await;
    let first = app.llm.next_request().await;
    assert_eq!(
        messages(&first).last().unwrap()["content"]
            .as_str()
            .unwrap()
            .len(),
        300,
        "cut"
    );
    let system = messages(&first)[0]["content"].as_str().unwrap().len();
    for i in 0..30 {
        caller
            .say(&format!("line {i:02} {}", "x".repeat(200)))
            .await
            .unwrap();
        reply(&mut caller).await;
        let request = app.llm.next_request().await;
        let all = messages(&request);
        assert_eq!(all[0]["role"], "system");
        assert!(all.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with(&format!("line {i:02}")));
        let size: usize = all
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().len())
            .sum();
        assert!(
            size <= 3000.max(system + 300),
            "turn {i}: {size} characters"
        );
    }
    let last = app.llm.next_request_now();
    assert!(last.is_none());
    let final_request = {
        caller.say("final").await.unwrap();
        reply(&mut caller).await;
        app.llm.next_request().await
    };
    let texts: Vec<&str> = messages(&final_request)
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        !texts.iter().any(|t| t.starts_with("line 00")),
        "the oldest turns were dropped"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("line 29")),
        "recent turns kept"
    );
}

/// At MAX_CONCURRENT_CALLS new calls still get TwiML that serves them (a line, then a human or
/// goodbye), and a further upgrade is refused.
#[tokio::test]
async fn the_call_cap_turns_callers_away_politely() {
    let app = spawn_app_with(&[("MAX_CONCURRENT_CALLS", "1")], ToolRegistry::new()).await;
    let mut first = app.dial().await;
    first.say("hi").await.unwrap();
    reply(&mut first).await;
    let (status, _, body) = app
        .post_form("/twiml", &[("CallSid", "CA2"), ("From", "+1555")])
        .await;
    assert_eq!(status, 200);
    let root = twiml::parse(&body).unwrap();
    assert_eq!(
        root.find("Say").unwrap().text,
        relaybot::config::lines::AT_CAPACITY
    );
    assert!(
        root.find("Hangup").is_some() && root.find("ConversationRelay").is_none(),
        "{body}"
    );

    let app = spawn_app_with(
        &[
            ("MAX_CONCURRENT_CALLS", "1"),
            ("TWILIO_WORKFLOW_SID", "WW0123456789abcdef0123456789abcdef"),
        ],
        ToolRegistry::new(),
    )
    .await;
    let _first = app.dial().await; // holds the only slot once the upgrade has answered
    let (_, _, body) = app
        .post_form("/twiml", &[("CallSid", "CA3"), ("From", "+1555")])
        .await;
    let root = twiml::parse(&body).unwrap();
    assert!(
        root.find("Say").is_some() && root.find("Enqueue").is_some(),
        "with a human: {body}"
    );
}

/// Shutdown drains: health says draining, new calls are turned away politely, the live call goes
/// on until it ends, then the server stops cleanly.
#[tokio::test]
async fn shutdown_lets_live_calls_finish_and_turns_new_ones_away() {
    let mut app = spawn_app_with(&[], ToolRegistry::new()).await;
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    reply(&mut caller).await;
    app.server.shutdown.cancel();
    let health_url = format!("{}/healthz", app.base_url);
    let draining = tokio::time::timeout(WAIT, async {
        loop {
            let health = reqwest::get(&health_url).await.unwrap();
            if health.status() == 503 {
                break health.text().await.unwrap();
            }
        }
    })
    .await
    .expect("health reports draining");
    assert_eq!(draining, "draining");
    let (_, _, body) = app
        .post_form("/twiml", &[("CallSid", "CA9"), ("From", "+1555")])
        .await;
    assert!(
        twiml::parse(&body)
            .unwrap()
            .find("ConversationRelay")
            .is_none(),
        "{body}"
    );

    caller.say("still there?").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        "OK.",
        "the live call survives"
    );
    caller.hang_up().await;
    let result = tokio::time::timeout(WAIT, &mut app.server.handle)
        .await
        .expect("server stops after the drain");
    result.unwrap().unwrap();
}

/// When the drain time is up, live calls hear a line and are ended (no human configured).
#[tokio::test]
async fn drain_timeout_ends_live_calls_with_a_line() {
    let app = spawn_app_with(
        &[("DRAIN_TIMEOUT", "0"), ("HANDOFF_MAX_WAIT_MS", "100")],
        ToolRegistry::new(),
    )
    .await;
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    reply(&mut caller).await;
    app.server.shutdown.cancel();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::lines::DRAIN
    );
    match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End {
            handoff_data: Some(data),
        }) => assert!(data.contains("end-call")),
        other => panic!("expected end, got {other:?}"),
    }
}

/// Distinct calls get distinct CallSids from the simulator (sanity for the tests above).
#[test]
fn simulator_sids_are_distinct() {
    assert_ne!(new_sid("CA"), new_sid("CA"));
}

/// A caller who got their TwiML just before the shutdown signal still connects and is served.
#[tokio::test]
async fn a_caller_with_twiml_still_connects_during_the_drain() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    let body = reqwest::Client::new()
        .post(format!("{}/twiml", app.base_url))
        .form(&[("CallSid", "CAlate"), ("From", "+1555")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    app.server.shutdown.cancel();
    let mut caller = Caller::connect(
        &app.base_url,
        &body,
        "CAlate".into(),
        DialOptions::default(),
    )
    .await
    .expect("the listener stays up for callers about to connect");
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
}

/// A socket that drops before the caller said anything is reconnected too (the session ran).
#[tokio::test]
async fn a_call_dropped_before_any_turn_is_reconnected() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    let caller = app.dial().await;
    let doc = caller
        .post_action("failed", "in-progress", &[])
        .await
        .unwrap();
    assert!(
        twiml::parse(&doc)
            .unwrap()
            .find("ConversationRelay")
            .is_some(),
        "{doc}"
    );
}

/// A socket that drops while the caller hears the handoff line is not reconnected to the bot:
/// `/action` finishes the handoff; one that drops during the goodbye is hung up.
#[tokio::test]
async fn a_drop_while_leaving_finishes_the_exit() {
    let app = spawn_app_with(
        &[
            ("TWILIO_WORKFLOW_SID", "WW0123456789abcdef0123456789abcdef"),
            ("HANDOFF_MAX_WAIT_MS", "60000"),
        ],
        ToolRegistry::new(),
    )
    .await;
    app.llm.push(Script::call(
        "h",
        "agent_handoff",
        "{\"reason\":\"billing\",\"summary\":\"double charge\"}",
    ));
    let mut caller = app.dial().await;
    caller.say("a person please").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::DEFAULT_HANDOFF_LINE
    );
    let doc = caller
        .post_action("failed", "in-progress", &[])
        .await
        .unwrap();
    let root = twiml::parse(&doc).unwrap();
    assert!(
        root.find("ConversationRelay").is_none(),
        "not back to the bot: {doc}"
    );
    let task: serde_json::Value = serde_json::from_str(&root.find("Task").unwrap().text).unwrap();
    assert_eq!(
        (task["handoff_reason"].as_str(), task["summary"].as_str()),
        (Some("billing"), Some("double charge"))
    );

    app.llm
        .push(Script::call("e", "end_call", "{\"reason\":\"done\"}"));
    let mut caller = app.dial().await;
    caller.say("bye").await.unwrap();
    reply(&mut caller).await;
    let doc = caller
        .post_action("failed", "in-progress", &[])
        .await
        .unwrap();
    let root = twiml::parse(&doc).unwrap();
    assert!(
        root.find("Hangup").is_some() && root.find("ConversationRelay").is_none(),
        "{doc}"
    );
}
