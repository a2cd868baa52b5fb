//! Line TCP, the seed's transport: one command per line in, CRLF-ended lines
//! and pushes out, served by the shared [`connection`] over TCP or TLS.

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Decoder};
use super::socket::Socket;
use crate::broker::Broker;
use crate::config::Config;
use crate::outbox::ConnId;
use crate::protocol::codec::LineReader;
use crate::server::closed::Closed;

/// Serves one line-protocol client; returns why the connection ended.
pub async fn serve<B: Broker, S: Socket>(
    socket: S,
    id: ConnId,
    broker: Arc<B>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Closed {
    let decoder = Decoder::Line(LineReader::new(config.max_line));
    connection::serve(socket, decoder, None, id, broker, config, shutdown).await
}
