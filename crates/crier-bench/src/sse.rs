//! The client side of Server-Sent Events over HTTP/1.1, as much as the bench
//! needs for crier's `GET /sse?channel=CH`: the request, the response head
//! (`200`, `text/event-stream`), the chunked body joined in place in the
//! read buffer ([`Dechunker`]), and the events parsed in place ([`events`]).
//!
//! crier sends the response head only once the subscription is confirmed
//! (protocol §7), so a subscriber is subscribed when the head has arrived.
//! Then each delivery is one event, `data: {"channel":"c","data":"..."}`
//! and a blank line; a comment line (`: keep-alive`) comes after 15 s of
//! silence; a slow consumer gets `event: error` / `data: ERR slow consumer`
//! and the end of the stream.
//!
//! Nothing on the per-message path allocates: chunk headers are cut out of
//! the buffer by moving the data after them down, events are found with
//! `memchr`, and the payload is a slice of the JSON string in the buffer
//! (unescaped in place when it holds escapes: the bench's payloads never do,
//! see `payload.rs`, but the parser handles `\"`, `\\`, `\uXXXX` and the rest).
//! crier's own event shape is recognised by a fast path ([`crier_event`])
//! that scans the line three times with `memchr`; anything else goes to the
//! general SSE and JSON parser, which gives the same result.

use std::ops::Range;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use tokio::net::TcpStream;

use super::http::{self, Endpoint};
use super::targets::{self, Frame};
use crate::join::{Joiner, Step};

/// An event longer than this without its blank line is taken for a broken
/// stream (crier's payloads are at most 1 MiB by default, JSON at most ~6x).
const MAX_EVENT: usize = 64 * 1024 * 1024;

/// A chunk size line (with extensions) longer than this is a broken stream.
const MAX_CHUNK_LINE: usize = 1024;

/// The request for a stream of `channel`'s messages, `channel`
/// percent-encoded into the query.
pub fn request(ep: &Endpoint<'_>, channel: &str) -> String {
    let mut target = format!("{}?channel=", ep.path);
    for &b in channel.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            target.push(char::from(b));
        } else {
            target.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n\r\n",
        ep.host
    )
}

/// How the body of the response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Transfer-Encoding: chunked` (what crier, through hyper, sends).
    Chunked,
    /// Neither chunked nor a length: the stream runs until the connection
    /// closes (HTTP/1.0 style).
    UntilClose,
}

/// Checks the response head (status line and headers, without the final
/// empty line): `200` and `text/event-stream`, a body that is a stream.
/// `after` is what followed the head, shown when the request was refused
/// (crier's `400` carries the `ERR` reason).
pub fn check_response(head: &[u8], after: &[u8]) -> Result<Body> {
    let (status, headers) = http::parse_head(head).context("SSE response")?;
    if http::status_code(status) != Some("200") {
        let body = targets::show(after.trim_ascii_end());
        if body.is_empty() {
            bail!("SSE request refused: {status:?}");
        }
        bail!("SSE request refused: {status:?}, body {body:?}");
    }
    let (mut event_stream, mut chunked, mut length) = (false, false, false);
    for header in headers {
        let (name, value) = header.context("SSE response")?;
        match name.to_ascii_lowercase().as_str() {
            "content-type" => {
                let media = value.split(';').next().unwrap_or("").trim();
                event_stream = media.eq_ignore_ascii_case("text/event-stream");
            }
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => chunked = true,
            // The bench cannot undo gzip and the like (and offers none).
            "transfer-encoding" => bail!("SSE response with Transfer-Encoding {value:?}"),
            "content-encoding" if !value.eq_ignore_ascii_case("identity") => {
                bail!("SSE response with Content-Encoding {value:?}")
            }
            "content-length" => length = true,
            _ => {}
        }
    }
    if !event_stream {
        bail!("SSE response without Content-Type: text/event-stream");
    }
    match (chunked, length) {
        (true, _) => Ok(Body::Chunked),
        (false, true) => bail!("SSE response with a Content-Length: a finite body, not a stream"),
        (false, false) => Ok(Body::UntilClose),
    }
}

/// Opens the stream on a fresh connection: returns once the response head
/// arrived (the subscription is then confirmed), with the read buffer
/// (capacity `buf_cap`) holding what followed it and the de-chunker for the
/// body. Callers bound it with a timeout.
pub async fn handshake(
    stream: &mut TcpStream,
    ep: &Endpoint<'_>,
    channel: &str,
    buf_cap: usize,
) -> Result<(BytesMut, Dechunker)> {
    let req = request(ep, channel);
    let (head, buf) = http::exchange(stream, req.as_bytes(), buf_cap, "SSE request").await?;
    let body = check_response(&head, &buf)?;
    Ok((buf, Dechunker::new(body)))
}

/// Turns a chunked body read into a buffer into the event stream it
/// carries, in place: `buf[..stream_len()]` is stream data (from any number
/// of chunks, a chunk's data possibly in part), the rest is the start of a
/// chunk header that is not complete yet. Like [`super::ws::Deframer`].
#[derive(Debug)]
pub struct Dechunker {
    body: Body,
    joiner: Joiner,
    /// A chunk's data began: its CRLF comes before the next size line.
    after_data: bool,
    /// The last chunk (size 0) arrived.
    ended: bool,
}

impl Dechunker {
    pub fn new(body: Body) -> Self {
        Dechunker { body, joiner: Joiner::default(), after_data: false, ended: false }
    }

    /// Stream bytes at the front of the buffer.
    pub fn stream_len(&self) -> usize {
        self.joiner.stream_len()
    }

    /// Moves the data of the chunks after the stream bytes down to join
    /// them. The end of the body (the last chunk) is an error, returned
    /// after the data before it has been joined.
    pub fn dechunk(&mut self, buf: &mut BytesMut) -> Result<()> {
        if self.body == Body::UntilClose {
            self.joiner.take_all(buf);
            return Ok(());
        }
        let (after_data, ended) = (&mut self.after_data, &mut self.ended);
        self.joiner.join(buf, |unread| {
            if *ended {
                return Step::Stop(Err(anyhow!("the server ended the event stream (last chunk)")));
            }
            match chunk_head(unread, *after_data) {
                Ok(Some((0, _))) => {
                    // Trailers, if any, are not read: the stream is over.
                    *ended = true;
                    Step::Skip(unread.len())
                }
                Ok(Some((size, used))) => {
                    *after_data = true;
                    Step::Data { len: used, data: size }
                }
                Ok(None) => Step::Incomplete,
                Err(e) => Step::Stop(Err(e)),
            }
        })
    }

    /// The first `n` stream bytes were used: drops them.
    pub fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        self.joiner.consume(buf, n);
    }
}

/// Parses a chunk header at the start of `b`: the CRLF ending the previous
/// chunk's data (when `after_data`), then `size[;extensions]` CRLF. Returns
/// the chunk size and the header's length; `Ok(None)` while incomplete.
fn chunk_head(b: &[u8], after_data: bool) -> Result<Option<(usize, usize)>> {
    let at = if after_data {
        match b {
            [b'\r', b'\n', ..] => 2,
            [] | [b'\r'] => return Ok(None),
            _ => bail!("chunk data not followed by CRLF"),
        }
    } else {
        0
    };
    let line = &b[at..];
    let Some(lf) = memchr::memchr(b'\n', line) else {
        if line.len() > MAX_CHUNK_LINE {
            bail!("no end of a chunk size line within {MAX_CHUNK_LINE} bytes");
        }
        return Ok(None);
    };
    let bad = || anyhow!("bad chunk size line {:?}", targets::show(&line[..lf]));
    let text = line[..lf].strip_suffix(b"\r").ok_or_else(bad)?;
    let digits = text.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 || !matches!(text.get(digits), None | Some(b';' | b' ' | b'\t')) {
        return Err(bad());
    }
    let size = text[..digits].iter().fold(0usize, |n, &c| n << 4 | hex_value(c) as usize);
    Ok(Some((size, at + lf + 1)))
}

/// The value of an ASCII hex digit (upper or lower case).
fn hex_value(c: u8) -> u32 {
    char::from(c).to_digit(16).unwrap_or(0)
}

/// What one event is, by its `event:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` field (or `message`): a delivery.
    Message,
    /// `event: error`: crier's `ERR slow consumer` before it ends the stream.
    Error,
    /// Any other event type: ignored.
    Other,
}

/// One complete event, found in the stream.
struct Event {
    kind: Kind,
    /// Where its `data` value is (without the one space after the colon).
    data: Option<Range<usize>>,
    /// Where the next event begins.
    next: usize,
}

/// The end of the line starting at `from` (CRLF, LF or CR, as the SSE
/// grammar allows) and the start of the next; `None` while incomplete.
#[inline]
fn line_end(s: &[u8], from: usize) -> Option<(usize, usize)> {
    let i = from + memchr::memchr2(b'\n', b'\r', &s[from..])?;
    if s[i] == b'\n' {
        return Some((i, i + 1));
    }
    // A CR at the end of what arrived may be the first half of a CRLF.
    match s.get(i + 1) {
        Some(b'\n') => Some((i, i + 2)),
        Some(_) => Some((i, i + 1)),
        None => None,
    }
}

/// The event starting at `from`, if all of it (up to its blank line)
/// arrived. Comment lines (`:`) and the `id` and `retry` fields are skipped.
#[inline]
fn next_event(s: &[u8], from: usize) -> Result<Option<Event>> {
    let (mut kind, mut data) = (Kind::Message, None);
    let mut pos = from;
    loop {
        let Some((end, next)) = line_end(s, pos) else {
            if s.len() - from > MAX_EVENT {
                bail!("no end of an event within {MAX_EVENT} bytes");
            }
            return Ok(None);
        };
        let line = &s[pos..end];
        if line.is_empty() {
            return Ok(Some(Event { kind, data, next }));
        }
        if line[0] != b':' {
            // `name: value`, one space after the colon dropped; no colon: an empty value.
            let (name, value) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let skip = usize::from(line.get(c + 1) == Some(&b' '));
                    (&line[..c], pos + c + 1 + skip..end)
                }
                None => (line, end..end),
            };
            match name {
                b"data" if data.is_some() => {
                    bail!("an event with several data lines (crier writes its JSON on one)")
                }
                b"data" => data = Some(value),
                b"event" => {
                    kind = match &s[value] {
                        b"" | b"message" => Kind::Message,
                        b"error" => Kind::Error,
                        _ => Kind::Other,
                    }
                }
                _ => {}
            }
        }
        pos = next;
    }
}

/// Hands the events complete at the front of `s` (de-chunked stream bytes)
/// to `f` until it returns `false`: a delivery as [`Frame::Message`] with
/// the payload from its JSON, an `error` event as [`Frame::Error`]. Events
/// without data (keep-alive comments) are skipped. Returns the bytes used
/// and how it ended. `s` is changed in place where a payload is unescaped.
#[inline]
pub fn events<F: FnMut(Frame<'_>) -> bool>(s: &mut [u8], mut f: F) -> (usize, Result<()>) {
    let mut used = 0;
    loop {
        if let Some((payload, next)) = crier_event(s, used) {
            used = next;
            if !f(Frame::Message(&s[payload])) {
                return (used, Ok(()));
            }
            continue;
        }
        let Event { kind, data, next } = match next_event(s, used) {
            Ok(Some(event)) => event,
            Ok(None) => return (used, Ok(())),
            Err(e) => return (used, Err(e)),
        };
        used = next;
        let Some(data) = data else {
            continue;
        };
        let frame = match kind {
            Kind::Message => match push_data(&mut s[data.clone()]) {
                Ok(p) => Frame::Message(&s[data.start + p.start..data.start + p.end]),
                Err(_) if s[data.clone()].starts_with(b"ERR") => Frame::Error(&s[data]),
                Err(e) => {
                    let e = e.context(format!("event data {:?}", targets::show(&s[data])));
                    return (used, Err(e));
                }
            },
            Kind::Error => Frame::Error(&s[data]),
            Kind::Other => Frame::Other,
        };
        if !f(frame) {
            return (used, Ok(()));
        }
    }
}

/// The fast path: crier's event as it writes it, `data: ` then
/// `{"channel":"CH","data":"PAYLOAD"}` on one line ended by LF, then an empty
/// line, with no escape in the strings. Returns the payload's range and
/// where the next event begins, exactly what [`next_event`] and
/// [`push_data`] would find for it; for anything else (another shape, CR
/// line ends, escapes, an incomplete event) `None`, and the general parser
/// takes it.
#[inline]
fn crier_event(s: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    const HEAD: &[u8] = b"data: {\"channel\":\"";
    const MID: &[u8] = b"\",\"data\":\"";
    let start = at + HEAD.len();
    let rest = s.get(at..)?.strip_prefix(HEAD)?;
    let end = memchr::memchr2(b'\n', b'\r', rest)?;
    if rest[end] != b'\n' || rest.get(end + 1) != Some(&b'\n') {
        return None;
    }
    let members = rest[..end].strip_suffix(b"\"}")?;
    // The channel's closing quote, then the payload up to the final quote.
    let quote = memchr::memchr2(b'"', b'\\', members)?;
    let payload = members[quote..].strip_prefix(MID)?;
    if memchr::memchr2(b'"', b'\\', payload).is_some() {
        return None;
    }
    let from = start + quote + MID.len();
    Some((from..from + payload.len(), start + end + 2))
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (closing quote) of the JSON string whose contents start at
/// `from`, and whether it holds escapes.
#[inline]
fn string_end(s: &[u8], from: usize) -> Result<(usize, bool)> {
    let (mut i, mut escaped) = (from, false);
    loop {
        match memchr::memchr2(b'"', b'\\', &s[i..]) {
            Some(k) if s[i + k] == b'"' => return Ok((i + k, escaped)),
            Some(k) => {
                escaped = true;
                i += k + 2;
                if i > s.len() {
                    bail!("JSON: unterminated string");
                }
            }
            None => bail!("JSON: unterminated string"),
        }
    }
}

/// The payload of crier's JSON push `{"channel":"c","data":"..."}` (with
/// `"pattern"` through a pattern, members in any order): the range of the
/// `data` string in `obj`, unescaped in place. A payload that is not UTF-8
/// comes as `data_base64`; its text is handed over undecoded (no bench
/// payload is, so it then counts as corrupt). Only strings and scalars are
/// expected as member values.
pub fn push_data(obj: &mut [u8]) -> Result<Range<usize>> {
    let (mut data, mut base64) = (None, None);
    let mut i = skip_ws(obj, 0);
    if obj.get(i) != Some(&b'{') {
        bail!("event data is not a JSON object");
    }
    i = skip_ws(obj, i + 1);
    if obj.get(i) != Some(&b'}') {
        loop {
            if obj.get(i) != Some(&b'"') {
                bail!("JSON: expected a member name at byte {i}");
            }
            let (key_end, _) = string_end(obj, i + 1)?;
            let key = i + 1..key_end;
            i = skip_ws(obj, key_end + 1);
            if obj.get(i) != Some(&b':') {
                bail!("JSON: expected ':' at byte {i}");
            }
            i = skip_ws(obj, i + 1);
            match obj.get(i) {
                Some(b'"') => {
                    let (end, escaped) = string_end(obj, i + 1)?;
                    let value = (i + 1..end, escaped);
                    match &obj[key] {
                        b"data" => data = Some(value),
                        b"data_base64" => base64 = Some(value),
                        _ => {}
                    }
                    i = end + 1;
                }
                Some(b'{' | b'[') => bail!("JSON: nested value (crier's pushes hold strings)"),
                Some(_) => {
                    // A number, true, false or null.
                    while !matches!(
                        obj.get(i),
                        None | Some(b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                    ) {
                        i += 1;
                    }
                }
                None => bail!("JSON: truncated object"),
            }
            i = skip_ws(obj, i);
            match obj.get(i) {
                Some(b',') => i = skip_ws(obj, i + 1),
                Some(b'}') => break,
                _ => bail!("JSON: expected ',' or '}}' at byte {i}"),
            }
        }
    }
    if skip_ws(obj, i + 1) != obj.len() {
        bail!("JSON: bytes after the object");
    }
    let (range, escaped) = data.or(base64).ok_or_else(|| anyhow!("JSON push without data"))?;
    if !escaped {
        return Ok(range);
    }
    let len = unescape(&mut obj[range.clone()])?;
    Ok(range.start..range.start + len)
}

/// Four hex digits at `at`.
fn hex4(s: &[u8], at: usize) -> Result<u32> {
    match s.get(at..at + 4) {
        Some(d) if d.iter().all(u8::is_ascii_hexdigit) => {
            Ok(d.iter().fold(0, |n, &c| n << 4 | hex_value(c)))
        }
        _ => bail!("JSON: bad \\u escape"),
    }
}

/// Replaces the escapes of a JSON string's contents by what they stand for,
/// in place (the text only shrinks): the new length.
fn unescape(s: &mut [u8]) -> Result<usize> {
    let (mut r, mut w) = (0, 0);
    while r < s.len() {
        let Some(k) = memchr::memchr(b'\\', &s[r..]) else {
            s.copy_within(r.., w);
            w += s.len() - r;
            break;
        };
        s.copy_within(r..r + k, w);
        w += k;
        r += k + 1;
        let c = *s.get(r).ok_or_else(|| anyhow!("JSON: escape at the end of a string"))?;
        r += 1;
        let byte = match c {
            b'"' | b'\\' | b'/' => c,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(s, r)?;
                r += 4;
                let code = match unit {
                    0xd800..=0xdbff => {
                        let low = match s.get(r..r + 2) {
                            Some(b"\\u") => hex4(s, r + 2)?,
                            _ => bail!("JSON: lone surrogate \\u{unit:04x}"),
                        };
                        if !(0xdc00..=0xdfff).contains(&low) {
                            bail!("JSON: lone surrogate \\u{unit:04x}");
                        }
                        r += 6;
                        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                    }
                    0xdc00..=0xdfff => bail!("JSON: lone surrogate \\u{unit:04x}"),
                    _ => unit,
                };
                let ch = char::from_u32(code).ok_or_else(|| anyhow!("JSON: bad code point"))?;
                // At most 4 bytes for at least 6 read: never past `r`.
                w += ch.encode_utf8(&mut s[w..w + ch.len_utf8()]).len();
                continue;
            }
            _ => bail!("JSON: bad escape \\{}", char::from(c)),
        };
        s[w] = byte;
        w += 1;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events` as chunks: each part of `events` becomes one chunk.
    fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn event(channel: &str, data: &str) -> Vec<u8> {
        format!("data: {{\"channel\":\"{channel}\",\"data\":\"{data}\"}}\n\n").into_bytes()
    }

    /// Feeds `input` in pieces cut at `cuts`, as a reader does (de-chunk,
    /// parse what is complete, keep the rest); returns what was seen and the
    /// error, if any.
    fn feed(body: Body, input: &[u8], cuts: &[usize]) -> (Vec<String>, Option<String>) {
        let mut d = Dechunker::new(body);
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            buf.extend_from_slice(&input[at..cut]);
            at = cut;
            let dechunked = d.dechunk(&mut buf);
            assert!(d.stream_len() <= buf.len());
            let n = d.stream_len();
            let (used, parsed) = events(&mut buf[..n], |f| {
                seen.push(match f {
                    Frame::Message(p) => format!("msg {}", String::from_utf8_lossy(p)),
                    other => format!("{other:?}"),
                });
                true
            });
            d.consume(&mut buf, used);
            if let Err(e) = parsed.and(dechunked) {
                return (seen, Some(format!("{e:#}")));
            }
        }
        (seen, None)
    }

    fn stream() -> (Vec<u8>, Vec<&'static str>) {
        let mut two = event("bench.0", "0001");
        two.extend(event("bench.0", "0002"));
        let three = event("bench.0", "0003");
        let (a, b) = three.split_at(11);
        let input = chunked(&[
            &event("bench.0", "0000"),
            // Several events in one chunk.
            &two,
            // A keep-alive comment between events.
            b": keep-alive\n\n",
            // An event split across chunks.
            a,
            b,
            // Other fields and an event type that is not ours.
            b"id: 1:2\nretry: 100\ndata: {\"channel\":\"bench.0\",\"data\":\"0004\"}\n\n",
            b"event: hello\ndata: whatever\n\n",
            // CRLF and CR line ends, a pattern member, spaces in the JSON.
            b"data:{ \"channel\" : \"bench.0\", \"pattern\":\"b*\" , \"data\" : \"0005\" }\r\n\r\n",
            b"data: {\"data\":\"0006\",\"channel\":\"bench.0\"}\r\r",
            b"event: error\ndata: ERR slow consumer\n\n",
        ]);
        let mut input = input;
        input.extend_from_slice(b"0\r\n\r\n");
        let seen = vec![
            "msg 0000",
            "msg 0001",
            "msg 0002",
            "msg 0003",
            "msg 0004",
            "Other",
            "msg 0005",
            "msg 0006",
            "Error([69, 82, 82, 32, 115, 108, 111, 119, 32, 99, 111, 110, 115, 117, 109, 101, 114])",
        ];
        (input, seen)
    }

    #[test]
    fn chunked_stream_split_at_every_byte() {
        let (input, want) = stream();
        for cut in 0..=input.len() {
            let (seen, err) = feed(Body::Chunked, &input, &[cut]);
            assert_eq!(seen, want, "cut {cut}");
            assert_eq!(
                err.as_deref(),
                Some("the server ended the event stream (last chunk)"),
                "cut {cut}"
            );
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(feed(Body::Chunked, &input, &cuts).0, want);
        // Two cuts anywhere (every pair would be slow: a sample).
        for a in (0..input.len()).step_by(7) {
            for b in (a..input.len()).step_by(13) {
                assert_eq!(feed(Body::Chunked, &input, &[a, b]).0, want, "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn stream_until_close() {
        let mut input = event("c", "0000");
        input.extend_from_slice(b": keep-alive\n\n");
        input.extend(event("c", "0001"));
        for cut in 0..=input.len() {
            let (seen, err) = feed(Body::UntilClose, &input, &[cut]);
            assert_eq!(seen, ["msg 0000", "msg 0001"], "cut {cut}");
            assert_eq!(err, None);
        }
    }

    #[test]
    fn chunk_headers() {
        assert_eq!(chunk_head(b"1A\r\n", false).expect("ok"), Some((26, 4)));
        assert_eq!(chunk_head(b"\r\nff;ext=1\r\nxx", true).expect("ok"), Some((255, 12)));
        assert_eq!(chunk_head(b"\r\n10", true).expect("ok"), None);
        assert_eq!(chunk_head(b"\r", true).expect("ok"), None);
        assert!(chunk_head(b"xx\r\n", true).is_err(), "data longer than its size");
        assert!(chunk_head(b"g\r\n", false).is_err());
        assert!(chunk_head(b"10\n", false).is_err(), "LF alone");
        assert!(chunk_head(b"1000000000000000\r\n", false).is_err(), "16 digits");
        assert!(chunk_head(&[b'1'; 2000], false).is_err());
        // A chunk holding more than its size said.
        let (seen, err) = feed(Body::Chunked, b"3\r\nabcd\r\n", &[]);
        assert!(seen.is_empty());
        assert_eq!(err.as_deref(), Some("chunk data not followed by CRLF"));
    }

    #[test]
    fn json_payloads() {
        let mut obj = br#"{"channel":"c","data":"00ab"}"#.to_vec();
        let r = push_data(&mut obj).expect("parse");
        assert_eq!(&obj[r], b"00ab");
        let mut obj =
            br#"{"channel":"c","data":"a\"b\\c\/\n\t\u00e9\u20ac\ud83d\ude00z"}"#.to_vec();
        let r = push_data(&mut obj).expect("parse");
        assert_eq!(&obj[r], "a\"b\\c/\n\t\u{e9}\u{20ac}\u{1f600}z".as_bytes());
        let mut obj = br#"{"channel":"c\"}","data":""}"#.to_vec();
        let r = push_data(&mut obj).expect("parse");
        assert!(r.is_empty());
        let mut obj = br#"{"channel":"c","data_base64":"/wA="}"#.to_vec();
        let r = push_data(&mut obj).expect("parse");
        assert_eq!(&obj[r], b"/wA=");
        let mut obj = br#"{"id":7,"ok":true,"data":"x"}"#.to_vec();
        let r = push_data(&mut obj).expect("parse");
        assert_eq!(&obj[r], b"x");
        for bad in [
            &br#"["data"]"#[..],
            br#"{"channel":"c"}"#,
            br#"{"data":"x"#,
            br#"{"data":"x\"}"#,
            br#"{"data":"x"} x"#,
            br#"{"data":"\ud83d"}"#,
            br#"{"data":"\q"}"#,
            br#"{"data":"\u12"}"#,
            br#"{"data":{"a":"b"}}"#,
        ] {
            let mut obj = bad.to_vec();
            assert!(push_data(&mut obj).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn escaped_payload_in_a_stream() {
        // What crier writes for a payload with a quote, a backslash and a line break.
        let input = chunked(&[br#"data: {"channel":"c","data":"0\"1\\2\n3"}"#, b"\n\n"]);
        for cut in 0..=input.len() {
            let (seen, err) = feed(Body::Chunked, &input, &[cut]);
            assert_eq!(seen, ["msg 0\"1\\2\n3"], "cut {cut}");
            assert_eq!(err, None);
        }
    }

    #[test]
    fn bad_events() {
        let (_, err) = feed(Body::UntilClose, b"data: a\ndata: b\n\n", &[]);
        assert!(err.is_some_and(|e| e.contains("several data lines")));
        let (_, err) = feed(Body::UntilClose, b"data: hello\n\n", &[]);
        assert!(err.is_some_and(|e| e.contains("not a JSON object")));
        // An ERR line sent without `event: error` is still an error.
        let (seen, _) = feed(Body::UntilClose, b"data: ERR slow consumer\n\n", &[]);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("Error("));
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let general = |s: &[u8]| {
            let mut s = s.to_vec();
            let ev = next_event(&s, 0).ok()??;
            let data = ev.data?;
            let p = push_data(&mut s[data.clone()]).ok()?;
            Some((s[data.start + p.start..data.start + p.end].to_vec(), ev.next))
        };
        let fast = |s: &[u8]| crier_event(s, 0).map(|(p, next)| (s[p].to_vec(), next));
        let taken = [
            &b"data: {\"channel\":\"bench.0\",\"data\":\"00ab\"}\n\n"[..],
            b"data: {\"channel\":\"c\",\"data\":\"\"}\n\nrest",
            b"data: {\"channel\":\"\",\"data\":\"x y\"}\n\ndata: ",
        ];
        for s in taken {
            assert!(fast(s).is_some(), "{}", String::from_utf8_lossy(s));
            assert_eq!(fast(s), general(s), "{}", String::from_utf8_lossy(s));
        }
        let left = [
            &b"data: {\"channel\":\"c\",\"data\":\"a\\\"b\"}\n\n"[..],
            b"data: {\"channel\":\"c\",\"data\":\"a\",\"x\":\"b\"}\n\n",
            b"data: {\"channel\":\"c\",\"pattern\":\"c*\",\"data\":\"a\"}\n\n",
            b"data: {\"channel\":\"c\",\"data\":\"a\"}\r\n\r\n",
            b"data: {\"channel\":\"c\",\"data\":\"a\"}\nid: 1\n\n",
            b"data: {\"channel\":\"c\",\"data\":\"a\"}\n",
            b"data: {\"channel\":\"c\",\"data\":\"a\"}",
            b"data: {\"channel\":\"c\\\"\",\"data\":\"a\"}\n\n",
            b"data:{\"channel\":\"c\",\"data\":\"a\"}\n\n",
        ];
        for s in left {
            assert_eq!(fast(s), None, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn stop_leaves_the_rest() {
        let mut s = event("c", "0000");
        s.extend(event("c", "0001"));
        let mut n = 0;
        let (used, r) = events(&mut s, |_| {
            n += 1;
            false
        });
        r.expect("events");
        assert_eq!((n, used), (1, event("c", "0000").len()));
    }

    #[test]
    fn request_and_response() {
        let ep = Endpoint { host: "127.0.0.1:7080", path: "/sse" };
        let req = request(&ep, "bench.0");
        assert!(req.starts_with("GET /sse?channel=bench.0 HTTP/1.1\r\nHost: 127.0.0.1:7080\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        assert!(request(&ep, "a b+é").starts_with("GET /sse?channel=a%20b%2B%C3%A9 HTTP/1.1"));
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                  transfer-encoding: chunked\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT";
        assert_eq!(check_response(ok.as_bytes(), b"").expect("ok"), Body::Chunked);
        let close = "HTTP/1.0 200 OK\r\nContent-Type: text/event-stream; charset=utf-8";
        assert_eq!(check_response(close.as_bytes(), b"").expect("ok"), Body::UntilClose);
        let refused = "HTTP/1.1 400 Bad Request\r\ncontent-length: 19";
        let e = check_response(refused.as_bytes(), b"ERR invalid channel").expect_err("400");
        assert!(e.to_string().contains("ERR invalid channel"), "{e}");
        let plain = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked";
        assert!(check_response(plain.as_bytes(), b"").is_err());
        let gzip = format!("{ok}\r\ncontent-encoding: gzip");
        assert!(check_response(gzip.as_bytes(), b"").is_err());
        let sized = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 5";
        assert!(check_response(sized.as_bytes(), b"").is_err());
    }
}
