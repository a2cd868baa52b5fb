//! The wire protocol, without I/O: line framing (`codec`), WebSocket framing
//! (`websocket`), the JSON form of a push for web clients (`json`), the
//! parsing of a line into a [`Command`] (`command`), every reply and error
//! (`reply`), and the clients' parser of line pushes (`push`).

pub mod codec;
pub mod command;
pub mod json;
pub mod push;
pub mod reply;
pub mod websocket;

use bytes::Bytes;

pub use command::{Command, Hello};
use reply::Reply;

/// Push forms, chosen per connection with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Version {
    /// The seed's form: the payload, then CRLF.
    V1 = 1,
    /// Binary-safe: `MESSAGE <channel> <n>` CRLF, n bytes, CRLF.
    V2 = 2,
    /// Version 2 plus each message's id: `MESSAGE <channel> <id> <n>`.
    V3 = 3,
}

/// How a transport frames what a connection receives; fixed per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// CRLF-ended lines (the seed's TCP protocol).
    Line,
    /// One WebSocket message per reply and per push.
    WebSocket,
    /// Server-Sent Events: one event per push; no replies reach the client.
    EventStream,
}

/// What one connection receives a message as: its framing and its `HELLO`
/// version. A message is encoded at most once per form and shared by every
/// subscriber of that form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    pub framing: Framing,
    pub version: Version,
}

impl Form {
    /// How many forms there are: the size of a per-message cache of frames.
    pub const COUNT: usize = 6;

    pub fn new(framing: Framing) -> Form {
        Form { framing, version: Version::V1 }
    }

    /// A dense index for caching one encoding per form. Event streams always
    /// carry JSON, whatever the version; WebSocket's JSON is the same for
    /// versions 2 and 3 (it names the id whenever there is one).
    #[inline]
    pub fn index(self) -> usize {
        match (self.framing, self.version) {
            (Framing::Line, Version::V1) => 0,
            (Framing::Line, Version::V2) => 1,
            (Framing::Line, Version::V3) => 2,
            (Framing::WebSocket, Version::V1) => 3,
            (Framing::WebSocket, Version::V2 | Version::V3) => 4,
            (Framing::EventStream, _) => 5,
        }
    }

    /// Whether the form at `index` names the pattern a message was
    /// delivered through (then it differs per matching pattern): all but v1.
    pub fn names_pattern_at(index: usize) -> bool {
        !matches!(index, 0 | 3)
    }

    /// A message in this form; `id` is its position when its channel keeps
    /// history (`<epoch>:<offset>`).
    pub fn encode(
        self,
        pattern: Option<&[u8]>,
        channel: &[u8],
        payload: &[u8],
        id: Option<&[u8]>,
    ) -> Bytes {
        match (self.framing, self.version) {
            (Framing::Line, Version::V1) => codec::push_v1(payload),
            (Framing::Line, Version::V2) => codec::push(pattern, channel, None, payload),
            (Framing::Line, Version::V3) => {
                codec::push(pattern, channel, Some(id.unwrap_or(b"-")), payload)
            }
            (Framing::WebSocket, Version::V1) => websocket::data(payload),
            (Framing::WebSocket, _) => websocket::text(&json::push(pattern, channel, payload, id)),
            (Framing::EventStream, _) => {
                json::event(&json::push(pattern, channel, payload, id), id)
            }
        }
    }

    /// The signal that messages of a channel (or of a pattern, with
    /// `pattern`) may have been lost; `None` for version 1, whose pushes
    /// are bare payloads: nothing could be told apart from a message.
    pub fn gap(self, name: &[u8], pattern: bool) -> Option<Bytes> {
        match (self.framing, self.version) {
            (Framing::Line | Framing::WebSocket, Version::V1) => None,
            (Framing::Line, _) => {
                let verb: &[u8] = if pattern { b"PGAP " } else { b"GAP " };
                Some(codec::line(&[verb, name].concat()))
            }
            (Framing::WebSocket, _) => Some(websocket::text(&json::gap(name, pattern))),
            (Framing::EventStream, _) => Some(json::reset(&[name])),
        }
    }
}

impl Framing {
    /// A reply in this framing; `None` where replies do not reach the client.
    pub fn reply(self, reply: &Reply) -> Option<Bytes> {
        match self {
            Framing::Line => Some(reply.line()),
            Framing::WebSocket => {
                let line = reply.line();
                // Text, unless a `PONG` echoes bytes that are not UTF-8.
                Some(websocket::data(&line[..line.len() - 2]))
            }
            Framing::EventStream => None,
        }
    }
}
