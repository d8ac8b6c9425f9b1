//! The turn loop: tools and model faults.

use std::sync::{Arc, Mutex};

use relaybot::agent::tools::{Tool, ToolInput, ToolRegistry};
use serde_json::json;

use crate::{
    fake_llm::{Chunk, Script},
    helpers::{messages, reply, spawn_app, spawn_app_with},
};

fn order_tool(seen: Arc<Mutex<Vec<serde_json::Value>>>) -> Tool {
    Tool::new(
        "lookup_order",
        "Looks up an order by its id.",
        json!({"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}),
        move |input: ToolInput| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(input.arguments.clone());
                Ok(format!("order {} shipped Monday", input.arguments["order_id"].as_str().unwrap_or("?")))
            }
        },
    )
    .speaking("Let me check that.")
}

/// Tool calls streamed in fragments across chunks (two calls in one response) are assembled
/// by index, both run, their results go back as `tool` messages, and the final text is spoken.
#[tokio::test]
async fn split_tool_call_deltas_are_assembled_and_results_go_back() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tools = ToolRegistry::new();
    tools.register(order_tool(seen.clone())).unwrap();
    let mut app = spawn_app_with(&[], tools).await;
    app.llm.push(Script::Stream(vec![
        Chunk::CallStart {
            index: 0,
            id: "call_a",
            name: "lookup_order",
            args: "",
        },
        Chunk::CallArgs {
            index: 0,
            args: "{\"order",
        },
        Chunk::CallStart {
            index: 1,
            id: "call_b",
            name: "lookup_order",
            args: "{\"order_id\"",
        },
        Chunk::CallArgs {
            index: 0,
            args: "_id\": \"A17\"}",
        },
        Chunk::CallArgs {
            index: 1,
            args: ": \"B2\"}",
        },
        Chunk::Finish("tool_calls"),
    ]));
    app.llm
        .push(Script::text(&["Both orders ", "shipped Monday."]));
    let mut caller = app.dial().await;
    caller.say("Where are orders A17 and B2?").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(
        answer.text,
        "Let me check that. Both orders shipped Monday."
    );

    let mut args = seen.lock().unwrap().clone();
    args.sort_by_key(|a| a["order_id"].as_str().unwrap().to_owned());
    assert_eq!(
        args,
        vec![json!({"order_id":"A17"}), json!({"order_id":"B2"})]
    );

    let first = app.llm.next_request().await;
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        vec!["agent_handoff", "end_call", "lookup_order"],
        "call control first, then ours"
    );
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    let n = messages.len();
    let assistant = &messages[n - 3];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["tool_calls"][0]["id"], "call_a");
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        "{\"order_id\": \"A17\"}"
    );
    assert_eq!(assistant["tool_calls"][1]["id"], "call_b");
    assert_eq!(messages[n - 2]["role"], "tool");
    assert_eq!(messages[n - 2]["tool_call_id"], "call_a");
    assert_eq!(messages[n - 2]["content"], "order A17 shipped Monday");
    assert_eq!(messages[n - 1]["tool_call_id"], "call_b");
    assert_eq!(messages[n - 1]["content"], "order B2 shipped Monday");
}

/// A tool the model invents, or arguments that are not JSON, go back to the model as errors.
#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_reported_to_the_model() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tools = ToolRegistry::new();
    tools.register(order_tool(seen.clone())).unwrap();
    let mut app = spawn_app_with(&[], tools).await;
    app.llm.push(Script::Stream(vec![
        Chunk::CallStart {
            index: 0,
            id: "c1",
            name: "launch_rockets",
            args: "{}",
        },
        Chunk::CallStart {
            index: 1,
            id: "c2",
            name: "lookup_order",
            args: "{not json",
        },
        Chunk::Finish("tool_calls"),
    ]));
    app.llm.push(Script::text(&["Sorry about that."]));
    let mut caller = app.dial().await;
    caller.say("go").await.unwrap();
    assert!(reply(&mut caller).await.text.ends_with("Sorry about that."));
    assert!(seen.lock().unwrap().is_empty(), "the handler never ran");
    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    let n = messages.len();
    assert!(messages[n - 2]["content"]
        .as_str()
        .unwrap()
        .contains("no tool named"));
    assert!(messages[n - 1]["content"]
        .as_str()
        .unwrap()
        .contains("not a valid JSON object"));
}

/// A tool that panics, and one that hangs past TOOL_TIMEOUT_MS: the model is told, answers, and
/// the caller hears it; nothing is left hanging.
#[tokio::test]
async fn broken_and_hanging_tools_are_reported_to_the_model() {
    let mut tools = ToolRegistry::new();
    tools
        .register(Tool::new(
            "explode",
            "d",
            json!({"type":"object"}),
            |_| async { panic!("tool bug") },
        ))
        .unwrap();
    tools
        .register(Tool::new(
            "hang",
            "d",
            json!({"type":"object"}),
            |_| async {
                std::future::pending::<()>().await;
                Ok(String::new())
            },
        ))
        .unwrap();
    let mut app = spawn_app_with(&[("TOOL_TIMEOUT_MS", "200")], tools).await;
    app.llm.push(Script::Stream(vec![
        Chunk::CallStart {
            index: 0,
            id: "a",
            name: "explode",
            args: "{}",
        },
        Chunk::CallStart {
            index: 1,
            id: "b",
            name: "hang",
            args: "{}",
        },
        Chunk::Finish("tool_calls"),
    ]));
    app.llm.push(Script::text(&["Sorry, I could not do that."]));
    let mut caller = app.dial().await;
    caller.say("do both").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Sorry, I could not do that.");
    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    let n = messages.len();
    assert!(messages[n - 2]["content"]
        .as_str()
        .unwrap()
        .contains("the tool failed"));
    assert!(messages[n - 1]["content"]
        .as_str()
        .unwrap()
        .contains("did not answer in time"));
}

const APOLOGY: &str = relaybot::config::DEFAULT_ERROR_LINE;

/// A model server error, twice (the turn retries once): the caller hears an apology and the turn
/// is closed.
#[tokio::test]
async fn model_error_status_gets_an_apology_with_last_true() {
    let mut app = spawn_app().await;
    app.llm.push(Script::Status(500));
    app.llm.push(Script::Status(503));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.text, APOLOGY);
    assert_eq!(
        answer.tokens.len(),
        1,
        "one frame: the apology with last:true"
    );
    let _ = app.llm.next_request().await;
    let _ = app.llm.next_request().await;
}

/// One failure is retried: the caller hears the model, not an apology.
#[tokio::test]
async fn a_single_model_error_is_retried() {
    let app = spawn_app().await;
    app.llm.push(Script::Status(429));
    app.llm.push(Script::text(&["Fine."]));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Fine.");
}

/// A stream cut mid-way: what was said stays, the apology follows, the turn is closed; the call
/// goes on.
#[tokio::test]
async fn cut_stream_gets_an_apology_and_the_call_goes_on() {
    let mut app = spawn_app().await;
    app.llm.push(Script::Cut(vec![
        Chunk::Text("Your balance "),
        Chunk::Text("is"),
    ]));
    app.llm.push(Script::text(&["Back again."]));
    let mut caller = app.dial().await;
    caller.say("What's my balance?").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.text, format!("Your balance is {APOLOGY}"));
    caller.say("hello?").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Back again.");
    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    let messages = messages(&second);
    assert_eq!(
        messages[messages.len() - 2]["content"],
        format!("Your balance is {APOLOGY}")
    );
}

/// A stream that ends cleanly but without a finish reason counts as cut.
#[tokio::test]
async fn stream_without_finish_reason_counts_as_cut() {
    let app = spawn_app().await;
    app.llm.push(Script::Stream(vec![Chunk::Text("Half ")]));
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, format!("Half {APOLOGY}"));
}

/// A model that never answers: after the first-token timeout the caller hears an apology.
/// (The timeout is shortened here; the timing itself is tested on paused time in
/// `agent::turn`'s unit tests.)
#[tokio::test]
async fn stalled_model_gets_an_apology_after_the_timeout() {
    let app = spawn_app_with(
        &[("LLM_FIRST_TOKEN_TIMEOUT_MS", "200")],
        ToolRegistry::new(),
    )
    .await;
    app.llm.push(Script::Stall);
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.text, APOLOGY);
}

/// A model that stops mid-reply: after the idle timeout the caller hears an apology.
#[tokio::test]
async fn model_that_stalls_mid_stream_gets_an_apology() {
    let app = spawn_app_with(
        &[("LLM_STREAM_IDLE_TIMEOUT_MS", "200")],
        ToolRegistry::new(),
    )
    .await;
    let gate = crate::fake_llm::Gate::default();
    app.llm.push(Script::Gated {
        before: vec![Chunk::Text("Well, ")],
        after: vec![],
        gate,
    });
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, format!("Well, {APOLOGY}"));
}
