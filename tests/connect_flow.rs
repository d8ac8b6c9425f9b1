//! Checks `aws/contact-flow.json`, the Amazon Connect contact flow (flow language) users import
//! with "Import flow": Connect greets, hands the contact to the Lex V2 bot whose FallbackIntent
//! code hook is relaybot, and routes on what relaybot's `Close` leaves in
//! `$.Lex.SessionAttributes`: `shouldRouteToAgent = "true"` copies `handoffReason` and
//! `handoffSummary` to contact attributes, sets the working queue and transfers; `"false"` says
//! goodbye and disconnects; anything else re-enters the bot a bounded number of times.
//!
//! Import rejects a flow whose identifiers clash or whose transitions name no action, and an
//! action without a handled error branch leaves the caller in silence. The first tests check the
//! shape against the flow-language reference; the scenario tests at the end walk the flow with a
//! small interpreter of the action types it uses (see `run`), fed with what Lex would return.
//!
//! Trap (AWS's own exports): a `ConnectParticipantWithLexBot` block with no intent conditions
//! leaves through its `NoMatchingCondition` *error* entry when Lex closes the intent. That entry is
//! the success path here, so it must lead to the `shouldRouteToAgent` check.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

/// The flow, exactly as it ships.
const FLOW: &str = include_str!("../aws/contact-flow.json");

/// The setup guide; it must explain every placeholder the flow carries.
const README: &str = include_str!("../aws/README.md");

/// The only `Version` the flow language supports.
const VERSION: &str = "2019-10-30";

/// The placeholder Lex V2 bot alias ARN, replaced at import.
const BOT_ALIAS_ARN: &str = "arn:aws:lex:REGION:ACCOUNT:bot-alias/BOTID/ALIASID";

/// The placeholder queue ARN, replaced at import.
const QUEUE_ARN: &str = "arn:aws:connect:REGION:ACCOUNT:instance/INSTANCE_ID/queue/QUEUE_ID";

/// Every placeholder in the flow (and nothing else in capitals that looks like one).
const PLACEHOLDERS: [&str; 6] = [
    "REGION",
    "ACCOUNT",
    "BOTID",
    "ALIASID",
    "INSTANCE_ID",
    "QUEUE_ID",
];

/// What relaybot's `Close` leaves in the Lex session attributes.
const ROUTE: &str = "$.Lex.SessionAttributes.shouldRouteToAgent";
const REASON: &str = "$.Lex.SessionAttributes.handoffReason";
const SUMMARY: &str = "$.Lex.SessionAttributes.handoffSummary";

/// The contact data the flow hands relaybot as Lex session attributes (key → JSONPath).
const PASSED_TO_LEX: [(&str, &str); 3] = [
    ("connectContactId", "$.ContactId"),
    ("customerNumber", "$.CustomerEndpoint.Address"),
    ("connectChannel", "$.Channel"),
];

/// Action types of the flow language, from the API reference's lists of participant,
/// flow-control, contact and interaction actions. A type outside this list fails import.
const KNOWN_TYPES: &[&str] = &[
    // Participant actions.
    "ConnectParticipantWithLexBot",
    "DisconnectParticipant",
    "GetParticipantInput",
    "MessageParticipant",
    "MessageParticipantIteratively",
    "ShowView",
    // Flow control actions.
    "CheckHoursOfOperation",
    "CheckMetricData",
    "CheckOutboundCallStatus",
    "CheckVoiceId",
    "Compare",
    "DistributeByPercentage",
    "EndFlowExecution",
    "GetMetricData",
    "Loop",
    "StartVoiceIdStream",
    "TransferToFlow",
    "UpdateFlowAttributes",
    "UpdateFlowLoggingBehavior",
    "UpdateRoutingCriteria",
    "Wait",
    // Contact actions.
    "CreateTask",
    "DequeueContactAndTransferToQueue",
    "EndFlowModuleExecution",
    "InvokeFlowModule",
    "TransferContactToQueue",
    "TransferParticipantToThirdParty",
    "UpdateContactAttributes",
    "UpdateContactEventHooks",
    "UpdateContactRecordingBehavior",
    "UpdateContactRoutingBehavior",
    "UpdateContactTargetQueue",
    "UpdateContactTextToSpeechVoice",
    // Interactions.
    "InvokeLambdaFunction",
];

/// Condition operators of the flow language; each takes one string operand.
const OPERATORS: [&str; 8] = [
    "Equals",
    "TextStartsWith",
    "TextEndsWith",
    "TextContains",
    "NumberGreaterThan",
    "NumberGreaterOrEqualTo",
    "NumberLessThan",
    "NumberLessOrEqualTo",
];

/// The `ErrorType`s each action type this flow uses may declare (each action's "Errors"
/// section), and whether it may carry `Conditions`. `None` for a type this test doesn't model.
fn documented(kind: &str) -> Option<(&'static [&'static str], bool)> {
    Some(match kind {
        "UpdateFlowLoggingBehavior" => (&[], false),
        "UpdateContactTextToSpeechVoice" => (&["NoMatchingError"], false),
        "MessageParticipant" => (&["NoMatchingError"], false),
        "ConnectParticipantWithLexBot" => (
            &[
                "NoMatchingCondition",
                "NoMatchingError",
                "InputTimeLimitExceeded",
            ],
            true,
        ),
        "Compare" => (&["NoMatchingCondition"], true),
        "Loop" => (&[], true),
        "UpdateContactAttributes" => (&["NoMatchingError"], false),
        "UpdateContactTargetQueue" => (&["NoMatchingError"], false),
        "TransferContactToQueue" => (&["QueueAtCapacity", "NoMatchingError"], false),
        "DisconnectParticipant" => (&[], false),
        _ => return None,
    })
}

fn flow() -> Value {
    serde_json::from_str(FLOW).expect("aws/contact-flow.json is not valid JSON")
}

fn actions(flow: &Value) -> &[Value] {
    flow["Actions"]
        .as_array()
        .expect("`Actions` is an array")
        .as_slice()
}

fn id(action: &Value) -> &str {
    action["Identifier"]
        .as_str()
        .expect("Identifier is a string")
}

fn kind(action: &Value) -> &str {
    action["Type"].as_str().expect("Type is a string")
}

fn action<'a>(flow: &'a Value, identifier: &str) -> &'a Value {
    actions(flow)
        .iter()
        .find(|a| id(a) == identifier)
        .unwrap_or_else(|| panic!("no action {identifier:?}"))
}

fn of_type<'a>(flow: &'a Value, wanted: &str) -> Vec<&'a Value> {
    actions(flow).iter().filter(|a| kind(a) == wanted).collect()
}

/// The only action of type `wanted`.
fn only<'a>(flow: &'a Value, wanted: &str) -> &'a Value {
    let found = of_type(flow, wanted);
    assert_eq!(found.len(), 1, "exactly one {wanted} action");
    found[0]
}

fn transitions(action: &Value) -> &Map<String, Value> {
    action["Transitions"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: Transitions is not an object", id(action)))
}

fn entries<'a>(action: &'a Value, key: &str) -> &'a [Value] {
    transitions(action)
        .get(key)
        .map(|v| {
            v.as_array()
                .unwrap_or_else(|| panic!("{}: {key} is not an array", id(action)))
                .as_slice()
        })
        .unwrap_or_default()
}

fn default_next(action: &Value) -> Option<&str> {
    transitions(action).get("NextAction").map(|v| {
        v.as_str()
            .unwrap_or_else(|| panic!("{}: NextAction is not a string", id(action)))
    })
}

/// Where `error` leads from `action`, if the action declares it.
fn on_error<'a>(action: &'a Value, error: &str) -> Option<&'a str> {
    entries(action, "Errors")
        .iter()
        .find(|e| e["ErrorType"] == error)
        .map(|e| e["NextAction"].as_str().expect("error NextAction"))
}

/// Where the condition `Equals operand` leads from `action`.
fn on_equals<'a>(action: &'a Value, operand: &str) -> Option<&'a str> {
    entries(action, "Conditions")
        .iter()
        .find(|c| {
            c["Condition"]["Operator"] == "Equals" && c["Condition"]["Operands"][0] == operand
        })
        .map(|c| c["NextAction"].as_str().expect("condition NextAction"))
}

/// Every action `action` can lead to.
fn successors(action: &Value) -> Vec<&str> {
    let mut next: Vec<&str> = default_next(action).into_iter().collect();
    for key in ["Errors", "Conditions"] {
        for entry in entries(action, key) {
            next.push(
                entry["NextAction"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: {key} entry without NextAction", id(action))),
            );
        }
    }
    next
}

/// Every action reachable from `from` (itself included).
fn reachable<'a>(flow: &'a Value, from: &'a str) -> HashSet<&'a str> {
    let mut seen = HashSet::from([from]);
    let mut queue = VecDeque::from([from]);
    while let Some(current) = queue.pop_front() {
        for next in successors(action(flow, current)) {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen
}

fn is_jsonpath(value: &str) -> bool {
    value.starts_with("$.") && !value.contains(char::is_whitespace)
}

/// Import only accepts this object, and it starts at `StartAction`.
#[test]
fn flow_has_the_top_level_shape_import_accepts() {
    let flow = flow();
    let top = flow.as_object().expect("the flow is a JSON object");
    let keys: BTreeSet<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["Actions", "Metadata", "StartAction", "Version"]),
        "top-level keys"
    );
    assert_eq!(flow["Version"], VERSION);
    assert!(flow["Metadata"].is_object());
    let count = actions(&flow).len();
    assert!((1..=250).contains(&count), "{count} actions (at most 250)");
    let start = flow["StartAction"].as_str().expect("StartAction");
    action(&flow, start);
}

/// Identifiers are unique and short; each action has exactly the four documented fields.
#[test]
fn actions_are_well_formed() {
    let flow = flow();
    let mut seen = HashSet::new();
    for a in actions(&flow) {
        let fields: BTreeSet<&str> = a
            .as_object()
            .expect("an action is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from(["Identifier", "Parameters", "Transitions", "Type"]),
            "{a}"
        );
        let n = id(a);
        assert!(!n.is_empty() && n.chars().count() <= 50, "identifier {n:?}");
        assert!(seen.insert(n), "duplicate identifier {n:?}");
        assert!(a["Parameters"].is_object(), "{n}: Parameters");
        let t: BTreeSet<&str> = transitions(a).keys().map(String::as_str).collect();
        assert!(
            t.is_subset(&BTreeSet::from(["Conditions", "Errors", "NextAction"])),
            "{n}: Transitions keys {t:?}"
        );
    }
}

/// Every `NextAction` (default, errors, conditions) names an action; the start leads
/// everywhere; only a disconnect ends the flow, and everything else says where to go next.
#[test]
fn every_transition_resolves_and_nothing_dangles() {
    let flow = flow();
    let ids: HashSet<&str> = actions(&flow).iter().map(id).collect();
    for a in actions(&flow) {
        for next in successors(a) {
            assert!(ids.contains(next), "{} leads to unknown {next:?}", id(a));
        }
        for e in entries(a, "Errors") {
            let fields: BTreeSet<&str> = e
                .as_object()
                .expect("error")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                fields,
                BTreeSet::from(["ErrorType", "NextAction"]),
                "{}: {e}",
                id(a)
            );
        }
        if kind(a) == "DisconnectParticipant" {
            assert!(
                transitions(a).is_empty(),
                "{}: a disconnect ends the flow",
                id(a)
            );
        } else {
            assert!(default_next(a).is_some(), "{}: no NextAction", id(a));
        }
    }
    let start = flow["StartAction"].as_str().expect("StartAction");
    let from_start = reachable(&flow, start);
    let unreachable: Vec<&str> = actions(&flow)
        .iter()
        .map(id)
        .filter(|n| !from_start.contains(n))
        .collect();
    assert!(
        unreachable.is_empty(),
        "unreachable actions: {unreachable:?}"
    );
    // Every action can still reach an ending (no trap cycle without a way out).
    for a in actions(&flow) {
        let ends = reachable(&flow, id(a)).into_iter().any(|n| {
            kind(action(&flow, n)) == "DisconnectParticipant"
                || kind(action(&flow, n)) == "TransferContactToQueue"
        });
        assert!(ends, "{} can't reach a disconnect or a transfer", id(a));
    }
}

/// Only documented types, errors, operators and condition shapes.
#[test]
fn types_errors_and_conditions_are_documented() {
    let flow = flow();
    for a in actions(&flow) {
        let (n, k) = (id(a), kind(a));
        assert!(KNOWN_TYPES.contains(&k), "{n}: unknown action type {k:?}");
        let (errors, conditions_allowed) =
            documented(k).unwrap_or_else(|| panic!("{n}: {k} is not modelled by this test"));
        let mut declared = HashSet::new();
        for e in entries(a, "Errors") {
            let error = e["ErrorType"].as_str().expect("ErrorType");
            assert!(errors.contains(&error), "{n}: {k} has no error {error:?}");
            assert!(declared.insert(error), "{n}: {error} declared twice");
        }
        let conditions = entries(a, "Conditions");
        assert!(
            conditions_allowed || conditions.is_empty(),
            "{n}: {k} takes no conditions"
        );
        for c in conditions {
            let condition = &c["Condition"];
            let operator = condition["Operator"].as_str().expect("Operator");
            assert!(OPERATORS.contains(&operator), "{n}: operator {operator:?}");
            let operands = condition["Operands"].as_array().expect("Operands");
            assert_eq!(operands.len(), 1, "{n}: {operator} takes one operand");
            assert!(operands[0].is_string(), "{n}: operands are strings");
        }
    }
}

/// The designer lays out exactly the flow's actions.
#[test]
fn metadata_positions_every_action() {
    let flow = flow();
    let metadata = &flow["Metadata"];
    for axis in ["x", "y"] {
        assert!(
            metadata["entryPointPosition"][axis].is_number(),
            "entryPointPosition.{axis}"
        );
    }
    let placed: BTreeSet<&str> = metadata["ActionMetadata"]
        .as_object()
        .expect("ActionMetadata")
        .keys()
        .map(String::as_str)
        .collect();
    let ids: BTreeSet<&str> = actions(&flow).iter().map(id).collect();
    assert_eq!(placed, ids, "ActionMetadata keys are the identifiers");
    for n in ids {
        for axis in ["x", "y"] {
            assert!(
                metadata["ActionMetadata"][n]["position"][axis].is_number(),
                "{n}: position.{axis}"
            );
        }
    }
}

/// One Lex V2 block: the alias, one prompt, the contact's data as session attributes, and all
/// three documented errors, with `NoMatchingCondition` (Lex closed the intent) as the way on.
#[test]
fn lex_block_names_the_alias_passes_the_contact_and_handles_every_outcome() {
    let flow = flow();
    let bot = only(&flow, "ConnectParticipantWithLexBot");
    let p = &bot["Parameters"];
    assert_eq!(p["LexV2Bot"]["AliasArn"], BOT_ALIAS_ARN);
    assert!(p.get("LexBot").is_none(), "Lex V2, not classic Lex");
    let prompts = ["Text", "SSML", "PromptId", "Media"]
        .iter()
        .filter(|k| p.get(**k).is_some())
        .count();
    assert_eq!(prompts, 1, "exactly one prompt");
    assert!(!p["Text"].as_str().unwrap_or_default().trim().is_empty());
    assert!(
        p.get("LexInitilizationData").is_none(),
        "the syntax block's misspelling"
    );
    let timeout = p["LexTimeoutSeconds"]["Text"]
        .as_str()
        .expect("LexTimeoutSeconds.Text");
    assert!(timeout.parse::<u32>().is_ok_and(|s| s > 0), "{timeout}");

    let attributes = p["LexSessionAttributes"]
        .as_object()
        .expect("LexSessionAttributes");
    for (key, path) in PASSED_TO_LEX {
        assert_eq!(
            attributes.get(key).and_then(Value::as_str),
            Some(path),
            "{key}"
        );
    }
    for (key, value) in attributes {
        let value = value.as_str().expect("session attributes are strings");
        assert!(is_jsonpath(value), "{key}: {value:?} is one whole JSONPath");
        assert!(!key.starts_with("x-amz-lex"), "{key}: reserved prefix");
    }

    assert!(
        entries(bot, "Conditions").is_empty(),
        "no intent conditions: a closed intent must leave through NoMatchingCondition"
    );
    for error in documented("ConnectParticipantWithLexBot")
        .expect("modelled")
        .0
    {
        assert!(on_error(bot, error).is_some(), "Lex block lacks {error}");
    }
    let closed = on_error(bot, "NoMatchingCondition").expect("NoMatchingCondition");
    let check = action(&flow, closed);
    assert_eq!(
        kind(check),
        "Compare",
        "a closed intent goes to the route check"
    );
    assert_eq!(check["Parameters"]["ComparisonValue"], ROUTE);
    assert_eq!(
        default_next(bot),
        on_error(bot, "NoMatchingError"),
        "NextAction points at the error target, as exports do"
    );
}

/// The check: `"true"` → copy the reason and summary, then the queue; `"false"` → goodbye and
/// disconnect; anything else → back into the bot (through a bounded loop).
#[test]
fn route_check_branches_on_should_route_to_agent() {
    let flow = flow();
    let check = only(&flow, "Compare");
    assert_eq!(check["Parameters"]["ComparisonValue"], ROUTE);
    let bot = id(only(&flow, "ConnectParticipantWithLexBot"));

    let copy = action(
        &flow,
        on_equals(check, "true").expect("a branch for \"true\""),
    );
    assert_eq!(kind(copy), "UpdateContactAttributes");
    assert_eq!(copy["Parameters"]["TargetContact"], "Current");
    let attributes = &copy["Parameters"]["Attributes"];
    assert_eq!(attributes["handoffReason"], REASON);
    assert_eq!(attributes["handoffSummary"], SUMMARY);
    let set_queue = action(&flow, default_next(copy).expect("copy NextAction"));
    assert_eq!(kind(set_queue), "UpdateContactTargetQueue");

    let goodbye = action(
        &flow,
        on_equals(check, "false").expect("a branch for \"false\""),
    );
    assert_eq!(kind(goodbye), "MessageParticipant");
    let end = action(&flow, default_next(goodbye).expect("goodbye NextAction"));
    assert_eq!(kind(end), "DisconnectParticipant");

    let no_match = on_error(check, "NoMatchingCondition").expect("NoMatchingCondition");
    assert_eq!(
        default_next(check),
        Some(no_match),
        "NextAction = the no-match target"
    );
    let guard = action(&flow, no_match);
    assert!(
        no_match == bot
            || (kind(guard) == "Loop" && on_equals(guard, "ContinueLooping") == Some(bot)),
        "no match re-enters the bot"
    );
}

/// The re-entry guard is a `Loop` with exactly the two documented conditions.
#[test]
fn loops_have_a_count_and_both_outcomes() {
    let flow = flow();
    for guard in of_type(&flow, "Loop") {
        let count = guard["Parameters"]["LoopCount"]
            .as_str()
            .expect("LoopCount");
        assert!(
            count.parse::<u32>().is_ok_and(|c| (1..=100).contains(&c)),
            "{count}"
        );
        let operands: BTreeSet<&str> = entries(guard, "Conditions")
            .iter()
            .map(|c| c["Condition"]["Operands"][0].as_str().expect("operand"))
            .collect();
        assert_eq!(operands, BTreeSet::from(["ContinueLooping", "DoneLooping"]));
        assert_eq!(default_next(guard), on_equals(guard, "DoneLooping"));
    }
}

/// A queue is set (by ARN, not an agent) and transferred to; capacity and errors apologise and
/// disconnect.
#[test]
fn queue_is_set_and_transferred_to_with_error_branches() {
    let flow = flow();
    let set_queue = only(&flow, "UpdateContactTargetQueue");
    assert_eq!(set_queue["Parameters"]["QueueId"], QUEUE_ARN);
    assert!(
        set_queue["Parameters"].get("AgentId").is_none(),
        "QueueId or AgentId, never both"
    );
    let transfer = action(
        &flow,
        default_next(set_queue).expect("set-queue NextAction"),
    );
    assert_eq!(kind(transfer), "TransferContactToQueue");
    assert_eq!(transfer["Parameters"], Value::Object(Map::new()));
    assert_eq!(
        only(&flow, "TransferContactToQueue")["Identifier"],
        transfer["Identifier"]
    );

    let failures = [
        on_error(set_queue, "NoMatchingError").expect("set-queue NoMatchingError"),
        on_error(transfer, "QueueAtCapacity").expect("transfer QueueAtCapacity"),
        on_error(transfer, "NoMatchingError").expect("transfer NoMatchingError"),
    ];
    for target in failures {
        let message = action(&flow, target);
        assert_eq!(kind(message), "MessageParticipant", "{target}");
        let end = action(&flow, default_next(message).expect("NextAction"));
        assert_eq!(kind(end), "DisconnectParticipant", "{target}");
    }
    assert_ne!(failures[1], failures[2], "a full queue says so");
}

/// Play prompt: one prompt kind (Text works on voice and chat), something to say.
#[test]
fn messages_say_one_thing() {
    let flow = flow();
    for m in of_type(&flow, "MessageParticipant") {
        let p = m["Parameters"].as_object().expect("Parameters");
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(keys, ["Text"], "{}: Text only", id(m));
        assert!(
            !p["Text"].as_str().expect("Text").trim().is_empty(),
            "{}",
            id(m)
        );
        assert_eq!(
            default_next(m),
            on_error(m, "NoMatchingError"),
            "{}: an error still moves on",
            id(m)
        );
    }
}

/// Contact attribute keys are alphanumeric (dash and underscore allowed); values are strings.
#[test]
fn contact_attributes_are_current_and_well_named() {
    let flow = flow();
    for set in of_type(&flow, "UpdateContactAttributes") {
        assert_eq!(set["Parameters"]["TargetContact"], "Current", "{}", id(set));
        let attributes = set["Parameters"]["Attributes"]
            .as_object()
            .expect("Attributes");
        let keys: BTreeSet<&str> = attributes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["handoffReason", "handoffSummary"]),
            "{}",
            id(set)
        );
        for (key, value) in attributes {
            assert!(key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert!(
                !value.as_str().expect("string value").is_empty(),
                "{}: {key}",
                id(set)
            );
        }
    }
    for logging in of_type(&flow, "UpdateFlowLoggingBehavior") {
        let behaviour = logging["Parameters"]["FlowLoggingBehavior"].as_str();
        assert!(
            matches!(behaviour, Some("Enabled" | "Disabled")),
            "{behaviour:?}"
        );
    }
}

/// The placeholders are exactly the documented six, and the README explains each one and the
/// session attributes relaybot reads and writes.
#[test]
fn placeholders_are_the_documented_ones() {
    let mut found = BTreeSet::new();
    for word in FLOW.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.len() > 2 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            found.insert(word);
        }
    }
    assert_eq!(
        found,
        BTreeSet::from(PLACEHOLDERS),
        "placeholders in the flow"
    );
    for placeholder in PLACEHOLDERS {
        assert!(
            README.contains(&format!("`{placeholder}`")),
            "README explains `{placeholder}`"
        );
    }
    for key in ["shouldRouteToAgent", "handoffReason", "handoffSummary"] {
        assert!(README.contains(key), "README mentions {key}");
    }
    for (key, _) in PASSED_TO_LEX {
        assert!(README.contains(key), "README mentions {key}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: a small interpreter of the action types the flow uses.

/// What the Lex block does on one entry.
#[derive(Clone, Copy)]
enum Lex {
    /// relaybot answered `Close`; Lex hands the flow these session attributes.
    Close(&'static [(&'static str, &'static str)]),
    /// The block fails with this error type (`NoMatchingError`: Lex or the Lambda failed).
    Fails(&'static str),
}

const HANDOFF: Lex = Lex::Close(&[
    ("shouldRouteToAgent", "true"),
    ("handoffReason", "billing_dispute"),
    ("handoffSummary", "Charged twice for May; wants a refund."),
]);
const END: Lex = Lex::Close(&[("shouldRouteToAgent", "false")]);
const UNDECIDED: Lex = Lex::Close(&[]);

#[derive(Debug, PartialEq)]
enum End {
    /// `TransferContactToQueue` succeeded: the contact waits in this queue and the flow ends.
    Queued(String),
    /// `DisconnectParticipant`.
    Disconnected,
}

struct Run {
    /// Identifiers, in the order the flow ran them.
    path: Vec<String>,
    /// Prompts and messages the customer got from the flow (not from Lex).
    said: Vec<String>,
    /// Contact attributes at the end.
    attributes: BTreeMap<String, String>,
    end: End,
}

impl Run {
    fn visits(&self, identifier: &str) -> usize {
        self.path.iter().filter(|p| *p == identifier).count()
    }
}

/// Runs the flow. `lex` is what the Lex block returns on each entry, in order; `failing` makes
/// an action (by identifier) take the given error on every run.
fn run(lex: &[Lex], failing: &[(&str, &str)]) -> Run {
    let flow = flow();
    let mut lex: VecDeque<Lex> = lex.iter().copied().collect();
    let failing: HashMap<&str, &str> = failing.iter().copied().collect();
    let mut session: HashMap<&str, &str> = HashMap::new();
    let mut loops: HashMap<String, u32> = HashMap::new();
    let mut queue: Option<String> = None;
    let mut run = Run {
        path: Vec::new(),
        said: Vec::new(),
        attributes: BTreeMap::new(),
        end: End::Disconnected,
    };
    let error = |a: &Value, error: &str| -> String {
        on_error(a, error)
            .or_else(|| on_error(a, "NoMatchingError"))
            .unwrap_or_else(|| panic!("{}: {error} is not handled", id(a)))
            .to_owned()
    };
    let mut current = flow["StartAction"]
        .as_str()
        .expect("StartAction")
        .to_owned();
    for _ in 0..200 {
        let a = action(&flow, &current);
        run.path.push(current.clone());
        if let Some(e) = failing.get(current.as_str()) {
            current = error(a, e);
            continue;
        }
        let p = &a["Parameters"];
        let resolve = |value: &str, session: &HashMap<&str, &str>| -> String {
            match value.strip_prefix("$.Lex.SessionAttributes.") {
                // What Connect does with an attribute Lex never set is unverified; the flow
                // never copies one it hasn't checked for, so an empty value stands in.
                Some(key) => session.get(key).copied().unwrap_or_default().to_owned(),
                None => {
                    assert!(!value.starts_with('$'), "unmodelled JSONPath {value}");
                    value.to_owned()
                }
            }
        };
        let next = match kind(a) {
            "DisconnectParticipant" => {
                run.end = End::Disconnected;
                return run;
            }
            "TransferContactToQueue" => {
                let target = queue.take().expect("transfer before Set working queue");
                run.end = End::Queued(target);
                return run;
            }
            "UpdateFlowLoggingBehavior" | "UpdateContactTextToSpeechVoice" => {
                default_next(a).expect("NextAction").to_owned()
            }
            "MessageParticipant" => {
                run.said.push(p["Text"].as_str().expect("Text").to_owned());
                default_next(a).expect("NextAction").to_owned()
            }
            "ConnectParticipantWithLexBot" => {
                run.said
                    .push(p["Text"].as_str().expect("prompt").to_owned());
                match lex
                    .pop_front()
                    .expect("the flow entered Lex more often than scripted")
                {
                    Lex::Close(attributes) => {
                        session = attributes.iter().copied().collect();
                        // No intent conditions: a closed intent takes NoMatchingCondition.
                        error(a, "NoMatchingCondition")
                    }
                    Lex::Fails(e) => error(a, e),
                }
            }
            "Compare" => {
                let path = p["ComparisonValue"].as_str().expect("ComparisonValue");
                let value = resolve(path, &session);
                let matched = entries(a, "Conditions").iter().find(|c| {
                    assert_eq!(
                        c["Condition"]["Operator"], "Equals",
                        "only Equals is modelled"
                    );
                    c["Condition"]["Operands"][0] == value.as_str()
                });
                match matched {
                    Some(c) => c["NextAction"].as_str().expect("NextAction").to_owned(),
                    None => error(a, "NoMatchingCondition"),
                }
            }
            "Loop" => {
                // "NotDone" LoopCount times, then "Done" once, then reset.
                let count: u32 = p["LoopCount"]
                    .as_str()
                    .expect("LoopCount")
                    .parse()
                    .expect("number");
                let done = loops.entry(current.clone()).or_default();
                let outcome = if *done < count {
                    *done += 1;
                    "ContinueLooping"
                } else {
                    *done = 0;
                    "DoneLooping"
                };
                on_equals(a, outcome).expect("loop outcome").to_owned()
            }
            "UpdateContactAttributes" => {
                for (key, value) in p["Attributes"].as_object().expect("Attributes") {
                    let value = resolve(value.as_str().expect("string"), &session);
                    run.attributes.insert(key.clone(), value);
                }
                default_next(a).expect("NextAction").to_owned()
            }
            "UpdateContactTargetQueue" => {
                queue = Some(p["QueueId"].as_str().expect("QueueId").to_owned());
                default_next(a).expect("NextAction").to_owned()
            }
            other => panic!("{current}: {other} is not modelled"),
        };
        current = next;
    }
    panic!("the flow did not end within 200 actions: {:?}", run.path);
}

/// The bot asks for a person: the reason and summary become contact attributes and the contact
/// lands in the queue.
#[test]
fn handoff_copies_reason_and_summary_and_queues() {
    let run = run(&[HANDOFF], &[]);
    assert_eq!(run.end, End::Queued(QUEUE_ARN.to_owned()));
    assert_eq!(run.attributes["handoffReason"], "billing_dispute");
    assert_eq!(
        run.attributes["handoffSummary"],
        "Charged twice for May; wants a refund."
    );
    assert_eq!(&run.path[..4], ["logging", "voice", "greet", "bot"]);
    assert_eq!(run.visits("bot"), 1);
}

/// The bot ends the conversation: a goodbye and a disconnect, no queue, no attributes.
#[test]
fn end_says_goodbye_and_disconnects() {
    let run = run(&[END], &[]);
    assert_eq!(run.end, End::Disconnected);
    assert!(run.attributes.is_empty());
    assert!(!run.path.iter().any(|p| p == "set-queue"));
    assert_eq!(run.path.last().map(String::as_str), Some("disconnect"));
}

/// A `Close` without a decision (or with another value) goes back into the bot.
#[test]
fn undecided_close_reenters_the_bot() {
    let other = Lex::Close(&[("shouldRouteToAgent", "maybe")]);
    let run = run(&[UNDECIDED, other, HANDOFF], &[]);
    assert_eq!(run.visits("bot"), 3);
    assert_eq!(run.end, End::Queued(QUEUE_ARN.to_owned()));
    assert_eq!(run.attributes["handoffReason"], "billing_dispute");
}

/// A bot that keeps closing without deciding can't hold the customer forever: after the loop
/// count, a person takes over, and the agent sees why.
#[test]
fn reentry_is_bounded_and_ends_with_a_person() {
    let run = run(&[UNDECIDED; 20], &[]);
    let flow = flow();
    let count: usize = only(&flow, "Loop")["Parameters"]["LoopCount"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("LoopCount");
    assert_eq!(run.visits("bot"), count + 1);
    assert_eq!(run.end, End::Queued(QUEUE_ARN.to_owned()));
    assert_eq!(run.attributes["handoffReason"], "bot_loop_limit");
}

/// Lex or the Lambda failing is not the customer's problem: an apology, then a person, with
/// the reason on the contact.
#[test]
fn bot_failure_passes_to_a_person() {
    let run = run(&[Lex::Fails("NoMatchingError")], &[]);
    assert_eq!(run.end, End::Queued(QUEUE_ARN.to_owned()));
    assert_eq!(run.attributes["handoffReason"], "relaybot_unavailable");
    assert!(run
        .said
        .iter()
        .any(|s| s.contains("pass you to a member of our team")));
}

/// A silent chat (Lex's inactivity timer) gets a goodbye.
#[test]
fn input_timeout_says_goodbye() {
    let run = run(&[Lex::Fails("InputTimeLimitExceeded")], &[]);
    assert_eq!(run.end, End::Disconnected);
    assert!(run.path.iter().any(|p| p == "timed-out"));
    assert!(run.attributes.is_empty());
}

/// A full queue, a failed transfer and a bad queue ARN each apologise, then disconnect.
#[test]
fn queue_failures_apologise_and_disconnect() {
    for (failing, error, message) in [
        ("to-queue", "QueueAtCapacity", "queue-full"),
        ("to-queue", "NoMatchingError", "queue-failed"),
        ("set-queue", "NoMatchingError", "queue-failed"),
    ] {
        let run = run(&[HANDOFF], &[(failing, error)]);
        assert_eq!(run.end, End::Disconnected, "{failing} {error}");
        let n = run.path.len();
        assert_eq!(
            run.path[n - 2..],
            [message, "disconnect"],
            "{failing} {error}"
        );
    }
}

/// Failures of the blocks around the bot don't stop the conversation.
#[test]
fn side_failures_do_not_stop_the_conversation() {
    let greeted = run(
        &[HANDOFF],
        &[("voice", "NoMatchingError"), ("greet", "NoMatchingError")],
    );
    assert_eq!(greeted.visits("bot"), 1);
    assert_eq!(greeted.end, End::Queued(QUEUE_ARN.to_owned()));
    let copied = run(&[HANDOFF], &[("copy-handoff", "NoMatchingError")]);
    assert_eq!(copied.end, End::Queued(QUEUE_ARN.to_owned()));
}
