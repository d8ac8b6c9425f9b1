//! Handoff to a human and ending the call: call-control tools, the Calls API path to Studio, the
//! `end` + `<Connect action>` path, and what the human agent gets.

use std::{collections::HashMap, time::Duration};

use base64::Engine as _;
use relaybot::{
    agent::tools::ToolRegistry, handoff::HandoffData, relay::protocol::Outbound, simulator::Caller,
    twilio::twiml,
};

use crate::{
    fake_llm::{Chunk, Gate, Script},
    fake_twilio::FakeTwilio,
    helpers::{messages, reply, spawn_app_with, TestApp, WAIT},
};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const WORKFLOW: &str = "WW0123456789abcdef0123456789abcdef";
const FLOW: &str = "https://webhooks.twilio.com/v1/Accounts/AC0123456789abcdef0123456789abcdef/Flows/FW0123456789abcdef0123456789abcdef";
const LINE: &str = relaybot::config::DEFAULT_HANDOFF_LINE;

/// The model asks for a handoff, with awkward text in its arguments.
fn handoff_call() -> Script {
    Script::Stream(vec![
        Chunk::CallStart {
            index: 0,
            id: "call_h",
            name: "agent_handoff",
            args: "{\"reason\": \"Billing \\\"dispute\\\" & refund\",",
        },
        Chunk::CallArgs {
            index: 0,
            args: " \"summary\": \"Zoë says \\\"charged twice\\\"\\nwants <refund> \\\\ now\"}",
        },
        Chunk::Finish("tool_calls"),
    ])
}

fn end_call() -> Script {
    Script::call("call_e", "end_call", "{\"reason\":\"done\"}")
}

/// Waits for the `end` frame, skipping nothing else but failing on text.
async fn expect_end(caller: &mut Caller) -> HandoffData {
    match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End {
            handoff_data: Some(data),
        }) => serde_json::from_str(&data).expect("handoffData is our JSON"),
        other => panic!("expected end, got {other:?}"),
    }
}

/// The caller hears the line: Twilio reports the audio starting and stopping.
async fn hear(caller: &mut Caller) {
    caller.agent_speaking(true).await.unwrap();
    caller.agent_speaking(false).await.unwrap();
}

async fn studio_app(twilio: &FakeTwilio, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("STUDIO_FLOW_URL", FLOW),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", "secret-token"),
        ("TWILIO_API_BASE", twilio.base_url.as_str()),
        ("API_TOKEN", "flex-plugin-token"),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings, ToolRegistry::new()).await
}

/// Path 1: after the line is heard, the live call is updated through the Calls API with a
/// `<Redirect>` to the Studio flow; the body, auth header, escaping and parameters are exact,
/// and the model is not asked again after the handoff tool.
#[tokio::test]
async fn handoff_updates_the_call_to_redirect_into_studio() {
    let mut twilio = FakeTwilio::start().await;
    let mut app = studio_app(&twilio, &[]).await;
    app.llm.push(handoff_call());
    let mut caller = app.dial().await;
    caller.say("I want to talk to a person").await.unwrap();
    let line = reply(&mut caller).await;
    assert_eq!(line.text, LINE);
    assert_eq!(
        line.tokens,
        vec![LINE.to_owned()],
        "one frame: the line with last:true"
    );
    assert!(
        twilio.take_received().is_empty(),
        "nothing moves before the caller heard the line"
    );
    hear(&mut caller).await;

    let update = twilio.next_request().await;
    assert_eq!(
        update.path,
        format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Calls/{}.json",
            caller.call_sid
        )
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:secret-token"));
    assert_eq!(update.authorization, format!("Basic {basic}"));
    assert_eq!(update.form.len(), 1, "only Twiml: {:?}", update.form);
    let doc = update.twiml();
    assert!(doc.chars().count() <= 4000);
    assert!(
        doc.contains("?FlowEvent=return&amp;handoff=agent&amp;"),
        "{doc}"
    );
    let root = twiml::parse(doc).unwrap();
    assert_eq!(root.name, "Response");
    let redirect = root.find("Redirect").unwrap();
    assert_eq!(redirect.attr("method"), Some("POST"));
    let target = url::Url::parse(&redirect.text).unwrap();
    assert!(redirect
        .text
        .starts_with(&format!("{FLOW}?FlowEvent=return&")));
    let params: HashMap<String, String> = target.query_pairs().into_owned().collect();
    assert_eq!(params["FlowEvent"], "return");
    assert_eq!(params["handoff"], "agent");
    assert_eq!(params["callSid"], caller.call_sid);
    assert_eq!(
        params["reason"], "Billing 'dispute' & refund",
        "quotes made safe for Studio's JSON"
    );
    assert_eq!(
        params["summary"],
        "Zoë says 'charged twice' wants <refund> / now"
    );

    let _ = app.llm.next_request().await;
    let record = reqwest::Client::new()
        .get(format!(
            "{}/calls/{}/handoff",
            app.base_url, caller.call_sid
        ))
        .bearer_auth("flex-plugin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(record.status(), 200);
    let record: serde_json::Value = record.json().await.unwrap();
    assert_eq!(record["reason"], "Billing \"dispute\" & refund");
    assert_eq!(record["path"], "calls-api-to-studio");
    let transcript = record["transcript"].as_array().unwrap();
    assert_eq!(transcript[1]["role"], "caller");
    assert_eq!(transcript[1]["text"], "I want to talk to a person");
    assert!(transcript[1]["atMs"].as_u64().unwrap() > 1_700_000_000_000);

    // Twilio may still call the action URL for the moved call: answered harmlessly.
    let doc = caller
        .post_action("ended", "in-progress", &[])
        .await
        .unwrap();
    assert_eq!(twiml::parse(&doc).unwrap().children.len(), 0, "{doc}");
}

/// API key credentials authenticate as the key, with the account SID still in the path; a flow
/// URL that already has a query gets `&FlowEvent=return`.
#[tokio::test]
async fn api_key_credentials_and_flow_urls_with_a_query() {
    let mut twilio = FakeTwilio::start().await;
    let flow = format!("{FLOW}?Trigger=incomingCall");
    let app = studio_app(
        &twilio,
        &[
            ("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_SECRET", "key-secret"),
            ("STUDIO_FLOW_URL", flow.as_str()),
        ],
    )
    .await;
    app.llm.push(handoff_call());
    let mut caller = app.dial().await;
    caller.say("agent").await.unwrap();
    reply(&mut caller).await;
    hear(&mut caller).await;
    let update = twilio.next_request().await;
    assert!(update.path.contains(ACCOUNT));
    let basic = base64::engine::general_purpose::STANDARD
        .encode("SK0123456789abcdef0123456789abcdef:key-secret");
    assert_eq!(update.authorization, format!("Basic {basic}"));
    let redirect = twiml::parse(update.twiml())
        .unwrap()
        .find("Redirect")
        .unwrap()
        .text
        .clone();
    assert!(
        redirect.starts_with(&format!("{flow}&FlowEvent=return&handoff=agent")),
        "{redirect}"
    );
}

/// 5xx answers are retried (three tries in all); when Twilio still fails the caller is handed off
/// through `end` + `<Connect action>` instead, and /action enqueues them in Flex.
#[tokio::test]
async fn calls_api_failures_are_retried_then_fall_back_to_end() {
    let mut twilio = FakeTwilio::start().await;
    for _ in 0..3 {
        twilio.error(503, 20500);
    }
    let app = studio_app(&twilio, &[("TWILIO_WORKFLOW_SID", WORKFLOW)]).await;
    app.llm.push(handoff_call());
    let mut caller = app.dial().await;
    caller.say("a person please").await.unwrap();
    reply(&mut caller).await;
    hear(&mut caller).await;
    let data = expect_end(&mut caller).await;
    assert_eq!(
        twilio.take_received().len(),
        3,
        "three tries before falling back"
    );
    assert_eq!(data.reason_code, "live-agent-handoff");
    assert_eq!(data.call_sid, caller.call_sid);
    assert_eq!(
        data.summary,
        "Zoë says \"charged twice\"\nwants <refund> \\ now"
    );

    let raw = serde_json::to_string(&data).unwrap();
    let doc = caller
        .post_action("ended", "in-progress", &[("HandoffData".into(), raw)])
        .await
        .unwrap();
    let root = twiml::parse(&doc).unwrap();
    assert_eq!(
        root.find("Enqueue").unwrap().attr("workflowSid"),
        Some(WORKFLOW)
    );
    let attributes: serde_json::Value =
        serde_json::from_str(&root.find("Task").unwrap().text).unwrap();
    assert_eq!(attributes["type"], "inbound");
    assert_eq!(attributes["name"], "+15005550006");
    assert_eq!(attributes["from"], "+15005550006");
    assert_eq!(attributes["handoff_reason"], "Billing \"dispute\" & refund");
    assert_eq!(attributes["summary"], data.summary);
    assert_eq!(attributes["callSid"], caller.call_sid);
    assert_eq!(
        attributes["conversations"]["communication_channel"],
        "voice"
    );
}

/// An authentication failure is not retried: straight to the fallback.
#[tokio::test]
async fn calls_api_auth_failure_falls_back_at_once() {
    let mut twilio = FakeTwilio::start().await;
    twilio.error(401, 20003);
    let app = studio_app(&twilio, &[]).await;
    app.llm.push(handoff_call());
    let mut caller = app.dial().await;
    caller.say("human").await.unwrap();
    reply(&mut caller).await;
    hear(&mut caller).await;
    expect_end(&mut caller).await;
    assert_eq!(twilio.take_received().len(), 1);
}

/// 21220 (the caller already hung up): no retry, no `end`; the session closes quietly.
#[tokio::test]
async fn call_not_in_progress_ends_the_session_quietly() {
    let mut twilio = FakeTwilio::start().await;
    twilio.error(400, 21220);
    let app = studio_app(&twilio, &[]).await;
    app.llm.push(handoff_call());
    let mut caller = app.dial().await;
    caller.say("operator").await.unwrap();
    reply(&mut caller).await;
    hear(&mut caller).await;
    assert_eq!(
        caller.next(WAIT).await.unwrap(),
        None,
        "socket closed without an end frame"
    );
    assert_eq!(twilio.take_received().len(), 1);
}

/// Path 2: `end` waits until Twilio reports the line played (`agentSpeaking off`), and carries
/// valid JSON handoffData with reason, summary, callSid, from and the transcript.
#[tokio::test]
async fn end_comes_only_after_the_line_is_heard() {
    let app = spawn_app_with(&[("HANDOFF_MAX_WAIT_MS", "60000")], ToolRegistry::new()).await;
    app.llm.push(Script::Stream(vec![
        Chunk::Text("Of course. "),
        Chunk::CallStart {
            index: 0,
            id: "h",
            name: "agent_handoff",
            args: "{\"reason\":\"asked\",\"summary\":\"wants a person\"}",
        },
        Chunk::Finish("tool_calls"),
    ]));
    let mut caller = app.dial().await;
    caller.say("let me speak to someone").await.unwrap();
    let heard = reply(&mut caller).await;
    assert_eq!(
        heard.text,
        format!("Of course. {LINE}"),
        "the model's words, then the line, in full"
    );
    assert!(
        matches!(
            caller.next(Duration::from_millis(300)).await,
            Err(relaybot::simulator::SimError::Timeout(_))
        ),
        "no end while the line is still playing"
    );
    caller.agent_speaking(true).await.unwrap();
    caller.agent_speaking(false).await.unwrap();
    let data = expect_end(&mut caller).await;
    assert_eq!(data.reason, "asked");
    assert_eq!(data.summary, "wants a person");
    assert_eq!(data.from, "+15005550006");
    assert_eq!(data.call_sid, caller.call_sid);
    let said: Vec<&str> = data.transcript.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        said[1..],
        ["let me speak to someone", &format!("Of course. {LINE}")]
    );
}

/// Without speaker events, the wait is bounded: `end` comes anyway.
#[tokio::test]
async fn end_comes_after_the_bound_without_speaker_events() {
    let app = spawn_app_with(&[("HANDOFF_MAX_WAIT_MS", "150")], ToolRegistry::new()).await;
    app.llm.push(end_call());
    let mut caller = app.dial().await;
    caller.say("that's all").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        relaybot::config::DEFAULT_END_CALL_LINE
    );
    let data = expect_end(&mut caller).await;
    assert_eq!(data.reason_code, "end-call");
    let doc = caller
        .post_action(
            "ended",
            "in-progress",
            &[("HandoffData".into(), serde_json::to_string(&data).unwrap())],
        )
        .await
        .unwrap();
    assert!(
        twiml::parse(&doc).unwrap().find("Hangup").is_some(),
        "{doc}"
    );
}

/// Two handoffs in one response: one is carried out, the second is told it is in progress.
#[tokio::test]
async fn a_second_handoff_is_not_carried_out() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::Stream(vec![
        Chunk::CallStart {
            index: 0,
            id: "h1",
            name: "agent_handoff",
            args: "{\"reason\":\"one\"}",
        },
        Chunk::CallStart {
            index: 1,
            id: "h2",
            name: "end_call",
            args: "{\"reason\":\"two\"}",
        },
        Chunk::Finish("tool_calls"),
    ]));
    let mut caller = app.dial().await;
    caller.say("person").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        LINE,
        "only the first one's line"
    );
    hear(&mut caller).await;
    let data = expect_end(&mut caller).await;
    assert_eq!(
        (data.reason_code.as_str(), data.reason.as_str()),
        ("live-agent-handoff", "one")
    );
    caller.say("hello?").await.unwrap();
    assert!(
        matches!(
            caller.next(Duration::from_millis(300)).await,
            Err(relaybot::simulator::SimError::Timeout(_))
        ),
        "nothing more once the call is leaving"
    );
}

/// An `end_call` from a turn the caller interrupted is never carried out.
#[tokio::test]
async fn an_interrupted_turns_end_call_never_runs() {
    let mut app = spawn_app_with(&[("HANDOFF_MAX_WAIT_MS", "100")], ToolRegistry::new()).await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![
            Chunk::Text("Okay, goodbye "),
            Chunk::CallStart {
                index: 0,
                id: "e",
                name: "end_call",
                args: "{\"reason\":\"bye\"}",
            },
        ],
        after: vec![Chunk::Finish("tool_calls")],
        gate: gate.clone(),
    });
    app.llm.push(Script::text(&["Sure, what is it?"]));
    let mut caller = app.dial().await;
    caller.say("I think that's it").await.unwrap();
    assert_eq!(
        caller.next(WAIT).await.unwrap(),
        Some(Outbound::token("Okay, goodbye "))
    );
    caller.interrupt("Okay").await.unwrap();
    assert_eq!(caller.next(WAIT).await.unwrap(), Some(Outbound::last("")));
    tokio::time::timeout(WAIT, gate.dropped.notified())
        .await
        .expect("stream dropped");
    gate.open.notify_one();
    caller.say("wait, one more thing").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.text, "Sure, what is it?");
    assert!(answer.others.is_empty(), "no end: {:?}", answer.others);
    let _ = app.llm.next_request().await;
    let second = app.llm.next_request().await;
    assert!(
        !messages(&second).iter().any(|m| m["role"] == "tool"),
        "the tool never ran"
    );
}

/// A caller who talks over the goodbye line is not hung up on.
#[tokio::test]
async fn talking_over_the_goodbye_keeps_the_call() {
    let app = spawn_app_with(&[("HANDOFF_MAX_WAIT_MS", "60000")], ToolRegistry::new()).await;
    app.llm.push(end_call());
    app.llm.push(Script::text(&["Yes?"]));
    let mut caller = app.dial().await;
    caller.say("bye").await.unwrap();
    reply(&mut caller).await;
    caller.agent_speaking(true).await.unwrap();
    caller.interrupt("Thanks for").await.unwrap();
    caller.say("oh wait, one more question").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(answer.text, "Yes?");
    assert!(answer.others.is_empty(), "{:?}", answer.others);
}

/// `switch_language` (offered when `<Language>`s are configured) sends a valid `language` frame
/// and the model is told to answer in it.
#[tokio::test]
async fn switch_language_sends_a_language_frame() {
    let mut app = spawn_app_with(
        &[(
            "CR_LANGUAGES",
            r#"[{"code":"es-ES","ttsProvider":"Google","voice":"es-ES-Neural2-A"}]"#,
        )],
        ToolRegistry::new(),
    )
    .await;
    app.llm.push(Script::call(
        "l",
        "switch_language",
        "{\"language\":\"es-ES\"}",
    ));
    app.llm
        .push(Script::text(&["¡Claro! ", "¿En qué puedo ayudarle?"]));
    let mut caller = app.dial().await;
    caller.say("¿Habla español?").await.unwrap();
    let answer = reply(&mut caller).await;
    assert_eq!(
        answer.others,
        vec![Outbound::Language {
            tts_language: Some("es-ES".into()),
            transcription_language: Some("es-ES".into())
        }]
    );
    assert_eq!(answer.text, "¡Claro! ¿En qué puedo ayudarle?");
    let first = app.llm.next_request().await;
    let enum_values = &first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "switch_language")
        .unwrap()["function"]["parameters"]["properties"]["language"]["enum"];
    assert_eq!(enum_values, &serde_json::json!(["en-US", "es-ES"]));
    let second = app.llm.next_request().await;
    assert!(messages(&second).last().unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("Switched to es-ES"));
}

/// `/action` for each status and each configuration.
#[tokio::test]
async fn action_answers_for_each_status_and_configuration() {
    let handoff = serde_json::json!({
        "reasonCode": "live-agent-handoff", "reason": "billing", "summary": "wants \"refund\" & more",
        "callSid": "CA1", "from": "+15551230000"
    })
    .to_string();
    let end = serde_json::json!({"reasonCode": "end-call", "reason": "done", "callSid": "CA1"})
        .to_string();
    let post =
        |app: &TestApp, status: &'static str, call_status: &'static str, data: Option<String>| {
            let mut form = vec![
                ("CallSid", "CA1".to_owned()),
                ("From", "+15551230000".to_owned()),
                ("SessionStatus", status.to_owned()),
                ("CallStatus", call_status.to_owned()),
            ];
            if let Some(d) = data {
                form.push(("HandoffData", d));
            }
            let url = format!("{}/action", app.base_url);
            async move {
                let body = reqwest::Client::new()
                    .post(url)
                    .form(&form)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                twiml::parse(&body).unwrap()
            }
        };

    let app = spawn_app_with(&[("TWILIO_WORKFLOW_SID", WORKFLOW)], ToolRegistry::new()).await;
    let doc = post(&app, "ended", "in-progress", Some(handoff.clone())).await;
    assert_eq!(
        doc.find("Enqueue").unwrap().attr("workflowSid"),
        Some(WORKFLOW)
    );
    let task: serde_json::Value = serde_json::from_str(&doc.find("Task").unwrap().text).unwrap();
    assert_eq!(task["summary"], "wants \"refund\" & more");
    assert!(post(&app, "ended", "in-progress", Some(end.clone()))
        .await
        .find("Hangup")
        .is_some());
    assert!(post(&app, "ended", "in-progress", Some("not json".into()))
        .await
        .find("Hangup")
        .is_some());
    assert_eq!(
        post(&app, "completed", "completed", None)
            .await
            .children
            .len(),
        0
    );
    let failed = post(&app, "failed", "in-progress", None).await;
    let task: serde_json::Value = serde_json::from_str(&failed.find("Task").unwrap().text).unwrap();
    assert_eq!(
        task["from"], "+15551230000",
        "a failed session that never ran reaches a human (no reconnect)"
    );

    let app = spawn_app_with(&[("STUDIO_FLOW_URL", FLOW)], ToolRegistry::new()).await;
    let doc = post(&app, "ended", "in-progress", Some(handoff.clone())).await;
    let target = url::Url::parse(&doc.find("Redirect").unwrap().text).unwrap();
    let params: HashMap<String, String> = target.query_pairs().into_owned().collect();
    assert_eq!(
        (
            params["FlowEvent"].as_str(),
            params["handoff"].as_str(),
            params["callSid"].as_str()
        ),
        ("return", "agent", "CA1")
    );
    assert_eq!(params["summary"], "wants 'refund' & more");

    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    let doc = post(&app, "ended", "in-progress", Some(handoff)).await;
    assert!(doc
        .find("Say")
        .unwrap()
        .text
        .contains("no one is available"));
    assert!(doc.find("Hangup").is_some());
    let _ = post(&app, "failed", "in-progress", None).await;
    let _ = post(&app, "failed", "in-progress", None).await;
    let doc = post(&app, "failed", "in-progress", None).await;
    assert!(doc.find("Say").is_some() && doc.find("Hangup").is_some());
}

/// The handoff record endpoint: off without API_TOKEN, 401 with a wrong token, 404 for an
/// unknown call.
#[tokio::test]
async fn handoff_records_need_the_api_token() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    let status = reqwest::get(format!("{}/calls/CA1/handoff", app.base_url))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "off when API_TOKEN is unset");

    let app = spawn_app_with(&[("API_TOKEN", "right")], ToolRegistry::new()).await;
    let get = |token: &'static str| {
        let url = format!("{}/calls/CA1/handoff", app.base_url);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("wrong").await, 401);
    assert_eq!(get("right").await, 404);
}
