//! Settings of the bring-your-own-bot brains: Amazon Lex V2 (`LLM_PROVIDER=lex`) and IBM Watson
//! Assistant v2 (`LLM_PROVIDER=watson`). Every variable is read whatever the provider (so the
//! documentation test sees them all); the required ones are checked only for their provider.

use secrecy::SecretString;

use super::{http_url, invalid, ConfigError, Vars};

/// Watson's IAM token endpoint.
pub const DEFAULT_WATSON_IAM_URL: &str = "https://iam.cloud.ibm.com/identity/token";
/// The Watson Assistant API `version` date relaybot is written against (channels-and-bots.md
/// §1.2: the current version per IBM's Node SDK, Nov 2025).
pub const DEFAULT_WATSON_VERSION: &str = "2024-08-25";

/// Amazon Lex V2 (`RecognizeText`). Credentials and region come from the standard AWS provider
/// chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`, an instance
/// role, …), read by the AWS SDK itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LexConfig {
    /// `LEX_BOT_ID`: the bot's ID (10 characters, from the Lex console).
    pub bot_id: String,
    /// `LEX_BOT_ALIAS_ID`: the alias (`TSTALIASID` is the draft's test alias).
    pub bot_alias_id: String,
    /// `LEX_LOCALE_ID` (default `en_US`).
    pub locale_id: String,
    /// `LEX_ENDPOINT_URL`: another Lex runtime endpoint (tests point it at a fake).
    pub endpoint_url: Option<String>,
    /// `LEX_HANDOFF_INTENTS` (default `Agent`): intents that hand the customer to a person.
    pub handoff_intents: Vec<String>,
    /// `LEX_END_ON_FULFILLED` (default `true`): a `Close` with the intent `Fulfilled` or
    /// `ReadyForFulfillment` ends the conversation after Lex's message.
    pub end_on_fulfilled: bool,
    /// `LEX_FALLBACKS_BEFORE_HANDOFF` (default 2): `FallbackIntent` this many times in a row
    /// offers a person.
    pub fallbacks_before_handoff: u32,
    /// `LEX_FALLBACK_LINE`: the offer of a person after those fallbacks (only where a person
    /// can take over on that channel).
    pub fallback_line: String,
}

/// IBM Watson Assistant v2.
#[derive(Debug, Clone)]
pub struct WatsonConfig {
    /// `WATSON_APIKEY`: the service credentials' API key (exchanged for IAM tokens).
    pub apikey: SecretString,
    /// `WATSON_IAM_URL` (default `https://iam.cloud.ibm.com/identity/token`): the full token URL.
    pub iam_url: String,
    /// `WATSON_URL`: the service instance URL
    /// (`https://api.{location}.assistant.watson.cloud.ibm.com/instances/{instance_id}`).
    pub url: String,
    /// `WATSON_ASSISTANT_ID`.
    pub assistant_id: Option<String>,
    /// `WATSON_ENVIRONMENT_ID` (new experience: the environment's ID; message and session calls
    /// use it). At least one of the two IDs is required.
    pub environment_id: Option<String>,
    /// `WATSON_VERSION` (default `2024-08-25`): the API `version` date.
    pub version: String,
    /// `WATSON_STATELESS` (default `false`): the stateless message API (relaybot keeps the
    /// context) instead of a Watson session per conversation.
    pub stateless: bool,
}

/// The bot settings as read, before the provider picks one.
pub(super) struct Bots {
    pub(super) lex: Result<LexConfig, ConfigError>,
    pub(super) watson: Result<WatsonConfig, ConfigError>,
}

/// Reads every bot setting; missing required ones are errors only if that provider is chosen.
pub(super) fn read(vars: &Vars) -> Result<Bots, ConfigError> {
    let list = |var: &str, default: &str| -> Vec<String> {
        vars.get(var)
            .unwrap_or(default)
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let bool_var = |var: &str, default: bool| -> Result<bool, ConfigError> {
        match vars.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" || v == "1" => Ok(true),
            Some(v) if v == "false" || v == "0" => Ok(false),
            Some(v) => Err(invalid(var, format!("{v:?} is not true or false"))),
        }
    };
    let required = |var: &str, provider: &str| -> Result<String, ConfigError> {
        vars.get(var)
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| invalid(var, format!("is required with LLM_PROVIDER={provider}")))
    };

    let locale_id = vars
        .get("LEX_LOCALE_ID")
        .unwrap_or("en_US")
        .trim()
        .to_owned();
    let endpoint_url = match vars.get("LEX_ENDPOINT_URL") {
        Some(_) => Some(http_url(vars, "LEX_ENDPOINT_URL", "")?),
        None => None,
    };
    let handoff_intents = list("LEX_HANDOFF_INTENTS", "Agent");
    let end_on_fulfilled = bool_var("LEX_END_ON_FULFILLED", true)?;
    let fallbacks_before_handoff =
        vars.parse("LEX_FALLBACKS_BEFORE_HANDOFF", 2u32, "a whole number")?;
    let fallback_line = vars
        .get("LEX_FALLBACK_LINE")
        .unwrap_or("Sorry, I'm not getting that. I can connect you to a person if you'd like.")
        .trim()
        .to_owned();
    let bot_id = required("LEX_BOT_ID", "lex");
    let bot_alias_id = required("LEX_BOT_ALIAS_ID", "lex");
    let lex = bot_id.and_then(|bot_id| {
        Ok(LexConfig {
            bot_id,
            bot_alias_id: bot_alias_id?,
            locale_id,
            endpoint_url,
            handoff_intents,
            end_on_fulfilled,
            fallbacks_before_handoff,
            fallback_line,
        })
    });

    let iam_url = http_url(vars, "WATSON_IAM_URL", DEFAULT_WATSON_IAM_URL)?;
    let version = vars
        .get("WATSON_VERSION")
        .unwrap_or(DEFAULT_WATSON_VERSION)
        .trim()
        .to_owned();
    let valid_date = version.len() == 10
        && version.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !valid_date {
        return Err(invalid(
            "WATSON_VERSION",
            format!("{version:?} is not a date such as 2024-08-25"),
        ));
    }
    let stateless = bool_var("WATSON_STATELESS", false)?;
    let assistant_id = vars.get("WATSON_ASSISTANT_ID").map(|v| v.trim().to_owned());
    let environment_id = vars
        .get("WATSON_ENVIRONMENT_ID")
        .map(|v| v.trim().to_owned());
    let url = match vars.get("WATSON_URL") {
        Some(_) => Ok(http_url(vars, "WATSON_URL", "")?),
        None => Err(invalid(
            "WATSON_URL",
            "is required with LLM_PROVIDER=watson",
        )),
    };
    let apikey = required("WATSON_APIKEY", "watson").map(SecretString::from);
    let watson = apikey.and_then(|apikey| {
        if assistant_id.is_none() && environment_id.is_none() {
            return Err(invalid(
                "WATSON_ENVIRONMENT_ID",
                "WATSON_ENVIRONMENT_ID or WATSON_ASSISTANT_ID is required with LLM_PROVIDER=watson",
            ));
        }
        Ok(WatsonConfig {
            apikey,
            iam_url,
            url: url?,
            assistant_id,
            environment_id,
            version,
            stateless,
        })
    });
    Ok(Bots { lex, watson })
}
