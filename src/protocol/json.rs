//! The JSON form of a push, for web clients (WebSocket after `HELLO 2`, and
//! every Server-Sent Event): `{"channel":"c","pattern":"p","id":"e:1","data":"..."}`,
//! `"pattern"` only for a delivery through a pattern, `"id"` only when the
//! channel keeps history. A payload that is not UTF-8 goes as `"data_base64"`. Channel names and patterns that are not
//! UTF-8 are written with U+FFFD in place of the bad bytes.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::borrow::Cow;

#[derive(Serialize)]
struct Push<'a> {
    channel: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// The JSON object of one delivery, on one line.
pub fn push(pattern: Option<&[u8]>, channel: &[u8], payload: &[u8], id: Option<&[u8]>) -> Vec<u8> {
    let (data, data_base64) = match std::str::from_utf8(payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(payload))),
    };
    let push = Push {
        channel: String::from_utf8_lossy(channel),
        pattern: pattern.map(String::from_utf8_lossy),
        id: id.map(String::from_utf8_lossy),
        data,
        data_base64,
    };
    // Serializing strings into a Vec cannot fail.
    serde_json::to_vec(&push).unwrap_or_default()
}

/// The gap signal: `{"gap":true,"channel":"c"}` (or `"pattern":"p"`).
pub fn gap(name: &[u8], pattern: bool) -> Vec<u8> {
    let key = if pattern { "pattern" } else { "channel" };
    serde_json::json!({ "gap": true, key: String::from_utf8_lossy(name) }).to_string().into_bytes()
}

/// The SSE event that says the messages of `names` (channels or patterns)
/// cannot be recovered: `event: reset` with `{"channels":[...]}`.
pub fn reset(names: &[&[u8]]) -> Bytes {
    let names: Vec<_> = names.iter().map(|name| String::from_utf8_lossy(name)).collect();
    let data = serde_json::json!({ "channels": names });
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

/// A Server-Sent Event carrying `json` (one line: serde_json escapes every
/// line break), with an `id:` line when the message has one.
pub fn event(json: &[u8], id: Option<&[u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8 + id.map_or(0, |id| id.len() + 5));
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id);
        out.put_u8(b'\n');
    }
    out.put_slice(b"data: ");
    out.put_slice(json);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The name of `channel` as [`push`] writes it between the quotes of
/// `"channel"`: how an SSE stream recognises its channels in shared frames.
pub fn channel_key(channel: &[u8]) -> Vec<u8> {
    // Serializing a string cannot fail; the quotes are taken off.
    let quoted = serde_json::to_vec(&String::from_utf8_lossy(channel)).unwrap_or_default();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_vec()
}

/// What an SSE stream reads of a shared frame made by [`event`] from
/// [`push`], to write its own `id:` line in place of the message's (see
/// `transport::sse`).
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The message's own id, `<epoch>:<offset>`, when its channel keeps history.
    pub id: Option<&'a [u8]>,
    /// The channel, as [`channel_key`] writes it.
    pub channel: &'a [u8],
    /// Delivered through a pattern (the object names one).
    pub through_pattern: bool,
    /// The event without its `id:` line: from `data: ` to the blank line.
    pub rest: &'a [u8],
}

impl<'a> Event<'a> {
    /// Reads a frame of [`event`]; `None` for anything else. Only the fixed
    /// start of the object is looked at (serde writes the fields in order,
    /// `"channel"` first), never the payload.
    pub fn read(frame: &'a [u8]) -> Option<Event<'a>> {
        let (id, rest) = match frame.strip_prefix(b"id: ") {
            Some(after) => {
                let end = memchr::memchr(b'\n', after)?;
                (Some(&after[..end]), &after[end + 1..])
            }
            None => (None, frame),
        };
        let name = rest.strip_prefix(br#"data: {"channel":""#)?;
        // The closing quote: the first one not escaped.
        let mut at = 0;
        loop {
            match *name.get(at)? {
                b'"' => break,
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
        let through_pattern = name[at + 1..].starts_with(br#","pattern":"#);
        Some(Event { id, channel: &name[..at], through_pattern, rest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_as_json() {
        assert_eq!(
            push(None, b"news", b"a \"b\"\n", None),
            br#"{"channel":"news","data":"a \"b\"\n"}"#
        );
        assert_eq!(
            push(Some(b"n*"), b"news", b"", Some(b"e1:9")),
            br#"{"channel":"news","pattern":"n*","id":"e1:9","data":""}"#
        );
        let expected = "{\"channel\":\"c\u{fffd}\",\"data_base64\":\"/wA=\"}";
        assert_eq!(push(None, b"c\xff", &[0xff, 0], None), expected.as_bytes());
        assert_eq!(&event(b"{}", None)[..], b"data: {}\n\n");
        assert_eq!(&event(b"{}", Some(b"e1:2"))[..], b"id: e1:2\ndata: {}\n\n");
    }

    #[test]
    fn streams_read_back_the_events_they_share() {
        for (pattern, channel, id) in [
            (None, &b"news"[..], None),
            (Some(&b"n*"[..]), b"news", Some(&b"e1:9"[..])),
            (None, b"a\"b\\c\"", Some(b"e1:10")),
            (Some(b"*"), b"\xc3\xa9t\xff", None),
        ] {
            let frame = event(&push(pattern, channel, b"x \"y\" \\", id), id);
            let read = Event::read(&frame).expect("an event");
            assert_eq!(read.id, id);
            assert_eq!(read.channel, channel_key(channel));
            assert_eq!(read.through_pattern, pattern.is_some());
            assert!(read.rest.starts_with(b"data: {") && frame.ends_with(read.rest));
        }
        assert_eq!(channel_key(b"a\"b"), br#"a\"b"#);
        assert_eq!(Event::read(b"event: reset\ndata: {}\n\n"), None);
        assert_eq!(Event::read(b"id: e:1"), None);
        assert_eq!(Event::read(br#"data: {"channel":"a\"#), None);
    }
}
