//! TwiML documents we answer Twilio with, written with `quick-xml` (never by string
//! concatenation): attribute values escape `"`, `'`, `&`, `<`, `>`; text nodes `&`, `<`, `>`.
//!
//! Shapes: `<Connect>` (<https://www.twilio.com/docs/voice/twiml/connect>) and
//! `<ConversationRelay>` with its `<Language>` and `<Parameter>` children
//! (<https://www.twilio.com/docs/voice/twiml/connect/conversationrelay>).

use std::io::Cursor;

use quick_xml::{
    events::{BytesDecl, BytesText, Event},
    Writer,
};
use serde::{Deserialize, Serialize};

/// One `<Language>` child: a language the session may switch to, with its own voice settings.
///
/// Deserialised from the `CR_LANGUAGES` setting, a JSON array such as
/// `[{"code":"es-ES","ttsProvider":"Google","voice":"es-ES-Neural2-A"}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LanguageElement {
    /// BCP-47 code (`es-ES`) or `multi`. Required.
    pub code: String,
    /// `Google`, `Amazon` or `ElevenLabs`; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_provider: Option<String>,
    /// Provider-specific voice id; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// `Google` or `Deepgram`; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription_provider: Option<String>,
    /// Provider-specific STT model; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_model: Option<String>,
}

impl LanguageElement {
    fn attributes(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("code", self.code.as_str())];
        let optional = [
            ("ttsProvider", &self.tts_provider),
            ("voice", &self.voice),
            ("transcriptionProvider", &self.transcription_provider),
            ("speechModel", &self.speech_model),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (k, v))),
        );
        out
    }
}

/// Everything in a `<Connect><ConversationRelay>` answer.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRelay<'a> {
    /// Absolute URL Twilio requests when the session ends (`<Connect action>`).
    pub action: &'a str,
    /// The `wss://…/ws` URL of our WebSocket (query included).
    pub url: &'a str,
    /// `<ConversationRelay>` attributes (name, value), emitted in this order; `url` comes first.
    pub attributes: &'a [(String, String)],
    /// `<Language>` children.
    pub languages: &'a [LanguageElement],
    /// `<Parameter>` children (name, value), which Twilio passes on as `setup.customParameters`.
    pub parameters: &'a [(String, String)],
}

/// XML 1.0 cannot carry most control characters even escaped; drop them so a stray byte in a
/// setting or a caller parameter can never make the document invalid.
fn clean(value: &str) -> std::borrow::Cow<'_, str> {
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        value
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
            .collect::<String>()
            .into()
    } else {
        value.into()
    }
}

/// A text node: `<`, `>` and `&` escaped; quotes left readable (they need no escaping in text,
/// and the JSON inside `<Task>` stays legible).
fn text(value: &str) -> BytesText<'static> {
    BytesText::from_escaped(
        quick_xml::escape::partial_escape(clean(value).into_owned()).into_owned(),
    )
}

fn document(body: impl FnOnce(&mut Writer<Cursor<Vec<u8>>>) -> std::io::Result<()>) -> String {
    let mut writer = Writer::new(Cursor::new(Vec::new()));
    // Writing to an in-memory buffer cannot fail.
    writer
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .expect("in-memory write");
    body(&mut writer).expect("in-memory write");
    String::from_utf8(writer.into_inner().into_inner()).expect("quick-xml writes UTF-8")
}

impl ConnectRelay<'_> {
    /// `<Response><Connect action=…><ConversationRelay url=… …>children</ConversationRelay></Connect></Response>`.
    pub fn to_xml(&self) -> String {
        document(|w| {
            w.create_element("Response").write_inner_content(|w| {
                w.create_element("Connect")
                    .with_attribute(("action", clean(self.action).as_ref()))
                    .write_inner_content(|w| {
                        let mut attrs = vec![("url".to_owned(), clean(self.url).into_owned())];
                        attrs.extend(
                            self.attributes
                                .iter()
                                .map(|(k, v)| (k.clone(), clean(v).into_owned())),
                        );
                        let relay = w
                            .create_element("ConversationRelay")
                            .with_attributes(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                        if self.languages.is_empty() && self.parameters.is_empty() {
                            relay.write_empty()?;
                            return Ok(());
                        }
                        relay.write_inner_content(|w| {
                            for language in self.languages {
                                let attrs: Vec<(&str, String)> = language
                                    .attributes()
                                    .into_iter()
                                    .map(|(k, v)| (k, clean(v).into_owned()))
                                    .collect();
                                w.create_element("Language")
                                    .with_attributes(attrs.iter().map(|(k, v)| (*k, v.as_str())))
                                    .write_empty()?;
                            }
                            for (name, value) in self.parameters {
                                w.create_element("Parameter")
                                    .with_attribute(("name", clean(name).as_ref()))
                                    .with_attribute(("value", clean(value).as_ref()))
                                    .write_empty()?;
                            }
                            Ok(())
                        })?;
                        Ok(())
                    })?;
                Ok(())
            })?;
            Ok(())
        })
    }
}

/// `<Response/>`: nothing more to do (for example after the caller hung up).
pub fn empty_response() -> String {
    document(|w| {
        w.create_element("Response").write_empty()?;
        Ok(())
    })
}

/// `<Response><Say>text</Say><Hangup/></Response>`; with no text, just `<Hangup/>`.
pub fn say_and_hang_up(text: Option<&str>) -> String {
    document(|w| {
        w.create_element("Response").write_inner_content(|w| {
            if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
                w.create_element("Say")
                    .write_text_content(self::text(text))?;
            }
            w.create_element("Hangup").write_empty()?;
            Ok(())
        })?;
        Ok(())
    })
}

/// `<Response><Say>text</Say>…</Response>`: `text` spoken before the verbs of `then`, a TwiML
/// document of ours.
pub fn say_then(text: &str, then: &str) -> String {
    let mut root = parse(then).unwrap_or_else(|_| Element {
        name: "Response".into(),
        ..Element::default()
    });
    root.children.insert(
        0,
        Element {
            name: "Say".into(),
            text: text.to_owned(),
            ..Element::default()
        },
    );
    root.to_xml()
}

/// `<Response><Redirect method="POST">url</Redirect></Response>`: continue the call at `url`
/// (for example a Studio flow with `FlowEvent=return`).
pub fn redirect(url: &str) -> String {
    document(|w| {
        w.create_element("Response").write_inner_content(|w| {
            w.create_element("Redirect")
                .with_attribute(("method", "POST"))
                .write_text_content(text(url))?;
            Ok(())
        })?;
        Ok(())
    })
}

/// `<Response><Enqueue workflowSid="WW…"><Task>attributes</Task></Enqueue></Response>`: put the
/// caller in a TaskRouter workflow (Flex) with `attributes` (a JSON text) on the task.
pub fn enqueue_task(workflow_sid: &str, attributes: &str) -> String {
    document(|w| {
        w.create_element("Response").write_inner_content(|w| {
            w.create_element("Enqueue")
                .with_attribute(("workflowSid", clean(workflow_sid).as_ref()))
                .write_inner_content(|w| {
                    w.create_element("Task")
                        .write_text_content(text(attributes))?;
                    Ok(())
                })?;
            Ok(())
        })?;
        Ok(())
    })
}

/// A parsed TwiML element: enough of a DOM to read a document Twilio would execute (the
/// simulator and the tests use it; the server only writes TwiML).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Tag name, for example `ConversationRelay`.
    pub name: String,
    /// Attributes in document order, unescaped.
    pub attributes: Vec<(String, String)>,
    /// Child elements.
    pub children: Vec<Element>,
    /// Text content directly inside the element, unescaped and trimmed.
    pub text: String,
}

impl Element {
    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first descendant (depth-first, self included) named `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Writes the element as a TwiML document.
    pub fn to_xml(&self) -> String {
        fn write(w: &mut Writer<Cursor<Vec<u8>>>, e: &Element) -> std::io::Result<()> {
            let attrs: Vec<(String, String)> = e
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), clean(v).into_owned()))
                .collect();
            let start = w
                .create_element(e.name.as_str())
                .with_attributes(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if e.children.is_empty() && e.text.is_empty() {
                start.write_empty()?;
            } else if e.children.is_empty() {
                start.write_text_content(text(&e.text))?;
            } else {
                start.write_inner_content(|w| {
                    if !e.text.is_empty() {
                        w.write_event(Event::Text(text(&e.text)))?;
                    }
                    for child in &e.children {
                        write(w, child)?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        }
        document(|w| write(w, self))
    }

    /// Direct children named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The `<Parameter name=… value=…>` children, name → value, as Twilio passes them on in
    /// `setup.customParameters`: a `<Parameter>` without `name` is skipped, one without `value`
    /// maps to the empty string, and a repeated name keeps its last value.
    pub fn parameters(&self) -> std::collections::BTreeMap<String, String> {
        self.children_named("Parameter")
            .filter_map(|p| {
                Some((
                    p.attr("name")?.to_owned(),
                    p.attr("value").unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }
}

/// Parses a TwiML document into its root element.
///
/// # Errors
/// A message when the text is not well-formed XML or has no root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    use quick_xml::{events::BytesStart, Reader};

    fn element(start: &BytesStart<'_>) -> Result<Element, String> {
        let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let mut attributes = Vec::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| format!("bad attribute in <{name}>: {e}"))?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            let value = attr
                .unescape_value()
                .map_err(|e| format!("bad attribute value in <{name}>: {e}"))?
                .into_owned();
            attributes.push((key, value));
        }
        Ok(Element {
            name,
            attributes,
            ..Element::default()
        })
    }

    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "not well-formed XML at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(start) => stack.push(element(&start)?),
            Event::Empty(start) => {
                let done = element(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::End(_) => {
                let mut done = stack.pop().ok_or("unbalanced end tag")?;
                done.text = done.text.trim().to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(text) => {
                if let Some(current) = stack.last_mut() {
                    let text = text.decode().map_err(|e| format!("bad text: {e}"))?;
                    let text =
                        quick_xml::escape::unescape(&text).map_err(|e| format!("bad text: {e}"))?;
                    current.text.push_str(&text);
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(current) = stack.last_mut() {
                    let name = reference.decode().map_err(|e| format!("bad entity: {e}"))?;
                    let entity = format!("&{name};");
                    let text = quick_xml::escape::unescape(&entity)
                        .map_err(|e| format!("bad entity: {e}"))?;
                    current.text.push_str(&text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_relay_escapes_every_value() {
        let attrs = vec![(
            "welcomeGreeting".to_owned(),
            r#"Hi "you" & 'me' <tag>"#.to_owned(),
        )];
        let params = vec![("From".to_owned(), "+1555\u{1}<x>".to_owned())];
        let xml = ConnectRelay {
            action: "https://h.example/action?a=1&b=2",
            url: "wss://h.example/ws?t=a&u=b",
            attributes: &attrs,
            languages: &[LanguageElement {
                code: "es-ES".into(),
                tts_provider: Some("Google".into()),
                voice: None,
                transcription_provider: None,
                speech_model: None,
            }],
            parameters: &params,
        }
        .to_xml();
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect action="https://h.example/action?a=1&amp;b=2">"#,
                r#"<ConversationRelay url="wss://h.example/ws?t=a&amp;u=b" welcomeGreeting="Hi &quot;you&quot; &amp; &apos;me&apos; &lt;tag&gt;">"#,
                r#"<Language code="es-ES" ttsProvider="Google"/>"#,
                r#"<Parameter name="From" value="+1555&lt;x&gt;"/>"#,
                r#"</ConversationRelay></Connect></Response>"#
            )
        );
    }

    #[test]
    fn documents_we_write_parse_back() {
        let attrs = vec![(
            "welcomeGreeting".to_owned(),
            "Tom & \"Jerry\" <3".to_owned(),
        )];
        let params = vec![("From".to_owned(), "+1 & co".to_owned())];
        let xml = ConnectRelay {
            action: "https://h/action",
            url: "wss://h/ws?a=1&b=2",
            attributes: &attrs,
            languages: &[],
            parameters: &params,
        }
        .to_xml();
        let root = parse(&xml).unwrap();
        assert_eq!(root.name, "Response");
        let relay = root.find("ConversationRelay").unwrap();
        assert_eq!(relay.attr("url"), Some("wss://h/ws?a=1&b=2"));
        assert_eq!(relay.attr("welcomeGreeting"), Some("Tom & \"Jerry\" <3"));
        assert_eq!(
            relay
                .children_named("Parameter")
                .next()
                .unwrap()
                .attr("value"),
            Some("+1 & co")
        );
        let say = parse(&say_and_hang_up(Some("A & B"))).unwrap();
        assert_eq!(say.find("Say").unwrap().text, "A & B");
        assert!(parse("<Response><Say>").is_err());
    }

    #[test]
    fn redirect_and_enqueue_escape_their_content() {
        let doc = redirect("https://w.example/F?FlowEvent=return&a=1");
        assert!(doc.contains(
            r#"<Redirect method="POST">https://w.example/F?FlowEvent=return&amp;a=1</Redirect>"#
        ));
        let doc = enqueue_task("WW1", r#"{"name":"A & <B>"}"#);
        let root = parse(&doc).unwrap();
        assert_eq!(
            root.find("Enqueue").unwrap().attr("workflowSid"),
            Some("WW1")
        );
        assert_eq!(root.find("Task").unwrap().text, r#"{"name":"A & <B>"}"#);
    }

    #[test]
    fn say_then_puts_a_line_before_other_verbs() {
        let doc = say_then("Busy & sorry", &enqueue_task("WW1", r#"{"a":"<b>"}"#));
        let root = parse(&doc).unwrap();
        assert_eq!(root.children[0].name, "Say");
        assert_eq!(root.children[0].text, "Busy & sorry");
        assert_eq!(root.children[1].name, "Enqueue");
        assert_eq!(root.find("Task").unwrap().text, r#"{"a":"<b>"}"#);
    }

    #[test]
    fn hang_up_documents() {
        assert_eq!(
            say_and_hang_up(Some("Bye & thanks")),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Bye &amp; thanks</Say><Hangup/></Response>"#
        );
        assert_eq!(
            say_and_hang_up(None),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#
        );
        assert_eq!(
            empty_response(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
        );
    }

    #[test]
    fn parameters_map_names_to_values() {
        let root = parse(
            r#"<ConversationRelay url="wss://h/ws"><Language code="fr-FR"/><Parameter name="a" value="1 &amp; 2"/><Parameter name="b"/><Parameter value="nameless"/><Parameter name="a" value="3"/></ConversationRelay>"#,
        )
        .unwrap();
        let parameters = root.parameters();
        assert_eq!(parameters.len(), 2);
        assert_eq!(parameters["a"], "3");
        assert_eq!(parameters["b"], "");
    }
}
