//! The form-encoded requests Twilio sends us, as typed values.
//!
//! - [`VoiceWebhook`]: the voice webhook for an incoming call (or a Studio TwiML Redirect), per
//!   <https://www.twilio.com/docs/usage/webhooks/voice-webhooks>.
//! - [`ActionCallback`]: the `<Connect action>` request when a Conversation Relay session ends,
//!   per <https://www.twilio.com/docs/voice/twiml/connect/conversationrelay> (shared notes §2.7).
//! - [`ConversationEvent`]: a Twilio Conversations post-event webhook (`onMessageAdded`,
//!   `onConversationAdded`, …), per
//!   <https://www.twilio.com/docs/conversations/conversations-webhooks> (`handoff.md` §3.1).
//!
//! All keep every parameter as received in `params`, because signature checks must cover all of
//! them and Twilio adds parameters over time.

/// Form parameters in the order received.
pub type Params = Vec<(String, String)>;

/// The first value of the parameter `name`.
pub fn find<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
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

/// A Twilio Conversations post-event webhook. Every field Twilio may leave out is optional;
/// `WebhookSid` and `RetryCount` are observed in conversation-scoped deliveries but not in
/// Twilio's field table, so nothing depends on them being there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationEvent {
    /// `EventType`: `onMessageAdded`, `onConversationAdded`, `onParticipantAdded`, …
    pub event_type: Option<String>,
    /// `ConversationSid` (`CH…`).
    pub conversation_sid: Option<String>,
    /// `MessageSid` (`IM…`), for message events.
    pub message_sid: Option<String>,
    /// `Author`: who wrote the message (an identity or an address such as `whatsapp:+1…`).
    /// Mask it in logs.
    pub author: Option<String>,
    /// `Body`: the text; absent or empty for media-only messages.
    pub body: Option<String>,
    /// `Media`: present (a JSON array as a string) when the message carries files.
    pub media: Option<String>,
    /// `ParticipantSid` (`MB…`).
    pub participant_sid: Option<String>,
    /// `WebhookSid` (`WH…`) of a conversation-scoped webhook: what to delete to leave the loop.
    pub webhook_sid: Option<String>,
    /// `RetryCount`: 0 (or absent) on the first delivery.
    pub retry_count: u32,
    /// `Source`: `SDK` or `API`.
    pub source: Option<String>,
    /// `Attributes`: the message's or conversation's attributes, a JSON document as a string.
    pub attributes: Option<String>,
    /// Every parameter as received.
    pub params: Params,
}

impl ConversationEvent {
    /// Reads the typed fields out of the parameters.
    pub fn from_params(params: Params) -> Self {
        let get = |name: &str| find(&params, name).map(str::to_owned);
        ConversationEvent {
            event_type: get("EventType"),
            conversation_sid: get("ConversationSid"),
            message_sid: get("MessageSid"),
            author: get("Author"),
            body: get("Body"),
            media: get("Media").filter(|m| m.trim() != "[]"),
            participant_sid: get("ParticipantSid"),
            webhook_sid: get("WebhookSid"),
            retry_count: find(&params, "RetryCount")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0),
            source: get("Source"),
            attributes: get("Attributes"),
            params,
        }
    }

    /// Whether a customer (or anyone) added a message.
    pub fn is_message_added(&self) -> bool {
        self.event_type.as_deref() == Some("onMessageAdded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `onMessageAdded` delivery as Twilio documents it, with the observed extras.
    #[test]
    fn conversation_events_are_read_leniently() {
        let form = "EventType=onMessageAdded&ConversationSid=CH1&MessageSid=IM1&Index=3\
            &DateCreated=2026-12-02T09%3A00%3A00Z&Body=Hello%20there&Author=whatsapp%3A%2B15551230000\
            &ParticipantSid=MB1&Attributes=%7B%7D&Source=API&WebhookSid=WH1&RetryCount=1";
        let event = ConversationEvent::from_params(parse_form(form.as_bytes()).unwrap());
        assert!(event.is_message_added());
        assert_eq!(event.conversation_sid.as_deref(), Some("CH1"));
        assert_eq!(event.message_sid.as_deref(), Some("IM1"));
        assert_eq!(event.body.as_deref(), Some("Hello there"));
        assert_eq!(event.author.as_deref(), Some("whatsapp:+15551230000"));
        assert_eq!(event.webhook_sid.as_deref(), Some("WH1"));
        assert_eq!(event.retry_count, 1);
        assert!(event.media.is_none());
        assert_eq!(event.params.len(), 12);

        let media = "EventType=onMessageAdded&ConversationSid=CH1&Media=%5B%7B%22Sid%22%3A%22ME1%22%7D%5D&RetryCount=x";
        let event = ConversationEvent::from_params(parse_form(media.as_bytes()).unwrap());
        assert!(event.body.is_none() && event.media.is_some(), "media-only");
        assert_eq!(
            event.retry_count, 0,
            "an odd RetryCount counts as the first delivery"
        );
        let empty = ConversationEvent::from_params(
            parse_form(b"EventType=onConversationAdded&Media=%5B%5D").unwrap(),
        );
        assert!(!empty.is_message_added() && empty.media.is_none());
    }

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
