//! One level: place the calls, let them talk (or hold them), hang up, and measure.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Barrier, Semaphore};

use super::{
    caller::{self, TurnPlan},
    fake_model,
    report::{Level, LevelKind, ServerUsage, Stats},
    scrape,
    server::Server,
    usage, Bench,
};

/// Error messages kept per level.
const ERROR_MESSAGES_KEPT: usize = 10;

/// What one call measured.
#[derive(Default)]
struct CallOutcome {
    held: bool,
    tokens_us: Vec<u64>,
    first_us: Vec<u64>,
    completion_us: Vec<u64>,
    errors: Vec<String>,
}

impl Bench<'_> {
    /// Places `calls` calls, has them talk (or hold), hangs up, and measures.
    pub(super) async fn drive(&self, server: &Server, kind: LevelKind, calls: usize) -> Level {
        let options = self.options;
        let turns = if kind == LevelKind::Idle {
            0
        } else {
            options.turns
        };
        let pid = server.pid;
        let target = Arc::new(server.target.clone());
        let plan = TurnPlan {
            tokens: options.tokens,
            timeout: Duration::from_millis(options.turn_timeout_ms),
            clock: self.clock,
        };
        let spread = Duration::from_millis(options.token_interval_ms.max(1));
        let think_ms = options.think_ms;
        let warmup = if kind == LevelKind::Streaming {
            options.warmup_turns
        } else {
            0
        };
        // With warm-up turns, every call lines up after them (`warmed`), the server's figures
        // are read, then all go on (`measure`): the latency figures start there.
        let warmed = Arc::new(Barrier::new(calls + 1));
        let measure = Arc::new(Barrier::new(calls + 1));
        let progress = progress_bar(kind, calls);
        let api_token = options.api_token.as_deref().filter(|t| !t.is_empty());
        // Read now, or (with warm-up turns) once every call is warm, below.
        let metrics_before = match kind {
            LevelKind::Streaming if warmup == 0 => {
                Some(scrape::scrape(&self.http, &server.target.base, api_token).await)
            }
            _ => None,
        };

        let _ = self.model.take();
        let me = usage::own_pid();
        let rss_before = pid.and_then(usage::memory);
        let cpu_before = pid.and_then(usage::cpu);
        let bench_before = usage::cpu(me);
        let started = std::time::Instant::now();
        let sampler = pid.map(|p| usage::RssSampler::start(p, Duration::from_millis(50)));

        let ready = Arc::new(Barrier::new(calls + 1));
        let go = Arc::new(Barrier::new(calls + 1));
        let dialing = Arc::new(Semaphore::new(options.dial_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(calls);
        for n in 0..calls {
            let (http, target, plan) = (self.http.clone(), target.clone(), plan);
            let (ready, go, dialing, progress) =
                (ready.clone(), go.clone(), dialing.clone(), progress.clone());
            let (warmed, measure) = (warmed.clone(), measure.clone());
            // Call n's first prompt goes out n/calls of a token interval after the start.
            let offset = spread.mul_f64(n as f64 / calls as f64);
            tasks.push(tokio::spawn(async move {
                let mut outcome = CallOutcome::default();
                let dialed = {
                    let _permit = dialing.acquire().await;
                    Box::pin(caller::dial(&http, &target)).await
                };
                progress.inc(1);
                ready.wait().await;
                go.wait().await;
                let mut call = match dialed {
                    Ok(call) => call,
                    Err(e) => {
                        outcome.errors.push(format!("call {n}: {e}"));
                        if warmup > 0 {
                            warmed.wait().await;
                            measure.wait().await;
                        }
                        return outcome;
                    }
                };
                let mut lined_up = warmup == 0;
                outcome.held = true;
                if turns > 0 {
                    tokio::time::sleep(offset).await;
                }
                for turn in 0..warmup + turns {
                    if turn == warmup && !lined_up {
                        lined_up = true;
                        warmed.wait().await;
                        measure.wait().await;
                    }
                    if turn > 0 && think_ms > 0 {
                        let pause = rand::random_range(think_ms / 2..=think_ms * 3 / 2);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    let measured = turn >= warmup;
                    let label = format!("bench call {n} turn {turn}");
                    match call.turn(&label, &plan, measured).await {
                        Ok(samples) if measured => {
                            outcome.tokens_us.extend(samples.tokens_us);
                            outcome.first_us.extend(samples.first_us);
                            outcome.completion_us.push(samples.completion_us);
                            progress.inc(1);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            outcome.errors.push(format!("call {n} turn {turn}: {e}"));
                            break;
                        }
                    }
                }
                if !lined_up {
                    // Failed during the warm-up: the others must not wait for this call.
                    warmed.wait().await;
                    measure.wait().await;
                }
                call.hang_up().await;
                outcome
            }));
        }

        ready.wait().await;
        if kind == LevelKind::Idle {
            progress.set_message("holding (1 s)");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let rss_setup = pid.and_then(usage::memory).map(|(rss, _)| rss);
        match kind {
            LevelKind::Streaming => {
                progress.set_length((calls * turns) as u64);
                progress.set_position(0);
                progress.set_message("turns");
            }
            LevelKind::Idle => progress.set_message("hanging up"),
        }
        go.wait().await;
        // With warm-up turns, the server-side figures start once every call is warm.
        let metrics_before = if warmup > 0 {
            warmed.wait().await;
            let before = scrape::scrape(&self.http, &server.target.base, api_token).await;
            measure.wait().await;
            Some(before)
        } else {
            metrics_before
        };
        let talk_started = std::time::Instant::now();
        let bench_talk_before = usage::cpu(me);
        let mut outcomes = Vec::with_capacity(calls);
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|e| CallOutcome {
                errors: vec![format!("call task failed: {e}")],
                ..CallOutcome::default()
            }));
        }
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        let talk_wall_ms = talk_started.elapsed().as_secs_f64() * 1000.0;
        let bench_talk_after = usage::cpu(me);
        // Let the server finish tearing the calls down before reading its CPU time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu_after = pid.and_then(usage::cpu);
        let bench_after = usage::cpu(me);
        let rss_peak = sampler.map(usage::RssSampler::stop);
        let memory_after = pid.and_then(usage::memory);
        progress.finish_and_clear();
        // After the CPU time is read, so the scrape is not counted in it.
        let server_side = match metrics_before {
            Some(before) => {
                let after = scrape::scrape(&self.http, &server.target.base, api_token).await;
                match before.and_then(|before| after.map(|after| after.since(&before))) {
                    Ok(side) => Some(side),
                    Err(e) => {
                        eprintln!("warning: {calls} calls: no server-side figures: {e}");
                        None
                    }
                }
            }
            None => None,
        };

        let model = self.model.take();
        let mut level = summarize(kind, calls, turns, options.tokens, outcomes, model);
        level.wall_ms = wall_ms;
        level.server_log = server.log.as_ref().map(|p| p.display().to_string());
        level.server_side = server_side;
        level.talk_wall_ms = talk_wall_ms;
        level.bench_talk_cpu_ms = bench_talk_before
            .zip(bench_talk_after)
            .map(|(before, after)| after.since(&before).total_ms);
        level.bench_cpu_ms = bench_before
            .zip(bench_after)
            .map(|(before, after)| after.since(&before).total_ms);
        if let (Some(before), Some(after), Some((rss0, _)), Some((_, hwm))) =
            (cpu_before, cpu_after, rss_before, memory_after)
        {
            let cpu = after.since(&before);
            let rss_setup = rss_setup.unwrap_or(rss0);
            let rss_peak = rss_peak.unwrap_or(rss0).max(rss_setup);
            let grown = match kind {
                LevelKind::Streaming => rss_peak,
                LevelKind::Idle => rss_setup,
            };
            level.server = Some(ServerUsage {
                cpu_ms: cpu.total_ms,
                cpu_user_ms: cpu.user_ms,
                cpu_system_ms: cpu.system_ms,
                cpu_ms_per_call: cpu.total_ms / calls as f64,
                rss_baseline_bytes: rss0,
                rss_setup_bytes: rss_setup,
                rss_peak_bytes: rss_peak,
                vm_hwm_bytes: hwm,
                rss_per_call_bytes: grown.saturating_sub(rss0) as f64 / calls as f64,
            });
        }
        level
    }
}

/// The level's figures from every call's outcome and the fake model's samples.
fn summarize(
    kind: LevelKind,
    calls: usize,
    turns: usize,
    tokens: usize,
    outcomes: Vec<CallOutcome>,
    model: fake_model::ModelSamples,
) -> Level {
    let mut tokens_us = Vec::with_capacity(calls * turns * tokens);
    let mut first_us = Vec::with_capacity(calls * turns);
    let mut completion_us = Vec::with_capacity(calls * turns);
    let mut errors = 0;
    let mut error_messages = Vec::new();
    let mut calls_held = 0;
    for outcome in outcomes {
        calls_held += usize::from(outcome.held);
        tokens_us.extend(outcome.tokens_us);
        first_us.extend(outcome.first_us);
        completion_us.extend(outcome.completion_us);
        errors += outcome.errors.len();
        for e in outcome.errors {
            if error_messages.len() < ERROR_MESSAGES_KEPT {
                error_messages.push(e);
            }
        }
    }
    if model.unmarked > 0 {
        errors += model.unmarked;
        if error_messages.len() < ERROR_MESSAGES_KEPT {
            error_messages.push(format!(
                "{} model requests without the caller's @<µs> mark",
                model.unmarked
            ));
        }
    }
    let mut prompt_to_model_us = model.prompt_to_model_us;
    Level {
        kind,
        calls,
        calls_held,
        turns,
        tokens_per_turn: tokens,
        wall_ms: 0.0,
        talk_wall_ms: 0.0,
        bench_talk_cpu_ms: None,
        errors,
        error_messages,
        model_requests: model.requests,
        server: None,
        bench_cpu_ms: None,
        server_log: None,
        relay_per_token: Stats::from_micros(&mut tokens_us),
        first_token: Stats::from_micros(&mut first_us),
        prompt_to_model: Stats::from_micros(&mut prompt_to_model_us),
        turn_completion: Stats::from_micros(&mut completion_us),
        server_side: None,
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal): calls dialled, then turns.
fn progress_bar(kind: LevelKind, calls: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(calls as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>14} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(match kind {
        LevelKind::Streaming => format!("{calls} calls"),
        LevelKind::Idle => format!("{calls} idle"),
    });
    bar.set_message("dialling");
    bar
}
