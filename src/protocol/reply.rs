//! Every reply and every error the server sends, in one place. The tables of
//! `docs/protocol.md` mirror these two enums: a new reply is added here first.
//!
//! The session produces typed [`Reply`]s; each transport frames them (line
//! TCP: the text, then CRLF). No reply text is spelled anywhere else.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// A reply to one command (or, for [`Error`]s the server raises on its own,
/// the last line before it closes the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `CONFIRMED`: the seed's answer to a successful command.
    Confirmed,
    /// `CONFIRMED <id>`: a `SUBSCRIBE` in version 3, with the channel's
    /// position (`-` without history).
    ConfirmedAt(Bytes),
    /// `RECOVERED <k>`: the k messages missed follow.
    Recovered(usize),
    /// `NOT RECOVERED <id>`: the gap cannot be filled; the channel's position.
    NotRecovered(Bytes),
    /// `ALREADY SUBSCRIBED` (seed).
    AlreadySubscribed,
    /// `ALREADY UNSUBSCRIBED` (seed).
    AlreadyUnsubscribed,
    /// `UNKNOWN COMMAND` (seed): anything that is not a command, the empty line included.
    UnknownCommand,
    /// `PONG` or `PONG <text>`.
    Pong(Bytes),
    /// `BYE`: the answer to `QUIT`; the server closes after it.
    Bye,
    /// `ERR <reason>`.
    Error(Error),
}

/// The reasons of `ERR <reason>` lines: lower case, one line, no CR or LF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Too few or too many arguments for the named command.
    Arity(&'static str),
    /// A channel name or pattern that breaks the naming rules.
    InvalidChannel,
    /// `HELLO` with a version the server does not speak.
    UnsupportedVersion,
    /// The connection holds `--max-subscriptions` channels and patterns.
    TooManySubscriptions,
    /// The server holds `--max-channels` channels and patterns in all.
    TooManyChannels,
    /// The connection may not do this (its token's or the anonymous permissions).
    Forbidden,
    /// The backend (Redis) cannot be reached right now.
    BackendUnavailable,
    /// `PSUBSCRIBE` (or `SSE ?pattern=`) with `--redis-cluster`: sharded
    /// Pub/Sub has no patterns.
    PatternsUnsupported,
    /// A command line over `--max-line`; the connection is closed.
    LineTooLong,
    /// More than `--max-pending` bytes of output queued; the connection is closed.
    SlowConsumer,
    /// Over `--max-connections`; the connection is closed.
    ServerFull,
    /// A request body over `--max-payload` (`POST /publish`).
    PayloadTooLarge,
    /// An HTTP query parameter the endpoint does not know, or a malformed one.
    InvalidParameter,
    /// The connection is ending (cut off, or the server shutting down).
    Closing,
    /// `RESUME` with an id that is neither `-` nor `<epoch>:<offset>`.
    InvalidId,
    /// `GET /history` of a channel that keeps none.
    NoHistory,
    /// `AUTH` with a token that does not verify; HTTP 401.
    InvalidToken,
    /// The token presented with `AUTH` expired; the connection is closed.
    TokenExpired,
    /// `AUTH` on a server without keys.
    AuthDisabled,
    /// HTTP: no such path.
    NotFound,
    /// HTTP: the path exists, not with this method.
    MethodNotAllowed,
    /// `GET /ws` without `Upgrade: websocket` and `Connection: upgrade`.
    WebSocketExpected,
    /// `GET /ws` with a `Sec-WebSocket-Version` other than 13.
    WebSocketVersion,
    /// `GET /ws` without `Sec-WebSocket-Key`.
    WebSocketKeyMissing,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Arity(command) => return write!(f, "wrong number of arguments for '{command}'"),
            Error::InvalidChannel => "invalid channel",
            Error::UnsupportedVersion => "unsupported protocol version",
            Error::TooManySubscriptions => "too many subscriptions",
            Error::TooManyChannels => "too many channels",
            Error::Forbidden => "forbidden",
            Error::BackendUnavailable => "backend unavailable",
            Error::PatternsUnsupported => "patterns are not supported with --redis-cluster",
            Error::LineTooLong => "line too long",
            Error::SlowConsumer => "slow consumer",
            Error::ServerFull => "server full",
            Error::PayloadTooLarge => "payload too large",
            Error::InvalidParameter => "invalid parameter",
            Error::Closing => "closing",
            Error::InvalidId => "invalid id",
            Error::NoHistory => "no history",
            Error::InvalidToken => "invalid token",
            Error::TokenExpired => "token expired",
            Error::AuthDisabled => "auth disabled",
            Error::NotFound => "not found",
            Error::MethodNotAllowed => "method not allowed",
            Error::WebSocketExpected => "websocket upgrade expected",
            Error::WebSocketVersion => "unsupported websocket version",
            Error::WebSocketKeyMissing => "websocket key missing",
        })
    }
}

impl std::error::Error for Error {}

impl From<Error> for Reply {
    fn from(error: Error) -> Reply {
        Reply::Error(error)
    }
}

impl Reply {
    /// The reply as a line-protocol frame: its text, then CRLF. The common
    /// replies are static: answering them allocates nothing.
    pub fn line(&self) -> Bytes {
        let fixed: &'static [u8] = match self {
            Reply::Confirmed => b"CONFIRMED\r\n",
            Reply::AlreadySubscribed => b"ALREADY SUBSCRIBED\r\n",
            Reply::AlreadyUnsubscribed => b"ALREADY UNSUBSCRIBED\r\n",
            Reply::UnknownCommand => b"UNKNOWN COMMAND\r\n",
            Reply::Bye => b"BYE\r\n",
            Reply::Pong(text) if text.is_empty() => b"PONG\r\n",
            Reply::Pong(text) => return join(&[b"PONG ", text, b"\r\n"]),
            Reply::ConfirmedAt(id) => return join(&[b"CONFIRMED ", id, b"\r\n"]),
            Reply::Recovered(k) => return join(&[format!("RECOVERED {k}").as_bytes(), b"\r\n"]),
            Reply::NotRecovered(id) => return join(&[b"NOT RECOVERED ", id, b"\r\n"]),
            Reply::Error(error) => return join(&[format!("ERR {error}").as_bytes(), b"\r\n"]),
        };
        Bytes::from_static(fixed)
    }
}

fn join(parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| out.put_slice(part));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_protocol_tables() {
        let cases: [(Reply, &[u8]); 9] = [
            (Reply::Confirmed, b"CONFIRMED\r\n"),
            (Reply::AlreadySubscribed, b"ALREADY SUBSCRIBED\r\n"),
            (Reply::AlreadyUnsubscribed, b"ALREADY UNSUBSCRIBED\r\n"),
            (Reply::UnknownCommand, b"UNKNOWN COMMAND\r\n"),
            (Reply::Pong(Bytes::new()), b"PONG\r\n"),
            (Reply::Pong(Bytes::from("hi there")), b"PONG hi there\r\n"),
            (Error::Arity("publish").into(), b"ERR wrong number of arguments for 'publish'\r\n"),
            (Error::SlowConsumer.into(), b"ERR slow consumer\r\n"),
            (
                Error::PatternsUnsupported.into(),
                b"ERR patterns are not supported with --redis-cluster\r\n",
            ),
        ];
        for (reply, line) in cases {
            assert_eq!(reply.line(), line);
        }
    }
}
