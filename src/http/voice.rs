//! The voice channel's HTTP edge: the voice webhook (`/twiml`), the Conversation Relay
//! WebSocket upgrade (`/ws`), the `<Connect action>` callback (`/action`) and the call handoff
//! record. The call itself is [`crate::relay`]'s.

use super::*;

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// The base URL Twilio reaches us at: `PUBLIC_URL`, else rebuilt from the proxy headers ngrok
/// and load balancers set, else the Host header.
pub(super) fn public_base(config: &Config, headers: &HeaderMap) -> String {
    if let Some(url) = &config.public_url {
        return url.as_str().trim_end_matches('/').to_owned();
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let proto = match first("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let safe_host = |h: &&str| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
    };
    let host = first("x-forwarded-host")
        .filter(safe_host)
        .or_else(|| first("host").filter(safe_host))
        .map_or_else(|| format!("{}:{}", config.host, config.port), str::to_owned);
    format!("{proto}://{host}")
}

/// `http(s)://host` → `ws(s)://host`.
pub(super) fn websocket_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// `POST /twiml`: answers an incoming call with `<Connect><ConversationRelay>`.
pub(super) async fn voice_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedForm(params): SignedForm,
) -> Response {
    let hook = VoiceWebhook::from_params(params);
    let call_sid = hook.call_sid.clone().unwrap_or_default();
    // The call's slot is taken now, not at the upgrade: a burst past the cap gets the polite
    // line here instead of a refused WebSocket (which Twilio reports as a failed session).
    // A retried webhook for the same call reuses the slot its first answer reserved.
    let slot = if state.draining.is_cancelled() {
        Err("shutting down")
    } else {
        state
            .call_tokens
            .take_slot(&call_sid)
            .or_else(|| reserve_call_slot(&state))
            .ok_or("at MAX_CONCURRENT_CALLS")
    };
    match slot {
        Ok(slot) => xml(relay_twiml(&state, &headers, &hook, None, slot)),
        Err(why) => {
            telemetry::turned_away(if state.draining.is_cancelled() {
                "draining"
            } else {
                "capacity"
            });
            tracing::warn!(call_sid = %call_sid, why, "turning a new call away politely");
            xml(turn_away(
                &state,
                &call_sid,
                hook.from.as_deref().unwrap_or_default(),
            ))
        }
    }
}

/// Takes one of the `MAX_CONCURRENT_CALLS` slots for a call about to connect, first freeing the
/// slots of call tokens that expired unused; `None` when every slot is taken.
fn reserve_call_slot(state: &AppState) -> Option<OwnedSemaphorePermit> {
    let slots = &state.call_slots;
    slots.clone().try_acquire_owned().ok().or_else(|| {
        state.call_tokens.release_expired();
        slots.clone().try_acquire_owned().ok()
    })
}

/// TwiML for a caller we cannot take: the at-capacity line, then a human if configured (and
/// `AT_CAPACITY_ACTION=handoff`), else goodbye.
fn turn_away(state: &AppState, call_sid: &str, from: &str) -> String {
    let limits = &state.config.limits;
    if limits.at_capacity_handoff && state.human_available() {
        let busy = Departure::Handoff {
            reason: "All voice agent lines were busy.".into(),
            summary: String::new(),
        };
        let data = HandoffData::for_departure(&busy, call_sid, from, &[]);
        twiml::say_then(&limits.at_capacity_line, &to_human(state, &data))
    } else {
        twiml::say_and_hang_up(Some(&limits.at_capacity_line))
    }
}

/// `<Connect action><ConversationRelay url="…/ws?token=…">` for a call; `greeting` replaces the
/// welcome greeting (a reconnect). The call token minted for the URL holds `slot` until the
/// upgrade.
fn relay_twiml(
    state: &AppState,
    headers: &HeaderMap,
    hook: &VoiceWebhook,
    greeting: Option<&str>,
    slot: OwnedSemaphorePermit,
) -> String {
    let base = public_base(&state.config, headers);
    let relay = &state.config.relay;
    let mut parameters: Vec<(String, String)> = [
        ("From", &hook.from),
        ("To", &hook.to),
        ("CallSid", &hook.call_sid),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
    .collect();
    parameters.extend(relay.parameters.iter().cloned());
    let mut attributes = relay.attributes.clone();
    if let Some(greeting) = greeting {
        attributes.retain(|(k, _)| k != "welcomeGreeting");
        attributes.insert(0, ("welcomeGreeting".to_owned(), greeting.to_owned()));
        parameters.push((session::RECONNECT_PARAMETER.to_owned(), "1".to_owned()));
    }
    let token = state
        .call_tokens
        .mint_reserved(hook.call_sid.as_deref().unwrap_or_default(), slot);
    let body = ConnectRelay {
        action: &format!("{base}/action"),
        url: &format!("{}/ws?token={token}", websocket_base(&base)),
        attributes: &attributes,
        languages: &relay.languages,
        parameters: &parameters,
    }
    .to_xml();
    tracing::info!(
        call_sid = hook.call_sid.as_deref().unwrap_or("-"),
        from = %hook.from.as_deref().map(mask_number).unwrap_or_default(),
        reconnect = greeting.is_some(),
        "connecting the call to Conversation Relay"
    );
    body
}

/// `POST /action`: the session ended; tell Twilio what the call does next.
///
/// - `completed` (caller hung up) → `<Response/>`.
/// - A call the Calls API already moved → `<Response/>` (harmless; Twilio runs the redirect).
/// - `ended` with a handoff's `HandoffData` → a human: `<Enqueue>` (`TWILIO_WORKFLOW_SID`), else
///   `<Redirect>` to Studio (`STUDIO_FLOW_URL`), else an apology and `<Hangup/>`.
/// - `ended` from `end_call` (or with no data) → `<Hangup/>`.
/// - `failed` with the call still up, after a session that ran → a fresh `<ConversationRelay>`
///   (the socket dropped; at most `MAX_RECONNECTS` times); otherwise (or past the limit, or a
///   session that never started) → a human if configured, else an apology and `<Hangup/>`.
pub(super) async fn connect_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedForm(params): SignedForm,
) -> Response {
    let callback = ActionCallback::from_params(params);
    let call_sid = callback.call_sid.clone().unwrap_or_default();
    tracing::info!(
        call_sid = %call_sid,
        status = ?callback.session_status,
        call_status = callback.call_status.as_deref(),
        duration_secs = callback.session_duration_secs,
        error_code = callback.error_code.as_deref(),
        error_message = callback.error_message.as_deref(),
        "conversation relay session ended"
    );
    // The session is over: a token still unredeemed for this call will not be used, so its
    // slot is freed now rather than when the token expires.
    state.call_tokens.release_call(&call_sid);
    let record = state.handoff.store.get(&call_sid);
    let moved = record
        .as_ref()
        .is_some_and(|r| r.path == HandoffPath::CallsApiToStudio);
    let call_over = callback
        .call_status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("completed"));
    if call_over || callback.session_status == SessionStatus::Completed {
        state.resume.forget(&call_sid);
    }
    let body = match &callback.session_status {
        SessionStatus::Completed => twiml::empty_response(),
        _ if call_over => twiml::empty_response(),
        _ if moved => {
            tracing::info!("the Calls API already moved this call; nothing more to do here");
            twiml::empty_response()
        }
        SessionStatus::Ended => {
            let data = callback.handoff_data.as_deref().and_then(|raw| {
                serde_json::from_str::<HandoffData>(raw)
                    .map_err(|e| tracing::warn!(error = %e, "HandoffData is not ours; hanging up"))
                    .ok()
            });
            match data {
                Some(data) if data.is_handoff() => to_human(&state, &data),
                _ => twiml::say_and_hang_up(None),
            }
        }
        SessionStatus::Failed
            if !state.draining.is_cancelled()
                && state.resume.has_saved(&call_sid)
                && state.resume.count_reconnect(&call_sid)
                    <= state.config.limits.max_reconnects =>
        {
            match reserve_call_slot(&state) {
                Some(slot) => {
                    // The socket died mid-call: reconnect, and the session resumes the
                    // conversation.
                    tracing::warn!(call_sid = %call_sid, "session failed mid-call; reconnecting the caller");
                    let hook = VoiceWebhook::from_params(callback.params.clone());
                    relay_twiml(
                        &state,
                        &headers,
                        &hook,
                        Some(&state.config.limits.reconnect_line),
                        slot,
                    )
                }
                None => {
                    tracing::warn!(call_sid = %call_sid, "session failed mid-call and every call slot is taken; handing the caller on");
                    let data = dropped_call_data(&callback, &call_sid, record.as_ref(), None);
                    to_human(&state, &data)
                }
            }
        }
        SessionStatus::Failed
            if matches!(state.resume.leaving(&call_sid), Some(Departure::End { .. })) =>
        {
            tracing::info!(call_sid = %call_sid, "session dropped during the goodbye; hanging up");
            twiml::say_and_hang_up(None)
        }
        SessionStatus::Failed => {
            // Dropped during a handoff: finish it. Otherwise: not (or no longer) reconnectable.
            let departure = match state.resume.leaving(&call_sid) {
                Some(handoff @ Departure::Handoff { .. }) => {
                    tracing::warn!(call_sid = %call_sid, "session dropped during the handoff; finishing it");
                    Some(handoff)
                }
                _ => {
                    tracing::warn!(call_sid = %call_sid, "session failed and will not be reconnected again");
                    None
                }
            };
            let data = dropped_call_data(&callback, &call_sid, record.as_ref(), departure);
            to_human(&state, &data)
        }
        SessionStatus::Other(_) => twiml::say_and_hang_up(None),
    };
    xml(body)
}

/// Handoff data for a call whose session dropped and is not reconnected to the bot: the
/// `departure` it was making, else a handoff for the lost connection.
fn dropped_call_data(
    callback: &ActionCallback,
    call_sid: &str,
    record: Option<&handoff::HandoffRecord>,
    departure: Option<Departure>,
) -> HandoffData {
    let lost = departure.unwrap_or_else(|| Departure::Handoff {
        reason: "The voice agent lost the call's connection.".to_owned(),
        summary: record.map(|r| r.summary.clone()).unwrap_or_default(),
    });
    let from = callback
        .params
        .iter()
        .find(|(k, _)| k == "From")
        .map_or("", |(_, v)| v.as_str());
    HandoffData::for_departure(&lost, call_sid, from, &[])
}

/// TwiML that puts the caller through to a person, or apologises when none is configured.
fn to_human(state: &AppState, data: &HandoffData) -> String {
    let config = &state.config.handoff;
    if let Some(workflow) = &config.workflow_sid {
        tracing::info!(%workflow, "enqueuing the caller for Flex");
        handoff::enqueue_twiml(workflow, data)
    } else if let Some(flow) = &config.studio_flow_url {
        tracing::info!("returning the caller to the Studio flow");
        handoff::studio_redirect_twiml(flow, data)
    } else {
        tracing::error!(
            "a handoff was asked for but no human is configured: set TWILIO_WORKFLOW_SID (Flex workflow) or STUDIO_FLOW_URL (Studio flow); the caller heard an apology"
        );
        twiml::say_and_hang_up(Some(&config.unavailable_line))
    }
}

/// `GET /calls/{callSid}/handoff`: the handoff record (caller, reason, summary, transcript) as
/// JSON, for a Flex plugin or CRM. Needs `Authorization: Bearer <API_TOKEN>`; off (404) when
/// `API_TOKEN` is unset. Records are in memory, per instance, and expire.
pub(super) async fn handoff_record(
    State(state): State<AppState>,
    Path(call_sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    record_answer(&state, &headers, "call", |state| {
        state.handoff.store.get(&call_sid)
    })
}

/// Bytes the WebSocket reads from the socket at a time (tungstenite's default is 128 KiB).
pub const WS_READ_BUFFER_BYTES: usize = 1024;
/// Bytes of outbound frames buffered before tungstenite writes without a flush (the session
/// flushes after each batch anyway).
pub const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The query of the WebSocket URL.
#[derive(Debug, serde::Deserialize)]
pub(super) struct SocketQuery {
    token: Option<String>,
}

/// `GET /ws`: checks the signature and the call token, takes a call slot, then upgrades to the
/// Conversation Relay WebSocket and runs the call. Every refusal happens before the upgrade.
pub(super) async fn relay_socket(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<SocketQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", websocket_base(&state.signing_base()));
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    match state.verifier.check_websocket(&url, header) {
        Ok(Some(variant)) => tracing::debug!(?variant, "websocket signature verified"),
        Ok(None) => {}
        Err(e) => {
            // The query holds the call token: log the bare URL only.
            let checked = url.split('?').next().unwrap_or_default();
            tracing::warn!(error = %e, url = %checked, "refusing a websocket upgrade that is not signed by Twilio");
            telemetry::refused("signature");
            return (StatusCode::FORBIDDEN, "invalid Twilio signature").into_response();
        }
    }
    let (call_sid, reserved) = match state.call_tokens.redeem_with_slot(query.token.as_deref()) {
        Ok(redeemed) => redeemed,
        Err(e) => {
            tracing::warn!(error = %e, "refusing a websocket upgrade without a valid call token");
            telemetry::refused("call_token");
            return (StatusCode::FORBIDDEN, "invalid call token").into_response();
        }
    };
    // `/twiml` reserved the slot with the token; a token minted elsewhere (another instance
    // sharing CALL_TOKEN_SECRET) takes one now.
    let Some(slot) = reserved.or_else(|| reserve_call_slot(&state)) else {
        tracing::warn!("refusing a websocket upgrade at MAX_CONCURRENT_CALLS");
        telemetry::turned_away("capacity");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many calls").into_response();
    };
    let limits = &state.config.limits;
    let deps = SessionDeps {
        persona: state.voice.clone(),
        welcome_greeting: state.config.welcome_greeting.clone(),
        handoff: state.handoff.clone(),
        limits: state.limits.clone(),
        resume: state.resume.clone(),
        wrap_up: state.wrap_up.clone(),
        tracker: state.tracker.clone(),
    };
    let cancel = state.calls_cancel.child_token();
    let tracker = state.tracker.clone();
    // A hard cap well above MAX_FRAME_BYTES bounds memory; frames between the two are read,
    // logged and dropped by the session without ending the call.
    let hard_cap = (limits.max_frame_bytes * 16).max(1 << 20);
    upgrade
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        // tungstenite's defaults (128 KiB each) suit bulk transfer. Its read buffer is
        // allocated up front and zero-filled on every read attempt, i.e. on every pass of the
        // session loop: per call that was most of the memory and, per token, a 128 KiB memset.
        // Twilio's frames are a few hundred bytes; a larger one still fits (the buffer grows to
        // the frame's length).
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                crate::relay::socket::run(socket, deps, cancel, Some(call_sid)).await;
                drop(slot);
            })
        })
}
