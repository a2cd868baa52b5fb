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
    let anonymous = config.auth.anonymous();
    connection::serve(socket, decoder, anonymous, id, broker, config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Embedded;
    use crate::transport::socket::Tcp;

    /// Every idle connection is one such future: what it holds is paid ten
    /// thousand times. A TLS session or a timer slipping into it (both
    /// happened) shows here first.
    #[tokio::test]
    async fn an_idle_connection_costs_under_a_kilobyte_of_task() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let broker = Arc::new(Embedded::new(10, Config::default().history));
        let config = Arc::new(Config::default());
        let future = serve(Tcp(stream), 1, broker, config, CancellationToken::new());
        let size = std::mem::size_of_val(&future);
        assert!(size < 1024, "the connection's future is {size} bytes");
    }
}
