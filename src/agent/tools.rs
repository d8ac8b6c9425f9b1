//! The tool registry: named async functions the model may call, with OpenAI function-calling
//! schemas (<https://platform.openai.com/docs/guides/function-calling>).
//!
//! A tool has a name, a description written for the model, a JSON Schema for its arguments, an
//! async handler, and optionally a line to speak while it runs ("Let me check that."), so the
//! caller never sits in silence during slow work.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{CallContext, ToolSpec};

/// What a handler is given.
#[derive(Debug, Clone)]
pub struct ToolInput {
    /// The parsed arguments object the model wrote.
    pub arguments: serde_json::Value,
    /// The call the tool runs for.
    pub call: Arc<CallContext>,
    /// The turn that made the call (the session refuses actions from a turn that is over).
    pub turn: super::TurnId,
    /// The way to act on the call (hand off, end, switch language), where the channel has one.
    pub control: Option<super::control::CallControl>,
}

pub use super::ToolResult;

/// An async tool handler.
pub type ToolHandler = Arc<dyn Fn(ToolInput) -> BoxFuture<'static, ToolResult> + Send + Sync>;

/// One tool.
#[derive(Clone)]
pub struct Tool {
    /// What the model sees.
    pub spec: ToolSpec,
    /// Spoken before the tool runs, if set.
    pub speak_while_running: Option<String>,
    /// When the tool succeeds, the turn ends without asking the model again (call control:
    /// the session speaks its own line; another model call would only add dead air).
    pub ends_turn: bool,
    handler: ToolHandler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool named `name` (`[a-zA-Z0-9_-]{1,64}`), described for the model, with a JSON Schema
    /// `parameters` object and an async `handler`.
    ///
    /// The handler runs inside its call's task (turns are polled by the call's loop, so a token
    /// costs no thread hop): it must never block. Blocking work (a synchronous client, file
    /// I/O, heavy computation) goes through `tokio::task::spawn_blocking`, or the call cannot
    /// hear a barge-in, its timers or `TOOL_TIMEOUT_MS` until the handler returns.
    pub fn new<F, Fut>(
        name: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) -> Self
    where
        F: Fn(ToolInput) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ToolResult> + Send + 'static,
    {
        Tool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: description.to_owned(),
                parameters,
            },
            speak_while_running: None,
            ends_turn: false,
            handler: Arc::new(move |input| Box::pin(handler(input))),
        }
    }

    /// Sets the line spoken while the tool runs.
    pub fn speaking(mut self, line: &str) -> Self {
        self.speak_while_running = Some(line.to_owned());
        self
    }

    /// Marks the tool as ending the turn when it succeeds.
    pub fn ending_turn(mut self) -> Self {
        self.ends_turn = true;
        self
    }

    /// Runs the handler.
    pub fn call(&self, input: ToolInput) -> BoxFuture<'static, ToolResult> {
        (self.handler)(input)
    }
}

/// Why a tool could not be registered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    /// The name breaks OpenAI's rule `[a-zA-Z0-9_-]{1,64}`.
    #[error("tool name {0:?} must be 1-64 characters of a-z, A-Z, 0-9, _ or -")]
    BadName(String),
    /// Another tool already has the name.
    #[error("a tool named {0:?} is already registered")]
    Duplicate(String),
    /// `parameters` is not a JSON Schema object.
    #[error("tool {0:?} parameters must be a JSON Schema object")]
    BadSchema(String),
}

/// The tools offered to the model, in registration order.
#[derive(Debug, Clone)]
pub struct ToolRegistry {
    tools: Vec<Tool>,
    specs: Arc<[ToolSpec]>,
}

impl Default for ToolRegistry {
    fn default() -> Self {
        ToolRegistry {
            tools: Vec::new(),
            specs: Arc::from(Vec::new()),
        }
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool.
    ///
    /// # Errors
    /// [`RegistryError`] for a bad or duplicate name or a non-object schema.
    pub fn register(&mut self, tool: Tool) -> Result<(), RegistryError> {
        let name = &tool.spec.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(RegistryError::BadName(name.clone()));
        }
        if self.get(name).is_some() {
            return Err(RegistryError::Duplicate(name.clone()));
        }
        if !tool.spec.parameters.is_object() {
            return Err(RegistryError::BadSchema(name.clone()));
        }
        self.tools.push(tool);
        self.specs = self.tools.iter().map(|t| t.spec.clone()).collect();
        Ok(())
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.spec.name == name)
    }

    /// The tools, in registration order.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The specs sent to the model, shared: built once at registration, not per turn.
    pub fn specs(&self) -> Arc<[ToolSpec]> {
        self.specs.clone()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> Tool {
        Tool::new(name, "d", json!({"type":"object"}), |_| async {
            Ok("ok".into())
        })
    }

    #[test]
    fn registry_checks_names_and_schemas() {
        let mut r = ToolRegistry::new();
        r.register(tool("lookup_order")).unwrap();
        assert_eq!(
            r.register(tool("lookup_order")),
            Err(RegistryError::Duplicate("lookup_order".into()))
        );
        assert!(matches!(
            r.register(tool("bad name")),
            Err(RegistryError::BadName(_))
        ));
        assert!(matches!(
            r.register(tool("")),
            Err(RegistryError::BadName(_))
        ));
        let no_schema = Tool::new("x", "d", json!("string"), |_| async { Ok(String::new()) });
        assert!(matches!(
            r.register(no_schema),
            Err(RegistryError::BadSchema(_))
        ));
        assert_eq!(r.specs().len(), 1);
    }

    #[tokio::test]
    async fn handlers_run_with_their_input() {
        let t = Tool::new(
            "echo",
            "d",
            json!({"type":"object"}),
            |input: ToolInput| async move { Ok(input.arguments["x"].to_string()) },
        );
        let out = t
            .call(ToolInput {
                arguments: json!({"x": 5}),
                call: Arc::new(CallContext::default()),
                turn: 1,
                control: None,
            })
            .await;
        assert_eq!(out, Ok("5".into()));
    }
}
