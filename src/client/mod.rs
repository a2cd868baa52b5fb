//! The command-line clients: `crier client` (interactive), `crier sub` and
//! `crier pub` (for scripts). They share the connection and the reader of what
//! the server sends.

pub mod interactive;
pub mod publish;
pub mod subscribe;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::protocol::push;

/// Default server address of the clients, the server's default listen address.
pub const DEFAULT_ADDR: &str = crate::config::DEFAULT_LISTEN;

/// Connects with a clear error.
pub async fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to crier at {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One thing the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A reply, or a version 1 push: one line without its CRLF.
    Line(Bytes),
    /// A version 2 push; `pattern` is set for a delivery through a pattern.
    Message { pattern: Option<Bytes>, channel: Bytes, payload: Bytes },
}

/// Reads [`Frame`]s, telling pushes from replies with [`push::parse`].
pub struct FrameReader {
    reader: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(reader: OwnedReadHalf) -> FrameReader {
        FrameReader { reader, buf: BytesMut::with_capacity(8192) }
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = push::parse(&self.buf).context("reading from crier")? {
                let bytes = self.buf.split_to(used).freeze();
                return Ok(Some(match frame {
                    push::Frame::Line(line) => Frame::Line(bytes.slice(line)),
                    push::Frame::Push { pattern, channel, payload } => Frame::Message {
                        pattern: pattern.map(|pattern| bytes.slice(pattern)),
                        channel: bytes.slice(channel),
                        payload: bytes.slice(payload),
                    },
                }));
            }
            if !self.fill().await? {
                // A complete line left unparsed is a push header whose payload
                // never came; an unfinished last line is dropped.
                if self.buf.contains(&b'\n') {
                    anyhow::bail!("connection closed in the middle of a message");
                }
                return Ok(None);
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<bool> {
        self.buf.reserve(8192);
        let read = self.reader.read_buf(&mut self.buf).await.context("reading from crier")?;
        Ok(read > 0)
    }
}
