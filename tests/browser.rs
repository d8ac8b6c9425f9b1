//! The web chat widget in a real headless Chromium, driven over WebDriver (chromedriver):
//! `/chat` opens the widget, the visitor talks to the bot (the built-in offline agent), asks for
//! a person, is escalated to a live Flex agent (the simulator's fake Conversations + Interactions
//! APIs on loopback), reads the agent's message, answers, and ends the chat. Screenshots of the
//! bot phase and the live phase go to `images/widget-bot.png` and `images/widget-live.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test says so and passes,
//! unless `RELAYBOT_BROWSER_TESTS=require` (as CI sets it), when it fails.

#[path = "browser/driver.rs"]
mod driver;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fantoccini::{
    actions::{InputSource, MouseActions, PointerAction},
    elements::Element,
    key::Key,
    Client, Locator,
};
use relaybot::{
    agent::tools::ToolRegistry,
    config::Config,
    simulator::conversations_api::{ApiEvent, FakeConversationsApi},
    RunningServer,
};
use serde::Deserialize;
use serde_json::Value;

use driver::{browser_log, find_program, headless_chromium, Chromedriver};

/// Longest wait for anything the page or the server does; a bound, not an expectation.
const WAIT: Duration = Duration::from_secs(10);
/// The browser window: the page with the widget's panel open beside its text.
const WINDOW: (u32, u32) = (1200, 900);
const TOKEN: &str = "browser-auth-token";
const GREETING: &str = "Hi! I'm relaybot, a virtual assistant. How can I help you today?";
const BOT_HELLO: &str = "Hello! I'm relaybot's offline demo agent. Ask me what I can do, or ask \
                         for a person and I'll connect you.";
const AGENT_HELLO: &str = "Hi, I'm Alice from support. How can I help?";
const VISITOR_LIVE: &str = "My order 1042 arrived damaged. Can I get a replacement?";

/// What the widget shows, read from its shadow DOM (and what it says it holds).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    /// `#relaybot-status[data-phase]`.
    phase: String,
    /// `#relaybot-status[data-connected]`.
    connected: bool,
    /// The status line's text.
    status: String,
    /// `#relaybot-typing` is shown.
    typing: bool,
    input_disabled: bool,
    restart_shown: bool,
    /// `#relaybot-messages .relaybot-line[data-from]`, in order.
    lines: Vec<ShownLine>,
    /// `window.relaybotWidget.state()`.
    state: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ShownLine {
    from: String,
    /// `.relaybot-name` (agent lines only).
    name: String,
    /// `.relaybot-text`.
    text: String,
    /// Still streaming (`aria-busy`).
    busy: bool,
}

impl Snapshot {
    fn from(&self, from: &str) -> Vec<&ShownLine> {
        self.lines.iter().filter(|l| l.from == from).collect()
    }

    fn has(&self, from: &str, text: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.from == from && l.text == text && !l.busy)
    }
}

const SNAPSHOT_JS: &str = r#"
const host = document.getElementById('relaybot-widget');
const root = host && host.shadowRoot;
if (!root || !window.relaybotWidget) return null;
const $ = (id) => root.getElementById(id);
const status = $('relaybot-status');
const lines = [...root.querySelectorAll('#relaybot-messages .relaybot-line[data-from]')].map((el) => {
  const name = el.querySelector('.relaybot-name');
  const text = el.querySelector('.relaybot-text');
  return {
    from: el.dataset.from,
    name: name ? name.textContent : '',
    text: text ? text.textContent : '',
    busy: el.hasAttribute('aria-busy'),
  };
});
return {
  phase: status.dataset.phase,
  connected: status.dataset.connected === 'true',
  status: status.textContent,
  typing: !$('relaybot-typing').hidden,
  inputDisabled: $('relaybot-input').disabled,
  restartShown: !$('relaybot-restart').hidden,
  lines,
  state: window.relaybotWidget.state(),
};
"#;

/// Records, from now on, every text a bot line shows while it streams and whether the typing
/// indicator was shown: `window.__relaybotSeen`.
const RECORD_STREAMING_JS: &str = r#"
const root = document.getElementById('relaybot-widget').shadowRoot;
const seen = { texts: [], typingShown: false };
window.__relaybotSeen = seen;
const typing = root.getElementById('relaybot-typing');
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target === typing) {
      if (!typing.hidden) seen.typingShown = true;
      continue;
    }
    const line = r.target.closest && r.target.closest('.relaybot-line');
    if (!line || line.dataset.from !== 'bot' || !r.target.classList.contains('relaybot-text')) continue;
    for (const node of r.addedNodes) {
      if (node.nodeType === Node.TEXT_NODE) seen.texts.push(node.data);
    }
  }
}).observe(root.getElementById('relaybot-scroll'), {
  subtree: true, childList: true, attributes: true, attributeFilter: ['hidden'],
});
"#;

#[tokio::test]
async fn the_widget_in_a_real_browser() {
    let Some((chromedriver, chromium)) = browser_or_skip() else {
        return;
    };
    let started = Instant::now();
    let driver = Chromedriver::start(&chromedriver);

    let api = FakeConversationsApi::start().await.expect("fake Twilio");
    api.sign_webhooks_with(TOKEN);
    let server = start_server(&api).await;
    let base_url = format!("http://{}", server.addr);

    let client = headless_chromium(&driver, &chromium, WINDOW).await;
    let result =
        tokio::time::timeout(Duration::from_secs(90), converse(&client, &api, &base_url)).await;
    let log = browser_log(&client).await;
    client.close().await.expect("the browser closes");
    server.handle.abort();
    result.expect("the conversation within 90 s");

    // The page logged no error (a failed load, an exception, a refused socket). The browser's
    // own request for `/favicon.ico`, which the try-it page does not name, is no such error.
    let errors: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("SEVERE") && !l.contains("/favicon.ico "))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let _ = writeln!(
        std::io::stderr(),
        "browser test: the whole conversation took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The test itself: the page, the bot, the escalation, the live agent, the end.
async fn converse(client: &Client, api: &FakeConversationsApi, base_url: &str) {
    client
        .goto(&format!("{base_url}/chat"))
        .await
        .expect("the page");
    assert!(client.title().await.unwrap().contains("relaybot"));

    // chat.html opens the panel: the greeting arrives over the socket.
    let snap = wait_until(client, "the greeting", |s| {
        s.connected && s.has("bot", GREETING)
    })
    .await;
    assert_eq!(snap.phase, "bot");
    assert_eq!(snap.status, "Chatting with our assistant");
    assert_eq!(snap.lines.len(), 1, "{snap:#?}");

    // Through WebDriver, as a person would: into the widget's open shadow root.
    let input = widget_element(client, "#relaybot-input").await;
    let send = widget_element(client, "#relaybot-send").await;
    assert!(input.is_displayed().await.unwrap(), "the panel is open");
    let focused = client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("relaybot-widget"),
        "opening the panel focuses the widget (its input)"
    );

    // The bot phase: "hello", sent with the button; the answer streams in, word by word.
    client.execute(RECORD_STREAMING_JS, vec![]).await.unwrap();
    type_text(&input, "hello").await;
    send.click().await.expect("Send");
    let snap = wait_until(client, "the bot's answer", |s| {
        s.has("visitor", "hello") && s.has("bot", BOT_HELLO) && !s.typing
    })
    .await;
    let froms: Vec<&str> = snap.lines.iter().map(|l| l.from.as_str()).collect();
    assert_eq!(froms, ["bot", "visitor", "bot"], "{snap:#?}");
    assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(""));
    let seen = client
        .execute("return window.__relaybotSeen;", vec![])
        .await
        .unwrap();
    let texts: Vec<&str> = seen["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        texts.len() >= 5,
        "the reply was shown as it streamed, word by word: {texts:?}"
    );
    assert!(
        texts.windows(2).all(|w| w[1].starts_with(w[0])),
        "each piece adds to the last: {texts:?}"
    );
    assert_eq!(texts.last(), Some(&BOT_HELLO));
    assert_eq!(seen["typingShown"], true, "the typing indicator was shown");
    consistent(&snap);
    screenshot(client, "widget-bot.png").await;

    // Asking for a person, with the Enter key this time: the escalation.
    type_text(&input, "I want to talk to a person").await;
    input
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    let snap = wait_until(client, "the live phase", |s| s.phase == "live").await;
    assert!(
        snap.has("visitor", "I want to talk to a person"),
        "{snap:#?}"
    );
    assert_eq!(snap.status, "You're chatting with an agent");
    let ApiEvent::ConversationCreated {
        conversation_sid: ch,
        ..
    } = api
        .wait_for(|e| matches!(e, ApiEvent::ConversationCreated { .. }), WAIT)
        .await
        .expect("a conversation for the visitor")
    else {
        unreachable!()
    };
    let interactions = api.interactions();
    assert_eq!(interactions.len(), 1, "{interactions:#?}");
    assert_eq!(interactions[0].channel_type(), Some("web"));
    assert_eq!(interactions[0].media_channel_sid(), Some(ch.as_str()));
    let conversation = api.conversation(&ch).expect("the conversation");
    assert_eq!(conversation.participants.len(), 1);
    let visitor = conversation.participants[0].identity.clone();
    assert_eq!(
        conversation.attributes_json()["visitorId"],
        visitor.as_str()
    );
    let transcript: Vec<&str> = conversation
        .messages
        .iter()
        .map(|m| m.body.as_str())
        .collect();
    assert_eq!(
        transcript[..4],
        [GREETING, "hello", BOT_HELLO, "I want to talk to a person"],
        "the agent sees the bot transcript in order"
    );

    // The agent joins and writes: shown at once, with her name.
    assert_eq!(api.agent_joins(&ch, "agent_alice", "Alice").await, [200]);
    let snap = wait_until(client, "Alice joined", |s| s.status.contains("Alice")).await;
    assert_eq!(snap.status, "You're chatting with Alice");
    assert_eq!(api.agent_says(&ch, "agent_alice", AGENT_HELLO).await, [200]);
    let snap = wait_until(client, "Alice's message", |s| s.has("agent", AGENT_HELLO)).await;
    let agent = snap.from("agent");
    assert_eq!(agent.len(), 1, "{snap:#?}");
    assert_eq!(agent[0].name, "Alice");

    // The visitor answers: posted to the conversation as the visitor.
    type_text(&input, VISITOR_LIVE).await;
    send.click().await.expect("Send");
    let posted = api
        .wait_for(
            |e| matches!(e, ApiEvent::MessagePosted { body, .. } if body == VISITOR_LIVE),
            WAIT,
        )
        .await
        .expect("the visitor's message reaches the conversation");
    let ApiEvent::MessagePosted {
        author,
        conversation_sid,
        ..
    } = posted
    else {
        unreachable!()
    };
    assert_eq!(author, visitor, "posted as the visitor");
    assert_eq!(conversation_sid, ch);
    let snap = wait_until(client, "the visitor's live message", |s| {
        s.has("visitor", VISITOR_LIVE)
    })
    .await;
    consistent(&snap);
    screenshot(client, "widget-live.png").await;

    // A reload keeps the conversation (the session token in sessionStorage): the same lines,
    // still live with Alice.
    client.refresh().await.expect("a reload");
    let resumed = wait_until(client, "the resumed chat", |s| {
        s.connected && s.lines.len() == snap.lines.len()
    })
    .await;
    assert_eq!(resumed.lines, snap.lines);
    assert_eq!(resumed.phase, "live");
    assert_eq!(resumed.status, "You're chatting with Alice");
    consistent(&resumed);

    // "End chat": the widget closes, and so does the conversation.
    let end = widget_element(client, "#relaybot-end").await;
    end.click().await.expect("End chat");
    let snap = wait_until(client, "the closed phase", |s| s.phase == "closed").await;
    assert_eq!(snap.status, "This chat has ended");
    assert!(snap.input_disabled && snap.restart_shown, "{snap:#?}");
    api.wait_for(
        |e| {
            matches!(e, ApiEvent::ConversationUpdated { conversation_sid, state, .. }
                if *conversation_sid == ch && state == "closed")
        },
        WAIT,
    )
    .await
    .expect("the conversation is closed");
    assert!(api.conversation(&ch).unwrap().is_closed());
    let agent_joined = snap.lines.iter().position(|l| l.from == "agent").unwrap();
    assert!(
        snap.lines[agent_joined..].iter().all(|l| l.from != "bot"),
        "the bot never answers once escalated: {snap:#?}"
    );
    assert_eq!(
        snap.lines.last().map(|l| l.from.as_str()),
        Some("notice"),
        "the end is shown: {snap:#?}"
    );
    let token = client
        .execute("return sessionStorage.getItem('relaybot-token');", vec![])
        .await
        .unwrap();
    assert_eq!(token, Value::Null, "an ended chat is not resumed on reload");
    assert!(!end.is_enabled().await.unwrap(), "End chat is disabled");
    // The "chat has ended" notice is in view, not scrolled out below the restart row.
    let hidden_px = client
        .execute(
            "const root = document.getElementById('relaybot-widget').shadowRoot;\n\
             const list = root.querySelector('#relaybot-scroll');\n\
             const lines = root.querySelectorAll('.relaybot-line');\n\
             const last = lines[lines.length - 1];\n\
             return last.getBoundingClientRect().bottom - list.getBoundingClientRect().bottom;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        hidden_px.as_f64().unwrap() <= 1.0,
        "the last notice is scrolled out of view by {hidden_px}px"
    );
}

/// The paths to chromedriver and Chromium, or `None` (said on stderr) when either is missing
/// and the browser tests are not required.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let chromedriver = find_program(&["chromedriver"]);
    let chromium = find_program(&["chromium", "chromium-browser"]);
    if let (Some(chromedriver), Some(chromium)) = (chromedriver.clone(), chromium.clone()) {
        return Some((chromedriver, chromium));
    }
    let missing = format!(
        "{}{}",
        if chromedriver.is_none() {
            " chromedriver"
        } else {
            ""
        },
        if chromium.is_none() { " chromium" } else { "" },
    );
    if std::env::var("RELAYBOT_BROWSER_TESTS").as_deref() == Ok("require") {
        panic!(
            "RELAYBOT_BROWSER_TESTS=require, but not found:{missing}; \
             install chromium and chromium-driver"
        );
    }
    // Straight to stderr: the test harness would swallow a `println!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "skipping the browser test: install chromium and chromium-driver (not found:{missing})"
    );
    None
}

/// relaybot with the offline agent, escalating to the fake Twilio.
async fn start_server(api: &FakeConversationsApi) -> RunningServer {
    let vars = [
        ("LLM_PROVIDER", "offline"),
        ("OFFLINE_TOKEN_DELAY_MS", "1"),
        ("TWILIO_ACCOUNT_SID", &format!("AC{}", "a".repeat(32))),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_CONVERSATIONS_BASE", &api.base_url),
        ("TWILIO_FLEX_BASE", &api.base_url),
        ("FLEX_WORKSPACE_SID", &format!("WS{}", "b".repeat(32))),
        ("TWILIO_WORKFLOW_SID", &format!("WW{}", "c".repeat(32))),
    ];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .expect("valid config");
    let state = relaybot::build_state(config, ToolRegistry::new()).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    relaybot::start(listener, state).expect("the server")
}

/// An element of the widget, found through WebDriver in its open shadow root.
async fn widget_element(client: &Client, css: &str) -> Element {
    client
        .find(Locator::Css("#relaybot-widget"))
        .await
        .expect("the widget's host")
        .shadow_root()
        .await
        .expect("an open shadow root")
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// What the widget shows now (`None` before it has mounted).
async fn snapshot(client: &Client) -> Option<Snapshot> {
    let value = client
        .execute(SNAPSHOT_JS, vec![])
        .await
        .expect("a snapshot");
    serde_json::from_value(value).expect("a snapshot's shape")
}

/// Polls the widget (≤ [`WAIT`]) until `ready`; fails with what it showed last.
async fn wait_until(client: &Client, what: &str, ready: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = snapshot(client).await;
        if let Some(snap) = &last {
            if ready(snap) {
                return snap.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {what} within {WAIT:?}; the widget showed {last:#?}");
}

/// The lines shown are the lines the widget holds, and so is the phase.
fn consistent(snap: &Snapshot) {
    let held: Vec<(&str, &str)> = snap.state["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["from"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    let shown: Vec<(&str, &str)> = snap
        .lines
        .iter()
        .map(|l| (l.from.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(held, shown, "{snap:#?}");
    assert_eq!(snap.state["phase"], snap.phase.as_str());
    assert_eq!(snap.state["connected"], true);
}

/// Types into the widget's input as a person would (key by key, through WebDriver).
async fn type_text(input: &Element, text: &str) {
    input.send_keys(text).await.expect("typing");
}

/// Saves the browser's view to `images/{name}` (overwritten each run).
async fn screenshot(client: &Client, name: &str) {
    // No caret in the input and no hovered button in the picture.
    client
        .execute(
            "document.activeElement && document.activeElement.blur();",
            vec![],
        )
        .await
        .unwrap();
    let away = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: 0.0,
        y: 0.0,
    });
    client
        .perform_actions(away)
        .await
        .expect("the pointer moves away");
    // Two frames: the page drawn as it now is.
    client
        .execute_async(
            "const done = arguments[0]; \
             requestAnimationFrame(() => requestAnimationFrame(() => done()));",
            vec![],
        )
        .await
        .expect("two frames");
    let png = client.screenshot().await.expect("a screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("images")
        .join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
