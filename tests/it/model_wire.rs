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

/// The model request is stamped when it goes out on its connection (the "on the wire" of
/// `relaybot_prompt_to_model_request_seconds`), and still carries `Content-Length` (some
/// servers refuse chunked request bodies).
#[tokio::test]
async fn the_model_request_is_stamped_on_the_wire_and_sized() {
    use relaybot::agent::{openai::OpenAiModel, ChatModel, ChatRequest, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        socket
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .unwrap();
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    });
    let model = OpenAiModel::new(&base, None, "m", Duration::from_secs(1)).unwrap();
    let request = ChatRequest {
        messages: vec![Message::User {
            content: "hi".into(),
        }],
        tools: Vec::new().into(),
        on_the_wire: Default::default(),
    };
    let before = tokio::time::Instant::now();
    let answer = model.stream(request.clone()).await;
    assert!(answer.is_err(), "the fake answered 500");
    let stamped = request
        .on_the_wire
        .get()
        .copied()
        .expect("stamped when sent");
    assert!(stamped >= before);
    let head = server.await.unwrap();
    assert!(head.starts_with("post /v1/chat/completions "), "{head}");
    assert!(head.contains("content-length: "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}
