//! relaybot: an AI voice agent on a Twilio phone number through Conversation Relay.
//!
//! Twilio does speech-to-text and text-to-speech; we receive the caller's words as text over a
//! WebSocket and stream the agent's words back as they are generated.
//!
//! # Layout
//! - [`config`]: settings from the environment, checked at start.
//! - [`http`]: the HTTP edge: `/twiml`, `/ws`, `/action`, `/healthz`; [`http::serve`].
//! - [`relay`]: the Conversation Relay protocol and the per-call session.
//! - [`agent`]: the chat model (OpenAI-compatible or offline), tools, and the turn loop.
//! - [`twilio`]: TwiML, webhook forms, request signatures.
//! - [`simulator`]: `relaybot call`, a caller that plays Twilio's part.
//!
//! [`start`] wires them together on a pre-bound listener, which is how `main` and the tests run
//! the server.

pub mod agent;
pub mod config;
pub mod http;
pub mod relay;
pub mod simulator;
pub mod twilio;

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::{tools::ToolRegistry, Agent},
    config::Config,
    http::AppState,
};

/// How long live calls may run on after a shutdown signal before they are ended.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(600);

/// Builds the shared state for `config`, with `tools` offered to the model.
///
/// # Errors
/// A message when the model client cannot be built.
pub fn build_state(config: Config, tools: ToolRegistry) -> Result<AppState, String> {
    let agent = Agent::from_config(&config, tools)?;
    Ok(AppState::new(config, agent))
}

/// A server running in the background.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to stop accepting and drain.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub handle: JoinHandle<std::io::Result<()>>,
}

/// Serves `state` on `listener` in a background task.
///
/// # Errors
/// The listener's address cannot be read.
pub fn start(listener: TcpListener, state: AppState) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(http::serve(
        listener,
        state,
        async move { stop.cancelled().await },
        DEFAULT_DRAIN,
    ));
    Ok(RunningServer {
        addr,
        shutdown,
        handle,
    })
}
