//! Handing the call to a human in Twilio Flex, with the whole story.
//!
//! Two routes, chosen at start ([`Route`]):
//! 1. **Calls API → Studio** (when `STUDIO_FLOW_URL` and REST credentials are set): the live call
//!    is updated with `<Redirect>` to the flow's webhook URL with `FlowEvent=return` and
//!    `handoff`, `reason`, `summary`, `callSid` query parameters, which Studio exposes as
//!    `{{widgets.<redirect widget>.*}}` (shared notes: handoff.md §1.10).
//! 2. **`end` + `<Connect action>`** (otherwise, and as the fallback when the Calls API fails):
//!    the session sends `end` with [`HandoffData`] as `handoffData`; Twilio posts it to `/action`,
//!    which answers `<Enqueue workflowSid><Task>` (`TWILIO_WORKFLOW_SID`), or a `<Redirect>` to
//!    Studio (`STUDIO_FLOW_URL`), or an apology (handoff.md §2).
//!
//! Every handoff also leaves a [`HandoffRecord`] (caller, reason, summary, timestamped
//! transcript) in the [`HandoffStore`], served at `GET /calls/{callSid}/handoff`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    agent::Departure,
    store::Sweep,
    twilio::{rest::CallsClient, twiml},
};

/// `reasonCode` of a handoff to a human.
pub const REASON_HANDOFF: &str = "live-agent-handoff";
/// `reasonCode` of an agent-ended call.
pub const REASON_END_CALL: &str = "end-call";
/// Twilio's cap on inline TwiML (documented for call create; assumed for update).
pub const MAX_TWIML_CHARS: usize = 4000;
/// Longest summary sent to Studio: the send-to-flex attributes are capped at 1024 characters.
pub const MAX_STUDIO_SUMMARY_CHARS: usize = 400;
/// Longest `handoffData` we send (Twilio documents no limit; stay well clear of URL-ish sizes).
pub const MAX_HANDOFF_DATA_BYTES: usize = 4000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One line of the bot conversation, for the human agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptLine {
    /// `caller` or `agent`.
    pub role: String,
    /// What was said (for the agent: what the caller heard). Keypresses appear as
    /// "(pressed keys)", never the digits.
    pub text: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The caller cut this line off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// The `handoffData` string of our `end` message (JSON), read back by `/action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffData {
    /// [`REASON_HANDOFF`] or [`REASON_END_CALL`].
    pub reason_code: String,
    /// Why, in a short sentence.
    #[serde(default)]
    pub reason: String,
    /// What the caller wants and what is known so far.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// The call.
    #[serde(default)]
    pub call_sid: String,
    /// The caller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// The most recent lines of the conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<TranscriptLine>,
}

impl HandoffData {
    /// The one place handoff data is built: what `departure` of the conversation `call_sid`
    /// with the customer `from` tells the next step. A handoff carries `transcript` (for the
    /// human agent) and its summary; an end carries neither.
    pub fn for_departure(
        departure: &Departure,
        call_sid: &str,
        from: &str,
        transcript: &[TranscriptLine],
    ) -> Self {
        let (reason_code, reason, summary, transcript) = match departure {
            Departure::Handoff { reason, summary } => {
                (REASON_HANDOFF, reason, summary.clone(), transcript.to_vec())
            }
            Departure::End { reason, .. } => (REASON_END_CALL, reason, String::new(), Vec::new()),
        };
        HandoffData {
            reason_code: reason_code.to_owned(),
            reason: reason.clone(),
            summary,
            call_sid: call_sid.to_owned(),
            from: from.to_owned(),
            transcript,
        }
    }

    /// Whether this asks for a human.
    pub fn is_handoff(&self) -> bool {
        self.reason_code == REASON_HANDOFF
    }

    /// JSON no longer than [`MAX_HANDOFF_DATA_BYTES`]: long lines are shortened and the oldest
    /// transcript lines dropped first; reason and summary are kept (shortened if they alone are
    /// too long).
    pub fn to_compact_json(&self) -> String {
        let mut data = self.clone();
        for line in &mut data.transcript {
            line.text = shorten(&line.text, 300);
        }
        data.summary = shorten(&data.summary, 1500);
        data.reason = shorten(&data.reason, 300);
        loop {
            let json = serde_json::to_string(&data).expect("plain data serialises");
            if json.len() <= MAX_HANDOFF_DATA_BYTES || data.transcript.is_empty() {
                return json;
            }
            data.transcript.remove(0);
        }
    }

    /// Flex task attributes (handoff.md §2.3): `type`, `name`, `from`, `handoff_reason`,
    /// `summary`, `callSid`, and `conversations` for Flex Insights.
    pub fn task_attributes(&self) -> serde_json::Value {
        let name = if self.from.is_empty() {
            "Caller"
        } else {
            &self.from
        };
        serde_json::json!({
            "type": "inbound",
            "name": name,
            "from": self.from,
            "handoff_reason": self.reason,
            "summary": self.summary,
            "callSid": self.call_sid,
            "conversations": {
                "initiated_by": "customer",
                "communication_channel": "voice",
                "direction": "inbound",
                "conversation_attribute_1": shorten(&self.reason, 128),
            }
        })
    }
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Makes a value safe to land inside the JSON string of Studio's send-to-flex attributes:
/// `"` → `'`, `\` → `/`, control characters (newlines included) → space. (The test of
/// `studio/flow.json` checks the flow against exactly these rules.)
pub fn studio_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// `flow` + `FlowEvent=return` + `params`, URL-encoded, with `?` or `&` as the flow URL needs.
pub fn studio_return_url(flow: &url::Url, params: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("FlowEvent", "return");
    for (name, value) in params {
        query.append_pair(name, &studio_safe(value));
    }
    let flow = flow.as_str();
    let separator = if flow.contains('?') {
        if flow.ends_with('?') || flow.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{flow}{separator}{}", query.finish())
}

/// `<Response><Redirect>` back to the Studio flow with the handoff parameters, under
/// [`MAX_TWIML_CHARS`]: the summary is shortened first, then the reason; `FlowEvent` and
/// `callSid` always stay.
pub fn studio_redirect_twiml(flow: &url::Url, data: &HandoffData) -> String {
    let mut summary_max = MAX_STUDIO_SUMMARY_CHARS;
    let mut reason_max = 300;
    loop {
        let summary = shorten(&data.summary, summary_max);
        let reason = shorten(&data.reason, reason_max);
        let url = studio_return_url(
            flow,
            &[
                ("handoff", "agent"),
                ("reason", &reason),
                ("summary", &summary),
                ("callSid", &data.call_sid),
            ],
        );
        let doc = twiml::redirect(&url);
        if doc.chars().count() <= MAX_TWIML_CHARS || (summary_max == 0 && reason_max == 0) {
            return doc;
        }
        if summary_max > 0 {
            summary_max /= 2;
        } else {
            reason_max /= 2;
        }
    }
}

/// The `<Enqueue>` answer to a handoff.
pub fn enqueue_twiml(workflow_sid: &str, data: &HandoffData) -> String {
    twiml::enqueue_task(workflow_sid, &data.task_attributes().to_string())
}

/// How handoffs reach a human, decided once at start.
#[derive(Debug, Clone)]
pub enum Route {
    /// Update the live call to redirect into the Studio flow.
    CallsApiToStudio {
        /// The Calls API client.
        client: CallsClient,
        /// The flow's webhook URL.
        flow: url::Url,
    },
    /// Send `end` with `handoffData`; `/action` answers.
    ConnectAction,
}

/// Which way a handoff went (in the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandoffPath {
    /// The Calls API redirected the call to Studio.
    CallsApiToStudio,
    /// `end` + `<Connect action>`.
    ConnectAction,
    /// A chat given to Flex through the Interactions API.
    FlexInteraction,
    /// A chat whose Studio flow hands it to Flex (`send-to-flex`).
    StudioChat,
    /// An Amazon Connect contact handed back to its contact flow (Lex `Close` with
    /// `shouldRouteToAgent`), which transfers it to a queue.
    ConnectQueue,
}

/// The story of a handed-off call or chat, for the human agent (`GET /calls/{callSid}/handoff`,
/// `GET /conversations/{ConversationSid}/handoff`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRecord {
    /// The call (`CA…`); empty for a chat.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub call_sid: String,
    /// The chat (`CH…`); empty for a call.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub conversation_sid: String,
    /// The Flex interaction (`KD…`) a chat handoff created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction_sid: Option<String>,
    /// The caller (or the chat's author).
    pub from: String,
    /// The number called (empty for a chat).
    pub to: String,
    /// Why the call was handed off.
    pub reason: String,
    /// What the caller wants and what is known.
    pub summary: String,
    /// The whole bot conversation, timestamped.
    pub transcript: Vec<TranscriptLine>,
    /// When the handoff happened (ms since the Unix epoch).
    pub handed_off_at_ms: u64,
    /// Which route it took (updated if the Calls API fails and `end` is used instead).
    pub path: HandoffPath,
}

#[derive(Debug)]
struct Stored {
    record: HandoffRecord,
    expires: Instant,
}

/// Handoff records, in memory, per instance (a fleet needs shared storage; see the README).
/// Records expire after the configured time. The lock is never held across an await.
#[derive(Debug, Clone)]
pub struct HandoffStore {
    inner: Arc<Mutex<(HashMap<String, Stored>, Sweep)>>,
    ttl: Duration,
}

impl HandoffStore {
    /// An empty store whose records live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        HandoffStore {
            inner: Arc::new(Mutex::new((HashMap::new(), Sweep::default()))),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Stored>, Sweep)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores (or replaces) the record of its call, and drops expired ones (at most once a
    /// second: see [`Sweep`]).
    pub fn insert(&self, record: HandoffRecord) {
        let now = Instant::now();
        let mut guard = self.lock();
        let (map, sweep) = &mut *guard;
        if sweep.due(now) {
            map.retain(|_, s| s.expires > now);
        }
        let key = if record.call_sid.is_empty() {
            record.conversation_sid.clone()
        } else {
            record.call_sid.clone()
        };
        map.insert(
            key,
            Stored {
                record,
                expires: now + self.ttl,
            },
        );
    }

    /// The unexpired record of `call_sid`.
    pub fn get(&self, call_sid: &str) -> Option<HandoffRecord> {
        let now = Instant::now();
        self.lock()
            .0
            .get(call_sid)
            .filter(|s| s.expires > now)
            .map(|s| s.record.clone())
    }

    /// Records that the call took `path` after all.
    pub fn set_path(&self, call_sid: &str, path: HandoffPath) {
        if let Some(stored) = self.lock().0.get_mut(call_sid) {
            stored.record.path = path;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handoff data is built in one place: a handoff carries the transcript and summary for the
    /// agent, an end neither.
    #[test]
    fn departures_become_handoff_data() {
        let line = TranscriptLine {
            role: "caller".into(),
            text: "I want a person".into(),
            at_ms: 1,
            interrupted: false,
        };
        let handoff = Departure::Handoff {
            reason: "asked".into(),
            summary: "billing".into(),
        };
        let data =
            HandoffData::for_departure(&handoff, "CA1", "+1555", std::slice::from_ref(&line));
        assert!(data.is_handoff());
        assert_eq!(
            (data.reason.as_str(), data.summary.as_str()),
            ("asked", "billing")
        );
        assert_eq!(
            (data.call_sid.as_str(), data.from.as_str()),
            ("CA1", "+1555")
        );
        assert_eq!(data.transcript, vec![line.clone()]);
        let end = Departure::End {
            reason: "bye".into(),
            by_customer_choice: true,
        };
        let data = HandoffData::for_departure(&end, "CA1", "+1555", &[line]);
        assert_eq!(data.reason_code, REASON_END_CALL);
        assert!(data.summary.is_empty() && data.transcript.is_empty());
    }

    fn data(summary: &str) -> HandoffData {
        HandoffData {
            reason_code: REASON_HANDOFF.into(),
            reason: "Billing \"dispute\"".into(),
            summary: summary.into(),
            call_sid: "CA1".into(),
            from: "+1555".into(),
            transcript: vec![],
        }
    }

    #[test]
    fn return_url_handles_existing_queries_and_encodes_values() {
        let flow =
            url::Url::parse("https://webhooks.twilio.com/v1/Accounts/AC1/Flows/FW1").unwrap();
        assert_eq!(
            studio_return_url(&flow, &[("reason", "a&b \"c\"\n")]),
            "https://webhooks.twilio.com/v1/Accounts/AC1/Flows/FW1?FlowEvent=return&reason=a%26b+%27c%27+"
        );
        let flow = url::Url::parse("https://h.example/flow?x=1").unwrap();
        assert!(studio_return_url(&flow, &[])
            .starts_with("https://h.example/flow?x=1&FlowEvent=return"));
    }

    #[test]
    fn redirect_twiml_stays_under_the_limit_by_shortening_the_summary() {
        let flow =
            url::Url::parse("https://webhooks.twilio.com/v1/Accounts/AC1/Flows/FW1").unwrap();
        let long = "ü&\"".repeat(3000);
        let doc = studio_redirect_twiml(&flow, &data(&long));
        assert!(doc.chars().count() <= MAX_TWIML_CHARS, "{}", doc.len());
        let root = twiml::parse(&doc).unwrap();
        let target = url::Url::parse(&root.find("Redirect").unwrap().text).unwrap();
        let params: HashMap<String, String> = target.query_pairs().into_owned().collect();
        assert_eq!(params["FlowEvent"], "return");
        assert_eq!(params["handoff"], "agent");
        assert_eq!(params["callSid"], "CA1");
        assert_eq!(params["reason"], "Billing 'dispute'");
        assert!(params["summary"].chars().count() <= MAX_STUDIO_SUMMARY_CHARS);
        assert!(!params["summary"].contains('"'));
    }

    #[test]
    fn compact_json_drops_old_lines_first() {
        let mut d = data("wants a refund");
        d.transcript = (0..100)
            .map(|i| TranscriptLine {
                role: "caller".into(),
                text: format!("line {i} {}", "x".repeat(100)),
                at_ms: i,
                interrupted: false,
            })
            .collect();
        let json = d.to_compact_json();
        assert!(json.len() <= MAX_HANDOFF_DATA_BYTES);
        let back: HandoffData = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary, "wants a refund");
        assert!(back.transcript.last().unwrap().text.starts_with("line 99 "));
        assert!(back.transcript.len() < 100);
    }

    #[test]
    fn store_expires_records() {
        let store = HandoffStore::new(Duration::ZERO);
        store.insert(HandoffRecord {
            conversation_sid: String::new(),
            interaction_sid: None,
            call_sid: "CA1".into(),
            from: String::new(),
            to: String::new(),
            reason: String::new(),
            summary: String::new(),
            transcript: vec![],
            handed_off_at_ms: 0,
            path: HandoffPath::ConnectAction,
        });
        assert!(store.get("CA1").is_none());
    }
}
