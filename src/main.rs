//! The `relaybot` binary: `relaybot` (or `relaybot serve`) runs the server; `relaybot call`
//! rings it from the terminal. Everything else lives in the library.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use relaybot::{
    agent::tools::ToolRegistry,
    config::Config,
    simulator::{self, CallCommand, DialOptions},
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
    Call {
        /// Server to call; default http://HOST:PORT from the settings. If nothing answers there,
        /// a server is started in-process.
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
    },
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: no new calls; live calls may finish");
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let is_call = matches!(cli.command, Some(Command::Call { .. }));
    init_tracing(if is_call {
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
        Some(Command::Call {
            url,
            say,
            from,
            to,
            reply_timeout,
        }) => {
            call(
                config,
                url,
                say,
                from,
                to,
                Duration::from_secs(reply_timeout),
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relaybot: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    for var in &config.relay.unknown_attributes {
        tracing::warn!(%var, "not a known ConversationRelay attribute; passing it through as written");
    }
    let addr = (config.host, config.port);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
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
            "PUBLIC_URL is not set: expose port {} (for example `ngrok http {}`) and give Twilio https://<your-host>/twiml as the voice webhook (POST)",
            local.port(),
            local.port()
        ),
    }
    tracing::info!("talk to it from another terminal: cargo run --release -- call");
    let state = relaybot::build_state(config, ToolRegistry::new())?;
    tracing::info!("{}", state.describe_handoff());
    relaybot::http::serve(listener, state, shutdown_signal(), relaybot::DEFAULT_DRAIN)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

async fn call(
    config: Config,
    url: Option<String>,
    script: Vec<String>,
    from: String,
    to: String,
    reply_timeout: Duration,
) -> Result<(), String> {
    let host = if config.host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else if config.host.is_ipv6() {
        format!("[{}]", config.host)
    } else {
        config.host.to_string()
    };
    let url = url.unwrap_or_else(|| format!("http://{host}:{}", config.port));
    let options = DialOptions {
        from,
        to,
        auth_token: config.twilio.auth_token.clone(),
        public_url: config
            .public_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned()),
    };
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let alive = probe
        .get(format!("{}/healthz", url.trim_end_matches('/')))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let mut in_process = None;
    let target = if alive {
        url
    } else {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let state = relaybot::build_state(config.clone(), ToolRegistry::new())?;
        let server = relaybot::start(listener, state).map_err(|e| e.to_string())?;
        let target = format!("http://{}", server.addr);
        println!(
            "No relaybot server answered at {url}, so one was started in-process at {target}."
        );
        println!("It answers with {}.", config.describe_llm());
        in_process = Some(server);
        target
    };
    let result = simulator::run_call(CallCommand {
        url: target,
        script,
        options,
        reply_timeout,
    })
    .await
    .map_err(|e| e.to_string());
    if let Some(server) = in_process {
        server.shutdown.cancel();
        server.handle.abort();
    }
    result
}
