//! Checks `studio/chat-flow.json`, the Studio flow for the chat channel (Twilio Conversations).
//!
//! Each customer message starts (or resumes) an execution that POSTs the turn to relaybot's
//! `/conversations/turn`, then follows the `action` the server answers with: `continue` sends the
//! reply and waits for the next message, `handoff` sends the reply and creates a Flex task, `end`
//! sends the reply and stops.
//!
//! Studio rejects a definition whose widget names clash or whose transitions point nowhere
//! (error 81022). The request body and the Flex task attributes are JSON built by Liquid from
//! text the customer and the model control, so these tests render them the way Studio does and
//! parse the result.
//!
//! How the templates are rendered here (see `render`): `{{ x }}` inserts the value as is,
//! `| default: y` falls back when the value is missing or empty, and `| to_json` inserts the value
//! as a JSON literal (a quoted, escaped string; `null` when missing). Studio documents `to_json`
//! (Send to Flex widget page); that it quotes and escapes plain strings the way `serde_json` does
//! is the one assumption the templates rest on, so every value in a JSON template goes through it
//! and nothing else.

use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::{Map, Value};

#[path = "support/liquid.rs"]
mod liquid;

use liquid::{outputs, render, render_object, Context};

/// The flow definition, exactly as it ships.
const FLOW: &str = include_str!("../studio/chat-flow.json");

/// The `make-http-request` widget that asks relaybot for the next turn.
const HTTP_WIDGET: &str = "ask_relaybot";

/// The `send-and-wait-for-reply` widget that sends a `continue` reply and waits for the customer.
const WAIT_WIDGET: &str = "reply_and_wait";

/// The reply text the server returns, as every widget that sends it must reference it.
const REPLY: &str = "{{widgets.ask_relaybot.parsed.reply}}";

/// The five trigger events current Studio exports list.
const TRIGGER_EVENTS: [&str; 5] = [
    "incomingMessage",
    "incomingCall",
    "incomingConversationMessage",
    "incomingRequest",
    "incomingParent",
];

/// The keys of relaybot's `/conversations/turn` request, and no others.
const TURN_KEYS: [&str; 3] = ["author", "body", "conversationSid"];

/// The actions the server answers with.
const ACTIONS: [&str; 3] = ["continue", "handoff", "end"];

/// Studio's documented cap on the `send-to-flex` attributes string.
const ATTRIBUTES_MAX: usize = 1024;

/// Keys every Flex task this flow creates must carry.
const ATTRIBUTE_KEYS: [&str; 6] = [
    "handoff_reason",
    "summary",
    "conversationSid",
    "from",
    "name",
    "channelType",
];

const SID: &str = "CH00000000000000000000000000000001";

fn flow() -> Value {
    serde_json::from_str(FLOW).expect("studio/chat-flow.json is not valid JSON")
}

fn states(flow: &Value) -> &[Value] {
    flow["states"]
        .as_array()
        .expect("`states` is an array")
        .as_slice()
}

fn widget<'a>(flow: &'a Value, name: &str) -> &'a Value {
    states(flow)
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no widget named {name:?}"))
}

fn widgets_of_type<'a>(flow: &'a Value, kind: &str) -> Vec<&'a Value> {
    states(flow).iter().filter(|w| w["type"] == kind).collect()
}

fn transitions(widget: &Value) -> &[Value] {
    widget["transitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: `transitions` is not an array", widget["name"]))
        .as_slice()
}

fn events(widget: &Value) -> Vec<&str> {
    transitions(widget)
        .iter()
        .map(|t| t["event"].as_str().expect("event is a string"))
        .collect()
}

/// The widget an event of `from` leads to, if that event is connected.
fn next<'a>(flow: &'a Value, from: &Value, event: &str) -> Option<&'a Value> {
    let transition = transitions(from)
        .iter()
        .find(|t| t["event"] == event)
        .unwrap_or_else(|| panic!("{}: no {event:?} transition", from["name"]));
    transition["next"].as_str().map(|name| widget(flow, name))
}

fn name(widget: &Value) -> &str {
    widget["name"].as_str().expect("widget name is a string")
}

fn prop<'a>(widget: &'a Value, key: &str) -> &'a str {
    widget["properties"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: property {key:?} is not a string", name(widget)))
}

// ---------------------------------------------------------------------------------------------
// Sample contexts
// ---------------------------------------------------------------------------------------------

/// The execution's first request: only the trigger's message is known.
fn first_turn(sid: &str, body: &str, author: &str) -> Context {
    Context::default()
        .with("trigger.conversation.ConversationSid", sid)
        .with("trigger.conversation.Body", body)
        .with("trigger.conversation.Author", author)
}

/// A later request: the customer answered the `continue` reply.
fn later_turn(sid: &str, first_body: &str, author: &str, reply: &str) -> Context {
    first_turn(sid, first_body, author)
        .with("widgets.reply_and_wait.inbound.Body", reply)
        .with("widgets.reply_and_wait.inbound.Author", author)
}

/// What the server answered on the last turn.
fn answered(ctx: Context, action: &str, reason: &str, summary: &str) -> Context {
    ctx.with(
        "widgets.ask_relaybot.parsed.reply",
        "Let me get someone for you.",
    )
    .with("widgets.ask_relaybot.parsed.action", action)
    .with("widgets.ask_relaybot.parsed.reason", reason)
    .with("widgets.ask_relaybot.parsed.summary", summary)
}

fn turn_body(flow: &Value) -> &str {
    prop(widget(flow, HTTP_WIDGET), "body")
}

fn attributes(flex: &Value) -> &str {
    prop(flex, "attributes")
}

/// Renders the request body and checks it against the server's contract.
fn render_turn(flow: &Value, ctx: &Context) -> Map<String, Value> {
    let body = render_object(turn_body(flow), ctx);
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, TURN_KEYS, "the request carries exactly these keys");
    for key in TURN_KEYS {
        assert!(
            body[key].is_string(),
            "{key} is not a string: {}",
            body[key]
        );
    }
    body
}

// ---------------------------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------------------------

/// Studio only imports an object with these keys, and it starts at `initial_state`.
#[test]
fn flow_has_the_top_level_shape_studio_imports() {
    let flow = flow();
    let top = flow.as_object().expect("the flow is a JSON object");
    for key in ["description", "states", "initial_state", "flags"] {
        assert!(top.contains_key(key), "missing top-level key {key:?}");
    }
    assert!(flow["description"].is_string());
    assert_eq!(flow["flags"]["allow_concurrent_calls"], true);
    let count = states(&flow).len();
    assert!((1..=1000).contains(&count), "{count} states");
    let initial = flow["initial_state"].as_str().expect("initial_state");
    assert_eq!(initial, "Trigger");
    assert_eq!(widget(&flow, initial)["type"], "trigger");
}

/// Duplicate names, unknown `next` targets and malformed widgets fail import with 81022.
#[test]
fn widgets_are_well_formed_and_every_transition_resolves() {
    let flow = flow();
    let mut seen = HashSet::new();
    for w in states(&flow) {
        let n = name(w);
        assert!(
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "widget name {n:?} is not [A-Za-z0-9_]+"
        );
        assert!(seen.insert(n), "duplicate widget name {n:?}");
        assert!(w["type"].is_string(), "{n}: no type");
        let offset = &w["properties"]["offset"];
        for axis in ["x", "y"] {
            assert!(
                offset[axis].is_i64(),
                "{n}: offset.{axis} is not an integer: {}",
                offset[axis]
            );
        }
    }
    for w in states(&flow) {
        for t in transitions(w) {
            assert!(
                t["event"].is_string(),
                "{}: transition without event",
                name(w)
            );
            if let Some(target) = t.get("next") {
                let target = target.as_str().expect("`next` is a string");
                assert!(
                    seen.contains(target),
                    "{}: {} leads to unknown widget {target:?}",
                    name(w),
                    t["event"]
                );
                assert_ne!(target, name(w), "{}: loops onto itself", name(w));
            }
        }
    }
}

/// Exports list every event a widget type has, connected or not.
#[test]
fn every_widget_lists_the_events_of_its_type() {
    let flow = flow();
    for w in states(&flow) {
        let kind = w["type"].as_str().expect("type");
        let mut expected: Vec<&str> = match kind {
            "trigger" => TRIGGER_EVENTS.to_vec(),
            "make-http-request" => vec!["success", "failed"],
            "send-and-wait-for-reply" => vec!["incomingMessage", "timeout", "deliveryFailure"],
            "send-message" => vec!["sent", "failed"],
            "send-to-flex" => vec!["callComplete", "failedToEnqueue", "callFailure"],
            "split-based-on" => {
                // One noMatch, then one match per action; checked in detail below.
                assert_eq!(events(w).iter().filter(|e| **e == "noMatch").count(), 1);
                continue;
            }
            other => panic!("{}: unexpected widget type {other:?}", name(w)),
        };
        let mut actual = events(w);
        expected.sort_unstable();
        actual.sort_unstable();
        assert_eq!(actual, expected, "{}", name(w));
    }
}

/// Only a Conversations message starts the bot; the other triggers stay unconnected.
#[test]
fn only_conversation_messages_start_the_flow() {
    let flow = flow();
    let trigger = widget(&flow, "Trigger");
    for event in TRIGGER_EVENTS {
        let target = next(&flow, trigger, event);
        if event == "incomingConversationMessage" {
            assert_eq!(target.map(name), Some(HTTP_WIDGET));
        } else {
            assert!(target.is_none(), "trigger event {event} is connected");
        }
    }
}

/// The HTTP widget POSTs JSON to relaybot's turn endpoint.
///
/// `add_twilio_auth` stays false on purpose: the Make HTTP Request docs say "Authenticate With
/// Twilio … should only be checked if your Request URL points to a Twilio API, otherwise the
/// Fail transition will be taken without the request being made". relaybot authenticates the
/// request by its `X-Twilio-Signature` instead (see studio/README.md).
#[test]
fn the_http_widget_posts_json_to_the_turn_endpoint() {
    let flow = flow();
    let http = widget(&flow, HTTP_WIDGET);
    assert_eq!(http["type"], "make-http-request");
    assert_eq!(prop(http, "method"), "POST");
    assert_eq!(prop(http, "content_type"), "application/json;charset=utf-8");
    assert_eq!(http["properties"]["add_twilio_auth"], false);
    assert!(
        http["properties"].get("parameters").is_none(),
        "no URL parameters"
    );
    let url = prop(http, "url");
    assert!(url.starts_with("https://"), "{url}");
    assert!(url.ends_with("/conversations/turn"), "{url}");
    assert!(!url.contains("{{") && !url.contains('?'), "{url}");

    let split = next(&flow, http, "success").expect("success is connected");
    assert_eq!(split["type"], "split-based-on");
    let apology = next(&flow, http, "failed").expect("failed is connected");
    assert_eq!(apology["type"], "send-message");
    for event in ["sent", "failed"] {
        let flex = next(&flow, apology, event).expect("the apology leads to a person");
        assert_eq!(flex["type"], "send-to-flex", "apology {event}");
    }
}

/// Customer text and model text reach JSON only through `to_json`, which quotes and escapes.
#[test]
fn json_templates_escape_every_value() {
    let flow = flow();
    let mut templates = vec![turn_body(&flow)];
    templates.extend(
        widgets_of_type(&flow, "send-to-flex")
            .into_iter()
            .map(attributes),
    );
    for template in templates {
        let exprs = outputs(template);
        assert!(!exprs.is_empty());
        for expr in exprs {
            assert!(
                expr.ends_with("| to_json"),
                "{expr:?} is not JSON-encoded in {template}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The request body
// ---------------------------------------------------------------------------------------------

/// The first request carries the trigger's message.
#[test]
fn the_first_turn_sends_the_triggering_message() {
    let flow = flow();
    let body = render_turn(
        &flow,
        &first_turn(SID, "Hi, my bill is wrong", "+15551230000"),
    );
    assert_eq!(body["conversationSid"], SID);
    assert_eq!(body["body"], "Hi, my bill is wrong");
    assert_eq!(body["author"], "+15551230000");
}

/// Later requests carry the customer's answer, not the first message again.
#[test]
fn later_turns_send_the_customers_reply() {
    let flow = flow();
    let ctx = later_turn(SID, "Hi", "whatsapp:+15551230000", "It's account 42");
    let body = render_turn(&flow, &ctx);
    assert_eq!(body["conversationSid"], SID);
    assert_eq!(body["body"], "It's account 42");
    assert_eq!(body["author"], "whatsapp:+15551230000");

    // A reply without text (a picture) is an empty body, not the first message resent.
    let ctx = first_turn(SID, "Hi", "+15551230000").with(
        "widgets.reply_and_wait.inbound.MediaUrl0",
        "https://example.com/a.jpg",
    );
    let body = render_turn(&flow, &ctx);
    assert_eq!(body["body"], "");

    // If Studio names the reply's sender `From` rather than `Author`, or not at all, the author
    // is still the customer who started the conversation.
    let ctx = first_turn(SID, "Hi", "+15551230000")
        .with("widgets.reply_and_wait.inbound.Body", "again")
        .with("widgets.reply_and_wait.inbound.From", "+15551230000");
    assert_eq!(render_turn(&flow, &ctx)["author"], "+15551230000");
    let ctx =
        first_turn(SID, "Hi", "web-visitor-7").with("widgets.reply_and_wait.inbound.Body", "x");
    assert_eq!(render_turn(&flow, &ctx)["author"], "web-visitor-7");
}

/// The trigger's sender may be `From` (as Studio's trigger docs list it) instead of `Author`
/// (as the Conversations webhook names it); missing values still render valid strings.
#[test]
fn the_turn_body_survives_missing_trigger_fields() {
    let flow = flow();
    let ctx = Context::default()
        .with("trigger.conversation.ConversationSid", SID)
        .with("trigger.conversation.From", "+15551230000");
    let body = render_turn(&flow, &ctx);
    assert_eq!(body["author"], "+15551230000");
    assert_eq!(body["body"], "");
}

/// Quotes, backslashes, newlines, braces and Liquid-looking text from the customer.
#[test]
fn the_turn_body_stays_valid_json_with_hostile_text() {
    let flow = flow();
    let hostile = [
        "Zoë's \"bill\" & <co>\\\n😀",
        "\", \"author\": \"admin",
        "back\\slash\\\\ and \\u0000",
        "tab\there\r\nnew line\u{0}\u{1f}\u{7f}\u{85}",
        "{{trigger.conversation.Body}} {% if x %} }}} {{",
        "\u{2028}\u{2029}\u{feff}",
        "",
    ];
    for text in hostile {
        let ctx = later_turn(text, text, text, text);
        let body = render_turn(&flow, &ctx);
        assert_eq!(body["body"], text);
        assert_eq!(body["author"], text);
        assert_eq!(body["conversationSid"], text);
    }
}

// ---------------------------------------------------------------------------------------------
// Routing on the server's action
// ---------------------------------------------------------------------------------------------

/// One branch per action, each an exact match on `parsed.action`; anything else is noMatch.
#[test]
fn the_split_has_a_branch_per_action() {
    let flow = flow();
    let http = widget(&flow, HTTP_WIDGET);
    let split = next(&flow, http, "success").expect("success is connected");
    let input = format!("{{{{widgets.{HTTP_WIDGET}.parsed.action}}}}");
    assert_eq!(prop(split, "input"), input);

    let matches: Vec<&Value> = transitions(split)
        .iter()
        .filter(|t| t["event"] == "match")
        .collect();
    let mut values = Vec::new();
    for m in &matches {
        let conditions = m["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1);
        let condition = &conditions[0];
        for key in ["friendly_name", "arguments", "type", "value"] {
            assert!(condition.get(key).is_some(), "condition lacks {key:?}");
        }
        assert_eq!(condition["type"], "equal_to");
        assert_eq!(condition["arguments"], serde_json::json!([input]));
        values.push(condition["value"].as_str().expect("value is a string"));
    }
    values.sort_unstable();
    let mut actions = ACTIONS.to_vec();
    actions.sort_unstable();
    assert_eq!(values, actions);

    let target = |action: &str| {
        let m = matches
            .iter()
            .find(|m| m["conditions"][0]["value"] == action)
            .expect("a branch");
        widget(&flow, m["next"].as_str().expect("the branch is connected"))
    };
    let wait = target("continue");
    assert_eq!(wait["type"], "send-and-wait-for-reply");
    assert_eq!(name(wait), WAIT_WIDGET);

    let notice = target("handoff");
    assert_eq!(notice["type"], "send-message");
    assert_eq!(prop(notice, "body"), REPLY);
    for event in ["sent", "failed"] {
        let flex = next(&flow, notice, event).expect("the notice leads to Flex");
        assert_eq!(flex["type"], "send-to-flex", "handoff notice {event}");
    }

    let goodbye = target("end");
    assert_eq!(goodbye["type"], "send-message");
    assert_eq!(prop(goodbye, "body"), REPLY);
    for event in ["sent", "failed"] {
        assert!(
            next(&flow, goodbye, event).is_none(),
            "goodbye {event} ends"
        );
    }

    let fallback = next(&flow, split, "noMatch").expect("noMatch is connected");
    assert_eq!(
        fallback,
        next(&flow, http, "failed").expect("failed is connected"),
        "an unknown action is handled like a failed request"
    );
}

/// The `continue` reply goes out and the customer's answer loops back to relaybot.
#[test]
fn continue_replies_and_loops_back_on_the_customers_answer() {
    let flow = flow();
    let wait = widget(&flow, WAIT_WIDGET);
    assert_eq!(prop(wait, "body"), REPLY);
    assert_eq!(prop(wait, "from"), "{{flow.channel.address}}");
    let timeout: u32 = prop(wait, "timeout")
        .parse()
        .expect("timeout is a number string");
    assert!((60..=14_400).contains(&timeout), "timeout {timeout}s");
    // Service and Channel apply only to Programmable Chat; a Conversations execution replies
    // in its own conversation.
    for key in ["service", "channel"] {
        assert!(wait["properties"].get(key).is_none(), "{key} is set");
    }
    assert_eq!(
        next(&flow, wait, "incomingMessage").map(name),
        Some(HTTP_WIDGET)
    );
    for event in ["timeout", "deliveryFailure"] {
        assert!(
            next(&flow, wait, event).is_none(),
            "{event} ends the execution"
        );
    }
}

/// Every message goes to the customer from the flow's address; only the bot's replies are
/// dynamic, the apologies are fixed text.
#[test]
fn messages_send_the_reply_or_a_fixed_apology() {
    let flow = flow();
    for w in widgets_of_type(&flow, "send-message") {
        assert_eq!(prop(w, "from"), "{{flow.channel.address}}", "{}", name(w));
        assert_eq!(prop(w, "to"), "{{contact.channel.address}}", "{}", name(w));
        let body = prop(w, "body");
        assert!(
            body == REPLY || (!body.trim().is_empty() && !body.contains("{{")),
            "{}: {body:?}",
            name(w)
        );
    }
}

/// A Flex task that cannot be created ends with an apology, not silence.
#[test]
fn send_to_flex_is_configured_and_failures_apologise() {
    let flow = flow();
    let flexes = widgets_of_type(&flow, "send-to-flex");
    assert_eq!(
        flexes.len(),
        2,
        "one for handoffs, one for when relaybot fails"
    );
    for flex in flexes {
        let n = name(flex);
        assert!(prop(flex, "workflow").starts_with("WW"), "{n}");
        assert!(prop(flex, "channel").starts_with("TC"), "{n}");
        assert_eq!(prop(flex, "priority"), "0", "{n}");
        assert_eq!(prop(flex, "timeout"), "3600", "{n}");
        assert!(
            next(&flow, flex, "callComplete").is_none(),
            "{n}: task created ends"
        );
        for event in ["failedToEnqueue", "callFailure"] {
            let sorry = next(&flow, flex, event).unwrap_or_else(|| panic!("{n}: {event}"));
            assert_eq!(sorry["type"], "send-message", "{n}: {event}");
            for e in ["sent", "failed"] {
                assert!(next(&flow, sorry, e).is_none(), "{}: {e} ends", name(sorry));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flex task attributes
// ---------------------------------------------------------------------------------------------

fn handoff_flex(flow: &Value) -> &Value {
    let notice = widget(flow, "handoff_notice");
    next(flow, notice, "sent").expect("the notice leads to Flex")
}

fn fallback_flex(flow: &Value) -> &Value {
    let apology = next(flow, widget(flow, HTTP_WIDGET), "failed").expect("failed is connected");
    next(flow, apology, "sent").expect("the apology leads to Flex")
}

/// The handoff task carries the bot's reason and summary and who the customer is.
#[test]
fn handoff_attributes_carry_the_bots_reason_and_summary() {
    let flow = flow();
    let template = attributes(handoff_flex(&flow));
    assert!(
        template.chars().count() < ATTRIBUTES_MAX,
        "attributes are {} characters",
        template.chars().count()
    );
    let ctx = answered(
        later_turn(SID, "Hi", "+15551230000", "a person please"),
        "handoff",
        "billing_dispute",
        "Customer disputes the March invoice.",
    );
    let attrs = render_object(template, &ctx);
    for key in ATTRIBUTE_KEYS {
        assert!(attrs.contains_key(key), "attributes lack {key:?}");
    }
    assert_eq!(attrs["handoff_reason"], "billing_dispute");
    assert_eq!(attrs["summary"], "Customer disputes the March invoice.");
    assert_eq!(attrs["conversationSid"], SID);
    assert_eq!(attrs["from"], "+15551230000");
    assert_eq!(attrs["name"], "+15551230000");
    assert_eq!(attrs["channelType"], "sms");
}

/// `channelType` follows the sender's address; a web chat name comes from the pre-engagement form.
#[test]
fn attributes_name_the_channel_and_the_customer() {
    let flow = flow();
    let template = attributes(handoff_flex(&flow));
    for (author, channel) in [
        ("whatsapp:+15551230000", "whatsapp"),
        ("messenger:1234567890", "messenger"),
        ("+447700900123", "sms"),
        ("FX0123456789abcdef", "web"),
    ] {
        let ctx = answered(first_turn(SID, "Hi", author), "handoff", "r", "s");
        let attrs = render_object(template, &ctx);
        assert_eq!(attrs["channelType"], channel, "{author}");
        assert_eq!(attrs["from"], author);
    }
    let ctx = answered(first_turn(SID, "Hi", "FX01"), "handoff", "r", "s").with(
        "trigger.conversation.ChannelAttributes.pre_engagement_data.friendlyName",
        "Zoë",
    );
    assert_eq!(render_object(template, &ctx)["name"], "Zoë");
}

/// When relaybot failed there is no bot summary, but the task still says why it exists.
#[test]
fn fallback_attributes_say_the_bot_was_unavailable() {
    let flow = flow();
    let template = attributes(fallback_flex(&flow));
    assert!(template.chars().count() < ATTRIBUTES_MAX);
    assert!(
        !template.contains("parsed."),
        "the failed request has no parsed answer"
    );
    let attrs = render_object(template, &first_turn(SID, "Hi", "+15551230000"));
    for key in ATTRIBUTE_KEYS {
        assert!(attrs.contains_key(key), "attributes lack {key:?}");
    }
    assert_eq!(attrs["handoff_reason"], "relaybot_unavailable");
    assert!(attrs["summary"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(attrs["conversationSid"], SID);
    assert_eq!(attrs["from"], "+15551230000");
}

// ---------------------------------------------------------------------------------------------
// Whole conversations
// ---------------------------------------------------------------------------------------------

/// Follows the flow from the trigger. Every widget but a split takes the next event from
/// `script`; `success:<action>` answers the HTTP widget with that action, and splits decide from
/// it the way Studio does. Returns the widgets visited, ending where a transition has no `next`.
fn walk(flow: &Value, script: &[&str]) -> Vec<String> {
    let mut ctx = first_turn(SID, "Hi", "+15551230000");
    let mut script = script.iter();
    let mut at = widget(flow, "Trigger");
    let mut visited = Vec::new();
    loop {
        visited.push(name(at).to_owned());
        assert!(visited.len() < 100, "runaway walk: {visited:?}");
        let target = if at["type"] == "split-based-on" {
            transitions(at)
                .iter()
                .find(|t| {
                    t["event"] == "match"
                        && t["conditions"]
                            .as_array()
                            .expect("conditions")
                            .iter()
                            .all(|c| {
                                let arg = c["arguments"][0].as_str().expect("argument");
                                c["type"] == "equal_to" && render(arg, &ctx) == c["value"]
                            })
                })
                .or_else(|| transitions(at).iter().find(|t| t["event"] == "noMatch"))
                .expect("a split always has noMatch")["next"]
                .as_str()
        } else {
            let step = script
                .next()
                .unwrap_or_else(|| panic!("script ended at {}", name(at)));
            let event = match step.split_once(':') {
                Some((event, action)) => {
                    ctx = ctx.with("widgets.ask_relaybot.parsed.action", action);
                    event
                }
                None => step,
            };
            next(flow, at, event).map(name)
        };
        match target {
            Some(target) => at = widget(flow, target),
            None => break,
        }
    }
    assert!(script.next().is_none(), "script not used up at {visited:?}");
    visited
}

#[test]
fn conversations_end_where_the_bot_says() {
    let flow = flow();
    let turn = ["ask_relaybot", "check_action"];
    let reply = ["ask_relaybot", "check_action", "reply_and_wait"];
    let path = |parts: &[&[&str]]| -> Vec<String> {
        std::iter::once("Trigger")
            .chain(parts.iter().flat_map(|p| p.iter().copied()))
            .map(str::to_owned)
            .collect()
    };

    // Two answers, then a handoff the agent accepts.
    let script = [
        "incomingConversationMessage",
        "success:continue",
        "incomingMessage",
        "success:continue",
        "incomingMessage",
        "success:handoff",
        "sent",
        "callComplete",
    ];
    assert_eq!(
        walk(&flow, &script),
        path(&[&reply, &reply, &turn, &["handoff_notice", "send_to_agent"]])
    );

    // The bot closes the chat.
    let script = ["incomingConversationMessage", "success:end", "sent"];
    assert_eq!(walk(&flow, &script), path(&[&turn, &["say_goodbye"]]));

    // The customer stops answering, or the reply cannot be delivered.
    for event in ["timeout", "deliveryFailure"] {
        let script = ["incomingConversationMessage", "success:continue", event];
        assert_eq!(walk(&flow, &script), path(&[&reply]));
    }

    // relaybot is down, or answers with an action the flow does not know: a person takes over.
    let fallback = ["sorry_bot_unavailable", "fallback_to_agent"];
    let script = [
        "incomingConversationMessage",
        "failed",
        "sent",
        "callComplete",
    ];
    assert_eq!(walk(&flow, &script), path(&[&["ask_relaybot"], &fallback]));
    let script = [
        "incomingConversationMessage",
        "success:dance",
        "failed",
        "callComplete",
    ];
    assert_eq!(walk(&flow, &script), path(&[&turn, &fallback]));

    // Flex cannot take the task.
    let script = [
        "incomingConversationMessage",
        "success:handoff",
        "failed",
        "failedToEnqueue",
        "sent",
    ];
    assert_eq!(
        walk(&flow, &script),
        path(&[
            &turn,
            &["handoff_notice", "send_to_agent", "sorry_no_agent"]
        ])
    );
}

/// Studio stops an execution after 1,000 steps; each turn costs three, so a chat gets over 300
/// turns. (It also stops when one widget runs 10 times in a row, which the loop never does.)
#[test]
fn a_turn_costs_three_steps() {
    let flow = flow();
    let start = ["incomingConversationMessage", "success:continue"];
    let one = walk(&flow, &[&start[..], &["timeout"]].concat());
    let two = walk(
        &flow,
        &[
            &start[..],
            &["incomingMessage", "success:continue", "timeout"],
        ]
        .concat(),
    );
    assert_eq!(one, ["Trigger", HTTP_WIDGET, "check_action", WAIT_WIDGET]);
    let per_turn = two.len() - one.len();
    assert_eq!(per_turn, 3);
    let last = walk(
        &flow,
        &["incomingConversationMessage", "success:end", "sent"],
    )
    .len();
    assert!(one.len() + 300 * per_turn + last <= 1000);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Whatever the customer types, the request is the server's contract with that exact text.
    #[test]
    fn any_turn_renders_the_contract(
        sid in any::<String>(),
        first in any::<String>(),
        author in any::<String>(),
        reply in proptest::option::of(any::<String>()),
    ) {
        let flow = flow();
        let ctx = match &reply {
            Some(reply) => later_turn(&sid, &first, &author, reply),
            None => first_turn(&sid, &first, &author),
        };
        let rendered = render(turn_body(&flow), &ctx);
        let body: Value = serde_json::from_str(&rendered)
            .map_err(|e| TestCaseError::fail(format!("{e}: {rendered}")))?;
        let object = body.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        prop_assert_eq!(keys, TURN_KEYS.to_vec());
        prop_assert_eq!(&body["conversationSid"], &Value::String(sid));
        prop_assert_eq!(&body["body"], &Value::String(reply.unwrap_or(first)));
        prop_assert_eq!(&body["author"], &Value::String(author));
    }

    /// Whatever the model says and whoever the customer is, both task attribute templates
    /// render valid JSON carrying the values unchanged.
    #[test]
    fn any_values_render_valid_attributes(
        reason in any::<String>(),
        summary in any::<String>(),
        author in any::<String>(),
        friendly in proptest::option::of(any::<String>()),
    ) {
        let flow = flow();
        let mut ctx = answered(first_turn(SID, "Hi", &author), "handoff", &reason, &summary);
        if let Some(friendly) = &friendly {
            ctx = ctx.with(
                "trigger.conversation.ChannelAttributes.pre_engagement_data.friendlyName",
                friendly.clone(),
            );
        }
        for flex in [handoff_flex(&flow), fallback_flex(&flow)] {
            let rendered = render(attributes(flex), &ctx);
            let attrs: Value = serde_json::from_str(&rendered)
                .map_err(|e| TestCaseError::fail(format!("{e}: {rendered}")))?;
            for key in ATTRIBUTE_KEYS {
                prop_assert!(attrs.get(key).is_some_and(Value::is_string), "{}", key);
            }
            prop_assert_eq!(&attrs["conversationSid"], SID);
            prop_assert_eq!(&attrs["from"], &Value::String(author.clone()));
        }
        let attrs = render_object(attributes(handoff_flex(&flow)), &ctx);
        prop_assert_eq!(&attrs["handoff_reason"], &Value::String(reason));
        prop_assert_eq!(&attrs["summary"], &Value::String(summary));
    }
}
