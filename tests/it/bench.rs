//! `relaybot bench` run as a process for a few calls: it reports numbers and no errors. Timings
//! are never asserted (they depend on the machine); only that they were measured.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Longest the smoke run may take; a bound, not an expectation.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn bench_smoke_run_reports_numbers_and_no_errors() {
    let json_path =
        std::env::temp_dir().join(format!("relaybot-bench-smoke-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json_path);
    let (calls, turns, tokens, idle) = (2u64, 2u64, 3u64, 3u64);
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaybot"))
        .current_dir(std::env::temp_dir())
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("PUBLIC_URL")
        .env_remove("API_TOKEN")
        .env("RUST_LOG", "relaybot=info,warn")
        .args(["bench", "--calls", &calls.to_string()])
        .args(["--turns", &turns.to_string()])
        .args(["--tokens", &tokens.to_string()])
        .args(["--token-interval-ms", "5"])
        // A warm-up turn and pauses between turns: neither may change what is counted.
        .args(["--warmup-turns", "1", "--think-ms", "4"])
        .args(["--idle", &idle.to_string()])
        .arg("--json")
        .arg(&json_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relaybot bench");
    // Read the pipes while it runs so a full pipe cannot stall it.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relaybot bench did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("relay per token"), "{stdout}");
    // The progress bar is drawn only on a terminal: nothing floods a piped stderr.
    assert!(stderr.lines().count() < 20, "{stderr}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report"))
            .expect("valid JSON");
    let _ = std::fs::remove_file(&json_path);
    let levels = report["levels"].as_array().expect("levels");
    // The servers' logs are kept for the user; not for this test.
    for level in levels {
        if let Some(dir) = level["server_log"]
            .as_str()
            .and_then(|log| std::path::Path::new(log).parent())
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    assert_eq!(levels.len(), 2, "{report:#}");

    let streaming = &levels[0];
    assert_eq!(streaming["kind"], "streaming", "{streaming:#}");
    assert_eq!(streaming["errors"], 0, "{streaming:#}");
    assert_eq!(streaming["calls"], calls);
    assert_eq!(streaming["calls_held"], calls);
    assert_eq!(
        streaming["relay_per_token"]["count"],
        calls * turns * tokens,
        "{streaming:#}"
    );
    assert_eq!(streaming["first_token"]["count"], calls * turns);
    assert_eq!(streaming["prompt_to_model"]["count"], calls * turns);
    assert_eq!(streaming["turn_completion"]["count"], calls * turns);
    for stat in ["relay_per_token", "prompt_to_model", "turn_completion"] {
        for field in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            assert!(
                streaming[stat][field].as_f64().is_some(),
                "{stat}.{field}: {streaming:#}"
            );
        }
    }
    // The server's own histograms, scraped from its /metrics before and after the calls.
    assert!(stdout.contains("server-side (from /metrics)"), "{stdout}");
    let side = &streaming["server_side"];
    assert_eq!(
        side["relay_per_token"]["count"],
        calls * turns * tokens,
        "{side:#}"
    );
    assert!(
        side["relay_per_token"]["p99_ms"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{side:#}"
    );
    for stat in ["prompt_to_model", "model_first_token", "turn_duration"] {
        assert_eq!(side[stat]["count"], calls * turns, "{stat}: {side:#}");
    }
    assert!(
        levels[1]["server_side"].is_null(),
        "idle levels are not scraped"
    );
    // CPU time and memory come from /proc.
    if cfg!(target_os = "linux") {
        let server = &streaming["server"];
        assert!(server["cpu_ms"].as_f64().unwrap() > 0.0, "{server:#}");
        assert!(
            server["cpu_ms_per_call"].as_f64().unwrap() > 0.0,
            "{server:#}"
        );
        assert!(server["rss_peak_bytes"].as_u64().unwrap() > 0, "{server:#}");
        assert!(
            server["rss_baseline_bytes"].as_u64().unwrap() > 0,
            "{server:#}"
        );
        assert!(
            streaming["bench_cpu_ms"].as_f64().is_some(),
            "{streaming:#}"
        );
    }

    let idle_level = &levels[1];
    assert_eq!(idle_level["kind"], "idle", "{idle_level:#}");
    assert_eq!(idle_level["errors"], 0, "{idle_level:#}");
    assert_eq!(idle_level["calls"], idle);
    assert_eq!(idle_level["calls_held"], idle, "{idle_level:#}");
    assert_eq!(idle_level["turns"], 0);
    if cfg!(target_os = "linux") {
        assert!(
            idle_level["server"]["rss_per_call_bytes"]
                .as_f64()
                .is_some(),
            "{idle_level:#}"
        );
    }
}
