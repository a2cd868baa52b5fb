//! RESP3, as much of it as crier speaks to Redis: commands out, replies and
//! pushes in.
//!
//! The subscription connection carries every message the node receives, so
//! its reader parses pushes in place: [`parse`] borrows the channel and the
//! payload from the socket buffer, the registry encodes them into frames,
//! and the buffer is advanced past them. Nothing is allocated per message.

use bytes::{BufMut, Bytes, BytesMut};

/// Deepest nesting accepted in a reply (XRANGE's is 3): a bound on
/// recursion, whatever a broken or hostile peer sends.
const MAX_DEPTH: usize = 8;
/// Longest aggregate accepted, in elements.
const MAX_ELEMENTS: usize = 1 << 24;
/// Longest string accepted: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: usize = 512 << 20;

/// One frame from Redis, borrowing from the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `+`, and the text of verbatim strings.
    Simple(&'a [u8]),
    /// `-` and `!`: an error reply.
    Error(&'a [u8]),
    Integer(i64),
    /// `$`.
    Bulk(&'a [u8]),
    /// `_`, and RESP2's null bulk and null array.
    Null,
    /// `*`, `~` (sets), and `%` (maps, as keys and values in turn).
    Array(Vec<Value<'a>>),
    /// `>`: out-of-band data (a Pub/Sub message or acknowledgement).
    Push(Vec<Value<'a>>),
    /// `#`, `,`, `(`: read and passed over.
    Other,
}

/// Bytes that are not RESP: the connection cannot be trusted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed reply from redis")
    }
}

impl std::error::Error for Malformed {}

/// Parses one frame from the front of `buf`: the frame and its length, or
/// `None` when `buf` does not hold all of it yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, Malformed> {
    let mut at = 0;
    match value(buf, &mut at, 0)? {
        Some(value) => Ok(Some((value, at))),
        None => Ok(None),
    }
}

fn value<'a>(buf: &'a [u8], at: &mut usize, depth: usize) -> Result<Option<Value<'a>>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some(&kind) = buf.get(*at) else { return Ok(None) };
    let Some(line) = line(buf, *at + 1) else { return Ok(None) };
    let text = &buf[*at + 1..line];
    *at = line + 2;
    Ok(Some(match kind {
        b'+' => Value::Simple(text),
        b'-' => Value::Error(text),
        b':' => Value::Integer(integer(text)?),
        b'_' => Value::Null,
        b'#' | b',' | b'(' => Value::Other,
        b'$' | b'!' | b'=' => {
            let len = integer(text)?;
            if len < 0 {
                return Ok(Some(Value::Null));
            }
            let len = usize::try_from(len).map_err(|_| Malformed)?;
            if len > MAX_BULK {
                return Err(Malformed);
            }
            let end = *at + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Malformed);
            }
            let data = &buf[*at..end];
            *at = end + 2;
            match kind {
                b'$' => Value::Bulk(data),
                b'!' => Value::Error(data),
                // Verbatim: a three-letter format and a colon, then the text.
                _ => Value::Simple(data.get(4..).ok_or(Malformed)?),
            }
        }
        b'*' | b'~' | b'%' | b'>' => {
            let count = integer(text)?;
            if count < 0 {
                return Ok(Some(Value::Null));
            }
            let count = usize::try_from(count).map_err(|_| Malformed)?;
            let count = if kind == b'%' { count.checked_mul(2).ok_or(Malformed)? } else { count };
            if count > MAX_ELEMENTS {
                return Err(Malformed);
            }
            // Not preallocated from a count the peer chose: grown as parsed.
            let mut items = Vec::with_capacity(count.min(16));
            for _ in 0..count {
                match value(buf, at, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            if kind == b'>' { Value::Push(items) } else { Value::Array(items) }
        }
        _ => return Err(Malformed),
    }))
}

/// The index of the CR of the CRLF that ends the line starting at `from`.
fn line(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let cr = memchr::memchr(b'\r', rest)?;
    (rest.len() > cr + 1).then_some(from + cr)
}

fn integer(text: &[u8]) -> Result<i64, Malformed> {
    let (negative, digits) = match text {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        // 18 digits cannot overflow an i64; longer is no length we accept.
        return Err(Malformed);
    }
    let mut value = 0i64;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(Malformed);
        }
        value = value * 10 + i64::from(digit - b'0');
    }
    Ok(if negative { -value } else { value })
}

/// A Pub/Sub message push (`message`, `smessage` or `pmessage`), borrowed
/// from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub pattern: Option<&'a [u8]>,
    pub channel: &'a [u8],
    pub payload: &'a [u8],
}

/// The message push at the front of `buf` and its length, parsed without
/// allocating: most of what a subscription connection carries. `None` for
/// anything else, or a message not complete yet: [`parse`] then says which.
pub fn message(buf: &[u8]) -> Option<(Message<'_>, usize)> {
    const MESSAGE: &[u8] = b">3\r\n$7\r\nmessage\r\n";
    const SMESSAGE: &[u8] = b">3\r\n$8\r\nsmessage\r\n";
    const PMESSAGE: &[u8] = b">4\r\n$8\r\npmessage\r\n";
    let (mut at, pattern) = if buf.starts_with(MESSAGE) {
        (MESSAGE.len(), false)
    } else if buf.starts_with(SMESSAGE) {
        (SMESSAGE.len(), false)
    } else if buf.starts_with(PMESSAGE) {
        (PMESSAGE.len(), true)
    } else {
        return None;
    };
    let pattern = if pattern { Some(bulk(buf, &mut at)?) } else { None };
    let channel = bulk(buf, &mut at)?;
    let payload = bulk(buf, &mut at)?;
    Some((Message { pattern, channel, payload }, at))
}

/// The bulk string at `at`, which moves past it.
fn bulk<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    if buf.get(*at) != Some(&b'$') {
        return None;
    }
    let cr = line(buf, *at + 1)?;
    let len = usize::try_from(integer(&buf[*at + 1..cr]).ok()?).ok()?;
    let start = cr + 2;
    let end = start.checked_add(len).filter(|_| len <= MAX_BULK)?;
    if buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    *at = end + 2;
    Some(&buf[start..end])
}

impl<'a> Value<'a> {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bulk(bytes) | Value::Simple(bytes) => Some(bytes),
            _ => None,
        }
    }

    pub fn integer(&self) -> Option<i64> {
        match *self {
            Value::Integer(n) => Some(n),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Appends a command, its arguments as bulk strings, to `out`.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(b'*');
    out.put_slice(digits.format(args.len()).as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.put_slice(digits.format(arg.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// One command encoded on its own.
pub fn encode(args: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    command(&mut out, args);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_push_borrows_its_channel_and_payload() {
        let wire = b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n+OK\r\n";
        let (value, len) = parse(wire).unwrap().unwrap();
        assert_eq!(
            value,
            Value::Push(vec![Value::Bulk(b"message"), Value::Bulk(b"news"), Value::Bulk(b"hello")])
        );
        assert_eq!(&wire[len..], b"+OK\r\n");
    }

    #[test]
    fn message_pushes_are_read_without_the_generic_parser() {
        let wire = b">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n:1\r\n";
        let (message, len) = message(wire).expect("a pmessage");
        let expected = Message { pattern: Some(b"n*"), channel: b"news", payload: b"hi" };
        assert_eq!(message, expected);
        assert_eq!(&wire[len..], b":1\r\n");
        for end in 0..len {
            assert_eq!(super::message(&wire[..end]), None, "prefix of {end} bytes");
        }
        assert_eq!(super::message(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"), None);
        let bad = b">3\r\n$7\r\nmessage\r\n$-1\r\n$2\r\nhi\r\n";
        assert_eq!(super::message(bad), None, "left to the generic parser");
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_not_malformed() {
        let wire = b"*2\r\n%1\r\n+a\r\n:7\r\n$-1\r\n";
        for end in 0..wire.len() {
            assert_eq!(parse(&wire[..end]), Ok(None), "prefix of {end} bytes");
        }
        let (value, len) = parse(wire).unwrap().unwrap();
        assert_eq!(len, wire.len());
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Array(vec![Value::Simple(b"a"), Value::Integer(7)]),
                Value::Null
            ])
        );
    }

    #[test]
    fn garbage_and_absurd_sizes_are_malformed() {
        assert_eq!(parse(b"?what\r\n"), Err(Malformed));
        assert_eq!(parse(b"$3\r\nabcd\r\n"), Err(Malformed));
        assert_eq!(parse(b"*99999999999\r\n"), Err(Malformed));
        assert_eq!(parse(b":12x\r\n"), Err(Malformed));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(parse(deep.as_bytes()), Err(Malformed));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            &encode(&[b"PUBLISH", b"c", b"a b"])[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\na b\r\n"
        );
    }
}
