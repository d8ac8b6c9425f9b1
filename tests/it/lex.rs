//! Amazon Lex V2 as the brain, end to end against a fake Lex runtime: the real server, the real
//! AWS SDK (SigV4-signed requests, its JSON deserializers), a call through the simulator's
//! caller, and a chat through the fake Conversations API.

use std::sync::Once;

use aws_sdk_lexruntimev2::config::{BehaviorVersion, Credentials, Region};
use relaybot::{
    agent::tools::ToolRegistry,
    config::{lines, DEFAULT_END_CALL_LINE, DEFAULT_ERROR_LINE, DEFAULT_HANDOFF_LINE},
    handoff::HandoffData,
    relay::protocol::Outbound,
    simulator::{
        chat_customer::ChatCustomer,
        conversations_api::{ApiEvent, FakeConversationsApi},
        new_sid, Caller,
    },
    twilio::twiml,
};
use serde_json::{json, Value};

use crate::{
    fake_lex::{intent, plain, FakeLex, LexScript},
    helpers::{capture_logs, reply, spawn_app_with, TestApp, WAIT},
};

const BOT: &str = "ABCDEFGHIJ";
const ALIAS: &str = "TSTALIASID";
const WORKFLOW: &str = "WW0123456789abcdef0123456789abcdef";

/// The AWS SDK reads credentials and region from the process environment (the standard
/// provider chain); every test sets the same values, once.
fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (key, value) in [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            std::env::set_var(key, value);
        }
    });
}

/// The server with Lex as its brain (`extra` settings added), and the fake Lex.
async fn lex_app(extra: &[(&str, &str)]) -> (TestApp, FakeLex) {
    aws_env();
    let lex = FakeLex::start().await;
    let mut vars = vec![
        ("LLM_PROVIDER", "lex"),
        ("LEX_BOT_ID", BOT),
        ("LEX_BOT_ALIAS_ID", ALIAS),
        ("LEX_ENDPOINT_URL", lex.url.as_str()),
    ];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(&vars, ToolRegistry::new()).await;
    (app, lex)
}

/// The caller hears what was said: Twilio reports the audio starting and stopping.
async fn hear(caller: &mut Caller) {
    caller.agent_speaking(true).await.unwrap();
    caller.agent_speaking(false).await.unwrap();
}

async fn expect_end(caller: &mut Caller) -> HandoffData {
    match caller.next(WAIT).await.unwrap() {
        Some(Outbound::End {
            handoff_data: Some(data),
        }) => serde_json::from_str(&data).expect("handoffData is our JSON"),
        other => panic!("expected end, got {other:?}"),
    }
}

/// The OrderFlowers sample asking for its first slot: every slot unfilled (`null`).
fn order_flowers_elicit() -> LexScript {
    LexScript::Turn {
        messages: vec![plain("What type of flowers would you like to order?")],
        dialog_action: json!({"type": "ElicitSlot", "slotToElicit": "FlowerType"}),
        intent: intent(
            "OrderFlowers",
            "InProgress",
            json!({"FlowerType": null, "PickupDate": null, "PickupTime": null}),
        ),
        lambda_attributes: vec![("orderStage", "started")],
    }
}

fn filled(value: &str) -> Value {
    json!({"shape": "Scalar", "value": {"originalValue": value, "interpretedValue": value,
                                        "resolvedValues": [value]}})
}

/// A call: Lex answers (its slots all `null`), then the caller asks for a person and Lex's
/// `Agent` intent hands the call to Flex through `end`, with Lex's intent, slots and the
/// caller's words for the agent. Every request is SigV4-signed and carries the session id,
/// the context and (from the second on) the attributes Lex's code hook set.
#[tokio::test]
async fn a_call_answered_by_lex_is_handed_off_on_agent() {
    let (app, mut lex) = lex_app(&[("TWILIO_WORKFLOW_SID", WORKFLOW)]).await;
    lex.push(order_flowers_elicit());
    let mut caller = app.dial().await;
    caller.say("I would like to order flowers").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        "What type of flowers would you like to order?"
    );
    let first = lex.next_request().await;
    assert_eq!(
        (
            first.bot_id.as_str(),
            first.bot_alias_id.as_str(),
            first.locale_id.as_str()
        ),
        (BOT, ALIAS, "en_US")
    );
    assert_eq!(first.session_id, caller.call_sid);
    assert_eq!(first.text(), "I would like to order flowers");
    assert!(
        first
            .authorization
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{}",
        first.authorization
    );
    assert!(first.authorization.contains("/us-east-1/lex/aws4_request"));
    assert_eq!(
        first.body["sessionState"]["sessionAttributes"],
        json!({"from": "+15005550006", "channel": "voice", "relaybot_fallbacks": "0"})
    );

    lex.push(LexScript::turn(
        vec![plain("Okay, let me get you to an agent.")],
        "Close",
        intent(
            "Agent",
            "ReadyForFulfillment",
            json!({"Topic": filled("billing"), "Account": null}),
        ),
    ));
    caller.say("talk to a person about my bill").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        format!("Okay, let me get you to an agent. {DEFAULT_HANDOFF_LINE}")
    );
    let second = lex.next_request().await;
    assert_eq!(second.attribute("orderStage"), Some("started"));
    assert_eq!(second.attribute("channel"), Some("voice"));
    hear(&mut caller).await;
    let data = expect_end(&mut caller).await;
    assert_eq!(data.reason_code, "live-agent-handoff");
    assert_eq!(data.reason, "Lex intent Agent");
    assert_eq!(
        data.summary,
        "Lex intent: Agent. Slots: Topic=billing. The customer said: \
         \"I would like to order flowers\" / \"talk to a person about my bill\"."
    );
    assert_eq!(data.call_sid, caller.call_sid);

    let doc = caller
        .post_action(
            "ended",
            "in-progress",
            &[("HandoffData".into(), serde_json::to_string(&data).unwrap())],
        )
        .await
        .unwrap();
    let root = twiml::parse(&doc).unwrap();
    assert_eq!(
        root.find("Enqueue").unwrap().attr("workflowSid"),
        Some(WORKFLOW)
    );
    let task: Value = serde_json::from_str(&root.find("Task").unwrap().text).unwrap();
    assert_eq!(task["handoff_reason"], "Lex intent Agent");
    assert_eq!(task["summary"], data.summary.as_str());
}

/// A Lex response exactly as the Lex V2 developer guide shows it for OrderFlowers, with `null`
/// for each unfilled slot (in `sessionState` and in `interpretations`) and for an ambiguous
/// value.
const NULL_SLOTS: &str = r#"{
  "interpretations": [
    {"intent": {"confirmationState": "None", "name": "OrderFlowers",
                "slots": {"FlowerType": {"shape": "Scalar", "value": {"interpretedValue": "roses",
                          "originalValue": "roses", "resolvedValues": ["roses"]}},
                          "PickupDate": null, "PickupTime": null},
                "state": "InProgress"},
     "nluConfidence": {"score": 0.95}},
    {"intent": {"name": "FallbackIntent", "slots": {}}}
  ],
  "messages": [{"content": "What day do you want the roses to be picked up?",
                "contentType": "PlainText"}],
  "sessionId": "bf445a49-7165-4fcd-9a9c-a782493fba5c",
  "sessionState": {
    "dialogAction": {"slotToElicit": "PickupDate", "type": "ElicitSlot"},
    "intent": {"confirmationState": "None", "name": "OrderFlowers",
               "slots": {"FlowerType": {"shape": "Scalar", "value": {"interpretedValue": "roses",
                         "originalValue": "roses", "resolvedValues": ["roses"]}},
                         "PickupDate": null,
                         "PickupTime": {"shape": "Scalar", "value": {"interpretedValue": null,
                         "originalValue": "ten", "resolvedValues": ["10:00", "22:00"]}}},
               "state": "InProgress"},
    "sessionAttributes": {"note": null},
    "originatingRequestId": "36e1cdc8-0000-0000-0000-000000000000"
  }
}"#;

/// Null slots: the SDK on its own fails the whole call on Lex's wire format ("dense map cannot
/// contain null values", the HTTP 200 attached); relaybot's turn with the same body succeeds.
#[tokio::test]
async fn null_slots_never_fail_a_turn() {
    let (app, mut lex) = lex_app(&[]).await;

    // The finding: the bare SDK against the raw body.
    lex.push(LexScript::Raw(NULL_SLOTS.into()));
    let config = aws_sdk_lexruntimev2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(&lex.url)
        .build();
    let bare = aws_sdk_lexruntimev2::Client::from_conf(config);
    let error = bare
        .recognize_text()
        .bot_id(BOT)
        .bot_alias_id(ALIAS)
        .locale_id("en_US")
        .session_id("CA0000000000000000000000000000null")
        .text("roses")
        .send()
        .await
        .expect_err("the SDK refuses null map values");
    assert_eq!(error.raw_response().map(|r| r.status().as_u16()), Some(200));
    let chain = {
        let mut text = format!("{error:?}");
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            text.push_str(&format!(" / {e}"));
            source = e.source();
        }
        text
    };
    assert!(
        chain.contains("dense map cannot contain null values"),
        "{chain}"
    );
    assert_eq!(lex.requests().len(), 1, "the SDK did not retry");
    lex.next_request().await;

    // relaybot: the same body answers the caller.
    lex.push(LexScript::Raw(NULL_SLOTS.into()));
    let mut caller = app.dial().await;
    caller.say("roses").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        "What day do you want the roses to be picked up?"
    );
    assert_eq!(lex.next_request().await.text(), "roses");
}

/// Keys pressed reach Lex as the digits, keys pressed in quick succession as one input (a
/// keypress that reached Lex could not be taken back), `#` ending the entry at once; the
/// digits are never logged.
#[tokio::test]
async fn keypresses_reach_lex_as_digits_and_are_not_logged() {
    let (logs, _guard) = capture_logs("trace");
    // With a single dispatcher alive, `tracing` caches each callsite's interest from the thread
    // that first reaches it (another test's, with no subscriber: "never"); a second one makes it
    // ask every live dispatcher, so this test's capture sees the Lex brain's events too.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let (app, mut lex) = lex_app(&[]).await;
    lex.push(LexScript::say("Thanks, I found your account."));
    lex.push(LexScript::say("And your PIN."));
    let mut caller = app.dial().await;
    for digit in ["7", "3", "9", "1"] {
        caller.press(digit).await.unwrap();
    }
    assert_eq!(
        reply(&mut caller).await.text,
        "Thanks, I found your account."
    );
    assert_eq!(lex.next_request().await.text(), "7391");
    for key in ["5", "8", "6", "4", "#"] {
        caller.press(key).await.unwrap();
    }
    // Sent without waiting, and without the `#` (the wait would have sent "5864#").
    assert_eq!(lex.next_request().await.text(), "5864");
    assert_eq!(reply(&mut caller).await.text, "And your PIN.");
    assert_eq!(lex.requests().len(), 2, "one request per entry");
    let logged = logs.text();
    assert!(logged.contains("Lex answered"), "{logged}");
    // As a token of its own (ports, SIDs and timestamps may hold the same digits by chance).
    for digits in ["7391", "5864"] {
        let standalone = logged.match_indices(digits).any(|(at, _)| {
            let before = logged[..at].chars().next_back();
            let after = logged[at + digits.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        });
        assert!(!standalone, "{digits} was logged: {logged}");
    }
}

/// The caller speaks again while Lex has not answered: that request is dropped and the newer
/// words get Lex's answer.
#[tokio::test]
async fn words_said_while_lex_thinks_replace_the_question() {
    let (app, mut lex) = lex_app(&[]).await;
    lex.push(LexScript::Stall);
    lex.push(LexScript::say("Sure, roses it is."));
    let mut caller = app.dial().await;
    caller.say("I want flowers").await.unwrap();
    assert_eq!(lex.next_request().await.text(), "I want flowers");
    caller.say("roses please").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Sure, roses it is.");
    assert_eq!(lex.next_request().await.text(), "roses please");
}

/// `Close` with the intent `Fulfilled`: Lex's message, the goodbye, and the call ends.
#[tokio::test]
async fn close_and_fulfilled_ends_the_call() {
    let (app, lex) = lex_app(&[]).await;
    lex.push(LexScript::turn(
        vec![plain("Thanks, your order for roses has been placed.")],
        "Close",
        intent(
            "OrderFlowers",
            "Fulfilled",
            json!({"FlowerType": filled("roses")}),
        ),
    ));
    let mut caller = app.dial().await;
    caller.say("yes, place the order").await.unwrap();
    assert_eq!(
        reply(&mut caller).await.text,
        format!("Thanks, your order for roses has been placed. {DEFAULT_END_CALL_LINE}")
    );
    hear(&mut caller).await;
    let data = expect_end(&mut caller).await;
    assert_eq!(data.reason_code, "end-call");
    assert_eq!(data.reason, "Lex intent OrderFlowers Fulfilled");
}

/// The default `LEX_FALLBACK_LINE`.
const OFFER: &str = "Sorry, I'm not getting that. I can connect you to a person if you'd like.";

/// With no person to take over, fallbacks are never followed by an offer of one.
#[tokio::test]
async fn without_a_person_fallbacks_offer_nothing() {
    let (app, lex) = lex_app(&[]).await;
    let sorry = "Sorry, can you please repeat that?";
    lex.push(LexScript::fallback(sorry));
    lex.push(LexScript::fallback(sorry));
    let mut caller = app.dial().await;
    caller.say("blah").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, sorry);
    caller.say("blah blah").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, sorry);
}

/// `FallbackIntent` twice in a row (the default count): the second answer is followed by the
/// offer of a person, and the count, kept in Lex's session attributes, starts again.
#[tokio::test]
async fn fallbacks_in_a_row_offer_a_person() {
    let workflow = format!("WW{}", "0".repeat(32));
    let (app, mut lex) = lex_app(&[("TWILIO_WORKFLOW_SID", workflow.as_str())]).await;
    let sorry = "Sorry, can you please repeat that?";
    lex.push(LexScript::fallback(sorry));
    lex.push(LexScript::fallback(sorry));
    lex.push(LexScript::fallback(sorry));
    let mut caller = app.dial().await;
    caller.say("blah").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, sorry);
    caller.say("blah blah").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, format!("{sorry} {OFFER}"));
    caller.say("what").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, sorry);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let request = lex.next_request().await;
        seen.push(request.attribute("relaybot_fallbacks").unwrap().to_owned());
    }
    assert_eq!(seen, ["0", "1", "0"]);
}

/// Throttling: one quick retry; a second 429 gives the failure line, with the offer of a
/// person when a human can take the call. An error that a retry cannot fix (403) is not
/// retried, and without a human the plain apology is said.
#[tokio::test]
async fn lex_errors_get_one_retry_then_the_failure_lines() {
    let (app, lex) = lex_app(&[("TWILIO_WORKFLOW_SID", WORKFLOW)]).await;
    lex.push(LexScript::Error(
        429,
        "ThrottlingException",
        "Rate exceeded",
    ));
    lex.push(LexScript::say("Hello again."));
    lex.push(LexScript::Error(
        429,
        "ThrottlingException",
        "Rate exceeded",
    ));
    lex.push(LexScript::Error(
        429,
        "ThrottlingException",
        "Rate exceeded",
    ));
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, "Hello again.");
    assert_eq!(lex.requests().len(), 2, "retried once");
    caller.say("hello?").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, lines::LLM_OFFER_HUMAN);
    assert_eq!(lex.requests().len(), 4, "one retry, no more");

    let (app, lex) = lex_app(&[]).await;
    lex.push(LexScript::Error(
        403,
        "AccessDeniedException",
        "User is not authorized to perform: lex:RecognizeText",
    ));
    lex.push(LexScript::Error(
        500,
        "InternalServerException",
        "Internal failure",
    ));
    lex.push(LexScript::Error(
        500,
        "InternalServerException",
        "Internal failure",
    ));
    let mut caller = app.dial().await;
    caller.say("hi").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, DEFAULT_ERROR_LINE);
    assert_eq!(lex.requests().len(), 1, "a 403 is not retried");
    caller.say("hi again").await.unwrap();
    assert_eq!(reply(&mut caller).await.text, DEFAULT_ERROR_LINE);
    assert_eq!(lex.requests().len(), 3, "a 500 is retried once");
}

/// Lex on the Conversations channel: one turn's messages (plain text, SSML, a response card;
/// a custom payload left out) make one posted reply; `Agent` then hands the conversation to
/// Flex with Lex's summary in the task attributes.
#[tokio::test]
async fn a_chat_is_answered_once_per_turn_and_handed_off() {
    let api = FakeConversationsApi::start().await.expect("fake Twilio");
    let token = "chat-auth-token";
    let account_sid = format!("AC{}", "a".repeat(32));
    let workspace_sid = format!("WS{}", "b".repeat(32));
    let (app, mut lex) = lex_app(&[
        ("TWILIO_ACCOUNT_SID", &account_sid),
        ("TWILIO_AUTH_TOKEN", token),
        ("TWILIO_CONVERSATIONS_BASE", &api.base_url),
        ("TWILIO_FLEX_BASE", &api.base_url),
        ("FLEX_WORKSPACE_SID", &workspace_sid),
        ("TWILIO_WORKFLOW_SID", WORKFLOW),
    ])
    .await;
    let sid = new_sid("CH");
    let webhook_sid =
        api.add_conversation(&sid, &format!("{}/conversations/webhook", app.base_url));
    let mut customer = ChatCustomer::new(
        &app.base_url,
        &app.base_url,
        Some(token.to_owned()),
        &sid,
        "+15551230000",
        &webhook_sid,
    );
    lex.push(LexScript::turn(
        vec![
            plain("Hi! I can help with flowers."),
            json!({"contentType": "SSML", "content": "<speak>We open at <say-as interpret-as=\"time\">9am</say-as>.</speak>"}),
            json!({"contentType": "CustomPayload", "content": "{\"templateType\":\"QuickReply\"}"}),
            json!({"contentType": "ImageResponseCard", "imageResponseCard": {
                "title": "Pick a flower", "buttons": [
                    {"text": "Roses", "value": "roses"}, {"text": "Tulips", "value": "tulips"}]}}),
        ],
        "ElicitSlot",
        intent(
            "OrderFlowers",
            "InProgress",
            json!({"FlowerType": null, "PickupDate": null}),
        ),
    ));
    customer.send("hi").await.unwrap();
    let first = api.wait_for_message(&sid, 1, WAIT).await.expect("a reply");
    assert_eq!(
        first.body,
        "Hi! I can help with flowers.\n\nWe open at 9am.\n\nPick a flower. Options: Roses, Tulips."
    );
    let request = lex.next_request().await;
    assert_eq!(request.session_id, sid);
    assert_eq!(request.attribute("channel"), Some("chat"));
    assert_eq!(request.attribute("from"), Some("+15551230000"));

    lex.push(LexScript::turn(
        vec![plain("Connecting you with a person.")],
        "Close",
        intent("Agent", "Fulfilled", json!({})),
    ));
    customer.send("a human please").await.unwrap();
    let ApiEvent::InteractionCreated(interaction) = api
        .wait_for(|e| matches!(e, ApiEvent::InteractionCreated(_)), WAIT)
        .await
        .expect("an interaction")
    else {
        unreachable!()
    };
    let attributes = &interaction.routing["properties"]["attributes"];
    assert_eq!(attributes["handoff_reason"], "Lex intent Agent");
    assert_eq!(
        attributes["summary"],
        "Lex intent: Agent. The customer said: \"hi\" / \"a human please\"."
    );
    let second = api.wait_for_message(&sid, 2, WAIT).await.expect("a reply");
    assert!(
        second.body.starts_with("Connecting you with a person."),
        "{}",
        second.body
    );
    assert_eq!(
        api.messages(&sid).len(),
        2,
        "one message per turn: {:?}",
        api.messages(&sid)
    );
}
