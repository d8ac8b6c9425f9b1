//! Property tests for the parts of relaybot that handle text from outside: the TwiML we write
//! (caller and configuration values inside XML), the `X-Twilio-Signature` canonical string, and
//! the values we hand to Studio.
//!
//! Each property runs proptest's default 256 cases, so the whole file takes well under a second.

use std::collections::BTreeSet;

use proptest::prelude::*;
use relaybot::{
    handoff::{studio_redirect_twiml, studio_return_url, studio_safe, HandoffData},
    twilio::{
        signature::{canonical, matches, sign},
        twiml::{self, ConnectRelay, LanguageElement},
    },
};

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Text XML carries unchanged: no control characters at all (the builder drops most of them and
/// parsers normalise `\t`, `\n`, `\r` in attributes). Half the cases are drawn from the
/// characters that matter to XML so escaping is exercised on every run.
fn xml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect()),
        r#"[<>&"';#x0-9a-z ]{0,24}"#,
        // Things that look like entities, CDATA ends and tags.
        r#"(&amp;|&lt;|&#60;|&#x3C;|&quot;|\]\]>|<!--|<!\[CDATA\[|"/>|</Response>| ){0,6}"#,
    ]
}

/// Any text, biased towards the characters that break JSON strings.
fn json_hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        r#"[\x00-\x1F\x7F-\x9F"\\'{}a-z \u{2028}\u{2029}]{0,24}"#,
    ]
}

/// Form parameters: arbitrary ones, and ones from a tiny alphabet so duplicate names and exact
/// duplicate pairs are common.
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![
        prop::collection::vec((any::<String>(), any::<String>()), 0..8),
        prop::collection::vec(("[aAb_]{0,2}", "[xyZ]{0,2}"), 0..10),
        prop::collection::vec(("[A-Z][A-Za-z]{0,12}", "[ -~]{0,12}"), 0..8),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A document split by a scan that knows nothing of XML beyond `<`, `>` and quotes: the raw
/// attribute values (between their quotes, exactly as written) and the raw text runs between
/// tags. Independent of quick-xml, so it checks what quick-xml wrote rather than trusting it.
fn raw_parts(xml: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut values = Vec::new();
    let mut texts = Vec::new();
    let mut text = String::new();
    let mut chars = xml.chars();
    while let Some(c) = chars.next() {
        if c != '<' {
            text.push(c);
            continue;
        }
        if !text.is_empty() {
            texts.push(std::mem::take(&mut text));
        }
        loop {
            match chars.next() {
                None => return Err(format!("unterminated tag in {xml}")),
                Some('>') => break,
                Some(quote @ ('"' | '\'')) => {
                    if quote != '"' {
                        return Err(format!("attribute quoted with {quote:?} in {xml}"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(format!("unterminated attribute in {xml}")),
                            Some('"') => break,
                            Some(c) => value.push(c),
                        }
                    }
                    values.push(value);
                }
                Some(_) => {}
            }
        }
    }
    if !text.is_empty() {
        texts.push(text);
    }
    Ok((values, texts))
}

/// Decodes the five predefined entities and character references, failing on a raw `<` or on an
/// `&` that does not start one: what a well-formed value or text run must look like.
fn unescape_strict(raw: &str) -> Result<String, String> {
    if raw.contains('<') {
        return Err(format!("raw '<' in {raw:?}"));
    }
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("raw '&' in {raw:?}"))?;
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("raw '&' in {raw:?}"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks every raw attribute value and text run of `xml` with [`unescape_strict`] and returns
/// them decoded. Text runs must not contain `]]>` either.
fn decoded_parts(xml: &str) -> Result<(Vec<String>, Vec<String>), TestCaseError> {
    let (values, texts) = raw_parts(xml).map_err(TestCaseError::fail)?;
    let values = values
        .iter()
        .map(|v| unescape_strict(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TestCaseError::fail)?;
    for t in &texts {
        prop_assert!(!t.contains("]]>"), "raw ]]> in text of {}", xml);
    }
    let texts = texts
        .iter()
        .map(|t| unescape_strict(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TestCaseError::fail)?;
    Ok((values, texts))
}

/// The raw-document checks above are only worth something if they reject what they look for.
#[test]
fn raw_checks_reject_unescaped_documents() {
    // A raw `"` inside a value throws the quotes out of step: the scan fails or splits it.
    assert!(raw_parts(r#"<a b="x"y"/>"#).is_err());
    let (values, _) = raw_parts(r#"<a b="x"y"z"/>"#).unwrap();
    assert_eq!(values, vec!["x".to_owned(), "z".to_owned()]);
    assert!(raw_parts(r#"<a b='x'/>"#).is_err());
    assert!(unescape_strict("a < b").is_err());
    assert!(unescape_strict("a & b").is_err());
    assert!(unescape_strict("&bogus;").is_err());
    assert_eq!(
        unescape_strict("&amp;&lt;&gt;&quot;&apos;&#60;&#x3C;").unwrap(),
        "&<>\"'<<"
    );
    let (_, texts) = raw_parts("<a>x &amp; y</a>").unwrap();
    assert_eq!(texts, vec!["x &amp; y".to_owned()]);
}

fn parse(xml: &str) -> Result<twiml::Element, TestCaseError> {
    twiml::parse(xml).map_err(|e| TestCaseError::fail(format!("{e}\n{xml}")))
}

/// The canonical string by its definition: the URL, then `name + value` of each distinct pair,
/// ordered by name bytes, then value bytes.
fn canonical_model(url: &str, params: &[(String, String)]) -> String {
    let distinct: BTreeSet<(&[u8], &[u8])> = params
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let mut out = url.as_bytes().to_vec();
    for (k, v) in distinct {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    String::from_utf8(out).expect("concatenated UTF-8")
}

// ---------------------------------------------------------------------------------------------
// TwiML
// ---------------------------------------------------------------------------------------------

proptest! {
    /// The greeting and `<Parameter>` values can carry caller or operator text: if any of them
    /// escaped its attribute, a caller could inject TwiML into their own call (or just break it).
    #[test]
    fn connect_relay_round_trips_every_value(
        action in xml_text(),
        url in xml_text(),
        greeting in xml_text(),
        name in xml_text(),
        value in xml_text(),
        code in xml_text(),
        voice in xml_text(),
    ) {
        let attributes = vec![("welcomeGreeting".to_owned(), greeting.clone())];
        let parameters = vec![(name.clone(), value.clone())];
        let languages = vec![LanguageElement {
            code: code.clone(),
            tts_provider: None,
            voice: Some(voice.clone()),
            transcription_provider: None,
            speech_model: None,
        }];
        let xml = ConnectRelay {
            action: &action,
            url: &url,
            attributes: &attributes,
            languages: &languages,
            parameters: &parameters,
        }
        .to_xml();

        let root = parse(&xml)?;
        prop_assert_eq!(&root.name, "Response");
        let connect = root.find("Connect").expect("<Connect>");
        prop_assert_eq!(connect.attr("action"), Some(action.as_str()));
        let relay = root.find("ConversationRelay").expect("<ConversationRelay>");
        prop_assert_eq!(
            &relay.attributes,
            &vec![
                ("url".to_owned(), url.clone()),
                ("welcomeGreeting".to_owned(), greeting.clone()),
            ]
        );
        let language = relay.children_named("Language").next().expect("<Language>");
        prop_assert_eq!(language.attr("code"), Some(code.as_str()));
        prop_assert_eq!(language.attr("voice"), Some(voice.as_str()));
        let parameter: Vec<_> = relay.children_named("Parameter").collect();
        prop_assert_eq!(parameter.len(), 1);
        prop_assert_eq!(parameter[0].attr("name"), Some(name.as_str()));
        prop_assert_eq!(parameter[0].attr("value"), Some(value.as_str()));
    }

    /// Attribute values never hold a raw `<`, `&` or `"` (only entities), checked on the raw
    /// document by a scan independent of quick-xml: a stray `"` would end the value early and
    /// turn the rest of the caller's text into markup.
    #[test]
    fn attribute_values_are_fully_escaped_in_the_raw_document(
        action in xml_text(),
        url in xml_text(),
        greeting in xml_text(),
        name in xml_text(),
        value in xml_text(),
    ) {
        let attributes = vec![("welcomeGreeting".to_owned(), greeting.clone())];
        let parameters = vec![(name.clone(), value.clone())];
        let xml = ConnectRelay {
            action: &action,
            url: &url,
            attributes: &attributes,
            languages: &[],
            parameters: &parameters,
        }
        .to_xml();
        parse(&xml)?;
        let (values, texts) = decoded_parts(&xml)?;
        // The XML declaration's pseudo-attributes come first.
        prop_assert_eq!(
            values,
            vec!["1.0".to_owned(), "UTF-8".to_owned(), action, url, greeting, name, value]
        );
        prop_assert!(texts.is_empty(), "unexpected text {:?}", texts);
    }

    /// What the agent says last is model or operator text; it must reach `<Say>` exactly (the
    /// parser trims, hence `trim`), and a blank text must not produce an empty `<Say>`.
    #[test]
    fn say_text_round_trips(text in xml_text()) {
        let xml = twiml::say_and_hang_up(Some(&text));
        let root = parse(&xml)?;
        let (_, texts) = decoded_parts(&xml)?;
        if text.trim().is_empty() {
            prop_assert!(root.find("Say").is_none());
            prop_assert!(texts.is_empty());
        } else {
            prop_assert_eq!(root.find("Say").expect("<Say>").text.as_str(), text.trim());
            prop_assert_eq!(texts, vec![text.clone()]);
        }
        prop_assert!(root.find("Hangup").is_some());
    }

    /// The Studio return URL carries summary and reason in its query; the `<Redirect>` text must
    /// give Twilio back exactly that URL.
    #[test]
    fn redirect_text_round_trips(url in xml_text()) {
        let xml = twiml::redirect(&url);
        let root = parse(&xml)?;
        let redirect = root.find("Redirect").expect("<Redirect>");
        prop_assert_eq!(redirect.text.as_str(), url.trim());
        prop_assert_eq!(redirect.attr("method"), Some("POST"));
        let (_, texts) = decoded_parts(&xml)?;
        let expected: Vec<String> = if url.is_empty() { vec![] } else { vec![url.clone()] };
        prop_assert_eq!(texts, expected);
    }

    /// Flex task attributes are JSON full of caller text inside `<Task>`; TaskRouter must get the
    /// JSON exactly, or the task fails to be created and the caller waits forever.
    #[test]
    fn enqueue_task_round_trips(sid in xml_text(), attributes in xml_text()) {
        let xml = twiml::enqueue_task(&sid, &attributes);
        let root = parse(&xml)?;
        prop_assert_eq!(
            root.find("Enqueue").expect("<Enqueue>").attr("workflowSid"),
            Some(sid.as_str())
        );
        prop_assert_eq!(root.find("Task").expect("<Task>").text.as_str(), attributes.trim());
        let (values, texts) = decoded_parts(&xml)?;
        prop_assert_eq!(values, vec!["1.0".to_owned(), "UTF-8".to_owned(), sid]);
        let expected: Vec<String> = if attributes.is_empty() { vec![] } else { vec![attributes] };
        prop_assert_eq!(texts, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// X-Twilio-Signature
// ---------------------------------------------------------------------------------------------

/// Hosts, including IPv6 literals (whose `:` must not be taken for a port).
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,6}){0,2}",
        "\\[[0-9a-f]{1,4}(:[0-9a-f]{0,4}){1,4}\\]",
    ]
}

/// Scheme and its default port.
fn scheme() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop_oneof![
        Just(("https", "443")),
        Just(("wss", "443")),
        Just(("http", "80")),
        Just(("ws", "80")),
    ]
}

/// Path, query and fragment after the authority (possibly empty).
fn path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9._~-]{0,8}){0,3}(\\?[a-z]{1,5}=[a-z0-9:]{0,5}(&[a-z]{1,5}=[a-z0-9]{0,5}){0,2})?"
}

proptest! {
    /// Twilio sorts the parameters itself; the order they reach us in must not matter, or
    /// genuine requests would be rejected.
    #[test]
    fn canonical_ignores_parameter_order(
        url in any::<String>(),
        (params, shuffled) in params().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
    ) {
        prop_assert_eq!(canonical(&url, &params), canonical(&url, &shuffled));
    }

    /// The canonical string is exactly Twilio's definition: URL, then the distinct `name + value`
    /// pairs by name bytes (case-sensitive, not locale order), then value.
    #[test]
    fn canonical_matches_its_definition(url in any::<String>(), params in params()) {
        prop_assert_eq!(canonical(&url, &params), canonical_model(&url, &params));
    }

    /// A parameter repeated verbatim counts once (twilio-python's `sorted(set(values))`).
    #[test]
    fn canonical_deduplicates_identical_pairs(url in any::<String>(), params in params()) {
        let mut doubled = params.clone();
        doubled.extend(params.iter().cloned());
        prop_assert_eq!(canonical(&url, &doubled), canonical(&url, &params));
    }

    /// Our own signatures verify (the simulator relies on it), under any token, URL and
    /// parameters.
    #[test]
    fn sign_then_matches(token in any::<String>(), url in any::<String>(), params in params()) {
        let signature = sign(&token, &url, &params);
        prop_assert!(matches(&token, &url, &params, &signature));
    }

    /// A signature made with another auth token, or over a changed parameter value, is
    /// rejected: that is the whole point of the check. Tokens are shaped like Twilio's (32 hex
    /// digits): HMAC zero-pads short keys, so `"k"` and `"k\0"` are the same key by design.
    #[test]
    fn forged_or_tampered_requests_do_not_match(
        token in "[0-9a-f]{32}",
        other in "[0-9a-f]{32}",
        url in any::<String>(),
        params in prop::collection::vec(("[^\\x00]{1,10}", any::<String>()), 1..8),
        index in any::<prop::sample::Index>(),
        suffix in ".{1,4}",
    ) {
        prop_assume!(token != other);
        let signature = sign(&token, &url, &params);
        prop_assert!(!matches(&other, &url, &params, &signature));

        // Appending to one value always changes the canonical string when names are non-empty.
        let mut tampered = params.clone();
        let i = index.index(tampered.len());
        tampered[i].1.push_str(&suffix);
        prop_assert_ne!(canonical(&url, &tampered), canonical(&url, &params));
        prop_assert!(!matches(&token, &url, &tampered, &signature));
    }

    /// Twilio is inconsistent about writing the default port: a request signed over
    /// `https://host:443/path` must verify at `https://host/path`, and the other way round.
    #[test]
    fn default_port_variants_verify_both_ways(
        token in "[0-9a-f]{32}",
        (scheme, port) in scheme(),
        host in host(),
        path in path(),
        params in params(),
    ) {
        let bare = format!("{scheme}://{host}{path}");
        let with_port = format!("{scheme}://{host}:{port}{path}");
        prop_assert!(matches(&token, &bare, &params, &sign(&token, &with_port, &params)));
        prop_assert!(matches(&token, &with_port, &params, &sign(&token, &bare, &params)));
    }

    /// Only the default port is optional: a signature over another port is not valid for the
    /// bare URL (that would be a different server).
    #[test]
    fn other_ports_are_not_interchangeable(
        token in "[0-9a-f]{32}",
        (scheme, default) in scheme(),
        host in host(),
        port in 1u16..,
        path in path(),
        params in params(),
    ) {
        prop_assume!(port.to_string() != default);
        let bare = format!("{scheme}://{host}{path}");
        let with_port = format!("{scheme}://{host}:{port}{path}");
        prop_assert!(!matches(&token, &bare, &params, &sign(&token, &with_port, &params)));
        prop_assert!(!matches(&token, &with_port, &params, &sign(&token, &bare, &params)));
    }
}

// ---------------------------------------------------------------------------------------------
// Studio
// ---------------------------------------------------------------------------------------------

/// A Studio flow webhook URL, with or without a query of its own.
fn flow_url() -> impl Strategy<Value = url::Url> {
    (
        "[0-9a-f]{32}",
        prop_oneof![
            Just(String::new()),
            Just("?".to_owned()),
            "\\?[a-z]{1,5}=[a-z0-9]{1,5}&?",
        ],
    )
        .prop_map(|(id, query)| {
            url::Url::parse(&format!(
                "https://webhooks.twilio.com/v1/Accounts/AC{id}/Flows/FW{id}{query}"
            ))
            .expect("valid flow URL")
        })
}

proptest! {
    /// Studio pastes these values into the JSON string of its send-to-flex attributes: a `"`,
    /// `\` or control character there breaks the JSON and the Flex task is never created.
    #[test]
    fn studio_safe_values_are_json_string_safe(raw in json_hostile()) {
        let safe = studio_safe(&raw);
        prop_assert!(
            !safe.chars().any(|c| c == '"' || c == '\\' || c.is_control()),
            "{:?} -> {:?}",
            raw,
            safe
        );
        // One character for one: nothing is dropped, so nothing shifts meaning.
        prop_assert_eq!(safe.chars().count(), raw.chars().count());
        let literal = format!("\"{safe}\"");
        let back: String = serde_json::from_str(&literal)
            .map_err(|e| TestCaseError::fail(format!("{e}: {literal}")))?;
        prop_assert_eq!(&back, &safe);
        let object = format!("{{\"summary\":\"{safe}\",\"type\":\"inbound\"}}");
        let back: serde_json::Value = serde_json::from_str(&object)
            .map_err(|e| TestCaseError::fail(format!("{e}: {object}")))?;
        prop_assert_eq!(back["summary"].as_str(), Some(safe.as_str()));
        prop_assert_eq!(back["type"].as_str(), Some("inbound"));
        // Sanitising twice changes nothing.
        prop_assert_eq!(studio_safe(&safe), safe);
    }

    /// The return URL hands Studio exactly the sanitised values, after the flow's own query and
    /// `FlowEvent=return`, whatever the caller said.
    #[test]
    fn studio_return_url_carries_sanitised_values(
        flow in flow_url(),
        params in prop::collection::vec(("[a-zA-Z]{1,8}", json_hostile()), 0..5),
    ) {
        let borrowed: Vec<(&str, &str)> =
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = studio_return_url(&flow, &borrowed);
        let parsed = url::Url::parse(&out)
            .map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        prop_assert_eq!(parsed.path(), flow.path());
        let mut expected: Vec<(String, String)> = flow.query_pairs().into_owned().collect();
        expected.push(("FlowEvent".into(), "return".into()));
        expected.extend(params.iter().map(|(k, v)| (k.clone(), studio_safe(v))));
        let got: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        prop_assert_eq!(got, expected);
    }

    /// The redirect back to Studio must stay under Twilio's 4000-character TwiML cap however long
    /// the summary is, and keep `FlowEvent`, `handoff` and `callSid` intact.
    #[test]
    fn studio_redirect_fits_and_keeps_the_essentials(
        flow in flow_url(),
        reason in prop_oneof![json_hostile(), "\\PC{0,2000}"],
        summary in prop_oneof![json_hostile(), "\\PC{0,3000}", "[&<\"]{0,3000}"],
        call_sid in "CA[0-9a-f]{32}",
    ) {
        let data = HandoffData {
            reason_code: relaybot::handoff::REASON_HANDOFF.into(),
            reason: reason.clone(),
            summary: summary.clone(),
            call_sid: call_sid.clone(),
            from: String::new(),
            transcript: vec![],
        };
        let xml = studio_redirect_twiml(&flow, &data);
        prop_assert!(
            xml.chars().count() <= relaybot::handoff::MAX_TWIML_CHARS,
            "{} chars",
            xml.chars().count()
        );
        let root = parse(&xml)?;
        let text = root.find("Redirect").expect("<Redirect>").text.clone();
        let url = url::Url::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let get = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        prop_assert_eq!(get("FlowEvent"), Some("return".to_owned()));
        prop_assert_eq!(get("handoff"), Some("agent".to_owned()));
        prop_assert_eq!(get("callSid"), Some(call_sid));
        // Reason and summary are the sanitised text, possibly shortened with an ellipsis.
        for (name, original) in [("reason", &reason), ("summary", &summary)] {
            let got = get(name).unwrap_or_default();
            let full = studio_safe(original);
            let prefix = got.strip_suffix('…').unwrap_or(&got);
            prop_assert!(
                got == full || (got.ends_with('…') && full.starts_with(prefix)),
                "{}: {:?} is not a shortening of {:?}",
                name,
                got,
                full
            );
        }
    }
}
