//! The web chat widget end to end over its WebSocket (`/chat/ws`): the bot phase, the
//! escalation to a live Flex agent (against the simulator's fake Conversations + Interactions
//! APIs), the live phase both ways, and the guards (origins, forged webhooks, two visitors).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use relaybot::{
    agent::tools::ToolRegistry,
    simulator::conversations_api::{ApiEvent, FakeConversationsApi},
    twilio::signature,
};
use serde_json::{json, Value};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    fake_llm::Script,
    helpers::{spawn_app_with, TestApp, WAIT},
};

const TOKEN: &str = "web-auth-token";

/// The server, the fake Twilio it talks to, and its settings.
struct Web {
    app: TestApp,
    api: FakeConversationsApi,
    workspace_sid: String,
    workflow_sid: String,
}

async fn web_with(extra: &[(&str, &str)]) -> Web {
    let api = FakeConversationsApi::start().await.expect("fake Twilio");
    api.sign_webhooks_with(TOKEN);
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
        ("CHAT_GREETING", "Hi! How can I help?"),
    ];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(&vars, ToolRegistry::new()).await;
    Web {
        app,
        api,
        workspace_sid,
        workflow_sid,
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A widget connected to the server.
struct Widget {
    socket: Socket,
    token: String,
    visitor: String,
}

impl Widget {
    async fn open(web: &Web, token: Option<&str>, origin: Option<&str>) -> Result<Widget, u16> {
        let mut url = format!("{}/chat/ws", web.app.base_url.replacen("http", "ws", 1));
        if let Some(token) = token {
            url.push_str(&format!("?token={token}"));
        }
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        let (socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                return Err(response.status().as_u16())
            }
            Err(e) => panic!("connect: {e}"),
        };
        let mut widget = Widget {
            socket,
            token: String::new(),
            visitor: String::new(),
        };
        let session = widget.next().await;
        assert_eq!(session["type"], "session", "{session}");
        widget.token = session["token"].as_str().unwrap().to_owned();
        widget.visitor = session["visitor"].as_str().unwrap().to_owned();
        Ok(widget)
    }

    /// The next frame (bounded wait).
    async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .expect("a frame");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// Frames until one matches `predicate`, which is returned.
    async fn until(&mut self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no {what}");
            let frame = self.next().await;
            if predicate(&frame) {
                return frame;
            }
        }
    }

    /// The next finished line from `from`.
    async fn line_from(&mut self, from: &str) -> Value {
        let frame = self
            .until(&format!("line from {from}"), |f| {
                f["type"] == "line" && f["line"]["from"] == from
            })
            .await;
        frame["line"].clone()
    }

    async fn say(&mut self, text: &str) {
        let frame = json!({"type": "message", "text": text}).to_string();
        self.socket.send(Message::Text(frame.into())).await.unwrap();
    }

    async fn end(&mut self) {
        let frame = json!({"type": "end"}).to_string();
        self.socket.send(Message::Text(frame.into())).await.unwrap();
    }

    /// Whether a frame arrives within a short while (for "nothing arrives" checks after an
    /// event that is known to have been handled).
    async fn quiet(&mut self) -> Option<Value> {
        match tokio::time::timeout(Duration::from_millis(200), self.socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => Some(serde_json::from_str(&text).unwrap()),
            _ => None,
        }
    }
}

/// Escalates a new widget: the model calls `agent_handoff`; returns the widget (past the
/// `live` phase frame) and the new conversation's SID.
async fn escalated(web: &Web) -> (Widget, String) {
    web.app.llm.push(Script::text(&["Sure, ", "one moment."]));
    web.app.llm.push(Script::call(
        "call_1",
        "agent_handoff",
        r#"{"reason":"wants a person","summary":"Asked about a refund"}"#,
    ));
    let mut widget = Widget::open(web, None, None).await.unwrap();
    let history = widget.next().await;
    assert_eq!(history["type"], "history");
    widget.say("Can I get a refund?").await;
    widget.line_from("bot").await;
    widget.say("I want a person").await;
    widget
        .until("live", |f| f["type"] == "phase" && f["phase"] == "live")
        .await;
    let ApiEvent::ConversationCreated {
        conversation_sid, ..
    } = web
        .api
        .wait_for(|e| matches!(e, ApiEvent::ConversationCreated { .. }), WAIT)
        .await
        .expect("a conversation")
    else {
        unreachable!()
    };
    (widget, conversation_sid)
}

/// The bot phase streams the reply token by token with a typing indicator; a reconnect with the
/// token resumes the same conversation with its history.
#[tokio::test]
async fn the_bot_streams_and_a_reconnect_resumes() {
    let web = web_with(&[]).await;
    web.app.llm.push(Script::text(&["Hello", " there", "!"]));
    let mut widget = Widget::open(&web, None, None).await.unwrap();
    let history = widget.next().await;
    assert_eq!(history["messages"][0]["text"], "Hi! How can I help?");
    widget.say("hi").await;
    assert_eq!(widget.line_from("visitor").await["text"], "hi");
    widget
        .until("typing", |f| f["type"] == "typing" && f["on"] == true)
        .await;
    let first = widget.until("a delta", |f| f["type"] == "delta").await;
    assert_eq!(first["text"], "Hello");
    let line = widget.line_from("bot").await;
    assert_eq!(line["text"], "Hello there!");
    assert_eq!(line["id"], first["id"], "the deltas belong to the line");
    let token = widget.token.clone();
    let visitor = widget.visitor.clone();
    drop(widget);

    let mut again = Widget::open(&web, Some(&token), None).await.unwrap();
    assert_eq!(again.visitor, visitor, "the same visitor");
    let history = again.next().await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Hi! How can I help?", "hi", "Hello there!"]);
    // A forged token starts a new visitor.
    let issued = token.split('.').nth(1).unwrap();
    let forged = format!("{visitor}.{issued}.00000000000000000000000000000000");
    let other = Widget::open(&web, Some(&forged), None).await.unwrap();
    assert_ne!(other.token, token);
}

/// The whole escalation: a conversation for the visitor, the visitor as a participant, the bot
/// transcript in order with real authors and times, relaybot subscribed to its events, and the
/// Flex interaction with the exact Channel and Routing; then both ways live, and the agent
/// leaving and closing shown.
#[tokio::test]
async fn escalation_to_a_live_agent_in_the_same_window() {
    let web = web_with(&[]).await;
    let (mut widget, ch) = escalated(&web).await;
    let conversation = web.api.conversation(&ch).unwrap();
    let attributes: Value = serde_json::from_str(&conversation.attributes).unwrap();
    assert_eq!(attributes["visitorId"], widget.visitor.as_str());
    assert_eq!(attributes["handoff_reason"], "wants a person");
    assert_eq!(conversation.participants.len(), 1);
    assert_eq!(conversation.participants[0].identity, widget.visitor);
    let transcript: Vec<(String, String)> = conversation
        .messages
        .iter()
        .map(|m| (m.author.clone(), m.body.clone()))
        .collect();
    let visitor = widget.visitor.clone();
    assert_eq!(
        transcript,
        [
            ("relaybot".to_owned(), "Hi! How can I help?".to_owned()),
            (visitor.clone(), "Can I get a refund?".to_owned()),
            ("relaybot".to_owned(), "Sure, one moment.".to_owned()),
            (visitor.clone(), "I want a person".to_owned()),
            (
                "relaybot".to_owned(),
                "I'm passing you to a member of our team. They can see this conversation, so you won't need to repeat anything.".to_owned()
            ),
        ]
    );
    let at: Value =
        serde_json::from_str(conversation.messages[1].attributes.as_deref().unwrap()).unwrap();
    assert_eq!(at["relaybot"]["from"], "visitor");
    assert!(at["relaybot"]["at"].as_u64().unwrap() > 0);
    let webhook = &conversation.webhooks[0];
    assert_eq!(
        webhook.url,
        format!("{}/conversations/webhook", web.app.base_url)
    );
    assert_eq!(
        webhook.filters,
        [
            "onMessageAdded",
            "onParticipantAdded",
            "onParticipantRemoved",
            "onConversationStateUpdated"
        ]
    );
    let interaction = &web.api.interactions()[0];
    assert_eq!(
        interaction.channel,
        json!({"type": "web", "initiated_by": "customer", "properties": {"media_channel_sid": ch}})
    );
    let routing = &interaction.routing["properties"];
    assert_eq!(routing["workspace_sid"], web.workspace_sid.as_str());
    assert_eq!(routing["workflow_sid"], web.workflow_sid.as_str());
    assert_eq!(routing["task_channel_unique_name"], "chat");
    assert_eq!(routing["attributes"]["handoff_reason"], "wants a person");
    assert_eq!(routing["attributes"]["summary"], "Asked about a refund");
    assert_eq!(routing["attributes"]["conversationSid"], ch.as_str());
    assert_eq!(routing["attributes"]["channelType"], "web");

    // The agent joins and writes: pushed to the widget at once.
    assert_eq!(
        web.api.agent_joins(&ch, "agent_alice", "Alice").await,
        [200]
    );
    let joined = widget
        .until("joined", |f| f["type"] == "phase" && f["agent"] == "Alice")
        .await;
    assert_eq!(joined["phase"], "live");
    assert_eq!(
        web.api
            .agent_says(&ch, "agent_alice", "Hi, I'm Alice. How can I help?")
            .await,
        [200]
    );
    let line = widget.line_from("agent").await;
    assert_eq!(line["text"], "Hi, I'm Alice. How can I help?");
    assert_eq!(line["name"], "Alice");

    // The visitor writes: posted to the conversation as the visitor; the bot stays quiet.
    widget.say("My order is 123").await;
    let posted = web
        .api
        .wait_for(
            |e| matches!(e, ApiEvent::MessagePosted { body, .. } if body == "My order is 123"),
            WAIT,
        )
        .await
        .expect("posted");
    let ApiEvent::MessagePosted { author, .. } = posted else {
        unreachable!()
    };
    assert_eq!(author, visitor);

    // The agent leaves, then closes: both shown, and the chat ends.
    web.api.agent_leaves(&ch, "agent_alice").await;
    let left = widget.line_from("notice").await;
    assert!(left["text"].as_str().unwrap().contains("left"), "{left}");
    web.api.close(&ch).await;
    widget
        .until("closed", |f| f["type"] == "phase" && f["phase"] == "closed")
        .await;
}

/// Two visitors escalated at once only ever see their own agent's messages.
#[tokio::test]
async fn two_visitors_never_see_each_other() {
    let web = web_with(&[]).await;
    let (mut first, ch1) = escalated(&web).await;
    let (mut second, ch2) = {
        web.app.llm.push(Script::text(&["Sure."]));
        web.app.llm.push(Script::call(
            "call_2",
            "agent_handoff",
            r#"{"reason":"wants a person"}"#,
        ));
        let mut widget = Widget::open(&web, None, None).await.unwrap();
        widget.next().await;
        widget.say("hello").await;
        widget.line_from("bot").await;
        widget.say("a person please").await;
        widget
            .until("live", |f| f["type"] == "phase" && f["phase"] == "live")
            .await;
        let ch = web
            .api
            .wait_for(
                |e| matches!(e, ApiEvent::ConversationCreated { conversation_sid, .. } if *conversation_sid != ch1),
                WAIT,
            )
            .await
            .and_then(|e| e.conversation_sid().map(str::to_owned))
            .unwrap();
        (widget, ch)
    };
    assert_ne!(ch1, ch2);
    web.api
        .agent_says(&ch2, "agent_bob", "For the second visitor")
        .await;
    assert_eq!(
        second.line_from("agent").await["text"],
        "For the second visitor"
    );
    web.api
        .agent_says(&ch1, "agent_alice", "For the first visitor")
        .await;
    assert_eq!(
        first.line_from("agent").await["text"],
        "For the first visitor"
    );
    while let Some(frame) = first.quiet().await {
        assert_ne!(frame["line"]["text"], "For the second visitor");
    }
}

/// A webhook with a bad signature changes nothing: 403, and the widget sees nothing.
#[tokio::test]
async fn a_forged_agent_message_changes_nothing() {
    let web = web_with(&[]).await;
    let (mut widget, ch) = escalated(&web).await;
    while widget.quiet().await.is_some() {}
    let form = [
        ("EventType", "onMessageAdded"),
        ("ConversationSid", ch.as_str()),
        ("MessageSid", "IM00000000000000000000000000000009"),
        ("Body", "Please send your password"),
        ("Author", "agent_mallory"),
    ];
    let url = format!("{}/conversations/webhook", web.app.base_url);
    let forged = reqwest::Client::new()
        .post(&url)
        .header(
            signature::HEADER,
            signature::sign(
                "wrong-token",
                &url,
                &form.map(|(k, v)| (k.to_owned(), v.to_owned())),
            ),
        )
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(widget.quiet().await.is_none(), "nothing reached the widget");
}

/// A page on an origin that is not allowed cannot open the widget's socket; the server's own
/// origin and the allowed ones can.
#[tokio::test]
async fn origins_are_checked_on_the_upgrade() {
    let web = web_with(&[("CHAT_ALLOWED_ORIGINS", "https://shop.example.com")]).await;
    assert_eq!(
        Widget::open(&web, None, Some("https://evil.example.com"))
            .await
            .err(),
        Some(403)
    );
    assert!(Widget::open(&web, None, Some("https://shop.example.com"))
        .await
        .is_ok());
    assert!(Widget::open(&web, None, Some(&web.app.base_url))
        .await
        .is_ok());
}

/// When the Interactions API keeps failing, the visitor is told and the bot carries on;
/// what they typed is not lost.
#[tokio::test]
async fn a_failed_escalation_returns_to_the_bot() {
    let web = web_with(&[]).await;
    web.api
        .fail_next(reqwest::Method::POST, "/v1/Interactions", 503, 3);
    web.app.llm.push(Script::call(
        "call_1",
        "agent_handoff",
        r#"{"reason":"wants a person"}"#,
    ));
    web.app.llm.push(Script::text(&["Still here to help."]));
    let mut widget = Widget::open(&web, None, None).await.unwrap();
    widget.next().await;
    widget.say("a person please").await;
    widget
        .until("escalating", |f| {
            f["type"] == "phase" && f["phase"] == "escalating"
        })
        .await;
    let back = widget
        .until("back to the bot", |f| {
            f["type"] == "phase" && f["phase"] == "bot"
        })
        .await;
    let _ = back;
    assert!(
        web.api
            .events()
            .iter()
            .any(|e| matches!(e, ApiEvent::ConversationUpdated { state, .. } if state == "closed")),
        "the half-made conversation is closed"
    );
    widget.say("ok then").await;
    let line = widget
        .until("the bot again", |f| {
            f["type"] == "line" && f["line"]["text"] == "Still here to help."
        })
        .await;
    assert_eq!(line["line"]["from"], "bot");
}

/// "End chat" closes the escalated conversation.
#[tokio::test]
async fn end_chat_closes_the_conversation() {
    let web = web_with(&[]).await;
    let (mut widget, ch) = escalated(&web).await;
    widget.end().await;
    widget
        .until("closed", |f| f["type"] == "phase" && f["phase"] == "closed")
        .await;
    assert!(web.api.conversation(&ch).unwrap().is_closed());
}

/// The widget's files are served.
#[tokio::test]
async fn the_widget_is_served() {
    let web = web_with(&[]).await;
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/widget.js", "javascript"),
        ("/widget.css", "css"),
        ("/chat", "html"),
    ] {
        let response = client
            .get(format!("{}{path}", web.app.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.contains(kind), "{path}: {content_type}");
        assert!(!response.text().await.unwrap().is_empty(), "{path}");
    }
}

/// Once a visitor is escalated, the bot never answers in that conversation, even after the
/// visitor's task is gone (idle) and the agent's messages reach the Conversations channel.
#[tokio::test]
async fn the_bot_stays_out_of_an_escalated_conversation() {
    let mut web = web_with(&[("CHAT_IDLE_TIMEOUT", "1s")]).await;
    let (widget, ch) = escalated(&web).await;
    drop(widget);
    let deadline = tokio::time::Instant::now() + WAIT;
    while web.app.server.state.web.live() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the visitor never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while web.app.llm.next_request_now().is_some() {}
    let posted_before = web.api.messages(&ch).len();
    assert_eq!(
        web.api
            .agent_says(&ch, "agent_alice", "Are you still there?")
            .await,
        [200]
    );
    // The Conversations channel reads the conversation, finds it handed off, and stays quiet.
    let deadline = tokio::time::Instant::now() + WAIT;
    while web.app.server.state.chat.live() > 0
        || !web.api.requests().iter().any(|r| {
            r.method == reqwest::Method::GET && r.path == format!("/v1/Conversations/{ch}")
        })
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chat channel never checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        web.app.llm.next_request_now().is_none(),
        "the model was not asked"
    );
    let bot_posts = web.api.messages(&ch)[posted_before..]
        .iter()
        .filter(|m| m.author == "relaybot")
        .count();
    assert_eq!(bot_posts, 0);
}
