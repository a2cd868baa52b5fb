//! The HTTP listener (`--http`, default 127.0.0.1:7080): the web page,
//! WebSocket (`/ws`), Server-Sent Events (`/sse`), `POST /publish`, and the
//! operator's endpoints (`/healthz`, `/readyz`, `/metrics`). Routing is
//! axum's; each connection is served by hyper directly, so that a WebSocket
//! upgrade hands the plain TCP socket to the same connection code as the
//! line protocol (see `transport::ws`).
//!
//! Errors are one line of plain text, the `ERR <reason>` of the line
//! protocol, with the status of `docs/protocol.md` §7.

mod history;
mod monitor;
mod page;
mod publish;
pub mod query;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::auth::Permissions;
use crate::broker::Broker;
use crate::config::Config;
use crate::metrics;
use crate::protocol::reply::Error;
use crate::server::closed::Closed;
use crate::server::{GRACE, listener};
use crate::transport::{sse, ws};

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct Web<B: Broker> {
    pub broker: Arc<B>,
    pub config: Arc<Config>,
    /// Cancelled when the server is asked to stop: `/readyz` answers 503.
    pub draining: CancellationToken,
    /// Cancelled when connections are to close (after `--shutdown-delay`).
    pub closing: CancellationToken,
}

impl<B: Broker> Clone for Web<B> {
    fn clone(&self) -> Self {
        Web {
            broker: Arc::clone(&self.broker),
            config: Arc::clone(&self.config),
            draining: self.draining.clone(),
            closing: self.closing.clone(),
        }
    }
}

/// One HTTP connection, as its requests see it.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Its place under `--max-connections`: a WebSocket upgrade takes it
    /// along, since the connection lives on as the WebSocket.
    pub slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// Cancelled to drop the connection at once (an SSE slow consumer,
    /// whose stream hyper no longer polls).
    pub abort: CancellationToken,
}

/// The routes of §7.
fn router<B: Broker>(web: Web<B>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/ws", get(ws::upgrade::<B>))
        .route("/sse", get(sse::stream::<B>))
        .route("/publish", post(publish::publish::<B>))
        .route("/history", get(history::history::<B>))
        .route("/healthz", get(monitor::healthz))
        .route("/readyz", get(monitor::readyz::<B>))
        .route("/metrics", get(monitor::metrics::<B>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, Error::NotFound) })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, Error::MethodNotAllowed)
        })
        .with_state(web)
}

/// An `ERR <reason>` answer.
pub fn error(status: StatusCode, error: Error) -> Response {
    (status, format!("ERR {error}\n")).into_response()
}

/// What a web request may do: its token's permissions (`Authorization:
/// Bearer`, else `?token=`), or the anonymous ones without a token (or
/// with auth off, where a token changes nothing).
pub struct Credentials {
    pub permissions: Arc<Permissions>,
    had_token: bool,
}

impl Credentials {
    /// Checks the request's token: `Err` with the `401 ERR invalid token` to
    /// answer when it does not verify.
    pub fn check(
        config: &Config,
        headers: &axum::http::HeaderMap,
        query_token: Option<&[u8]>,
    ) -> Result<Credentials, Box<Response>> {
        let anonymous = Credentials { permissions: config.auth.anonymous(), had_token: false };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|value| {
            let value = value.as_bytes();
            let scheme = value.get(..7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then(|| &value[7..])
        });
        let Some(token) = bearer.or(query_token) else {
            return Ok(anonymous);
        };
        if !config.auth.enabled() {
            return Ok(anonymous);
        }
        match config.auth.verify(token) {
            Ok(permissions) => {
                Ok(Credentials { permissions: Arc::new(permissions), had_token: true })
            }
            Err(why) => {
                tracing::debug!(reason = %why.0, "token refused");
                Err(Box::new(error(StatusCode::UNAUTHORIZED, Error::InvalidToken)))
            }
        }
    }

    /// A refusal: `401` when the client gave no token and one could help
    /// (auth is on), `403` otherwise.
    pub fn forbidden(&self, config: &Config) -> Response {
        let status = if config.auth.enabled() && !self.had_token {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        error(status, Error::Forbidden)
    }
}

/// Serves HTTP on `listener` until `web.closing`; each connection takes a
/// slot of `slots` (shared with the line protocol's listener).
pub async fn serve<B: Broker>(listener: TcpListener, web: Web<B>, slots: Arc<Semaphore>) {
    let router = router(web.clone());
    let connections = tokio_util::task::TaskTracker::new();
    let rejecting = Arc::new(Semaphore::new(listener::MAX_REJECTING));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = web.closing.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        listener::tune(&stream);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::get().connection_refused("http", Closed::ServerFull);
            tracing::debug!(%peer, reason = %Closed::ServerFull, "http connection closed");
            // A flood over the limit must not grow a task per connection.
            if let Ok(permit) = Arc::clone(&rejecting).try_acquire_owned() {
                connections.spawn(async move {
                    reject(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        let connection = Arc::new(Connection {
            peer,
            slot: Mutex::new(Some(slot)),
            abort: CancellationToken::new(),
        });
        let (router, closing, tls) = (router.clone(), web.closing.clone(), web.config.tls.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), connection, router, closing).await,
                Some(tls) => match Box::pin(tls.accept(stream)).await {
                    Ok(stream) => {
                        let io = TokioIo::new(stream);
                        Box::pin(serve_connection(io, connection, router, closing)).await
                    }
                    Err(error) => {
                        metrics::get().connection_refused("http", Closed::TlsError);
                        tracing::debug!(%peer, %error, "https: tls handshake failed");
                    }
                },
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(GRACE * 2, connections.wait()).await;
}

async fn serve_connection<I>(
    io: I,
    connection: Arc<Connection>,
    router: Router,
    closing: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let abort = connection.abort.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Arc::clone(&connection));
        router.clone().call(request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = abort.cancelled() => return,
        _ = closing.cancelled() => served.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(GRACE, served).await;
}

/// Over `--max-connections`: `503 ERR server full`, written without hyper.
async fn reject(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = format!("ERR {}\n", Error::ServerFull);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(GRACE, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
