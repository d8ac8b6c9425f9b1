//! The `relaybot` binary: `relaybot` (or `relaybot serve`) runs the server; `relaybot call`
//! rings it from the terminal; `relaybot chat` writes to it as a Twilio Conversations customer;
//! `relaybot bench` measures it; `relaybot lambda` (built with `--features lambda`) is the AWS
//! Lambda that Amazon Lex V2 calls as its code hook. Everything else lives in the library.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use relaybot::{
    agent::tools::ToolRegistry,
    config::Config,
    simulator::{
        self,
        chat::{ChatCommand, ChatEnd},
        conversations_api::FakeConversationsApi,
        CallCommand, DialOptions, FakeCallsApi,
    },
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "An AI voice agent for Twilio Conversation Relay, with handoff to Flex"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default). Settings come from the environment and .env.
    Serve,
    /// Ring the server the way Twilio does and talk to the agent in the terminal.
    Call(CallArgs),
    /// Write to the bot the way Twilio Conversations delivers a chat (web chat, SMS or
    /// WhatsApp), with a stand-in for Twilio's Conversations and Flex APIs that shows what the
    /// bot posts and what Flex receives on a handoff.
    Chat(ChatArgs),
    /// Measure the server: relay overhead per token, CPU time and memory per call, under
    /// simulated Twilio calls and a fake model that streams at a set rate.
    Bench(relaybot::bench::BenchOptions),
    /// Run as the AWS Lambda that Amazon Lex V2 calls as its code hook (a build with
    /// `--features lambda`).
    ///
    /// Answers Lex's events in-process, or forwards them signed to LEX_FORWARD_URL. A Lambda
    /// build started with no subcommand inside Lambda (AWS_LAMBDA_RUNTIME_API set), as a
    /// `bootstrap` is, runs this too.
    Lambda,
}

#[derive(Args)]
struct CallArgs {
    /// Server to call; default http://HOST:PORT from the settings. If nothing answers there, a
    /// server is started in-process.
    #[arg(long)]
    url: Option<String>,
    /// A caller line for a scripted call (repeatable; `/dtmf 5` and `/interrupt` work too).
    /// Without it the call is interactive.
    #[arg(long = "say", value_name = "TEXT")]
    say: Vec<String>,
    /// The caller's number (`From`).
    #[arg(long, default_value = "+15005550006")]
    from: String,
    /// The number called (`To`).
    #[arg(long, default_value = "+15005550001")]
    to: String,
    /// Longest wait for one reply, in seconds.
    #[arg(long, default_value_t = 60)]
    reply_timeout: u64,
    /// After a scripted call's last line, how long the caller stays on for a handoff or goodbye,
    /// in milliseconds.
    #[arg(long, default_value_t = 1500)]
    linger_ms: u64,
}

#[derive(Args)]
struct ChatArgs {
    /// Server to write to; default http://HOST:PORT from the settings. If nothing answers there,
    /// a server is started in-process, its Conversations and Flex API requests sent to the
    /// stand-in.
    #[arg(long)]
    url: Option<String>,
    /// A customer line for a scripted chat (repeatable; `/media` and `/redeliver` work too).
    /// Without it the chat is interactive.
    #[arg(long = "say", value_name = "TEXT")]
    say: Vec<String>,
    /// The customer's address (`Author`): `+1…` chats over SMS, `whatsapp:+1…` over WhatsApp,
    /// an identity such as `FXabc` over Flex web chat.
    #[arg(long, default_value = "+15005550006")]
    from: String,
    /// Longest wait for one reply, in seconds.
    #[arg(long, default_value_t = 60)]
    reply_timeout: u64,
    /// After the last line (the script's end, or stdin closed), how long to watch for a late
    /// reply, a handoff or a close, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    linger_ms: u64,
    /// Run the Conversations/Flex stand-in on this loopback port, for a server already running
    /// with TWILIO_CONVERSATIONS_BASE and TWILIO_FLEX_BASE set to http://127.0.0.1:PORT
    /// (without it, `chat` refuses a server it did not start, since it could not see the
    /// replies).
    #[arg(long)]
    api_port: Option<u16>,
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (not when the
/// future is first polled), so a signal that arrives during start-up is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let streams =
            signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            match streams {
                Ok((mut terminate, mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    // A second signal stops at once instead of waiting for the drain.
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = terminate.recv() => {}
                            _ = interrupt.recv() => {}
                        }
                        eprintln!(
                            "relaybot: second signal; stopping without waiting for live calls"
                        );
                        std::process::exit(1);
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for shutdown signals");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutting down: no new calls; live calls may finish");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: no new calls; live calls may finish");
    }
}

fn main() -> ExitCode {
    // A missing .env is fine; a broken one must not be half-read in silence.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!(
                "relaybot: configuration error: .env: {e} (values with spaces need double quotes)"
            );
            return ExitCode::from(2);
        }
    }
    let mut cli = Cli::parse();
    if let Some(Command::Bench(options)) = cli.command {
        return bench(options);
    }
    let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty());
    if cfg!(feature = "lambda") {
        // Lambda runs the `bootstrap` executable without arguments.
        if in_lambda && cli.command.is_none() {
            cli.command = Some(Command::Lambda);
        }
    } else if matches!(cli.command, Some(Command::Lambda)) {
        eprintln!(
            "relaybot: this binary was built without Lambda support; build it with the `lambda` feature: `cargo build --release --features lambda` (or `cargo lambda build --release --features lambda` for a Lambda bootstrap)"
        );
        return ExitCode::from(2);
    } else if in_lambda && cli.command.is_none() {
        eprintln!(
            "relaybot: AWS_LAMBDA_RUNTIME_API is set, but this binary was built without Lambda support, so it runs the HTTP server; build it with `--features lambda` to answer Lex events (or start it as `relaybot serve` to silence this)"
        );
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("relaybot: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relaybot bench`, on a single-threaded runtime so that the load generator uses at most one
/// core and leaves the rest to the server it measures.
fn bench(options: relaybot::bench::BenchOptions) -> ExitCode {
    init_tracing("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relaybot: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(relaybot::bench::command(options)) {
        Ok(report) if report.levels.iter().all(|l| l.errors == 0) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("relaybot: bench: some calls failed (see the errors above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("relaybot: bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `serve`, `call`, `chat` and `lambda`, on the multi-threaded runtime.
async fn run(cli: Cli) -> ExitCode {
    let is_simulator = matches!(cli.command, Some(Command::Call(_) | Command::Chat(_)));
    init_tracing(if is_simulator {
        "warn"
    } else {
        "relaybot=info,warn"
    });
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relaybot: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None | Some(Command::Serve) => serve(config).await,
        Some(Command::Call(args)) => call(config, args).await,
        Some(Command::Chat(args)) => chat(config, args).await,
        Some(Command::Bench(_)) => unreachable!("bench runs on its own runtime"),
        Some(Command::Lambda) => return lambda(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relaybot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relaybot lambda`: the Lambda runtime loop, until it fails.
#[cfg(feature = "lambda")]
async fn lambda(config: Config) -> ExitCode {
    use relaybot::lambda::LambdaError;
    match relaybot::lambda::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relaybot: {e}");
            match e {
                LambdaError::Config(_) | LambdaError::NotInLambda(_) => ExitCode::from(2),
                LambdaError::Setup(_) | LambdaError::Runtime(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// Without the `lambda` feature `main` refuses `relaybot lambda` before this.
#[cfg(not(feature = "lambda"))]
async fn lambda(_config: Config) -> ExitCode {
    eprintln!("relaybot: this binary was built without Lambda support (the `lambda` feature)");
    ExitCode::from(2)
}

async fn serve(config: Config) -> Result<(), String> {
    let shutdown = shutdown_signal();
    let cap = config.limits.max_concurrent_calls as u64;
    match relaybot::sys::raise_open_file_limit() {
        // A streaming call holds two sockets (Twilio's and the model's), plus webhooks.
        Some(limit) if limit < cap * 2 + 64 => tracing::warn!(
            limit,
            max_concurrent_calls = cap,
            "the open-file limit is too low for MAX_CONCURRENT_CALLS (two sockets a call): raise `ulimit -n` or lower MAX_CONCURRENT_CALLS"
        ),
        Some(limit) => tracing::debug!(limit, "open-file limit"),
        None => tracing::debug!("open-file limit unknown"),
    }
    for var in &config.relay.unknown_attributes {
        tracing::warn!(%var, "not a known ConversationRelay attribute; passing it through as written");
    }
    if config.relay.attribute("applicationReconnect").is_some() {
        tracing::warn!("CR_APPLICATION_RECONNECT: Twilio's own reconnect handshake is undocumented and the single-use call token refuses a repeated upgrade; relaybot reconnects dropped calls through /action instead");
    }
    let listener = TcpListener::bind((config.host, config.port))
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}:{}: {e} (set HOST/PORT)",
                config.host, config.port
            )
        })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("relaybot listening on http://{local}");
    tracing::info!("answering with {}", config.describe_llm());
    match &config.public_url {
        Some(url) => tracing::info!(
            "give Twilio this voice webhook (POST): {}/twiml",
            url.as_str().trim_end_matches('/')
        ),
        None => tracing::info!(
            "PUBLIC_URL is not set: expose port {port} (for example `ngrok http {port}`) and give Twilio https://<your-host>/twiml as the voice webhook (POST)",
            port = local.port()
        ),
    }
    tracing::info!("talk to it from another terminal: cargo run --release -- call");
    let state = relaybot::build_state(config, ToolRegistry::new())?;
    tracing::info!("{}", state.describe_handoff());
    if !state.verifier.enabled() {
        tracing::warn!("Twilio request signatures are NOT checked (no TWILIO_AUTH_TOKEN, or TWILIO_VALIDATE_SIGNATURES=false): fine for local work, never for production");
    } else if state.config.public_url.is_none() {
        tracing::warn!(
            "signatures are checked against http://{local} because PUBLIC_URL is unset: set PUBLIC_URL to the URL Twilio calls (your ngrok URL) or Twilio's requests will be refused"
        );
    }
    relaybot::http::serve(listener, state, shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

/// `http://HOST:PORT` from the settings (loopback when HOST is unspecified).
fn default_url(config: &Config) -> String {
    let host = if config.host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else if config.host.is_ipv6() {
        format!("[{}]", config.host)
    } else {
        config.host.to_string()
    };
    format!("http://{host}:{}", config.port)
}

/// Whether a server answers `GET {url}/healthz`.
async fn answers(url: &str) -> Result<bool, String> {
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(probe
        .get(format!("{}/healthz", url.trim_end_matches('/')))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success()))
}

async fn call(config: Config, args: CallArgs) -> Result<(), String> {
    let url = args.url.clone().unwrap_or_else(|| default_url(&config));
    let options = DialOptions {
        from: args.from.clone(),
        to: args.to.clone(),
        auth_token: config.twilio.auth_token.clone(),
        public_url: config
            .public_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned()),
    };
    let alive = answers(&url).await?;
    let mut in_process = None;
    let mut calls_api = None;
    let mut _stand_in = None;
    let target = if alive {
        url
    } else {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let mut config = config.clone();
        if args.say.is_empty() {
            // Typing takes longer than speaking: don't ask "are you still there?" so soon.
            config.limits.idle_reprompt = config.limits.idle_reprompt.max(Duration::from_secs(60));
        }
        let default_api = config.twilio.api_base == relaybot::config::DEFAULT_TWILIO_API_BASE;
        if default_api
            && config.handoff.studio_flow_url.is_some()
            && config.twilio.rest_credentials().is_some()
        {
            // The in-process server's Calls API requests come to us, as they would to Twilio
            // (a call placed by this simulator does not exist at the real Twilio).
            let (api, updates) = FakeCallsApi::start().await.map_err(|e| e.to_string())?;
            println!(
                "Calls API requests go to this caller's stand-in for Twilio at {}.",
                api.base_url
            );
            config.twilio.api_base = api.base_url.clone();
            calls_api = Some(updates);
            _stand_in = Some(api);
        }
        let describe = config.describe_llm();
        let state = relaybot::build_state(config, ToolRegistry::new())?;
        let server = relaybot::start(listener, state).map_err(|e| e.to_string())?;
        let target = format!("http://{}", server.addr);
        println!(
            "No relaybot server answered at {url}, so one was started in-process at {target}."
        );
        println!("It answers with {describe}.");
        in_process = Some(server);
        target
    };
    let result = simulator::run_call(CallCommand {
        url: target,
        script: args.say,
        options,
        reply_timeout: Duration::from_secs(args.reply_timeout),
        linger: Duration::from_millis(args.linger_ms),
        calls_api,
    })
    .await
    .map_err(|e| e.to_string());
    if let Some(server) = in_process {
        server.shutdown.cancel();
        server.handle.abort();
    }
    result
}

/// `relaybot chat`. It always runs a [`FakeConversationsApi`]: the bot's replies, handoffs and
/// closes are REST calls, and the stand-in is where the terminal sees them. An in-process
/// server is pointed at it (and given stand-in Twilio and Flex SIDs where unset, so a handoff
/// runs end to end). A server already running elsewhere sends its REST calls wherever its own
/// `TWILIO_CONVERSATIONS_BASE`/`TWILIO_FLEX_BASE` say, so `chat` only talks to one when
/// `--api-port` puts the stand-in at a known address (the server must have been started
/// with both set to it): without it, a server found at the default address is replaced by an
/// in-process twin (said so), and one named with `--url` is refused with how to do it.
async fn chat(mut config: Config, args: ChatArgs) -> Result<(), String> {
    let url = args.url.clone().unwrap_or_else(|| default_url(&config));
    let mut alive = answers(&url).await?;
    let twin = alive && args.api_port.is_none() && args.url.is_none();
    if twin {
        // The usual case: `cargo run --release` in one terminal, `chat` in another. That
        // server's REST calls go to Twilio (or nowhere), so chat with a twin of it instead.
        println!(
            "A relaybot server answers at {url}, but its replies go to the Conversations API it is configured with, where this simulator cannot see them; chatting with an in-process server with the same settings instead."
        );
        alive = false;
    }
    if alive && args.api_port.is_none() {
        return Err(format!(
            "a server already answers at {url}, but its Conversations and Flex API requests go to its own TWILIO_CONVERSATIONS_BASE/TWILIO_FLEX_BASE, where this simulator cannot see the replies. \
             Stop it (a server is then started in-process), or start it with TWILIO_CONVERSATIONS_BASE=http://127.0.0.1:8089 TWILIO_FLEX_BASE=http://127.0.0.1:8089 and run `relaybot chat --api-port 8089`."
        ));
    }
    let api = FakeConversationsApi::start_on(args.api_port.unwrap_or(0))
        .await
        .map_err(|e| format!("cannot start the Conversations API stand-in: {e}"))?;
    let mut in_process = None;
    let target = if alive {
        println!(
            "Writing to the server at {url}. Its replies show here only if it was started with TWILIO_CONVERSATIONS_BASE={base} and TWILIO_FLEX_BASE={base}.",
            base = api.base_url
        );
        url
    } else {
        config.chat.conversations_base = api.base_url.clone();
        config.chat.flex_base = api.base_url.clone();
        let mut stand_ins = Vec::new();
        if config.twilio.account_sid.is_none() {
            let sid = simulator::new_sid("AC");
            stand_ins.push(format!("TWILIO_ACCOUNT_SID={sid}"));
            config.twilio.account_sid = Some(sid);
        }
        if config.twilio.auth_token.is_none() {
            config.twilio.auth_token = Some(simulator::new_sid("").into());
            stand_ins.push("TWILIO_AUTH_TOKEN=(random)".into());
        }
        if config.handoff.workflow_sid.is_none() {
            let sid = simulator::new_sid("WW");
            stand_ins.push(format!("TWILIO_WORKFLOW_SID={sid}"));
            config.handoff.workflow_sid = Some(sid);
        }
        if config.chat.workspace_sid.is_none() {
            let sid = simulator::new_sid("WS");
            stand_ins.push(format!("FLEX_WORKSPACE_SID={sid}"));
            config.chat.workspace_sid = Some(sid);
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let describe = config.describe_llm();
        let state = relaybot::build_state(config.clone(), ToolRegistry::new())?;
        let server = relaybot::start(listener, state).map_err(|e| e.to_string())?;
        let target = format!("http://{}", server.addr);
        if !twin {
            println!(
                "No relaybot server answered at {url}, so one was started in-process at {target}."
            );
        } else {
            println!("The in-process server is at {target}.");
        }
        println!("It answers with {describe}.");
        println!(
            "Its Conversations and Flex API requests go to this chat's stand-in for Twilio at {}.",
            api.base_url
        );
        if !stand_ins.is_empty() {
            println!(
                "Stand-ins (not real Twilio resources) so the Flex handoff can run here: {}.",
                stand_ins.join(", ")
            );
        }
        in_process = Some(server);
        target
    };
    let signing_base = config
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_else(|| target.clone());
    let reply_timeout = Duration::from_secs(args.reply_timeout);
    let greeting_wait = if in_process.is_some() && config.chat.greeting.is_none() {
        Duration::ZERO
    } else {
        reply_timeout.min(Duration::from_secs(5))
    };
    let result = simulator::chat::run_chat(ChatCommand {
        url: target,
        signing_base,
        auth_token: config
            .twilio
            .auth_token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()),
        from: args.from,
        script: args.say,
        reply_timeout,
        linger: Duration::from_millis(args.linger_ms),
        greeting_wait,
        api,
    })
    .await
    .map(|_: ChatEnd| ())
    .map_err(|e| e.to_string());
    if let Some(server) = in_process {
        server.shutdown.cancel();
        server.handle.abort();
    }
    result
}
