//! Framing: splitting the inbound byte stream into command lines, and encoding
//! the outbound pushes.
//!
//! A push is encoded once per message and per form, then the same `Bytes` is
//! queued to every subscriber that wants that form: see `broker::registry`.

use bytes::{BufMut, Bytes, BytesMut};

/// The inbound stream broke the framing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A line longer than the limit; the connection cannot be resynchronised.
    LineTooLong,
}

/// Smallest and largest read: a read that fills its buffer doubles the next
/// one (a client pipelining commands is read in large bursts, whose
/// deliveries go out in one write per subscriber); one that does not goes
/// back to the smallest.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;

/// Splits the inbound byte stream into command lines. It holds what the
/// client actually sent: nothing when idle, about the bytes of a partial line
/// otherwise (at most [`MIN_READ`] more), and it scans each byte for LF once,
/// however small the pieces a long line arrives in.
#[derive(Debug)]
pub struct LineReader {
    buf: BytesMut,
    /// Bytes at the start of `buf` known to hold no LF.
    scanned: usize,
    /// What the next read asks for.
    read_size: usize,
    max_line: usize,
}

impl LineReader {
    pub fn new(max_line: usize) -> LineReader {
        LineReader { buf: BytesMut::new(), scanned: 0, read_size: MIN_READ, max_line }
    }

    /// Reads once with `read`, which appends to the buffer it is given (for
    /// a socket: `try_read_buf`); returns what `read` returned.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut BytesMut) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let read = read(&mut self.buf)?;
        self.read_size = if read >= room { (self.read_size * 2).min(MAX_READ) } else { MIN_READ };
        Ok(read)
    }

    /// Takes the next complete line, without its LF or CRLF.
    ///
    /// `Ok(None)` when no complete line is buffered (then the buffer is given
    /// back, or shrunk to the partial line, unless reads are filling it); an
    /// error once the line under construction is known to exceed `max_line`
    /// bytes, so that a client cannot make the server buffer an endless line.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, FrameError> {
        debug_assert!(self.scanned <= self.buf.len());
        // A CR just before the LF is not part of the line, hence the extra byte.
        let window = self.buf.len().min(self.max_line.saturating_add(2));
        let found = memchr::memchr(b'\n', &self.buf[self.scanned.min(window)..window]);
        let Some(at) = found else {
            if self.buf.len() > self.max_line.saturating_add(1) {
                return Err(FrameError::LineTooLong);
            }
            self.scanned = self.buf.len();
            self.shrink();
            return Ok(None);
        };
        let lf = self.scanned + at;
        self.scanned = 0;
        let mut line = self.buf.split_to(lf + 1);
        line.truncate(lf);
        if line.last() == Some(&b'\r') {
            line.truncate(lf - 1);
        }
        if line.len() > self.max_line {
            return Err(FrameError::LineTooLong);
        }
        Ok(Some(line.freeze()))
    }

    /// Gives memory back between reads: all of it when nothing is buffered,
    /// all but the partial line when reads have slowed down.
    fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        } else if self.read_size == MIN_READ && self.buf.capacity() > self.buf.len() + MIN_READ {
            self.buf = BytesMut::from(&self.buf[..]);
        }
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

/// A version 2 push: `MESSAGE <channel> <n>` CRLF, n bytes, CRLF.
pub fn push_message(channel: &[u8], payload: &[u8]) -> Bytes {
    push_v2(None, channel, payload)
}

/// A version 2 push through a pattern: `PMESSAGE <pattern> <channel> <n>` CRLF, n bytes, CRLF.
pub fn push_pmessage(pattern: &[u8], channel: &[u8], payload: &[u8]) -> Bytes {
    push_v2(Some(pattern), channel, payload)
}

fn push_v2(pattern: Option<&[u8]>, channel: &[u8], payload: &[u8]) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let len = digits.format(payload.len());
    let head = pattern.map_or(b"MESSAGE ".len(), |p| b"PMESSAGE ".len() + p.len() + 1);
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
    out.put_slice(len.as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(payload);
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Option<Bytes>, FrameError>> {
        let mut reader = LineReader::new(max);
        reader
            .read_with(|buf| {
                buf.extend_from_slice(input);
                Ok(input.len())
            })
            .expect("in memory");
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
            let (piece, after) = rest.split_at(size.clamp(1, rest.len()));
            rest = after;
            reader
                .read_with(|buf| {
                    buf.extend_from_slice(piece);
                    Ok(piece.len())
                })
                .expect("in memory");
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
        // After a burst read in one piece, a trailing partial line keeps only
        // about its own bytes once the client slows down.
        let mut reader = LineReader::new(64 * 1024);
        let burst = [b"PING\r\n".repeat(40_000), b"PUB".to_vec()].concat();
        assert_eq!(in_pieces(&burst, &[usize::MAX], &mut reader).len(), 40_000);
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
        assert_eq!(&push_message(b"ch", b"a\r\nb")[..], b"MESSAGE ch 4\r\na\r\nb\r\n");
        assert_eq!(&push_pmessage(b"c*", b"ch", b"")[..], b"PMESSAGE c* ch 0\r\n\r\n");
        assert_eq!(&push_message(b"x", &[7; 1234])[..16], b"MESSAGE x 1234\r\n");
    }
}
