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

/// Takes the next complete line out of `buf`, without its LF or CRLF.
///
/// Returns `Ok(None)` when `buf` holds no complete line yet, and an error once
/// the line under construction is known to exceed `max_line` bytes, so that a
/// client cannot make the server buffer an endless line.
pub fn next_line(buf: &mut BytesMut, max_line: usize) -> Result<Option<BytesMut>, FrameError> {
    // A CR just before the LF is not part of the line, hence the extra byte.
    let window = buf.len().min(max_line.saturating_add(2));
    match buf[..window].iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf);
            if line.last() == Some(&b'\r') {
                line.truncate(lf - 1);
            }
            if line.len() > max_line {
                return Err(FrameError::LineTooLong);
            }
            Ok(Some(line))
        }
        None if buf.len() > max_line + 1 => Err(FrameError::LineTooLong),
        None => Ok(None),
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

    fn lines(input: &[u8], max: usize) -> Vec<Result<Option<BytesMut>, FrameError>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            let next = next_line(&mut buf, max);
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

    #[test]
    fn encodes_pushes() {
        assert_eq!(&push_v1(b"hi there")[..], b"hi there\r\n");
        assert_eq!(&push_message(b"ch", b"a\r\nb")[..], b"MESSAGE ch 4\r\na\r\nb\r\n");
        assert_eq!(&push_pmessage(b"c*", b"ch", b"")[..], b"PMESSAGE c* ch 0\r\n\r\n");
        assert_eq!(&push_message(b"x", &[7; 1234])[..16], b"MESSAGE x 1234\r\n");
    }
}
