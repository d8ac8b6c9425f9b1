//! The Conversation Relay WebSocket loop: one task per call reads Twilio's frames, polls the
//! call's running turn, hands both to its [`Session`] (the call's logic) and writes what the
//! session queued. Transport only: every decision is the session's.
//!
//! One select per pass, biased: the call's stop signals, then Twilio's frames (an `interrupt`
//! is seen before more tokens are written), then the turn (a chunk it reads in this pass is
//! written in the same pass), its events, call-control requests, the Calls API's answer, the
//! drain's wrap-up and the call's timer. Writes are bounded by [`WRITE_TIMEOUT`].

use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument};

use super::session::{Session, SessionDeps};
use crate::telemetry;

/// Runs a call over an upgraded socket until either side ends it.
///
/// `expected_call_sid` is the CallSid of the call token the upgrade carried; a `setup` for any
/// other call closes the socket (policy violation, 1008). `cancel` stops the call at once; it is
/// only looked at after `deps.wrap_up` (a drain cancels wrap-up first, then this).
pub async fn run(
    socket: WebSocket,
    deps: SessionDeps,
    cancel: CancellationToken,
    expected_call_sid: Option<String>,
) {
    let span = tracing::info_span!("call", call_sid = field::Empty, session_id = field::Empty);
    let started = Instant::now();
    let max_frame = deps.limits.max_frame_bytes;
    let wrap_up = deps.wrap_up.clone();
    let resume = deps.resume.clone();
    let mut session = Session::new(deps, span.clone(), expected_call_sid);
    // One owner for both directions: reading happens inside the select and writing after it,
    // so no split (and no lock between the halves on every poll) is needed.
    let mut socket = socket;
    let metrics = telemetry::metrics();
    metrics.calls.increment(1);
    let live = LiveCall::start();
    async move {
        tracing::debug!("websocket open");
        let mut wrapped_up = false;
        // One timer for the whole call, moved when the next deadline changes (not a new timer
        // per pass of the loop, which is once per token).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        // Likewise one wait for each server signal. Polling one takes its token's lock, so the
        // loop polls a token of this call's own (not the server-wide one every call shares),
        // and the stop signal only once the drain has reached wrap-up (it always comes after).
        let wrap_up = wrap_up.child_token();
        let wrapped = wrap_up.cancelled();
        tokio::pin!(wrapped);
        let stopped = cancel.cancelled();
        tokio::pin!(stopped);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = session.next_deadline();
            if deadline != armed {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at);
                }
                armed = deadline;
            }
            tokio::select! {
                // Frames first: an interrupt must be seen before more tokens are written.
                biased;
                () = &mut stopped, if wrapped_up => break,
                frame = socket.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) if text.len() > max_frame => {
                        tracing::warn!(bytes = text.len(), max_frame, "skipping a frame over MAX_FRAME_BYTES");
                    }
                    Some(Ok(WsMessage::Text(text))) => session.on_frame(text.as_str()),
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        tracing::warn!(bytes = bytes.len(), "skipping a binary frame");
                    }
                    Some(Ok(WsMessage::Close(_))) | None => break,
                    Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "websocket read failed");
                        break;
                    }
                },
                // The turn before its events: a chunk it reads in this pass is queued and then
                // seen below in the same pass, not after a trip through the scheduler's queue.
                () = crate::conversation::drive(&mut session.core.running) => session.core.running = None,
                Some((id, event)) = session.core.inbox.events.recv() => session.on_turn_event(id, event),
                Some(request) = session.core.inbox.control.recv() => session.on_control(request),
                Some(result) = session.moved.recv() => session.on_moved(result),
                () = &mut wrapped, if !wrapped_up => {
                    wrapped_up = true;
                    session.on_wrap_up();
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    session.on_timer(Instant::now());
                }
            }
            if session.rejected() {
                let close = axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::POLICY,
                    reason: "setup does not match the call token".into(),
                };
                let _ = socket.send(WsMessage::Close(Some(close))).await;
                break;
            }
            let finished = session.finished() || session.closed();
            // Bounded: a peer that stops reading must not hold the call (or a drain) forever.
            match tokio::time::timeout(WRITE_TIMEOUT, write_outbox(&mut session, &mut socket)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "websocket write failed");
                    session.close();
                }
                Err(_) => {
                    tracing::warn!("Twilio stopped reading the socket; closing the call");
                    session.close();
                }
            }
            if finished || session.closed() {
                break;
            }
        }
        session.close();
        if let Some((call_sid, saved)) = session.saved() {
            resume.save(&call_sid, saved);
        }
        // Say goodbye properly when we end the session (a no-op if Twilio already closed).
        let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.close()).await;
        drop(live);
        tracing::info!(
            seconds = started.elapsed().as_secs(),
            messages = session.history().len(),
            "call ended"
        );
    }
    .instrument(span)
    .await;
}

/// Longest a write to Twilio's socket may take before the call is given up.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts a call in `relaybot_calls_live` for as long as it lives, however its task ends
/// (a panic or a dropped future included).
struct LiveCall;

impl LiveCall {
    fn start() -> Self {
        telemetry::metrics().calls_live.increment(1.0);
        LiveCall
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        telemetry::metrics().calls_live.decrement(1.0);
    }
}

/// Writes the session's queued messages: each frame is fed to the socket's buffer and one flush
/// (one `write` system call) sends them all, as soon as they are queued.
async fn write_outbox(
    session: &mut Session,
    sink: &mut (impl futures::Sink<WsMessage, Error = axum::Error> + Unpin),
) -> Result<(), axum::Error> {
    let mut fed = false;
    for message in session.outbox.drain(..) {
        match message.to_frame() {
            Ok(frame) => {
                sink.feed(WsMessage::Text(frame.into())).await?;
                fed = true;
            }
            Err(e) => tracing::error!(error = %e, ?message, "not sending an invalid message"),
        }
    }
    if fed {
        sink.flush().await?;
    }
    if !session.relayed.is_empty() {
        let relay = &telemetry::metrics().token_relay;
        let now = Instant::now();
        for read_at in session.relayed.drain(..) {
            relay.record((now - read_at).as_secs_f64());
        }
    }
    Ok(())
}
