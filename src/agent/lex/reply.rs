//! What a `RecognizeText` answer means for the customer: the text of Lex's messages, the intent
//! as relaybot reads it, and the rules that turn it into a handoff, an end or an offer of a
//! person. Pure functions on plain data (no SDK types past [`Answer::from_output`]), so every
//! rule is tested on its own.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_lexruntimev2::{
    operation::recognize_text::RecognizeTextOutput,
    types::{ImageResponseCard, MessageContentType, Slot},
};

use crate::{agent::Departure, config::LexConfig};

/// Lex's built-in "I did not understand" intent.
pub const FALLBACK_INTENT: &str = "FallbackIntent";

/// The intent Lex reports in `sessionState.intent`, as relaybot reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentInfo {
    /// `name`.
    pub name: String,
    /// `state` (`InProgress`, `Fulfilled`, `ReadyForFulfillment`, `Failed`, …), if given.
    pub state: Option<String>,
    /// `confirmationState` (`None`, `Confirmed`, `Denied`), if given.
    pub confirmation: Option<String>,
    /// Filled slots, by name (unfilled ones are absent), with their values as text.
    pub slots: BTreeMap<String, String>,
}

/// One `RecognizeText` answer, reduced to what relaybot acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The texts to send, one per Lex message that has any, in Lex's order.
    pub texts: Vec<String>,
    /// `sessionState.dialogAction.type`.
    pub dialog_action: Option<String>,
    /// `sessionState.intent`.
    pub intent: Option<IntentInfo>,
    /// `sessionState.sessionAttributes` as Lex stored them.
    pub session_attributes: Option<HashMap<String, String>>,
}

impl Answer {
    /// Reads the SDK's output.
    pub fn from_output(output: &RecognizeTextOutput) -> Self {
        let texts = output
            .messages()
            .iter()
            .filter_map(|m| {
                message_text(
                    m.content_type(),
                    m.content(),
                    m.image_response_card().map(card_text).as_deref(),
                )
            })
            .collect();
        let state = output.session_state();
        let intent = state.and_then(|s| s.intent()).map(|intent| IntentInfo {
            name: intent.name().to_owned(),
            state: intent.state().map(|s| s.as_str().to_owned()),
            confirmation: intent.confirmation_state().map(|s| s.as_str().to_owned()),
            slots: intent
                .slots()
                .into_iter()
                .flatten()
                .filter_map(|(name, slot)| Some((name.clone(), slot_text(slot)?)))
                .collect(),
        });
        Answer {
            texts,
            dialog_action: state
                .and_then(|s| s.dialog_action())
                .map(|a| a.r#type().as_str().to_owned()),
            intent,
            session_attributes: state.and_then(|s| s.session_attributes()).cloned(),
        }
    }

    fn intent_name(&self) -> Option<&str> {
        self.intent.as_ref().map(|i| i.name.as_str())
    }

    fn intent_state(&self) -> Option<&str> {
        self.intent.as_ref().and_then(|i| i.state.as_deref())
    }

    /// Whether this is a "did not understand" turn: `FallbackIntent`, unless a code hook
    /// answered it (`Fulfilled`: bots that pass unmatched input to a Lambda, an LLM or a search
    /// use `FallbackIntent` for real answers).
    pub fn is_fallback(&self) -> bool {
        self.intent_name() == Some(FALLBACK_INTENT) && self.intent_state() != Some("Fulfilled")
    }
}

/// What relaybot does with an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Add the "offer a person" line after Lex's messages.
    pub offer_human: bool,
    /// Hand off or end once the messages are said.
    pub leave: Option<Departure>,
    /// `FallbackIntent` turns in a row after this one (what the next turn starts from).
    pub fallbacks: u32,
}

/// The rules (the README's table): a handoff intent hands off; `Close` with the intent
/// `Fulfilled` or `ReadyForFulfillment` ends (with `end_on_fulfilled`); `FallbackIntent`
/// `fallbacks_before_handoff` turns in a row offers a person (and the count starts again).
/// `fallbacks` is the count before this turn; `history` the customer's earlier lines, oldest
/// first (for the handoff summary).
pub fn plan(config: &LexConfig, answer: &Answer, fallbacks: u32, customer_lines: &[&str]) -> Plan {
    let mut fallbacks = if answer.is_fallback() {
        fallbacks.saturating_add(1)
    } else {
        0
    };
    let offer_human =
        config.fallbacks_before_handoff > 0 && fallbacks >= config.fallbacks_before_handoff;
    if offer_human {
        fallbacks = 0;
    }
    let leave = match &answer.intent {
        Some(intent) if is_handoff(config, intent) => Some(Departure::Handoff {
            reason: format!("Lex intent {}", intent.name),
            summary: summary(intent, customer_lines),
        }),
        Some(intent)
            if config.end_on_fulfilled
                && intent.name != FALLBACK_INTENT
                && answer.dialog_action.as_deref() == Some("Close")
                && matches!(
                    intent.state.as_deref(),
                    Some("Fulfilled" | "ReadyForFulfillment")
                ) =>
        {
            Some(Departure::End {
                reason: format!(
                    "Lex intent {} {}",
                    intent.name,
                    intent.state.as_deref().unwrap_or_default()
                ),
                by_customer_choice: true,
            })
        }
        _ => None,
    };
    Plan {
        offer_human: offer_human && leave.is_none(),
        leave,
        fallbacks,
    }
}

/// A handoff intent, unless the customer said no to it (`Denied`) or it failed.
fn is_handoff(config: &LexConfig, intent: &IntentInfo) -> bool {
    config.handoff_intents.contains(&intent.name)
        && intent.confirmation.as_deref() != Some("Denied")
        && intent.state.as_deref() != Some("Failed")
}

/// How many of the customer's latest lines go into a handoff summary.
const SUMMARY_LINES: usize = 3;
/// Longest customer line in a summary, in characters.
const SUMMARY_LINE_CHARS: usize = 200;

/// For the human agent: the intent, its filled slots, and the customer's last few lines.
pub fn summary(intent: &IntentInfo, customer_lines: &[&str]) -> String {
    let mut summary = format!("Lex intent: {}.", intent.name);
    if !intent.slots.is_empty() {
        let slots: Vec<String> = intent
            .slots
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        summary.push_str(&format!(" Slots: {}.", slots.join(", ")));
    }
    let start = customer_lines.len().saturating_sub(SUMMARY_LINES);
    let lines: Vec<String> = customer_lines[start..]
        .iter()
        .map(|line| format!("\"{}\"", cut_chars(line.trim(), SUMMARY_LINE_CHARS)))
        .collect();
    if !lines.is_empty() {
        summary.push_str(&format!(" The customer said: {}.", lines.join(" / ")));
    }
    summary
}

/// A slot's value as text: Lex's interpretation (or what the customer said, or the candidate
/// values of an ambiguous one); a list slot's values joined; sub-slots as `name.sub=value`.
fn slot_text(slot: &Slot) -> Option<String> {
    if !slot.values().is_empty() {
        let values: Vec<String> = slot.values().iter().filter_map(slot_text).collect();
        return (!values.is_empty()).then(|| values.join(", "));
    }
    if let Some(value) = slot.value() {
        let text = if !value.interpreted_value().is_empty() {
            value.interpreted_value().to_owned()
        } else if !value.resolved_values().is_empty() {
            value.resolved_values().join(" or ")
        } else {
            value.original_value().unwrap_or_default().to_owned()
        };
        return (!text.trim().is_empty()).then_some(text);
    }
    let subs: BTreeMap<&String, String> = slot
        .sub_slots()
        .into_iter()
        .flatten()
        .filter_map(|(name, sub)| Some((name, slot_text(sub)?)))
        .collect();
    (!subs.is_empty()).then(|| {
        subs.iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A Lex message as text: PlainText as is, SSML without its markup, a card (already
/// [`card_text`]) read out; CustomPayload and unknown types are not shown.
pub fn message_text(
    content_type: &MessageContentType,
    content: Option<&str>,
    card: Option<&str>,
) -> Option<String> {
    let text = match content_type {
        MessageContentType::PlainText => content.map(str::to_owned),
        MessageContentType::Ssml => content.map(ssml_to_text),
        MessageContentType::ImageResponseCard => card.map(str::to_owned),
        _ => None,
    }?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A response card read as text: "Title. Subtitle. Options: A, B, C."
pub fn card_text(card: &ImageResponseCard) -> String {
    let buttons: Vec<&str> = card
        .buttons()
        .iter()
        .map(|b| b.text().trim())
        .filter(|t| !t.is_empty())
        .collect();
    let options = (!buttons.is_empty()).then(|| format!("Options: {}", buttons.join(", ")));
    [
        Some(card.title().trim()).filter(|t| !t.is_empty()),
        card.subtitle().map(str::trim).filter(|t| !t.is_empty()),
        options.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(sentence)
    .collect::<Vec<_>>()
    .join(" ")
}

/// `text` ending in punctuation.
fn sentence(text: &str) -> String {
    if text.ends_with(['.', '!', '?', ':', ';']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// SSML as the words it speaks: tags dropped (a `<break>` or a paragraph end leaves a space),
/// the five XML entities decoded, white space collapsed.
pub fn ssml_to_text(ssml: &str) -> String {
    let mut text = String::with_capacity(ssml.len());
    let mut rest = ssml;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        match rest[open..].find('>') {
            Some(close) => {
                text.push(' ');
                rest = &rest[open + close + 1..];
            }
            None => {
                rest = "";
            }
        }
    }
    text.push_str(rest);
    let decoded = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let words: Vec<&str> = decoded.split_whitespace().collect();
    // Tags between a word and its punctuation leave a space before it: "Hi <break/>." → "Hi."
    words
        .join(" ")
        .replace(" .", ".")
        .replace(" ,", ",")
        .replace(" ?", "?")
        .replace(" !", "!")
}

/// At most `max` characters of `text`.
pub fn cut_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// At most `max` UTF-16 code units of `text` (how Lex counts its limits), cut at a character.
pub fn cut_utf16(text: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &text[..i];
        }
    }
    text
}

/// Lex's `sessionId` for a conversation id: `[0-9a-zA-Z._:-]`, 2 to 100 characters. Twilio SIDs
/// fit as they are; anything else becomes its allowed characters (up to 80) and a hash of the
/// whole id, so two ids never share a Lex session.
pub fn session_id(id: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if (2..=100).contains(&id.len()) && id.chars().all(allowed) {
        return id.to_owned();
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(id.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let kept: String = id.chars().filter(|c| allowed(*c)).take(80).collect();
    if kept.is_empty() {
        format!("s-{hex}")
    } else {
        format!("{kept}-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_lexruntimev2::types::Button;

    use super::*;

    fn config() -> LexConfig {
        LexConfig {
            bot_id: "B".into(),
            bot_alias_id: "A".into(),
            locale_id: "en_US".into(),
            endpoint_url: None,
            handoff_intents: vec!["Agent".into(), "Escalate".into()],
            end_on_fulfilled: true,
            fallbacks_before_handoff: 2,
            fallback_line: "Want a person?".into(),
        }
    }

    fn answer(intent: &str, state: &str, action: &str) -> Answer {
        Answer {
            texts: vec!["Hi.".into()],
            dialog_action: Some(action.into()),
            intent: Some(IntentInfo {
                name: intent.into(),
                state: Some(state.into()),
                confirmation: Some("None".into()),
                slots: BTreeMap::new(),
            }),
            session_attributes: None,
        }
    }

    #[test]
    fn handoff_intents_hand_off_with_a_summary() {
        let mut a = answer("Agent", "ReadyForFulfillment", "Close");
        a.intent
            .as_mut()
            .unwrap()
            .slots
            .insert("Topic".into(), "billing".into());
        let plan = plan(&config(), &a, 1, &["hello", "I was charged twice", "agent"]);
        assert_eq!(
            plan.leave,
            Some(Departure::Handoff {
                reason: "Lex intent Agent".into(),
                summary: "Lex intent: Agent. Slots: Topic=billing. The customer said: \
                          \"hello\" / \"I was charged twice\" / \"agent\"."
                    .into()
            })
        );
        assert_eq!(plan.fallbacks, 0);

        let mut denied = answer("Escalate", "Failed", "Close");
        denied.intent.as_mut().unwrap().confirmation = Some("Denied".into());
        assert_eq!(super::plan(&config(), &denied, 0, &[]).leave, None);
    }

    #[test]
    fn close_and_fulfilled_ends_unless_turned_off_or_a_fallback() {
        for state in ["Fulfilled", "ReadyForFulfillment"] {
            let plan = plan(&config(), &answer("OrderFlowers", state, "Close"), 0, &[]);
            assert!(matches!(
                plan.leave,
                Some(Departure::End {
                    by_customer_choice: true,
                    ..
                })
            ));
        }
        for (intent, state, action) in [
            ("OrderFlowers", "InProgress", "ElicitSlot"),
            ("OrderFlowers", "Failed", "Close"),
            ("OrderFlowers", "Fulfilled", "ElicitIntent"),
            // A fallback answered by a code hook is not the end of the conversation.
            ("FallbackIntent", "Fulfilled", "Close"),
            ("FallbackIntent", "ReadyForFulfillment", "Close"),
        ] {
            let plan = plan(&config(), &answer(intent, state, action), 0, &[]);
            assert_eq!(plan.leave, None, "{intent} {state} {action}");
        }
        let mut keep = config();
        keep.end_on_fulfilled = false;
        let a = answer("OrderFlowers", "Fulfilled", "Close");
        assert_eq!(super::plan(&keep, &a, 0, &[]).leave, None);
    }

    #[test]
    fn fallbacks_in_a_row_offer_a_person_then_count_again() {
        let fallback = answer("FallbackIntent", "ReadyForFulfillment", "Close");
        let first = plan(&config(), &fallback, 0, &[]);
        assert_eq!((first.offer_human, first.fallbacks), (false, 1));
        let second = plan(&config(), &fallback, first.fallbacks, &[]);
        assert_eq!((second.offer_human, second.fallbacks), (true, 0));
        let other = plan(
            &config(),
            &answer("Greet", "InProgress", "ElicitSlot"),
            1,
            &[],
        );
        assert_eq!((other.offer_human, other.fallbacks), (false, 0));
        let answered = answer("FallbackIntent", "Fulfilled", "Close");
        assert_eq!(plan(&config(), &answered, 1, &[]).fallbacks, 0);
        let mut off = config();
        off.fallbacks_before_handoff = 0;
        assert!(!super::plan(&off, &fallback, 7, &[]).offer_human);
    }

    #[test]
    fn messages_become_text() {
        use MessageContentType as T;
        assert_eq!(
            message_text(&T::PlainText, Some(" Hi there. "), None),
            Some("Hi there.".into())
        );
        assert_eq!(
            message_text(
                &T::Ssml,
                Some(
                    r#"<speak>Your total is <say-as interpret-as="currency">$5</say-as><break time="1s"/>. Tom &amp; Jerry</speak>"#
                ),
                None
            ),
            Some("Your total is $5. Tom & Jerry".into())
        );
        assert_eq!(
            message_text(&T::CustomPayload, Some(r#"{"templateType":"x"}"#), None),
            None
        );
        assert_eq!(message_text(&T::PlainText, Some("  "), None), None);
        assert_eq!(message_text(&T::from("NewKind"), Some("x"), None), None);
        let card = ImageResponseCard::builder()
            .title("Pick a flower")
            .subtitle("We have three")
            .buttons(
                Button::builder()
                    .text("Roses")
                    .value("roses")
                    .build()
                    .unwrap(),
            )
            .buttons(
                Button::builder()
                    .text("Tulips")
                    .value("tulips")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(
            card_text(&card),
            "Pick a flower. We have three. Options: Roses, Tulips."
        );
        assert_eq!(
            message_text(&T::ImageResponseCard, None, Some(&card_text(&card))),
            Some("Pick a flower. We have three. Options: Roses, Tulips.".into())
        );
    }

    #[test]
    fn limits_and_session_ids() {
        assert_eq!(cut_utf16("héllo", 3), "hél");
        assert_eq!(cut_utf16("a😀b", 2), "a", "a surrogate pair is not split");
        assert_eq!(cut_utf16("abc", 1024), "abc");
        assert_eq!(cut_chars("żółw", 2), "żó");
        let sid = format!("CA{}", "a".repeat(32));
        assert_eq!(session_id(&sid), sid);
        let odd = session_id("web widget/ü+1");
        assert!(odd.starts_with("webwidget1-") && odd.len() == "webwidget1-".len() + 16);
        assert_ne!(session_id("web widget/ü+1"), session_id("web widget/ü+2"));
        let long = session_id(&"x".repeat(300));
        assert!(long.len() <= 100, "{}", long.len());
        assert!(session_id("").starts_with("s-"));
        assert!(session_id("a").starts_with("a-"));
    }
}
