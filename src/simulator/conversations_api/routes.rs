//! How the fake answers each request: Twilio's shapes, codes and state changes.

use super::*;
use crate::simulator::chat_customer::iso8601;

/// The `chat_service_sid` of every conversation (the account's default Conversations service).
pub(super) const CHAT_SERVICE_SID: &str = "IS00000000000000000000000000000000";
/// The `messaging_service_sid` of every conversation.
pub(super) const MESSAGING_SERVICE_SID: &str = "MG00000000000000000000000000000000";
/// The `role_sid` of every participant (the service's default participant role).
pub(super) const PARTICIPANT_ROLE_SID: &str = "RL00000000000000000000000000000000";

/// Twilio's limit on conversation-scoped webhooks per conversation.
const MAX_WEBHOOKS: usize = 5;

/// The events a conversation-scoped webhook may subscribe to (`Configuration.Filters`).
const WEBHOOK_FILTERS: [&str; 10] = [
    "onMessageAdded",
    "onMessageUpdated",
    "onMessageRemoved",
    "onConversationUpdated",
    "onConversationStateUpdated",
    "onConversationRemoved",
    "onParticipantAdded",
    "onParticipantUpdated",
    "onParticipantRemoved",
    "onDeliveryUpdated",
];

pub(super) fn default_code(status: u16) -> u32 {
    match status {
        401 => 20003,
        404 => 20404,
        429 => 20429,
        500 => 20500,
        503 => 20503,
        _ => 20001,
    }
}

/// Twilio's error body.
fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status_code,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })),
    )
        .into_response()
}

/// An answer before it is turned into a response (so its status can be recorded).
enum Answer {
    Json(u16, Value),
    NoContent,
    Error(u16, u32, String),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::Json(status, _) => *status,
            Answer::NoContent => 204,
            Answer::Error(status, ..) => *status,
        }
    }

    fn into_response(self) -> Response {
        match self {
            Answer::Json(status, body) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                axum::Json(body),
            )
                .into_response(),
            Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
            Answer::Error(status, code, message) => twilio_error(status, code, &message),
        }
    }
}

fn error(status: u16, code: u32, message: impl Into<String>) -> Answer {
    Answer::Error(status, code, message.into())
}

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let header_pairs = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut inner = shared.lock();
    let answer = answer(
        &shared,
        &mut inner,
        &method,
        &path,
        &form,
        authorization.as_deref(),
    );
    if let Answer::Error(status, code, _) = &answer {
        shared.emit(
            &mut inner,
            ApiEvent::Refused {
                method: method.clone(),
                path: path.clone(),
                status: *status,
                code: *code,
            },
        );
    }
    inner.requests.push(ApiRequest {
        method,
        path,
        authorization,
        headers: header_pairs,
        form,
        status: answer.status(),
    });
    drop(inner);
    answer.into_response()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every value of form field `name` (a repeated key is how Twilio's forms send an array).
fn fields<'a>(form: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    form.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The `Attributes` field checked: `"{}"` when absent, an error when it is not JSON.
fn attributes_field(form: &[(String, String)]) -> Result<String, Answer> {
    match field(form, "Attributes") {
        None => Ok("{}".into()),
        Some(text) if serde_json::from_str::<Value>(text).is_ok() => Ok(text.to_owned()),
        Some(_) => Err(error(400, 20001, "Invalid Attributes: not a JSON document")),
    }
}

fn answer(
    shared: &Shared,
    inner: &mut Inner,
    method: &Method,
    path: &str,
    form: &[(String, String)],
    authorization: Option<&str>,
) -> Answer {
    if let Some(want) = &inner.credentials {
        if authorization != Some(want.as_str()) {
            return error(401, 20003, "Authenticate");
        }
    }
    if let Some(i) = inner
        .failures
        .iter()
        .position(|f| f.method == method && path_matches(&f.path, path))
    {
        let failure = inner.failures[i].clone();
        if failure.times <= 1 {
            inner.failures.remove(i);
        } else {
            inner.failures[i].times -= 1;
        }
        return error(
            failure.status,
            failure.code,
            format!("injected failure (HTTP {})", failure.status),
        );
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["v1", "Interactions"] if method == Method::POST => create_interaction(shared, inner, form),
        ["v1", "Interactions"] => method_not_allowed(),
        ["v1", "Conversations"] if method == Method::POST => {
            create_conversation(shared, inner, form)
        }
        ["v1", "Conversations"] => method_not_allowed(),
        ["v1", "Conversations", ch, rest @ ..] => {
            if inner.removed.contains(*ch) {
                return error(
                    404,
                    20404,
                    format!("The requested resource /Conversations/{ch} was not found"),
                );
            }
            let base = &shared.base_url;
            let account = &shared.account_sid;
            let conversation = inner
                .conversations
                .entry((*ch).to_owned())
                .or_insert_with(|| FakeConversation::new(ch));
            let (answer, event) = match (rest, method.as_str()) {
                ([], "GET") => (
                    Answer::Json(200, conversation_json(conversation, base, account)),
                    None,
                ),
                ([], "POST") => update_conversation(conversation, form, base, account),
                (["Messages"], "POST") => post_message(conversation, form, base, account),
                (["Participants"], "POST") => add_participant(conversation, form, base, account),
                (["Participants"], "GET") => (
                    Answer::Json(200, participants_json(conversation, base, account)),
                    None,
                ),
                (["Webhooks"], "POST") => create_webhook(conversation, form, base, account),
                (["Webhooks"], "GET") => (
                    Answer::Json(200, webhooks_json(conversation, base, account)),
                    None,
                ),
                (["Webhooks", wh], "DELETE") => delete_webhook(conversation, wh),
                ([] | ["Messages"] | ["Participants"] | ["Webhooks"] | ["Webhooks", _], _) => {
                    (method_not_allowed(), None)
                }
                _ => (not_found(path), None),
            };
            if let Some(event) = event {
                shared.emit(inner, event);
            }
            answer
        }
        _ => not_found(path),
    }
}

fn method_not_allowed() -> Answer {
    error(405, 20004, "Method not allowed")
}

fn not_found(path: &str) -> Answer {
    error(
        404,
        20404,
        format!("The requested resource {path} was not found"),
    )
}

fn closed() -> Answer {
    error(
        400,
        50377,
        "Can't update conversation as it's in final closed state",
    )
}

/// Twilio's limit on `FriendlyName` and `Identity`.
const MAX_NAME_CHARS: usize = 256;

fn create_conversation(shared: &Shared, inner: &mut Inner, form: &[(String, String)]) -> Answer {
    let attributes = match attributes_field(form) {
        Ok(attributes) => attributes,
        Err(answer) => return answer,
    };
    let friendly_name = field(form, "FriendlyName").unwrap_or_default();
    if friendly_name.chars().count() > MAX_NAME_CHARS {
        return error(
            400,
            20001,
            format!("Invalid FriendlyName: over {MAX_NAME_CHARS} characters"),
        );
    }
    let state = match field(form, "State") {
        None if form.iter().any(|(k, _)| k.starts_with("Timers.")) => {
            return error(400, 50382, "Timer can't be set without state");
        }
        None => "active",
        Some(state @ ("active" | "inactive")) => state,
        Some("closed") => {
            return error(400, 50384, "Conversation can't be created in closed state");
        }
        Some(state) => return error(400, 20001, format!("Invalid State: {state}")),
    };
    let sid = new_sid("CH");
    let mut conversation = FakeConversation::new(&sid);
    conversation.friendly_name = friendly_name.to_owned();
    conversation.attributes = attributes;
    conversation.state = state.to_owned();
    let body = conversation_json(&conversation, &shared.base_url, &shared.account_sid);
    let event = ApiEvent::ConversationCreated {
        conversation_sid: sid.clone(),
        friendly_name: conversation.friendly_name.clone(),
        attributes: conversation.attributes.clone(),
    };
    inner.conversations.insert(sid, conversation);
    shared.emit(inner, event);
    Answer::Json(201, body)
}

fn add_participant(
    conversation: &mut FakeConversation,
    form: &[(String, String)],
    base: &str,
    account: &str,
) -> (Answer, Option<ApiEvent>) {
    if conversation.is_closed() {
        return (closed(), None);
    }
    let Some(identity) = field(form, "Identity").filter(|i| !i.is_empty()) else {
        let message = if field(form, "MessagingBinding.Address").is_some() {
            "The fake adds chat participants only (Identity), not MessagingBinding.Address"
        } else {
            "Missing required parameter Identity in the post body"
        };
        return (error(400, 20001, message), None);
    };
    if identity.chars().count() > MAX_NAME_CHARS {
        return (
            error(
                400,
                20001,
                format!("Invalid Identity: over {MAX_NAME_CHARS} characters"),
            ),
            None,
        );
    }
    let attributes = match attributes_field(form) {
        Ok(attributes) => attributes,
        Err(answer) => return (answer, None),
    };
    if conversation.participant(identity).is_some() {
        return (error(409, 50433, "Participant already exists"), None);
    }
    let participant = FakeParticipant {
        sid: new_sid("MB"),
        identity: identity.to_owned(),
        attributes,
    };
    let body = participant_json(conversation, &participant, base, account);
    let event = ApiEvent::ParticipantAdded {
        conversation_sid: conversation.sid.clone(),
        identity: participant.identity.clone(),
        attributes: participant.attributes.clone(),
    };
    conversation.participants.push(participant);
    (Answer::Json(201, body), Some(event))
}

fn create_webhook(
    conversation: &mut FakeConversation,
    form: &[(String, String)],
    base: &str,
    account: &str,
) -> (Answer, Option<ApiEvent>) {
    if conversation.is_closed() {
        return (closed(), None);
    }
    let target = match field(form, "Target") {
        Some(target @ ("webhook" | "trigger" | "studio")) => target,
        Some(target) => return (error(400, 20001, format!("Invalid Target: {target}")), None),
        None => {
            return (
                error(
                    400,
                    20001,
                    "Missing required parameter Target in the post body",
                ),
                None,
            )
        }
    };
    let url = field(form, "Configuration.Url").unwrap_or_default();
    let method = field(form, "Configuration.Method").unwrap_or("POST");
    let filters = fields(form, "Configuration.Filters");
    if target == "webhook" {
        if url.is_empty() {
            return (error(400, 50369, "Missing URL for a webhook target"), None);
        }
        if filters.is_empty() {
            return (
                error(400, 50370, "Missing filters for a webhook target"),
                None,
            );
        }
        if let Some(bad) = filters.iter().find(|f| !WEBHOOK_FILTERS.contains(f)) {
            return (
                error(400, 50365, format!("Invalid webhook filter: {bad}")),
                None,
            );
        }
    }
    if !method.eq_ignore_ascii_case("GET") && !method.eq_ignore_ascii_case("POST") {
        return (
            error(
                400,
                20001,
                format!("Invalid Configuration.Method: {method}"),
            ),
            None,
        );
    }
    if conversation.webhooks.len() >= MAX_WEBHOOKS {
        return (
            error(
                400,
                50361,
                format!("Too many conversation webhooks (at most {MAX_WEBHOOKS})"),
            ),
            None,
        );
    }
    let webhook = FakeWebhook {
        sid: new_sid("WH"),
        target: target.to_owned(),
        url: url.to_owned(),
        method: method.to_owned(),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
    };
    let body = webhook_json(conversation, &webhook, base, account);
    let event = ApiEvent::WebhookCreated {
        conversation_sid: conversation.sid.clone(),
        webhook_sid: webhook.sid.clone(),
        url: webhook.url.clone(),
        filters: webhook.filters.clone(),
    };
    conversation.webhooks.push(webhook);
    (Answer::Json(201, body), Some(event))
}

fn update_conversation(
    conversation: &mut FakeConversation,
    form: &[(String, String)],
    base: &str,
    account: &str,
) -> (Answer, Option<ApiEvent>) {
    if conversation.is_closed() {
        return (closed(), None);
    }
    let attributes = field(form, "Attributes");
    let state = field(form, "State");
    if let Some(attributes) = attributes {
        if serde_json::from_str::<Value>(attributes).is_err() {
            return (
                error(400, 20001, "Invalid Attributes: not a JSON document"),
                None,
            );
        }
    }
    if let Some(state) = state {
        if !matches!(state, "active" | "inactive" | "closed") {
            return (error(400, 20001, format!("Invalid State: {state}")), None);
        }
    }
    if let Some(attributes) = attributes {
        conversation.attributes = attributes.to_owned();
    }
    if let Some(state) = state {
        conversation.state = state.to_owned();
    }
    let event = ApiEvent::ConversationUpdated {
        conversation_sid: conversation.sid.clone(),
        attributes: conversation.attributes.clone(),
        state: conversation.state.clone(),
        attributes_changed: attributes.is_some(),
        state_changed: state.is_some(),
    };
    (
        Answer::Json(200, conversation_json(conversation, base, account)),
        Some(event),
    )
}

/// Twilio's limit on a message body.
const MAX_BODY_CHARS: usize = 1600;

fn post_message(
    conversation: &mut FakeConversation,
    form: &[(String, String)],
    base: &str,
    account: &str,
) -> (Answer, Option<ApiEvent>) {
    if conversation.is_closed() {
        return (closed(), None);
    }
    let body = field(form, "Body").unwrap_or_default();
    if body.trim().is_empty() && field(form, "MediaSid").is_none() {
        return (
            error(400, 20001, "A message needs a Body or a MediaSid"),
            None,
        );
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return (
            error(
                400,
                50504,
                format!("Message body parameter is too long (over {MAX_BODY_CHARS} characters)"),
            ),
            None,
        );
    }
    let message = PostedMessage {
        sid: new_sid("IM"),
        index: conversation.messages.len() as u64,
        author: field(form, "Author").unwrap_or("system").to_owned(),
        body: body.to_owned(),
        attributes: field(form, "Attributes").map(str::to_owned),
    };
    let now = iso8601(SystemTime::now(), false);
    let url = format!(
        "{base}/v1/Conversations/{}/Messages/{}",
        conversation.sid, message.sid
    );
    let json = json!({
        "sid": message.sid,
        "account_sid": account,
        "conversation_sid": conversation.sid,
        "index": message.index,
        "author": message.author,
        "body": message.body,
        "media": null,
        "attributes": message.attributes.clone().unwrap_or_else(|| "{}".into()),
        "participant_sid": null,
        "date_created": now,
        "date_updated": now,
        "delivery": null,
        "content_sid": null,
        "url": url,
        "links": {
            "delivery_receipts": format!("{url}/Receipts"),
            "channel_metadata": format!("{url}/ChannelMetadata"),
        },
    });
    let event = ApiEvent::MessagePosted {
        conversation_sid: conversation.sid.clone(),
        sid: message.sid.clone(),
        index: message.index,
        author: message.author.clone(),
        body: message.body.clone(),
    };
    conversation.messages.push(message);
    (Answer::Json(201, json), Some(event))
}

fn delete_webhook(
    conversation: &mut FakeConversation,
    webhook_sid: &str,
) -> (Answer, Option<ApiEvent>) {
    let Some(i) = conversation
        .webhooks
        .iter()
        .position(|w| w.sid == webhook_sid)
    else {
        return (
            error(
                404,
                50360,
                format!("Conversation webhook {webhook_sid} not found"),
            ),
            None,
        );
    };
    conversation.webhooks.remove(i);
    (
        Answer::NoContent,
        Some(ApiEvent::WebhookDeleted {
            conversation_sid: conversation.sid.clone(),
            webhook_sid: webhook_sid.to_owned(),
        }),
    )
}

fn create_interaction(shared: &Shared, inner: &mut Inner, form: &[(String, String)]) -> Answer {
    let parse = |name: &str| -> Result<Value, Answer> {
        let text = field(form, name).ok_or_else(|| {
            error(
                400,
                20001,
                format!("Missing required parameter {name} in the post body"),
            )
        })?;
        serde_json::from_str(text)
            .map_err(|e| error(400, 20001, format!("Invalid {name}: not JSON ({e})")))
    };
    let channel = match parse("Channel") {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let routing = match parse("Routing") {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    if !channel["type"].is_string() {
        return error(400, 20001, "Invalid Channel: no type");
    }
    if !routing["properties"]["workspace_sid"].is_string() {
        return error(400, 20001, "Invalid Routing: no properties.workspace_sid");
    }
    let interaction = Interaction {
        sid: new_sid("KD"),
        channel,
        routing,
    };
    let url = format!("{}/v1/Interactions/{}", shared.base_url, interaction.sid);
    let mut channel = interaction.channel.clone();
    if let Some(object) = channel.as_object_mut() {
        object.insert("sid".into(), Value::String(new_sid("UO")));
    }
    let body = json!({
        "sid": interaction.sid,
        "channel": channel,
        "routing": interaction.routing,
        "url": url,
        "interaction_context_sid": null,
        "webhook_ttid": format!("flex_interactionwebhook_{}", new_sid("")),
        "links": { "channels": format!("{url}/Channels") },
    });
    inner.interactions.push(interaction.clone());
    shared.emit(inner, ApiEvent::InteractionCreated(interaction));
    Answer::Json(201, body)
}

fn conversation_json(conversation: &FakeConversation, base: &str, account: &str) -> Value {
    let url = format!("{base}/v1/Conversations/{}", conversation.sid);
    json!({
        "sid": conversation.sid,
        "account_sid": account,
        "chat_service_sid": CHAT_SERVICE_SID,
        "messaging_service_sid": MESSAGING_SERVICE_SID,
        "friendly_name": (!conversation.friendly_name.is_empty())
            .then_some(conversation.friendly_name.as_str()),
        "unique_name": null,
        "attributes": conversation.attributes,
        "state": conversation.state,
        "date_created": "2026-01-01T00:00:00Z",
        "date_updated": iso8601(SystemTime::now(), false),
        "timers": {},
        "bindings": null,
        "url": url,
        "links": {
            "participants": format!("{url}/Participants"),
            "messages": format!("{url}/Messages"),
            "webhooks": format!("{url}/Webhooks"),
        },
    })
}

fn webhook_json(
    conversation: &FakeConversation,
    webhook: &FakeWebhook,
    base: &str,
    account: &str,
) -> Value {
    json!({
        "sid": webhook.sid,
        "account_sid": account,
        "conversation_sid": conversation.sid,
        "target": webhook.target,
        "configuration": {
            "url": webhook.url,
            "method": webhook.method,
            "filters": webhook.filters,
        },
        "date_created": "2026-01-01T00:00:00Z",
        "date_updated": "2026-01-01T00:00:00Z",
        "url": format!("{base}/v1/Conversations/{}/Webhooks/{}", conversation.sid, webhook.sid),
    })
}

fn participant_json(
    conversation: &FakeConversation,
    participant: &FakeParticipant,
    base: &str,
    account: &str,
) -> Value {
    json!({
        "sid": participant.sid,
        "account_sid": account,
        "conversation_sid": conversation.sid,
        "identity": participant.identity,
        "attributes": participant.attributes,
        "messaging_binding": null,
        "role_sid": PARTICIPANT_ROLE_SID,
        "date_created": "2026-01-01T00:00:00Z",
        "date_updated": "2026-01-01T00:00:00Z",
        "url": format!(
            "{base}/v1/Conversations/{}/Participants/{}",
            conversation.sid, participant.sid
        ),
        "last_read_message_index": null,
        "last_read_timestamp": null,
    })
}

/// A first (and only) page of a list: `{key: items, "meta": {…}}`.
fn page(key: &str, items: Vec<Value>, url: &str) -> Value {
    json!({
        key: items,
        "meta": {
            "page": 0,
            "page_size": 50,
            "first_page_url": format!("{url}?PageSize=50&Page=0"),
            "previous_page_url": null,
            "url": format!("{url}?PageSize=50&Page=0"),
            "next_page_url": null,
            "key": key,
        },
    })
}

fn participants_json(conversation: &FakeConversation, base: &str, account: &str) -> Value {
    let url = format!("{base}/v1/Conversations/{}/Participants", conversation.sid);
    let items = conversation
        .participants
        .iter()
        .map(|p| participant_json(conversation, p, base, account))
        .collect();
    page("participants", items, &url)
}

fn webhooks_json(conversation: &FakeConversation, base: &str, account: &str) -> Value {
    let url = format!("{base}/v1/Conversations/{}/Webhooks", conversation.sid);
    let items = conversation
        .webhooks
        .iter()
        .map(|w| webhook_json(conversation, w, base, account))
        .collect();
    page("webhooks", items, &url)
}
