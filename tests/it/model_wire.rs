//! What odd OpenAI-compatible servers send: events that are not chunks, no streaming, error
//! bodies that never end. None of them may cost the caller more than one apology.

use std::time::{Duration, Instant};

use relaybot::agent::tools::ToolRegistry;

use crate::{
    fake_llm::{Chunk, Script},
    helpers::{reply, spawn_app_with, WAIT},
};

/// An event that is not a JSON chunk (a `ping`) is skipped; the reply is whole.
#[tokio::test]
async fn events_that_are_not_chunks_are_skipped() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::Stream(vec![
        Chunk::Text("Hi "),
        Chunk::Raw("ping"),
        Chunk::Text("there."),
        Chunk::Finish("stop"),
    ]));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Hi there.");
}

/// A server that ignores `stream: true` gets the apology at once (not after a timeout), and
/// the call goes on.
#[tokio::test]
async fn a_server_that_does_not_stream_gets_a_quick_apology() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::NotStreaming);
    app.llm.push(Script::text(&["Fine now."]));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::DEFAULT_ERROR_LINE
    );
    caller.say("again").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Fine now.");
}

/// A 503 whose body never ends is still a 503: read for a bounded time, then retried once, so
/// the caller hears the retried answer, not a first-token timeout.
#[tokio::test]
async fn an_error_body_that_never_ends_is_still_retried() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::EndlessError(503));
    app.llm.push(Script::text(&["Second try."]));
    let mut caller = app.dial().await;
    let started = Instant::now();
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Second try.");
    assert!(started.elapsed() < WAIT - Duration::from_secs(1));
}
