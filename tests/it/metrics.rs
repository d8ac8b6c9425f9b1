//! `GET /metrics`: Prometheus text, protected by `API_TOKEN`, with the figures a call produces.

use relaybot::agent::tools::ToolRegistry;

use crate::helpers::{reply, spawn_app_with};

/// The value of the first sample line of `name` (with its labels, if any) in `page`.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A call's turn shows up in every stage histogram and counter, and a refused upgrade in the
/// refusals; without the bearer token the page is refused.
#[tokio::test]
async fn metrics_count_a_call_and_need_the_api_token() {
    let app = spawn_app_with(&[("API_TOKEN", "scrape-me")], ToolRegistry::new()).await;
    let mut caller = app.dial().await;
    caller.say("hello").await.unwrap();
    assert!(!reply(&mut caller).await.text.is_empty());
    // An upgrade without a call token is refused before anything runs, and counted.
    let refused = reqwest::Client::new()
        .get(format!("{}/ws", app.base_url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let url = format!("{}/metrics", app.base_url);
    let anonymous = reqwest::get(&url).await.unwrap();
    assert_eq!(anonymous.status(), 401, "API_TOKEN protects the metrics");
    let page = reqwest::Client::new()
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let page = page.text().await.unwrap();
    for histogram in [
        "relaybot_prompt_to_model_request_seconds",
        "relaybot_model_first_token_seconds",
        "relaybot_token_relay_seconds",
        "relaybot_turn_duration_seconds",
    ] {
        let count = sample(&page, &format!("{histogram}_count"))
            .unwrap_or_else(|| panic!("{histogram}_count in\n{page}"));
        assert!(count >= 1.0, "{histogram} recorded the turn");
        assert!(
            page.contains(&format!("{histogram}_bucket{{le=\"0.001\"}}")),
            "{histogram} is a histogram with buckets"
        );
    }
    for counter in ["relaybot_calls_total", "relaybot_turns_total"] {
        assert!(sample(&page, counter).unwrap_or(0.0) >= 1.0, "{counter}");
    }
    assert!(sample(&page, "relaybot_calls_live").unwrap_or(0.0) >= 1.0);
    assert!(
        page.contains("relaybot_refusals_total{reason=\"call_token\"}"),
        "{page}"
    );
    caller.hang_up().await;
}
