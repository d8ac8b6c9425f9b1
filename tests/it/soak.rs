//! A bounded soak: many concurrent calls, several turns each, against the fake model.

use std::{sync::Arc, time::Duration};

use relaybot::{agent::tools::ToolRegistry, relay::protocol::Outbound, simulator::Caller};
use tokio::sync::Barrier;

use crate::{
    fake_llm::{Chunk, Script},
    helpers::spawn_app_with,
};

const CALLS: usize = 500;
const TURNS: usize = 3;
const TOKENS: usize = 20;

/// 500 calls live at once, three turns each: every token arrives, in order, every turn closes
/// with `last: true`, and once the callers hang up no call task is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_calls_lose_and_reorder_nothing() {
    // Callers wait for each other silently, so no "are you still there?" here.
    let app = spawn_app_with(
        &[
            ("MAX_CONCURRENT_CALLS", "1000"),
            ("IDLE_REPROMPT_MS", "600000"),
            // Under this load on two cores a first token can take over 1.5 s; the filler line
            // is right then, but this test counts the model's tokens only.
            ("LLM_FILLER_LINE", ""),
        ],
        ToolRegistry::new(),
    )
    .await;
    let base = app.base_url.clone();
    let options = app.dial_options.clone();
    let mut chunks: Vec<Chunk> = (0..TOKENS)
        .map(|i| Chunk::Owned(format!("t{i} ")))
        .collect();
    chunks.push(Chunk::Finish("stop"));
    app.llm.set_default(Script::Stream(chunks));
    let expected: Vec<Outbound> = (0..TOKENS)
        .map(|i| Outbound::token(format!("t{i} ")))
        .chain([Outbound::last("")])
        .collect();

    let all_dialled = Arc::new(Barrier::new(CALLS));
    // Calls are placed a few dozen at a time (as a switch would), then all talk at once.
    let dialling = Arc::new(tokio::sync::Semaphore::new(32));
    let mut calls = Vec::new();
    for n in 0..CALLS {
        let barrier = all_dialled.clone();
        let expected = expected.clone();
        let (base, options, dialling) = (base.clone(), options.clone(), dialling.clone());
        calls.push(tokio::spawn(async move {
            let permit = dialling.acquire().await.unwrap();
            let mut caller = Caller::dial(&base, options)
                .await
                .unwrap_or_else(|e| panic!("dial {n}: {e:?}"));
            drop(permit);
            barrier.wait().await;
            for turn in 0..TURNS {
                caller.say(&format!("call {n} turn {turn}")).await.unwrap();
                let mut frames = Vec::with_capacity(TOKENS + 1);
                loop {
                    let frame = caller
                        .next(Duration::from_secs(30))
                        .await
                        .unwrap()
                        .expect("socket open");
                    let last = matches!(frame, Outbound::Text { last: true, .. });
                    frames.push(frame);
                    if last {
                        break;
                    }
                }
                assert_eq!(frames, expected, "call {n} turn {turn}");
            }
            caller.hang_up().await;
        }));
    }
    let soak = async {
        for call in calls {
            call.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), soak)
        .await
        .expect("the soak finishes in time");

    let tracker = app.server.state.tracker.clone();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} call tasks still running after every caller hung up",
                tracker.len()
            )
        });
}
