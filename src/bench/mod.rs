//! `relaybot bench`: measures the real server under simulated Twilio calls.
//!
//! # What runs
//! - **The server**: for each level, a fresh `relaybot serve` child process (this executable) on
//!   a free loopback port, so its CPU and memory are its own and no level inherits another's
//!   heap; or a running server given by `--url` (optionally `--pid` to read its `/proc`).
//! - **A fake model**: an OpenAI-compatible server on loopback streaming `--tokens` chunks, the
//!   first after `--first-token-ms`, then one every `--token-interval-ms`. Each chunk carries the
//!   time it was written.
//! - **Simulated Twilio callers** on the real path: signed `POST /twiml` → TwiML → signed
//!   WebSocket upgrade → `setup` → `prompt`s. Calls are placed `--dial-concurrency` at a time
//!   (as a switch would); once every call is live they all talk at once (first prompts spread
//!   over one token interval), `--turns` turns each, then hang up.
//!
//! # What is measured
//! - Relay overhead per token: chunk written by the fake model → `text` frame read by the caller
//!   (and for each reply's first token alone). Clock: one monotonic epoch in the bench process,
//!   shared by the fake model and the callers.
//! - Prompt → model request: prompt sent (its text ends `@<µs>`) → request read by the fake model.
//! - Turn completion: prompt sent → `last: true` read.
//! - Errors: failed webhooks or upgrades, TwiML without `<ConversationRelay>` (at capacity),
//!   turns that time out, tokens missing, repeated or out of order.
//! - The server's own view, from its Prometheus histograms (`GET /metrics`, see
//!   [`crate::telemetry`]): per token (chunk read → `text` frame flushed), prompt → model
//!   request, model first token, and turn duration. Each streaming level scrapes the page before
//!   its calls and after they hang up and reports the difference (so with `--url` only that
//!   level counts): the count, and p50/p90/p99 as the upper bound of the bucket holding each
//!   (`≤0.25` ms), not interpolated within it; the buckets run 0.1, 0.25, 0.5, 1, 2.5 … ms. A
//!   failed scrape is a warning, not an error. `--api-token` (`API_TOKEN`) is sent as the bearer
//!   token when given; a started server has none.
//! - Server CPU time (user + system) from `/proc/<pid>` between the first call and the last
//!   hang-up, per call; its `VmRSS` before the calls, once all are set up, the peak sampled
//!   every 50 ms, and `VmHWM`. `--idle N` adds a level that holds N silent calls and reports
//!   memory per idle call.
//!
//! # Keeping the bench out of the figures
//! The load generator (fake model and callers) runs on a single-threaded Tokio runtime, so the
//! bench uses at most one core; the server child has its own multi-threaded runtime. Server
//! cost is reported as CPU *time* of the server process, not wall time, so it does not include
//! the bench's work; the bench's own CPU time over the same window is reported next to it.
//! Latencies do include the bench's scheduling delay: when the bench's CPU time approaches
//! the wall time of a level, its callers are the bottleneck and the latencies are upper bounds.

mod caller;
mod fake_model;
mod level;
pub mod report;
mod scrape;
mod server;
mod usage;

use std::{path::PathBuf, time::Duration};

use self::{
    fake_model::{FakeModel, StreamPlan},
    report::{Level, LevelKind, Report, Settings},
    server::{ChildSettings, Server},
};

/// The options of `relaybot bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Calls per streaming level, comma-separated; each level runs on a fresh server. `0` runs no
    /// streaming level (with `--idle`: the idle level alone).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub calls: Vec<usize>,
    /// Turns per call.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// Tokens the fake model streams per reply.
    #[arg(long, default_value_t = 8)]
    pub tokens: usize,
    /// Time between the fake model's tokens, in ms.
    #[arg(long, default_value_t = 20)]
    pub token_interval_ms: u64,
    /// Time from the model request to the first token, in ms [default: --token-interval-ms].
    #[arg(long)]
    pub first_token_ms: Option<u64>,
    /// The caller's pause between a reply and its next prompt (it is talking), in ms: a random
    /// 50–150 % of this per turn. 0 (the default) has every call start its next turn at once,
    /// which keeps 1,000 calls' turns in step: the hardest case for the server.
    #[arg(long, default_value_t = 0)]
    pub think_ms: u64,
    /// Turns each call takes before the measured `--turns` (its model connection is then warm);
    /// they count in CPU time and memory but in no latency figure, and all calls line up after
    /// them.
    #[arg(long, default_value_t = 0)]
    pub warmup_turns: usize,
    /// Also hold this many silent calls on a fresh server and report memory per idle call.
    #[arg(long, value_name = "CALLS")]
    pub idle: Option<usize>,
    /// Measure the server running at this base URL (http://127.0.0.1:8080) instead of starting
    /// one; start it with LLM_PROVIDER=openai and OPENAI_BASE_URL set to the fake model (see
    /// --model-port).
    #[arg(long)]
    pub url: Option<String>,
    /// Process id of the --url server, to read its CPU time and memory from /proc.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Port of the fake model on 127.0.0.1; 0 picks a free one. Set it with --url so the server
    /// can be given OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 beforehand.
    #[arg(long, default_value_t = 0)]
    pub model_port: u16,
    /// Auth token to sign requests to the --url server with, as Twilio does (a started server
    /// gets a random one).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Bearer token for the --url server's GET /metrics (its API_TOKEN), sent only when given; a
    /// started server needs none.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The PUBLIC_URL of the --url server, if it has one: signatures are made for it.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Also write the whole report to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Longest wait for one turn (prompt → last token), in ms.
    #[arg(long, default_value_t = 30_000)]
    pub turn_timeout_ms: u64,
    /// Calls being placed at any one time while a level is set up.
    #[arg(long, default_value_t = 64)]
    pub dial_concurrency: usize,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option is out of range.
    #[error("{0}")]
    Options(String),
    /// The server could not be started or reached.
    #[error("server: {0}")]
    Server(String),
    /// Local I/O: the fake model's port, the log directory, the JSON file.
    #[error("{0}")]
    Io(String),
}

/// Microseconds since one instant, shared by the fake model and the callers.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// Microseconds since the epoch, in µs.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Runs the bench, prints the table to stdout and writes `--json`. Run it on a current-thread
/// Tokio runtime (see the module docs).
///
/// # Errors
/// [`BenchError`] when the bench cannot run at all; failed calls are counted in the report.
pub async fn command(options: BenchOptions) -> Result<Report, BenchError> {
    let report = run(&options).await?;
    print!("{}", report.table());
    if let Some(path) = &options.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Io(e.to_string()))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| BenchError::Io(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(report)
}

/// Everything a level needs.
struct Bench<'a> {
    options: &'a BenchOptions,
    clock: Clock,
    http: reqwest::Client,
    model: FakeModel,
    log_dir: PathBuf,
}

/// Runs every level and returns the report (printing progress to stderr only).
///
/// # Errors
/// [`BenchError`] when the bench cannot run at all; failed calls are counted in the report.
pub async fn run(options: &BenchOptions) -> Result<Report, BenchError> {
    if options.tokens == 0 && options.calls.iter().any(|&c| c > 0) && options.turns > 0 {
        return Err(BenchError::Options("--tokens must be at least 1".into()));
    }
    let open_file_limit = crate::sys::raise_open_file_limit();
    let largest = options
        .calls
        .iter()
        .copied()
        .chain(options.idle)
        .max()
        .unwrap_or(0);
    if let Some(limit) = open_file_limit {
        if (largest as u64) + 100 > limit {
            eprintln!(
                "warning: the open-file limit is {limit}; {largest} calls need about {} (raise `ulimit -Hn`)",
                largest + 100
            );
        }
    }
    let first_token_ms = options.first_token_ms.unwrap_or(options.token_interval_ms);
    let clock = Clock::new();
    let plan = StreamPlan {
        tokens: options.tokens,
        first: Duration::from_millis(first_token_ms),
        interval: Duration::from_millis(options.token_interval_ms),
    };
    let model = FakeModel::start(options.model_port, plan, clock)
        .await
        .map_err(|e| {
            BenchError::Io(format!(
                "fake model on 127.0.0.1:{}: {e}",
                options.model_port
            ))
        })?;
    eprintln!("fake model: OPENAI_BASE_URL={}", model.base_url());
    if options.url.is_some() && options.model_port == 0 {
        eprintln!(
            "warning: with --url, start the server with OPENAI_BASE_URL={} or pass --model-port to pin the fake model's port",
            model.base_url()
        );
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Io(format!("HTTP client: {e}")))?;
    let log_dir = std::env::temp_dir().join(format!("relaybot-bench-{}", std::process::id()));
    if options.url.is_none() {
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| BenchError::Io(format!("cannot create {}: {e}", log_dir.display())))?;
    }
    let bench = Bench {
        options,
        clock,
        http,
        model,
        log_dir,
    };
    let mut levels = Vec::new();
    for &calls in options.calls.iter().filter(|&&c| c > 0) {
        levels.push(bench.level(LevelKind::Streaming, calls).await?);
    }
    if let Some(calls) = options.idle.filter(|&c| c > 0) {
        levels.push(bench.level(LevelKind::Idle, calls).await?);
    }
    Ok(Report {
        settings: Settings {
            server: options
                .url
                .clone()
                .unwrap_or_else(|| "child process (fresh per level)".into()),
            model_url: bench.model.base_url(),
            turns: options.turns,
            tokens: options.tokens,
            first_token_ms,
            token_interval_ms: options.token_interval_ms,
            think_ms: options.think_ms,
            warmup_turns: options.warmup_turns,
            turn_timeout_ms: options.turn_timeout_ms,
            open_file_limit,
        },
        levels,
    })
}

impl Bench<'_> {
    /// One level on a fresh server (or the `--url` one).
    async fn level(&self, kind: LevelKind, calls: usize) -> Result<Level, BenchError> {
        let options = self.options;
        let server = match &options.url {
            Some(url) => Server::attach(
                url,
                options.pid,
                options.auth_token.clone().filter(|t| !t.is_empty()),
                options.public_url.as_deref().filter(|u| !u.is_empty()),
            ),
            None => {
                let name = match kind {
                    LevelKind::Streaming => format!("server-{calls}-calls.log"),
                    LevelKind::Idle => format!("server-{calls}-idle.log"),
                };
                let log = self.log_dir.join(name);
                let model_url = self.model.base_url();
                let settings = ChildSettings {
                    model_url: &model_url,
                    max_calls: calls + 100,
                    log: &log,
                };
                let server = Server::spawn(&self.http, &settings).await?;
                eprintln!(
                    "{} {calls} calls: server pid {}, log {}",
                    if kind == LevelKind::Idle {
                        "idle"
                    } else {
                        "streaming"
                    },
                    server.pid.unwrap_or_default(),
                    log.display()
                );
                server
            }
        };
        let level = self.drive(&server, kind, calls).await;
        server.stop().await;
        Ok(level)
    }
}
