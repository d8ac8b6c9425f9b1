//! Amazon Connect through Lex V2: `POST /lex/v2` takes the Lex V2 code-hook events of the AWS
//! documentation (text, speech with transcriptions, fulfillment, DTMF) and answers Lex V2
//! responses of exactly the documented shape (handoff.md §4.1–4.2), with the fake model behind
//! the agent.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use relaybot::{agent::tools::ToolRegistry, connect::auth::sign};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    fake_llm::{Chunk, Gate, Script},
    helpers::{capture_logs, messages, spawn_app_with, TestApp, WAIT},
};

const SECRET: &str = "lex-shared-secret-0123456789";
const NUMBER: &str = "+15550001111";
const CONTACT: &str = "5fd2d5b9-4c8a-4e58-a8d4-5b1a1a2b3c4d";

/// The Lambda response exactly as Lex V2 accepts it (handoff.md §4.2): unknown keys are
/// refused here, so nothing we send is outside the documented shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Response {
    session_state: State,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    request_attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct State {
    dialog_action: DialogAction,
    intent: Option<Intent>,
    #[serde(default)]
    session_attributes: BTreeMap<String, String>,
    #[serde(default)]
    active_contexts: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DialogAction {
    #[serde(rename = "type")]
    kind: String,
    slot_to_elicit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Intent {
    name: String,
    state: Option<String>,
    confirmation_state: Option<String>,
    slots: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Message {
    content_type: String,
    content: String,
}

impl Response {
    /// Reads `body` as a Lex V2 response and checks the rules Lex enforces.
    fn check(body: &Value) -> Response {
        let response: Response = serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("not a Lex V2 response ({e}): {body}"));
        let kind = response.session_state.dialog_action.kind.as_str();
        assert!(
            [
                "Close",
                "ConfirmIntent",
                "Delegate",
                "ElicitIntent",
                "ElicitSlot"
            ]
            .contains(&kind),
            "{kind}"
        );
        assert!(response
            .session_state
            .dialog_action
            .slot_to_elicit
            .is_none());
        assert!(response.request_attributes.is_none());
        assert!(response.session_state.active_contexts.is_none());
        let intent = response.session_state.intent.as_ref().expect("an intent");
        assert!(!intent.name.is_empty());
        assert!(intent.confirmation_state.is_none() && intent.slots.is_none());
        if kind == "Close" {
            assert!(
                matches!(intent.state.as_deref(), Some("Fulfilled" | "Failed")),
                "{intent:?}"
            );
        } else {
            assert!(intent.state.is_none(), "{intent:?}");
        }
        if kind == "ElicitIntent" {
            assert!(
                !response.messages.is_empty(),
                "ElicitIntent needs a message"
            );
        }
        assert!(response.messages.len() <= 10);
        for message in &response.messages {
            assert!(
                ["PlainText", "SSML"].contains(&message.content_type.as_str()),
                "{message:?}"
            );
            let chars = message.content.chars().count();
            assert!((1..=1024).contains(&chars), "{message:?}");
            if message.content_type == "SSML" {
                assert!(
                    message.content.starts_with("<speak>") && message.content.ends_with("</speak>")
                );
            }
        }
        response
    }

    fn kind(&self) -> &str {
        &self.session_state.dialog_action.kind
    }

    fn intent(&self) -> (&str, Option<&str>) {
        let intent = self.session_state.intent.as_ref().unwrap();
        (&intent.name, intent.state.as_deref())
    }

    fn attribute(&self, key: &str) -> Option<&str> {
        self.session_state
            .session_attributes
            .get(key)
            .map(String::as_str)
    }

    fn text(&self) -> String {
        self.messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn bot() -> Value {
    json!({"id": "ABCDEFGHIJ", "name": "RelaybotFront", "localeId": "en_US", "version": "DRAFT",
           "aliasId": "TSTALIASID", "aliasName": "TestBotAlias"})
}

fn fallback_intent() -> Value {
    json!({"name": "FallbackIntent", "confirmationState": "None", "state": "InProgress", "slots": {}})
}

/// A `DialogCodeHook` text event (Connect chat) as the AWS docs show it: a bare-number
/// `nluConfidence`, `null` slots, the flow's session attributes.
fn text_event(session: &str, text: &str) -> Value {
    json!({
        "messageVersion": "1.0",
        "invocationSource": "DialogCodeHook",
        "inputMode": "Text",
        "responseContentType": "text/plain; charset=utf-8",
        "sessionId": session,
        "inputTranscript": text,
        "invocationLabel": null,
        "bot": bot(),
        "interpretations": [
            {"interpretationSource": "Lex", "intent": fallback_intent()},
            {"interpretationSource": "Lex", "nluConfidence": 0.41,
             "intent": {"name": "OrderFlowers", "confirmationState": "None", "state": "InProgress",
                        "slots": {"FlowerType": null, "PickupDate": null}}}
        ],
        "proposedNextState": null,
        "requestAttributes": {"x-amz-lex:channels:platform": "Connect"},
        "sessionState": {
            "activeContexts": [],
            "sessionAttributes": {"connectContactId": CONTACT, "customerNumber": NUMBER},
            "intent": fallback_intent(),
            "originatingRequestId": "e3c4b2a1-0000-4000-8000-000000000001"
        },
        "transcriptions": []
    })
}

/// A `DialogCodeHook` speech event (Connect voice): `nluConfidence` as `{"score": n}` (the
/// older docs' shape), `transcriptions` with their confidences.
fn speech_event(session: &str, text: &str) -> Value {
    json!({
        "messageVersion": "1.0",
        "invocationSource": "DialogCodeHook",
        "inputMode": "Speech",
        "responseContentType": "audio/pcm",
        "sessionId": session,
        "inputTranscript": text,
        "bot": bot(),
        "interpretations": [
            {"intent": fallback_intent(), "interpretationSource": "Lex"},
            {"intent": {"name": "CheckBalance", "slots": {"AccountType": null}, "state": "InProgress",
                        "confirmationState": "None"},
             "nluConfidence": {"score": 0.38},
             "sentimentResponse": {"sentiment": "NEUTRAL",
                                   "sentimentScore": {"mixed": 0.01, "negative": 0.02, "neutral": 0.9, "positive": 0.07}}}
        ],
        "proposedNextState": {"dialogAction": {"type": "ElicitIntent"}, "intent": null, "prompt": {"attempt": "Initial"}},
        "requestAttributes": {"x-amz-lex:channels:platform": "Connect"},
        "sessionState": {
            "sessionAttributes": {"connectContactId": CONTACT, "customerNumber": NUMBER, "lang": "en"},
            "intent": fallback_intent(),
            "originatingRequestId": "e3c4b2a1-0000-4000-8000-000000000002"
        },
        "transcriptions": [
            {"transcription": text, "transcriptionConfidence": 0.94,
             "resolvedContext": {"intent": "FallbackIntent"}, "resolvedSlots": {}},
            {"transcription": "something else", "transcriptionConfidence": {"score": 0.12},
             "resolvedContext": {"intent": "FallbackIntent"}, "resolvedSlots": {}}
        ]
    })
}

/// A `FulfillmentCodeHook` event (the intent is ready for fulfilment).
fn fulfillment_event(session: &str, text: &str) -> Value {
    let mut event = text_event(session, text);
    event["invocationSource"] = json!("FulfillmentCodeHook");
    event["sessionState"]["intent"]["state"] = json!("ReadyForFulfillment");
    event
}

/// A DTMF event: the keys pressed are the transcript.
fn dtmf_event(session: &str, digits: &str) -> Value {
    let mut event = speech_event(session, digits);
    event["inputMode"] = json!("DTMF");
    event["transcriptions"] = json!([]);
    event
}

async fn post_raw(app: &TestApp, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/lex/v2", app.base_url))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Posts `event` (signed when `secret` is given); the checked Lex response.
async fn post_signed(app: &TestApp, event: &Value, secret: Option<&str>) -> Response {
    let body = serde_json::to_vec(event).unwrap();
    let headers = match secret {
        Some(secret) => signature_headers(secret, now(), &body),
        None => Vec::new(),
    };
    let (status, text) = post_raw(app, body, &headers).await;
    assert_eq!(status, 200, "{text}");
    Response::check(&serde_json::from_str(&text).unwrap())
}

async fn post(app: &TestApp, event: &Value) -> Response {
    post_signed(app, event, None).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signature_headers(secret: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-Relaybot-Timestamp", timestamp.to_string()),
        (
            "X-Relaybot-Signature",
            sign(secret.as_bytes(), timestamp, body),
        ),
    ]
}

fn tool_names(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn last_user(request: &Value) -> String {
    messages(request)
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A chat contact (Text) gets the chat agent, which may hand off, and an `ElicitIntent` with
/// its reply; the flow's session attributes come back with ours.
#[tokio::test]
async fn a_text_event_gets_elicit_intent_from_the_chat_agent() {
    let mut app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm
        .push(Script::text(&["Sure", ", I can help with", " your order."]));
    let response = post(&app, &text_event("text-session-1", "Where is my order?")).await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.intent(), ("FallbackIntent", None));
    assert_eq!(response.messages.len(), 1);
    assert_eq!(response.messages[0].content_type, "PlainText");
    assert_eq!(
        response.messages[0].content,
        "Sure, I can help with your order."
    );
    assert_eq!(response.attribute("connectContactId"), Some(CONTACT));
    assert_eq!(response.attribute("customerNumber"), Some(NUMBER));
    assert_eq!(response.attribute("shouldRouteToAgent"), None, "left unset");
    assert_eq!(response.attribute("shouldTerminateContactFlow"), None);
    assert_eq!(response.attribute("relaybotAction"), Some("continue"));
    assert_eq!(response.attribute("handoffReason"), None);
    let request = app.llm.next_request().await;
    assert!(messages(&request)[0]["content"]
        .as_str()
        .unwrap()
        .contains("chat window"));
    assert_eq!(last_user(&request), "Where is my order?");
    assert_eq!(tool_names(&request), ["agent_handoff", "end_call"]);
}

/// A voice contact (Speech) gets the voice agent; `LEX_SSML=true` answers in SSML, escaped. The
/// same session keeps its history across events, a `FulfillmentCodeHook` event included.
#[tokio::test]
async fn speech_gets_the_voice_agent_in_ssml_and_the_session_keeps_its_history() {
    let mut app = spawn_app_with(&[("LEX_SSML", "true")], ToolRegistry::new()).await;
    app.llm.push(Script::text(&[
        "Your balance is <b>25</b> dollars & 10 cents.",
    ]));
    app.llm.push(Script::text(&["Anything else?"]));
    let response = post(&app, &speech_event("voice-1", "what is my balance")).await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.messages[0].content_type, "SSML");
    assert_eq!(
        response.messages[0].content,
        "<speak>Your balance is &lt;b&gt;25&lt;/b&gt; dollars &amp; 10 cents.</speak>"
    );
    assert_eq!(response.attribute("lang"), Some("en"));
    let first = app.llm.next_request().await;
    assert!(messages(&first)[0]["content"]
        .as_str()
        .unwrap()
        .contains("phone call"));
    assert_eq!(last_user(&first), "what is my balance");
    assert!(tool_names(&first).contains(&"agent_handoff".to_owned()));

    let mut next = fulfillment_event("voice-1", "thank you");
    next["inputMode"] = json!("Speech");
    let response = post(&app, &next).await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.text(), "<speak>Anything else?</speak>");
    let second = app.llm.next_request().await;
    let history = messages(&second);
    assert!(history.iter().any(|m| m["content"] == "what is my balance"));
    assert_eq!(last_user(&second), "thank you");
}

/// A `FulfillmentCodeHook` text event is answered like any other input, in plain text (SSML is
/// for voice only).
#[tokio::test]
async fn a_fulfillment_event_is_answered_in_plain_text() {
    let mut app = spawn_app_with(&[("LEX_SSML", "true")], ToolRegistry::new()).await;
    app.llm.push(Script::text(&["Done & dusted."]));
    let response = post(&app, &fulfillment_event("fulfil-1", "book it")).await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.messages[0].content_type, "PlainText");
    assert_eq!(response.text(), "Done & dusted.");
    assert_eq!(last_user(&app.llm.next_request().await), "book it");
}

/// Keys pressed reach the model as "The caller pressed …"; neither the digits, the caller's
/// number nor their words are logged.
#[tokio::test]
async fn dtmf_reaches_the_model_as_keys_and_nothing_private_is_logged() {
    let (logs, _guard) = capture_logs("relaybot=trace,tower_http=trace");
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let mut app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::text(&["Thanks, account found."]));
    app.llm.push(Script::text(&["Noted."]));
    let response = post(&app, &dtmf_event("dtmf-1", "97531#")).await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.text(), "Thanks, account found.");
    let request = app.llm.next_request().await;
    assert_eq!(last_user(&request), "The caller pressed 97531#.");
    post(
        &app,
        &speech_event("dtmf-1", "my secret words about the rash"),
    )
    .await;
    assert_eq!(
        last_user(&app.llm.next_request().await),
        "my secret words about the rash"
    );
    let text = logs.text();
    assert!(text.contains("new Lex session"), "{text}");
    assert!(text.contains("***1111"), "the number, masked: {text}");
    for private in ["97531", NUMBER, "secret words"] {
        assert!(!text.contains(private), "{private} logged: {text}");
    }
}

/// `agent_handoff` closes the Lex intent with the routing attributes (strings, within Lex's
/// limits) and the handoff line; the record is served with the transcript.
#[tokio::test]
async fn a_handoff_closes_with_the_routing_attributes_and_keeps_a_record() {
    let mut app = spawn_app_with(
        &[
            ("API_TOKEN", "records-token"),
            ("PUBLIC_URL", "https://bot.example.com"),
        ],
        ToolRegistry::new(),
    )
    .await;
    let long_summary = format!("Customer disputes a charge. {}", "Details. ".repeat(200));
    let args = Box::leak(
        json!({"reason": format!("billing dispute {}", "x".repeat(400)), "summary": long_summary})
            .to_string()
            .into_boxed_str(),
    );
    app.llm.push(Script::Stream(vec![
        Chunk::Text("Let me get someone for you."),
        Chunk::CallStart {
            index: 0,
            id: "call_1",
            name: "agent_handoff",
            args,
        },
        Chunk::Finish("tool_calls"),
    ]));
    let response = post(&app, &speech_event("handoff-1", "I want a person")).await;
    assert_eq!(response.kind(), "Close");
    assert_eq!(response.intent(), ("FallbackIntent", Some("Fulfilled")));
    assert_eq!(response.attribute("shouldRouteToAgent"), Some("true"));
    assert_eq!(response.attribute("relaybotAction"), Some("handoff"));
    assert_eq!(response.attribute("relaybotSessionId"), Some("handoff-1"));
    let reason = response.attribute("handoffReason").unwrap();
    assert!(reason.starts_with("billing dispute"));
    assert!(reason.chars().count() <= 256);
    let summary = response.attribute("handoffSummary").unwrap();
    assert!(summary.starts_with("Customer disputes a charge."));
    assert!(summary.chars().count() <= 1000);
    assert_eq!(
        response.attribute("handoffRecordUrl"),
        Some("https://bot.example.com/lex/v2/handoff-1/handoff")
    );
    assert_eq!(response.attribute("connectContactId"), Some(CONTACT));
    assert_eq!(
        response.text(),
        "Let me get someone for you. One moment while I connect you to an agent."
    );
    let client = reqwest::Client::new();
    let url = format!("{}/lex/v2/handoff-1/handoff", app.base_url);
    assert_eq!(
        client.get(&url).send().await.unwrap().status().as_u16(),
        401
    );
    let record: Value = client
        .get(&url)
        .bearer_auth("records-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["conversationSid"], "handoff-1");
    assert_eq!(record["path"], "connect-queue");
    assert_eq!(record["from"], NUMBER);
    assert_eq!(record["transcript"][0]["role"], "caller");
    assert_eq!(record["transcript"][0]["text"], "I want a person");
    let missing = client
        .get(format!("{}/lex/v2/nobody/handoff", app.base_url))
        .bearer_auth("records-token")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // The session is over: the next event starts a fresh conversation.
    app.llm.push(Script::text(&["Hello again."]));
    let _ = app.llm.next_request().await;
    let again = post(&app, &text_event("handoff-1", "hello")).await;
    assert_eq!(again.kind(), "ElicitIntent");
    assert_eq!(
        again.attribute("handoffReason"),
        None,
        "ours are not echoed"
    );
    assert_eq!(again.attribute("shouldRouteToAgent"), None);
    let fresh = app.llm.next_request().await;
    assert_eq!(messages(&fresh).len(), 2, "system prompt and the new input");
}

/// `end_call` closes with the goodbye and `shouldRouteToAgent: "false"`.
#[tokio::test]
async fn an_end_closes_without_routing() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm
        .push(Script::call("call_1", "end_call", r#"{"reason":"done"}"#));
    let response = post(&app, &text_event("end-1", "that's all, bye")).await;
    assert_eq!(response.kind(), "Close");
    assert_eq!(response.intent(), ("FallbackIntent", Some("Fulfilled")));
    assert_eq!(response.attribute("shouldRouteToAgent"), Some("false"));
    assert_eq!(
        response.attribute("shouldTerminateContactFlow"),
        Some("true")
    );
    assert_eq!(response.attribute("relaybotAction"), Some("end"));
    assert_eq!(response.text(), "Thanks for chatting with us. Goodbye!");
}

/// A model failure gets the core's apology with `ElicitIntent`; failing again hands the
/// customer to a person (`Close` + route).
#[tokio::test]
async fn model_failures_apologise_then_route_to_a_person() {
    let app = spawn_app_with(&[], ToolRegistry::new()).await;
    app.llm.push(Script::Status(400));
    app.llm.push(Script::Status(400));
    let first = post(&app, &speech_event("fail-1", "hello")).await;
    assert_eq!(first.kind(), "ElicitIntent");
    assert!(first.text().contains("trouble"), "{}", first.text());
    let second = post(&app, &speech_event("fail-1", "hello?")).await;
    assert_eq!(second.kind(), "Close");
    assert_eq!(second.attribute("shouldRouteToAgent"), Some("true"));
    assert!(second
        .attribute("handoffReason")
        .unwrap()
        .contains("could not answer"));
}

/// A model slower than `LEX_TURN_BUDGET_MS`: the holding line comes within the budget (again
/// on an event while it still runs), the answer on the next event, and what the customer said
/// meanwhile is answered in the turn after.
#[tokio::test]
async fn a_slow_model_gets_the_holding_line_and_the_answer_on_the_next_event() {
    let mut app = spawn_app_with(
        &[
            ("LEX_TURN_BUDGET_MS", "300"),
            ("LEX_HOLDING_LINE", "Let me check."),
        ],
        ToolRegistry::new(),
    )
    .await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![Chunk::Text("Your balance ")],
        after: vec![Chunk::Text("is ten dollars."), Chunk::Finish("stop")],
        gate: gate.clone(),
    });
    app.llm.push(Script::text(&["You're welcome."]));
    let started = Instant::now();
    let first = post(&app, &speech_event("slow-1", "what's my balance")).await;
    let took = started.elapsed();
    assert_eq!(first.kind(), "ElicitIntent");
    assert_eq!(first.text(), "Let me check.");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        last_user(&app.llm.next_request().await),
        "what's my balance"
    );
    // Still running: the holding line again, and these words wait for a later turn.
    let second = post(&app, &speech_event("slow-1", "hello?")).await;
    assert_eq!(second.text(), "Let me check.");
    gate.open.notify_one();
    let mut third = None;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let mut poll = speech_event("slow-1", "");
        poll["transcriptions"] = json!([]);
        let response = post(&app, &poll).await;
        if response.text() != "Let me check." {
            third = Some(response);
            break;
        }
    }
    let third = third.expect("the answer on a later event");
    assert_eq!(third.kind(), "ElicitIntent");
    assert_eq!(third.text(), "Your balance is ten dollars.");
    let fourth = post(&app, &speech_event("slow-1", "thanks")).await;
    assert_eq!(fourth.text(), "You're welcome.");
    let request = app.llm.next_request().await;
    assert_eq!(last_user(&request), "hello?\nthanks");
    assert!(messages(&request)
        .iter()
        .any(|m| m["content"] == "Your balance is ten dollars."));
}

/// A handoff that outruns the budget is delivered on the next event, and the words of that
/// event reach the human agent in the record.
#[tokio::test]
async fn a_slow_handoff_is_delivered_next_with_the_words_said_meanwhile() {
    let app = spawn_app_with(
        &[
            ("LEX_TURN_BUDGET_MS", "200"),
            ("API_TOKEN", "records-token"),
        ],
        ToolRegistry::new(),
    )
    .await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![],
        after: vec![
            Chunk::CallStart {
                index: 0,
                id: "call_1",
                name: "agent_handoff",
                args: r#"{"reason":"asked for a person","summary":"wants a refund"}"#,
            },
            Chunk::Finish("tool_calls"),
        ],
        gate: gate.clone(),
    });
    let first = post(&app, &text_event("slow-handoff", "a person please")).await;
    assert_eq!(first.text(), "One moment, please.");
    gate.open.notify_one();
    let second = post(&app, &text_event("slow-handoff", "are you there?")).await;
    assert_eq!(second.kind(), "Close");
    assert_eq!(second.attribute("shouldRouteToAgent"), Some("true"));
    assert_eq!(
        second.attribute("handoffReason"),
        Some("asked for a person")
    );
    assert_eq!(second.attribute("handoffSummary"), Some("wants a refund"));
    let record: Value = reqwest::Client::new()
        .get(format!("{}/lex/v2/slow-handoff/handoff", app.base_url))
        .bearer_auth("records-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let said: Vec<&str> = record["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "caller")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(said, ["a person please", "are you there?"]);
}

/// With `LEX_SHARED_SECRET`: unsigned, wrongly signed, stale and replayed requests get 401 with
/// the reason; too large a body 413; a body that is not a Lex event 400 with what is wrong
/// (never its text).
#[tokio::test]
async fn bad_signatures_stale_replays_and_bad_bodies_are_refused() {
    let app = spawn_app_with(&[("LEX_SHARED_SECRET", SECRET)], ToolRegistry::new()).await;
    let event = text_event("auth-1", "hello");
    let body = serde_json::to_vec(&event).unwrap();
    let error = |text: &str| -> String {
        serde_json::from_str::<Value>(text).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let (status, text) = post_raw(&app, body.clone(), &[]).await;
    assert_eq!(status, 401);
    assert!(error(&text).contains("missing"), "{text}");

    let wrong = signature_headers("another-secret-0123456789", now(), &body);
    let (status, text) = post_raw(&app, body.clone(), &wrong).await;
    assert_eq!((status, error(&text).as_str()), (401, "signature mismatch"));

    let tampered = serde_json::to_vec(&text_event("auth-1", "HELLO")).unwrap();
    let (status, _) = post_raw(&app, tampered, &signature_headers(SECRET, now(), &body)).await;
    assert_eq!(status, 401);

    let old = now() - 600;
    let (status, text) = post_raw(&app, body.clone(), &signature_headers(SECRET, old, &body)).await;
    assert_eq!((status, error(&text).as_str()), (401, "stale timestamp"));

    let good = signature_headers(SECRET, now(), &body);
    let (status, text) = post_raw(&app, body.clone(), &good).await;
    assert_eq!(status, 200, "{text}");
    Response::check(&serde_json::from_str(&text).unwrap());
    let (status, text) = post_raw(&app, body.clone(), &good).await;
    assert_eq!((status, error(&text).as_str()), (401, "replayed request"));

    let big = vec![b' '; 70 * 1024];
    let (status, _) = post_raw(&app, big.clone(), &signature_headers(SECRET, now(), &big)).await;
    assert_eq!(status, 413);

    let broken = br#"{"sessionId": "auth-2", "inputTranscript": "my private words"#.to_vec();
    let (status, text) = post_raw(
        &app,
        broken.clone(),
        &signature_headers(SECRET, now(), &broken),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error(&text).contains("not JSON"), "{text}");
    assert!(!text.contains("private"), "{text}");

    let list = br#"["my private words"]"#.to_vec();
    let (status, text) =
        post_raw(&app, list.clone(), &signature_headers(SECRET, now(), &list)).await;
    assert_eq!(status, 400);
    assert!(error(&text).contains("JSON object"), "{text}");
    assert!(!text.contains("private"), "{text}");

    let anonymous = serde_json::to_vec(&json!({"inputTranscript": "hi"})).unwrap();
    let (status, text) = post_raw(
        &app,
        anonymous.clone(),
        &signature_headers(SECRET, now(), &anonymous),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error(&text).contains("sessionId"), "{text}");

    // Signed properly, a sample event goes through.
    let response = post_signed(&app, &speech_event("auth-3", "hi"), Some(SECRET)).await;
    assert_eq!(response.kind(), "ElicitIntent");
}

/// Unknown fields, `null` everywhere and missing parts are fine; an empty input is asked again.
#[tokio::test]
async fn sparse_and_odd_events_are_answered() {
    let mut app = spawn_app_with(&[], ToolRegistry::new()).await;
    let response = post(
        &app,
        &json!({"sessionId": "sparse-1", "inputMode": "Speech", "inputTranscript": null,
                "sessionState": null, "interpretations": null, "brandNewField": {"x": 1}}),
    )
    .await;
    assert_eq!(response.kind(), "ElicitIntent");
    assert_eq!(response.intent(), ("FallbackIntent", None));
    assert_eq!(response.text(), "Are you still there?");
    assert!(app.llm.next_request_now().is_none(), "no turn for silence");
    app.llm.push(Script::text(&["Hi!"]));
    let response = post(
        &app,
        &json!({"sessionId": "sparse-1", "inputTranscript": "hello",
                "sessionState": {"intent": {"name": "Greeting", "slots": {"Name": null}},
                                 "sessionAttributes": {"n": 3, "gone": null}}}),
    )
    .await;
    assert_eq!(response.text(), "Hi!");
    assert_eq!(response.intent(), ("Greeting", None));
    assert_eq!(response.attribute("n"), Some("3"));
    assert_eq!(response.attribute("gone"), None);
}

/// Past `CHAT_MAX_CONVERSATIONS` a new contact still gets a valid answer: to a person.
#[tokio::test]
async fn at_capacity_a_new_contact_is_routed_to_a_person() {
    let app = spawn_app_with(&[("CHAT_MAX_CONVERSATIONS", "1")], ToolRegistry::new()).await;
    let first = post(&app, &text_event("cap-1", "hello")).await;
    assert_eq!(first.kind(), "ElicitIntent");
    let second = post(&app, &speech_event("cap-2", "hello")).await;
    assert_eq!(second.kind(), "Close");
    assert_eq!(second.attribute("shouldRouteToAgent"), Some("true"));
    assert!(second
        .attribute("handoffReason")
        .unwrap()
        .contains("capacity"));
    assert_eq!(second.text(), "One moment while I connect you to an agent.");
    assert_eq!(app.server.state.connect.live(), 1);
}

/// During a drain a busy session still delivers its answer, and a new contact gets a valid
/// answer routing it to a person.
#[tokio::test]
async fn during_a_drain_owed_answers_are_delivered_and_new_contacts_go_to_a_person() {
    let mut app = spawn_app_with(
        &[("LEX_TURN_BUDGET_MS", "200"), ("DRAIN_TIMEOUT", "5")],
        ToolRegistry::new(),
    )
    .await;
    let gate = Gate::default();
    app.llm.push(Script::Gated {
        before: vec![],
        after: vec![Chunk::Text("Here it is."), Chunk::Finish("stop")],
        gate: gate.clone(),
    });
    let first = post(&app, &text_event("drain-1", "my question")).await;
    assert_eq!(first.text(), "One moment, please.");
    app.server.shutdown.cancel();
    let health = format!("{}/healthz", app.base_url);
    let deadline = Instant::now() + WAIT;
    while reqwest::get(&health).await.unwrap().status().as_u16() != 503 {
        assert!(Instant::now() < deadline, "the drain never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let newcomer = post(&app, &speech_event("drain-2", "hello")).await;
    assert_eq!(newcomer.kind(), "Close");
    assert_eq!(newcomer.attribute("shouldRouteToAgent"), Some("true"));
    assert!(newcomer
        .attribute("handoffReason")
        .unwrap()
        .contains("restarting"));
    gate.open.notify_one();
    let mut answer = None;
    while Instant::now() < deadline {
        let response = post(&app, &text_event("drain-1", "")).await;
        if response.text() != "One moment, please." {
            answer = Some(response);
            break;
        }
    }
    let answer = answer.expect("the owed answer during the drain");
    assert_eq!(answer.kind(), "ElicitIntent");
    assert_eq!(answer.text(), "Here it is.");
    let stopped = tokio::time::timeout(WAIT, &mut app.server.handle).await;
    assert!(
        stopped.is_ok(),
        "the server stops once the session has left"
    );
}
