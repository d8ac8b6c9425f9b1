//! The bench's results: percentiles, the table printed at the end, and the `--json` document.

use std::fmt::Write as _;

use serde::Serialize;

/// Everything one `relaybot bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the run was set up.
    pub settings: Settings,
    /// One entry per level, in the order run.
    pub levels: Vec<Level>,
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `child` (a fresh `relaybot serve` per level) or the `--url` measured.
    pub server: String,
    /// The fake model's base URL (`OPENAI_BASE_URL` for the server).
    pub model_url: String,
    /// Turns per call in a streaming level.
    pub turns: usize,
    /// Tokens the fake model streams per reply.
    pub tokens: usize,
    /// Fake model: request → first token, in ms.
    pub first_token_ms: u64,
    /// Fake model: between tokens, in ms.
    pub token_interval_ms: u64,
    /// Callers: mean pause between a reply and the next prompt, in ms.
    pub think_ms: u64,
    /// Unmeasured turns per call before the measured ones.
    pub warmup_turns: usize,
    /// Longest wait for one turn, in ms.
    pub turn_timeout_ms: u64,
    /// The bench process's open-file limit after raising it.
    pub open_file_limit: Option<u64>,
}

/// Streaming (calls talk) or idle (calls are held silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelKind {
    /// Every call takes `turns` turns at once.
    Streaming,
    /// Calls are set up and held without a word.
    Idle,
}

/// The results of one level (one fresh server unless `--url`).
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    /// Streaming or idle.
    pub kind: LevelKind,
    /// Calls placed.
    pub calls: usize,
    /// Calls that got through webhook, upgrade and `setup`.
    pub calls_held: usize,
    /// Turns per call (0 for idle).
    pub turns: usize,
    /// Tokens per reply.
    pub tokens_per_turn: usize,
    /// First call placed → last call hung up, in ms.
    pub wall_ms: f64,
    /// Every call set up → last call hung up (the turns, or the hang-ups when idle), in ms.
    pub talk_wall_ms: f64,
    /// Failed dials and turns, plus model requests the bench could not attribute.
    pub errors: usize,
    /// The first few error messages.
    pub error_messages: Vec<String>,
    /// Requests the fake model received during the level.
    pub model_requests: usize,
    /// The server's CPU and memory, when its process could be read.
    pub server: Option<ServerUsage>,
    /// The bench process's own CPU time over the same window (user + system), in ms.
    pub bench_cpu_ms: Option<f64>,
    /// The bench's CPU time while the calls talked (`talk_wall_ms`), in ms. Near
    /// `talk_wall_ms`, the bench's single thread was the bottleneck.
    pub bench_talk_cpu_ms: Option<f64>,
    /// Where the server's log went (child mode).
    pub server_log: Option<String>,
    /// Model chunk written by the fake model → `text` frame read by the caller, every token.
    pub relay_per_token: Stats,
    /// The same, for the first token of each reply only.
    pub first_token: Stats,
    /// Prompt sent by the caller → model request read by the fake model.
    pub prompt_to_model: Stats,
    /// Prompt sent → `last: true` read.
    pub turn_completion: Stats,
    /// The server's own latency histograms over this level (streaming levels), from
    /// `GET /metrics` scraped before and after the calls; `None` for idle levels and when a
    /// scrape failed.
    pub server_side: Option<ServerSide>,
}

/// The server's own view of a streaming level: what its `/metrics` histograms recorded between
/// a scrape before the calls and one after they hung up.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSide {
    /// `relaybot_token_relay_seconds`: model chunk read → its `text` frame flushed.
    pub relay_per_token: ServerStats,
    /// `relaybot_prompt_to_model_request_seconds`: `prompt` read → model request started.
    pub prompt_to_model: ServerStats,
    /// `relaybot_model_first_token_seconds`: model request started → first streamed chunk.
    pub model_first_token: ServerStats,
    /// `relaybot_turn_duration_seconds`: `prompt` read → the turn's `last: true` queued.
    pub turn_duration: ServerStats,
}

/// Count and percentiles of one server histogram. A percentile is the upper bound (`le`) of the
/// first bucket whose cumulative count reaches it, in ms, not interpolated: the percentile is at
/// most this. It is `"+Inf"` in the JSON when it lies above the largest finite bucket, and
/// `None` without samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    /// Samples recorded.
    pub count: u64,
    /// Median's bucket bound, in ms.
    #[serde(serialize_with = "bound_ms")]
    pub p50_ms: Option<f64>,
    /// 90th percentile's bucket bound, in ms.
    #[serde(serialize_with = "bound_ms")]
    pub p90_ms: Option<f64>,
    /// 99th percentile's bucket bound, in ms.
    #[serde(serialize_with = "bound_ms")]
    pub p99_ms: Option<f64>,
}

/// A bucket bound as a JSON number, or `"+Inf"` (JSON has no infinity).
fn bound_ms<S: serde::Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.is_infinite() => serializer.serialize_str("+Inf"),
        Some(v) => serializer.serialize_f64(*v),
        None => serializer.serialize_none(),
    }
}

/// A bucket bound for the table: `≤0.25`, `+Inf` above the largest finite bucket, `-` without
/// samples.
fn bound(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.is_infinite() => "+Inf".to_owned(),
        Some(v) => format!("≤{v}"),
    }
}

/// The server's CPU and memory over one level.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// CPU time, user + system, in ms (ns resolution from `schedstat` where possible).
    pub cpu_ms: f64,
    /// User CPU time, in ms (clock-tick resolution).
    pub cpu_user_ms: f64,
    /// System CPU time, in ms (clock-tick resolution).
    pub cpu_system_ms: f64,
    /// `cpu_ms` / calls, in ms.
    pub cpu_ms_per_call: f64,
    /// `VmRSS` before the first call, in bytes.
    pub rss_baseline_bytes: u64,
    /// `VmRSS` once every call was set up (idle: one second later), in bytes.
    pub rss_setup_bytes: u64,
    /// Largest `VmRSS` sampled (every 50 ms) during the level, in bytes.
    pub rss_peak_bytes: u64,
    /// `VmHWM` at the end: the process's lifetime peak, in bytes.
    pub vm_hwm_bytes: u64,
    /// Per call, in bytes: (peak − baseline) / calls when streaming, (setup − baseline) / calls
    /// when idle.
    pub rss_per_call_bytes: f64,
}

/// Percentiles of a set of durations (nearest rank), in ms; `None` with no samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Samples.
    pub count: usize,
    /// Median, in ms.
    pub p50_ms: Option<f64>,
    /// 90th percentile, in ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, in ms.
    pub p99_ms: Option<f64>,
    /// Largest, in ms.
    pub max_ms: Option<f64>,
}

impl Stats {
    /// Percentiles of `samples_us` (µs; sorted in place).
    pub fn from_micros(samples_us: &mut [u64]) -> Self {
        samples_us.sort_unstable();
        let at = |p: f64| percentile(samples_us, p).map(|us| us as f64 / 1000.0);
        Stats {
            count: samples_us.len(),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: samples_us.last().map(|&us| us as f64 / 1000.0),
        }
    }
}

/// The nearest-rank `p`th percentile (0 < p ≤ 100) of `sorted`.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

const MIB: f64 = 1024.0 * 1024.0;

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn level_name(level: &Level) -> String {
    match level.kind {
        LevelKind::Streaming => format!("{} calls", level.calls),
        LevelKind::Idle => format!("{} idle", level.calls),
    }
}

/// Writes one level's block of labelled stat rows: the level's name on the first row only, the
/// row's name left-aligned in `name_width`, then its `cells` right-aligned (the first, the
/// count, in 8 columns, the others in 9), as under the tables' headers.
fn stat_rows<T>(
    out: &mut String,
    level: &Level,
    name_width: usize,
    rows: &[(&str, &T)],
    cells: impl Fn(&T) -> Vec<String>,
) {
    for (i, (name, stats)) in rows.iter().enumerate() {
        let label = if i == 0 {
            level_name(level)
        } else {
            String::new()
        };
        let _ = write!(out, "{label:<12} {name:<name_width$}");
        for (j, cell) in cells(stats).iter().enumerate() {
            let width = if j == 0 { 8 } else { 9 };
            let _ = write!(out, " {cell:>width$}");
        }
        let _ = writeln!(out);
    }
}

impl Report {
    /// The aligned tables printed at the end of a run.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        if self.levels.iter().any(|l| l.kind == LevelKind::Streaming) {
            let _ = writeln!(
                out,
                "relaybot bench: server {}; {} turns × {} tokens per call, first token after {} ms, then every {} ms{}",
                s.server,
                s.turns,
                s.tokens,
                s.first_token_ms,
                s.token_interval_ms,
                [
                    (s.think_ms > 0)
                        .then(|| format!("; callers pause ~{} ms between turns", s.think_ms)),
                    (s.warmup_turns > 0).then(|| {
                        format!("; {} warm-up turns per call not measured", s.warmup_turns)
                    }),
                ]
                .into_iter()
                .flatten()
                .collect::<String>()
            );
        } else {
            let _ = writeln!(out, "relaybot bench: server {}; idle calls", s.server);
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>7} {:>9} {:>12} {:>13} {:>12} {:>9} {:>9} {:>9} {:>12}",
            "level",
            "held",
            "errors",
            "wall s",
            "server CPU",
            "CPU/call ms",
            "bench CPU",
            "RSS0 MiB",
            "peak MiB",
            "HWM MiB",
            "per call KiB"
        );
        for level in &self.levels {
            let server = level.server.as_ref();
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>7} {:>9.2} {:>12} {:>13} {:>12} {:>9} {:>9} {:>9} {:>12}",
                level_name(level),
                level.calls_held,
                level.errors,
                level.wall_ms / 1000.0,
                opt(server.map(|u| u.cpu_ms), 1),
                opt(server.map(|u| u.cpu_ms_per_call), 3),
                opt(level.bench_cpu_ms, 1),
                opt(server.map(|u| u.rss_baseline_bytes as f64 / MIB), 1),
                opt(server.map(|u| u.rss_peak_bytes as f64 / MIB), 1),
                opt(server.map(|u| u.vm_hwm_bytes as f64 / MIB), 1),
                opt(server.map(|u| u.rss_per_call_bytes / 1024.0), 1),
            );
        }
        let _ = writeln!(
            out,
            "(CPU in ms, user + system; per call KiB = (peak − RSS0) / calls streaming, (RSS after setup − RSS0) / calls idle)"
        );
        let streaming: Vec<&Level> = self
            .levels
            .iter()
            .filter(|l| l.kind == LevelKind::Streaming)
            .collect();
        if !streaming.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<12} {:<26} {:>8} {:>9} {:>9} {:>9} {:>9}",
                "level", "latency (ms)", "count", "p50", "p90", "p99", "max"
            );
            for level in &streaming {
                let rows = [
                    ("relay per token", &level.relay_per_token),
                    ("first-token relay", &level.first_token),
                    ("prompt → model request", &level.prompt_to_model),
                    ("turn completion", &level.turn_completion),
                ];
                stat_rows(&mut out, level, 26, &rows, |stats| {
                    vec![
                        stats.count.to_string(),
                        opt(stats.p50_ms, 3),
                        opt(stats.p90_ms, 3),
                        opt(stats.p99_ms, 3),
                        opt(stats.max_ms, 3),
                    ]
                });
            }
        }
        if !streaming.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<12} {:<27} {:>8} {:>9} {:>9} {:>9}",
                "level", "server-side (from /metrics)", "count", "p50", "p90", "p99"
            );
            for level in &streaming {
                let Some(side) = &level.server_side else {
                    let _ = writeln!(
                        out,
                        "{:<12} (no scrape: see the warning)",
                        level_name(level)
                    );
                    continue;
                };
                let rows = [
                    ("relay per token", &side.relay_per_token),
                    ("prompt → model request", &side.prompt_to_model),
                    ("model first token", &side.model_first_token),
                    ("turn duration", &side.turn_duration),
                ];
                stat_rows(&mut out, level, 27, &rows, |stats| {
                    vec![
                        stats.count.to_string(),
                        bound(stats.p50_ms),
                        bound(stats.p90_ms),
                        bound(stats.p99_ms),
                    ]
                });
            }
            let _ = writeln!(
                out,
                "(ms, the server's own clock: ≤X is the upper bound of the histogram bucket holding the percentile, not interpolated)"
            );
        }
        for level in self
            .levels
            .iter()
            .filter(|l| l.kind == LevelKind::Streaming)
        {
            let busy = level.bench_talk_cpu_ms.unwrap_or(0.0) / level.talk_wall_ms.max(1.0);
            if busy > 0.8 {
                let _ = writeln!(
                    out,
                    "\nnote: {}: the bench's one thread was busy {:.0}% of the time the calls talked; it may have been the bottleneck, so read the latencies as upper bounds",
                    level_name(level),
                    busy * 100.0
                );
            }
        }
        for level in self.levels.iter().filter(|l| l.errors > 0) {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{}: {} errors, first:",
                level_name(level),
                level.errors
            );
            for message in &level.error_messages {
                let _ = writeln!(out, "  {message}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50));
        assert_eq!(percentile(&sorted, 90.0), Some(90));
        assert_eq!(percentile(&sorted, 99.0), Some(99));
        assert_eq!(percentile(&sorted, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let mut samples = vec![3000, 1000, 2000];
        let stats = Stats::from_micros(&mut samples);
        assert_eq!(stats.count, 3);
        assert_eq!(stats.p50_ms, Some(2.0));
        assert_eq!(stats.max_ms, Some(3.0));
    }

    fn level(kind: LevelKind, calls: usize, server_side: Option<ServerSide>) -> Level {
        let stats = |ms: f64| Stats {
            count: 40,
            p50_ms: Some(ms),
            p90_ms: Some(ms * 2.0),
            p99_ms: Some(ms * 3.0),
            max_ms: Some(ms * 4.0),
        };
        Level {
            kind,
            calls,
            calls_held: calls,
            turns: 2,
            tokens_per_turn: 10,
            wall_ms: 1500.0,
            talk_wall_ms: 1000.0,
            errors: 0,
            error_messages: Vec::new(),
            model_requests: 2 * calls,
            server: None,
            bench_cpu_ms: Some(12.5),
            bench_talk_cpu_ms: Some(10.0),
            server_log: None,
            relay_per_token: stats(0.125),
            first_token: stats(0.5),
            prompt_to_model: Stats::default(),
            turn_completion: stats(20.0),
            server_side,
        }
    }

    #[test]
    fn stat_tables_label_the_first_row_of_each_level() {
        let server = |le: Option<f64>| ServerStats {
            count: 7,
            p50_ms: le,
            p90_ms: le,
            p99_ms: Some(f64::INFINITY),
        };
        let report = Report {
            settings: Settings {
                server: "child".into(),
                model_url: "http://127.0.0.1:1".into(),
                turns: 2,
                tokens: 10,
                first_token_ms: 0,
                token_interval_ms: 0,
                think_ms: 0,
                warmup_turns: 0,
                turn_timeout_ms: 1000,
                open_file_limit: None,
            },
            levels: vec![
                level(
                    LevelKind::Streaming,
                    10,
                    Some(ServerSide {
                        relay_per_token: server(Some(0.25)),
                        prompt_to_model: server(None),
                        model_first_token: server(Some(1.0)),
                        turn_duration: server(Some(25.0)),
                    }),
                ),
                level(LevelKind::Streaming, 20, None),
                level(LevelKind::Idle, 30, None),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{table}"))
        };
        let latency = at("level        latency (ms)");
        assert_eq!(
            &lines[latency + 1..latency + 5],
            [
                "10 calls     relay per token                  40     0.125     0.250     0.375     0.500",
                "             first-token relay                40     0.500     1.000     1.500     2.000",
                "             prompt → model request            0         -         -         -         -",
                "             turn completion                  40    20.000    40.000    60.000    80.000",
            ]
        );
        assert!(lines[latency + 5].starts_with("20 calls     relay per token "));
        let server_side = at("level        server-side (from /metrics)");
        assert_eq!(
            &lines[server_side + 1..server_side + 6],
            [
                "10 calls     relay per token                    7     ≤0.25     ≤0.25      +Inf",
                "             prompt → model request             7         -         -      +Inf",
                "             model first token                  7        ≤1        ≤1      +Inf",
                "             turn duration                      7       ≤25       ≤25      +Inf",
                "20 calls     (no scrape: see the warning)",
            ]
        );
    }
}
