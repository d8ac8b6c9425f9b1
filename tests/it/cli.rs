//! `relaybot call` run as a process, as a new user runs it.

use std::process::{Command, Output};

/// A loopback port with nothing listening (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `relaybot call` with no key and no server (so one starts in-process), with `env` set.
fn call(env: &[(&str, &str)], lines: &[&str]) -> (Output, String) {
    run(&["call"], env, lines)
}

/// Runs `relaybot <args…>` with no key, no server and no Twilio or Flex settings from the
/// environment, with `env` set and each of `lines` as a `--say`; checks it exits successfully.
fn run(args: &[&str], env: &[(&str, &str)], lines: &[&str]) -> (Output, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relaybot"));
    command.current_dir(std::env::temp_dir());
    for var in [
        "OPENAI_API_KEY",
        "LLM_PROVIDER",
        "PUBLIC_URL",
        "STUDIO_FLOW_URL",
        "TWILIO_WORKFLOW_SID",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_BASE",
        "FLEX_WORKSPACE_SID",
        "TWILIO_CONVERSATIONS_BASE",
        "TWILIO_FLEX_BASE",
    ] {
        command.env_remove(var);
    }
    command
        .env("PORT", free_port().to_string())
        .env("OFFLINE_TOKEN_DELAY_MS", "1")
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    for line in lines {
        command.args(["--say", line]);
    }
    let output = command.output().expect("run relaybot");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (output, stdout)
}

/// With no key and no server, `relaybot call --say …` starts a server in-process, the offline
/// agent answers each line, and the call ends cleanly.
#[test]
fn call_command_talks_to_the_offline_agent_end_to_end() {
    let (_, stdout) = call(
        &[],
        &["hello", "who are you?", "/dtmf 7", "what's the weather"],
    );
    assert!(stdout.contains("started in-process"), "{stdout}");
    assert!(
        stdout.contains("agent: Hi, this is relaybot. How can I help you today?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent: Hello! I'm relaybot's offline demo agent."),
        "{stdout}"
    );
    assert!(stdout.contains("rule-based stand-in"), "{stdout}");
    assert!(stdout.contains("agent: You pressed 7."), "{stdout}");
    assert!(
        stdout.contains("agent: You said: what's the weather."),
        "{stdout}"
    );
    assert!(stdout.contains("[caller hung up]"), "{stdout}");
}

/// The offline agent's handoff, with a Studio flow and credentials: the call is moved through the
/// Calls API (the simulator stands in for Twilio) with a redirect to the flow.
#[test]
fn offline_handoff_redirects_the_call_to_studio() {
    let flow = "https://webhooks.twilio.com/v1/Accounts/AC0123456789abcdef0123456789abcdef/Flows/FW0123456789abcdef0123456789abcdef";
    let (_, stdout) = call(
        &[
            ("STUDIO_FLOW_URL", flow),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "test-token"),
        ],
        &["my order never arrived", "I want to talk to a person"],
    );
    assert!(
        stdout.contains("agent: One moment while I connect you to an agent."),
        "{stdout}"
    );
    assert!(
        stdout.contains("[twilio] Calls API update for CA"),
        "{stdout}"
    );
    let redirect = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("[twilio] the call leaves Conversation Relay and is redirected to ")
        })
        .unwrap_or_else(|| panic!("no redirect in:\n{stdout}"));
    let target = url::Url::parse(redirect).unwrap();
    assert!(
        redirect.starts_with(&format!("{flow}?FlowEvent=return&handoff=agent&")),
        "{redirect}"
    );
    let summary = target
        .query_pairs()
        .find(|(k, _)| k == "summary")
        .unwrap()
        .1
        .into_owned();
    assert!(
        summary.contains("my order never arrived"),
        "the summary is built from the conversation: {summary}"
    );
}

/// Without Studio, the handoff ends the session with handoffData and `/action` enqueues the
/// caller in the Flex workflow; a goodbye ends the call with `<Hangup/>`.
#[test]
fn offline_handoff_without_studio_enqueues_and_goodbye_hangs_up() {
    let (_, stdout) = call(
        &[("TWILIO_WORKFLOW_SID", "WW0123456789abcdef0123456789abcdef")],
        &["agent please"],
    );
    assert!(
        stdout.contains("[end] handoffData: {\"reasonCode\":\"live-agent-handoff\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("<Enqueue workflowSid=\"WW0123456789abcdef0123456789abcdef\"><Task>{"),
        "{stdout}"
    );
    let (_, stdout) = call(&[], &["thanks, bye"]);
    assert!(
        stdout.contains("agent: Thanks for calling. Goodbye."),
        "{stdout}"
    );
    assert!(stdout.contains("<Hangup/>"), "{stdout}");
}

/// `relaybot serve` as a process: it logs where it listens, and on SIGTERM it drains and exits 0.
#[cfg(unix)]
#[test]
fn serve_exits_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};

    let mut child = Command::new(env!("CARGO_BIN_EXE_relaybot"))
        .current_dir(std::env::temp_dir())
        .env_remove("OPENAI_API_KEY")
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("PUBLIC_URL")
        .env("PORT", "0")
        .env("RUST_LOG", "relaybot=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start relaybot");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("relaybot listening on http://"))
        .expect("a startup line");
    let addr = listening
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let health = std::net::TcpStream::connect(&addr);
    assert!(health.is_ok(), "listening on {addr}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("draining")), "{rest:?}");
}

/// With `RUST_LOG=relaybot=debug`, every turn logs one `turn finished` line with its stage
/// timings and the callSid (read from the process's own log, as an operator would).
#[test]
fn each_turn_logs_its_stage_timings() {
    let (output, _) = call(
        &[("RUST_LOG", "relaybot=debug")],
        &["hello", "who are you?"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("turn finished"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per turn:\n{stderr}");
    for line in lines {
        for field in [
            "call_sid=CA",
            "prompt_to_model_request_ms=",
            "model_first_token_ms=",
            "turn_ms=",
            "steps=1",
            "ok=true",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
}

/// `relaybot chat --say …` with no key, no server and no Twilio account: a server starts
/// in-process, the fake Conversations/Interactions API stands in for Twilio, the offline agent
/// answers, and a handoff shows the interaction Flex would get; the bot then stays silent.
#[test]
fn chat_command_hands_the_conversation_to_flex() {
    let (_, stdout) = run(
        &["chat", "--from", "whatsapp:+15005550006"],
        &[],
        &["hello", "I want to talk to a person", "still there?"],
    );
    assert!(stdout.contains("relaybot: Hi! I'm relaybot"), "{stdout}");
    assert!(
        stdout.contains("relaybot: Hello! I'm relaybot's offline demo agent."),
        "{stdout}"
    );
    assert!(stdout.contains("Channel.type=whatsapp"), "{stdout}");
    assert!(stdout.contains("\"handoff_reason\""), "{stdout}");
    assert!(stdout.contains("handedOff"), "{stdout}");
    assert!(
        !stdout.contains("relaybot: You said: still there?"),
        "{stdout}"
    );
}
