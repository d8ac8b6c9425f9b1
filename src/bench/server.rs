//! The server under test: a fresh `relaybot serve` child process per level, or a running server
//! given by `--url`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{caller::Target, BenchError};

/// Longest wait for a fresh server to answer `GET /healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server the bench measures.
pub(crate) struct Server {
    /// Where the callers ring, and how they sign.
    pub target: Target,
    /// Its process id, when its CPU and memory can be read.
    pub pid: Option<i32>,
    /// Its log file (child mode).
    pub log: Option<PathBuf>,
    child: Option<tokio::process::Child>,
}

/// What a child server is started with.
pub(crate) struct ChildSettings<'a> {
    /// `OPENAI_BASE_URL`: the fake model.
    pub model_url: &'a str,
    /// `MAX_CONCURRENT_CALLS`.
    pub max_calls: usize,
    /// Where its stdout and stderr go.
    pub log: &'a Path,
}

impl Server {
    /// A running server at `url`, signed for with `auth_token` against `public_url` (else `url`).
    pub(crate) fn attach(
        url: &str,
        pid: Option<i32>,
        auth_token: Option<String>,
        public_url: Option<&str>,
    ) -> Server {
        let base = url.trim_end_matches('/').to_owned();
        Server {
            target: Target {
                signing_base: public_url
                    .map_or_else(|| base.clone(), |u| u.trim_end_matches('/').to_owned()),
                base,
                auth_token,
            },
            pid,
            log: None,
            child: None,
        }
    }

    /// Starts `relaybot serve` (this same executable) on a free loopback port, with only the
    /// settings the bench chooses (no `.env`: it runs in the log's directory), and waits for
    /// `GET /healthz`. A port taken in between is retried with another.
    pub(crate) async fn spawn(
        http: &reqwest::Client,
        settings: &ChildSettings<'_>,
    ) -> Result<Server, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Server(format!("cannot find this executable: {e}")))?;
        let dir = settings.log.parent().unwrap_or(Path::new("."));
        let auth_token = crate::simulator::new_sid("");
        let mut last_failure = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| BenchError::Server(format!("no free port: {e}")))?
                .port();
            let log = std::fs::File::create(settings.log).map_err(|e| {
                BenchError::Server(format!("cannot write {}: {e}", settings.log.display()))
            })?;
            let log_err = log
                .try_clone()
                .map_err(|e| BenchError::Server(e.to_string()))?;
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("serve")
                .env_clear()
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .kill_on_drop(true);
            // Not RUST_LOG: a debug log from a `.env` would slow the server under test. The child
            // logs at the server's default level.
            for var in ["PATH", "HOME"] {
                if let Some(value) = std::env::var_os(var) {
                    command.env(var, value);
                }
            }
            let max_calls = settings.max_calls.to_string();
            command.envs([
                ("HOST", "127.0.0.1"),
                ("PORT", &port.to_string()),
                ("LLM_PROVIDER", "openai"),
                ("OPENAI_API_KEY", "bench"),
                ("OPENAI_BASE_URL", settings.model_url),
                ("OPENAI_MODEL", "bench"),
                ("TWILIO_AUTH_TOKEN", &auth_token),
                ("MAX_CONCURRENT_CALLS", &max_calls),
                // Silent callers must not be prompted or hung up on while held.
                ("IDLE_REPROMPT_MS", "3600000"),
                ("LLM_FILLER_AFTER_MS", "60000"),
                ("MAX_CALL_DURATION_SECS", "86400"),
            ]);
            let mut child = command
                .spawn()
                .map_err(|e| BenchError::Server(format!("cannot start {}: {e}", exe.display())))?;
            let base = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_failure = format!("the server exited ({status}) at start");
                    break;
                }
                let healthy = http
                    .get(format!("{base}/healthz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if healthy {
                    return Ok(Server {
                        pid: child.id().and_then(|id| i32::try_from(id).ok()),
                        target: Target {
                            signing_base: base.clone(),
                            base,
                            auth_token: Some(auth_token),
                        },
                        log: Some(settings.log.to_owned()),
                        child: Some(child),
                    });
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill().await;
                    return Err(BenchError::Server(format!(
                        "the server did not answer {base}/healthz within {} s; see {}",
                        START_TIMEOUT.as_secs(),
                        settings.log.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let tail = std::fs::read_to_string(settings.log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        Err(BenchError::Server(format!(
            "{last_failure}; last log lines (newest first): {tail:?}"
        )))
    }

    /// Stops a child server (a running `--url` server is left alone).
    pub(crate) async fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
    }
}
