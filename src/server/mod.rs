//! The server: the accept loop (`listener`), why each connection ended
//! (`closed`), and the shutdown signal (`shutdown`). Connections are served
//! by a transport adapter (`crate::transport`) around a session.

pub mod closed;
pub mod listener;
pub mod shutdown;

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Embedded, redis::RedisBroker};
use crate::config::Config;

/// How long a closing connection may take to flush what it still has queued:
/// on shutdown, after `QUIT`, after a protocol violation or a slow consumer.
pub const GRACE: Duration = Duration::from_secs(2);

/// Starts the configured backend and serves clients on `listener` (bound by
/// the caller, so tests can run the server in-process) until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    raise_open_files_limit();
    crate::sys::keep_freed_heap();
    let config = Arc::new(config);
    match &config.redis {
        None => {
            let broker = Arc::new(Embedded::new(config.max_channels));
            start(listener, broker, config, shutdown).await
        }
        Some(url) => {
            let broker = RedisBroker::start(url, config.max_channels, shutdown.clone())?;
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
    listener::serve(listener, broker, config, shutdown).await;
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
