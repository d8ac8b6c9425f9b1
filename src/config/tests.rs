//! Tests of the settings: defaults, checks that name the variable, and the documentation.
use super::relay::{camel_case, ATTRIBUTES};
use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn defaults_run_offline_on_localhost() {
    let c = config(&[]).unwrap();
    assert_eq!(c.host.to_string(), "127.0.0.1");
    assert_eq!(c.port, 8080);
    assert!(matches!(c.llm.provider, LlmProvider::Offline { .. }));
    assert_eq!(
        c.welcome_greeting.as_deref(),
        Some(DEFAULT_WELCOME_GREETING)
    );
    assert_eq!(c.relay.attribute("dtmfDetection"), Some("true"));
    assert_eq!(c.relay.attribute("events"), Some("speaker-events"));
    assert_eq!(
        c.relay.attribute("welcomeGreeting"),
        Some(DEFAULT_WELCOME_GREETING)
    );
}

#[test]
fn a_key_selects_openai() {
    let c = config(&[("OPENAI_API_KEY", "sk-test"), ("OPENAI_MODEL", "gpt-x")]).unwrap();
    let LlmProvider::OpenAi {
        model, base_url, ..
    } = &c.llm.provider
    else {
        panic!()
    };
    assert_eq!(model, "gpt-x");
    assert_eq!(base_url, "https://api.openai.com/v1");
    assert!(
        !format!("{c:?}").contains("sk-test"),
        "the key must never be printed"
    );
}

#[test]
fn bad_values_name_the_variable() {
    let err = |pairs: &[(&str, &str)]| config(pairs).unwrap_err().var;
    assert_eq!(err(&[("PORT", "eighty")]), "PORT");
    assert_eq!(err(&[("HOST", "localhost:1")]), "HOST");
    assert_eq!(err(&[("PUBLIC_URL", "ftp://x")]), "PUBLIC_URL");
    assert_eq!(err(&[("LLM_PROVIDER", "claude")]), "LLM_PROVIDER");
    assert_eq!(err(&[("LLM_PROVIDER", "openai")]), "OPENAI_API_KEY");
    assert_eq!(err(&[("CR_TTS_PROVIDER", "Acme")]), "CR_TTS_PROVIDER");
    assert_eq!(err(&[("CR_SPEECH_TIMEOUT", "100")]), "CR_SPEECH_TIMEOUT");
    assert_eq!(err(&[("CR_EVENTS", "speaker-events bogus")]), "CR_EVENTS");
    assert_eq!(err(&[("CR_DTMF_DETECTION", "maybe")]), "CR_DTMF_DETECTION");
    assert_eq!(err(&[("CR_LANGUAGES", "es-ES")]), "CR_LANGUAGES");
    assert_eq!(
        err(&[("CR_PARAMETERS", r#"{"From":"x"}"#)]),
        "CR_PARAMETERS"
    );
    assert_eq!(
        err(&[("SYSTEM_PROMPT_FILE", "/no/such/file")]),
        "SYSTEM_PROMPT_FILE"
    );
    assert_eq!(err(&[("TWILIO_ACCOUNT_SID", "123")]), "TWILIO_ACCOUNT_SID");
    assert_eq!(
        err(&[("TWILIO_WORKFLOW_SID", "WW123")]),
        "TWILIO_WORKFLOW_SID"
    );
    assert_eq!(err(&[("STUDIO_FLOW_URL", "flow")]), "STUDIO_FLOW_URL");
    assert_eq!(
        err(&[("TWILIO_API_KEY", "SK00000000000000000000000000000000")]),
        "TWILIO_API_SECRET"
    );
    assert_eq!(
        err(&[("TWILIO_API_BASE", "api.twilio.com")]),
        "TWILIO_API_BASE"
    );
    assert_eq!(
        err(&[("HANDOFF_MAX_WAIT_MS", "soon")]),
        "HANDOFF_MAX_WAIT_MS"
    );
    assert_eq!(
        err(&[("LLM_FIRST_TOKEN_TIMEOUT_MS", "0")]),
        "LLM_FIRST_TOKEN_TIMEOUT_MS"
    );
}

#[test]
fn relay_attributes_are_normalised_and_unknown_ones_pass_through() {
    let c = config(&[
        ("CR_TTS_PROVIDER", "elevenlabs"),
        ("CR_INTERRUPTIBLE", "speech"),
        ("CR_DTMF_DETECTION", "no"),
        ("CR_APPLICATION_RECONNECT", "true"),
        ("CR_LANGUAGES", r#"[{"code":"es-ES","voice":"v"}]"#),
        ("CR_PARAMETERS", r#"{"tenantId":"t_1"}"#),
        ("WELCOME_GREETING", ""),
    ])
    .unwrap();
    assert_eq!(c.relay.attribute("ttsProvider"), Some("ElevenLabs"));
    assert_eq!(c.relay.attribute("interruptible"), Some("speech"));
    assert_eq!(c.relay.attribute("dtmfDetection"), Some("false"));
    assert_eq!(c.relay.attribute("applicationReconnect"), Some("true"));
    assert_eq!(c.relay.attribute("welcomeGreeting"), None);
    assert_eq!(c.relay.unknown_attributes, vec!["CR_APPLICATION_RECONNECT"]);
    assert_eq!(c.relay.languages[0].code, "es-ES");
    assert_eq!(c.relay.parameters, vec![("tenantId".into(), "t_1".into())]);
    assert_eq!(c.welcome_greeting, None);
}

#[test]
fn signatures_follow_the_token_and_the_bind() {
    assert!(
        !config(&[]).unwrap().security.validate_signatures,
        "local dev: off"
    );
    assert!(
        config(&[("TWILIO_AUTH_TOKEN", "t")])
            .unwrap()
            .security
            .validate_signatures
    );
    let public = config(&[("HOST", "0.0.0.0")]).unwrap_err();
    assert_eq!(public.var, "TWILIO_AUTH_TOKEN");
    assert!(public.problem.contains("TWILIO_VALIDATE_SIGNATURES=false"));
    assert!(
        !config(&[
            ("HOST", "0.0.0.0"),
            ("TWILIO_VALIDATE_SIGNATURES", "false"),
            ("LEX_VALIDATE_SIGNATURES", "false")
        ])
        .unwrap()
        .security
        .validate_signatures
    );
    // The Lex code hook's signature follows the same rule.
    let lex = config(&[("HOST", "0.0.0.0"), ("TWILIO_VALIDATE_SIGNATURES", "false")]).unwrap_err();
    assert_eq!(lex.var, "LEX_SHARED_SECRET");
    assert!(lex.problem.contains("LEX_VALIDATE_SIGNATURES=false"));
    let signed = config(&[
        ("HOST", "0.0.0.0"),
        ("TWILIO_VALIDATE_SIGNATURES", "false"),
        ("LEX_SHARED_SECRET", "0123456789abcdef"),
    ])
    .unwrap();
    assert!(signed.connect.validate_signatures);
    assert_eq!(
        config(&[("LEX_SHARED_SECRET", "short")]).unwrap_err().var,
        "LEX_SHARED_SECRET"
    );
    assert_eq!(
        config(&[("LEX_VALIDATE_SIGNATURES", "true")])
            .unwrap_err()
            .var,
        "LEX_SHARED_SECRET"
    );
    assert_eq!(
        config(&[("HOST", "0.0.0.0"), ("TWILIO_AUTH_TOKEN", "t")])
            .unwrap_err()
            .var,
        "PUBLIC_URL"
    );
    assert_eq!(
        config(&[("TWILIO_VALIDATE_SIGNATURES", "true")])
            .unwrap_err()
            .var,
        "TWILIO_AUTH_TOKEN"
    );
    assert_eq!(
        config(&[("CALL_TOKEN_SECRET", "short")]).unwrap_err().var,
        "CALL_TOKEN_SECRET"
    );
    assert_eq!(
        config(&[("MAX_FRAME_BYTES", "0")]).unwrap_err().var,
        "MAX_FRAME_BYTES"
    );
    assert_eq!(
        config(&[("AT_CAPACITY_ACTION", "panic")]).unwrap_err().var,
        "AT_CAPACITY_ACTION"
    );
    assert_eq!(
        config(&[("DRAIN_TIMEOUT", "soon")]).unwrap_err().var,
        "DRAIN_TIMEOUT"
    );
    let drain = |v: &str| {
        config(&[("DRAIN_TIMEOUT", v)])
            .unwrap()
            .limits
            .drain_timeout
            .as_secs()
    };
    assert_eq!((drain("90"), drain("90s"), drain("10m")), (90, 90, 600));
}

#[test]
fn rest_credentials_prefer_the_api_key() {
    let sid = "AC00000000000000000000000000000000";
    let c = config(&[("TWILIO_ACCOUNT_SID", sid), ("TWILIO_AUTH_TOKEN", "tok")]).unwrap();
    assert_eq!(c.twilio.rest_credentials().unwrap().0, sid);
    let c = config(&[
        ("TWILIO_ACCOUNT_SID", sid),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("TWILIO_API_KEY", "SK00000000000000000000000000000000"),
        ("TWILIO_API_SECRET", "sec"),
    ])
    .unwrap();
    assert_eq!(
        c.twilio.rest_credentials().unwrap().0,
        "SK00000000000000000000000000000000"
    );
    assert!(config(&[]).unwrap().twilio.rest_credentials().is_none());
    assert_eq!(
        config(&[]).unwrap().twilio.api_base,
        "https://api.twilio.com"
    );
}

/// Every setting the code reads is documented in `.env.example` and the README (the names
/// come from the loader itself, so a new setting cannot be forgotten).
#[test]
fn every_setting_is_documented() {
    let env_example = include_str!("../../.env.example");
    let readme = include_str!("../../README.md");
    let names = Config::setting_names();
    assert!(names.len() > 60, "{names:?}");
    for var in names.iter().map(String::as_str).chain(["RUST_LOG"]) {
        assert!(
            env_example.contains(&format!("# {var}=")),
            "{var} missing from .env.example"
        );
        assert!(
            readme.contains(&format!("`{var}`")),
            "{var} missing from README.md"
        );
    }
}

#[test]
fn unknown_attribute_names_must_be_safe_and_new() {
    let err = |k: &str| config(&[(k, "x")]).unwrap_err();
    assert!(err("CR_URL").problem.contains("url"));
    assert!(err("CR_WELCOME_GREETING")
        .problem
        .contains("set WELCOME_GREETING instead"));
    assert_eq!(err("CR_1X").var, "CR_1X");
    assert_eq!(err("CR_A<B").var, "CR_A<B");
}

/// Every line of `.env.example`, uncommented on its own, is valid `.env` syntax, keeps its
/// whole value, and lets the server start.
#[test]
fn every_env_example_line_works_uncommented() {
    for line in include_str!("../../.env.example").lines() {
        let Some(assignment) = line.strip_prefix("# ").filter(|l| {
            l.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
        }) else {
            continue;
        };
        let parsed: Vec<(String, String)> = dotenvy::from_read_iter(assignment.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{assignment}: {e}"));
        let (_, raw) = assignment.split_once('=').unwrap();
        assert_eq!(
            parsed[0].1,
            raw.trim_matches('"'),
            "{assignment} is cut short"
        );
        if let Err(e) = Config::from_vars(parsed) {
            panic!("{assignment} alone stops the server: {e}");
        }
    }
}

#[test]
fn empty_values_drop_our_attribute_defaults() {
    let c = config(&[("CR_EVENTS", ""), ("CR_DTMF_DETECTION", " ")]).unwrap();
    assert_eq!(c.relay.attribute("events"), None);
    assert_eq!(c.relay.attribute("dtmfDetection"), None);
}

#[test]
fn camel_case_matches_twilio_spelling() {
    assert_eq!(
        camel_case("ELEVENLABS_TEXT_NORMALIZATION"),
        "elevenlabsTextNormalization"
    );
    assert_eq!(
        camel_case("REPORT_INPUT_DURING_AGENT_SPEECH"),
        "reportInputDuringAgentSpeech"
    );
    for (name, var, _) in ATTRIBUTES.iter().skip(2) {
        assert_eq!(camel_case(&var["CR_".len()..]), *name, "{var}");
    }
}
