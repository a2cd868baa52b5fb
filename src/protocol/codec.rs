//! Framing: splitting the inbound byte stream into command lines, and encoding
//! the outbound pushes.
//!
//! A push is encoded once per message and per form, then the same `Bytes` is
//! offered to every subscriber that wants that form (see `broker::registry`);
//! an outbox copies a small one into its open block (see `outbox`).

use bytes::{BufMut, Bytes, BytesMut};

/// The inbound stream broke the framing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A line longer than the limit; the connection cannot be resynchronised.
    LineTooLong,
}

/// Largest read: the commands of one read are one burst, whose deliveries go
/// out in one write per subscriber, so a large read means fewer syscalls
/// under load.
const MAX_READ: usize = 64 * 1024;

/// Slack a buffer may keep beyond twice what it holds before it is copied
/// into a smaller one.
const SLACK: usize = 4 * 1024;

thread_local! {
    /// Where every read lands first: one buffer per thread, so that reads can
    /// be large while each connection keeps only the bytes it was sent.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// What a client sent and a decoder has not consumed yet. It holds nothing
/// when idle and about the bytes of a partial frame or line otherwise, while
/// each read can still be large (it lands in a per-thread scratch buffer).
#[derive(Debug, Default)]
pub struct ReadBuffer {
    buf: BytesMut,
    /// Size of the allocation behind `buf`: frames split off its front keep
    /// it alive, and `capacity()` does not count them.
    backing: usize,
}

impl From<Bytes> for ReadBuffer {
    fn from(bytes: Bytes) -> ReadBuffer {
        let backing = bytes.len();
        ReadBuffer { buf: BytesMut::from(bytes), backing }
    }
}

impl ReadBuffer {
    /// Reads once with `read` (for a socket: `try_read`) into the thread's
    /// scratch buffer, then keeps what arrived; returns what `read` returned.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        SCRATCH.with_borrow_mut(|scratch| {
            let read = read(scratch)?;
            let arrived = &scratch[..read.min(scratch.len())];
            if self.buf.is_empty() {
                self.buf = BytesMut::from(arrived);
                self.backing = arrived.len();
            } else {
                self.buf.extend_from_slice(arrived);
                self.backing = self.backing.max(self.buf.capacity());
            }
            Ok(read)
        })
    }

    /// The bytes not consumed yet.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the first `n` bytes.
    pub fn take(&mut self, n: usize) -> BytesMut {
        self.buf.split_to(n)
    }

    /// Gives memory back between reads: all of it when nothing is buffered;
    /// when a partial frame is left at the end of a large read, all but it.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.backing = 0;
        } else if self.backing > 2 * self.buf.len() + SLACK {
            self.buf = BytesMut::from(&self.buf[..]);
            self.backing = self.buf.len();
        }
    }

    /// Bytes of memory the buffer holds (for tests and benchmarks).
    pub fn capacity(&self) -> usize {
        self.backing.max(self.buf.capacity())
    }
}

/// Splits the inbound byte stream into command lines. It scans each byte
/// for LF once, however small the pieces a long line arrives in.
#[derive(Debug)]
pub struct LineReader {
    buf: ReadBuffer,
    /// Bytes at the start of `buf` known to hold no LF.
    scanned: usize,
    max_line: usize,
}

impl LineReader {
    pub fn new(max_line: usize) -> LineReader {
        LineReader { buf: ReadBuffer::default(), scanned: 0, max_line }
    }

    /// Reads once with `read` (see [`ReadBuffer::read_with`]).
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.buf.read_with(read)
    }

    /// Takes the next complete line, without its LF or CRLF.
    ///
    /// `Ok(None)` when no complete line is buffered (then the buffer is given
    /// back, or shrunk to the partial line, unless reads are filling it); an
    /// error once the line under construction is known to exceed `max_line`
    /// bytes, so that a client cannot make the server buffer an endless line.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, FrameError> {
        let buffered = self.buf.bytes();
        debug_assert!(self.scanned <= buffered.len());
        // A CR just before the LF is not part of the line, hence the extra byte.
        let window = buffered.len().min(self.max_line.saturating_add(2));
        let found = memchr::memchr(b'\n', &buffered[self.scanned.min(window)..window]);
        let Some(at) = found else {
            if buffered.len() > self.max_line.saturating_add(1) {
                return Err(FrameError::LineTooLong);
            }
            self.scanned = buffered.len();
            self.buf.shrink();
            return Ok(None);
        };
        let lf = self.scanned + at;
        self.scanned = 0;
        let mut line = self.buf.take(lf + 1);
        line.truncate(lf);
        if line.last() == Some(&b'\r') {
            line.truncate(lf - 1);
        }
        if line.len() > self.max_line {
            return Err(FrameError::LineTooLong);
        }
        Ok(Some(line.freeze()))
    }

    /// Bytes of memory the buffer holds (for tests and benchmarks).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A reply or any other single line: `text` CRLF.
pub fn line(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 2);
    out.put_slice(text);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// A version 1 push: the payload as published, then CRLF.
pub fn push_v1(payload: &[u8]) -> Bytes {
    line(payload)
}

/// A version 2 or 3 push: `MESSAGE <channel> [<id>] <n>` CRLF, n bytes, CRLF,
/// or through a pattern `PMESSAGE <pattern> <channel> [<id>] <n>` ...; the
/// id (version 3) is `<epoch>:<offset>`, or `-` for a channel without history.
pub fn push(pattern: Option<&[u8]>, channel: &[u8], id: Option<&[u8]>, payload: &[u8]) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let len = digits.format(payload.len());
    let head = pattern.map_or(b"MESSAGE ".len(), |p| b"PMESSAGE ".len() + p.len() + 1)
        + id.map_or(0, |id| id.len() + 1);
    let mut out =
        BytesMut::with_capacity(head + channel.len() + 1 + len.len() + 2 + payload.len() + 2);
    match pattern {
        Some(pattern) => {
            out.put_slice(b"PMESSAGE ");
            out.put_slice(pattern);
            out.put_u8(b' ');
        }
        None => out.put_slice(b"MESSAGE "),
    }
    out.put_slice(channel);
    out.put_u8(b' ');
    if let Some(id) = id {
        out.put_slice(id);
        out.put_u8(b' ');
    }
    out.put_slice(len.as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(payload);
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read of `piece` (at most `MAX_READ` bytes), as from a socket.
    fn feed(reader: &mut LineReader, piece: &[u8]) {
        let read = reader.read_with(|scratch| {
            scratch[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        });
        assert_eq!(read.expect("in memory"), piece.len());
    }

    fn lines(input: &[u8], max: usize) -> Vec<Result<Option<Bytes>, FrameError>> {
        let mut reader = LineReader::new(max);
        feed(&mut reader, input);
        let mut out = Vec::new();
        loop {
            let next = reader.next_line();
            let stop = !matches!(next, Ok(Some(_)));
            out.push(next);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn splits_crlf_and_lf() {
        let got = lines(b"PING\r\nSUBSCRIBE a\n\r\npart", 100);
        let text: Vec<_> = got.iter().map(|l| l.clone().map(|l| l.map(|l| l.to_vec()))).collect();
        assert_eq!(
            text,
            vec![
                Ok(Some(b"PING".to_vec())),
                Ok(Some(b"SUBSCRIBE a".to_vec())),
                Ok(Some(b"".to_vec())),
                Ok(None)
            ]
        );
    }

    #[test]
    fn enforces_the_line_limit() {
        assert!(matches!(lines(b"12345\r\n", 5)[0], Ok(Some(_))));
        assert_eq!(lines(b"123456\r\n", 5)[0], Err(FrameError::LineTooLong));
        assert_eq!(lines(b"1234567", 5)[0], Err(FrameError::LineTooLong));
        assert_eq!(lines(b"123456", 5)[0], Ok(None), "one byte of slack for the CR");
    }

    /// Feeds `input` to a reader in the given piece sizes; returns the lines.
    fn in_pieces(input: &[u8], pieces: &[usize], reader: &mut LineReader) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut rest = input;
        for &size in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(size.clamp(1, rest.len().min(MAX_READ)));
            rest = after;
            feed(reader, piece);
            while let Ok(Some(line)) = reader.next_line() {
                out.push(line);
            }
        }
        out
    }

    #[test]
    fn a_partial_line_costs_about_what_was_sent() {
        let mut reader = LineReader::new(64 * 1024);
        assert!(in_pieces(b"x", &[1], &mut reader).is_empty());
        assert!(reader.capacity() <= 8 * 1024, "one byte holds {} bytes", reader.capacity());
        // After a burst of large reads, a trailing partial line keeps only
        // about its own bytes.
        let mut reader = LineReader::new(64 * 1024);
        let burst = [b"PING\r\n".repeat(10_000), b"PUB".to_vec()].concat();
        assert_eq!(in_pieces(&burst, &[64 * 1024], &mut reader).len(), 10_000);
        assert!(reader.capacity() <= 8 * 1024, "after a burst: {} bytes", reader.capacity());
        assert!(in_pieces(b"L", &[1], &mut reader).is_empty());
        assert!(reader.capacity() <= 8 * 1024, "a partial line holds {} bytes", reader.capacity());
        assert_eq!(in_pieces(b"ISH a b\n", &[1], &mut reader), [Bytes::from("PUBLISH a b")]);
    }

    #[test]
    fn an_idle_reader_holds_nothing() {
        let mut reader = LineReader::new(100);
        assert_eq!(in_pieces(b"PING\r\n", &[2], &mut reader), [Bytes::from("PING")]);
        assert_eq!(reader.capacity(), 0);
    }

    #[test]
    fn encodes_pushes() {
        assert_eq!(&push_v1(b"hi there")[..], b"hi there\r\n");
        assert_eq!(&push(None, b"ch", None, b"a\r\nb")[..], b"MESSAGE ch 4\r\na\r\nb\r\n");
        assert_eq!(&push(Some(b"c*"), b"ch", None, b"")[..], b"PMESSAGE c* ch 0\r\n\r\n");
        assert_eq!(&push(None, b"x", None, &[7; 1234])[..16], b"MESSAGE x 1234\r\n");
        assert_eq!(&push(None, b"x", Some(b"e1:7"), b"hi")[..], b"MESSAGE x e1:7 2\r\nhi\r\n");
        let through = push(Some(b"x*"), b"xy", Some(b"-"), b"");
        assert_eq!(&through[..], b"PMESSAGE x* xy - 0\r\n\r\n");
    }
}
