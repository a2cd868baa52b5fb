//! The `crier` command: the server and the clients.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crier::client::{interactive, publish, subscribe, token};
use crier::config::ServeArgs;

#[derive(Parser, Debug)]
#[command(version, about = "crier: a real-time pub/sub server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded broker unless --redis is given).
    Serve(Box<ServeArgs>),
    /// Interactive client: type commands, see replies and messages as they arrive.
    Client {
        /// Server address.
        #[arg(env = "CRIER_ADDR", default_value = crier::client::DEFAULT_ADDR)]
        addr: String,
        #[command(flatten)]
        security: crier::client::Security,
    },
    /// Print the messages of channels and patterns until interrupted.
    Sub(subscribe::SubArgs),
    /// Publish a message (or one per line of standard input).
    Pub(publish::PubArgs),
    /// Print a signed token for development (the server's HMAC secret, or a private key).
    Token(token::TokenArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CRIER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("crier: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run(cli.command)) {
        eprintln!("crier: {error:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = (*args).resolve()?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let http = match config.http {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen for HTTP on {addr}"))?,
                ),
                None => None,
            };
            let shutdown = CancellationToken::new();
            let signals = tokio::spawn(crier::server::shutdown::on_signal(shutdown.clone())?);
            let served = crier::server::run(config, listener, http, shutdown.clone()).await;
            shutdown.cancel();
            signals.await?;
            served
        }
        Command::Client { addr, security } => interactive::run(&addr, &security).await,
        Command::Sub(args) => subscribe::run(args).await,
        Command::Pub(args) => publish::run(args).await,
        Command::Token(args) => token::run(args),
    }
}
