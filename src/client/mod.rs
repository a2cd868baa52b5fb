//! The command-line clients: `crier client` (interactive), `crier sub` and
//! `crier pub` (for scripts). They share the connection and the reader of what
//! the server sends.

pub mod interactive;
pub mod publish;
pub mod subscribe;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

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

/// Reads [`Frame`]s. A line of the exact shape `MESSAGE <channel> <n>` or
/// `PMESSAGE <pattern> <channel> <n>` starts a version 2 push; any other
/// line is a reply or a version 1 payload.
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
        let Some(line) = self.line().await? else {
            return Ok(None);
        };
        let Some((pattern, channel, len)) = push_header(&line) else {
            return Ok(Some(Frame::Line(line)));
        };
        while self.buf.len() < len + 2 {
            if !self.fill().await? {
                anyhow::bail!("connection closed in the middle of a message");
            }
        }
        let payload = self.buf.split_to(len).freeze();
        self.buf.advance(2);
        Ok(Some(Frame::Message { pattern, channel, payload }))
    }

    async fn line(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(lf + 1);
                line.truncate(lf);
                if line.last() == Some(&b'\r') {
                    line.truncate(lf - 1);
                }
                return Ok(Some(line.freeze()));
            }
            if !self.fill().await? {
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

fn push_header(line: &Bytes) -> Option<(Option<Bytes>, Bytes, usize)> {
    let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let (pattern, channel, len) = match words[..] {
        [b"MESSAGE", channel, len] => (None, channel, len),
        [b"PMESSAGE", pattern, channel, len] => (Some(line.slice_ref(pattern)), channel, len),
        _ => return None,
    };
    let len = std::str::from_utf8(len).ok()?.parse().ok()?;
    Some((pattern, line.slice_ref(channel), len))
}
