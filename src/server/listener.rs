//! The accept loop: enforces `--max-connections` and, on shutdown, stops
//! accepting and waits (bounded) for the connections to flush and close.

use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::GRACE;
use super::closed::Closed;
use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::{self, Transport};
use crate::outbox;
use crate::protocol::reply::{Error, Reply};
use crate::transport::{socket, tcp};

/// Probes on an idle connection: a peer that vanished (power loss, a NAT
/// that forgot the flow) is found within two minutes (60 s + 6 × 10 s).
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Connections over `--max-connections` being told `ERR server full` at once
/// (each for at most `GRACE`).
pub const MAX_REJECTING: usize = 64;

/// Serves line-protocol clients on `listener` until `shutdown` is
/// cancelled; each connection takes a slot of `slots` (`--max-connections`,
/// shared with the HTTP listener).
pub async fn serve<B: Broker>(
    listener: TcpListener,
    broker: Arc<B>,
    config: Arc<Config>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most often: give connections time
                // to close instead of spinning on accept.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tune(&stream);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let id = outbox::next_id();
                let (broker, config, shutdown) =
                    (Arc::clone(&broker), Arc::clone(&config), shutdown.clone());
                metrics::get().connection_opened(Transport::Tcp);
                tokio::spawn(async move {
                    // The TLS path is boxed: its handshake and session state
                    // are kilobytes that plain connections must not carry.
                    let closed = match config.tls.clone() {
                        None => tcp::serve(socket::Tcp(stream), id, broker, config, shutdown).await,
                        Some(tls) => {
                            Box::pin(async move {
                                match tls.accept(stream).await {
                                    Ok(stream) => {
                                        let socket = socket::Tls(std::sync::Mutex::new(stream));
                                        tcp::serve(socket, id, broker, config, shutdown).await
                                    }
                                    Err(error) => {
                                        tracing::debug!(%peer, %error, "tls handshake failed");
                                        Closed::TlsError
                                    }
                                }
                            })
                            .await
                        }
                    };
                    metrics::get().connection_closed(Transport::Tcp, closed);
                    drop(slot);
                    tracing::debug!(%peer, id, reason = %closed, "connection closed");
                });
            }
            Err(_) => {
                // A flood over the limit must not grow a task per connection:
                // past MAX_REJECTING at once, the socket is just closed.
                if let Ok(permit) = Arc::clone(&rejecting).try_acquire_owned() {
                    tokio::spawn(async move {
                        reject(stream).await;
                        drop(permit);
                    });
                }
                metrics::get().connection_refused("tcp", Closed::ServerFull);
                tracing::debug!(%peer, reason = %Closed::ServerFull, "connection closed");
            }
        }
    }
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(GRACE * 2, slots.acquire_many(all)).await;
}

/// Socket options of every accepted client connection, whatever the listener.
pub fn tune(stream: &TcpStream) {
    // Pushes are coalesced by the writer; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Tells a client over the connection limit why it is turned away.
async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(GRACE, async {
        stream.write_all(&Reply::Error(Error::ServerFull).line()).await?;
        stream.shutdown().await
    })
    .await;
}
