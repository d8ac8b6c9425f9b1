//! Call control: the channel through which a tool asks its session to act on the call itself
//! (the tools are in [`super::call_tools`]).
//!
//! A tool never touches the socket. It sends a [`ControlMessage`] tagged with its turn; the
//! session decides (at most one handoff or end per call; nothing from a turn that was
//! interrupted or cancelled) and answers with the text the model reads.

use tokio::sync::{mpsc, oneshot};

use super::{Departure, ToolResult, TurnId};

/// What a tool asks the session to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    /// Hand the conversation to a human, or end it.
    Leave(Departure),
    /// Speak and listen in another declared language.
    SwitchLanguage {
        /// A `<Language code>` from the TwiML.
        language: String,
    },
}

/// A request with its turn and the way back.
#[derive(Debug)]
pub struct ControlMessage {
    /// The turn whose tool call this is.
    pub turn: TurnId,
    /// What to do.
    pub request: ControlRequest,
    /// The session's answer (the tool's result).
    pub reply: oneshot::Sender<ToolResult>,
}

/// A tool's handle on its call's session.
#[derive(Debug, Clone)]
pub struct CallControl(mpsc::Sender<ControlMessage>);

impl CallControl {
    /// A handle that sends to `tx`.
    pub fn new(tx: mpsc::Sender<ControlMessage>) -> Self {
        CallControl(tx)
    }

    /// Asks the session and waits for its answer.
    ///
    /// # Errors
    /// The session's refusal, or a message when the call is over.
    pub async fn request(&self, turn: TurnId, request: ControlRequest) -> ToolResult {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(ControlMessage {
                turn,
                request,
                reply,
            })
            .await
            .map_err(|_| "the call is over".to_owned())?;
        answer.await.map_err(|_| "the call is over".to_owned())?
    }
}
