//! What a customer heard of a reply they cut off (voice barge-in): Twilio reports the words
//! played before the interrupt (`utteranceUntilInterrupt`), and the history keeps only those.

use super::Spoken;
use crate::agent::Message;

/// Cuts a turn's assistant messages to what the caller heard and marks them interrupted.
/// With no utterance (superseded), or one that cannot be found, everything sent counts as heard.
/// Returns where, in the turn's spoken text, the caller stopped hearing.
pub fn trim_to_heard(
    history: &mut Vec<Message>,
    spoken: &Spoken,
    utterance: Option<&str>,
) -> usize {
    let Some(utterance) = utterance else {
        return spoken.text.len();
    };
    let heard_end = heard_end(&spoken.text, utterance).unwrap_or(spoken.text.len());
    for &(index, offset) in spoken.spans.iter().rev() {
        let Some(Message::Assistant {
            content,
            tool_calls,
            interrupted,
        }) = history.get_mut(index)
        else {
            continue;
        };
        let keep = heard_end.saturating_sub(offset).min(content.len());
        let end = offset + content.len();
        if keep < content.len() || (offset <= heard_end && heard_end <= end) {
            let mut cut = keep;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
            *interrupted = true;
        }
        if content.is_empty() && tool_calls.is_empty() && index + 1 == history.len() {
            history.pop();
        }
    }
    heard_end
}

/// Where, in `spoken`, the caller's `utterance` ends: matched case- and whitespace-tolerantly,
/// then ignoring punctuation. `None` when it cannot be found.
pub fn heard_end(spoken: &str, utterance: &str) -> Option<usize> {
    if utterance.trim().is_empty() {
        return Some(0);
    }
    // Normalised text, and for each of its bytes the end (in `spoken`) of the source character.
    fn normalise(text: &str, keep: impl Fn(char) -> bool, spaces: bool) -> (String, Vec<usize>) {
        let mut out = String::new();
        let mut ends = Vec::new();
        let mut pending_space = false;
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if c.is_whitespace() {
                pending_space = spaces && !out.is_empty();
                continue;
            }
            if !keep(c) {
                continue;
            }
            if pending_space {
                out.push(' ');
                ends.push(i);
                pending_space = false;
            }
            for lower in c.to_lowercase() {
                let before = out.len();
                out.push(lower);
                ends.extend(std::iter::repeat_n(end, out.len() - before));
            }
        }
        (out, ends)
    }
    let attempts: [(&dyn Fn(char) -> bool, bool); 2] =
        [(&|_| true, true), (&|c: char| c.is_alphanumeric(), false)];
    for (keep, spaces) in attempts {
        let (text, ends) = normalise(spoken, keep, spaces);
        let (needle, _) = normalise(utterance, keep, spaces);
        if needle.is_empty() {
            continue;
        }
        if let Some(at) = text.find(&needle) {
            return Some(ends[at + needle.len() - 1]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_end_tolerates_case_whitespace_and_punctuation() {
        let spoken = "Life is a complex set of  experiences. More later.";
        assert_eq!(heard_end(spoken, "Life is a complex set of"), Some(24));
        assert_eq!(heard_end(spoken, "life IS a\ncomplex"), Some(17));
        assert_eq!(heard_end(spoken, "set of experiences"), Some(37));
        assert_eq!(heard_end(spoken, "Life, is a complex"), Some(17));
        assert_eq!(heard_end(spoken, "something else"), None);
        assert_eq!(heard_end(spoken, ""), Some(0));
        assert_eq!(
            heard_end("Ça va très bien", "ça va TRÈS"),
            Some("Ça va très".len())
        );
    }

    #[test]
    fn trimming_cuts_every_message_of_the_turn_and_drops_unheard_text() {
        let mut history = vec![
            Message::User {
                content: "q".into(),
            },
            Message::Assistant {
                content: "Let me check. ".into(),
                tool_calls: vec![crate::agent::ToolCall {
                    id: "c".into(),
                    name: "t".into(),
                    arguments: "{}".into(),
                }],
                interrupted: false,
            },
            Message::Tool {
                tool_call_id: "c".into(),
                content: "r".into(),
            },
            Message::assistant("Your order ships Monday."),
        ];
        let spoken = Spoken {
            text: "Let me check. One moment. Your order ships Monday.".into(),
            spans: vec![(1, 0), (3, 26)],
            transcript_line: None,
        };
        trim_to_heard(
            &mut history,
            &spoken,
            Some("Let me check. One moment. Your order"),
        );
        assert_eq!(
            history[3],
            Message::Assistant {
                content: "Your order".into(),
                tool_calls: vec![],
                interrupted: true
            }
        );
        let mut again = history.clone();
        again[3] = Message::assistant("Your order ships Monday.");
        trim_to_heard(&mut again, &spoken, Some("Let me"));
        assert_eq!(again.len(), 3, "an unheard text-only reply is dropped");
        let Message::Assistant {
            content,
            interrupted,
            ..
        } = &again[1]
        else {
            panic!()
        };
        assert_eq!((content.as_str(), *interrupted), ("Let me", true));
    }
}
