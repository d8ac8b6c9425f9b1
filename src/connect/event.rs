//! The Lex V2 code-hook event (what Lex sends the Lambda) and response (what the Lambda
//! answers), as handoff.md §4.1–4.2 describe them.
//!
//! The event is read **leniently**: unknown fields are ignored (AWS adds fields without bumping
//! `messageVersion`), every field may be missing or `null`, a slot is often `null`,
//! `nluConfidence` is a bare number in the current docs and `{"score": n}` in older ones (and in
//! `transcriptionConfidence`, whose score the docs even show as a string): all are accepted. A
//! field of an unexpected type reads as absent rather than failing the whole event — Lex is
//! waiting, and the customer's words are what matters. The only hard requirements (checked by
//! [`LexEvent::parse`]) are a JSON object and a `sessionId`.
//!
//! Nothing here logs field values: the event carries the customer's words and number.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Longest `sessionId` taken (Lex's own are 2–100 characters; a little slack for other
/// callers of `/lex/v2`).
pub const MAX_SESSION_ID_CHARS: usize = 256;

/// Why an event was not taken: the endpoint answers 400 with this message (it never quotes the
/// event's values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON at all (only the HTTP endpoint reads bytes).
    #[error("the body is not JSON ({0}); expected a Lex V2 code-hook event")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("expected a Lex V2 code-hook event (a JSON object), got {0}")]
    NotAnObject(&'static str),
    /// No `sessionId`, or an empty one.
    #[error("the event has no sessionId; expected a Lex V2 code-hook event")]
    MissingSessionId,
    /// A `sessionId` that is too long or holds control characters.
    #[error("sessionId must be 1 to 256 characters without control characters")]
    InvalidSessionId,
}

/// How the customer gave this input (`inputMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Typed (Connect chat).
    Text,
    /// Spoken (Connect voice).
    Speech,
    /// Keys pressed on a call.
    Dtmf,
}

impl InputMode {
    /// A voice contact (spoken or keyed input; the answer is spoken).
    pub fn is_voice(self) -> bool {
        matches!(self, InputMode::Speech | InputMode::Dtmf)
    }

    /// For logs.
    pub fn label(self) -> &'static str {
        match self {
            InputMode::Text => "Text",
            InputMode::Speech => "Speech",
            InputMode::Dtmf => "DTMF",
        }
    }
}

/// The Lex V2 Lambda input event (the parts relaybot uses; everything else is ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LexEvent {
    /// `messageVersion` (`1.0`).
    #[serde(deserialize_with = "string")]
    pub message_version: Option<String>,
    /// `DialogCodeHook` or `FulfillmentCodeHook`; both are answered the same way.
    #[serde(deserialize_with = "string")]
    pub invocation_source: Option<String>,
    /// `Text`, `Speech` or `DTMF`.
    #[serde(deserialize_with = "string")]
    pub input_mode: Option<String>,
    /// `text/plain; charset=utf-8` or `audio/…` (older docs: `PlainText`, `SSML`, …).
    #[serde(deserialize_with = "string")]
    pub response_content_type: Option<String>,
    /// The Lex session: one conversation.
    #[serde(deserialize_with = "string")]
    pub session_id: Option<String>,
    /// What the customer typed, the recognised speech, or the keys pressed.
    #[serde(deserialize_with = "string")]
    pub input_transcript: Option<String>,
    /// The intents Lex considers, best first.
    #[serde(deserialize_with = "list")]
    pub interpretations: Vec<Interpretation>,
    /// Per-request attributes (not persisted); `x-amz-lex:` keys are Lex's.
    #[serde(deserialize_with = "attributes")]
    pub request_attributes: BTreeMap<String, String>,
    /// The session: its attributes (what the Connect flow set) and the current intent.
    #[serde(deserialize_with = "lenient")]
    pub session_state: SessionState,
    /// Speech transcriptions Lex considers (Speech input only).
    #[serde(deserialize_with = "list")]
    pub transcriptions: Vec<Transcription>,
}

/// One of Lex's interpretations.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Interpretation {
    /// The intent.
    #[serde(deserialize_with = "lenient")]
    pub intent: Option<Intent>,
    /// `nluConfidence`: a number, or `{"score": n}`.
    #[serde(deserialize_with = "confidence")]
    pub nlu_confidence: Option<f64>,
    /// `Lex` or `Bedrock`.
    #[serde(deserialize_with = "string")]
    pub interpretation_source: Option<String>,
}

/// An intent (in an interpretation or the session state).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Intent {
    /// `FallbackIntent`, or the bot's own.
    #[serde(deserialize_with = "string")]
    pub name: Option<String>,
    /// `InProgress`, `ReadyForFulfillment`, …
    #[serde(deserialize_with = "string")]
    pub state: Option<String>,
    /// `None`, `Confirmed`, `Denied`.
    #[serde(deserialize_with = "string")]
    pub confirmation_state: Option<String>,
    /// Slots by name; an unfilled one is `null`.
    #[serde(deserialize_with = "lenient")]
    pub slots: BTreeMap<String, Value>,
}

/// The session state Lex sends.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionState {
    /// String → string; values of other types are read as their text, `null`s dropped.
    #[serde(deserialize_with = "attributes")]
    pub session_attributes: BTreeMap<String, String>,
    /// The current intent.
    #[serde(deserialize_with = "lenient")]
    pub intent: Option<Intent>,
    /// The request this state belongs to.
    #[serde(deserialize_with = "string")]
    pub originating_request_id: Option<String>,
}

/// One speech transcription.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Transcription {
    /// The text.
    #[serde(deserialize_with = "string")]
    pub transcription: Option<String>,
    /// `transcriptionConfidence`: a number, or `{"score": n}` (n possibly a string).
    #[serde(deserialize_with = "confidence")]
    pub transcription_confidence: Option<f64>,
}

impl LexEvent {
    /// Reads an event; fails only when it is not an object or has no usable `sessionId`.
    ///
    /// # Errors
    /// [`EventError`].
    pub fn parse(event: Value) -> Result<Self, EventError> {
        let kind = match &event {
            Value::Object(_) => None,
            Value::Null => Some("null"),
            Value::Bool(_) => Some("a boolean"),
            Value::Number(_) => Some("a number"),
            Value::String(_) => Some("a string"),
            Value::Array(_) => Some("an array"),
        };
        if let Some(kind) = kind {
            return Err(EventError::NotAnObject(kind));
        }
        // Every field reads leniently, so an object always deserializes; the fallback is only
        // there so that a serde surprise can never become a panic or quote a value.
        let event: LexEvent = serde_json::from_value(event).unwrap_or_default();
        let session_id = event.session_id.as_deref().map(str::trim).unwrap_or("");
        if session_id.is_empty() {
            return Err(EventError::MissingSessionId);
        }
        if session_id.chars().count() > MAX_SESSION_ID_CHARS
            || session_id.chars().any(char::is_control)
        {
            return Err(EventError::InvalidSessionId);
        }
        Ok(event)
    }

    /// The session id (checked non-empty by [`LexEvent::parse`]).
    pub fn session_id(&self) -> &str {
        self.session_id.as_deref().map(str::trim).unwrap_or("")
    }

    /// `inputMode`; when missing, guessed from `responseContentType` (`audio/…` is a call),
    /// else text.
    pub fn mode(&self) -> InputMode {
        match self
            .input_mode
            .as_deref()
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("text") => InputMode::Text,
            Some("speech") => InputMode::Speech,
            Some("dtmf") => InputMode::Dtmf,
            _ if self
                .response_content_type
                .as_deref()
                .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("audio/")) =>
            {
                InputMode::Speech
            }
            _ => InputMode::Text,
        }
    }

    /// What the customer said or typed: `inputTranscript` (Lex's text of the input), or, when
    /// that is empty on a spoken input, the most confident of `transcriptions`. Trimmed.
    pub fn words(&self) -> String {
        let transcript = self.input_transcript.as_deref().unwrap_or("").trim();
        if !transcript.is_empty() || self.mode() != InputMode::Speech {
            return transcript.to_owned();
        }
        let mut best: Option<(&str, f64)> = None;
        for t in &self.transcriptions {
            let Some(text) = t.transcription.as_deref().map(str::trim) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let score = t.transcription_confidence.unwrap_or(0.0);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((text, score));
            }
        }
        best.map(|(t, _)| t.to_owned()).unwrap_or_default()
    }

    /// The intent to answer with: the session state's, else the top interpretation's, else
    /// `FallbackIntent` (the pattern of AWS's third-party-bot sample: handoff.md §4.2).
    pub fn intent_name(&self) -> String {
        self.session_state
            .intent
            .as_ref()
            .and_then(|i| i.name.as_deref())
            .or_else(|| {
                self.interpretations
                    .iter()
                    .find_map(|i| i.intent.as_ref().and_then(|i| i.name.as_deref()))
            })
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("FallbackIntent")
            .to_owned()
    }

    /// The first non-empty value of any of `keys`, in the session attributes (what the Connect
    /// flow's `LexSessionAttributes` set), then the request attributes. Keys match exactly.
    pub fn attribute(&self, keys: &[&str]) -> Option<String> {
        [
            &self.session_state.session_attributes,
            &self.request_attributes,
        ]
        .into_iter()
        .flat_map(|map| keys.iter().filter_map(move |k| map.get(*k)))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
        .map(str::to_owned)
    }
}

/// The Lex V2 Lambda response (handoff.md §4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LexResponse {
    /// Always present.
    pub session_state: ResponseState,
    /// Required with `ElicitIntent`; each 1–1,024 characters.
    pub messages: Vec<ResponseMessage>,
}

/// `sessionState` of the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseState {
    /// What Lex does next.
    pub dialog_action: DialogAction,
    /// The intent (its name always; its state with `Close`).
    pub intent: ResponseIntent,
    /// String → string; what the Connect flow reads as `$.Lex.SessionAttributes.<key>`.
    pub session_attributes: BTreeMap<String, String>,
}

/// `dialogAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogAction {
    /// `ElicitIntent` (keep talking) or `Close` (back to the Connect flow).
    #[serde(rename = "type")]
    pub kind: String,
}

/// `intent` of the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseIntent {
    /// The event's intent.
    pub name: String,
    /// `Fulfilled` with `Close`; absent with `ElicitIntent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One message to the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMessage {
    /// `PlainText` or `SSML`.
    pub content_type: String,
    /// The text (or `<speak>…</speak>`).
    pub content: String,
}

/// A string field: a string as is, a number or boolean as its text, anything else absent.
fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// Any field: its value when it reads as `T`, the default otherwise (`null` included).
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    Ok(T::deserialize(Value::deserialize(d)?).unwrap_or_default())
}

/// A list: the items that read as `T` (a `null` list, or anything but an array, is empty).
fn list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| T::deserialize(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// A string → string map: strings as they are, numbers and booleans as their text, `null`s
/// (and nested values) dropped; anything but an object is empty.
fn attributes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                Value::Bool(b) => Some((k, b.to_string())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// A confidence: `0.9`, `"0.9"`, `{"score": 0.9}` or `{"score": "0.9"}`.
fn confidence<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    fn read(value: &Value) -> Option<f64> {
        match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            Value::Object(map) => map.get("score").and_then(read),
            _ => None,
        }
    }
    Ok(read(&Value::deserialize(d)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_confidence_shapes_null_slots_and_unknown_fields() {
        let event = LexEvent::parse(json!({
            "messageVersion": "1.0",
            "invocationSource": "DialogCodeHook",
            "inputMode": "Speech",
            "sessionId": " 123-abc ",
            "inputTranscript": "",
            "somethingNew": {"nested": [1, 2]},
            "interpretations": [
                {"intent": {"name": "FallbackIntent", "slots": {}, "state": "InProgress"}},
                {"intent": {"name": "OrderFlowers", "slots": {"FlowerType": null}},
                 "nluConfidence": {"score": 0.42}},
                {"intent": {"name": "Other", "slots": null}, "nluConfidence": 0.1},
                "garbage"
            ],
            "sessionState": {
                "sessionAttributes": {"customerNumber": "+15550001111", "n": 5, "gone": null},
                "intent": null,
                "activeContexts": []
            },
            "requestAttributes": null,
            "transcriptions": [
                {"transcription": "low", "transcriptionConfidence": 0.2},
                {"transcription": "high", "transcriptionConfidence": {"score": "0.9"}},
                {"transcription": null}
            ]
        }))
        .unwrap();
        assert_eq!(event.session_id(), "123-abc");
        assert_eq!(event.interpretations.len(), 3);
        assert_eq!(event.interpretations[1].nlu_confidence, Some(0.42));
        assert_eq!(event.interpretations[2].nlu_confidence, Some(0.1));
        assert_eq!(
            event.interpretations[1].intent.as_ref().unwrap().slots["FlowerType"],
            Value::Null
        );
        assert_eq!(event.mode(), InputMode::Speech);
        assert_eq!(event.words(), "high", "the most confident transcription");
        assert_eq!(event.intent_name(), "FallbackIntent");
        assert_eq!(
            event.attribute(&["CustomerNumber", "customerNumber"]),
            Some("+15550001111".into())
        );
        assert_eq!(event.session_state.session_attributes["n"], "5");
        assert!(!event.session_state.session_attributes.contains_key("gone"));
    }

    #[test]
    fn what_is_refused_and_what_is_guessed() {
        assert_eq!(
            LexEvent::parse(json!("hello")).unwrap_err(),
            EventError::NotAnObject("a string")
        );
        assert!(!EventError::NotAnObject("a string")
            .to_string()
            .contains("hello"));
        assert_eq!(
            LexEvent::parse(json!({"sessionId": ""})).unwrap_err(),
            EventError::MissingSessionId
        );
        assert_eq!(
            LexEvent::parse(json!({"sessionId": "a\nb"})).unwrap_err(),
            EventError::InvalidSessionId
        );
        assert_eq!(
            LexEvent::parse(json!({"sessionId": "x".repeat(300)})).unwrap_err(),
            EventError::InvalidSessionId
        );
        let bare = LexEvent::parse(json!({"sessionId": 42})).unwrap();
        assert_eq!(bare.session_id(), "42");
        assert_eq!(bare.mode(), InputMode::Text);
        assert_eq!(bare.words(), "");
        assert_eq!(bare.intent_name(), "FallbackIntent");
        let audio = LexEvent::parse(json!({
            "sessionId": "s", "responseContentType": "audio/pcm",
            "inputTranscript": "  hi  ", "sessionState": {"intent": {"name": "TalkToAgent"}}
        }))
        .unwrap();
        assert_eq!(audio.mode(), InputMode::Speech);
        assert_eq!(audio.words(), "hi");
        assert_eq!(audio.intent_name(), "TalkToAgent");
        let dtmf = LexEvent::parse(json!({"sessionId": "s", "inputMode": "DTMF"})).unwrap();
        assert!(dtmf.mode().is_voice());
    }
}
