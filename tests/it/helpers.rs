//! `spawn_app`: the real server on 127.0.0.1:0 with a fake model, and a Twilio-side caller.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use relaybot::{
    agent::tools::ToolRegistry,
    config::Config,
    simulator::{Caller, DialOptions, Reply},
    RunningServer,
};

use crate::fake_llm::FakeLlm;

/// Longest wait for anything in these tests; a bound, not an expectation.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server and its fake model.
pub struct TestApp {
    /// `http://127.0.0.1:port`.
    pub base_url: String,
    /// The fake OpenAI-compatible server the agent talks to.
    pub llm: FakeLlm,
    /// The server.
    pub server: RunningServer,
    /// How the simulator places calls to it (signed like Twilio when a token is configured).
    pub dial_options: DialOptions,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.handle.abort();
    }
}

/// Settings every test shares: the fake model, and quiet defaults.
pub fn test_config(llm: &FakeLlm, extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("LLM_PROVIDER".to_owned(), "openai".to_owned()),
        ("OPENAI_API_KEY".to_owned(), "sk-test".to_owned()),
        ("OPENAI_BASE_URL".to_owned(), llm.base_url.clone()),
        ("OPENAI_MODEL".to_owned(), "fake-model".to_owned()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(vars).expect("valid test config")
}

/// Starts the server with `extra` settings and `tools`.
pub async fn spawn_app_with(extra: &[(&str, &str)], tools: ToolRegistry) -> TestApp {
    let llm = FakeLlm::start().await;
    let config = test_config(&llm, extra);
    let dial_options = DialOptions {
        auth_token: config.twilio.auth_token.clone(),
        public_url: config
            .public_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned()),
        ..DialOptions::default()
    };
    let state = relaybot::build_state(config, tools).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = relaybot::start(listener, state).unwrap();
    TestApp {
        base_url: format!("http://{}", server.addr),
        llm,
        server,
        dial_options,
    }
}

/// Starts the server with default settings and no tools.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[], ToolRegistry::new()).await
}

impl TestApp {
    /// Places a call and waits for the server to accept the session.
    pub async fn dial(&self) -> Caller {
        Caller::dial(&self.base_url, self.dial_options.clone())
            .await
            .expect("dial")
    }

    /// `POST path` with a form; returns (status, content type, body).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base_url))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }
}

/// Reads one reply, failing the test on any error.
pub async fn reply(caller: &mut Caller) -> Reply {
    caller.reply(WAIT).await.expect("a reply")
}

/// The `messages` of a model request.
pub fn messages(request: &serde_json::Value) -> &Vec<serde_json::Value> {
    request["messages"].as_array().expect("messages array")
}

/// Log output captured in memory (see [`capture_logs`]).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures this thread's logs at `filter` while the guard lives (a `#[tokio::test]` runs the
/// server on the test's thread, so its logs are captured too).
pub fn capture_logs(filter: &str) -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_env_filter(filter)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
