//! The server: the accept loop (`listener`), why each connection ended
//! (`closed`), and the shutdown signal (`shutdown`). Connections are served
//! by a transport adapter (`crate::transport`) around a session.

pub mod closed;
pub mod listener;
pub mod shutdown;

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::broker::redis::{RedisBroker, Servers};
use crate::broker::{Broker, Embedded};
use crate::config::Config;
use crate::http::Web;

/// How long a closing connection may take to flush what it still has queued:
/// on shutdown, after `QUIT`, after a protocol violation or a slow consumer.
pub const GRACE: Duration = Duration::from_secs(2);

/// Starts the configured backend and serves clients on `listener` (the line
/// protocol) and `http` (bound by the caller, so tests can run the server
/// in-process) until `shutdown`.
///
/// Shutdown: `/readyz` answers 503 at once; after `--shutdown-delay` the
/// listeners stop, WebSocket clients get close 1001, SSE streams end, and
/// connections get `GRACE` to flush what is queued.
pub async fn run(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    raise_open_files_limit();
    crate::sys::keep_freed_heap();
    let config = Arc::new(config);
    let closing = CancellationToken::new();
    let delay = config.shutdown_delay;
    tokio::spawn({
        let (shutdown, closing) = (shutdown.clone(), closing.clone());
        async move {
            shutdown.cancelled().await;
            if !delay.is_zero() {
                tracing::info!("draining: /readyz answers 503; closing connections in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown::second_signal() => {
                        tracing::info!("second signal: closing connections now");
                    }
                }
            }
            closing.cancel();
        }
    });
    // Always watched, from before the server says it listens: an unhandled
    // SIGHUP would kill the process.
    tokio::spawn(crate::tls::reload_on_hangup(config.tls.clone(), closing.clone()));
    let listeners = Listeners { line: listener, http, draining: shutdown, closing };
    let servers = match (&config.redis, &config.redis_cluster) {
        (Some(url), _) => Some(Servers::Single(url)),
        (None, Some(urls)) => Some(Servers::Cluster(urls)),
        (None, None) => None,
    };
    match servers {
        None => {
            let broker = Arc::new(Embedded::new(config.max_channels, config.history.clone()));
            start(listeners, broker, config).await
        }
        Some(servers) => {
            let closing = listeners.closing.clone();
            let broker = RedisBroker::start(
                servers,
                config.max_channels,
                config.redis_read_ahead,
                config.history.clone(),
                closing.clone(),
            )?;
            let served = start(listeners, Arc::clone(&broker), config).await;
            closing.cancel();
            broker.stopped().await;
            served
        }
    }
}

struct Listeners {
    line: TcpListener,
    http: Option<TcpListener>,
    draining: CancellationToken,
    closing: CancellationToken,
}

async fn start<B: Broker>(
    listeners: Listeners,
    broker: Arc<B>,
    config: Arc<Config>,
) -> anyhow::Result<()> {
    let Listeners { line, http, draining, closing } = listeners;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let web = match http {
        Some(http) => {
            // Logged before "listening on", which tells tests and scripts
            // that the server is up.
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            tracing::info!("http on {scheme}://{}/", http.local_addr()?);
            let web = Web {
                broker: Arc::clone(&broker),
                config: Arc::clone(&config),
                draining,
                closing: closing.clone(),
            };
            Some(tokio::spawn(crate::http::serve(http, web, Arc::clone(&slots))))
        }
        None => None,
    };
    let tls = if config.tls.is_some() { ", tls" } else { "" };
    tracing::info!("listening on {} (backend: {}{tls})", line.local_addr()?, broker.describe());
    listener::serve(line, broker, config, slots, closing).await;
    if let Some(web) = web {
        let _ = web.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Each connection is a file descriptor: use all the process may have.
fn raise_open_files_limit() {
    match crate::sys::raise_nofile() {
        Ok(limit) => tracing::debug!(limit = limit.now, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}
