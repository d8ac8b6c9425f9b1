//! The Conversation Relay WebSocket messages, both directions.
//!
//! Every frame is a JSON text frame with a string `type`. Shapes follow Twilio's
//! "ConversationRelay WebSocket messages" page
//! (<https://www.twilio.com/docs/voice/conversationrelay/websocket-messages>), field names
//! exactly as Twilio spells them. Parsing is lenient on purpose: Twilio adds fields over time, so
//! unknown fields are ignored, missing ones take defaults, an unknown `type` becomes
//! [`Inbound::Unknown`], and `durationUntilInterruptMs` is accepted as a number or a string.
//!
//! Outbound messages are checked by [`Outbound::validate`] before they are sent: Twilio drops an
//! invalid message (error 64107) and closes the socket after ten in a row (close code 1007,
//! error 64105), so we never spend that budget.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A message Twilio sends to us.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Inbound {
    /// First frame of every connection: who is calling, and the `<Parameter>` values.
    /// Boxed: it is by far the largest message and arrives once per call.
    Setup(Box<Setup>),
    /// Caller speech, transcribed. Only `last: true` prompts start a turn.
    Prompt(Prompt),
    /// One keypress (only with `dtmfDetection="true"`).
    Dtmf(Dtmf),
    /// The caller talked over the agent; Twilio has stopped the audio.
    Interrupt(Interrupt),
    /// A session error reported by Twilio (for example a message of ours it rejected).
    Error(ErrorMessage),
    /// Telemetry enabled by the `events`/`debug` attributes (`agentSpeaking`, `tokensPlayed`, …).
    Info(Info),
    /// A `type` this version does not know. Logged and skipped.
    #[serde(skip)]
    Unknown {
        /// The `type` value as received.
        kind: String,
    },
}

/// Why an inbound frame could not be read. The frame is logged and skipped; the call goes on.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The frame is not JSON, or not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// The frame has no string `type` field.
    #[error("frame has no string `type` field")]
    NoType,
    /// A known `type` whose fields have the wrong JSON types.
    #[error("`{kind}` frame has malformed fields: {reason}")]
    BadFields {
        /// The message type.
        kind: String,
        /// What serde said.
        reason: String,
    },
}

impl Inbound {
    /// Parses one text frame.
    ///
    /// # Errors
    /// [`InboundError`] when the frame is not a JSON object with a string `type`, or when a known
    /// message has fields of the wrong JSON type. An unknown `type` is not an error.
    pub fn parse(text: &str) -> Result<Self, InboundError> {
        /// Only the `type` of a frame, borrowed from it; every other field is skipped unread.
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        fn fields<T: serde::de::DeserializeOwned>(
            kind: &str,
            text: &str,
        ) -> Result<T, InboundError> {
            serde_json::from_str(text).map_err(|e| InboundError::BadFields {
                kind: kind.to_owned(),
                reason: e.to_string(),
            })
        }
        // The type first, then the typed message straight from the text: no intermediate
        // `serde_json::Value` tree (one allocation per field) on every frame.
        let Ok(Tag { kind }) = serde_json::from_str::<Tag<'_>>(text) else {
            return Err(Self::why_untyped(text));
        };
        Ok(match kind.as_ref() {
            "setup" => Inbound::Setup(fields(&kind, text)?),
            "prompt" => Inbound::Prompt(fields(&kind, text)?),
            "dtmf" => Inbound::Dtmf(fields(&kind, text)?),
            "interrupt" => Inbound::Interrupt(fields(&kind, text)?),
            "error" => Inbound::Error(fields(&kind, text)?),
            "info" => Inbound::Info(fields(&kind, text)?),
            _ => Inbound::Unknown {
                kind: kind.into_owned(),
            },
        })
    }

    /// Why a frame has no readable `type` (the rare path: malformed frames).
    fn why_untyped(text: &str) -> InboundError {
        match serde_json::from_str::<serde_json::Value>(text) {
            Err(e) => InboundError::NotJson(e.to_string()),
            Ok(value) if !value.is_object() => InboundError::NotJson("not an object".into()),
            Ok(_) => InboundError::NoType,
        }
    }
}

/// `setup`: sent once, right after the socket opens. Every field is optional: `null`, a number or
/// a missing field never costs the whole message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Setup {
    /// Conversation Relay session id (`VX…`); `SessionId` in the action callback.
    #[serde(deserialize_with = "lenient_string")]
    pub session_id: String,
    /// Account (`AC…`).
    #[serde(deserialize_with = "lenient_string")]
    pub account_sid: String,
    /// Parent call, may be empty.
    #[serde(deserialize_with = "lenient_string")]
    pub parent_call_sid: String,
    /// The call (`CA…`).
    #[serde(deserialize_with = "lenient_string")]
    pub call_sid: String,
    /// Caller: E.164 or a `client:`/`sip:` identity.
    #[serde(deserialize_with = "lenient_string")]
    pub from: String,
    /// Called number or identity.
    #[serde(deserialize_with = "lenient_string")]
    pub to: String,
    /// Number the call was forwarded from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient_option")]
    pub forwarded_from: Option<String>,
    /// For example `PSTN`.
    #[serde(deserialize_with = "lenient_string")]
    pub call_type: String,
    /// Caller name (CNAM), may be empty.
    #[serde(deserialize_with = "lenient_string")]
    pub caller_name: String,
    /// `inbound` or `outbound…` (compare case-insensitively).
    #[serde(deserialize_with = "lenient_string")]
    pub direction: String,
    /// Free text (`RINGING`, `in-progress`, …).
    #[serde(deserialize_with = "lenient_string")]
    pub call_status: String,
    /// The `<Parameter>` children of `<ConversationRelay>`, name → value.
    #[serde(deserialize_with = "string_map")]
    pub custom_parameters: BTreeMap<String, String>,
}

/// `prompt`: what the caller said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Prompt {
    /// The transcript.
    #[serde(deserialize_with = "lenient_string")]
    pub voice_prompt: String,
    /// Language of the transcript (`en-US`, or a primary subtag with `multi`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient_option")]
    pub lang: Option<String>,
    /// `true` when the utterance is complete; `false` for partial prompts (cumulative).
    #[serde(deserialize_with = "lenient_last")]
    pub last: bool,
}

impl Default for Prompt {
    /// A missing `last` counts as final: older sessions without partial prompts only send finals.
    fn default() -> Self {
        Prompt {
            voice_prompt: String::new(),
            lang: None,
            last: true,
        }
    }
}

/// `dtmf`: one key the caller pressed. Never log `digit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dtmf {
    /// `0-9`, `*`, `#` (possibly `A-D`).
    #[serde(deserialize_with = "lenient_string")]
    pub digit: String,
}

/// `interrupt`: the caller barged in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Interrupt {
    /// The part of our reply the caller heard before cutting in.
    #[serde(deserialize_with = "lenient_string")]
    pub utterance_until_interrupt: String,
    /// Milliseconds of our audio played before the interruption (number or numeric string).
    #[serde(
        deserialize_with = "lenient_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration_until_interrupt_ms: Option<u64>,
}

/// `error`: Twilio reports a problem (does not by itself end the session).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorMessage {
    /// Human-readable description, for example `Invalid message received: …`.
    #[serde(deserialize_with = "lenient_string")]
    pub description: String,
}

/// `info`: optional telemetry. The payload is observed, not documented, so `value` is untyped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Info {
    /// `agentSpeaking`, `clientSpeaking`, `tokensPlayed`, `roundTripDelayMs`, …
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// `"on"`/`"off"`, text, or a number.
    pub value: serde_json::Value,
}

/// The `info` events we understand.
#[derive(Debug, Clone, PartialEq)]
pub enum InfoEvent {
    /// `agentSpeaking`: `true` = on. `off` is the best "playback finished" signal.
    AgentSpeaking(bool),
    /// `clientSpeaking`: `true` = on.
    ClientSpeaking(bool),
    /// `tokensPlayed`: the text just spoken.
    TokensPlayed(String),
    /// `roundTripDelayMs`.
    RoundTripDelayMs(u64),
    /// Any other name or shape.
    Other,
}

impl Info {
    /// Interprets the event; unknown names and odd values become [`InfoEvent::Other`].
    pub fn event(&self) -> InfoEvent {
        let on_off = |v: &serde_json::Value| match v.as_str() {
            Some(s) if s.eq_ignore_ascii_case("on") => Some(true),
            Some(s) if s.eq_ignore_ascii_case("off") => Some(false),
            _ => v.as_bool(),
        };
        match self.name.as_str() {
            "agentSpeaking" => {
                on_off(&self.value).map_or(InfoEvent::Other, InfoEvent::AgentSpeaking)
            }
            "clientSpeaking" => {
                on_off(&self.value).map_or(InfoEvent::Other, InfoEvent::ClientSpeaking)
            }
            "tokensPlayed" => self
                .value
                .as_str()
                .map_or(InfoEvent::Other, |s| InfoEvent::TokensPlayed(s.to_owned())),
            "roundTripDelayMs" => {
                number_or_string(&self.value).map_or(InfoEvent::Other, InfoEvent::RoundTripDelayMs)
            }
            _ => InfoEvent::Other,
        }
    }
}

/// A message we send to Twilio. Serialises exactly to the documented shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Outbound {
    /// Text to speak, streamed token by token; `last: true` closes the talk cycle.
    #[serde(rename_all = "camelCase")]
    Text {
        /// Text to speak, untrimmed; never null (an empty token closes a turn).
        token: String,
        /// Final token of the current message.
        #[serde(default)]
        last: bool,
        /// Per-token TTS language override.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        lang: Option<String>,
        /// Per-message override of the TwiML `interruptible`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        interruptible: Option<bool>,
        /// Whether a later message of ours may cut this one off.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        preemptible: Option<bool>,
    },
    /// Play an audio file.
    #[serde(rename_all = "camelCase")]
    Play {
        /// Absolute http(s) URL of the media.
        source: String,
        /// Times to play; `0` = 1,000 times.
        #[serde(rename = "loop", skip_serializing_if = "Option::is_none", default)]
        loop_count: Option<u32>,
        /// Whether our next message stops it.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        preemptible: Option<bool>,
        /// Whether the caller can interrupt it.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        interruptible: Option<bool>,
    },
    /// Play DTMF tones to the far end.
    #[serde(rename_all = "camelCase")]
    SendDigits {
        /// `0-9`, `w` (pause), `#`, `*`; not empty.
        digits: String,
    },
    /// Switch TTS and/or STT language; at least one field.
    #[serde(rename_all = "camelCase")]
    Language {
        /// New TTS language.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        tts_language: Option<String>,
        /// New STT language.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        transcription_language: Option<String>,
    },
    /// End the session; Twilio then requests the `<Connect action>` URL.
    #[serde(rename_all = "camelCase")]
    End {
        /// A string (usually JSON) delivered verbatim as `HandoffData`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        handoff_data: Option<String>,
    },
}

/// Why an outbound message was not sent.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OutboundError {
    /// `sendDigits` with no digits or a character outside `0-9 w # *`.
    #[error("sendDigits needs 1+ characters of 0-9, w, #, *")]
    BadDigits,
    /// `play` whose `source` is not an absolute http(s) URL.
    #[error("play needs an absolute http(s) source URL")]
    BadSource,
    /// `language` with neither field, or an empty one.
    #[error("language needs ttsLanguage and/or transcriptionLanguage, not empty")]
    NoLanguage,
    /// An empty `lang` on a `text` message.
    #[error("text lang must not be empty")]
    EmptyLang,
}

impl Outbound {
    /// A streamed token (`last: false`).
    pub fn token(token: impl Into<String>) -> Self {
        Outbound::Text {
            token: token.into(),
            last: false,
            lang: None,
            interruptible: None,
            preemptible: None,
        }
    }

    /// A text message with `last: true` (an empty `token` just closes the turn).
    pub fn last(token: impl Into<String>) -> Self {
        Outbound::Text {
            token: token.into(),
            last: true,
            lang: None,
            interruptible: None,
            preemptible: None,
        }
    }

    /// Checks the documented rules so Twilio never rejects a message of ours.
    ///
    /// # Errors
    /// [`OutboundError`] naming the broken rule.
    pub fn validate(&self) -> Result<(), OutboundError> {
        match self {
            Outbound::Text { lang, .. } => match lang {
                Some(l) if l.trim().is_empty() => Err(OutboundError::EmptyLang),
                _ => Ok(()),
            },
            Outbound::Play { source, .. } => match url::Url::parse(source) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
                _ => Err(OutboundError::BadSource),
            },
            Outbound::SendDigits { digits } => {
                let ok = !digits.is_empty()
                    && digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, 'w' | '#' | '*'));
                if ok {
                    Ok(())
                } else {
                    Err(OutboundError::BadDigits)
                }
            }
            Outbound::Language {
                tts_language,
                transcription_language,
            } => {
                let present =
                    |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
                let empty = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
                if (present(tts_language) || present(transcription_language))
                    && !empty(tts_language)
                    && !empty(transcription_language)
                {
                    Ok(())
                } else {
                    Err(OutboundError::NoLanguage)
                }
            }
            Outbound::End { .. } => Ok(()),
        }
    }

    /// Validates and serialises to the JSON text of one frame.
    ///
    /// # Errors
    /// [`OutboundError`] when [`Outbound::validate`] fails.
    pub fn to_frame(&self) -> Result<String, OutboundError> {
        self.validate()?;
        // Serialising these plain structs cannot fail.
        Ok(serde_json::to_string(self).expect("outbound messages serialise"))
    }
}

fn number_or_string(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64),
        _ => None,
    }
}

/// A string field: `null` → empty, numbers and booleans → their text.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    })
}

/// An optional string field: `null` or empty → `None`.
fn lenient_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(lenient_string(d)?).filter(|s| !s.is_empty()))
}

/// `prompt.last`: a bool, or `"true"`/`"false"`; anything else counts as final.
fn lenient_last<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::String(s) => !s.eq_ignore_ascii_case("false"),
        _ => true,
    })
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(number_or_string(&value))
}

/// `customParameters` is documented as string → string; other JSON values are kept as their JSON
/// text rather than failing the whole `setup`.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let serde_json::Value::Object(value) = serde_json::Value::deserialize(d)? else {
        return Ok(BTreeMap::new());
    };
    Ok(value
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_setup_example() {
        let text = r#"{"type":"setup","sessionId":"VX00000000000000000000000000000000",
            "accountSid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX","parentCallSid":"",
            "callSid":"CA00000000000000000000000000000000","from":"+18005550100","to":"+18005550101",
            "forwardedFrom":"+18005550102","callType":"PSTN","callerName":"","direction":"inbound",
            "callStatus":"RINGING","customParameters":{"callReference":"bar"},"somethingNew":1}"#;
        let Inbound::Setup(setup) = Inbound::parse(text).unwrap() else {
            panic!("not setup")
        };
        assert_eq!(setup.call_sid, "CA00000000000000000000000000000000");
        assert_eq!(setup.session_id, "VX00000000000000000000000000000000");
        assert_eq!(setup.forwarded_from.as_deref(), Some("+18005550102"));
        assert_eq!(setup.custom_parameters["callReference"], "bar");
    }

    #[test]
    fn interrupt_duration_is_read_as_number_or_string() {
        for text in [
            r#"{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":460}"#,
            r#"{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":"460"}"#,
        ] {
            let Inbound::Interrupt(i) = Inbound::parse(text).unwrap() else {
                panic!()
            };
            assert_eq!(i.duration_until_interrupt_ms, Some(460));
            assert_eq!(i.utterance_until_interrupt, "Life is");
        }
    }

    #[test]
    fn unknown_types_are_kept_and_garbage_is_an_error() {
        assert_eq!(
            Inbound::parse(r#"{"type":"config","x":1}"#).unwrap(),
            Inbound::Unknown {
                kind: "config".into()
            }
        );
        assert!(matches!(
            Inbound::parse("not json"),
            Err(InboundError::NotJson(_))
        ));
        assert!(matches!(
            Inbound::parse("[1,2]"),
            Err(InboundError::NotJson(_))
        ));
        assert!(matches!(
            Inbound::parse(r#"{"x":1}"#),
            Err(InboundError::NoType)
        ));
        assert!(matches!(
            Inbound::parse(r#"{"type":"prompt","voicePrompt":{"a":1},"last":[]}"#),
            Ok(Inbound::Prompt(_))
        ));
        assert!(matches!(
            Inbound::parse(r#"{"type":"setup","customParameters":"nope"}"#),
            Ok(Inbound::Setup(s)) if s.custom_parameters.is_empty()
        ));
    }

    #[test]
    fn nulls_and_odd_types_never_cost_a_message() {
        let Inbound::Setup(setup) = Inbound::parse(
            r#"{"type":"setup","callSid":"CA1","callerName":null,"parentCallSid":null,"forwardedFrom":null,"from":15551234}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                setup.call_sid.as_str(),
                setup.caller_name.as_str(),
                setup.from.as_str()
            ),
            ("CA1", "", "15551234")
        );
        assert_eq!(setup.forwarded_from, None);
        let Inbound::Interrupt(i) =
            Inbound::parse(r#"{"type":"interrupt","utteranceUntilInterrupt":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.utterance_until_interrupt, "");
        let Inbound::Dtmf(d) = Inbound::parse(r#"{"type":"dtmf","digit":5}"#).unwrap() else {
            panic!()
        };
        assert_eq!(d.digit, "5");
        let Inbound::Prompt(p) =
            Inbound::parse(r#"{"type":"prompt","voicePrompt":"hi","last":null,"lang":null}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(p.last);
    }

    #[test]
    fn prompt_without_last_counts_as_final() {
        let Inbound::Prompt(p) = Inbound::parse(r#"{"type":"prompt","voicePrompt":"hi"}"#).unwrap()
        else {
            panic!()
        };
        assert!(p.last);
    }

    #[test]
    fn info_events_are_interpreted_leniently() {
        let info = |name: &str, value: serde_json::Value| Info {
            name: name.into(),
            value,
        };
        assert_eq!(
            info("agentSpeaking", "off".into()).event(),
            InfoEvent::AgentSpeaking(false)
        );
        assert_eq!(
            info("clientSpeaking", "on".into()).event(),
            InfoEvent::ClientSpeaking(true)
        );
        assert_eq!(
            info("roundTripDelayMs", 123.into()).event(),
            InfoEvent::RoundTripDelayMs(123)
        );
        assert_eq!(info("agentSpeaking", 7.into()).event(), InfoEvent::Other);
        assert_eq!(info("newThing", "x".into()).event(), InfoEvent::Other);
    }

    #[test]
    fn outbound_serialises_to_the_documented_shapes() {
        assert_eq!(
            Outbound::token("Hello ").to_frame().unwrap(),
            r#"{"type":"text","token":"Hello ","last":false}"#
        );
        assert_eq!(
            Outbound::last("").to_frame().unwrap(),
            r#"{"type":"text","token":"","last":true}"#
        );
        assert_eq!(
            Outbound::SendDigits {
                digits: "9www4085551212".into()
            }
            .to_frame()
            .unwrap(),
            r#"{"type":"sendDigits","digits":"9www4085551212"}"#
        );
        assert_eq!(
            Outbound::Language {
                tts_language: Some("sv-SE".into()),
                transcription_language: Some("en-US".into())
            }
            .to_frame()
            .unwrap(),
            r#"{"type":"language","ttsLanguage":"sv-SE","transcriptionLanguage":"en-US"}"#
        );
        assert_eq!(
            Outbound::End {
                handoff_data: Some(r#"{"reason":"x"}"#.into())
            }
            .to_frame()
            .unwrap(),
            r#"{"type":"end","handoffData":"{\"reason\":\"x\"}"}"#
        );
        assert_eq!(
            Outbound::Play {
                source: "https://api.twilio.com/cowbell.mp3".into(),
                loop_count: Some(1),
                preemptible: None,
                interruptible: Some(true)
            }
            .to_frame()
            .unwrap(),
            r#"{"type":"play","source":"https://api.twilio.com/cowbell.mp3","loop":1,"interruptible":true}"#
        );
    }

    #[test]
    fn invalid_outbound_messages_are_refused() {
        let digits = |d: &str| Outbound::SendDigits { digits: d.into() }.validate();
        assert_eq!(digits(""), Err(OutboundError::BadDigits));
        assert_eq!(digits("12a"), Err(OutboundError::BadDigits));
        assert_eq!(digits("1w#*"), Ok(()));
        let lang = |t: Option<&str>, s: Option<&str>| {
            Outbound::Language {
                tts_language: t.map(Into::into),
                transcription_language: s.map(Into::into),
            }
            .validate()
        };
        assert_eq!(lang(None, None), Err(OutboundError::NoLanguage));
        assert_eq!(
            lang(Some(""), Some("en-US")),
            Err(OutboundError::NoLanguage)
        );
        assert_eq!(lang(None, Some("en-US")), Ok(()));
        let play = |s: &str| {
            Outbound::Play {
                source: s.into(),
                loop_count: None,
                preemptible: None,
                interruptible: None,
            }
            .validate()
        };
        assert_eq!(play("not a url"), Err(OutboundError::BadSource));
        assert_eq!(play("ftp://x/y.mp3"), Err(OutboundError::BadSource));
        assert_eq!(play("https://x/y.mp3"), Ok(()));
    }
}
