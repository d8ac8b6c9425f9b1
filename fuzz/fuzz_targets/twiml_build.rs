//! Arbitrary `<ConversationRelay>` attributes, `<Language>` children and `<Parameter>` names and
//! values: `ConnectRelay::to_xml` must not panic, its output must parse, and every value must come
//! back exactly, less what XML 1.0 cannot carry:
//!
//! - the builder drops control characters other than `\t`, `\n`, `\r` (mirrored by `clean`);
//! - XML parsers normalise `\t`, `\n`, `\r` in attribute values (and `\r` in text), so values with
//!   those are only checked for presence.
//!
//! Attribute names are mapped to `[A-Za-z][A-Za-z0-9]*` and de-duplicated: they come from our
//! configuration, not from callers, and a name is not escaped (it cannot be).
//!
//! The `<Say>`, `<Redirect>` and `<Enqueue><Task>` builders get the same text treatment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybot::twilio::twiml::{self, ConnectRelay, LanguageElement};

type Language = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

type Input = (
    String,
    String,
    Vec<(String, String)>,
    Vec<Language>,
    Vec<(String, String)>,
);

/// What the builder keeps of a value (its `clean`).
fn clean(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Whether a parser hands the attribute value back unchanged.
fn exact(value: &str) -> bool {
    !value.contains(['\t', '\n', '\r'])
}

/// Checks a parsed attribute against what was put in.
fn check(got: Option<&str>, put: &str, what: &str) {
    let expected = clean(put);
    let got = got.unwrap_or_else(|| panic!("{what} missing"));
    if exact(&expected) {
        assert_eq!(got, expected, "{what}");
    }
}

fn xml_name(raw: &str) -> String {
    let mut name: String = raw.chars().filter(char::is_ascii_alphanumeric).collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert(0, 'a');
    }
    name
}

fuzz_target!(|input: Input| {
    let (action, url, raw_attributes, raw_languages, parameters) = input;

    let mut attributes: Vec<(String, String)> = Vec::new();
    for (name, value) in raw_attributes {
        let name = xml_name(&name);
        if name != "url" && !attributes.iter().any(|(n, _)| *n == name) {
            attributes.push((name, value));
        }
    }
    let languages: Vec<LanguageElement> = raw_languages
        .into_iter()
        .map(
            |(code, tts_provider, voice, transcription_provider, speech_model)| LanguageElement {
                code,
                tts_provider,
                voice,
                transcription_provider,
                speech_model,
            },
        )
        .collect();

    let xml = ConnectRelay {
        action: &action,
        url: &url,
        attributes: &attributes,
        languages: &languages,
        parameters: &parameters,
    }
    .to_xml();
    let root = twiml::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(root.name, "Response");

    let connect = root.find("Connect").expect("<Connect>");
    check(connect.attr("action"), &action, "action");

    let relay = connect
        .children_named("ConversationRelay")
        .next()
        .expect("<ConversationRelay>");
    assert_eq!(relay.attributes.len(), attributes.len() + 1);
    assert_eq!(relay.attributes[0].0, "url");
    check(Some(&relay.attributes[0].1), &url, "url");
    for ((name, value), (got_name, got_value)) in attributes.iter().zip(&relay.attributes[1..]) {
        assert_eq!(name, got_name);
        check(Some(got_value), value, name);
    }

    let got_languages: Vec<_> = relay.children_named("Language").collect();
    assert_eq!(got_languages.len(), languages.len());
    for (language, got) in languages.iter().zip(got_languages) {
        check(got.attr("code"), &language.code, "code");
        for (name, value) in [
            ("ttsProvider", &language.tts_provider),
            ("voice", &language.voice),
            ("transcriptionProvider", &language.transcription_provider),
            ("speechModel", &language.speech_model),
        ] {
            match value {
                Some(value) => check(got.attr(name), value, name),
                None => assert_eq!(got.attr(name), None, "{name}"),
            }
        }
    }

    let got_parameters: Vec<_> = relay.children_named("Parameter").collect();
    assert_eq!(got_parameters.len(), parameters.len());
    for ((name, value), got) in parameters.iter().zip(got_parameters) {
        check(got.attr("name"), name, "parameter name");
        check(got.attr("value"), value, "parameter value");
    }

    // Text nodes: the parser trims; `\r` may be normalised.
    let text_matches = |got: &str, put: &str| {
        let expected = clean(put);
        if !expected.contains('\r') {
            assert_eq!(got, expected.trim());
        }
    };
    let say = twiml::say_and_hang_up(Some(&action));
    let root = twiml::parse(&say).unwrap_or_else(|e| panic!("{e}\n{say}"));
    assert!(root.find("Hangup").is_some());
    if let Some(element) = root.find("Say") {
        text_matches(&element.text, &action);
    } else {
        assert!(action.trim().is_empty());
    }
    let redirect = twiml::redirect(&url);
    let root = twiml::parse(&redirect).unwrap_or_else(|e| panic!("{e}\n{redirect}"));
    text_matches(&root.find("Redirect").expect("<Redirect>").text, &url);
    let enqueue = twiml::enqueue_task(&action, &url);
    let root = twiml::parse(&enqueue).unwrap_or_else(|e| panic!("{e}\n{enqueue}"));
    check(
        root.find("Enqueue").expect("<Enqueue>").attr("workflowSid"),
        &action,
        "workflowSid",
    );
    text_matches(&root.find("Task").expect("<Task>").text, &url);
});
