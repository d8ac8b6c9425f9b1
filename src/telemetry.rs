//! Metrics: what `GET /metrics` serves, in the Prometheus text format.
//!
//! Recorded through the `metrics` facade into `metrics-exporter-prometheus`'s recorder,
//! installed process-wide the first time [`metrics()`] is called (every server does, when its
//! state is built). Hot-path handles (per token, per turn) are registered once and kept in
//! [`Metrics`], so recording is an atomic add, not a registry look-up. Durations are in
//! **seconds** (Prometheus' base unit) with fixed buckets from 100 µs to 60 s ([`BUCKETS`]), so
//! every histogram is a real Prometheus histogram (`_bucket`, `_sum`, `_count`) that Grafana's
//! `histogram_quantile` reads.
//!
//! | Metric | Type | Labels | What |
//! |---|---|---|---|
//! | `relaybot_prompt_to_model_request_seconds` | histogram | | caller's final `prompt` read → model request on the wire (after any connect) |
//! | `relaybot_model_first_token_seconds` | histogram | | model request started → first streamed chunk |
//! | `relaybot_token_relay_seconds` | histogram | | model chunk read → its `text` frame written to Twilio |
//! | `relaybot_turn_duration_seconds` | histogram | | `prompt` read → the turn's `last: true` queued |
//! | `relaybot_tool_duration_seconds` | histogram | `tool` | one tool run |
//! | `relaybot_handoff_duration_seconds` | histogram | `path` | handoff/end decided → call moved or `end` sent |
//! | `relaybot_calls_live` | gauge | | call sessions running now |
//! | `relaybot_draining` | gauge | | 1 while shutting down |
//! | `relaybot_calls_total` | counter | | call sessions started |
//! | `relaybot_turns_total` | counter | | caller turns started |
//! | `relaybot_interrupts_total` | counter | | barge-ins |
//! | `relaybot_tool_calls_total` | counter | `tool`, `outcome` (`ok`/`error`) | tool calls |
//! | `relaybot_handoffs_total` | counter | `path`, `outcome` | handoffs and ends carried out |
//! | `relaybot_model_errors_total` | counter | `kind` | model failures (a retried one included) |
//! | `relaybot_refusals_total` | counter | `reason` (`signature`, `call_token`, `origin`) | requests refused before anything ran |
//! | `relaybot_calls_turned_away_total` | counter | `reason` (`capacity`, `draining`) | callers who got the at-capacity line |
//! | `relaybot_chats_live` | gauge | | chat conversations (Conversations and the web widget) with a live task now |
//! | `relaybot_chat_events_total` | counter | `outcome` | Conversations webhook events, by what became of them |

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::agent::LlmError;

/// Histogram bucket bounds, in seconds: 100 µs to 60 s.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (the
/// exporter's own default), so memory stays flat on an unscraped server.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The hot-path metric handles.
pub struct Metrics {
    /// `relaybot_prompt_to_model_request_seconds`.
    pub prompt_to_model_request: Histogram,
    /// `relaybot_model_first_token_seconds`.
    pub model_first_token: Histogram,
    /// `relaybot_token_relay_seconds`.
    pub token_relay: Histogram,
    /// `relaybot_turn_duration_seconds`.
    pub turn_duration: Histogram,
    /// `relaybot_calls_live`.
    pub calls_live: Gauge,
    /// `relaybot_draining`.
    pub draining: Gauge,
    /// `relaybot_calls_total`.
    pub calls: Counter,
    /// `relaybot_turns_total`.
    pub turns: Counter,
    /// `relaybot_interrupts_total`.
    pub interrupts: Counter,
    handle: PrometheusHandle,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, installing the Prometheus recorder on first use. If another recorder
/// was installed first (an embedding application's), ours still renders what was registered
/// through these handles' names but records nothing; that is logged once.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
        }
        Metrics {
            prompt_to_model_request: histogram!("relaybot_prompt_to_model_request_seconds"),
            model_first_token: histogram!("relaybot_model_first_token_seconds"),
            token_relay: histogram!("relaybot_token_relay_seconds"),
            turn_duration: histogram!("relaybot_turn_duration_seconds"),
            calls_live: gauge!("relaybot_calls_live"),
            draining: gauge!("relaybot_draining"),
            calls: counter!("relaybot_calls_total"),
            turns: counter!("relaybot_turns_total"),
            interrupts: counter!("relaybot_interrupts_total"),
            handle,
        }
    })
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded samples into buckets; [`UPKEEP_EVERY`] by the server.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Seconds from `since` to now, for a histogram.
pub fn seconds_since(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// A registered tool ran: its duration and outcome. Only registered names are recorded (the
/// label's values stay bounded whatever the model writes).
pub fn tool_ran(tool: &str, elapsed: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    histogram!("relaybot_tool_duration_seconds", "tool" => tool.to_owned())
        .record(elapsed.as_secs_f64());
    counter!("relaybot_tool_calls_total", "tool" => tool.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A handoff or end was carried out by `path` with `outcome`, `elapsed` after it was decided.
pub fn handoff_done(path: &'static str, outcome: &'static str, elapsed: Option<Duration>) {
    counter!("relaybot_handoffs_total", "path" => path, "outcome" => outcome).increment(1);
    if let Some(elapsed) = elapsed {
        histogram!("relaybot_handoff_duration_seconds", "path" => path)
            .record(elapsed.as_secs_f64());
    }
}

/// A model failure, by kind.
pub fn model_error(error: &LlmError) {
    let kind = match error {
        LlmError::Status { status, .. } if *status == 429 => "rate_limited",
        LlmError::Status { status, .. } if *status >= 500 => "server_error",
        LlmError::Status { .. } => "client_error",
        LlmError::Transport(_) => "transport",
        LlmError::Decode(_) => "decode",
        LlmError::Timeout(_) => "timeout",
        LlmError::Cut => "cut",
        LlmError::TooManySteps(_) => "too_many_steps",
        LlmError::Internal(_) => "internal",
    };
    counter!("relaybot_model_errors_total", "kind" => kind).increment(1);
}

/// A request refused before anything ran (`signature` or `call_token`).
pub fn refused(reason: &'static str) {
    counter!("relaybot_refusals_total", "reason" => reason).increment(1);
}

/// A caller turned away with the at-capacity line (`capacity` or `draining`).
pub fn turned_away(reason: &'static str) {
    counter!("relaybot_calls_turned_away_total", "reason" => reason).increment(1);
}

/// A Conversations webhook event and what became of it: `queued` (to its conversation),
/// `started` (a new conversation task), `retry` (a repeated `MessageSid`), `handed_off`,
/// `ours` (the bot's own message), `full` (the conversation's queue), `capacity`
/// (`CHAT_MAX_CONVERSATIONS`), `draining`, `ignored` (an event relaybot does not act on); and
/// `widget_started` for a new web widget visitor.
pub fn chat_event(outcome: &'static str) {
    counter!("relaybot_chat_events_total", "outcome" => outcome).increment(1);
}

/// Counts a chat conversation in `relaybot_chats_live` for as long as it lives, however its
/// task ends.
pub struct LiveChat;

impl LiveChat {
    /// Counts one more.
    pub fn start() -> Self {
        gauge!("relaybot_chats_live").increment(1.0);
        LiveChat
    }
}

impl Drop for LiveChat {
    fn drop(&mut self) {
        gauge!("relaybot_chats_live").decrement(1.0);
    }
}
