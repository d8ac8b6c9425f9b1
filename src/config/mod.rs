//! Configuration from the environment (and `.env`, loaded by `main` through dotenvy).
//!
//! Every setting is an environment variable named the way Twilio and OpenAI name things
//! (`TWILIO_AUTH_TOKEN`, `OPENAI_API_KEY`, …). `.env.example` lists them all with defaults.
//! [`Config::from_vars`] takes the variables as pairs so tests build configs without touching
//! the process environment. A wrong value is a [`ConfigError`] naming the variable and what is
//! wrong with it; the server refuses to start.
//!
//! `<ConversationRelay>` attributes are read from `CR_` + the attribute name in
//! SCREAMING_SNAKE_CASE (`CR_TTS_PROVIDER` → `ttsProvider`), except `WELCOME_GREETING` and
//! `WELCOME_GREETING_INTERRUPTIBLE`, which the agent also uses. The prefix keeps them clear of
//! the operating system's own `LANGUAGE` and `DEBUG`. Unknown `CR_*` variables are passed through
//! as attributes (with a warning at start), so attributes newer than this build still work.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;

use crate::twilio::twiml::LanguageElement;

mod bots;
mod chat;
mod connect;
mod relay;

use relay::{check, relay_config, Check};

pub use bots::{LexConfig, WatsonConfig, DEFAULT_WATSON_IAM_URL, DEFAULT_WATSON_VERSION};
pub use chat::{ChatConfig, DEFAULT_CHAT_SYSTEM_PROMPT};
pub use connect::ConnectConfig;

/// A setting that stops the server at start.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong, with the value when it is not secret.
    pub problem: String,
}

fn invalid(var: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        problem: problem.into(),
    }
}

/// Which model answers the caller.
#[derive(Debug, Clone)]
pub enum LlmProvider {
    /// Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, Groq, gateways).
    OpenAi {
        /// `OPENAI_API_KEY`; optional when `OPENAI_BASE_URL` points at a server that needs none.
        api_key: Option<SecretString>,
        /// `OPENAI_BASE_URL`, default `https://api.openai.com/v1`.
        base_url: String,
        /// `OPENAI_MODEL`, default `gpt-4o-mini`.
        model: String,
    },
    /// An Amazon Lex V2 bot (`LLM_PROVIDER=lex`).
    Lex(LexConfig),
    /// An IBM Watson Assistant (`LLM_PROVIDER=watson`).
    Watson(WatsonConfig),
    /// The built-in rule-based stand-in (no key needed).
    Offline {
        /// `OFFLINE_TOKEN_DELAY_MS` (default 40 ms): pause between streamed words.
        token_delay: Duration,
    },
}

/// Model and turn settings.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Which model answers.
    pub provider: LlmProvider,
    /// `LLM_CONNECT_TIMEOUT_MS` (default 3000 ms): TCP/TLS connect to the model server.
    pub connect_timeout: Duration,
    /// `LLM_FIRST_TOKEN_TIMEOUT_MS` (default 8000 ms): request sent → first streamed chunk.
    pub first_token_timeout: Duration,
    /// `LLM_STREAM_IDLE_TIMEOUT_MS` (default 5000 ms): longest gap between two chunks.
    pub idle_timeout: Duration,
    /// `AGENT_MAX_TOOL_STEPS` (default 5): model calls per turn before we stop looping on tools.
    pub max_tool_steps: usize,
}

/// Twilio credentials.
#[derive(Debug, Clone, Default)]
pub struct TwilioConfig {
    /// `TWILIO_ACCOUNT_SID` (`AC…`).
    pub account_sid: Option<String>,
    /// `TWILIO_AUTH_TOKEN`: signs requests (the simulator) and validates them; the Calls API
    /// password when no API key is set.
    pub auth_token: Option<SecretString>,
    /// `TWILIO_API_KEY` (`SK…`) and `TWILIO_API_SECRET`: Calls API credentials preferred over
    /// the auth token.
    pub api_key: Option<(String, SecretString)>,
    /// `TWILIO_API_BASE` (default `https://api.twilio.com`): the REST API host; tests point it
    /// at a fake.
    pub api_base: String,
}

impl TwilioConfig {
    /// Basic-auth user and password for the REST API: the API key pair if set, else the account
    /// SID and auth token. `None` without usable credentials.
    pub fn rest_credentials(&self) -> Option<(String, SecretString)> {
        if let Some((key, secret)) = &self.api_key {
            return Some((key.clone(), secret.clone()));
        }
        Some((self.account_sid.clone()?, self.auth_token.clone()?))
    }
}

/// Handing calls to a human in Flex.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// `STUDIO_FLOW_URL`: the Studio flow's webhook URL. Set: handoffs redirect the live call
    /// back to the flow with `FlowEvent=return` (through the Calls API when credentials are set,
    /// else from `/action`).
    pub studio_flow_url: Option<url::Url>,
    /// `TWILIO_WORKFLOW_SID` (`WW…`): set, `/action` answers a handoff with
    /// `<Enqueue workflowSid><Task>`.
    pub workflow_sid: Option<String>,
    /// `HANDOFF_LINE`: spoken before the call moves to a person.
    pub handoff_line: String,
    /// `END_CALL_LINE`: spoken before the agent ends the call.
    pub end_call_line: String,
    /// `HANDOFF_UNAVAILABLE_LINE`: spoken when a handoff is asked for but no human is configured.
    pub unavailable_line: String,
    /// `HANDOFF_MAX_WAIT_MS` (default 15000 ms): the longest wait for the caller to hear the last
    /// line before the call moves (normally `agentSpeaking off` comes sooner).
    pub max_wait: Duration,
    /// `API_TOKEN`: bearer token for `GET /calls/{callSid}/handoff` (unset: that endpoint is off)
    /// and for `GET /metrics` (unset: open).
    pub api_token: Option<SecretString>,
    /// `HANDOFF_RECORD_TTL_SECS` (default 3600 s): how long handoff records are kept.
    pub record_ttl: Duration,
}

/// What goes into `<ConversationRelay>`.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Attributes in emission order (name as Twilio spells it, value), unset ones omitted.
    pub attributes: Vec<(String, String)>,
    /// `CR_LANGUAGES`: `<Language>` children.
    pub languages: Vec<LanguageElement>,
    /// `CR_PARAMETERS`: static `<Parameter>` children, added after From/To/CallSid.
    pub parameters: Vec<(String, String)>,
    /// `CR_*` variables that are not known attributes (passed through; warned about at start).
    pub unknown_attributes: Vec<String>,
}

impl RelayConfig {
    /// The value of an attribute, if set.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST` (default `127.0.0.1`).
    pub host: IpAddr,
    /// `PORT` (default 8080; 0 = any free port).
    pub port: u16,
    /// `PUBLIC_URL`: the https base Twilio reaches us at (ngrok or a load balancer), no trailing
    /// slash. Unset: derived per request from `X-Forwarded-Proto`/`X-Forwarded-Host`/`Host`.
    pub public_url: Option<url::Url>,
    /// Model settings.
    pub llm: LlmConfig,
    /// `SYSTEM_PROMPT_FILE`'s contents, or the built-in prompt written for the ear.
    pub system_prompt: String,
    /// `WELCOME_GREETING` (unset: a default greeting; empty: none). Twilio speaks it; it is also
    /// the assistant's first message in the history.
    pub welcome_greeting: Option<String>,
    /// `LLM_ERROR_LINE`: spoken when the model fails mid-turn.
    pub error_line: String,
    /// Twilio credentials.
    pub twilio: TwilioConfig,
    /// Handoff to a human.
    pub handoff: HandoffConfig,
    /// Who may talk to us.
    pub security: SecurityConfig,
    /// Limits, timers and what is said when they hit.
    pub limits: LimitsConfig,
    /// `<ConversationRelay>` contents.
    pub relay: RelayConfig,
    /// The chat channel (Twilio Conversations).
    pub chat: ChatConfig,
    /// The Amazon Connect channel (the Lex V2 code hook).
    pub connect: ConnectConfig,
}

/// Request signatures and per-call tokens.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Verify `X-Twilio-Signature` on `/twiml`, `/action` and the WebSocket upgrade.
    /// `TWILIO_VALIDATE_SIGNATURES`; default on when `TWILIO_AUTH_TOKEN` is set.
    pub validate_signatures: bool,
    /// `TWILIO_AUTH_TOKEN_SECONDARY`: also accepted while rotating tokens.
    pub secondary_auth_token: Option<SecretString>,
    /// `CALL_TOKEN_TTL_SECS` (default 120 s): how long the call token minted by `/twiml` is
    /// valid for the WebSocket upgrade.
    pub call_token_ttl: Duration,
    /// `CALL_TOKEN_SECRET`: key for call tokens, shared by a fleet; unset, a random key per
    /// process.
    pub call_token_secret: Option<SecretString>,
}

/// Limits and timers.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `MAX_FRAME_BYTES` (default 65536): larger WebSocket messages are logged and dropped.
    pub max_frame_bytes: usize,
    /// `MAX_PROMPT_CHARS` (default 2000): longer caller prompts are cut to this.
    pub max_prompt_chars: usize,
    /// `HISTORY_MAX_CHARS` (default 24000): conversation sent to the model; the system prompt is
    /// always kept, the oldest turns are dropped first.
    pub history_max_chars: usize,
    /// `MAX_CALL_DURATION_SECS` (default 3600): then the caller hears `MAX_DURATION_LINE` and the
    /// call ends.
    pub max_call_duration: Duration,
    /// `MAX_DURATION_LINE`.
    pub max_duration_line: String,
    /// `IDLE_REPROMPT_MS` (default 10000): caller silence after the agent's turn before
    /// `IDLE_REPROMPT_LINE`; the same silence again ends the call with `IDLE_END_LINE`.
    pub idle_reprompt: Duration,
    /// `IDLE_REPROMPT_LINE`.
    pub idle_reprompt_line: String,
    /// `IDLE_END_LINE`.
    pub idle_end_line: String,
    /// `MAX_CONCURRENT_CALLS` (default 1,000 per instance): at the cap, `/twiml` answers with
    /// `AT_CAPACITY_LINE` and a handoff (if configured) or a hang-up. A slot is taken when
    /// `/twiml` answers (held by the call token) and freed when the session ends or the token
    /// expires unused. The default is what a 2-core box carries with every call streaming at
    /// once (README, Performance); idle calls cost ~10 KiB each.
    pub max_concurrent_calls: usize,
    /// `AT_CAPACITY_LINE`.
    pub at_capacity_line: String,
    /// `AT_CAPACITY_ACTION`: `handoff` (default; falls back to hang-up without a human) or
    /// `hangup`.
    pub at_capacity_handoff: bool,
    /// `DRAIN_TIMEOUT` (default 600 s; `90`, `90s` or `10m`): after a shutdown signal, how long
    /// live calls may go on
    /// before they are handed to a human (or ended with `DRAIN_LINE`).
    pub drain_timeout: Duration,
    /// `DRAIN_LINE`: spoken to calls still live when the drain time is up.
    pub drain_line: String,
    /// `LLM_FILLER_AFTER_MS` (default 1500): with no first token by then, `LLM_FILLER_LINE` is
    /// spoken while waiting on (an empty line turns this off).
    pub llm_filler_after: Duration,
    /// `LLM_FILLER_LINE`.
    pub llm_filler_line: String,
    /// `TOOL_TIMEOUT_MS` (default 10000 ms): longest a tool may run; the model is then told it
    /// did not answer.
    pub tool_timeout: Duration,
    /// `LLM_FAILURES_BEFORE_HANDOFF` (default 2): consecutive failed turns after which the
    /// caller is handed to a human (when one is configured; before that they are offered one).
    pub llm_failures_before_handoff: u32,
    /// `LLM_OFFER_HUMAN_LINE`: the apology when a human is configured.
    pub llm_offer_human_line: String,
    /// `RECONNECT_GRACE_SECS` (default 300): how long a dropped call's conversation is kept for
    /// a reconnect.
    pub reconnect_grace: Duration,
    /// `MAX_RECONNECTS` (default 2) per call.
    pub max_reconnects: u32,
    /// `RECONNECT_LINE`: the greeting of a reconnected session.
    pub reconnect_line: String,
}

/// The greeting when `WELCOME_GREETING` is unset.
pub const DEFAULT_WELCOME_GREETING: &str = "Hi, this is relaybot. How can I help you today?";
/// Spoken when the model fails mid-turn and `LLM_ERROR_LINE` is unset.
pub const DEFAULT_ERROR_LINE: &str =
    "Sorry, I'm having trouble answering right now. Could you say that again?";

/// `MAX_CONCURRENT_CALLS` when unset: calls per instance (see [`LimitsConfig::max_concurrent_calls`]).
pub const DEFAULT_MAX_CONCURRENT_CALLS: u64 = 1000;

/// The built-in system prompt, written for the ear: what the model writes is spoken aloud.
pub const DEFAULT_SYSTEM_PROMPT: &str = "\
You are relaybot, a friendly voice assistant answering a phone call. Everything you write is \
spoken aloud by a text-to-speech voice, so write the way people talk on the phone. \
Keep replies short: one to three sentences, then let the caller speak. \
Use plain sentences only: no markdown, no bullet points or numbered lists, no emoji, no URLs, \
no special characters. Say numbers, dates, times and amounts the way a person would say them \
(\"twenty five dollars\", \"March third\", \"two thirty in the afternoon\"). \
Ask one question at a time. If you did not understand, say so briefly and ask again. \
If your previous reply ends abruptly, the caller interrupted you and heard only that part. \
If the caller asks for a person, or you cannot help, use the agent_handoff tool when it is \
available. When the caller is done, say a short goodbye and use the end_call tool when it is \
available.";

/// Twilio's REST API host.
pub const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";
/// Spoken before a handoff when `HANDOFF_LINE` is unset.
pub const DEFAULT_HANDOFF_LINE: &str = "One moment while I connect you to an agent.";
/// Spoken before the agent hangs up when `END_CALL_LINE` is unset.
pub const DEFAULT_END_CALL_LINE: &str = "Thanks for calling. Goodbye.";
/// Spoken when no human can be reached and `HANDOFF_UNAVAILABLE_LINE` is unset.
pub const DEFAULT_UNAVAILABLE_LINE: &str =
    "I'm sorry, no one is available to take your call right now. Please call back later. Goodbye.";

/// Defaults of the spoken lines in [`LimitsConfig`].
pub mod lines {
    /// `MAX_DURATION_LINE`.
    pub const MAX_DURATION: &str =
        "We've reached the time limit for this call. Thank you for calling. Goodbye.";
    /// `IDLE_REPROMPT_LINE`.
    pub const IDLE_REPROMPT: &str = "Are you still there?";
    /// `IDLE_END_LINE`.
    pub const IDLE_END: &str = "I'll let you go now. Feel free to call back any time. Goodbye.";
    /// `AT_CAPACITY_LINE`.
    pub const AT_CAPACITY: &str = "Sorry, all of our lines are busy right now.";
    /// `DRAIN_LINE`.
    pub const DRAIN: &str =
        "I'm sorry, I have to end our call now. Please call back in a few minutes.";
    /// `LLM_FILLER_LINE`.
    pub const LLM_FILLER: &str = "One moment.";
    /// `LLM_OFFER_HUMAN_LINE`.
    pub const LLM_OFFER_HUMAN: &str = "Sorry, I'm having trouble right now. I can connect you to a person if you'd like, or you can try again.";
    /// `RECONNECT_LINE`.
    pub const RECONNECT: &str = "Sorry, we got cut off. I'm back now. Where were we?";
}

/// The variables, and the names asked for (so a test can check every one is documented).
struct Vars {
    map: HashMap<String, String>,
    asked: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Vars {
    fn new(map: HashMap<String, String>) -> Self {
        Vars {
            map,
            asked: Default::default(),
        }
    }

    /// A variable's value as set, empty included.
    fn raw(&self, var: &str) -> Option<&str> {
        self.asked.borrow_mut().insert(var.to_owned());
        self.map.get(var).map(String::as_str)
    }

    /// A variable's value; empty counts as unset.
    fn get(&self, var: &str) -> Option<&str> {
        self.raw(var).filter(|v| !v.trim().is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(var, format!("{v:?} is not {what}"))),
        }
    }

    fn millis(&self, var: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        let ms = self.parse(var, default_ms, "a whole number of milliseconds")?;
        if ms == 0 {
            return Err(invalid(var, "must be greater than 0 ms"));
        }
        Ok(Duration::from_millis(ms))
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        var: &str,
        example: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.get(var)
            .map(|v| {
                serde_json::from_str(v)
                    .map_err(|e| invalid(var, format!("not valid JSON of the form {example}: {e}")))
            })
            .transpose()
    }
}

impl Config {
    /// Reads the process environment (call `dotenvy::dotenv()` first to include `.env`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a wrong value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds a config from `(name, value)` pairs.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a wrong value.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_vars_asked(vars).0
    }

    /// Every variable name the configuration reads (a documentation test keeps them in the
    /// README and `.env.example`).
    pub fn setting_names() -> Vec<String> {
        let (_, asked) = Self::from_vars_asked(std::iter::empty());
        asked
    }

    fn from_vars_asked(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> (Result<Self, ConfigError>, Vec<String>) {
        let vars = Vars::new(vars.into_iter().collect());
        let config = Self::read(&vars);
        let asked = vars.asked.into_inner().into_iter().collect();
        (config, asked)
    }

    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        let host = vars.parse(
            "HOST",
            IpAddr::from([127, 0, 0, 1]),
            "an IP address such as 127.0.0.1 or 0.0.0.0",
        )?;
        let port = vars.parse("PORT", 8080u16, "a port number 0–65535")?;
        let public_url = vars
            .get("PUBLIC_URL")
            .map(|v| {
                let parsed = url::Url::parse(v.trim().trim_end_matches('/'))
                    .map_err(|e| invalid("PUBLIC_URL", format!("{v:?} is not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return Err(invalid(
                        "PUBLIC_URL",
                        format!("{v:?} must be an http(s) URL such as https://abc.ngrok.app"),
                    ));
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return Err(invalid("PUBLIC_URL", "must not have a query or fragment"));
                }
                Ok(parsed)
            })
            .transpose()?;

        let api_key = vars
            .get("OPENAI_API_KEY")
            .map(|k| SecretString::from(k.trim().to_owned()));
        let base_url = vars
            .get("OPENAI_BASE_URL")
            .map(|v| v.trim().trim_end_matches('/').to_owned());
        if let Some(base) = &base_url {
            match url::Url::parse(base) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(invalid(
                        "OPENAI_BASE_URL",
                        format!("{base:?} is not an http(s) URL such as https://api.openai.com/v1"),
                    ))
                }
            }
        }
        let model = vars
            .get("OPENAI_MODEL")
            .unwrap_or("gpt-4o-mini")
            .trim()
            .to_owned();
        let offline = LlmProvider::Offline {
            token_delay: Duration::from_millis(vars.parse(
                "OFFLINE_TOKEN_DELAY_MS",
                40u64,
                "a whole number of milliseconds",
            )?),
        };
        let openai = |api_key: Option<SecretString>| LlmProvider::OpenAi {
            api_key,
            base_url: base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            model: model.clone(),
        };
        let bots = bots::read(vars)?;
        let provider = match vars
            .get("LLM_PROVIDER")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None if api_key.is_some() => openai(api_key),
            None => offline,
            Some(p) if p == "offline" => offline,
            Some(p) if p == "lex" => LlmProvider::Lex(bots.lex?),
            Some(p) if p == "watson" => LlmProvider::Watson(bots.watson?),
            Some(p) if p == "openai" => {
                if api_key.is_none() && base_url.is_none() {
                    return Err(invalid(
                        "OPENAI_API_KEY",
                        "LLM_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a server that needs no key)",
                    ));
                }
                openai(api_key)
            }
            Some(p) => {
                return Err(invalid(
                    "LLM_PROVIDER",
                    format!("{p:?} is not openai, offline, lex or watson"),
                ))
            }
        };
        let max_tool_steps = vars.parse("AGENT_MAX_TOOL_STEPS", 5usize, "a whole number")?;
        if max_tool_steps == 0 {
            return Err(invalid("AGENT_MAX_TOOL_STEPS", "must be at least 1"));
        }
        let llm = LlmConfig {
            provider,
            connect_timeout: vars.millis("LLM_CONNECT_TIMEOUT_MS", 3000)?,
            first_token_timeout: vars.millis("LLM_FIRST_TOKEN_TIMEOUT_MS", 8000)?,
            idle_timeout: vars.millis("LLM_STREAM_IDLE_TIMEOUT_MS", 5000)?,
            max_tool_steps,
        };

        let system_prompt = prompt_file(vars, "SYSTEM_PROMPT_FILE", DEFAULT_SYSTEM_PROMPT)?;

        // WELCOME_GREETING: unset → default; set but empty → no greeting.
        let welcome_greeting = match vars.raw("WELCOME_GREETING") {
            None => Some(DEFAULT_WELCOME_GREETING.to_owned()),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v.trim().to_owned()),
        };

        let api_key = match (vars.get("TWILIO_API_KEY"), vars.get("TWILIO_API_SECRET")) {
            (Some(key), Some(secret)) => {
                let key = key.trim().to_owned();
                check_sid("TWILIO_API_KEY", &key, "SK", "an API key SID")?;
                Some((key, SecretString::from(secret.trim().to_owned())))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "TWILIO_API_SECRET",
                    "must be set with TWILIO_API_KEY",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "TWILIO_API_KEY",
                    "must be set with TWILIO_API_SECRET",
                ))
            }
            (None, None) => None,
        };
        let twilio = TwilioConfig {
            account_sid: vars.get("TWILIO_ACCOUNT_SID").map(|s| s.trim().to_owned()),
            auth_token: vars
                .get("TWILIO_AUTH_TOKEN")
                .map(|t| SecretString::from(t.trim().to_owned())),
            api_key,
            api_base: http_url(vars, "TWILIO_API_BASE", DEFAULT_TWILIO_API_BASE)?,
        };
        if let Some(sid) = &twilio.account_sid {
            check_sid("TWILIO_ACCOUNT_SID", sid, "AC", "an account SID")?;
        }
        if twilio.api_key.is_some() && twilio.account_sid.is_none() {
            return Err(invalid(
                "TWILIO_ACCOUNT_SID",
                "is needed with TWILIO_API_KEY (it names the account in the URL)",
            ));
        }

        let studio_flow_url = vars
            .get("STUDIO_FLOW_URL")
            .map(|v| {
                url::Url::parse(v.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .ok_or_else(|| {
                        invalid(
                            "STUDIO_FLOW_URL",
                            format!("{v:?} is not the flow's webhook URL (https://webhooks.twilio.com/v1/Accounts/AC…/Flows/FW…)"),
                        )
                    })
            })
            .transpose()?;
        let workflow_sid = vars.get("TWILIO_WORKFLOW_SID").map(|s| s.trim().to_owned());
        if let Some(sid) = &workflow_sid {
            check_sid(
                "TWILIO_WORKFLOW_SID",
                sid,
                "WW",
                "a TaskRouter workflow SID",
            )?;
        }
        let line = |var: &str, default: &str| vars.get(var).unwrap_or(default).trim().to_owned();
        let handoff = HandoffConfig {
            studio_flow_url,
            workflow_sid,
            handoff_line: line("HANDOFF_LINE", DEFAULT_HANDOFF_LINE),
            end_call_line: line("END_CALL_LINE", DEFAULT_END_CALL_LINE),
            unavailable_line: line("HANDOFF_UNAVAILABLE_LINE", DEFAULT_UNAVAILABLE_LINE),
            max_wait: vars.millis("HANDOFF_MAX_WAIT_MS", 15_000)?,
            api_token: vars
                .get("API_TOKEN")
                .map(|t| SecretString::from(t.trim().to_owned())),
            record_ttl: Duration::from_secs(vars.parse(
                "HANDOFF_RECORD_TTL_SECS",
                3600u64,
                "a whole number of seconds",
            )?),
        };

        // Signatures: on with a token unless explicitly off; refused without a token on a
        // public bind unless explicitly off.
        let validate = match vars.get("TWILIO_VALIDATE_SIGNATURES") {
            None => None,
            Some(v) => Some(check("TWILIO_VALIDATE_SIGNATURES", v, Check::Bool)? == "true"),
        };
        let validate_signatures = match (validate, twilio.auth_token.is_some()) {
            (Some(true), false) => {
                return Err(invalid(
                    "TWILIO_AUTH_TOKEN",
                    "TWILIO_VALIDATE_SIGNATURES=true needs the auth token that signs Twilio's requests",
                ))
            }
            (Some(v), _) => v,
            (None, true) => true,
            (None, false) if host.is_loopback() => false,
            (None, false) => {
                return Err(invalid(
                    "TWILIO_AUTH_TOKEN",
                    format!(
                        "HOST={host} accepts calls from other machines, so Twilio's request signatures must be checked: set TWILIO_AUTH_TOKEN, or TWILIO_VALIDATE_SIGNATURES=false to run without (not for production)"
                    ),
                ))
            }
        };
        if validate_signatures && public_url.is_none() && !host.is_loopback() {
            return Err(invalid(
                "PUBLIC_URL",
                "signatures are computed over the public URL Twilio calls; set PUBLIC_URL (for example https://abc.ngrok.app) when HOST is not a loopback address",
            ));
        }
        let call_token_ttl =
            vars.parse("CALL_TOKEN_TTL_SECS", 120u64, "a whole number of seconds")?;
        if call_token_ttl == 0 {
            return Err(invalid("CALL_TOKEN_TTL_SECS", "must be at least 1 second"));
        }
        let call_token_secret = vars
            .get("CALL_TOKEN_SECRET")
            .map(|s| SecretString::from(s.to_owned()));
        if vars.get("CALL_TOKEN_SECRET").is_some_and(|s| s.len() < 16) {
            return Err(invalid(
                "CALL_TOKEN_SECRET",
                "must be at least 16 characters",
            ));
        }
        let security = SecurityConfig {
            validate_signatures,
            secondary_auth_token: vars
                .get("TWILIO_AUTH_TOKEN_SECONDARY")
                .map(|t| SecretString::from(t.trim().to_owned())),
            call_token_ttl: Duration::from_secs(call_token_ttl),
            call_token_secret,
        };

        let positive = |var: &str, default: u64, what: &str| -> Result<u64, ConfigError> {
            let n = vars.parse(var, default, what)?;
            if n == 0 {
                return Err(invalid(var, "must be greater than 0"));
            }
            Ok(n)
        };
        let at_capacity_handoff = match vars
            .get("AT_CAPACITY_ACTION")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => true,
            Some(v) if v == "handoff" => true,
            Some(v) if v == "hangup" => false,
            Some(v) => {
                return Err(invalid(
                    "AT_CAPACITY_ACTION",
                    format!("{v:?} is not handoff or hangup"),
                ))
            }
        };
        let limits = LimitsConfig {
            max_frame_bytes: positive("MAX_FRAME_BYTES", 65_536, "a number of bytes")? as usize,
            max_prompt_chars: positive("MAX_PROMPT_CHARS", 2000, "a number of characters")?
                as usize,
            history_max_chars: positive("HISTORY_MAX_CHARS", 24_000, "a number of characters")?
                as usize,
            max_call_duration: Duration::from_secs(positive(
                "MAX_CALL_DURATION_SECS",
                3600,
                "a whole number of seconds",
            )?),
            max_duration_line: line("MAX_DURATION_LINE", lines::MAX_DURATION),
            idle_reprompt: vars.millis("IDLE_REPROMPT_MS", 10_000)?,
            idle_reprompt_line: line("IDLE_REPROMPT_LINE", lines::IDLE_REPROMPT),
            idle_end_line: line("IDLE_END_LINE", lines::IDLE_END),
            max_concurrent_calls: positive(
                "MAX_CONCURRENT_CALLS",
                DEFAULT_MAX_CONCURRENT_CALLS,
                "a whole number",
            )? as usize,
            at_capacity_line: line("AT_CAPACITY_LINE", lines::AT_CAPACITY),
            at_capacity_handoff,
            drain_timeout: drain_timeout(vars)?,
            drain_line: line("DRAIN_LINE", lines::DRAIN),
            llm_filler_after: vars.millis("LLM_FILLER_AFTER_MS", 1500)?,
            // Empty turns the filler off.
            llm_filler_line: vars
                .raw("LLM_FILLER_LINE")
                .unwrap_or(lines::LLM_FILLER)
                .trim()
                .to_owned(),
            tool_timeout: vars.millis("TOOL_TIMEOUT_MS", 10_000)?,
            llm_failures_before_handoff: positive(
                "LLM_FAILURES_BEFORE_HANDOFF",
                2,
                "a whole number",
            )? as u32,
            llm_offer_human_line: line("LLM_OFFER_HUMAN_LINE", lines::LLM_OFFER_HUMAN),
            reconnect_grace: Duration::from_secs(vars.parse(
                "RECONNECT_GRACE_SECS",
                300u64,
                "a whole number of seconds",
            )?),
            max_reconnects: vars.parse("MAX_RECONNECTS", 2u32, "a whole number")?,
            reconnect_line: line("RECONNECT_LINE", lines::RECONNECT),
        };

        let relay = relay_config(vars, welcome_greeting.as_deref())?;
        let chat = chat::read(vars, &limits)?;
        let connect = connect::read(vars, host)?;
        Ok(Config {
            host,
            port,
            public_url,
            llm,
            system_prompt,
            welcome_greeting,
            error_line: vars
                .get("LLM_ERROR_LINE")
                .unwrap_or(DEFAULT_ERROR_LINE)
                .trim()
                .to_owned(),
            twilio,
            handoff,
            security,
            limits,
            relay,
            chat,
            connect,
        })
    }

    /// A one-line description of the model that answers, for the startup log.
    pub fn describe_llm(&self) -> String {
        match &self.llm.provider {
            LlmProvider::OpenAi { base_url, model, .. } => {
                format!("OpenAI-compatible model {model} at {base_url}")
            }
            LlmProvider::Offline { .. } => {
                "the built-in offline agent (a rule-based stand-in, not an LLM; set OPENAI_API_KEY for a real model)".into()
            }
            LlmProvider::Lex(lex) => format!(
                "the Amazon Lex V2 bot {} (alias {}, locale {})",
                lex.bot_id, lex.bot_alias_id, lex.locale_id
            ),
            LlmProvider::Watson(watson) => {
                format!("the IBM Watson Assistant at {}", watson.url)
            }
        }
    }
}

/// `DRAIN_TIMEOUT`: seconds, or a number with `s` or `m`.
fn drain_timeout(vars: &Vars) -> Result<Duration, ConfigError> {
    duration(vars, "DRAIN_TIMEOUT", Duration::from_secs(600))
}

/// A time setting: seconds, or a number with `s`, `m` or `h` (`600`, `90s`, `10m`, `1h`).
fn duration(vars: &Vars, var: &str, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = vars.get(var) else {
        return Ok(default);
    };
    let v = v.trim();
    let (number, unit) = if let Some(n) = v.strip_suffix('h') {
        (n, 3600)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60)
    } else {
        (v.strip_suffix('s').unwrap_or(v), 1)
    };
    number
        .trim()
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| invalid(var, format!("{v:?} is not a time such as 600, 90s or 10m")))
}

/// A system prompt: the contents of the file `var` names, else `default`.
fn prompt_file(vars: &Vars, var: &str, default: &str) -> Result<String, ConfigError> {
    let Some(path) = vars.get(var) else {
        return Ok(default.to_owned());
    };
    let path = PathBuf::from(path.trim());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| invalid(var, format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Err(invalid(var, format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// `prefix` + 32 hexadecimal characters.
fn check_sid(var: &str, sid: &str, prefix: &str, what: &str) -> Result<(), ConfigError> {
    let ok = sid.len() == 34
        && sid.starts_with(prefix)
        && sid[2..].chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            var,
            format!("{sid:?} is not {what} ({prefix} + 32 hexadecimal characters)"),
        ))
    }
}

/// An http(s) URL setting without a trailing slash.
fn http_url(vars: &Vars, var: &str, default: &str) -> Result<String, ConfigError> {
    let value = vars
        .get(var)
        .unwrap_or(default)
        .trim()
        .trim_end_matches('/')
        .to_owned();
    match url::Url::parse(&value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(value),
        _ => Err(invalid(var, format!("{value:?} is not an http(s) URL"))),
    }
}

#[cfg(test)]
mod tests;
