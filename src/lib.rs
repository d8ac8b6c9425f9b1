//! relaybot: an AI voice agent on a Twilio phone number through Conversation Relay.
//!
//! Twilio does speech-to-text and text-to-speech; we receive the caller's words as text over a
//! WebSocket and stream the agent's words back as they are generated.
//!
//! # Layout
//! - [`config`]: settings from the environment, checked at start.
//! - [`http`]: the HTTP edge: `/twiml`, `/ws`, `/action`, `/healthz`; [`http::serve`].
//! - [`conversation`]: the conversation core every channel shares (history, turns, failures,
//!   leaving).
//! - [`relay`]: the Conversation Relay protocol and the per-call session (voice).
//! - [`chat`]: the Twilio Conversations channel (webhook or Studio) and its Flex handoff.
//! - [`web`]: the web chat widget and its escalation to a live Flex agent.
//! - [`agent`]: the chat model (OpenAI-compatible or offline), tools, and the turn loop.
//! - [`handoff`]: moving the call to a human in Flex (Calls API → Studio, or `end` → `/action`).
//! - [`twilio`]: TwiML, webhook forms, request signatures, the Calls API.
//! - [`security`]: signature checks and per-call tokens.
//! - [`simulator`]: `relaybot call`, a caller that plays Twilio's part.
//!
//! [`start`] wires them together on a pre-bound listener, which is how `main` and the tests run
//! the server.

#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod chat;
pub mod config;
pub mod connect;
pub mod conversation;
pub mod handoff;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod relay;
pub mod security;
pub mod simulator;
pub mod store;
pub mod sys;
pub mod telemetry;
pub mod twilio;
pub mod web;

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::{tools::ToolRegistry, Agent, Brain},
    config::{Config, LlmProvider},
    http::AppState,
};

/// Builds the shared state for `config`. With an LLM (OpenAI-compatible or offline): the voice
/// agent with the call-control tools (`agent_handoff`, `end_call`, and `switch_language` when
/// `<Language>`s are configured), the chat agents with theirs (`agent_handoff` when a handoff
/// can happen on that route, `end_call`), and `extra_tools` on all. With a bot (Lex, Watson):
/// that bot on every channel (a bot has no tools; it decides handoffs itself).
///
/// # Errors
/// A message when a client cannot be built or a tool name is taken twice.
pub fn build_state(config: Config, extra_tools: ToolRegistry) -> Result<AppState, String> {
    let (voice, chat) = match &config.llm.provider {
        LlmProvider::Lex(lex) => {
            // The offer of a person after repeated fallbacks, only where one can take over.
            let brain = |human: bool| -> Result<Arc<dyn Brain>, String> {
                let line = if human {
                    lex.fallback_line.clone()
                } else {
                    String::new()
                };
                Ok(Arc::new(agent::lex::LexBrain::new(lex, line)?))
            };
            let voice_human =
                config.handoff.workflow_sid.is_some() || config.handoff.studio_flow_url.is_some();
            (
                brain(voice_human)?,
                chat::ChatAgents {
                    direct: brain(chat::ChatState::human_available(&config))?,
                    studio: brain(true)?,
                },
            )
        }
        LlmProvider::Watson(watson) => {
            let brain = |line: &str| -> Result<Arc<dyn Brain>, String> {
                Ok(Arc::new(agent::watson::WatsonBrain::new(
                    watson,
                    line.to_owned(),
                )?))
            };
            let chat = brain(&config.chat.offer_human_line)?;
            (
                brain(&config.limits.llm_offer_human_line)?,
                chat::ChatAgents {
                    direct: chat.clone(),
                    studio: chat,
                },
            )
        }
        LlmProvider::OpenAi { .. } | LlmProvider::Offline { .. } => {
            llm_agents(&config, &extra_tools)?
        }
    };
    AppState::new(config, voice, chat)
}

/// The LLM agents: voice, and chat on each route, on one model.
fn llm_agents(
    config: &Config,
    extra_tools: &ToolRegistry,
) -> Result<(Arc<dyn Brain>, chat::ChatAgents), String> {
    let mut tools = ToolRegistry::new();
    let mut languages: Vec<String> = Vec::new();
    if !config.relay.languages.is_empty() {
        let main = config
            .relay
            .attribute("language")
            .unwrap_or("en-US")
            .to_owned();
        languages.push(main);
        for language in &config.relay.languages {
            if !languages.contains(&language.code) {
                languages.push(language.code.clone());
            }
        }
    }
    for tool in agent::call_tools::call_control_tools(&languages)
        .into_iter()
        .chain(extra_tools.tools().iter().cloned())
    {
        tools.register(tool).map_err(|e| e.to_string())?;
    }
    let voice = Agent::from_config(config, tools)?;
    let chat_agent = |human_available: bool| -> Result<Arc<dyn Brain>, String> {
        let mut tools = ToolRegistry::new();
        for tool in agent::call_tools::chat_control_tools(human_available)
            .into_iter()
            .chain(extra_tools.tools().iter().cloned())
        {
            tools.register(tool).map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(
            voice.for_channel(&config.chat.system_prompt, tools),
        ))
    };
    let chat = chat::ChatAgents {
        direct: chat_agent(chat::ChatState::human_available(config))?,
        studio: chat_agent(true)?,
    };
    Ok((Arc::new(voice), chat))
}

/// A server running in the background.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The shared state (its tracker shows which call tasks are still running).
    pub state: AppState,
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
    let handle = tokio::spawn(http::serve(listener, state.clone(), async move {
        stop.cancelled().await
    }));
    Ok(RunningServer {
        addr,
        state,
        shutdown,
        handle,
    })
}
