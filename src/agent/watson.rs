//! IBM Watson Assistant v2 as the brain (`LLM_PROVIDER=watson`). Being written: see issue 10.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{
    turn::{TurnEvent, TurnInput},
    Brain, LlmError, TurnId,
};
use crate::config::WatsonConfig;

/// A Watson Assistant answering through the v2 message API.
pub struct WatsonBrain {
    #[allow(dead_code)]
    config: WatsonConfig,
    #[allow(dead_code)]
    offer_human_line: String,
}

impl WatsonBrain {
    /// The assistant `config` names; `offer_human_line` is for repeated misunderstandings.
    ///
    /// # Errors
    /// A message when the client cannot be set up.
    pub fn new(config: &WatsonConfig, offer_human_line: String) -> Result<Self, String> {
        Ok(WatsonBrain {
            config: config.clone(),
            offer_human_line,
        })
    }
}

impl Brain for WatsonBrain {
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
