//! Checks `studio/flow.json`, the Studio flow users import with "Import from JSON".
//!
//! Studio rejects a definition whose widget names clash or whose transitions point nowhere
//! (error 81022), and a `send-to-flex` attributes string that renders to broken JSON makes the
//! Flex task fail. These tests catch both before anyone gets to the console.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// The flow definition, exactly as it ships.
const FLOW: &str = include_str!("../studio/flow.json");

/// The five trigger events current Studio exports list.
const TRIGGER_EVENTS: [&str; 5] = [
    "incomingMessage",
    "incomingCall",
    "incomingConversationMessage",
    "incomingRequest",
    "incomingParent",
];

/// Studio's documented cap on the `send-to-flex` attributes string.
const ATTRIBUTES_MAX: usize = 1024;

/// Keys the Flex task attributes must carry (see `docs/handoff.md` §2.3).
const ATTRIBUTE_KEYS: [&str; 7] = [
    "type",
    "name",
    "from",
    "handoff_reason",
    "summary",
    "callSid",
    "conversations",
];

// The server's sanitiser for every value it puts on the `?FlowEvent=return` redirect: the
// flow's attributes string quotes each Liquid value and relies on it to stay valid JSON.
use relaybot::handoff::studio_safe;

fn flow() -> Value {
    serde_json::from_str(FLOW).expect("studio/flow.json is not valid JSON")
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

fn transitions(widget: &Value) -> &[Value] {
    widget["transitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: `transitions` is not an array", widget["name"]))
        .as_slice()
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

/// The only `send-to-flex` widget's attributes string.
fn attributes_template(flow: &Value) -> &str {
    let flex: Vec<&Value> = states(flow)
        .iter()
        .filter(|w| w["type"] == "send-to-flex")
        .collect();
    assert_eq!(flex.len(), 1, "exactly one send-to-flex widget");
    flex[0]["properties"]["attributes"]
        .as_str()
        .expect("send-to-flex attributes is a JSON string, not an object")
}

/// Every Liquid placeholder (`{{…}}`, braces included) in `template`, in order.
fn placeholders(template: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..]
            .find("}}")
            .unwrap_or_else(|| panic!("unclosed Liquid placeholder in {template:?}"));
        found.push(&rest[start..start + end + 2]);
        rest = &rest[start + end + 2..];
    }
    found
}

/// Renders `template` the way Studio's Liquid would, taking each placeholder's value from
/// `value_of` (called with the placeholder's inner expression, trimmed).
fn render(template: &str, value_of: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = start + rest[start..].find("}}").expect("closed placeholder");
        out.push_str(&rest[..start]);
        out.push_str(&value_of(rest[start + 2..end].trim()));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders the attributes with `value` (already sanitised) in every placeholder and parses them.
fn rendered_attributes(template: &str, value: &str) -> Map<String, Value> {
    let rendered = render(template, |_| value.to_owned());
    match serde_json::from_str(&rendered) {
        Ok(Value::Object(map)) => map,
        Ok(other) => panic!("attributes render to a non-object: {other}"),
        Err(e) => panic!("attributes render to invalid JSON ({e}): {rendered}"),
    }
}

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
    let mut seen = std::collections::HashSet::new();
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
            }
        }
    }
}

/// Exports keep every trigger event, and only a call should start the bot.
#[test]
fn trigger_lists_all_events_and_only_calls_are_connected() {
    let flow = flow();
    let trigger = widget(&flow, "Trigger");
    let events: Vec<&str> = transitions(trigger)
        .iter()
        .map(|t| t["event"].as_str().expect("event"))
        .collect();
    let mut sorted = events.clone();
    sorted.sort_unstable();
    let mut expected = TRIGGER_EVENTS.to_vec();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    for event in TRIGGER_EVENTS {
        let connected = next(&flow, trigger, event).is_some();
        assert_eq!(connected, event == "incomingCall", "trigger event {event}");
    }
}

/// The call must reach relaybot's `/twiml` webhook, come back into the split on `handoff`,
/// and reach Flex when the bot asked for an agent; dead ends must say goodbye politely.
#[test]
fn a_call_goes_to_relaybot_then_to_flex_on_handoff() {
    let flow = flow();
    let trigger = widget(&flow, "Trigger");
    let redirect = next(&flow, trigger, "incomingCall").expect("incomingCall is connected");
    assert_eq!(redirect["type"], "add-twiml-redirect");
    let props = &redirect["properties"];
    let url = props["url"].as_str().expect("redirect url");
    assert!(url.starts_with("https://"), "{url}");
    assert!(url.ends_with("/twiml"), "{url}");
    assert_eq!(props["method"], "POST");
    assert_eq!(props["timeout"], "14400");

    let split = next(&flow, redirect, "return").expect("return is connected");
    assert_eq!(split["type"], "split-based-on");
    let handoff = format!("{{{{widgets.{}.handoff}}}}", name(redirect));
    assert_eq!(split["properties"]["input"], handoff.as_str());

    let matches: Vec<&Value> = transitions(split)
        .iter()
        .filter(|t| t["event"] == "match")
        .collect();
    assert_eq!(matches.len(), 1, "one match branch");
    let conditions = matches[0]["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1);
    let condition = &conditions[0];
    for key in ["friendly_name", "arguments", "type", "value"] {
        assert!(condition.get(key).is_some(), "condition lacks {key:?}");
    }
    assert_eq!(condition["type"], "equal_to");
    assert_eq!(condition["value"], "agent");
    assert_eq!(condition["arguments"], serde_json::json!([handoff]));
    let target = matches[0]["next"].as_str().expect("match is connected");
    assert_eq!(widget(&flow, target)["type"], "send-to-flex");
    assert_eq!(
        transitions(split)
            .iter()
            .filter(|t| t["event"] == "noMatch")
            .count(),
        1,
        "exactly one noMatch"
    );
    let no_match = next(&flow, split, "noMatch").expect("noMatch is connected");
    assert_eq!(no_match["type"], "say-play");

    for event in ["timeout", "fail"] {
        let end =
            next(&flow, redirect, event).unwrap_or_else(|| panic!("redirect {event} is connected"));
        assert_eq!(end["type"], "say-play", "redirect {event}");
    }
}

/// A task Flex cannot create must not leave the caller in silence.
#[test]
fn send_to_flex_is_configured_and_failures_apologise() {
    let flow = flow();
    let flex = states(&flow)
        .iter()
        .find(|w| w["type"] == "send-to-flex")
        .expect("a send-to-flex widget");
    let props = &flex["properties"];
    assert!(props["workflow"]
        .as_str()
        .expect("workflow")
        .starts_with("WW"));
    assert!(props["channel"]
        .as_str()
        .expect("channel")
        .starts_with("TC"));
    assert_eq!(props["priority"], "0");
    assert_eq!(props["timeout"], "3600");
    let events: Vec<&str> = transitions(flex)
        .iter()
        .map(|t| t["event"].as_str().expect("event"))
        .collect();
    assert_eq!(events, ["callComplete", "failedToEnqueue", "callFailure"]);
    assert!(
        next(&flow, flex, "callComplete").is_none(),
        "callComplete ends the execution"
    );
    for event in ["failedToEnqueue", "callFailure"] {
        let end = next(&flow, flex, event).unwrap_or_else(|| panic!("{event} is connected"));
        assert_eq!(end["type"], "say-play", "{event}");
    }
}

/// say-play takes exactly one of say/play/digits, an integer loop, and ends on audioComplete.
#[test]
fn say_play_widgets_speak_once_and_end() {
    let flow = flow();
    let says: Vec<&Value> = states(&flow)
        .iter()
        .filter(|w| w["type"] == "say-play")
        .collect();
    assert!(!says.is_empty());
    for w in says {
        let props = &w["properties"];
        let kinds = ["say", "play", "digits"]
            .iter()
            .filter(|k| props.get(**k).is_some())
            .count();
        assert_eq!(kinds, 1, "{}: one of say/play/digits", name(w));
        assert!(
            !props["say"].as_str().unwrap_or_default().trim().is_empty(),
            "{}: says something",
            name(w)
        );
        assert!(props["loop"].is_i64(), "{}: loop is an integer", name(w));
        let events: Vec<&Value> = transitions(w).iter().map(|t| &t["event"]).collect();
        assert_eq!(events, ["audioComplete"], "{}", name(w));
    }
}

/// Studio caps the attributes at 1024 characters, and Flex needs the keys we rely on.
#[test]
fn attributes_template_is_short_and_uses_the_redirect_params() {
    let flow = flow();
    let template = attributes_template(&flow);
    assert!(
        template.chars().count() < ATTRIBUTES_MAX,
        "attributes are {} characters",
        template.chars().count()
    );
    let found = placeholders(template);
    for expected in [
        "{{trigger.call.From}}",
        "{{widgets.relaybot.reason}}",
        "{{widgets.relaybot.summary}}",
        "{{widgets.relaybot.callSid}}",
    ] {
        assert!(found.contains(&expected), "attributes lack {expected}");
    }
    // Every placeholder must sit inside a JSON string, so its value is quoted.
    let rendered = rendered_attributes(template, "x");
    for key in ATTRIBUTE_KEYS {
        assert!(rendered.contains_key(key), "attributes lack {key:?}");
    }
    assert_eq!(rendered["type"], "inbound");
    let conversations = rendered["conversations"]
        .as_object()
        .expect("conversations is an object");
    assert_eq!(conversations["communication_channel"], "voice");
    assert_eq!(conversations["direction"], "inbound");
    assert_eq!(conversations["initiated_by"], "customer");
    assert!(conversations.contains_key("conversation_attribute_1"));
}

/// Values the caller and the model control must not be able to break the task's JSON once the
/// server has sanitised them.
#[test]
fn attributes_stay_valid_json_with_hostile_values() {
    let flow = flow();
    let template = attributes_template(&flow);
    let hostile = [
        "Zoë's \"bill\" & <co>\\\n😀",
        "\"}, \"type\": \"outbound",
        "back\\slash\\\\ and \\u0000",
        "tab\there\r\nnew line\u{0}\u{1f}\u{7f}\u{85}",
        "{{not liquid}} {% raw %} &amp; <Say>",
        "\u{2028}\u{2029}\u{feff}",
        "",
    ];
    for raw in hostile {
        let safe = studio_safe(raw);
        let values = |expr: &str| match expr {
            "widgets.relaybot.summary" => safe.clone(),
            "widgets.relaybot.reason" => studio_safe(&format!("reason {raw}")),
            "widgets.relaybot.callSid" => studio_safe(&format!("CA{raw}")),
            _ => studio_safe(&format!("+1 {raw}")),
        };
        let rendered = render(template, values);
        let attrs: Value = serde_json::from_str(&rendered)
            .unwrap_or_else(|e| panic!("{raw:?} breaks the attributes ({e}): {rendered}"));
        for key in ATTRIBUTE_KEYS {
            assert!(attrs.get(key).is_some(), "{raw:?}: lost {key:?}");
        }
        assert_eq!(attrs["type"], "inbound", "{raw:?} changed the task type");
        assert_eq!(attrs["summary"], safe.as_str());
        assert_eq!(
            attrs["handoff_reason"],
            studio_safe(&format!("reason {raw}")).as_str()
        );
    }
}

/// The sanitiser's rules are exactly the ones the server documents.
#[test]
fn studio_safe_follows_the_server_rules() {
    assert_eq!(studio_safe("a\"b\\c\nd\te\u{0}f"), "a'b/c d e f");
    assert_eq!(studio_safe("Zoë & <co> 😀"), "Zoë & <co> 😀");
}

proptest! {
    /// Whatever text reaches the server, its sanitised form survives the attributes template
    /// unchanged.
    #[test]
    fn any_sanitised_value_round_trips_through_the_attributes(
        summary in any::<String>(),
        other in "\\PC*",
    ) {
        let flow = flow();
        let template = attributes_template(&flow);
        let safe = studio_safe(&summary);
        let safe_other = studio_safe(&other);
        let rendered = render(template, |expr| {
            if expr == "widgets.relaybot.summary" {
                safe.clone()
            } else {
                safe_other.clone()
            }
        });
        let attrs: Value = serde_json::from_str(&rendered)
            .map_err(|e| TestCaseError::fail(format!("{e}: {rendered}")))?;
        prop_assert_eq!(&attrs["summary"], &Value::String(safe.clone()));
        prop_assert_eq!(&attrs["handoff_reason"], &Value::String(safe_other.clone()));
        prop_assert_eq!(&attrs["type"], "inbound");
    }

    /// Every value fills every placeholder without breaking the JSON.
    #[test]
    fn any_sanitised_value_in_every_placeholder_parses(raw in any::<String>()) {
        let flow = flow();
        let safe = studio_safe(&raw);
        let attrs = rendered_attributes(attributes_template(&flow), &safe);
        for key in ATTRIBUTE_KEYS {
            prop_assert!(attrs.contains_key(key));
        }
        prop_assert_eq!(&attrs["summary"], &Value::String(safe.clone()));
        prop_assert_eq!(&attrs["callSid"], &Value::String(safe));
    }
}
