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
}
