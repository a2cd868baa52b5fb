//! Why a connection ended: one value per connection, logged once with the
//! peer's address, and ready to become a metric label.

use std::fmt;
use std::sync::OnceLock;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client sent `QUIT`.
    ClientQuit,
    /// The client closed its side (or reset the connection).
    ClientClosed,
    /// Over `--max-pending`: `ERR slow consumer`.
    SlowConsumer,
    /// Over `--max-line`: `ERR line too long`.
    LineTooLong,
    /// WebSocket frames that break RFC 6455.
    ProtocolError,
    /// The token's `exp` passed without a fresh `AUTH`: `ERR token expired`.
    TokenExpired,
    /// The TLS handshake failed (plain text on a TLS port, a bad client hello).
    TlsError,
    /// Over `--max-connections`: `ERR server full`.
    ServerFull,
    /// The server is shutting down.
    Shutdown,
    /// Reading from the client failed.
    ReadError,
    /// Writing to the client failed (or did not finish within the grace period).
    WriteError,
}

impl Closed {
    /// The reason as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::ClientQuit => "client_quit",
            Closed::ClientClosed => "client_closed",
            Closed::SlowConsumer => "slow_consumer",
            Closed::LineTooLong => "line_too_long",
            Closed::ProtocolError => "protocol_error",
            Closed::TokenExpired => "token_expired",
            Closed::TlsError => "tls_error",
            Closed::ServerFull => "server_full",
            Closed::Shutdown => "shutdown",
            Closed::ReadError => "read_error",
            Closed::WriteError => "write_error",
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first reason recorded wins: the writer cutting off a slow consumer
/// also stops the reader, which must not overwrite the cause.
#[derive(Debug, Default)]
pub struct Cause(OnceLock<Closed>);

impl Cause {
    pub fn set(&self, closed: Closed) {
        let _ = self.0.set(closed);
    }

    /// The recorded reason; `fallback` if none was.
    pub fn get_or(&self, fallback: Closed) -> Closed {
        self.0.get().copied().unwrap_or(fallback)
    }
}
