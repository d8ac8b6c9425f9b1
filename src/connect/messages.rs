//! What relaybot says back to Lex: its reply as Lex V2 messages (PlainText or SSML, within
//! Lex's per-message and per-response limits) and session-attribute values (flat, short
//! strings). Source: handoff.md §4.2.

use super::{event, MAX_MESSAGES, MAX_MESSAGE_CHARS};
use crate::handoff::shorten;

/// `text` as Lex messages: `PlainText`, or `SSML` (`<speak>` + escaped text + `</speak>`);
/// each at most [`MAX_MESSAGE_CHARS`] (markup included), at most [`MAX_MESSAGES`] (the rest is
/// cut). Never empty: Lex requires a message with `ElicitIntent`.
pub fn messages(text: &str, ssml: bool) -> Vec<event::ResponseMessage> {
    let text = if text.trim().is_empty() { "…" } else { text };
    let mut parts = if ssml {
        split(text, MAX_MESSAGE_CHARS - "<speak></speak>".len(), |c| {
            xml_escape(c.encode_utf8(&mut [0; 4])).chars().count()
        })
    } else {
        split(text, MAX_MESSAGE_CHARS, |_| 1)
    };
    if parts.len() > MAX_MESSAGES {
        tracing::warn!(
            parts = parts.len(),
            "a reply longer than ten Lex messages; the rest is cut"
        );
        parts.truncate(MAX_MESSAGES);
        let last = parts.last_mut().expect("ten parts");
        let keep: String = last.chars().take(last.chars().count() - 1).collect();
        *last = keep + "…";
    }
    parts
        .into_iter()
        .map(|part| {
            if ssml {
                event::ResponseMessage {
                    content_type: "SSML".into(),
                    content: format!("<speak>{}</speak>", xml_escape(&part)),
                }
            } else {
                event::ResponseMessage {
                    content_type: "PlainText".into(),
                    content: part,
                }
            }
        })
        .collect()
}

/// `text` in parts whose `cost` adds up to at most `max`, cut after a sentence where one ends
/// in the second half of a part, else after a word, else anywhere.
fn split(text: &str, max: usize, cost: impl Fn(char) -> usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut used = 0;
        let mut end = rest.len();
        let mut sentence = None;
        let mut word = None;
        let mut previous = ' ';
        for (i, c) in rest.char_indices() {
            let n = cost(c);
            if used + n > max {
                end = i;
                break;
            }
            if c.is_whitespace() {
                if matches!(previous, '.' | '!' | '?') || c == '\n' {
                    sentence = Some((i, used));
                }
                word = Some(i);
            }
            used += n;
            previous = c;
        }
        if end < rest.len() {
            end = match (sentence, word) {
                (Some((at, upto)), _) if upto > max / 2 => at,
                (_, Some(at)) if at > 0 => at,
                _ => end,
            };
        }
        if end == 0 {
            // A single character over the limit: take it anyway (cannot happen with Lex's
            // limits, but the loop must move on).
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        parts.push(rest[..end].trim_end().to_owned());
        rest = rest[end..].trim_start();
    }
    parts
}

/// `text` escaped for XML character data and attributes.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A session-attribute value: control characters (newlines included) become spaces, runs of
/// spaces one, at most `max` characters.
pub(super) fn attribute_text(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    shorten(&flat.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_within_lex_limits_and_escaped_for_ssml() {
        let plain = messages("Hello there.", false);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].content_type, "PlainText");
        assert_eq!(plain[0].content, "Hello there.");
        let ssml = messages("Fish & chips <today>.", true);
        assert_eq!(ssml[0].content_type, "SSML");
        assert_eq!(
            ssml[0].content,
            "<speak>Fish &amp; chips &lt;today&gt;.</speak>"
        );
        let long = "Sentence number one is here. ".repeat(120);
        let parts = messages(&long, false);
        assert!(parts.len() > 1);
        assert!(parts
            .iter()
            .all(|m| (1..=MAX_MESSAGE_CHARS).contains(&m.content.chars().count())));
        assert!(parts[0].content.ends_with('.'), "cut after a sentence");
        let amps = "&".repeat(3000);
        let parts = messages(&amps, true);
        assert!(parts
            .iter()
            .all(|m| m.content.chars().count() <= MAX_MESSAGE_CHARS));
        let huge = "word ".repeat(5000);
        let parts = messages(&huge, false);
        assert_eq!(parts.len(), MAX_MESSAGES);
        assert!(parts.last().unwrap().content.ends_with('…'));
        assert_eq!(messages("  ", false)[0].content, "…");
        let unbroken = "é".repeat(2500);
        let parts = messages(&unbroken, false);
        assert_eq!(
            parts
                .iter()
                .map(|m| m.content.chars().count())
                .collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
    }

    #[test]
    fn attribute_values_are_flat_and_short() {
        assert_eq!(attribute_text(" a\nb\t\tc ", 10), "a b c");
        assert_eq!(attribute_text(&"x".repeat(300), 256).chars().count(), 256);
    }
}
