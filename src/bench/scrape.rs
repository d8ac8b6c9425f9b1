//! The server's own view of a level: its latency histograms read from `GET /metrics`.
//!
//! The bench scrapes the page before a streaming level's calls start and again once they have
//! hung up, and reports the difference, so that with `--url` the figures cover that level only.
//! Percentiles are estimated from the cumulative `_bucket{le="…"}` counts the way Prometheus'
//! `histogram_quantile` starts: the first bucket whose cumulative count is at least `q × total`
//! holds the `q` quantile, and its upper bound `le` is reported, **without interpolation** inside
//! the bucket: "p99 ≤ 0.5 ms" says only that 99% of the samples were at most 0.5 ms. A quantile
//! in the `+Inf` bucket (above the largest finite bound) is reported as infinite.
//!
//! The parser reads the subset of the Prometheus text format the server writes:
//! `name{label="value",…} value [timestamp]` sample lines; `#` lines and blank lines are skipped.

use super::report::{ServerSide, ServerStats};

/// `relaybot_token_relay_seconds`: model chunk read → its `text` frame flushed.
pub(crate) const TOKEN_RELAY: &str = "relaybot_token_relay_seconds";
/// `relaybot_prompt_to_model_request_seconds`: final `prompt` read → model request started.
pub(crate) const PROMPT_TO_MODEL: &str = "relaybot_prompt_to_model_request_seconds";
/// `relaybot_model_first_token_seconds`: model request started → first streamed chunk.
pub(crate) const MODEL_FIRST_TOKEN: &str = "relaybot_model_first_token_seconds";
/// `relaybot_turn_duration_seconds`: `prompt` read → the turn's `last: true` queued.
pub(crate) const TURN_DURATION: &str = "relaybot_turn_duration_seconds";

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample<'a> {
    /// The metric name, with any `_bucket`/`_sum`/`_count` suffix.
    pub name: &'a str,
    /// The labels, in the order written, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if present.
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one line of the text format; `None` for comments, blank lines and anything malformed.
pub(crate) fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inside)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp (ignored).
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `label="value",…}` (after the `{`): the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// One histogram's cumulative buckets, summed over any label sets other than `le`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Histogram {
    /// `(le, cumulative count)`, by increasing `le` (in the metric's unit), `+Inf` last if listed.
    pub buckets: Vec<(f64, f64)>,
    /// `_count`: every sample.
    pub count: f64,
}

impl Histogram {
    /// Histogram `name` (without the `_bucket` suffix) in `page`; empty when absent.
    pub(crate) fn from_page(page: &str, name: &str) -> Histogram {
        let bucket_name = format!("{name}_bucket");
        let count_name = format!("{name}_count");
        let mut histogram = Histogram::default();
        for sample in page.lines().filter_map(parse_line) {
            if sample.name == bucket_name {
                let Some(le) = sample.label("le").and_then(parse_bound) else {
                    continue;
                };
                histogram.add_bucket(le, sample.value);
            } else if sample.name == count_name {
                histogram.count += sample.value;
            }
        }
        histogram
    }

    fn add_bucket(&mut self, le: f64, cumulative: f64) {
        match self.buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, count)) => *count += cumulative,
            None => {
                self.buckets.push((le, cumulative));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The samples recorded since `before` (an earlier scrape of the same server): counts are
    /// subtracted bucket by bucket (a bucket `before` lacks is taken at the largest bound below
    /// it; an absent histogram is empty). If the count went down (the server restarted), `self` alone.
    pub(crate) fn since(&self, before: &Histogram) -> Histogram {
        if self.count < before.count {
            return self.clone();
        }
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, count)| {
                // Cumulative: a bound missing before counted at least the samples of the
                // largest bound below it.
                let earlier = before
                    .buckets
                    .iter()
                    .take_while(|(bound, _)| *bound <= le)
                    .last()
                    .map_or(0.0, |&(_, c)| c);
                (le, (count - earlier).max(0.0))
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - before.count,
        }
    }

    /// Samples in all: the `+Inf` bucket's count, else `_count`.
    pub(crate) fn total(&self) -> f64 {
        match self.buckets.last() {
            Some(&(le, count)) if le == f64::INFINITY => count,
            _ => self.count,
        }
    }

    /// The upper bound `le` of the first bucket holding the `q` quantile (0 < q ≤ 1): the
    /// quantile is at most this. Infinite when only the `+Inf` bucket (or no listed bucket)
    /// reaches `q × total`; `None` without samples.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let rank = q * total;
        Some(
            self.buckets
                .iter()
                .find(|&&(_, count)| count >= rank)
                .map_or(f64::INFINITY, |&(le, _)| le),
        )
    }

    /// Count and p50/p90/p99 of a histogram in seconds, as ms.
    pub(crate) fn stats(&self) -> ServerStats {
        let ms = |q: f64| self.quantile(q).map(seconds_to_ms);
        ServerStats {
            count: self.total().max(0.0).round() as u64,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    }
}

/// An `le` label: a number or `+Inf`.
fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

/// Seconds to ms, rounded to the ns so that `0.0001` s reads `0.1` ms, not `0.10000000000000002`.
fn seconds_to_ms(seconds: f64) -> f64 {
    if seconds.is_finite() {
        (seconds * 1e9).round() / 1e6
    } else {
        seconds
    }
}

/// The four latency histograms from one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    token_relay: Histogram,
    prompt_to_model: Histogram,
    model_first_token: Histogram,
    turn_duration: Histogram,
}

impl Snapshot {
    /// The histograms in a `/metrics` page (absent ones are empty).
    pub(crate) fn parse(page: &str) -> Snapshot {
        Snapshot {
            token_relay: Histogram::from_page(page, TOKEN_RELAY),
            prompt_to_model: Histogram::from_page(page, PROMPT_TO_MODEL),
            model_first_token: Histogram::from_page(page, MODEL_FIRST_TOKEN),
            turn_duration: Histogram::from_page(page, TURN_DURATION),
        }
    }

    /// The figures for what was recorded between `before` and this scrape.
    pub(crate) fn since(&self, before: &Snapshot) -> ServerSide {
        ServerSide {
            relay_per_token: self.token_relay.since(&before.token_relay).stats(),
            prompt_to_model: self.prompt_to_model.since(&before.prompt_to_model).stats(),
            model_first_token: self
                .model_first_token
                .since(&before.model_first_token)
                .stats(),
            turn_duration: self.turn_duration.since(&before.turn_duration).stats(),
        }
    }
}

/// `GET {base}/metrics`, with `Authorization: Bearer <api_token>` when given, parsed.
///
/// # Errors
/// A message for a failed request or a status other than 200.
pub(crate) async fn scrape(
    http: &reqwest::Client,
    base: &str,
    api_token: Option<&str>,
) -> Result<Snapshot, String> {
    let url = format!("{base}/metrics");
    let mut request = http.get(&url);
    if let Some(token) = api_token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (pass the server's API_TOKEN with --api-token)"
        } else {
            ""
        };
        return Err(format!("GET {url}: {status}{hint}"));
    }
    let page = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Snapshot::parse(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written page: a histogram with samples, one with none, comments, a labelled
    /// counter with an escaped value, and a timestamp.
    const PAGE: &str = r#"# HELP relaybot_token_relay_seconds model chunk read → text frame written
# TYPE relaybot_token_relay_seconds histogram
relaybot_token_relay_seconds_bucket{le="0.0001"} 10
relaybot_token_relay_seconds_bucket{le="0.00025"} 60
relaybot_token_relay_seconds_bucket{le="0.0005"} 90
relaybot_token_relay_seconds_bucket{le="0.001"} 99
relaybot_token_relay_seconds_bucket{le="0.0025"} 99
relaybot_token_relay_seconds_bucket{le="+Inf"} 100
relaybot_token_relay_seconds_sum 0.0421
relaybot_token_relay_seconds_count 100

# TYPE relaybot_turn_duration_seconds histogram
relaybot_turn_duration_seconds_bucket{le="0.0001"} 0
relaybot_turn_duration_seconds_bucket{le="+Inf"} 0
relaybot_turn_duration_seconds_sum 0
relaybot_turn_duration_seconds_count 0
relaybot_refusals_total{reason="call_token",note="a \"quoted\" \\ value"} 3 1700000000000
relaybot_calls_live 2
"#;

    #[test]
    fn parses_sample_lines() {
        assert_eq!(parse_line("# TYPE x histogram"), None);
        assert_eq!(parse_line("   "), None);
        let plain = parse_line("relaybot_calls_live 2").unwrap();
        assert_eq!(plain.name, "relaybot_calls_live");
        assert!(plain.labels.is_empty());
        assert_eq!(plain.value, 2.0);
        let bucket = parse_line(r#"a_bucket{le="+Inf"} 100"#).unwrap();
        assert_eq!(bucket.name, "a_bucket");
        assert_eq!(bucket.label("le"), Some("+Inf"));
        assert_eq!(bucket.value, 100.0);
        let labelled = PAGE
            .lines()
            .find_map(|l| parse_line(l).filter(|s| s.name == "relaybot_refusals_total"))
            .unwrap();
        assert_eq!(labelled.label("reason"), Some("call_token"));
        assert_eq!(labelled.label("note"), Some(r#"a "quoted" \ value"#));
        assert_eq!(labelled.value, 3.0, "the timestamp is not the value");
        assert_eq!(parse_line("a +Inf").unwrap().value, f64::INFINITY);
        assert!(parse_line("a NaN").unwrap().value.is_nan());
        assert_eq!(parse_line("a 1.5e-3").unwrap().value, 0.0015);
        assert_eq!(parse_line(r#"a{le="1"}"#), None, "no value");
        assert_eq!(parse_line(r#"a{le="1 2"#), None, "unterminated");
        assert_eq!(parse_line("a x"), None);
    }

    #[test]
    fn reads_a_histogram() {
        let relay = Histogram::from_page(PAGE, TOKEN_RELAY);
        assert_eq!(relay.count, 100.0);
        assert_eq!(relay.total(), 100.0);
        assert_eq!(relay.buckets.len(), 6);
        assert_eq!(relay.buckets[0], (0.0001, 10.0));
        assert_eq!(relay.buckets[5], (f64::INFINITY, 100.0));
        // Not a prefix match: `relaybot_token_relay` is not `relaybot_token_relay_seconds`.
        assert_eq!(
            Histogram::from_page(PAGE, "relaybot_token_relay"),
            Histogram::default()
        );
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let relay = Histogram::from_page(PAGE, TOKEN_RELAY);
        assert_eq!(relay.quantile(0.1), Some(0.0001), "exactly at a bound");
        assert_eq!(relay.quantile(0.11), Some(0.00025));
        assert_eq!(relay.quantile(0.5), Some(0.00025));
        assert_eq!(relay.quantile(0.9), Some(0.0005));
        assert_eq!(relay.quantile(0.99), Some(0.001));
        assert_eq!(
            relay.quantile(0.995),
            Some(f64::INFINITY),
            "the +Inf bucket"
        );
        assert_eq!(relay.quantile(1.0), Some(f64::INFINITY));
        let stats = relay.stats();
        assert_eq!(stats.count, 100);
        assert_eq!(stats.p50_ms, Some(0.25));
        assert_eq!(stats.p90_ms, Some(0.5));
        assert_eq!(stats.p99_ms, Some(1.0));
        assert_eq!(seconds_to_ms(0.0001), 0.1);
        assert_eq!(seconds_to_ms(60.0), 60_000.0);
    }

    #[test]
    fn empty_and_absent_histograms_have_no_quantiles() {
        let turn = Histogram::from_page(PAGE, TURN_DURATION);
        assert_eq!(turn.buckets.len(), 2);
        assert_eq!(turn.total(), 0.0);
        assert_eq!(turn.quantile(0.5), None);
        let absent = Histogram::from_page(PAGE, MODEL_FIRST_TOKEN);
        assert_eq!(absent, Histogram::default());
        assert_eq!(absent.quantile(0.99), None);
        let stats = absent.stats();
        assert_eq!(stats.count, 0);
        assert_eq!(
            (stats.p50_ms, stats.p90_ms, stats.p99_ms),
            (None, None, None)
        );
    }

    #[test]
    fn a_difference_covers_only_the_later_samples() {
        let before = Snapshot::parse(
            "relaybot_token_relay_seconds_bucket{le=\"0.0001\"} 10\n\
             relaybot_token_relay_seconds_bucket{le=\"+Inf\"} 10\n\
             relaybot_token_relay_seconds_count 10\n",
        );
        let after = Snapshot::parse(PAGE);
        let side = after.since(&before);
        // 90 new samples: 0 ≤ 0.1 ms, 50 ≤ 0.25, 80 ≤ 0.5, 89 ≤ 1, 90 in all.
        assert_eq!(side.relay_per_token.count, 90);
        assert_eq!(side.relay_per_token.p50_ms, Some(0.25));
        assert_eq!(side.relay_per_token.p90_ms, Some(1.0), "81 > 80");
        assert_eq!(side.relay_per_token.p99_ms, Some(f64::INFINITY));
        assert_eq!(side.turn_duration.count, 0);
        assert_eq!(side.model_first_token.p99_ms, None);
        // A server that restarted in between: the later scrape alone.
        let restarted = before.token_relay.since(&after.token_relay);
        assert_eq!(restarted, before.token_relay);
        // Against an empty first scrape: everything.
        assert_eq!(after.since(&Snapshot::default()).relay_per_token.count, 100);
    }
}
