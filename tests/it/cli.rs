//! `relaybot call` run as a process, as a new user runs it.

use std::process::Command;

/// A loopback port with nothing listening (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// With no key and no server, `relaybot call --say …` starts a server in-process, the offline
/// agent answers each line, and the call ends cleanly.
#[test]
fn call_command_talks_to_the_offline_agent_end_to_end() {
    let dir = std::env::temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_relaybot"))
        .current_dir(&dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("LLM_PROVIDER")
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("PUBLIC_URL")
        .env("PORT", free_port().to_string())
        .env("OFFLINE_TOKEN_DELAY_MS", "1")
        .args([
            "call",
            "--say",
            "hello",
            "--say",
            "who are you?",
            "--say",
            "/dtmf 7",
            "--say",
            "bye",
        ])
        .output()
        .expect("run relaybot");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
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
    assert!(stdout.contains("[caller hung up]"), "{stdout}");
}
