//! The TCP server: the accept loop (`listener`), one task per client
//! (`connection`: a reader that executes commands, a writer that drains the
//! outbox), and the shutdown signal (`shutdown`).

pub mod connection;
pub mod listener;
pub mod shutdown;

use std::time::Duration;

pub use listener::serve;

/// How long a closing connection may take to flush what it still has queued:
/// on shutdown, after `QUIT`, after a protocol violation or a slow consumer.
pub const GRACE: Duration = Duration::from_secs(2);

use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Embedded, redis::RedisBroker};
use crate::config::Config;

/// Binds, starts the configured backend and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    raise_open_files_limit();
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let config = Arc::new(config);
    match &config.redis {
        None => start(listener, Arc::new(Embedded::default()), config, shutdown).await,
        Some(url) => {
            let broker = RedisBroker::start(url, shutdown.clone())?;
            start(listener, broker, config, shutdown).await
        }
    }
}

async fn start<B: Broker>(
    listener: TcpListener,
    broker: Arc<B>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr} (backend: {})", broker.describe());
    serve(listener, broker, config, shutdown).await;
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
