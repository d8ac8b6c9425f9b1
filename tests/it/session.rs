//! The call session: streaming, barge-in, cancellation, DTMF, bad frames.

use relaybot::relay::protocol::Outbound;

use crate::{
    fake_llm::{Chunk, Gate, Script},
    helpers::{messages, reply, spawn_app, WAIT},
};

/// Every model delta goes out as its own `text` frame, in order, untrimmed, and the turn closes
/// with `last: true`; the model sees the system prompt, the greeting and the caller's words.
#[tokio::test]
async fn tokens_stream_in_order_and_the_turn_ends_with_last_true() {
    let mut app = spawn_app().await;
    app.llm
        .push(Script::text(&["Hello", " there", ", how ", "can I help?"]));
    let mut caller = app.dial().await;
    caller.say("Hi, who is this?").await.unwrap();

    let mut frames = Vec::new();
    while let Some(frame) = caller.next(WAIT).await.unwrap() {
        let done = matches!(frame, Outbound::Text { last: true, .. });
        frames.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(
        frames,
        vec![
            Outbound::token("Hello"),
            Outbound::token(" there"),
            Outbound::token(", how "),
            Outbound::token("can I help?"),
            Outbound::last(""),
        ]
    );

    let request = app.llm.next_request().await;
    assert_eq!(request["model"], "fake-model");
    assert_eq!(request["stream"], true);
    let messages = messages(&request);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], caller.welcome_greeting().unwrap());
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(messages[2]["content"], "Hi, who is this?");
}

/// Partial prompts (`last: false`) do not start a turn; the final one does.
#[tokio::test]
async fn only_final_prompts_start_a_turn() {
    let mut app = spawn_app().await;
    app.llm.push(Script::text(&["Sure."]));
    let mut caller = app.dial().await;
    caller
        .send_raw(r#"{"type":"prompt","voicePrompt":"I want","lang":"en-US","last":false}"#)
        .await
        .unwrap();
    caller.say("I want a refund").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Sure.");
    let request = app.llm.next_request().await;
    assert_eq!(
        messages(&request).last().unwrap()["content"],
        "I want a refund"
    );
}

/// Barge-in: the model's stream is dropped, no old token follows the interrupt, the cut turn is
/// closed with an empty `last: true`, and the next request carries only what the caller heard.
#[tokio::test]
async fn barge_in_aborts_the_stream_and_trims_the_history() {
    let mut app = spawn_app().await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![
            Chunk::Text("Life is "),
            Chunk::Text("a complex "),
            Chunk::Text("set of "),
        ],
        after: vec![Chunk::Text("OLD-TOKEN "), Chunk::Finish("stop")],
        gate: gate.clone(),
    });
    app.llm.push(Script::text(&["Sure, ", "go ahead."]));
    let mut caller = app.dial().await;
    caller.say("Tell me about life").await.unwrap();
    for expected in ["Life is ", "a complex ", "set of "] {
        assert_eq!(
            caller.next(WAIT).await.unwrap(),
            Some(Outbound::token(expected))
        );
    }

    caller.interrupt("life is a   Complex").await.unwrap();
    assert_eq!(caller.next(WAIT).await.unwrap(), Some(Outbound::last("")));
    tokio::time::timeout(WAIT, gate.dropped.notified())
        .await
        .expect("the model's HTTP stream is dropped on interrupt");
    gate.open.notify_one();

    caller.say("Actually, never mind").await.unwrap();
    let next = reply(&mut caller).await;
    assert_eq!(next.text, "Sure, go ahead.");
    assert!(!next.text.contains("OLD-TOKEN"));

    let _first = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    let n = messages.len();
    assert_eq!(messages[n - 3]["content"], "Tell me about life");
    assert_eq!(messages[n - 2]["role"], "assistant");
    assert_eq!(
        messages[n - 2]["content"],
        "Life is a complex",
        "trimmed to what was heard"
    );
    assert_eq!(messages[n - 1]["content"], "Actually, never mind");
}

/// An interrupt that arrives after the model finished (the caller is still hearing the reply)
/// trims that reply too.
#[tokio::test]
async fn late_interrupt_trims_a_finished_reply() {
    let mut app = spawn_app().await;
    app.llm.push(Script::text(&["One, ", "two, ", "three."]));
    app.llm.push(Script::text(&["Okay."]));
    let mut caller = app.dial().await;
    caller.say("Count").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "One, two, three.");
    caller.interrupt("One, two").await.unwrap();
    caller.say("Stop").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Okay.");
    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    assert_eq!(messages[messages.len() - 2]["content"], "One, two");
}

/// A new prompt while a turn runs cancels it (stream dropped, turn closed) and starts a new one;
/// the history keeps what was already said.
#[tokio::test]
async fn a_prompt_during_a_turn_cancels_it() {
    let mut app = spawn_app().await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![Chunk::Text("Let me think ")],
        after: vec![Chunk::Text("OLD-TOKEN"), Chunk::Finish("stop")],
        gate: gate.clone(),
    });
    app.llm.push(Script::text(&["New answer."]));
    let mut caller = app.dial().await;
    caller.say("first question").await.unwrap();
    assert_eq!(
        caller.next(WAIT).await.unwrap(),
        Some(Outbound::token("Let me think "))
    );
    caller.say("second question").await.unwrap();
    assert_eq!(caller.next(WAIT).await.unwrap(), Some(Outbound::last("")));
    tokio::time::timeout(WAIT, gate.dropped.notified())
        .await
        .expect("stream dropped");
    gate.open.notify_one();
    assert_eq!(reply(&mut caller).await.text, "New answer.");

    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    let n = messages.len();
    assert_eq!(messages[n - 3]["content"], "first question");
    assert_eq!(messages[n - 2]["content"], "Let me think ");
    assert_eq!(messages[n - 1]["content"], "second question");
}

/// A keypress reaches the agent as caller input.
#[tokio::test]
async fn dtmf_reaches_the_agent() {
    let mut app = spawn_app().await;
    app.llm.push(Script::text(&["You chose billing."]));
    let mut caller = app.dial().await;
    caller.press("5").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "You chose billing.");
    let request = app.llm.next_request().await;
    assert_eq!(
        messages(&request).last().unwrap()["content"],
        "The caller pressed 5."
    );
}

/// Malformed JSON, unknown types, wrong field types, binary frames and a bad keypress are
/// skipped; the call goes on.
#[tokio::test]
async fn malformed_and_unknown_frames_do_not_end_the_call() {
    let mut app = spawn_app().await;
    app.llm.push(Script::text(&["Still here."]));
    let mut caller = app.dial().await;
    for junk in [
        "not json at all",
        "[1,2,3]",
        r#"{"no":"type"}"#,
        r#"{"type":"somethingNew","x":1}"#,
        r#"{"type":"prompt","voicePrompt":null,"last":true}"#,
        r#"{"type":"dtmf","digit":"12"}"#,
        r#"{"type":"info","name":"agentSpeaking","value":{"odd":true}}"#,
        r#"{"type":"error","description":"Invalid message received"}"#,
    ] {
        caller.send_raw(junk).await.unwrap();
    }
    caller.say("hello?").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Still here.");
    let request = app.llm.next_request().await;
    assert_eq!(messages(&request).last().unwrap()["content"], "hello?");
}
