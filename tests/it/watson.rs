//! IBM Watson Assistant as the brain, end to end against a fake Watson and IAM.
//!
//! The server runs with `LLM_PROVIDER=watson` against [`fake::FakeWatson`] (the IAM token
//! endpoint and the v2 runtime on one local port): chats through the fake Conversations and
//! Flex Interactions APIs, calls through the simulator's caller.

mod fake;

use std::time::Duration;

use relaybot::{
    agent::tools::ToolRegistry,
    config::DEFAULT_ERROR_LINE,
    relay::protocol::Outbound,
    simulator::{
        chat_customer::ChatCustomer,
        conversations_api::{ApiEvent, FakeConversationsApi},
        new_sid,
    },
};
use serde_json::{json, Value};

use self::fake::{FakeWatson, Kind, APIKEY, ASSISTANT_ID, ENVIRONMENT_ID};
use crate::helpers::{capture_logs, reply, spawn_app_with, TestApp, WAIT};

const TOKEN: &str = "watson-chat-auth-token";

/// The settings that put the server on the fake Watson, plus `extra`.
fn watson_vars<'a>(watson: &'a FakeWatson, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
    let mut vars = vec![
        ("LLM_PROVIDER".to_owned(), "watson".to_owned()),
        ("WATSON_APIKEY".to_owned(), APIKEY.to_owned()),
        ("WATSON_URL".to_owned(), watson.service_url()),
        ("WATSON_IAM_URL".to_owned(), watson.iam_url()),
        (
            "WATSON_ENVIRONMENT_ID".to_owned(),
            ENVIRONMENT_ID.to_owned(),
        ),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

async fn app_with(watson: &FakeWatson, extra: &[(&str, &str)]) -> TestApp {
    let vars = watson_vars(watson, extra);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_app_with(&vars, ToolRegistry::new()).await
}

/// A server on the fake Watson wired to the fake Twilio APIs, and one chat customer.
struct Chat {
    _app: TestApp,
    api: FakeConversationsApi,
    customer: ChatCustomer,
}

impl Chat {
    async fn start(watson: &FakeWatson) -> Chat {
        let api = FakeConversationsApi::start().await.expect("fake Twilio");
        let account_sid = format!("AC{}", "a".repeat(32));
        let workspace_sid = format!("WS{}", "b".repeat(32));
        let workflow_sid = format!("WW{}", "c".repeat(32));
        let app = app_with(
            watson,
            &[
                ("TWILIO_ACCOUNT_SID", &account_sid),
                ("TWILIO_AUTH_TOKEN", TOKEN),
                ("TWILIO_CONVERSATIONS_BASE", &api.base_url),
                ("TWILIO_FLEX_BASE", &api.base_url),
                ("FLEX_WORKSPACE_SID", &workspace_sid),
                ("TWILIO_WORKFLOW_SID", &workflow_sid),
            ],
        )
        .await;
        let conversation_sid = new_sid("CH");
        let webhook_sid = api.add_conversation(
            &conversation_sid,
            &format!("{}/conversations/webhook", app.base_url),
        );
        let customer = ChatCustomer::new(
            &app.base_url,
            &app.base_url,
            Some(TOKEN.to_owned()),
            &conversation_sid,
            "+15551230000",
            &webhook_sid,
        );
        Chat {
            _app: app,
            api,
            customer,
        }
    }

    fn sid(&self) -> &str {
        &self.customer.conversation_sid
    }

    /// The `n`-th bot message of the conversation.
    async fn message(&self, n: usize) -> String {
        self.api
            .wait_for_message(self.sid(), n, WAIT)
            .await
            .unwrap_or_else(|| panic!("no message {n}; saw {:?}", self.api.events()))
            .body
    }
}

/// A Watson answer that hands off, as the "Connect to human agent" step produces it.
fn connect_to_agent() -> Value {
    json!({
        "generic": [
            {"response_type": "text", "text": "I'll get a colleague for you."},
            {"response_type": "connect_to_agent",
             "message_to_human_agent": "Customer disputes the March invoice",
             "agent_available": {"message": "Connecting you now."},
             "agent_unavailable": {"message": "Nobody is free right now."},
             "transfer_info": {"target": {"zendesk": {"department": "Billing"}}},
             "topic": "Billing dispute"}
        ],
        "intents": [{"intent": "talk_to_human", "confidence": 0.94}],
        "entities": [{"entity": "month", "value": "March", "location": [27, 32], "confidence": 1}]
    })
}

/// A chat: Watson answers (its pause honoured), then hands off with `connect_to_agent`; the Flex task attributes
/// carry `message_to_human_agent` (in `summary`, with the intents and entities) and the topic
/// (in `handoff_reason`). One IAM exchange and one session serve the whole conversation; every
/// Watson call has the version, the bearer token, the caller's context and a pseudonymous
/// user ID, and the multi-line message reaches Watson flattened. No key or token is logged.
#[tokio::test]
async fn a_chat_is_answered_then_handed_off_with_watsons_summary() {
    let (logs, _guard) = capture_logs("trace");
    let watson = FakeWatson::start().await;
    let mut chat = Chat::start(&watson).await;
    watson.answer(json!({"generic": [
        {"response_type": "text", "text": "Hello!"},
        {"response_type": "pause", "time": 300, "typing": true},
        {"response_type": "text", "text": "How can I help?"}
    ]}));
    watson.answer(connect_to_agent());

    let sent = tokio::time::Instant::now();
    chat.customer.send("Hi there").await.unwrap();
    assert_eq!(chat.message(1).await, "Hello!\nHow can I help?");
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "the pause is honoured on chat"
    );
    chat.customer
        .send("My March bill is wrong.\nI want to dispute it")
        .await
        .unwrap();
    let handoff = chat.message(2).await;
    assert!(
        handoff.starts_with(
            "I'll get a colleague for you.\nConnecting you now. I'm passing you to a member of our team"
        ),
        "{handoff}"
    );
    let ApiEvent::InteractionCreated(interaction) = chat
        .api
        .wait_for(|e| matches!(e, ApiEvent::InteractionCreated(_)), WAIT)
        .await
        .expect("an interaction")
    else {
        unreachable!()
    };
    assert_eq!(interaction.media_channel_sid(), Some(chat.sid()));
    let attributes = interaction.task_attributes();
    assert_eq!(attributes["handoff_reason"], "Billing dispute");
    let summary = attributes["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Customer disputes the March invoice\n"),
        "{summary}"
    );
    assert!(
        summary.contains("Intents: talk_to_human (94%)."),
        "{summary}"
    );
    assert!(summary.contains("Entities: month: March."), "{summary}");
    assert!(summary.contains("\"department\":\"Billing\""), "{summary}");
    assert_eq!(attributes["from"], "+15551230000");

    // The wire: one token, one session, two messages on it.
    let iam = watson.iam_requests();
    assert_eq!(iam.len(), 1);
    assert!(iam[0]
        .content_type
        .starts_with("application/x-www-form-urlencoded"));
    assert_eq!(
        iam[0].form["grant_type"],
        "urn:ibm:params:oauth:grant-type:apikey"
    );
    assert_eq!(iam[0].form["apikey"], APIKEY);
    assert_eq!(watson.sessions_created(), 1);
    let messages = watson.messages();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(
            m.kind,
            Kind::Message {
                session: Some("sess-1".into())
            }
        );
        assert_eq!(
            m.path,
            format!("/v2/assistants/{ENVIRONMENT_ID}/sessions/sess-1/message")
        );
        assert_eq!(m.version.as_deref(), Some("2024-08-25"));
        assert_eq!(m.bearer.as_deref(), Some("eyJfake.1.sig"));
        assert_eq!(m.body["input"]["message_type"], "text");
        let variables = &m.body["context"]["skills"]["actions skill"]["skill_variables"];
        assert_eq!(variables["channel"], "chat");
        assert_eq!(variables["from"], "+15551230000");
        assert_eq!(
            m.body["context"]["skills"]["main skill"]["user_defined"]["channel"],
            "chat"
        );
        let user_id = m.body["user_id"].as_str().unwrap();
        assert!(user_id.starts_with("rb-") && !user_id.contains("5551230000"));
        assert_eq!(m.body["user_id"], messages[0].body["user_id"]);
    }
    assert_eq!(messages[0].text(), "Hi there");
    assert_eq!(
        messages[1].text(),
        "My March bill is wrong. I want to dispute it"
    );
    let logged = logs.text();
    assert!(!logged.contains(APIKEY) && !logged.contains("eyJfake"));
}

/// A call: Watson's answer is spoken; an `option` is read out with its labels, and a key
/// pressed picks the option by its number (Watson gets the option's `value.input`); the
/// handoff asked by `connect_to_agent` ends the session with the summary in `handoffData`.
#[tokio::test]
async fn a_call_is_answered_options_are_read_out_and_keys_pick_one() {
    let watson = FakeWatson::start().await;
    let app = app_with(
        &watson,
        &[("TWILIO_WORKFLOW_SID", &format!("WW{}", "c".repeat(32)))],
    )
    .await;
    watson.answer(json!({"generic": [
        {"response_type": "text", "text": "Sure."},
        {"response_type": "pause", "time": 5000},
        {"response_type": "option", "title": "Which account?",
         "options": [
            {"label": "Checking", "value": {"input": {"text": "checking account"}}},
            {"label": "Savings", "value": {"input": {"text": "savings account"}}}]}
    ]}));
    watson.answer_text("Your savings balance is 120 dollars.");
    watson.answer(connect_to_agent());

    let mut caller = app.dial().await;
    caller.say("What's my balance?").await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        reply(&mut caller).await.text,
        "Sure. Which account? Options: Checking or Savings."
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a pause is not waited on voice"
    );
    caller.press("2").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        "Your savings balance is 120 dollars."
    );
    caller.say("I want a person").await.unwrap();
    let handoff = reply(&mut caller).await;
    assert!(handoff
        .text
        .starts_with("I'll get a colleague for you. Connecting you now."));
    // The caller hears the line (Twilio reports the audio), then the session ends.
    caller.agent_speaking(true).await.unwrap();
    caller.agent_speaking(false).await.unwrap();
    let end = match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End { handoff_data }) => handoff_data,
        other => panic!("expected end, got {other:?} after {handoff:?}"),
    };
    let data: Value = serde_json::from_str(&end.expect("handoffData")).unwrap();
    assert_eq!(data["reason"], "Billing dispute");
    assert!(data["summary"]
        .as_str()
        .unwrap()
        .starts_with("Customer disputes the March invoice"));

    let messages = watson.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0].text(), "What's my balance?");
    assert_eq!(
        messages[1].text(),
        "savings account",
        "the option's value.input"
    );
    assert_eq!(
        messages[0].body["context"]["skills"]["actions skill"]["skill_variables"]["channel"],
        "voice"
    );
}

/// An expired session (404 `Invalid Session`): a new session is made, the same input sent
/// again, and the customer gets the answer.
#[tokio::test]
async fn an_expired_session_is_replaced_and_the_input_sent_again() {
    let watson = FakeWatson::start().await;
    let app = app_with(&watson, &[]).await;
    watson.answer_text("Hello.");
    watson.answer_text("Your order shipped Monday.");
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Hello.");
    watson.expire_sessions();
    caller.say("where is my order").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Your order shipped Monday.");

    let requests = watson.requests();
    let shape: Vec<(Kind, u16, &str)> = requests
        .iter()
        .map(|r| (r.kind.clone(), r.status, r.text()))
        .collect();
    let message = |s: &str| Kind::Message {
        session: Some(s.into()),
    };
    assert_eq!(
        shape,
        [
            (Kind::CreateSession, 201, ""),
            (message("sess-1"), 200, "hi"),
            (message("sess-1"), 404, "where is my order"),
            (Kind::CreateSession, 201, ""),
            (message("sess-2"), 200, "where is my order"),
        ]
    );
}

/// Throttling: a 429 is retried once and the customer gets the answer; two in a row and the
/// customer hears the failure line; the next turn works again.
#[tokio::test]
async fn throttling_is_retried_once_then_the_failure_line() {
    let watson = FakeWatson::start().await;
    let app = app_with(&watson, &[]).await;
    let throttled = json!({"error": "Rate limit exceeded", "code": 429});
    let mut caller = app.dial().await;

    watson.fail_next(429, throttled.clone(), 1);
    watson.answer_text("Answered after one retry.");
    caller.say("one").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Answered after one retry.");

    watson.fail_next(429, throttled, 2);
    caller.say("two").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, DEFAULT_ERROR_LINE);

    watson.answer_text("Back again.");
    caller.say("three").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Back again.");
    let statuses: Vec<u16> = watson
        .requests()
        .iter()
        .filter(|r| matches!(r.kind, Kind::Message { .. }))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 200, 429, 429, 200]);
}

/// The IAM token is exchanged once for many turns; a 401 from Watson exchanges the key again
/// and the same call is made again; an expired token is replaced before use.
#[tokio::test]
async fn the_token_is_cached_refreshed_on_401_and_when_expired() {
    let watson = FakeWatson::start().await;
    let app = app_with(&watson, &[]).await;
    let mut caller = app.dial().await;
    for turn in ["a", "b", "c"] {
        caller.say(turn).await.unwrap();
        assert_eq!(reply(&mut caller).await.text, "OK.");
    }
    assert_eq!(watson.iam_requests().len(), 1);

    watson.revoke_tokens();
    caller.say("d").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
    assert_eq!(watson.iam_requests().len(), 2);
    let last: Vec<(u16, Option<String>)> = watson
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|r| (r.status, r.bearer.clone()))
        .collect();
    assert_eq!(
        last,
        [
            (200, Some("eyJfake.2.sig".into())),
            (401, Some("eyJfake.1.sig".into()))
        ]
    );

    // A token that lives one second is exchanged again once it is (nearly) over.
    watson.set_expires_in(1);
    watson.revoke_tokens();
    caller.say("e").await.unwrap();
    reply(&mut caller).await;
    assert_eq!(watson.iam_requests().len(), 3);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    caller.say("f").await.unwrap();
    reply(&mut caller).await;
    assert_eq!(watson.iam_requests().len(), 4);
    assert_eq!(
        watson.requests().last().unwrap().bearer.as_deref(),
        Some("eyJfake.4.sig"),
        "no 401 first: the expired token was not sent"
    );
}

/// Stateless mode: no session; the context Watson returns is sent back on the next turn
/// (with the caller's variables merged in).
#[tokio::test]
async fn stateless_mode_sends_the_context_back() {
    let watson = FakeWatson::start().await;
    let app = app_with(&watson, &[("WATSON_STATELESS", "true")]).await;
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    reply(&mut caller).await;
    caller.say("again").await.unwrap();
    reply(&mut caller).await;
    assert_eq!(watson.sessions_created(), 0);
    let messages = watson.messages();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(m.kind, Kind::Message { session: None });
        assert_eq!(m.path, format!("/v2/assistants/{ENVIRONMENT_ID}/message"));
    }
    assert!(messages[0].body["context"]["global"].is_null());
    let second = &messages[1].body["context"];
    assert_eq!(second["global"]["session_id"], "stateless-1");
    assert_eq!(second["global"]["system"]["turn_count"], 1);
    assert_eq!(second["global"]["system"]["state"], "opaque-state-1");
    assert_eq!(
        second["skills"]["actions skill"]["skill_variables"]["channel"],
        "voice"
    );
}

/// With both IDs the newer `/assistants/{assistant}/environments/{environment}` paths are
/// used; an instance that answers 404 there is asked on the legacy path instead.
#[tokio::test]
async fn both_ids_use_the_environment_paths_with_a_legacy_fallback() {
    let watson = FakeWatson::start().await;
    let app = app_with(&watson, &[("WATSON_ASSISTANT_ID", ASSISTANT_ID)]).await;
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
    let newer = format!("/v2/assistants/{ASSISTANT_ID}/environments/{ENVIRONMENT_ID}");
    assert!(watson.requests().iter().all(|r| r.path.starts_with(&newer)));

    let watson = FakeWatson::start().await;
    watson.refuse_newer_paths();
    let app = app_with(&watson, &[("WATSON_ASSISTANT_ID", ASSISTANT_ID)]).await;
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
    caller.say("again").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "OK.");
    let paths: Vec<(String, u16)> = watson
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.status))
        .collect();
    let legacy = format!("/v2/assistants/{ENVIRONMENT_ID}");
    assert_eq!(
        paths,
        [
            (format!("{newer}/sessions"), 404),
            (format!("{legacy}/sessions"), 201),
            (format!("{legacy}/sessions/sess-1/message"), 200),
            (format!("{legacy}/sessions/sess-1/message"), 200),
        ]
    );
}
