//! The client side of version 2 and 3 pushes: telling `MESSAGE <channel>
//! [<id>] <n>` CRLF, n bytes, CRLF (and `PMESSAGE <pattern> <channel> [<id>]
//! <n>` ...) apart from reply lines in what a server sends.
//!
//! Everything that reads crier's output (the command-line clients, the load
//! generator and the black-box tests) parses it here, so that they cannot
//! disagree on what a push is. The parser is incremental and does no I/O:
//! each caller keeps its own buffer and reads the way it must (the bench
//! handles hundreds of frames per 64 KiB read without copying, the tests read
//! from a blocking socket).

use std::fmt;
use std::ops::Range;

/// One frame at the start of a buffer.
///
/// Its parts are byte ranges of that buffer rather than slices so that a
/// reader holding a `BytesMut` can split the frame off and keep the parts as
/// `Bytes` without a copy, while one reading into a plain buffer indexes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A reply, or a version 1 push: one line without its LF or CRLF.
    Line(Range<usize>),
    /// A version 2 or 3 push; `pattern` is set for a delivery through a
    /// pattern, `id` in version 3.
    Push {
        pattern: Option<Range<usize>>,
        channel: Range<usize>,
        id: Option<Range<usize>>,
        payload: Range<usize>,
    },
}

/// A push whose payload is not followed by CRLF: the header's length is wrong,
/// and nothing after it can be trusted to start a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedPush {
    /// The payload length the header announced.
    pub len: usize,
}

impl fmt::Display for MalformedPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a pushed payload of {} bytes is not followed by CRLF", self.len)
    }
}

impl std::error::Error for MalformedPush {}

/// Parses the frame at the start of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the frame and how many bytes of `buf` it took.
///
/// A line of the exact shape `MESSAGE <channel> [<id>] <n>` or
/// `PMESSAGE <pattern> <channel> [<id>] <n>` (single spaces, `n` in decimal
/// digits) starts a push; any other line is a [`Frame::Line`], so that a version 1
/// payload which merely begins with `MESSAGE` stays a line. Lines end with LF,
/// and a CR before it is not part of the line.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, MalformedPush> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
    let Some((pattern, channel, id, len)) = header(&buf[..end]) else {
        return Ok(Some((Frame::Line(0..end), lf + 1)));
    };
    let start = lf + 1;
    let rest = &buf[start..];
    if rest.len() < len || rest.len() - len < 2 {
        return Ok(None);
    }
    if &rest[len..len + 2] != b"\r\n" {
        return Err(MalformedPush { len });
    }
    let payload = start..start + len;
    Ok(Some((Frame::Push { pattern, channel, id, payload }, start + len + 2)))
}

/// The pattern, channel, id and payload length of a push header line, or
/// `None` when `line` is not one. Each reader of crier's output runs this once per
/// message (the load generator millions of times a second), so it finds the
/// words with `memchr` rather than splitting the line.
type Header = (Option<Range<usize>>, Range<usize>, Option<Range<usize>>, usize);

fn header(line: &[u8]) -> Option<Header> {
    let (pattern, from) = if line.starts_with(b"MESSAGE ") {
        (None, b"MESSAGE ".len())
    } else if line.starts_with(b"PMESSAGE ") {
        let at = b"PMESSAGE ".len();
        let end = at + memchr::memchr(b' ', &line[at..])?;
        (Some(at..end), end + 1)
    } else {
        return None;
    };
    let last = memchr::memrchr(b' ', line)?;
    if last < from {
        return None;
    }
    // The channel, then in version 3 the id: one more word.
    let (channel, id) = match memchr::memchr(b' ', &line[from..last]) {
        None => (from..last, None),
        Some(at) => (from..from + at, Some(from + at + 1..last)),
    };
    // Single spaces, no empty word: exactly the shape the server sends.
    let empty = |range: &Range<usize>| range.is_empty();
    if empty(&channel) || pattern.as_ref().is_some_and(empty) || id.as_ref().is_some_and(empty) {
        return None;
    }
    if id.as_ref().is_some_and(|id| memchr::memchr(b' ', &line[id.clone()]).is_some()) {
        return None;
    }
    Some((pattern, channel, id, decimal(&line[last + 1..])?))
}

/// A length in decimal digits; `None` on anything else, or on overflow.
fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with its parts resolved, to compare.
    #[derive(Debug, PartialEq)]
    enum Got<'a> {
        Line(&'a [u8]),
        Push(Option<&'a [u8]>, &'a [u8], &'a [u8]),
    }

    /// The frames at the start of `buf`, and the bytes left over.
    fn frames(mut buf: &[u8]) -> (Vec<Got<'_>>, &[u8]) {
        let mut out = Vec::new();
        while let Some((frame, used)) = parse(buf).expect("well-formed") {
            out.push(match frame {
                Frame::Line(line) => Got::Line(&buf[line]),
                Frame::Push { pattern, channel, payload, .. } => {
                    Got::Push(pattern.map(|p| &buf[p]), &buf[channel], &buf[payload])
                }
            });
            buf = &buf[used..];
        }
        (out, buf)
    }

    #[test]
    fn pushes_between_replies() {
        let buf = b"CONFIRMED\r\nMESSAGE news 5\r\nab\r\nc\r\n\
                    PMESSAGE n* news 0\r\n\r\nERR slow consumer\r\nMESSAGE x 3\r\nab";
        let (got, rest) = frames(buf);
        assert_eq!(
            got,
            [
                Got::Line(b"CONFIRMED"),
                Got::Push(None, b"news", b"ab\r\nc"),
                Got::Push(Some(b"n*"), b"news", b""),
                Got::Line(b"ERR slow consumer"),
            ]
        );
        assert_eq!(rest, b"MESSAGE x 3\r\nab");
    }

    #[test]
    fn needs_the_whole_push() {
        let push = b"PMESSAGE a.* a.b 4\r\n\n\r\nx\r\n";
        for cut in 0..push.len() {
            assert_eq!(parse(&push[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(frames(push), (vec![Got::Push(Some(b"a.*"), b"a.b", b"\n\r\nx")], &b""[..]));
    }

    #[test]
    fn lines_of_another_shape_are_lines() {
        for line in [
            &b"MESSAGE to you"[..],
            b"MESSAGE a b c 5",
            b"MESSAGE x +5",
            b"MESSAGE x 5 ",
            b"MESSAGE  5 x",
            b"PMESSAGE p x y 5 6",
            b"message x 5",
            b"MESSAGE x 99999999999999999999999",
            b"",
        ] {
            let mut buf = line.to_vec();
            buf.extend_from_slice(b"\r\n");
            assert_eq!(parse(&buf), Ok(Some((Frame::Line(0..line.len()), buf.len()))));
        }
    }

    #[test]
    fn version_3_pushes_carry_an_id() {
        let buf = b"MESSAGE c e1:7 2\r\nhi\r\nPMESSAGE c* c - 0\r\n\r\n";
        let (frame, used) = parse(buf).expect("well-formed").expect("a push");
        assert_eq!(
            frame,
            Frame::Push { pattern: None, channel: 8..9, id: Some(10..14), payload: 18..20 }
        );
        let (frame, _) = parse(&buf[used..]).expect("well-formed").expect("a push");
        let Frame::Push { pattern, id, .. } = frame else { panic!("a push") };
        assert_eq!((pattern, id), (Some(9..11), Some(14..15)));
    }

    #[test]
    fn line_ends() {
        assert_eq!(parse(b"PONG\nx"), Ok(Some((Frame::Line(0..4), 5))));
        assert_eq!(parse(b"PO\rNG\r\n"), Ok(Some((Frame::Line(0..5), 7))));
        assert_eq!(frames(b"MESSAGE c 1\nx\r\n").0, [Got::Push(None, b"c", b"x")]);
    }

    #[test]
    fn a_payload_must_end_with_crlf() {
        assert_eq!(parse(b"MESSAGE x 3\r\nabcXY"), Err(MalformedPush { len: 3 }));
        assert_eq!(parse(b"MESSAGE x 1\r\nab\n"), Err(MalformedPush { len: 1 }));
    }
}
