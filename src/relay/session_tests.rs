//! Tests of the voice session's decisions (barge-in, silence, limits, leaving).
use super::*;
use crate::{
    agent::{offline::OfflineModel, tools::ToolRegistry, Agent, LlmError},
    conversation::Lines,
    relay::protocol::{Info, Setup},
};

fn limits() -> LimitsConfig {
    let mut limits = crate::config::Config::from_vars(std::iter::empty())
        .expect("defaults")
        .limits;
    limits.max_duration_line = "Time is up.".into();
    limits.idle_reprompt = Duration::from_secs(10);
    limits.idle_reprompt_line = "Are you still there?".into();
    limits.idle_end_line = "Goodbye for now.".into();
    limits.drain_line = "Restarting.".into();
    limits.llm_offer_human_line = "Want a person?".into();
    limits.reconnect_line = "We got cut off.".into();
    limits
}

fn session(limits: LimitsConfig) -> Session {
    let agent = Agent {
        model: Arc::new(OfflineModel::new(Duration::ZERO)),
        tools: ToolRegistry::new(),
        system_prompt: "s".into(),
        first_token_timeout: Duration::from_secs(8),
        idle_timeout: Duration::from_secs(5),
        max_tool_steps: 3,
        filler: None,
        tool_timeout: Duration::from_secs(10),
    };
    let persona = Persona {
        channel: "voice",
        noun: "call",
        fillers: true,
        brain: Arc::new(agent),
        lines: Lines {
            handoff: "Connecting you.".into(),
            end: "Bye.".into(),
            error: "Sorry.".into(),
            offer_human: limits.llm_offer_human_line.clone(),
            handoff_started: "Transferring.".into(),
            end_started: "Ending.".into(),
            turn_cancelled: "Cancelled.".into(),
            already_leaving: "Already leaving.".into(),
        },
        human_available: false,
        failures_before_handoff: limits.llm_failures_before_handoff,
        history_max_chars: limits.history_max_chars,
    };
    let deps = SessionDeps {
        persona: Arc::new(persona),
        welcome_greeting: Some("Hello.".into()),
        handoff: Arc::new(HandoffDeps {
            route: Route::ConnectAction,
            store: HandoffStore::new(Duration::from_secs(60)),
            max_wait: Duration::from_secs(15),
        }),
        limits: Arc::new(limits),
        resume: ResumeStore::new(Duration::from_secs(60)),
        wrap_up: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let mut s = Session::new(deps, Span::none(), None);
    s.on_message(Inbound::Setup(Box::new(Setup {
        call_sid: "CA1".into(),
        ..Setup::default()
    })));
    s
}

fn speaking(on: bool) -> Inbound {
    Inbound::Info(Info {
        name: "agentSpeaking".into(),
        value: if on { "on" } else { "off" }.into(),
    })
}

/// Silence after the agent spoke: "are you still there?", then a polite end once heard.
#[tokio::test(start_paused = true)]
async fn silence_gets_a_reprompt_then_a_polite_end() {
    let mut s = session(limits());
    assert!(
        s.take_outbox().is_empty(),
        "Twilio speaks the greeting itself"
    );
    s.on_message(speaking(true));
    s.on_message(speaking(false));
    assert_eq!(
        s.next_deadline(),
        Some(Instant::now() + Duration::from_secs(10))
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    s.on_timer(Instant::now());
    assert_eq!(
        s.take_outbox(),
        vec![Outbound::last("Are you still there?")]
    );
    s.on_message(speaking(true));
    s.on_message(speaking(false));
    tokio::time::advance(Duration::from_secs(9)).await;
    s.on_timer(Instant::now());
    assert!(s.take_outbox().is_empty(), "not yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    s.on_timer(Instant::now());
    assert_eq!(s.take_outbox(), vec![Outbound::last("Goodbye for now.")]);
    s.on_message(speaking(true));
    s.on_message(speaking(false));
    let out = s.take_outbox();
    assert!(
        matches!(&out[..], [Outbound::End { handoff_data: Some(d) }] if d.contains("end-call")),
        "{out:?}"
    );
}

/// An interrupt that races a new prompt trims the reply the caller cut into and leaves the
/// new turn running.
#[tokio::test(start_paused = true)]
async fn an_interrupt_racing_a_new_prompt_keeps_the_new_turn() {
    let mut s = session(limits());
    s.on_frame(r#"{"type":"prompt","voicePrompt":"I want a person","last":true}"#);
    s.on_frame(r#"{"type":"interrupt","utteranceUntilInterrupt":"Hel"}"#);
    assert!(s.core.turn_running(), "the new turn goes on");
    assert!(
        s.take_outbox().is_empty(),
        "nothing to close: it has not spoken"
    );
    assert_eq!(
        s.history()[1],
        Message::Assistant {
            content: "Hel".into(),
            tool_calls: vec![],
            interrupted: true
        },
        "the greeting is cut to what was heard"
    );
    assert_eq!(
        s.history()[2],
        Message::User {
            content: "I want a person".into()
        }
    );
}

/// A caller who is talking (without barging in) is not asked if they are still there.
#[tokio::test(start_paused = true)]
async fn a_talking_caller_is_not_idle() {
    let mut s = session(limits());
    s.on_frame(r#"{"type":"info","name":"clientSpeaking","value":"on"}"#);
    tokio::time::advance(Duration::from_secs(30)).await;
    s.on_timer(Instant::now());
    assert!(s.take_outbox().is_empty());
    s.on_frame(r#"{"type":"info","name":"clientSpeaking","value":"off"}"#);
    tokio::time::advance(Duration::from_secs(10)).await;
    s.on_timer(Instant::now());
    assert_eq!(
        s.take_outbox(),
        vec![Outbound::last("Are you still there?")]
    );
}

/// With a call token bound, input before `setup` is not answered.
#[tokio::test]
async fn nothing_is_answered_before_setup_when_a_token_is_bound() {
    let s = session(limits());
    let mut fresh = Session::new(s.deps.clone(), Span::none(), Some("CA1".into()));
    fresh.on_frame(r#"{"type":"prompt","voicePrompt":"hi","last":true}"#);
    assert!(!fresh.core.turn_running());
}

/// A session whose 60 s limit has just struck: the limit line is out, the exit pending.
async fn at_the_time_limit() -> Session {
    let mut l = limits();
    l.max_call_duration = Duration::from_secs(60);
    l.idle_reprompt = Duration::from_secs(3600);
    let mut s = session(l);
    tokio::time::advance(Duration::from_secs(60)).await;
    s.on_timer(Instant::now());
    assert_eq!(s.take_outbox(), vec![Outbound::last("Time is up.")]);
    s
}

/// Talking over a goodbye imposed by a limit does not cancel it (only the model's own
/// `end_call` yields to the caller).
#[tokio::test(start_paused = true)]
async fn limit_goodbyes_are_not_cancelled_by_a_barge_in() {
    let mut s = at_the_time_limit().await;
    s.on_frame(r#"{"type":"interrupt","utteranceUntilInterrupt":"Time"}"#);
    let out = s.take_outbox();
    assert!(matches!(&out[..], [Outbound::End { .. }]), "{out:?}");
}

/// A socket that never sends `setup` is closed; after `end` (or a Calls API move) a socket
/// Twilio leaves open is closed too.
#[tokio::test(start_paused = true)]
async fn sockets_without_setup_or_after_leaving_are_closed() {
    let s = session(limits());
    let mut idle = Session::new(s.deps.clone(), Span::none(), None);
    tokio::time::advance(SETUP_TIMEOUT).await;
    idle.on_timer(Instant::now());
    assert!(idle.finished());

    let mut l = limits();
    l.max_call_duration = Duration::from_secs(1);
    let mut s = session(l);
    tokio::time::advance(Duration::from_secs(1)).await;
    s.on_timer(Instant::now());
    s.on_message(speaking(true));
    s.on_message(speaking(false));
    assert!(matches!(&s.take_outbox()[..], [_, Outbound::End { .. }]));
    assert!(!s.finished());
    tokio::time::advance(CLOSE_AFTER_END).await;
    s.on_timer(Instant::now());
    assert!(s.finished(), "Twilio did not close the socket; we do");
}

/// A model that keeps failing, with no human configured: each failure is an apology, the
/// call is never left in silence.
#[tokio::test(start_paused = true)]
async fn a_panicking_turn_still_gets_an_apology() {
    let mut s = session(limits());
    s.on_frame(r#"{"type":"prompt","voicePrompt":"hi","last":true}"#);
    let id = s.core.turn_id().unwrap();
    s.on_turn_event(id, TurnEvent::Failed(LlmError::Internal("panic".into())));
    assert_eq!(s.take_outbox(), vec![Outbound::last("Sorry.")]);
}

/// A caller still talking when our audio stops, or while barging in, is not asked if they
/// are still there.
#[tokio::test(start_paused = true)]
async fn no_reprompt_while_the_caller_talks_through() {
    let mut s = session(limits());
    for frame in [
        r#"{"type":"info","name":"agentSpeaking","value":"on"}"#,
        r#"{"type":"info","name":"clientSpeaking","value":"on"}"#,
        r#"{"type":"interrupt","utteranceUntilInterrupt":"Hi"}"#,
        r#"{"type":"info","name":"agentSpeaking","value":"off"}"#,
    ] {
        s.on_frame(frame);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    s.on_timer(Instant::now());
    assert!(s.take_outbox().is_empty(), "the caller is still talking");
}

/// A reply replaced by a new prompt, then an interrupt (order not documented): the replaced
/// reply is cut to what was heard.
#[tokio::test(start_paused = true)]
async fn an_interrupt_after_a_replacing_prompt_trims_the_replaced_reply() {
    let mut s = session(limits());
    s.on_frame(r#"{"type":"prompt","voicePrompt":"what can you do","last":true}"#);
    let first = s.core.turn_id().unwrap();
    s.on_turn_event(
        first,
        TurnEvent::Content(
            "I can chat with you, answer ".into(),
            crate::agent::turn::ReadAt::now(),
        ),
    );
    s.on_frame(r#"{"type":"prompt","voicePrompt":"wait","last":true}"#);
    s.on_frame(r#"{"type":"interrupt","utteranceUntilInterrupt":"I can"}"#);
    assert!(s.history().contains(&Message::Assistant {
        content: "I can".into(),
        tool_calls: vec![],
        interrupted: true
    }));
    assert!(s
        .transcript()
        .iter()
        .any(|l| l.text == "I can" && l.interrupted));
}

/// Caller input resets the silence clock.
#[tokio::test(start_paused = true)]
async fn caller_input_resets_the_silence_clock() {
    let mut s = session(limits());
    tokio::time::advance(Duration::from_secs(9)).await;
    s.on_frame(r#"{"type":"interrupt","utteranceUntilInterrupt":""}"#);
    tokio::time::advance(Duration::from_secs(5)).await;
    s.on_timer(Instant::now());
    assert!(s.take_outbox().is_empty());
}

/// The call ends politely at MAX_CALL_DURATION_SECS; the wait for the line is bounded even
/// without speaker events.
#[tokio::test(start_paused = true)]
async fn the_call_ends_at_its_time_limit() {
    let mut s = at_the_time_limit().await;
    let bound = s.next_deadline().unwrap() - Instant::now();
    assert!(bound <= Duration::from_secs(15), "{bound:?}");
    tokio::time::advance(bound).await;
    s.on_timer(Instant::now());
    assert!(matches!(&s.take_outbox()[..], [Outbound::End { .. }]));
}
