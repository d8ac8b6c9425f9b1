//! `relaybot chat`: the terminal twin of `relaybot call` for the chat channel. It plays Twilio
//! Conversations on both sides of the bot: a customer whose messages reach the server as
//! `onMessageAdded` webhooks ([`ChatCustomer`]), and the Conversations and Flex Interactions
//! REST APIs the bot answers through ([`FakeConversationsApi`]), so a whole conversation —
//! greeting, turns, a handoff to Flex or a close — runs with no Twilio account.
//!
//! What it does, in Twilio's order: seed a conversation (`CH…`) with a conversation-scoped
//! webhook pointing at the server (as a Flex Conversations address does), post
//! `onConversationAdded`, then one `onMessageAdded` per customer line, and print every message
//! the bot posts. On a handoff it prints what Flex receives (the interaction: channel type,
//! task channel, workflow, task attributes), the webhook's removal and the conversation's new
//! attributes; on a close, that the conversation closed. Lines after a handoff show that the
//! bot stays silent.
//!
//! The server must send its REST calls to the stand-in. An in-process server is configured
//! for it by `main`; a server already running elsewhere must have been started with
//! `TWILIO_CONVERSATIONS_BASE` and `TWILIO_FLEX_BASE` set to the stand-in's address, which is
//! why `relaybot chat` refuses such a server unless `--api-port` fixes that address.

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::AsyncBufReadExt,
    sync::broadcast::{self, error::RecvError},
    time::Instant,
};

use super::{
    chat_customer::ChatCustomer,
    conversations_api::{ApiEvent, FakeConversationsApi, Interaction},
    new_sid, SimError,
};
use crate::chat::WEBHOOK_PATH;

/// How long events may pause before a reply and what follows it count as done.
const SETTLE: Duration = Duration::from_millis(400);

/// Settings of the `chat` command.
#[derive(Debug)]
pub struct ChatCommand {
    /// Server base URL, for example `http://127.0.0.1:8080`.
    pub url: String,
    /// The base Twilio signs webhook URLs with (`PUBLIC_URL`, else `url`).
    pub signing_base: String,
    /// Signs the webhooks like Twilio when set (`TWILIO_AUTH_TOKEN`).
    pub auth_token: Option<String>,
    /// The customer's address: `+1…` (SMS), `whatsapp:+1…`, or a chat identity (`FX…` for
    /// Flex web chat).
    pub from: String,
    /// Scripted customer lines (slash commands allowed); empty = interactive.
    pub script: Vec<String>,
    /// Longest wait for one reply.
    pub reply_timeout: Duration,
    /// After the last line, how long to keep watching for a late reply, a handoff or a close.
    pub linger: Duration,
    /// How long to wait for the greeting (zero when the server greets no one).
    pub greeting_wait: Duration,
    /// The stand-in the server sends its REST calls to.
    pub api: FakeConversationsApi,
}

/// How a chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatEnd {
    /// The customer left (stdin closed, the script ended, or `/quit`).
    Left,
    /// The bot handed the conversation to Flex.
    HandedOff,
    /// The bot closed the conversation.
    Closed,
}

/// What one line of customer input means.
enum Action<'a> {
    Say(&'a str),
    Media,
    Redeliver,
    Quit,
    Help,
}

fn action(line: &str) -> Action<'_> {
    match line.trim() {
        "/media" => Action::Media,
        "/redeliver" => Action::Redeliver,
        "/quit" | "/leave" => Action::Quit,
        "/help" => Action::Help,
        text => Action::Say(text),
    }
}

const HELP: &str = "/media sends a picture with no text, /redeliver delivers the last message again (RetryCount=1), /quit leaves.";

/// What a delivered line asks of the bot.
#[derive(PartialEq)]
enum Step {
    /// A reply is due.
    Reply,
    /// Nothing is due (a redelivery, help, an empty line, a refused delivery).
    Nothing,
    /// The customer leaves.
    Quit,
}

/// One conversation in progress, seen from Twilio's side.
struct Session<'a> {
    api: &'a FakeConversationsApi,
    events: broadcast::Receiver<ApiEvent>,
    customer: ChatCustomer,
    last_sent: Option<String>,
    /// Bot messages seen.
    replies: usize,
    /// An interaction was created.
    handoff_started: bool,
    /// The conversation's attributes say `handedOff: true`.
    handed_off: bool,
    closed: bool,
    /// The end has been announced.
    announced: bool,
}

impl Session<'_> {
    fn over(&self) -> Option<ChatEnd> {
        if self.closed {
            Some(ChatEnd::Closed)
        } else if self.handed_off {
            Some(ChatEnd::HandedOff)
        } else {
            None
        }
    }

    /// The next event about this conversation, or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<ApiEvent> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => return None,
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Ok(event)) => match event.conversation_sid() {
                    Some(ch) if ch != self.customer.conversation_sid => continue,
                    _ => return Some(event),
                },
            }
        }
    }

    /// Prints an event and notes what it means.
    fn show(&mut self, event: &ApiEvent) {
        match event {
            ApiEvent::MessagePosted { author, body, .. } => {
                self.replies += 1;
                println!("{author}: {body}");
            }
            ApiEvent::InteractionCreated(interaction) => {
                self.handoff_started = true;
                show_interaction(interaction);
            }
            ApiEvent::WebhookDeleted { webhook_sid, .. } => {
                if *webhook_sid == self.customer.webhook_sid {
                    println!("[twilio] webhook {webhook_sid} deleted: Twilio no longer sends this conversation's messages to relaybot");
                } else {
                    println!("[twilio] webhook {webhook_sid} deleted");
                }
            }
            ApiEvent::ConversationUpdated {
                attributes,
                state,
                attributes_changed,
                state_changed,
                ..
            } => {
                if *attributes_changed {
                    println!("[twilio] conversation attributes are now {attributes}");
                    let parsed: Value = serde_json::from_str(attributes).unwrap_or(Value::Null);
                    if parsed["handedOff"] == Value::Bool(true) {
                        self.handed_off = true;
                    }
                }
                if *state_changed {
                    println!("[twilio] conversation state is now {state}");
                }
                if state == "closed" {
                    self.closed = true;
                }
            }
            ApiEvent::Refused {
                method,
                path,
                status,
                code,
            } => println!("[twilio] refused {method} {path}: HTTP {status}, error {code}"),
            // A Conversations chat never makes these (the web widget's escalation does).
            ApiEvent::ConversationCreated { .. }
            | ApiEvent::ParticipantAdded { .. }
            | ApiEvent::WebhookCreated { .. } => {}
        }
    }

    /// Prints events until the bot posts a message (`true`) or `within` passes (`false`).
    /// Stops early, with `true`, when the conversation is over.
    async fn await_reply(&mut self, within: Duration) -> bool {
        let before = self.replies;
        let deadline = Instant::now() + within;
        while self.replies == before && self.over().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) => self.show(&event),
                None => return false,
            }
        }
        true
    }

    /// Prints what follows: events that keep coming with pauses under `quiet`, for at most
    /// `limit`. A handoff that has started (an interaction) is waited out within `limit`.
    async fn settle(&mut self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if self.handoff_started && self.over().is_none() {
                left
            } else {
                quiet.min(left)
            };
            match self.next(wait).await {
                Some(event) => self.show(&event),
                None => break,
            }
        }
        if self.handoff_started && !self.handed_off && !self.closed {
            println!("[flex] an interaction was created but the conversation was not marked handedOff (yet)");
        }
    }

    /// Prints events for `within`, ending early once the conversation is over.
    async fn watch(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.over().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) => self.show(&event),
                None => return,
            }
        }
        self.settle(SETTLE, SETTLE).await;
    }

    /// Delivers one customer line as Twilio would.
    ///
    /// # Errors
    /// [`SimError::Http`] when the server cannot be reached or refuses the signature.
    async fn perform(&mut self, line: &str) -> Result<Step, SimError> {
        let (status, expects_reply) = match action(line) {
            Action::Say("") => return Ok(Step::Nothing),
            Action::Quit => return Ok(Step::Quit),
            Action::Help => {
                println!("{HELP}");
                return Ok(Step::Nothing);
            }
            Action::Say(text) => {
                let (status, sid) = self.customer.send(text).await?;
                self.last_sent = Some(sid);
                (status, true)
            }
            Action::Media => {
                let (status, sid) = self.customer.send_media_only().await?;
                println!("[customer sent a picture with no text]");
                self.last_sent = Some(sid);
                (status, true)
            }
            Action::Redeliver => {
                let Some(sid) = self.last_sent.clone() else {
                    println!("[nothing to redeliver yet]");
                    return Ok(Step::Nothing);
                };
                println!("[twilio] delivering {sid} again with RetryCount=1: relaybot must not answer it twice");
                (self.customer.redeliver(&sid).await?, false)
            }
        };
        check_status(&self.customer, status)?;
        Ok(if status.is_success() && expects_reply {
            Step::Reply
        } else {
            Step::Nothing
        })
    }

    /// A line written after the handoff: Twilio only tells the bot if its webhook is still
    /// on the conversation, and either way the bot must stay silent.
    ///
    /// # Errors
    /// As [`Session::perform`].
    async fn after_handoff(&mut self, line: &str, wait: Duration) -> Result<(), SimError> {
        let ours = self
            .api
            .conversation(&self.customer.conversation_sid)
            .is_some_and(|c| {
                c.webhooks
                    .iter()
                    .any(|w| w.sid == self.customer.webhook_sid)
            });
        if !ours {
            println!("[twilio] not delivered to relaybot (its webhook was removed at the handoff): the Flex agent reads it, relaybot stays silent");
            return Ok(());
        }
        if self.perform(line).await? == Step::Quit {
            return Ok(());
        }
        let before = self.replies;
        self.watch_all(wait).await;
        if self.replies == before {
            println!("[relaybot stays silent: the conversation is handed off]");
        } else {
            println!("[relaybot answered after the handoff: it should have stayed silent]");
        }
        Ok(())
    }

    /// Prints every event for `within`, over or not.
    async fn watch_all(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) => self.show(&event),
                None => return,
            }
        }
    }
}

/// A non-2xx answer to a webhook: 403 is an error (the signature was refused, so nothing
/// would ever work); others are shown.
fn check_status(customer: &ChatCustomer, status: reqwest::StatusCode) -> Result<(), SimError> {
    if status == reqwest::StatusCode::FORBIDDEN {
        return Err(SimError::Http {
            url: customer.webhook_url(),
            reason: format!(
                "HTTP 403: the server refused the webhook's signature (signed with this TWILIO_AUTH_TOKEN over {}): check that both sides use the same token and PUBLIC_URL",
                customer.signed_url()
            ),
        });
    }
    if !status.is_success() {
        println!("[twilio] the webhook answered HTTP {status}");
    }
    Ok(())
}

fn show_interaction(interaction: &Interaction) {
    let or_none = |v: Option<&str>| v.unwrap_or("(none)").to_owned();
    println!(
        "[flex] interaction {} created for {}: Channel.type={} initiated_by={}",
        interaction.sid,
        or_none(interaction.media_channel_sid()),
        or_none(interaction.channel_type()),
        or_none(interaction.channel["initiated_by"].as_str()),
    );
    println!(
        "[flex] routing: workspace {}, workflow {}, task channel {}",
        or_none(interaction.workspace_sid()),
        or_none(interaction.workflow_sid()),
        or_none(interaction.task_channel()),
    );
    let attributes = serde_json::to_string_pretty(interaction.task_attributes())
        .unwrap_or_else(|_| interaction.task_attributes().to_string());
    println!("[flex] the task's attributes:");
    for line in attributes.lines() {
        println!("  {line}");
    }
}

impl Session<'_> {
    /// Says how the chat ended (once).
    fn announce(&mut self, end: ChatEnd) {
        if std::mem::replace(&mut self.announced, true) {
            return;
        }
        match end {
            ChatEnd::HandedOff => {
                println!("[the conversation was handed off to a Flex agent; relaybot is out of the loop]");
            }
            ChatEnd::Closed => println!("[relaybot closed the conversation]"),
            ChatEnd::Left => println!("[customer left]"),
        }
    }
}

/// Runs the `chat` command: a scripted chat when `script` is non-empty, else interactive.
///
/// # Errors
/// [`SimError`] when the server cannot be reached, refuses the webhooks' signature, or (in a
/// script) does not answer a line within the reply timeout.
pub async fn run_chat(command: ChatCommand) -> Result<ChatEnd, SimError> {
    let conversation_sid = new_sid("CH");
    let signing_base = command.signing_base.trim_end_matches('/');
    let webhook_sid = command
        .api
        .add_conversation(&conversation_sid, &format!("{signing_base}{WEBHOOK_PATH}"));
    let customer = ChatCustomer::new(
        &command.url,
        signing_base,
        command.auth_token.clone(),
        &conversation_sid,
        &command.from,
        &webhook_sid,
    );
    println!(
        "chatting with {} as {} over {} (ConversationSid {conversation_sid}, webhook {webhook_sid})",
        command.url,
        command.from,
        crate::chat::channel_type(&command.from)
    );
    let mut session = Session {
        api: &command.api,
        events: command.api.subscribe(),
        customer,
        last_sent: None,
        replies: 0,
        handoff_started: false,
        handed_off: false,
        closed: false,
        announced: false,
    };
    let status = session.customer.conversation_added().await?;
    check_status(&session.customer, status)?;
    if !command.greeting_wait.is_zero() && session.await_reply(command.greeting_wait).await {
        session.settle(SETTLE, SETTLE).await;
    }
    let end = if command.script.is_empty() {
        interactive(&mut session, &command).await?
    } else {
        scripted(&mut session, &command).await?
    };
    session.announce(end);
    Ok(end)
}

async fn scripted(session: &mut Session<'_>, command: &ChatCommand) -> Result<ChatEnd, SimError> {
    let mut lines = command.script.iter();
    while let Some(line) = lines.next() {
        if session.over().is_some() {
            // Put the line back in front of the rest.
            return after_the_end(session, command, std::iter::once(line).chain(lines)).await;
        }
        println!("customer: {line}");
        match session.perform(line).await? {
            Step::Quit => return Ok(ChatEnd::Left),
            Step::Nothing => session.settle(SETTLE, SETTLE).await,
            Step::Reply => {
                if !session.await_reply(command.reply_timeout).await {
                    return Err(SimError::Timeout(command.reply_timeout));
                }
                session.settle(SETTLE, command.reply_timeout).await;
            }
        }
    }
    // A handoff or goodbye may follow the last reply.
    if session.over().is_none() {
        session.watch(command.linger).await;
    }
    Ok(session.over().unwrap_or(ChatEnd::Left))
}

/// The rest of a script once the conversation is over: after a handoff each line shows the bot
/// staying silent; a closed conversation takes no more messages.
async fn after_the_end<'l>(
    session: &mut Session<'_>,
    command: &ChatCommand,
    rest: impl Iterator<Item = &'l String>,
) -> Result<ChatEnd, SimError> {
    let end = session.over().unwrap_or(ChatEnd::Left);
    session.announce(end);
    for line in rest {
        if end == ChatEnd::Closed {
            println!("[the conversation is closed: Twilio takes no more messages, so the rest of the script is not sent]");
            break;
        }
        println!("customer: {line}");
        session
            .after_handoff(line, command.linger.min(command.reply_timeout))
            .await?;
    }
    Ok(end)
}

async fn interactive(
    session: &mut Session<'_>,
    command: &ChatCommand,
) -> Result<ChatEnd, SimError> {
    println!("Type what the customer writes and press Enter. {HELP}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Bot messages seen when the customer last wrote, while a reply is due.
    let mut awaiting: Option<usize> = None;
    loop {
        if let Some(end) = session.over() {
            session.settle(SETTLE, SETTLE).await;
            return Ok(end);
        }
        if awaiting.is_some_and(|before| session.replies > before) {
            awaiting = None;
        }
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match session.perform(&line).await? {
                    Step::Quit => return Ok(ChatEnd::Left),
                    Step::Reply => awaiting = Some(session.replies),
                    Step::Nothing => {}
                }
            }
            event = session.next(Duration::from_secs(24 * 3600)) => {
                if let Some(event) = event {
                    session.show(&event);
                }
            }
        }
    }
    // Stdin closed: give the last line its answer.
    if let Some(before) = awaiting {
        if session.replies == before && !session.await_reply(command.reply_timeout).await {
            println!("[no reply within {}s]", command.reply_timeout.as_secs());
        }
    }
    // Merged or slow replies may still come: watch until things stay quiet for the linger.
    session.settle(command.linger, command.reply_timeout).await;
    Ok(session.over().unwrap_or(ChatEnd::Left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::{
        conversations::ConversationsClient,
        flex::{
            ChannelProperties, InteractionChannel, InteractionRouting, InteractionsClient,
            RoutingProperties,
        },
        rest::Rest,
        webhooks::{parse_form, ConversationEvent},
    };
    use axum::{body::Bytes, extract::State, routing::post, Router};
    use secrecy::SecretString;

    /// A toy bot keeping the server's contract: greets, echoes, hands off on "agent" (line,
    /// interaction, webhook removed, attributes merged), closes on "bye".
    async fn toy_bot(api_base: String) -> String {
        async fn webhook(State(api): State<String>, body: Bytes) -> &'static str {
            let event = ConversationEvent::from_params(parse_form(&body).unwrap());
            let rest = Rest::new(
                "AC1",
                SecretString::from("t".to_owned()),
                Duration::from_secs(5),
            )
            .unwrap();
            let conversations = ConversationsClient::new(&api, rest.clone());
            let ch = event.conversation_sid.clone().unwrap();
            let attributes = conversations.fetch(&ch).await.unwrap().attributes.unwrap();
            if attributes.contains("handedOff") {
                return "";
            }
            let post = |text: &'static str| conversations.post_message(&ch, "relaybot", text);
            match (event.event_type.as_deref(), event.body.as_deref()) {
                (Some("onConversationAdded"), _) => drop(post("Hi!").await.unwrap()),
                (_, Some("agent")) => {
                    post("Passing you on.").await.unwrap();
                    let kd = InteractionsClient::new(&api, rest)
                        .create(
                            &InteractionChannel {
                                kind: "sms".into(),
                                initiated_by: "customer".into(),
                                properties: ChannelProperties {
                                    media_channel_sid: ch.clone(),
                                },
                            },
                            &InteractionRouting {
                                properties: RoutingProperties {
                                    workspace_sid: "WS1".into(),
                                    workflow_sid: Some("WW1".into()),
                                    task_channel_unique_name: "chat".into(),
                                    attributes: serde_json::json!({"from": event.author}),
                                },
                            },
                        )
                        .await
                        .unwrap();
                    let wh = event.webhook_sid.clone().unwrap();
                    conversations.delete_webhook(&ch, &wh).await.unwrap();
                    let merged = format!(r#"{{"handedOff":true,"interactionSid":"{kd}"}}"#);
                    conversations
                        .update(&ch, Some(&merged), None)
                        .await
                        .unwrap();
                }
                (_, Some("bye")) => {
                    post("Goodbye!").await.unwrap();
                    conversations
                        .update(&ch, None, Some("closed"))
                        .await
                        .unwrap();
                }
                (_, Some(text)) if !text.is_empty() => drop(post("Noted.").await.unwrap()),
                _ => drop(post("I can only read text.").await.unwrap()),
            }
            ""
        }
        let app = Router::new()
            .route(WEBHOOK_PATH, post(webhook))
            .with_state(api_base);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    async fn chat(script: &[&str]) -> (Result<ChatEnd, SimError>, Vec<String>) {
        let api = FakeConversationsApi::start().await.unwrap();
        let url = toy_bot(api.base_url.clone()).await;
        let mut events = api.subscribe();
        let end = run_chat(ChatCommand {
            signing_base: url.clone(),
            url,
            auth_token: None,
            from: "+15005550006".into(),
            script: script.iter().map(|s| (*s).to_owned()).collect(),
            reply_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(300),
            greeting_wait: Duration::from_secs(5),
            api,
        })
        .await;
        let mut posted = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let ApiEvent::MessagePosted { body, .. } = event {
                posted.push(body);
            }
        }
        (end, posted)
    }

    #[tokio::test]
    async fn a_scripted_chat_ends_with_the_handoff_and_the_bot_stays_silent() {
        let (end, posted) = chat(&["hello", "/media", "agent", "are you there?"]).await;
        assert_eq!(end.unwrap(), ChatEnd::HandedOff);
        assert_eq!(
            posted,
            ["Hi!", "Noted.", "I can only read text.", "Passing you on."]
        );
        let (end, posted) = chat(&["bye", "one more"]).await;
        assert_eq!(end.unwrap(), ChatEnd::Closed);
        assert_eq!(posted, ["Hi!", "Goodbye!"]);
        let (end, _) = chat(&["hello"]).await;
        assert_eq!(end.unwrap(), ChatEnd::Left);
    }
}
