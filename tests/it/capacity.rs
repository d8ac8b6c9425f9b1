//! The call cap under a burst: slots are taken when `/twiml` answers, not at the upgrade.

use futures::future::join_all;
use relaybot::{agent::tools::ToolRegistry, simulator::Caller, twilio::twiml};

use crate::helpers::{reply, spawn_app_with, WAIT};

const CAP: usize = 50;
const BURST: usize = 200;

/// 200 webhooks at once with `MAX_CONCURRENT_CALLS=50`: exactly 50 get a relay session, the other
/// 150 hear the at-capacity line, and none of the 50 upgrades is refused for capacity. When a
/// call ends its slot serves the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_gets_exactly_the_cap_and_polite_refusals() {
    let cap = CAP.to_string();
    let app = spawn_app_with(
        &[
            ("MAX_CONCURRENT_CALLS", cap.as_str()),
            ("IDLE_REPROMPT_MS", "600000"),
        ],
        ToolRegistry::new(),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/twiml", app.base_url);
    let webhooks = (0..BURST).map(|n| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let call_sid = format!("CA{n:032}");
            let body = http
                .post(&url)
                .form(&[
                    ("CallSid", call_sid.as_str()),
                    ("From", "+15005550006"),
                    ("To", "+15005550001"),
                    ("CallStatus", "ringing"),
                ])
                .send()
                .await
                .expect("webhook answered")
                .text()
                .await
                .unwrap();
            (call_sid, body)
        }
    });
    let answers = join_all(webhooks).await;
    let (relayed, refused): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(_, body)| {
        twiml::parse(body)
            .unwrap()
            .find("ConversationRelay")
            .is_some()
    });
    assert_eq!(relayed.len(), CAP, "exactly the cap gets a relay session");
    assert_eq!(refused.len(), BURST - CAP);
    for (_, body) in &refused {
        let root = twiml::parse(body).unwrap();
        assert_eq!(
            root.find("Say").map(|s| s.text.as_str()),
            Some(relaybot::config::lines::AT_CAPACITY),
            "{body}"
        );
    }

    // Every caller that got the relay TwiML connects: no upgrade is refused for capacity.
    let connects = relayed.into_iter().map(|(call_sid, body)| {
        let (base, options) = (app.base_url.clone(), app.dial_options.clone());
        async move { Caller::connect(&base, &body, call_sid, options).await }
    });
    let mut callers: Vec<Caller> = join_all(connects)
        .await
        .into_iter()
        .map(|c| c.expect("upgrade accepted"))
        .collect();
    for caller in &mut callers {
        caller.say("hello").await.unwrap();
    }
    for caller in &mut callers {
        assert!(!reply(caller).await.text.is_empty(), "each session answers");
    }

    // A full house: the next caller is turned away; once one hangs up, the next gets through.
    let (_, _, body) = app
        .post_form("/twiml", &[("CallSid", "CA_next"), ("From", "+1555")])
        .await;
    assert!(twiml::parse(&body)
        .unwrap()
        .find("ConversationRelay")
        .is_none());
    callers.pop().unwrap().hang_up().await;
    let freed = tokio::time::timeout(WAIT, async {
        loop {
            let (_, _, body) = app
                .post_form("/twiml", &[("CallSid", "CA_next"), ("From", "+1555")])
                .await;
            if twiml::parse(&body)
                .unwrap()
                .find("ConversationRelay")
                .is_some()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the ended call's slot serves the next caller"
    );
}
