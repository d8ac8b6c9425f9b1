//! Settings of the Amazon Connect channel: relaybot as the Lex V2 code hook (`POST /lex/v2`)
//! and the `relaybot lambda` that Lex invokes.

use std::{net::IpAddr, time::Duration};

use secrecy::SecretString;

use super::{check, http_url, invalid, Check, ConfigError, Vars};

/// The code hook's settings.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// `LEX_SHARED_SECRET`: the key of `X-Relaybot-Signature` on `POST /lex/v2` (and what
    /// `relaybot lambda` signs its forwards with).
    pub shared_secret: Option<SecretString>,
    /// Whether `POST /lex/v2` requires a valid signature (`LEX_VALIDATE_SIGNATURES`; default:
    /// on when `LEX_SHARED_SECRET` is set). A non-loopback `HOST` without a secret refuses to
    /// start unless this is explicitly `false`.
    pub validate_signatures: bool,
    /// `LEX_TURN_BUDGET_MS` (default 4500 ms): the longest `/lex/v2` waits for the agent before
    /// answering with `LEX_HOLDING_LINE` (the answer comes on the next event).
    pub turn_budget: Duration,
    /// `LEX_HOLDING_LINE`: said when the agent needs longer than the budget.
    pub holding_line: String,
    /// `LEX_SSML` (default `false`): answer spoken (Speech) turns with SSML messages.
    pub ssml: bool,
    /// `LEX_FORWARD_URL`: where `relaybot lambda` forwards Lex's events (a relaybot server's
    /// `/lex/v2`); unset, the Lambda answers in-process.
    pub forward_url: Option<String>,
}

/// Reads the code hook's settings; `host` is where the server listens.
pub(super) fn read(vars: &Vars, host: IpAddr) -> Result<ConnectConfig, ConfigError> {
    let shared_secret = vars
        .get("LEX_SHARED_SECRET")
        .map(|s| SecretString::from(s.trim().to_owned()));
    if vars
        .get("LEX_SHARED_SECRET")
        .is_some_and(|s| s.trim().len() < 16)
    {
        return Err(invalid(
            "LEX_SHARED_SECRET",
            "must be at least 16 characters",
        ));
    }
    let validate = match vars.get("LEX_VALIDATE_SIGNATURES") {
        None => None,
        Some(v) => Some(check("LEX_VALIDATE_SIGNATURES", v, Check::Bool)? == "true"),
    };
    let validate_signatures = match (validate, shared_secret.is_some()) {
        (Some(true), false) => {
            return Err(invalid(
                "LEX_SHARED_SECRET",
                "LEX_VALIDATE_SIGNATURES=true needs the secret that signs /lex/v2 requests",
            ))
        }
        (Some(v), _) => v,
        (None, true) => true,
        (None, false) if host.is_loopback() => false,
        (None, false) => {
            return Err(invalid(
                "LEX_SHARED_SECRET",
                format!(
                    "HOST={host} accepts requests from other machines, so POST /lex/v2 must be signed: set LEX_SHARED_SECRET (and the same in the Lambda), or LEX_VALIDATE_SIGNATURES=false to run without (not for production)"
                ),
            ))
        }
    };
    let turn_budget = vars.millis("LEX_TURN_BUDGET_MS", 4500)?;
    let holding_line = vars
        .get("LEX_HOLDING_LINE")
        .unwrap_or("One moment, please.")
        .trim()
        .to_owned();
    let ssml = match vars.get("LEX_SSML") {
        None => false,
        Some(v) => check("LEX_SSML", v, Check::Bool)? == "true",
    };
    let forward_url = match vars.get("LEX_FORWARD_URL") {
        Some(_) => Some(http_url(vars, "LEX_FORWARD_URL", "")?),
        None => None,
    };
    Ok(ConnectConfig {
        shared_secret,
        validate_signatures,
        turn_budget,
        holding_line,
        ssml,
        forward_url,
    })
}
