//! The form-encoded requests Twilio sends us, as typed values.
//!
//! - [`VoiceWebhook`]: the voice webhook for an incoming call (or a Studio TwiML Redirect), per
//!   <https://www.twilio.com/docs/usage/webhooks/voice-webhooks>.
//! - [`ActionCallback`]: the `<Connect action>` request when a Conversation Relay session ends,
//!   per <https://www.twilio.com/docs/voice/twiml/connect/conversationrelay> (shared notes §2.7).
//!
//! Both keep every parameter as received in `params`, because signature checks must cover all of
//! them and Twilio adds parameters over time.

/// Form parameters in the order received.
pub type Params = Vec<(String, String)>;

fn find<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Parses `application/x-www-form-urlencoded` bytes (a body, or a query string).
///
/// # Errors
/// A message when the bytes are not valid form encoding.
pub fn parse_form(bytes: &[u8]) -> Result<Params, String> {
    serde_urlencoded::from_bytes(bytes).map_err(|e| format!("not a valid form body: {e}"))
}

/// An incoming-call webhook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VoiceWebhook {
    /// `CallSid` (`CA…`).
    pub call_sid: Option<String>,
    /// `AccountSid` (`AC…`).
    pub account_sid: Option<String>,
    /// `From`: the caller. Mask it in logs.
    pub from: Option<String>,
    /// `To`: the number called.
    pub to: Option<String>,
    /// `Direction`: `inbound`, `outbound-api`, …
    pub direction: Option<String>,
    /// `CallStatus`: `ringing`, `in-progress`, …
    pub call_status: Option<String>,
    /// Every parameter as received.
    pub params: Params,
}

impl VoiceWebhook {
    /// Reads the typed fields out of the parameters.
    pub fn from_params(params: Params) -> Self {
        VoiceWebhook {
            call_sid: find(&params, "CallSid").map(str::to_owned),
            account_sid: find(&params, "AccountSid").map(str::to_owned),
            from: find(&params, "From").map(str::to_owned),
            to: find(&params, "To").map(str::to_owned),
            direction: find(&params, "Direction").map(str::to_owned),
            call_status: find(&params, "CallStatus").map(str::to_owned),
            params,
        }
    }
}

/// How the Conversation Relay session ended (`SessionStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatus {
    /// We sent `end`; the call is still up and our TwiML continues it.
    Ended,
    /// An error ended the session (`ErrorCode`/`ErrorMessage` set); the call may still be up.
    Failed,
    /// The caller hung up.
    Completed,
    /// A value this version does not know.
    Other(String),
}

/// The `<Connect action>` callback.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionCallback {
    /// `CallSid`.
    pub call_sid: Option<String>,
    /// `CallStatus`: `in-progress` means the call continues with our answer.
    pub call_status: Option<String>,
    /// `SessionId` (`VX…`, as in `setup.sessionId`).
    pub session_id: Option<String>,
    /// `SessionStatus`.
    pub session_status: SessionStatus,
    /// `SessionDuration`, in seconds.
    pub session_duration_secs: Option<u64>,
    /// `HandoffData`: the `handoffData` string of our `end` message, verbatim.
    pub handoff_data: Option<String>,
    /// `ErrorCode`, for example `39001` or `64105`.
    pub error_code: Option<String>,
    /// `ErrorMessage`.
    pub error_message: Option<String>,
    /// Every parameter as received.
    pub params: Params,
}

impl ActionCallback {
    /// Reads the typed fields out of the parameters.
    pub fn from_params(params: Params) -> Self {
        let status = match find(&params, "SessionStatus") {
            Some(s) if s.eq_ignore_ascii_case("ended") => SessionStatus::Ended,
            Some(s) if s.eq_ignore_ascii_case("failed") => SessionStatus::Failed,
            Some(s) if s.eq_ignore_ascii_case("completed") => SessionStatus::Completed,
            other => SessionStatus::Other(other.unwrap_or_default().to_owned()),
        };
        ActionCallback {
            call_sid: find(&params, "CallSid").map(str::to_owned),
            call_status: find(&params, "CallStatus").map(str::to_owned),
            session_id: find(&params, "SessionId").map(str::to_owned),
            session_status: status,
            session_duration_secs: find(&params, "SessionDuration")
                .and_then(|d| d.trim().parse().ok()),
            handoff_data: find(&params, "HandoffData").map(str::to_owned),
            error_code: find(&params, "ErrorCode").map(str::to_owned),
            error_message: find(&params, "ErrorMessage").map(str::to_owned),
            params,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_action_examples() {
        let params = parse_form(
            b"AccountSid=AC0&CallSid=CA0&CallStatus=in-progress&SessionId=VX0&SessionStatus=ended\
              &SessionDuration=25&HandoffData=%7B%22reason%22%3A%22x%22%7D",
        )
        .unwrap();
        let cb = ActionCallback::from_params(params);
        assert_eq!(cb.session_status, SessionStatus::Ended);
        assert_eq!(cb.session_duration_secs, Some(25));
        assert_eq!(cb.handoff_data.as_deref(), Some(r#"{"reason":"x"}"#));
        assert_eq!(cb.call_status.as_deref(), Some("in-progress"));

        let cb = ActionCallback::from_params(
            parse_form(
                b"SessionStatus=failed&ErrorCode=39001&ErrorMessage=Network+connection+failed.",
            )
            .unwrap(),
        );
        assert_eq!(cb.session_status, SessionStatus::Failed);
        assert_eq!(cb.error_code.as_deref(), Some("39001"));
        assert_eq!(
            cb.error_message.as_deref(),
            Some("Network connection failed.")
        );

        let cb = ActionCallback::from_params(parse_form(b"SessionStatus=weird").unwrap());
        assert_eq!(cb.session_status, SessionStatus::Other("weird".into()));
    }

    #[test]
    fn voice_webhook_fields() {
        let hook = VoiceWebhook::from_params(
            parse_form(b"CallSid=CA1&From=%2B1555&To=%2B1666&Extra=x").unwrap(),
        );
        assert_eq!(hook.call_sid.as_deref(), Some("CA1"));
        assert_eq!(hook.from.as_deref(), Some("+1555"));
        assert_eq!(hook.params.len(), 4);
    }
}
