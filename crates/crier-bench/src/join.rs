//! Joining framed data in place: the payloads of WebSocket frames or of
//! HTTP chunks, read into one buffer, are moved down over the framing so
//! that `buf[..stream_len()]` is the byte stream they carry and the rest is
//! the start of a frame whose header is not complete yet. No copy to another
//! buffer, no allocation: the load generator's CPU is part of the figures.

use anyhow::Result;
use bytes::BytesMut;

/// What a framing parser found at the unread bytes.
pub enum Step {
    /// A header of `len` bytes, then `data` payload bytes that join the stream.
    Data { len: usize, data: usize },
    /// `len` bytes that are not stream data (a control frame, the last chunk).
    Skip(usize),
    /// The header is not complete yet: wait for more bytes.
    Incomplete,
    /// Stop, with this outcome, once what came before is joined.
    Stop(Result<()>),
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Joiner {
    stream_len: usize,
    /// Payload bytes of the current frame not yet in the buffer.
    remaining: usize,
}

impl Joiner {
    /// Stream bytes at the front of the buffer.
    pub fn stream_len(&self) -> usize {
        self.stream_len
    }

    /// Joins what `buf` holds after the stream bytes, asking `step` about the
    /// unread bytes at each frame boundary.
    pub fn join(&mut self, buf: &mut BytesMut, mut step: impl FnMut(&[u8]) -> Step) -> Result<()> {
        let end = buf.len();
        let (mut r, mut w) = (self.stream_len, self.stream_len);
        let result = loop {
            if self.remaining > 0 {
                let n = self.remaining.min(end - r);
                if n == 0 {
                    break Ok(());
                }
                if r != w {
                    buf.copy_within(r..r + n, w);
                }
                r += n;
                w += n;
                self.remaining -= n;
                continue;
            }
            match step(&buf[r..end]) {
                Step::Data { len, data } => {
                    r += len;
                    self.remaining = data;
                }
                Step::Skip(len) => r += len,
                Step::Incomplete => break Ok(()),
                Step::Stop(result) => break result,
            }
        };
        // The unfinished header (if any) follows the stream at once.
        if r != w {
            buf.copy_within(r..end, w);
            buf.truncate(w + (end - r));
        }
        self.stream_len = w;
        result
    }

    /// All of `buf` is stream data (a body that is not framed).
    pub fn take_all(&mut self, buf: &BytesMut) {
        self.stream_len = buf.len();
    }

    /// The first `n` stream bytes were used: drops them.
    pub fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        bytes::Buf::advance(buf, n);
        self.stream_len -= n;
    }
}
