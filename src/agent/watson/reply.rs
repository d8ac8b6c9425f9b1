//! Watson's `output` read for one channel (channels-and-bots.md §1.7): each `output.generic`
//! item becomes words to say, a pause, or a request to leave; options and suggestions are kept
//! so the customer's next words (a label, or its number) pick one.
//!
//! | `response_type` | voice | chat |
//! |---|---|---|
//! | `text`, `conversational_search` | said | posted |
//! | `option` | title, description, "Options: A, B or C." | same |
//! | `suggestion` | title and the labels | same |
//! | `search` | header and the top result | same, with its link |
//! | `pause` | skipped | waited (bounded) |
//! | `connect_to_agent` | `agent_available.message`, then a handoff | same |
//! | `end_session` | the conversation ends | same |
//! | `channel_transfer` | `message_to_user` | same, with the link |
//! | `image`, `video`, `audio`, `iframe` | `alt_text` or title | title and link |
//! | anything else (`user_defined`, `date`, `dtmf`, …) | skipped | skipped |
//!
//! Items carrying `channels` are meant for IBM's own integrations and are skipped unless the
//! list names this channel (`voice_telephony` for voice, `chat` for chat).

use std::time::Duration;

use serde_json::Value;

/// Longest single `pause` honoured.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Longest search result read out (characters).
const MAX_RESULT_CHARS: usize = 600;
/// Intents and entities listed in a handoff summary.
const MAX_LISTED: usize = 5;

/// What one item asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Words for the customer.
    Say(String),
    /// A pause before what follows (honoured on chat).
    Pause(Duration),
    /// Hand the customer to a person; nothing after it is read.
    Handoff(Handoff),
    /// End the conversation; nothing after it is read.
    End,
}

/// A `connect_to_agent` item.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// `topic`, or a default.
    pub reason: String,
    /// `message_to_human_agent`, the intents and entities, the transfer target.
    pub summary: String,
    /// `agent_available.message`: said before the handoff.
    pub available: Option<String>,
    /// `agent_unavailable.message`: said when the handoff cannot happen.
    pub unavailable: Option<String>,
}

/// A choice offered by an `option` or `suggestion` item.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// What the customer sees or hears.
    pub label: String,
    /// `value.input`: sent as the next input when the customer picks it.
    pub input: Value,
}

/// One answer, read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reply {
    /// In order.
    pub items: Vec<Item>,
    /// The choices the answer offered (the last `option` or `suggestion` item's).
    pub choices: Vec<Choice>,
}

/// Reads `output` for `channel` (`voice` or `chat`).
pub fn read(output: &Value, channel: &str) -> Reply {
    let voice = channel == "voice";
    let mut reply = Reply::default();
    let generic = output["generic"].as_array().map_or(&[][..], Vec::as_slice);
    for item in generic {
        if let Some(channels) = item["channels"].as_array() {
            let ours = if voice { "voice_telephony" } else { "chat" };
            if !channels.iter().any(|c| c["channel"] == ours) {
                continue;
            }
        }
        let kind = item["response_type"].as_str().unwrap_or_default();
        let say = |parts: &[&str]| -> Option<Item> {
            let text = join(parts, voice);
            (!text.is_empty()).then_some(Item::Say(text))
        };
        let next = match kind {
            "text" | "conversational_search" => say(&[str_of(&item["text"])]),
            "option" | "suggestion" => {
                let list = if kind == "option" {
                    "options"
                } else {
                    "suggestions"
                };
                let choices: Vec<Choice> = item[list]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .filter_map(|o| {
                        let label = plain(str_of(&o["label"]), voice);
                        (!label.is_empty()).then(|| Choice {
                            label,
                            input: o["value"]["input"].clone(),
                        })
                    })
                    .collect();
                let labels: Vec<&str> = choices.iter().map(|c| c.label.as_str()).collect();
                let listed = match (kind, labels.is_empty()) {
                    (_, true) => String::new(),
                    ("option", false) => format!("Options: {}.", or_list(&labels)),
                    _ => format!("{}?", or_list(&labels)),
                };
                let title = match (kind, str_of(&item["title"])) {
                    ("suggestion", "") => "Did you mean:",
                    (_, title) => title,
                };
                if !choices.is_empty() {
                    reply.choices = choices;
                }
                say(&[title, str_of(&item["description"]), &listed])
            }
            "search" => {
                let top = &item["primary_results"][0];
                let text = [
                    &top["answers"][0]["text"],
                    &top["body"],
                    &top["highlight"]["body"][0],
                    &top["title"],
                ]
                .into_iter()
                .map(str_of)
                .find(|t| !t.trim().is_empty())
                .unwrap_or_default();
                let text = crate::handoff::shorten(&plain(text, voice), MAX_RESULT_CHARS);
                let url = if voice { "" } else { str_of(&top["url"]) };
                say(&[str_of(&item["header"]), &text, url])
            }
            "channel_transfer" => {
                let url = if voice {
                    ""
                } else {
                    str_of(&item["transfer_info"]["target"]["chat"]["url"])
                };
                say(&[str_of(&item["message_to_user"]), url])
            }
            "image" | "video" | "audio" | "iframe" => {
                if voice {
                    let words = [&item["alt_text"], &item["title"]]
                        .into_iter()
                        .map(str_of)
                        .find(|t| !t.trim().is_empty())
                        .unwrap_or_default();
                    say(&[words])
                } else {
                    say(&[
                        str_of(&item["title"]),
                        str_of(&item["description"]),
                        str_of(&item["source"]),
                    ])
                }
            }
            "pause" => item["time"]
                .as_u64()
                .filter(|ms| *ms > 0)
                .map(|ms| Item::Pause(Duration::from_millis(ms).min(MAX_PAUSE))),
            "connect_to_agent" => {
                let message = |v: &Value| Some(plain(str_of(v), voice)).filter(|m| !m.is_empty());
                reply.items.push(Item::Handoff(Handoff {
                    reason: Some(plain(str_of(&item["topic"]), true))
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "Watson asked for a human agent".into()),
                    summary: summary(item, output),
                    available: message(&item["agent_available"]["message"]),
                    unavailable: message(&item["agent_unavailable"]["message"]),
                }));
                break;
            }
            "end_session" => {
                reply.items.push(Item::End);
                break;
            }
            other => {
                tracing::debug!(response_type = other, "skipping a Watson response item");
                None
            }
        };
        reply.items.extend(next);
    }
    reply
}

/// The choice `text` (what the customer said or pressed) picks: a label or the `value.input`
/// text, in any case and without closing punctuation, or its number (1-based, digits or a word)
/// when no label is that number itself.
pub fn choose<'a>(choices: &'a [Choice], text: &str) -> Option<&'a Choice> {
    let said = normalise(text);
    if said.is_empty() {
        return None;
    }
    if let Some(choice) = choices
        .iter()
        .find(|c| normalise(&c.label) == said || normalise(str_of(&c.input["text"])) == said)
    {
        return Some(choice);
    }
    const WORDS: [&str; 9] = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let number = said.parse::<usize>().ok().or_else(|| {
        let word = said.strip_prefix("number ").unwrap_or(&said);
        WORDS.iter().position(|w| *w == word).map(|i| i + 1)
    })?;
    if choices
        .iter()
        .any(|c| normalise(&c.label).parse::<usize>().is_ok())
    {
        return None;
    }
    choices.get(number.checked_sub(1)?)
}

fn normalise(text: &str) -> String {
    text.trim()
        .trim_end_matches(['.', '!', '?', ','])
        .trim()
        .to_lowercase()
}

/// The handoff summary: `message_to_human_agent`, then the intents and entities Watson found
/// in this turn, then the transfer target (`transfer_info.target`) when one is set.
fn summary(item: &Value, output: &Value) -> String {
    let mut lines = Vec::new();
    let message = plain(str_of(&item["message_to_human_agent"]), false);
    if !message.is_empty() {
        lines.push(message);
    }
    let intents: Vec<String> = list(&output["intents"])
        .iter()
        .filter_map(|i| {
            let name = str_of(&i["intent"]);
            (!name.is_empty()).then(|| match i["confidence"].as_f64() {
                Some(c) => format!("{name} ({:.0}%)", c * 100.0),
                None => name.to_owned(),
            })
        })
        .take(MAX_LISTED)
        .collect();
    if !intents.is_empty() {
        lines.push(format!("Intents: {}.", intents.join(", ")));
    }
    let entities: Vec<String> = list(&output["entities"])
        .iter()
        .filter_map(|e| {
            let name = str_of(&e["entity"]);
            let value = match &e["value"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (!name.is_empty()).then(|| format!("{name}: {value}"))
        })
        .take(MAX_LISTED)
        .collect();
    if !entities.is_empty() {
        lines.push(format!("Entities: {}.", entities.join(", ")));
    }
    let target = &item["transfer_info"]["target"];
    if target.as_object().is_some_and(|t| !t.is_empty()) {
        lines.push(format!(
            "Transfer target: {}",
            crate::handoff::shorten(&target.to_string(), 200)
        ));
    }
    lines.join("\n")
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[][..], Vec::as_slice)
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `A`, `A or B`, `A, B or C`.
fn or_list(labels: &[&str]) -> String {
    match labels {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The non-empty `parts`, each made plain, joined by a space.
fn join(parts: &[&str], voice: bool) -> String {
    parts
        .iter()
        .map(|p| plain(p, voice))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` as plain words: HTML tags dropped (`<br>` and block ends become line breaks), the
/// common entities decoded, Markdown links as "text (url)" (voice: the text only) and bold or
/// italic markers dropped; for voice every line break becomes a space. Spaces are collapsed.
pub fn plain(text: &str, voice: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let is_tag = after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/');
        match after.find('>').filter(|_| is_tag) {
            Some(end) => {
                let tag = after[..end].trim_start_matches('/').to_ascii_lowercase();
                let name = tag.split([' ', '/']).next().unwrap_or_default();
                if matches!(name, "br" | "p" | "div" | "li") {
                    out.push('\n');
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    let mut text = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        .replace("**", "")
        .replace("__", "");
    // [text](url)
    while let Some(open) = text.find('[') {
        let Some(close) = text[open..].find("](").map(|i| open + i) else {
            break;
        };
        let Some(end) = text[close..].find(')').map(|i| close + i) else {
            break;
        };
        let label = text[open + 1..close].to_owned();
        let url = text[close + 2..end].to_owned();
        let link = if voice || label == url {
            label
        } else {
            format!("{label} ({url})")
        };
        text.replace_range(open..=end, &link);
    }
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(if voice { " " } else { "\n" })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn says(reply: &Reply) -> Vec<&str> {
        reply
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Say(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn text_options_and_suggestions_are_read_out() {
        let output = json!({"generic": [
            {"response_type": "text", "text": "Hello <b>there</b>."},
            {"response_type": "option", "title": "Which account?", "description": "",
             "options": [
                {"label": "Checking", "value": {"input": {"text": "checking"}}},
                {"label": "Savings", "value": {"input": {"text": "savings"}}},
                {"label": "Business", "value": {"input": {"text": "business"}}}]},
            {"response_type": "suggestion", "title": "Did you mean:",
             "suggestions": [{"label": "Pay a bill", "value": {"input": {"text": "pay"}}},
                             {"label": "Open an account", "value": {"input": {"text": "open"}}}]}
        ]});
        let reply = read(&output, "voice");
        assert_eq!(
            says(&reply),
            [
                "Hello there.",
                "Which account? Options: Checking, Savings or Business.",
                "Did you mean: Pay a bill or Open an account?"
            ]
        );
        // The last list offered is the one the next input picks from.
        assert_eq!(reply.choices.len(), 2);
        assert_eq!(reply.choices[1].input, json!({"text": "open"}));
    }

    #[test]
    fn choices_are_picked_by_label_or_number() {
        let choices: Vec<Choice> = ["Checking", "Savings"]
            .iter()
            .map(|l| Choice {
                label: l.to_string(),
                input: json!({"text": l.to_lowercase()}),
            })
            .collect();
        assert_eq!(choose(&choices, "savings.").unwrap().label, "Savings");
        assert_eq!(choose(&choices, "2").unwrap().label, "Savings");
        assert_eq!(choose(&choices, "Number one").unwrap().label, "Checking");
        assert!(choose(&choices, "3").is_none());
        assert!(choose(&choices, "my savings please").is_none());
        // Numbered labels are matched as labels only.
        let numbered = vec![
            Choice {
                label: "10".into(),
                input: json!({"text": "10"}),
            },
            Choice {
                label: "20".into(),
                input: json!({"text": "20"}),
            },
        ];
        assert!(choose(&numbered, "1").is_none());
        assert_eq!(choose(&numbered, "20").unwrap().label, "20");
    }

    #[test]
    fn connect_to_agent_hands_off_with_the_summary_and_stops() {
        let output = json!({
            "generic": [
                {"response_type": "text", "text": "I'll get a colleague for you."},
                {"response_type": "connect_to_agent",
                 "message_to_human_agent": "Customer disputes March invoice",
                 "agent_available": {"message": "Connecting you now."},
                 "agent_unavailable": {"message": "Nobody is free right now."},
                 "transfer_info": {"target": {"zendesk": {"department": "Billing"}}},
                 "topic": "Billing dispute"},
                {"response_type": "text", "text": "never read"}
            ],
            "intents": [{"intent": "talk_to_human", "confidence": 0.94}],
            "entities": [{"entity": "month", "value": "March", "location": [30, 35]}]
        });
        let reply = read(&output, "chat");
        assert_eq!(reply.items.len(), 2);
        let Item::Handoff(handoff) = &reply.items[1] else {
            panic!("{:?}", reply.items)
        };
        assert_eq!(handoff.reason, "Billing dispute");
        assert_eq!(
            handoff.summary,
            "Customer disputes March invoice\nIntents: talk_to_human (94%).\nEntities: month: March.\nTransfer target: {\"zendesk\":{\"department\":\"Billing\"}}"
        );
        assert_eq!(handoff.available.as_deref(), Some("Connecting you now."));
        assert_eq!(
            handoff.unavailable.as_deref(),
            Some("Nobody is free right now.")
        );
        // Every field is optional at run time.
        let bare = read(
            &json!({"generic": [{"response_type": "connect_to_agent"}]}),
            "voice",
        );
        assert_eq!(
            bare.items,
            [Item::Handoff(Handoff {
                reason: "Watson asked for a human agent".into(),
                summary: String::new(),
                available: None,
                unavailable: None,
            })]
        );
    }

    #[test]
    fn pauses_search_media_and_channels() {
        let output = json!({"generic": [
            {"response_type": "pause", "time": 60000, "typing": true},
            {"response_type": "search", "header": "I found this:",
             "primary_results": [{"title": "Fees", "body": "Fees are <em>waived</em>\nfor students.",
                                  "url": "https://bank.example/fees"}]},
            {"response_type": "image", "source": "https://bank.example/a.png", "title": "Our branch",
             "alt_text": "A photo of the branch"},
            {"response_type": "text", "text": "web chat only", "channels": [{"channel": "chat"}]},
            {"response_type": "text", "text": "phone only", "channels": [{"channel": "voice_telephony"}]},
            {"response_type": "user_defined", "user_defined": {"x": 1}},
            {"response_type": "date"}
        ]});
        let voice = read(&output, "voice");
        assert_eq!(voice.items[0], Item::Pause(MAX_PAUSE));
        assert_eq!(
            says(&voice),
            [
                "I found this: Fees are waived for students.",
                "A photo of the branch",
                "phone only"
            ]
        );
        let chat = read(&output, "chat");
        assert_eq!(
            says(&chat),
            [
                "I found this: Fees are waived\nfor students. https://bank.example/fees",
                "Our branch https://bank.example/a.png",
                "web chat only"
            ]
        );
        assert_eq!(
            read(
                &json!({"generic": [{"response_type": "end_session"}]}),
                "voice"
            )
            .items,
            [Item::End]
        );
        assert_eq!(read(&json!({}), "voice"), Reply::default());
    }

    #[test]
    fn text_is_made_plain() {
        assert_eq!(
            plain(
                "See [our fees](https://b.example/fees) **now** &amp; a<br/>b",
                false
            ),
            "See our fees (https://b.example/fees) now & a\nb"
        );
        assert_eq!(
            plain("See [our fees](https://b.example/fees)\n\tplease", true),
            "See our fees please"
        );
        assert_eq!(plain("1 < 2 and 3 > 2", true), "1 < 2 and 3 > 2");
    }
}
