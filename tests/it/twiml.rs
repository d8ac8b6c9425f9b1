//! The HTTP edge: the voice webhook's TwiML, the action callback, health.

use relaybot::{agent::tools::ToolRegistry, twilio::twiml};

use crate::helpers::{spawn_app, spawn_app_with};

/// The voice webhook answers `<Connect action><ConversationRelay url>` with every configured
/// attribute, XML-escaped, unset ones omitted, and the caller's From/To/CallSid as parameters.
#[tokio::test]
async fn twiml_connects_conversation_relay_with_configured_attributes() {
    let app = spawn_app_with(
        &[
            ("PUBLIC_URL", "https://bot.example.com"),
            ("WELCOME_GREETING", r#"Hi "friend" & <welcome> to Tom's"#),
            ("CR_LANGUAGE", "en-GB"),
            ("CR_TTS_PROVIDER", "Google"),
            ("CR_VOICE", "en-GB-Journey-D"),
            ("CR_TRANSCRIPTION_PROVIDER", "Deepgram"),
            ("CR_SPEECH_MODEL", "nova-3-general"),
            ("CR_INTERRUPTIBLE", "speech"),
            ("CR_INTERRUPT_SENSITIVITY", "medium"),
            ("CR_REPORT_INPUT_DURING_AGENT_SPEECH", "none"),
            ("CR_HINTS", "Acme,Relaybot"),
            ("CR_ELEVENLABS_TEXT_NORMALIZATION", "off"),
            ("CR_EVENTS", "speaker-events tokens-played"),
            (
                "CR_LANGUAGES",
                r#"[{"code":"es-ES","ttsProvider":"Google","voice":"es-ES-Neural2-A"}]"#,
            ),
            ("CR_PARAMETERS", r#"{"tenantId":"t_1"}"#),
        ],
        ToolRegistry::new(),
    )
    .await;
    let (status, content_type, body) = app
        .post_form(
            "/twiml",
            &[
                ("CallSid", "CA123"),
                ("From", "+15551230000"),
                ("To", "+15559990000"),
                ("AccountSid", "AC1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/xml"), "{content_type}");
    assert!(
        body.contains("&quot;friend&quot; &amp; &lt;welcome&gt; to Tom&apos;s"),
        "{body}"
    );

    let root = twiml::parse(&body).unwrap();
    assert_eq!(root.name, "Response");
    let connect = root.find("Connect").unwrap();
    assert_eq!(
        connect.attr("action"),
        Some("https://bot.example.com/action")
    );
    let relay = connect.find("ConversationRelay").unwrap();
    let url = relay.attr("url").unwrap();
    assert!(
        url.starts_with("wss://bot.example.com/ws?token=CA123."),
        "{url}"
    );
    let expect = [
        ("url", url),
        ("welcomeGreeting", r#"Hi "friend" & <welcome> to Tom's"#),
        ("language", "en-GB"),
        ("ttsProvider", "Google"),
        ("voice", "en-GB-Journey-D"),
        ("transcriptionProvider", "Deepgram"),
        ("speechModel", "nova-3-general"),
        ("interruptible", "speech"),
        ("interruptSensitivity", "medium"),
        ("dtmfDetection", "true"),
        ("reportInputDuringAgentSpeech", "none"),
        ("hints", "Acme,Relaybot"),
        ("elevenlabsTextNormalization", "off"),
        ("events", "speaker-events tokens-played"),
    ];
    for (name, value) in expect {
        assert_eq!(relay.attr(name), Some(value), "attribute {name}");
    }
    assert_eq!(
        relay.attributes.len(),
        expect.len(),
        "unset attributes are omitted: {:?}",
        relay.attributes
    );
    let language = relay.children_named("Language").next().unwrap();
    assert_eq!(language.attr("code"), Some("es-ES"));
    assert_eq!(language.attr("voice"), Some("es-ES-Neural2-A"));
    let parameters: Vec<(&str, &str)> = relay
        .children_named("Parameter")
        .map(|p| (p.attr("name").unwrap(), p.attr("value").unwrap()))
        .collect();
    assert_eq!(
        parameters,
        vec![
            ("From", "+15551230000"),
            ("To", "+15559990000"),
            ("CallSid", "CA123"),
            ("tenantId", "t_1")
        ]
    );
}

/// Without PUBLIC_URL the URLs come from the proxy headers ngrok sets; GET with a query works.
#[tokio::test]
async fn twiml_uses_forwarded_headers_and_accepts_get() {
    let app = spawn_app().await;
    let body = reqwest::Client::new()
        .get(format!("{}/twiml?CallSid=CA9&From=%2B1555", app.base_url))
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "abc.ngrok.app")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let root = twiml::parse(&body).unwrap();
    assert_eq!(
        root.find("Connect").unwrap().attr("action"),
        Some("https://abc.ngrok.app/action")
    );
    let relay = root.find("ConversationRelay").unwrap();
    assert!(relay
        .attr("url")
        .unwrap()
        .starts_with("wss://abc.ngrok.app/ws?token=CA9."));
    assert_eq!(
        relay
            .children_named("Parameter")
            .next()
            .unwrap()
            .attr("value"),
        Some("+1555")
    );
}

/// The action callback: `completed` → `<Response/>`; `ended` without handoff data → `<Hangup/>`;
/// `failed` mid-call → a reconnect (tested in `reliability`).
#[tokio::test]
async fn action_callback_answers_each_session_status() {
    let app = spawn_app().await;
    let (status, content_type, body) = app
        .post_form(
            "/action",
            &[
                ("CallSid", "CA1"),
                ("CallStatus", "completed"),
                ("SessionStatus", "completed"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/xml"));
    let root = twiml::parse(&body).unwrap();
    assert_eq!((root.name.as_str(), root.children.len()), ("Response", 0));
    for session_status in ["ended"] {
        let (_, _, body) = app
            .post_form(
                "/action",
                &[
                    ("CallSid", "CA1"),
                    ("CallStatus", "in-progress"),
                    ("SessionStatus", session_status),
                    ("ErrorCode", "64105"),
                ],
            )
            .await;
        assert!(
            twiml::parse(&body).unwrap().find("Hangup").is_some(),
            "{session_status}: {body}"
        );
    }
}

/// `/healthz` answers.
#[tokio::test]
async fn health_check_answers_ok() {
    let app = spawn_app().await;
    let body = reqwest::get(format!("{}/healthz", app.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
}
