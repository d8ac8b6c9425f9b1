//! The call-control tools: `agent_handoff`, `end_call` and `switch_language`. Each asks the
//! session through [`super::control::CallControl`] and ends the turn on success (the session
//! speaks its own line; another model call would only add dead air).

use serde_json::json;

use super::{
    control::ControlRequest,
    tools::{Tool, ToolInput},
    Departure, ToolResult,
};

fn text_arg(input: &ToolInput, name: &str) -> String {
    input.arguments[name]
        .as_str()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned()
}

async fn send(input: ToolInput, request: ControlRequest) -> ToolResult {
    match &input.control {
        Some(control) => control.request(input.turn, request).await,
        None => Err("call control is not available on this channel".into()),
    }
}

/// `agent_handoff` {reason, summary}: hands the caller to a human agent.
pub fn agent_handoff_tool() -> Tool {
    handoff_tool(
        "Transfer the caller to a human agent. Use it when the caller asks for a person, agent, \
         representative or operator, or when you cannot help. The transfer happens right after \
         this turn: do not say goodbye or anything else after calling it; a transfer message is \
         spoken for you.",
    )
}

/// `agent_handoff` for chat: the conversation goes to a Flex agent in the same thread.
pub fn chat_handoff_tool() -> Tool {
    handoff_tool(
        "Pass the conversation to a human agent, who joins this same chat. Use it when the \
         customer asks for a person, agent or representative, or when you cannot help. It \
         happens right after this turn: write nothing else after calling it; a message telling \
         the customer is sent for you.",
    )
}

fn handoff_tool(description: &str) -> Tool {
    Tool::new(
        "agent_handoff",
        description,
        json!({
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the caller needs a person, in a few words."},
                "summary": {"type": "string", "description": "What the caller wants and everything learned so far (names, numbers, what was tried), for the human agent."}
            },
            "required": ["reason"]
        }),
        |input: ToolInput| async move {
            let reason = text_arg(&input, "reason");
            if reason.is_empty() {
                return Err("reason is required".into());
            }
            let summary = text_arg(&input, "summary");
            send(
                input,
                ControlRequest::Leave(Departure::Handoff { reason, summary }),
            )
            .await
        },
    )
    .ending_turn()
}

/// `end_call` {reason}: ends the call after a goodbye line.
pub fn end_call_tool() -> Tool {
    end_tool(
        "End the phone call. Use it only when the caller is done or says goodbye. A goodbye \
         message is spoken for you before the call ends; do not say anything after calling it.",
    )
}

/// `end_call` for chat: closes the conversation after a goodbye message.
pub fn chat_end_tool() -> Tool {
    end_tool(
        "Close the chat conversation. Use it only when the customer is done or says goodbye. A \
         goodbye message is sent for you before it closes; write nothing after calling it.",
    )
}

fn end_tool(description: &str) -> Tool {
    Tool::new(
        "end_call",
        description,
        json!({
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the call ends, in a few words."}
            },
            "required": ["reason"]
        }),
        |input: ToolInput| async move {
            let reason = text_arg(&input, "reason");
            let end = Departure::End {
                reason,
                by_customer_choice: true,
            };
            send(input, ControlRequest::Leave(end)).await
        },
    )
    .ending_turn()
}

/// `switch_language` {language}: switches speech and transcription to one of `languages`.
pub fn switch_language_tool(languages: &[String]) -> Tool {
    let allowed = languages.to_vec();
    Tool::new(
        "switch_language",
        "Switch the call to another language when the caller speaks it or asks for it. After \
         switching, answer only in that language.",
        json!({
            "type": "object",
            "properties": {
                "language": {"type": "string", "enum": languages, "description": "Language code to switch to."}
            },
            "required": ["language"]
        }),
        move |input: ToolInput| {
            let allowed = allowed.clone();
            async move {
                let language = text_arg(&input, "language");
                if !allowed.contains(&language) {
                    return Err(format!("language must be one of {}", allowed.join(", ")));
                }
                send(input, ControlRequest::SwitchLanguage { language }).await
            }
        },
    )
}

/// The call-control tools: handoff and end always; language switching when `languages` (the
/// `<Language>` codes plus the main language) has more than one entry.
pub fn call_control_tools(languages: &[String]) -> Vec<Tool> {
    // (The chat channel's are [`chat_control_tools`].)
    let mut tools = vec![agent_handoff_tool(), end_call_tool()];
    if languages.len() > 1 {
        tools.push(switch_language_tool(languages));
    }
    tools
}

/// The chat channel's control tools: `end_call` always; `agent_handoff` when a human can take
/// chats (`human_available`), so the model never offers a transfer that cannot happen.
pub fn chat_control_tools(human_available: bool) -> Vec<Tool> {
    let mut tools = vec![chat_end_tool()];
    if human_available {
        tools.insert(0, chat_handoff_tool());
    }
    tools
}
