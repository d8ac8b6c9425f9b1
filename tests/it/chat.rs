//! The chat channel end to end: signed Conversations webhooks in, the fake Conversations and
//! Flex Interactions APIs (the simulator's) out, the fake model behind the agent.

use std::time::Duration;

use relaybot::{
    agent::tools::ToolRegistry,
    simulator::{
        chat_customer::ChatCustomer,
        conversations_api::{ApiEvent, FakeConversationsApi},
        new_sid,
    },
    twilio::signature,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    fake_llm::{Chunk, Gate, Script},
    helpers::{messages, spawn_app_with, TestApp, WAIT},
};

#[path = "../support/liquid.rs"]
mod liquid;

use liquid::{render_object, Context};

const TOKEN: &str = "chat-auth-token";

/// A server wired to the fake Twilio APIs, and one customer in one conversation.
struct Chat {
    app: TestApp,
    api: FakeConversationsApi,
    customer: ChatCustomer,
    account_sid: String,
    workspace_sid: String,
    workflow_sid: String,
}

impl Chat {
    fn sid(&self) -> &str {
        &self.customer.conversation_sid
    }

    /// The `n`-th bot message of the conversation.
    async fn message(&self, n: usize) -> String {
        let message = self
            .api
            .wait_for_message(self.sid(), n, WAIT)
            .await
            .unwrap_or_else(|| panic!("no message {n}; saw {:?}", self.api.events()));
        assert_eq!(message.author, "relaybot");
        message.body
    }

    async fn event(&self, what: &str, predicate: impl FnMut(&ApiEvent) -> bool) -> ApiEvent {
        self.api
            .wait_for(predicate, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {what}; saw {:?}", self.api.events()))
    }

    /// Waits until the server has no live task for the conversation (bounded).
    async fn session_gone(&self) {
        let chat = &self.app.server.state.chat;
        let deadline = tokio::time::Instant::now() + WAIT;
        while chat.live() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the session never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn chat_with(author: &str, extra: &[(&str, &str)]) -> Chat {
    let api = FakeConversationsApi::start().await.expect("fake Twilio");
    let account_sid = format!("AC{}", "a".repeat(32));
    let workspace_sid = format!("WS{}", "b".repeat(32));
    let workflow_sid = format!("WW{}", "c".repeat(32));
    let mut vars: Vec<(&str, &str)> = vec![
        ("TWILIO_ACCOUNT_SID", &account_sid),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_CONVERSATIONS_BASE", &api.base_url),
        ("TWILIO_FLEX_BASE", &api.base_url),
        ("FLEX_WORKSPACE_SID", &workspace_sid),
        ("TWILIO_WORKFLOW_SID", &workflow_sid),
        ("API_TOKEN", "records-token"),
    ];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(&vars, ToolRegistry::new()).await;
    let conversation_sid = new_sid("CH");
    let webhook_sid = api.add_conversation(
        &conversation_sid,
        &format!("{}/conversations/webhook", app.base_url),
    );
    let signing_base = extra
        .iter()
        .find(|(k, _)| *k == "PUBLIC_URL")
        .map_or(app.base_url.clone(), |(_, v)| v.to_string());
    let customer = ChatCustomer::new(
        &app.base_url,
        &signing_base,
        Some(TOKEN.to_owned()),
        &conversation_sid,
        author,
        &webhook_sid,
    );
    Chat {
        app,
        api,
        customer,
        account_sid,
        workspace_sid,
        workflow_sid,
    }
}

async fn chat() -> Chat {
    chat_with("+15551230000", &[]).await
}

/// A customer message gets one reply, posted with our author and the account's credentials;
/// the chat agent has the chat prompt and the chat tools.
#[tokio::test]
async fn a_message_gets_one_reply_from_the_chat_agent() {
    let mut chat = chat().await;
    chat.app
        .llm
        .push(Script::text(&["Hello", "! How can", " I help?"]));
    let (status, _) = chat.customer.send("Hi there").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(chat.message(1).await, "Hello! How can I help?");
    let request = chat.app.llm.next_request().await;
    let history = messages(&request);
    assert!(history[0]["content"]
        .as_str()
        .unwrap()
        .contains("chat window"));
    assert_eq!(history.last().unwrap()["content"], "Hi there");
    let tools: Vec<&str> = request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["agent_handoff", "end_call"]);
    let posted = chat
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == Method::POST && r.path.ends_with("/Messages"))
        .unwrap();
    assert_eq!(
        posted.basic_auth(),
        Some((chat.account_sid.clone(), TOKEN.to_owned()))
    );
    assert_eq!(chat.api.messages(chat.sid()).len(), 1);
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", chat.app.base_url))
        .bearer_auth("records-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"relaybot_chat_events_total{outcome="started"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("relaybot_chats_live"), "{metrics}");
}

/// Twilio's retry of a delivery (same MessageSid) never produces a second reply.
#[tokio::test]
async fn a_retried_delivery_is_not_answered_twice() {
    let mut chat = chat().await;
    chat.app.llm.push(Script::text(&["First answer."]));
    chat.app.llm.push(Script::text(&["Second answer."]));
    let (_, sid) = chat.customer.send("one").await.unwrap();
    assert_eq!(chat.message(1).await, "First answer.");
    assert_eq!(chat.customer.redeliver(&sid).await.unwrap(), 200);
    chat.customer.send("two").await.unwrap();
    assert_eq!(chat.message(2).await, "Second answer.");
    let first = chat.app.llm.next_request().await;
    let second = chat.app.llm.next_request().await;
    assert_eq!(messages(&first).last().unwrap()["content"], "one");
    assert_eq!(messages(&second).last().unwrap()["content"], "two");
    assert!(chat.app.llm.next_request_now().is_none());
    assert_eq!(chat.api.messages(chat.sid()).len(), 2);
}

/// Messages that arrive while a turn runs are answered together, in one turn.
#[tokio::test]
async fn messages_during_a_turn_are_answered_together() {
    let mut chat = chat().await;
    let gate = Gate::default();
    chat.app.llm.push(Script::Gated {
        before: vec![Chunk::Text("Looking")],
        after: vec![Chunk::Text(" into it."), Chunk::Finish("stop")],
        gate: gate.clone(),
    });
    chat.app.llm.push(Script::text(&["Got both."]));
    chat.customer.send("My order is late").await.unwrap();
    let first = chat.app.llm.next_request().await;
    assert_eq!(
        messages(&first).last().unwrap()["content"],
        "My order is late"
    );
    chat.customer.send("It's order 123").await.unwrap();
    chat.customer.send("Placed Monday").await.unwrap();
    gate.open.notify_one();
    assert_eq!(chat.message(1).await, "Looking into it.");
    assert_eq!(chat.message(2).await, "Got both.");
    let second = chat.app.llm.next_request().await;
    assert_eq!(
        messages(&second).last().unwrap()["content"],
        "It's order 123\nPlaced Monday"
    );
    assert!(chat.app.llm.next_request_now().is_none());
}

/// `agent_handoff`: the line is posted, a Flex interaction is created for this conversation
/// with the documented Channel and Routing, the bot's webhook is deleted, the conversation is
/// marked, and later messages are not answered; the record is served.
#[tokio::test]
async fn a_handoff_creates_the_interaction_and_leaves_the_loop() {
    let mut chat = chat_with(
        "whatsapp:+15551230000",
        &[("PUBLIC_URL", "https://bot.example")],
    )
    .await;
    chat.app.llm.push(Script::call(
        "call_1",
        "agent_handoff",
        r#"{"reason":"wants a person","summary":"Order 123 arrived broken"}"#,
    ));
    chat.customer.send("Let me talk to a human").await.unwrap();
    assert!(chat
        .message(1)
        .await
        .starts_with("I'm passing you to a member of our team"));
    let ApiEvent::InteractionCreated(interaction) = chat
        .event("interaction", |e| {
            matches!(e, ApiEvent::InteractionCreated(_))
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        interaction.channel,
        json!({
            "type": "whatsapp",
            "initiated_by": "customer",
            "properties": {"media_channel_sid": chat.sid()}
        })
    );
    let routing = &interaction.routing["properties"];
    assert_eq!(routing["workspace_sid"], chat.workspace_sid.as_str());
    assert_eq!(routing["workflow_sid"], chat.workflow_sid.as_str());
    assert_eq!(routing["task_channel_unique_name"], "chat");
    let attributes = &routing["attributes"];
    assert_eq!(attributes["from"], "whatsapp:+15551230000");
    assert_eq!(attributes["name"], "whatsapp:+15551230000");
    assert_eq!(attributes["handoff_reason"], "wants a person");
    assert_eq!(attributes["summary"], "Order 123 arrived broken");
    assert_eq!(attributes["conversationSid"], chat.sid());
    assert_eq!(attributes["channelType"], "whatsapp");
    assert_eq!(
        attributes["handoffRecordUrl"],
        format!("https://bot.example/conversations/{}/handoff", chat.sid())
    );
    let webhook_sid = chat.customer.webhook_sid.clone();
    chat.event(
        "webhook deleted",
        |e| matches!(e, ApiEvent::WebhookDeleted { webhook_sid: w, .. } if *w == webhook_sid),
    )
    .await;
    let ApiEvent::ConversationUpdated { attributes, .. } = chat
        .event("the handedOff mark", |e| {
            matches!(
                e,
                ApiEvent::ConversationUpdated {
                    attributes_changed: true,
                    ..
                }
            )
        })
        .await
    else {
        unreachable!()
    };
    let attributes: Value = serde_json::from_str(&attributes).unwrap();
    assert_eq!(attributes["handedOff"], true);
    assert_eq!(attributes["interactionSid"], interaction.sid.as_str());

    // Later messages are never answered.
    assert_eq!(chat.customer.send("hello?").await.unwrap().0, 200);
    chat.session_gone().await;
    assert_eq!(chat.api.messages(chat.sid()).len(), 1);
    assert!(
        chat.app.llm.next_request_now().is_some(),
        "the handoff turn"
    );
    assert!(
        chat.app.llm.next_request_now().is_none(),
        "nothing after it"
    );

    let record: Value = reqwest::Client::new()
        .get(format!(
            "{}/conversations/{}/handoff",
            chat.app.base_url,
            chat.sid()
        ))
        .bearer_auth("records-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["conversationSid"], chat.sid());
    assert_eq!(record["interactionSid"], interaction.sid.as_str());
    assert_eq!(record["path"], "flex-interaction");
    assert_eq!(record["transcript"][0]["text"], "Let me talk to a human");
}

/// Another instance (or a restart) sees the handedOff mark before its turn and stays quiet.
#[tokio::test]
async fn a_conversation_marked_handed_off_is_never_answered() {
    let mut chat = chat().await;
    chat.api.set_conversation(
        chat.customer.conversation_sid.as_str(),
        Some(r#"{"handedOff":true,"interactionSid":"KD1"}"#),
        Some("active"),
    );
    chat.customer.send("anyone there?").await.unwrap();
    chat.session_gone().await;
    assert!(chat.app.llm.next_request_now().is_none());
    assert!(chat.api.messages(chat.sid()).is_empty());
}

/// `end_call`: the goodbye is posted, then the conversation is closed.
#[tokio::test]
async fn end_call_posts_the_goodbye_and_closes_the_conversation() {
    let mut chat = chat().await;
    chat.app
        .llm
        .push(Script::call("call_1", "end_call", r#"{"reason":"done"}"#));
    chat.customer.send("that's all, bye").await.unwrap();
    assert_eq!(
        chat.message(1).await,
        "Thanks for chatting with us. Goodbye!"
    );
    chat.event("the conversation closed", |e| {
        matches!(e, ApiEvent::ConversationUpdated { state, state_changed: true, .. } if state == "closed")
    })
    .await;
    chat.session_gone().await;
}

/// A request without a valid signature is refused before anything runs.
#[tokio::test]
async fn unsigned_webhooks_are_refused() {
    let mut chat = chat().await;
    let form = [
        ("EventType", "onMessageAdded"),
        ("ConversationSid", chat.sid()),
        ("MessageSid", "IM00000000000000000000000000000001"),
        ("Body", "hi"),
        ("Author", "+15551230000"),
    ];
    let url = format!("{}/conversations/webhook", chat.app.base_url);
    let client = reqwest::Client::new();
    let missing = client.post(&url).form(&form).send().await.unwrap();
    assert_eq!(missing.status(), 403);
    let wrong = client
        .post(&url)
        .header(signature::HEADER, "bm90IGl0")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(chat.app.server.state.chat.live(), 0);
    assert!(chat.app.llm.next_request_now().is_none());
    assert!(chat.api.requests().is_empty());
}

/// The webhook is acknowledged at once even when the model never answers.
#[tokio::test]
async fn a_stalled_model_does_not_hold_the_webhook() {
    let mut chat = chat().await;
    chat.app.llm.push(Script::Stall);
    let sent = tokio::time::timeout(Duration::from_secs(5), chat.customer.send("hello"))
        .await
        .expect("answered within Twilio's 5 s")
        .unwrap();
    assert_eq!(sent.0, 200);
    chat.app.llm.next_request().await;
}

/// A handoff the Interactions API keeps refusing is retried, then the customer is told and the
/// bot keeps helping; a failed post is retried.
#[tokio::test]
async fn rest_failures_are_retried_then_the_customer_gets_the_fallback_line() {
    let mut chat = chat().await;
    chat.api.fail_next(Method::POST, "/v1/Interactions", 503, 3);
    chat.api.fail_next(Method::POST, "/Messages", 503, 1);
    chat.app.llm.push(Script::call(
        "call_1",
        "agent_handoff",
        r#"{"reason":"wants a person"}"#,
    ));
    chat.customer.send("a person please").await.unwrap();
    assert!(chat.message(1).await.starts_with("I'm passing you"));
    assert!(chat
        .message(2)
        .await
        .starts_with("I'm sorry, I couldn't reach an agent"));
    assert!(chat.api.interactions().is_empty());
    let refused = chat
        .api
        .events()
        .iter()
        .filter(|e| matches!(e, ApiEvent::Refused { status: 503, .. }))
        .count();
    assert_eq!(refused, 4, "three interaction attempts and one failed post");
    let conversation = chat.api.conversation(chat.sid()).unwrap();
    assert!(!conversation.handed_off());
    // The bot is still there.
    chat.app.llm.push(Script::text(&["Still here."]));
    chat.customer.send("ok").await.unwrap();
    assert_eq!(chat.message(3).await, "Still here.");
}

/// The greeting on `onConversationAdded`; a polite answer to a picture; nothing for an empty
/// message.
#[tokio::test]
async fn greeting_media_and_empty_messages() {
    let mut chat = chat().await;
    assert_eq!(chat.customer.conversation_added().await.unwrap(), 200);
    assert!(chat.message(1).await.starts_with("Hi! I'm relaybot"));
    chat.customer.send_media_only().await.unwrap();
    assert_eq!(
        chat.message(2).await,
        "Sorry, I can only read text. Could you type your question?"
    );
    chat.customer.send("   ").await.unwrap();
    chat.app.llm.push(Script::text(&["Sure."]));
    chat.customer.send("help").await.unwrap();
    assert_eq!(chat.message(3).await, "Sure.");
    let request = chat.app.llm.next_request().await;
    let history = messages(&request);
    assert_eq!(history[1]["content"], chat.api.messages(chat.sid())[0].body);
    assert!(chat.app.llm.next_request_now().is_none());
}

/// A conversation quiet past `CHAT_IDLE_TIMEOUT` is freed.
#[tokio::test]
async fn idle_conversations_are_freed() {
    let mut chat = chat_with("+15551230000", &[("CHAT_IDLE_TIMEOUT", "1s")]).await;
    chat.customer.send("hi").await.unwrap();
    chat.message(1).await;
    assert_eq!(chat.app.server.state.chat.live(), 1);
    chat.session_gone().await;
}

/// Signs a JSON body the way Studio's HTTP widget does: `bodySHA256` in the URL, the URL
/// signed with no parameters.
fn studio_request(chat: &Chat, body: &Value) -> reqwest::RequestBuilder {
    use sha2::{Digest, Sha256};
    let body = body.to_string();
    let hash = format!("{:x}", Sha256::digest(body.as_bytes()));
    let url = format!("{}/conversations/turn?bodySHA256={hash}", chat.app.base_url);
    let signature = signature::sign(TOKEN, &url, &[]);
    reqwest::Client::new()
        .post(url)
        .header(signature::HEADER, signature)
        .header("content-type", "application/json;charset=utf-8")
        .body(body)
}

/// The widget named `name` of the chat flow.
fn widget<'a>(flow: &'a Value, name: &str) -> &'a Value {
    flow["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no widget {name}"))
}

/// Renders the flow's HTTP widget body for `ctx`, posts it signed as Studio does, and returns
/// the answer with the context Studio would hold afterwards (`widgets.ask_relaybot.parsed.*`).
async fn studio_turn(chat: &Chat, flow: &Value, ctx: Context) -> (Value, Context) {
    let http = widget(flow, "ask_relaybot");
    assert!(http["properties"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/conversations/turn"));
    let body = Value::Object(render_object(
        http["properties"]["body"].as_str().unwrap(),
        &ctx,
    ));
    let answer: Value = studio_request(chat, &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ctx = ctx;
    for key in ["reply", "action", "reason", "summary"] {
        ctx = ctx.with(
            &format!("widgets.ask_relaybot.parsed.{key}"),
            answer[key]
                .as_str()
                .expect("every answer field is a string"),
        );
    }
    (answer, ctx)
}

/// Where the flow's split sends an answer (`widgets.ask_relaybot.parsed.action`).
fn after_split<'a>(flow: &'a Value, action: &str) -> &'a str {
    widget(flow, "check_action")["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["value"] == action))
        })
        .and_then(|t| t["next"].as_str())
        .unwrap_or_else(|| panic!("the split has no branch for {action}"))
}

/// `POST /conversations/turn` exactly as `studio/chat-flow.json` calls it: the flow's own body
/// template rendered for a first and a later turn, the answers read the way its split and its
/// `send-to-flex` attributes read them; a handoff comes back as an action (Studio hands off).
#[tokio::test]
async fn the_studio_chat_flow_contract_round_trips() {
    // A Studio-only deployment: no Interactions settings, yet the flow can hand off.
    let mut chat = chat_with("+15551230000", &[("FLEX_WORKSPACE_SID", "")]).await;
    let flow: Value = serde_json::from_str(include_str!("../../studio/chat-flow.json")).unwrap();
    let first = Context::default()
        .with("trigger.conversation.ConversationSid", chat.sid())
        .with("trigger.conversation.Body", "Hi \"there\"")
        .with("trigger.conversation.Author", "+15551230000");

    chat.app.llm.push(Script::text(&["Happy to help."]));
    let (answer, _) = studio_turn(&chat, &flow, first.clone()).await;
    assert_eq!(
        answer,
        json!({"reply": "Happy to help.", "action": "continue", "reason": "", "summary": ""})
    );
    assert_eq!(after_split(&flow, "continue"), "reply_and_wait");
    assert!(
        chat.api.messages(chat.sid()).is_empty(),
        "Studio posts the reply"
    );

    chat.app.llm.push(Script::call(
        "call_1",
        "agent_handoff",
        r#"{"reason":"billing \"dispute\"","summary":"Charged twice"}"#,
    ));
    let later = first
        .with("widgets.reply_and_wait.inbound.Body", "A person please")
        .with("widgets.reply_and_wait.inbound.Author", "+15551230000");
    let (answer, after) = studio_turn(&chat, &flow, later).await;
    assert_eq!(answer["action"], "handoff");
    assert_eq!(answer["reason"], "billing \"dispute\"");
    assert_eq!(answer["summary"], "Charged twice");
    assert!(answer["reply"]
        .as_str()
        .unwrap()
        .starts_with("I'm passing you"));
    assert!(chat.api.interactions().is_empty(), "send-to-flex hands off");
    let request = chat.app.llm.next_request().await;
    assert_eq!(
        messages(&request).last().unwrap()["content"],
        "Hi \"there\""
    );
    let request = chat.app.llm.next_request().await;
    assert_eq!(
        messages(&request).last().unwrap()["content"],
        "A person please"
    );
    // The task attributes the flow renders from that answer.
    let notice = widget(&flow, after_split(&flow, "handoff"));
    let flex = widget(&flow, notice["transitions"][0]["next"].as_str().unwrap());
    assert_eq!(flex["type"], "send-to-flex");
    let attributes = render_object(flex["properties"]["attributes"].as_str().unwrap(), &after);
    assert_eq!(attributes["handoff_reason"], "billing \"dispute\"");
    assert_eq!(attributes["summary"], "Charged twice");
    assert_eq!(attributes["conversationSid"], chat.sid());

    let body = json!({"conversationSid": chat.sid(), "body": "x", "author": "+15551230000"});
    // A body that does not match its bodySHA256 is refused.
    let tampered = studio_request(&chat, &body).body(r#"{"conversationSid":"CHx"}"#);
    assert_eq!(tampered.send().await.unwrap().status(), 403);
}

/// A reply longer than Twilio's 1,600 characters is posted in parts, in order.
#[tokio::test]
async fn long_replies_are_posted_in_parts() {
    let mut chat = chat().await;
    let sentence: &'static str = "This sentence is part of a very long answer. ";
    let pieces: Vec<&'static str> = std::iter::repeat_n(sentence, 60).collect();
    chat.app.llm.push(Script::text(&pieces));
    chat.customer.send("tell me everything").await.unwrap();
    let first = chat.message(1).await;
    let second = chat.message(2).await;
    assert!(first.chars().count() <= 1600 && second.chars().count() <= 1600);
    assert!(first.ends_with("answer.") && second.ends_with("answer."));
    assert_eq!(format!("{first} {second}"), sentence.repeat(60).trim_end());
}

/// Past `CHAT_MAX_CONVERSATIONS` a new conversation's message is refused with 503 (so Twilio
/// may deliver it again), and not marked as taken: its redelivery is answered once there is
/// room.
#[tokio::test]
async fn past_the_conversation_cap_messages_are_refused_not_lost() {
    let mut chat = chat_with(
        "+15551230000",
        &[("CHAT_MAX_CONVERSATIONS", "1"), ("CHAT_IDLE_TIMEOUT", "1s")],
    )
    .await;
    chat.customer.send("first conversation").await.unwrap();
    chat.message(1).await;
    let other = new_sid("CH");
    let webhook = chat.api.add_conversation(
        &other,
        &format!("{}/conversations/webhook", chat.app.base_url),
    );
    let mut second = ChatCustomer::new(
        &chat.app.base_url,
        &chat.app.base_url,
        Some(TOKEN.to_owned()),
        &other,
        "+15559870000",
        &webhook,
    );
    let (status, sid) = second.send("second conversation").await.unwrap();
    assert_eq!(status, 503);
    chat.session_gone().await;
    assert_eq!(second.redeliver(&sid).await.unwrap(), 200);
    let reply = chat.api.wait_for_message(&other, 1, WAIT).await;
    assert!(reply.is_some(), "the redelivery is answered");
}

/// A shutdown does not wait on a chat whose model never answers: once the drain time is up the
/// conversation is stopped and the server exits; new chat events are refused meanwhile.
#[tokio::test]
async fn a_drain_stops_a_stalled_chat() {
    let mut chat = chat_with("+15551230000", &[("DRAIN_TIMEOUT", "1s")]).await;
    chat.app.llm.push(Script::Stall);
    chat.customer.send("hello").await.unwrap();
    chat.app.llm.next_request().await;
    chat.app.server.shutdown.cancel();
    let (status, _) = chat.customer.send("anyone?").await.unwrap();
    assert_eq!(status, 503, "no new work while draining");
    let stopped = tokio::time::timeout(WAIT, &mut chat.app.server.handle).await;
    assert!(stopped.is_ok(), "the server stopped");
    assert_eq!(chat.app.server.state.chat.live(), 0);
}
