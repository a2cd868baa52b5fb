//! WebSocket (`GET /ws`): the commands of the line protocol as messages,
//! replies as text messages, pushes as messages (see `protocol::websocket`).
//!
//! The handshake is answered here; after it, hyper hands back the plain TCP
//! socket and the connection is served by the same [`connection`] code as
//! the line protocol, with WebSocket framing: producers write pre-encoded
//! frames straight into the socket, and an idle WebSocket costs what an idle
//! line connection does (no per-connection read or write buffer).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::connection::{self, Decoder};
use super::socket;
use crate::broker::Broker;
use crate::http::query::Names;
use crate::http::{Connection, Credentials, Web, error};
use crate::metrics::{self, Transport};
use crate::outbox;
use crate::protocol::reply::Error;
use crate::protocol::websocket::Reader;
use crate::server::closed::Closed;
use crate::sync;

/// Answers the upgrade request and serves the WebSocket in a task of its own.
pub async fn upgrade<B: Broker>(State(web): State<Web<B>>, mut request: Request) -> Response {
    let key = match handshake(request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    // Only `token` means something here; other parameters (a cache buster)
    // are ignored.
    let token = Names::token(request.uri().query());
    let permissions = match Credentials::check(&web.config, request.headers(), token.as_deref()) {
        Ok(credentials) => credentials.permissions,
        Err(refusal) => return *refusal,
    };
    let Some(connection) = request.extensions().get::<Arc<Connection>>().cloned() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let upgrading = hyper::upgrade::on(&mut request);
    let slot = sync::lock(&connection.slot).take();
    tokio::spawn(async move {
        let upgraded = match upgrading.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                return tracing::debug!(peer = %connection.peer, %error, "websocket: upgrade failed");
            }
        };
        let id = outbox::next_id();
        let (broker, config, closing) = (web.broker, web.config, web.closing);
        let max_line = config.max_line;
        let reader = move |early| Decoder::WebSocket(Reader::new(max_line, early));
        metrics::get().connection_opened(Transport::WebSocket);
        let closed = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (socket, decoder) =
                    (socket::Tcp(parts.io.into_inner()), reader(parts.read_buf));
                connection::serve(socket, decoder, permissions, id, broker, config, closing).await
            }
            Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                // Boxed, all of it: a TLS session's kilobytes must not sit
                // in every plain WebSocket's task.
                Ok(parts) => {
                    Box::pin(async move {
                        let socket = socket::Tls(Mutex::new(parts.io.into_inner()));
                        let decoder = reader(parts.read_buf);
                        connection::serve(socket, decoder, permissions, id, broker, config, closing)
                            .await
                    })
                    .await
                }
                Err(_) => {
                    tracing::warn!("websocket: the upgraded connection is neither TCP nor TLS");
                    Closed::ReadError
                }
            },
        };
        metrics::get().connection_closed(Transport::WebSocket, closed);
        drop(slot);
        tracing::debug!(peer = %connection.peer, id, reason = %closed, "websocket closed");
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Checks the client's handshake (RFC 6455 §4.2.1); returns its key, or the
/// refusal. Compression is never negotiated: frames are shared between
/// subscribers.
fn handshake(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let bad = |reason: Error| Box::new(error(StatusCode::BAD_REQUEST, reason));
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(bad(Error::WebSocketExpected));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        let mut response = error(StatusCode::UPGRADE_REQUIRED, Error::WebSocketVersion);
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(response));
    }
    headers.get(header::SEC_WEBSOCKET_KEY).cloned().ok_or_else(|| bad(Error::WebSocketKeyMissing))
}
