//! Amazon Lex V2 as the brain (`LLM_PROVIDER=lex`). Being written: see issue 10.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{
    turn::{TurnEvent, TurnInput},
    Brain, LlmError, TurnId,
};
use crate::config::LexConfig;

/// A Lex V2 bot answering through `RecognizeText`.
pub struct LexBrain {
    #[allow(dead_code)]
    config: LexConfig,
    #[allow(dead_code)]
    offer_human_line: String,
}

impl LexBrain {
    /// The bot `config` names; `offer_human_line` is added after too many fallbacks in a row.
    ///
    /// # Errors
    /// A message when the client cannot be set up.
    pub fn new(config: &LexConfig, offer_human_line: String) -> Result<Self, String> {
        Ok(LexBrain {
            config: config.clone(),
            offer_human_line,
        })
    }
}

impl Brain for LexBrain {
    fn turn(
        self: Arc<Self>,
        input: TurnInput,
        events: mpsc::Sender<(TurnId, TurnEvent)>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let failed = TurnEvent::Failed(LlmError::Internal("not written yet".into()));
            let _ = events.send((input.id, failed)).await;
        })
    }

    fn system_prompt(&self) -> Arc<str> {
        "".into()
    }
}
