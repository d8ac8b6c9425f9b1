//! `<ConversationRelay>` attributes from `CR_*` variables: the known attributes with their
//! checks, unknown ones passed through, `<Language>` and `<Parameter>` children.

use super::*;

/// How a known `<ConversationRelay>` attribute is checked.
#[derive(Clone, Copy)]
pub(super) enum Check {
    Text,
    OneOf(&'static [&'static str]),
    Bool,
    /// A space-separated list drawn from these words.
    Words(&'static [&'static str]),
    /// An integer in the range, or one of the words.
    IntOr(u32, u32, &'static [&'static str]),
    Float(f64, f64),
}

const INPUT_KINDS: &[&str] = &["none", "dtmf", "speech", "any"];

/// Every documented `<ConversationRelay>` attribute (except `url`), in emission order, with its
/// environment variable and check. Source: the TwiML noun reference and the shared protocol notes.
pub(super) const ATTRIBUTES: &[(&str, &str, Check)] = &[
    ("welcomeGreeting", "WELCOME_GREETING", Check::Text),
    (
        "welcomeGreetingInterruptible",
        "WELCOME_GREETING_INTERRUPTIBLE",
        Check::OneOf(INPUT_KINDS),
    ),
    ("language", "CR_LANGUAGE", Check::Text),
    ("ttsLanguage", "CR_TTS_LANGUAGE", Check::Text),
    (
        "transcriptionLanguage",
        "CR_TRANSCRIPTION_LANGUAGE",
        Check::Text,
    ),
    (
        "ttsProvider",
        "CR_TTS_PROVIDER",
        Check::OneOf(&["Google", "Amazon", "ElevenLabs"]),
    ),
    ("voice", "CR_VOICE", Check::Text),
    (
        "transcriptionProvider",
        "CR_TRANSCRIPTION_PROVIDER",
        Check::OneOf(&["Google", "Deepgram"]),
    ),
    ("speechModel", "CR_SPEECH_MODEL", Check::Text),
    (
        "interruptible",
        "CR_INTERRUPTIBLE",
        Check::OneOf(&["none", "dtmf", "speech", "any", "true", "false"]),
    ),
    (
        "interruptSensitivity",
        "CR_INTERRUPT_SENSITIVITY",
        Check::OneOf(&["low", "medium", "high"]),
    ),
    ("dtmfDetection", "CR_DTMF_DETECTION", Check::Bool),
    (
        "reportInputDuringAgentSpeech",
        "CR_REPORT_INPUT_DURING_AGENT_SPEECH",
        Check::OneOf(INPUT_KINDS),
    ),
    ("preemptible", "CR_PREEMPTIBLE", Check::Bool),
    ("partialPrompts", "CR_PARTIAL_PROMPTS", Check::Bool),
    ("hints", "CR_HINTS", Check::Text),
    (
        "elevenlabsTextNormalization",
        "CR_ELEVENLABS_TEXT_NORMALIZATION",
        Check::OneOf(&["on", "auto", "off"]),
    ),
    (
        "intelligenceService",
        "CR_INTELLIGENCE_SERVICE",
        Check::Text,
    ),
    (
        "events",
        "CR_EVENTS",
        Check::Words(&["speaker-events", "tokens-played", "config-updated"]),
    ),
    (
        "debug",
        "CR_DEBUG",
        Check::Words(&["debugging", "speaker-events", "tokens-played"]),
    ),
    (
        "speechTimeout",
        "CR_SPEECH_TIMEOUT",
        Check::IntOr(600, 5000, &["auto"]),
    ),
    ("eotThreshold", "CR_EOT_THRESHOLD", Check::Float(0.5, 0.9)),
    ("ignoreBackchannel", "CR_IGNORE_BACKCHANNEL", Check::Bool),
    (
        "deepgramSmartFormat",
        "CR_DEEPGRAM_SMART_FORMAT",
        Check::Bool,
    ),
    ("profanityFilter", "CR_PROFANITY_FILTER", Check::Bool),
    (
        "backgroundNoiseReduction",
        "CR_BACKGROUND_NOISE_REDUCTION",
        Check::Text,
    ),
    (
        "conversationConfiguration",
        "CR_CONVERSATION_CONFIGURATION",
        Check::Text,
    ),
];

/// Defaults we choose where Twilio's own default does not suit a voice agent: DTMF on (so
/// keypresses reach the agent) and speaker events on (so we know when the caller has heard a
/// line).
const ATTRIBUTE_DEFAULTS: &[(&str, &str)] =
    &[("dtmfDetection", "true"), ("events", "speaker-events")];

pub(super) fn check(var: &str, value: &str, check: Check) -> Result<String, ConfigError> {
    let value = value.trim();
    match check {
        Check::Text => Ok(value.to_owned()),
        Check::OneOf(allowed) => allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(value))
            .map(|a| (*a).to_owned())
            .ok_or_else(|| {
                invalid(
                    var,
                    format!("{value:?} is not one of {}", allowed.join(", ")),
                )
            }),
        Check::Bool => match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok("true".into()),
            "false" | "0" | "no" | "off" => Ok("false".into()),
            _ => Err(invalid(var, format!("{value:?} is not true or false"))),
        },
        Check::Words(allowed) => {
            let words: Vec<&str> = value.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            match words.iter().find(|w| !allowed.contains(w)) {
                Some(bad) => Err(invalid(
                    var,
                    format!(
                        "{bad:?} is not one of {} (space-separated)",
                        allowed.join(", ")
                    ),
                )),
                None => Ok(words.join(" ")),
            }
        }
        Check::IntOr(min, max, words) => {
            if words.contains(&value) {
                return Ok(value.to_owned());
            }
            match value.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
                _ => Err(invalid(
                    var,
                    format!(
                        "{value:?} is not an integer {min}–{max} or {}",
                        words.join("/")
                    ),
                )),
            }
        }
        Check::Float(min, max) => match value.parse::<f64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(value.to_owned()),
            _ => Err(invalid(
                var,
                format!("{value:?} is not a number {min}–{max}"),
            )),
        },
    }
}

/// `CR_SOME_NAME` → `someName`.
pub(super) fn camel_case(screaming: &str) -> String {
    let mut out = String::new();
    for (i, part) in screaming.split('_').filter(|p| !p.is_empty()).enumerate() {
        let lower = part.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    out
}

pub(super) fn relay_config(vars: &Vars, welcome: Option<&str>) -> Result<RelayConfig, ConfigError> {
    let mut attributes = Vec::new();
    for (name, var, rule) in ATTRIBUTES {
        let value = if *name == "welcomeGreeting" {
            welcome.map(str::to_owned)
        } else {
            match vars.raw(var) {
                // Set but empty: leave the attribute out, our default included.
                Some(v) if v.trim().is_empty() => None,
                Some(v) => Some(check(var, v, *rule)?),
                None => ATTRIBUTE_DEFAULTS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| (*v).to_owned()),
            }
        };
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            attributes.push(((*name).to_owned(), value));
        }
    }
    let known: Vec<&str> = ATTRIBUTES.iter().map(|(_, var, _)| *var).collect();
    let own = ["CR_LANGUAGES", "CR_PARAMETERS"];
    let mut unknown: Vec<(&String, &String)> = vars
        .map
        .iter()
        .filter(|(k, v)| {
            k.starts_with("CR_")
                && !known.contains(&k.as_str())
                && !own.contains(&k.as_str())
                && !v.trim().is_empty()
        })
        .collect();
    unknown.sort();
    let mut unknown_attributes = Vec::new();
    for (var, value) in unknown {
        let name = camel_case(&var["CR_".len()..]);
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(invalid(
                var,
                "is not an attribute name (CR_ + letters, digits and _)",
            ));
        }
        if name == "url" || ATTRIBUTES.iter().any(|(known, _, _)| *known == name) {
            let hint = ATTRIBUTES
                .iter()
                .find(|(known, _, _)| *known == name)
                .map(|(_, right, _)| format!("; set {right} instead"))
                .unwrap_or_default();
            return Err(invalid(
                var,
                format!("{name} is set by relaybot itself{hint}"),
            ));
        }
        unknown_attributes.push(var.clone());
        attributes.push((name, value.trim().to_owned()));
    }

    let languages: Vec<LanguageElement> = vars
        .json(
            "CR_LANGUAGES",
            r#"[{"code":"es-ES","ttsProvider":"Google","voice":"es-ES-Neural2-A"}]"#,
        )?
        .unwrap_or_default();
    if let Some(bad) = languages.iter().find(|l| l.code.trim().is_empty()) {
        return Err(invalid(
            "CR_LANGUAGES",
            format!("every language needs a code: {bad:?}"),
        ));
    }
    let parameters: std::collections::BTreeMap<String, String> = vars
        .json("CR_PARAMETERS", r#"{"tenantId":"t_123"}"#)?
        .unwrap_or_default();
    let reserved = ["From", "To", "CallSid"];
    if let Some(name) = parameters.keys().find(|k| reserved.contains(&k.as_str())) {
        return Err(invalid(
            "CR_PARAMETERS",
            format!("{name} is set by relaybot itself from the call"),
        ));
    }
    Ok(RelayConfig {
        attributes,
        languages,
        parameters: parameters.into_iter().collect(),
        unknown_attributes,
    })
}
