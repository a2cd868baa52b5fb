//! The accept loop: enforces `--max-connections` and, on shutdown, stops
//! accepting and waits (bounded) for the connections to flush and close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{GRACE, connection};
use crate::broker::Broker;
use crate::config::Config;

/// Serves clients on `listener` until `shutdown` is cancelled.
pub async fn serve<B: Broker>(
    listener: TcpListener,
    broker: Arc<B>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let ids = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors, most often: give connections time
                // to close instead of spinning on accept.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Pushes are coalesced by the writer; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let (broker, config, shutdown) =
                    (Arc::clone(&broker), Arc::clone(&config), shutdown.clone());
                tokio::spawn(async move {
                    connection::serve(stream, id, broker, config, shutdown).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(reject(stream));
            }
        }
    }
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(GRACE * 2, slots.acquire_many(all)).await;
}

/// Tells a client over the connection limit why it is turned away.
async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(GRACE, async {
        stream.write_all(b"ERR server full\r\n").await?;
        stream.shutdown().await
    })
    .await;
}
