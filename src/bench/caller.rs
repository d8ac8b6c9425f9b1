//! A lean simulated Twilio caller for the bench: the same path as [`crate::simulator::Caller`]
//! (signed `POST /twiml` → `<ConversationRelay url>` → signed WebSocket upgrade → `setup` →
//! `prompt`s), with one shared HTTP client, small WebSocket buffers (so ten thousand of them fit
//! in the bench process), Nagle off, and timestamps taken as frames arrive.

use std::{borrow::Cow, time::Duration};

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Message},
    MaybeTlsStream, WebSocketStream,
};

use super::Clock;
use crate::{
    relay::protocol::{Inbound, Setup},
    simulator::{new_sid, relay_upgrade, RelayTwiml},
    twilio::signature,
};

/// The server the callers ring.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Where requests go: `http://127.0.0.1:port`.
    pub base: String,
    /// The base of the URLs Twilio signs (`PUBLIC_URL`, else `base`).
    pub signing_base: String,
    /// Signs requests like Twilio when set.
    pub auth_token: Option<String>,
}

/// How each turn is played and checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TurnPlan {
    /// Tokens the fake model streams per reply.
    pub tokens: usize,
    /// Longest wait from the prompt to the closing `last: true`.
    pub timeout: Duration,
    /// The bench's clock (shared with the fake model).
    pub clock: Clock,
}

/// What one turn measured, in µs.
#[derive(Debug, Default)]
pub(crate) struct TurnSamples {
    /// Chunk written by the fake model → `text` frame read here, per token.
    pub tokens_us: Vec<u64>,
    /// The same for the reply's first token.
    pub first_us: Option<u64>,
    /// Prompt sent → `last: true` read.
    pub completion_us: u64,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A live call.
pub(crate) struct Call {
    socket: Socket,
}

/// Places a call: the voice webhook, the WebSocket, `setup`.
///
/// # Errors
/// A message for a failed request, TwiML without `<ConversationRelay>` (the server at capacity,
/// for one), or a failed upgrade.
pub(crate) async fn dial(http: &reqwest::Client, target: &Target) -> Result<Call, String> {
    let call_sid = new_sid("CA");
    let account_sid = new_sid("AC");
    let (from, to) = ("+15005550006", "+15005550001");
    let form: Vec<(String, String)> = [
        ("AccountSid", account_sid.as_str()),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut request = http.post(format!("{}/twiml", target.base)).form(&form);
    if let Some(token) = &target.auth_token {
        let signed = format!("{}/twiml", target.signing_base);
        request = request.header(signature::HEADER, signature::sign(token, &signed, &form));
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST /twiml: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("POST /twiml: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST /twiml: HTTP {status}: {body}"));
    }

    // Connect to the server we were given, keeping the TwiML URL's path and query (it may name
    // a public wss:// host), and sign the URL as written, as Twilio does.
    let relay = RelayTwiml::parse(&body).map_err(|e| e.to_string())?;
    let custom_parameters = relay.relay.parameters();
    let upgrade = relay_upgrade(&relay.url, &target.base, target.auth_token.as_deref())
        .map_err(|e| e.to_string())?;
    // The default 128 KiB read buffer per socket would dominate the bench's own memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(upgrade, Some(config), true),
    )
    .await
    .map_err(|_| "websocket upgrade timed out after 30 s".to_owned())?
    .map_err(|e| format!("websocket upgrade: {e}"))?;

    let setup = Inbound::Setup(Box::new(Setup {
        session_id: new_sid("VX"),
        account_sid,
        call_sid,
        from: from.to_owned(),
        to: to.to_owned(),
        call_type: "PSTN".into(),
        direction: "inbound".into(),
        call_status: "RINGING".into(),
        custom_parameters,
        ..Setup::default()
    }));
    let text = serde_json::to_string(&setup).map_err(|e| e.to_string())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("sending setup: {e}"))?;
    Ok(Call { socket })
}

/// The fields of an outbound frame the bench reads.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    token: Cow<'a, str>,
    #[serde(default)]
    last: bool,
}

/// The `(index, written µs)` marks in a token: `t<index>w<µs> ` each (a server may merge them).
fn marks(token: &str) -> impl Iterator<Item = Option<(usize, u64)>> + '_ {
    token.split_whitespace().map(|piece| {
        let (index, written) = piece.strip_prefix('t')?.split_once('w')?;
        Some((index.parse().ok()?, written.parse().ok()?))
    })
}

impl Call {
    /// One turn: says `label @<now µs>` (`label @warm-up` when not `measured`, so the fake
    /// model records no prompt → request sample) and reads the reply to its `last: true`, checking
    /// that every token of the fake model arrives once and in order.
    ///
    /// # Errors
    /// A message for a timeout, a closed socket, or a reply that is not what the model sent
    /// (the reply is read to its end first, so the next turn starts clean).
    pub(crate) async fn turn(
        &mut self,
        label: &str,
        plan: &TurnPlan,
        measured: bool,
    ) -> Result<TurnSamples, String> {
        let sent = plan.clock.now_us();
        let said = if measured {
            format!("{label} @{sent}")
        } else {
            format!("{label} {}", super::fake_model::WARMUP_MARK)
        };
        let prompt = serde_json::json!({
            "type": "prompt",
            "voicePrompt": said,
            "lang": "en-US",
            "last": true,
        });
        self.socket
            .send(Message::Text(prompt.to_string().into()))
            .await
            .map_err(|e| format!("sending the prompt: {e}"))?;
        let deadline = tokio::time::Instant::now() + plan.timeout;
        let mut samples = TurnSamples {
            tokens_us: Vec::with_capacity(plan.tokens),
            ..TurnSamples::default()
        };
        let mut problem: Option<String> = None;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| {
                    format!(
                        "no last:true within {} ms ({} of {} tokens arrived)",
                        plan.timeout.as_millis(),
                        samples.tokens_us.len(),
                        plan.tokens
                    )
                })?;
            let received = plan.clock.now_us();
            let text = match next {
                None | Some(Ok(Message::Close(_))) => {
                    return Err("the server closed the socket".into());
                }
                Some(Err(e)) => return Err(format!("websocket: {e}")),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
            };
            let frame: Frame = serde_json::from_str(text.as_str())
                .map_err(|e| format!("bad frame {:?}: {e}", text.as_str()))?;
            if frame.kind != "text" {
                if frame.kind == "end" {
                    return Err(format!("the server ended the session: {}", text.as_str()));
                }
                continue;
            }
            for mark in marks(&frame.token) {
                let expected = samples.tokens_us.len();
                match mark {
                    Some((index, written)) if index == expected => {
                        let overhead = received.saturating_sub(written);
                        if index == 0 {
                            samples.first_us = Some(overhead);
                        }
                        samples.tokens_us.push(overhead);
                    }
                    Some((index, _)) => {
                        problem.get_or_insert(format!(
                            "token {index} arrived where token {expected} was due"
                        ));
                    }
                    None => {
                        problem.get_or_insert(format!(
                            "text that the model did not send: {:?}",
                            frame.token
                        ));
                    }
                }
            }
            if frame.last {
                samples.completion_us = received.saturating_sub(sent);
                break;
            }
        }
        if let Some(problem) = problem {
            return Err(problem);
        }
        if samples.tokens_us.len() != plan.tokens {
            return Err(format!(
                "{} of {} tokens arrived",
                samples.tokens_us.len(),
                plan.tokens
            ));
        }
        Ok(samples)
    }

    /// Hangs up as Twilio does (a Close frame) and waits briefly for the server's Close.
    pub(crate) async fn hang_up(mut self) {
        if self.socket.close(None).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_marks_one_or_merged() {
        let found: Vec<_> = marks("t0w15 ").collect();
        assert_eq!(found, vec![Some((0, 15))]);
        let found: Vec<_> = marks("t1w20 t2w40 ").collect();
        assert_eq!(found, vec![Some((1, 20)), Some((2, 40))]);
        let found: Vec<_> = marks("One moment.").collect();
        assert_eq!(found, vec![None, None]);
        assert_eq!(marks("").count(), 0);
    }
}
