//! The client side of WebSocket (RFC 6455), as much as the bench needs: the
//! opening handshake, server frames parsed in place in the read buffer, and
//! masked client frames for the few commands a subscriber sends.
//!
//! Server frames are never masked and no extension is negotiated (the
//! handshake offers none, so no permessage-deflate), which keeps a delivery's
//! cost to a 2-byte header check. Two ways to read them:
//! - [`next_frame`]: one whole frame at a time, its payload borrowed from the
//!   buffer (crier: one delivery per message);
//! - [`Deframer`]: data frame payloads joined into a byte stream at the front
//!   of the same buffer, whatever the frame boundaries (NATS: its text
//!   protocol rides in frames that need not align with its messages).

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::net::TcpStream;

use super::http::{self, Endpoint};
use crate::join::{Joiner, Step};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// A frame larger than this is taken for a broken stream (the bench's
/// payloads are small; crier's and NATS's limits are 1 MiB by default).
const MAX_FRAME: u64 = 64 * 1024 * 1024;

/// A server frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    /// Payload length.
    pub len: usize,
    /// Header length: 2, 4 or 10 bytes (a server frame has no mask key).
    pub head_len: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode >= OP_CLOSE
    }

    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.head_len + self.len
    }
}

/// Parses the header of the server frame at the start of `buf`: `Ok(None)`
/// when more bytes are needed.
#[inline]
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    if b0 & 0x70 != 0 {
        bail!("WebSocket frame with reserved bits set ({b0:#04x}): no extension was negotiated");
    }
    if b1 & 0x80 != 0 {
        bail!("masked WebSocket frame from the server");
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    let (len, head_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || len > 125 {
                bail!("bad WebSocket control frame (opcode {opcode:#x}, length {len}, fin {fin})");
            }
        }
        _ => bail!("unknown WebSocket opcode {opcode:#x}"),
    }
    if len > MAX_FRAME {
        bail!("WebSocket frame of {len} bytes (more than {MAX_FRAME})");
    }
    Ok(Some(Head { fin, opcode, len: len as usize, head_len }))
}

/// The whole frame at the start of `buf`, its payload and its total length;
/// `Ok(None)` until all of it arrived.
#[inline]
pub fn next_frame(buf: &[u8]) -> Result<Option<(Head, &[u8], usize)>> {
    let Some(h) = parse_head(buf)? else {
        return Ok(None);
    };
    let end = h.frame_len();
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((h, &buf[h.head_len..end], end)))
}

/// A close frame's status code and reason, for an error message.
pub fn describe_close(payload: &[u8]) -> String {
    match payload {
        [] => "close frame without a status".into(),
        [a, b, reason @ ..] => format!(
            "close frame {} {:?}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "malformed close frame".into(),
    }
}

/// Appends one final, masked client frame holding `parts` concatenated.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]], mask: [u8; 4]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    for p in parts {
        out.extend_from_slice(p);
    }
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A fresh mask key. RFC 6455 wants it unpredictable to the network path
/// (against cache poisoning by proxies); the bench talks to loopback.
pub fn mask_key() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// A control frame the server sent within the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control<'a> {
    Ping(&'a [u8]),
    Pong,
    Close(&'a [u8]),
}

/// Turns the frames read into a buffer into the byte stream their data
/// payloads carry, in place: `buf[..stream_len()]` is stream data (from
/// any number of frames, a frame's payload possibly in part), the rest is
/// the start of a frame whose header or control payload is incomplete.
/// Message boundaries are ignored: text, binary and continuation frames are
/// one stream, as NATS over WebSocket wants.
#[derive(Debug, Default)]
pub struct Deframer {
    joiner: Joiner,
}

impl Deframer {
    /// Stream bytes at the front of the buffer.
    pub fn stream_len(&self) -> usize {
        self.joiner.stream_len()
    }

    /// Moves the data payloads of the frames after the stream bytes down to
    /// join them, handing every complete control frame to `ctl`.
    pub fn deframe(
        &mut self,
        buf: &mut BytesMut,
        mut ctl: impl FnMut(Control<'_>) -> Result<()>,
    ) -> Result<()> {
        self.joiner.join(buf, |unread| {
            let h = match parse_head(unread) {
                Ok(Some(h)) => h,
                Ok(None) => return Step::Incomplete,
                Err(e) => return Step::Stop(Err(e)),
            };
            if !h.is_control() {
                return Step::Data { len: h.head_len, data: h.len };
            }
            if unread.len() < h.frame_len() {
                return Step::Incomplete;
            }
            let payload = &unread[h.head_len..h.frame_len()];
            let c = match h.opcode {
                OP_PING => Control::Ping(payload),
                OP_PONG => Control::Pong,
                _ => Control::Close(payload),
            };
            match ctl(c) {
                Ok(()) => Step::Skip(h.frame_len()),
                Err(e) => Step::Stop(Err(e)),
            }
        })
    }

    /// The first `n` stream bytes were used: drops them.
    pub fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        self.joiner.consume(buf, n);
    }
}

/// The opening handshake request (RFC 6455 §4.1), with no extension and no
/// subprotocol offered.
pub fn request(ep: &Endpoint<'_>, key: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ep.path, ep.host
    )
}

/// Checks the server's response head (status line and headers, without
/// the final empty line) against the key sent.
pub fn check_response(head: &[u8], key: &str) -> Result<()> {
    let (status, headers) = http::parse_head(head).context("handshake response")?;
    if http::status_code(status) != Some("101") {
        bail!("WebSocket upgrade refused: {status:?}");
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for header in headers {
        let (name, value) = header.context("handshake response")?;
        match name.to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-accept" => accept = Some(value),
            "sec-websocket-extensions" if !value.is_empty() => {
                bail!("the server chose the extension {value:?}, which was not offered")
            }
            _ => {}
        }
    }
    if !upgrade || !connection {
        bail!("handshake response lacks Upgrade: websocket / Connection: Upgrade");
    }
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    match accept {
        Some(a) if a == want => Ok(()),
        Some(a) => bail!("Sec-WebSocket-Accept {a:?}, expected {want:?}"),
        None => bail!("handshake response without Sec-WebSocket-Accept"),
    }
}

/// Upgrades a fresh connection. Returns the read buffer (capacity
/// `buf_cap`) holding whatever followed the response headers: frame data.
/// Callers bound it with a timeout.
pub async fn handshake(
    stream: &mut TcpStream,
    ep: &Endpoint<'_>,
    buf_cap: usize,
) -> Result<BytesMut> {
    let key = tungstenite::handshake::client::generate_key();
    let (head, buf) =
        http::exchange(stream, request(ep, &key).as_bytes(), buf_cap, "WebSocket handshake")
            .await?;
    check_response(&head, &key)?;
    Ok(buf)
}

/// A server frame (unmasked), for tests.
#[cfg(test)]
fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame in `buf` as (opcode, fin, payload).
    fn frames(mut buf: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((h, p, n)) = next_frame(buf).expect("parse") {
            out.push((h.opcode, h.fin, p.to_vec()));
            buf = &buf[n..];
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        out
    }

    #[test]
    fn lengths_7_16_and_64_bits() {
        for n in [0, 1, 125, 126, 127, 1000, 0xffff, 0x1_0000, 300_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let f = server_frame(OP_BINARY, true, &payload);
            let h = parse_head(&f).expect("parse").expect("whole header");
            let head_len = match n {
                0..=125 => 2,
                126..=0xffff => 4,
                _ => 10,
            };
            assert_eq!(h, Head { fin: true, opcode: OP_BINARY, len: n, head_len });
            assert_eq!(frames(&f), vec![(OP_BINARY, true, payload)]);
            // Any proper prefix is incomplete, never an error.
            for cut in [0, 1, head_len - 1, head_len, f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(next_frame(&f[..cut]).expect("prefix"), None, "n={n} cut={cut}");
                }
            }
        }
        // A 16-bit length field holding a small value (non-minimal) is still read.
        let f = [0x82, 126, 0, 3, b'a', b'b', b'c'];
        assert_eq!(frames(&f), vec![(OP_BINARY, true, b"abc".to_vec())]);
        // 64-bit length field, explicit bytes.
        let mut f = vec![0x81, 127, 0, 0, 0, 0, 0, 0, 0, 2];
        f.extend_from_slice(b"hi");
        assert_eq!(frames(&f), vec![(OP_TEXT, true, b"hi".to_vec())]);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut b = Vec::new();
        b.extend(server_frame(OP_TEXT, true, b"CONFIRMED"));
        b.extend(server_frame(OP_PING, true, b"p"));
        b.extend(server_frame(OP_TEXT, true, &[b'x'; 200]));
        b.extend(server_frame(OP_BINARY, false, b"ab"));
        b.extend(server_frame(OP_CONTINUATION, true, b"c"));
        b.extend(server_frame(OP_CLOSE, true, &[0x03, 0xf0, b'b', b'y', b'e']));
        assert_eq!(
            frames(&b),
            vec![
                (OP_TEXT, true, b"CONFIRMED".to_vec()),
                (OP_PING, true, b"p".to_vec()),
                (OP_TEXT, true, vec![b'x'; 200]),
                (OP_BINARY, false, b"ab".to_vec()),
                (OP_CONTINUATION, true, b"c".to_vec()),
                (OP_CLOSE, true, vec![0x03, 0xf0, b'b', b'y', b'e']),
            ]
        );
        assert_eq!(describe_close(&[0x03, 0xf0, b'b', b'y', b'e']), "close frame 1008 \"bye\"");
    }

    #[test]
    fn protocol_errors() {
        assert!(parse_head(&[0x81 | 0x40, 0]).is_err(), "RSV1 without an extension");
        assert!(parse_head(&[0x81, 0x80, 0, 0, 0, 0]).is_err(), "masked server frame");
        assert!(parse_head(&[0x83, 0]).is_err(), "reserved opcode");
        assert!(parse_head(&[0x09, 0]).is_err(), "fragmented ping");
        assert!(parse_head(&[0x89, 126, 0, 126]).is_err(), "long ping");
        assert!(parse_head(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err(), "huge length");
    }

    /// Deframes `input` fed in pieces of the given sizes, consuming the
    /// stream as it goes: the stream bytes and the control frames seen.
    fn deframe_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<String>) {
        let mut d = Deframer::default();
        let mut buf = BytesMut::new();
        let (mut stream, mut ctl) = (Vec::new(), Vec::new());
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            buf.extend_from_slice(&input[at..cut]);
            at = cut;
            d.deframe(&mut buf, |c| {
                ctl.push(format!("{c:?}"));
                Ok(())
            })
            .expect("deframe");
            assert!(d.stream_len() <= buf.len());
            // Consume part of the stream only, as a parser waiting for a line end would.
            let n = d.stream_len() / 2;
            stream.extend_from_slice(&buf[..n]);
            d.consume(&mut buf, n);
        }
        let n = d.stream_len();
        stream.extend_from_slice(&buf[..n]);
        d.consume(&mut buf, n);
        assert!(buf.is_empty(), "left over: {buf:?}");
        (stream, ctl)
    }

    fn nats_frames() -> (Vec<u8>, Vec<u8>) {
        let text = b"INFO {}\r\nMSG bench.0 1 4\r\nabcd\r\nPING\r\nMSG bench.0 1 300\r\n".to_vec();
        let mut text = text;
        text.extend(std::iter::repeat_n(b'y', 300));
        text.extend_from_slice(b"\r\n");
        // Frames cut through NATS messages, of all three length forms.
        let mut b = Vec::new();
        b.extend(server_frame(OP_BINARY, true, &text[..5]));
        b.extend(server_frame(OP_PING, true, b"hb"));
        b.extend(server_frame(OP_BINARY, true, &text[5..30]));
        b.extend(server_frame(OP_BINARY, true, &[]));
        b.extend(server_frame(OP_TEXT, false, &text[30..200]));
        b.extend(server_frame(OP_PONG, true, b""));
        b.extend(server_frame(OP_CONTINUATION, true, &text[200..]));
        (b, text)
    }

    #[test]
    fn deframer_whole_buffer() {
        let (b, text) = nats_frames();
        let (stream, ctl) = deframe_in_pieces(&b, &[]);
        assert_eq!(stream, text);
        assert_eq!(ctl, ["Ping([104, 98])", "Pong"]);
    }

    #[test]
    fn deframer_split_at_every_byte_boundary() {
        let (b, text) = nats_frames();
        for cut in 0..=b.len() {
            let (stream, ctl) = deframe_in_pieces(&b, &[cut]);
            assert_eq!(stream, text, "cut at {cut}");
            assert_eq!(ctl.len(), 2, "cut at {cut}");
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..b.len()).collect();
        assert_eq!(deframe_in_pieces(&b, &cuts).0, text);
    }

    #[test]
    fn frame_split_at_every_byte_boundary() {
        for n in [3, 125, 126, 0x1_0000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
            let mut b = server_frame(OP_TEXT, true, b"CONFIRMED");
            b.extend(server_frame(OP_BINARY, true, &payload));
            let step = if n > 1000 { 997 } else { 1 };
            for cut in (0..=b.len()).step_by(step).chain([11, 12, 13, 14, 15, 16, 20]) {
                let cut = cut.min(b.len());
                // What a reader does: parse what it has, keep the rest, read more.
                let mut buf = BytesMut::from(&b[..cut]);
                let mut got = Vec::new();
                for more in [&b[cut..], &[][..]] {
                    let mut used = 0;
                    while let Some((h, p, len)) = next_frame(&buf[used..]).expect("parse") {
                        got.push((h.opcode, p.to_vec()));
                        used += len;
                    }
                    let _ = buf.split_to(used);
                    buf.extend_from_slice(more);
                }
                assert_eq!(
                    got,
                    vec![(OP_TEXT, b"CONFIRMED".to_vec()), (OP_BINARY, payload.clone())],
                    "n={n} cut={cut}"
                );
            }
        }
    }

    #[test]
    fn deframer_reports_errors_and_close() {
        let mut d = Deframer::default();
        let mut buf = BytesMut::from(&server_frame(OP_BINARY, true, b"ok")[..]);
        buf.extend_from_slice(&server_frame(OP_CLOSE, true, &[0x03, 0xe8]));
        let r = d.deframe(&mut buf, |c| match c {
            Control::Close(p) => bail!("{}", describe_close(p)),
            _ => Ok(()),
        });
        assert_eq!(r.map_err(|e| e.to_string()), Err("close frame 1000 \"\"".to_string()));
        assert_eq!(&buf[..d.stream_len()], b"ok");
        let mut buf = BytesMut::from(&[0x8f, 0][..]);
        assert!(Deframer::default().deframe(&mut buf, |_| Ok(())).is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        for n in [0, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 13) as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut out = Vec::new();
            let (a, b) = payload.split_at(n / 2);
            put_frame(&mut out, OP_TEXT, &[a, b], mask);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0x80, "mask bit");
            // Unmasked, it reads as the server frame with the same payload.
            let head_len = match n {
                0..=125 => 2,
                126..=0xffff => 4,
                _ => 10,
            };
            let mut plain = out[..head_len].to_vec();
            plain[1] &= 0x7f;
            assert_eq!(&out[head_len..head_len + 4], &mask);
            plain.extend(out[head_len + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
            assert_eq!(plain, server_frame(OP_TEXT, true, &payload));
        }
    }

    #[test]
    fn handshake_request_and_response() {
        let ep = Endpoint { host: "127.0.0.1:7080", path: "/ws" };
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = request(&ep, key);
        assert!(req.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:7080\r\n"), "{req}");
        assert!(req.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(req.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(!req.contains("Extensions"));
        assert!(req.ends_with("\r\n\r\n"));
        // RFC 6455's example key and accept value.
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        check_response(ok.as_bytes(), key).expect("valid response");
        let bad_key = ok.replace("s3pP", "AAAA");
        assert!(check_response(bad_key.as_bytes(), key).is_err());
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 0";
        assert!(check_response(refused.as_bytes(), key).is_err());
        let deflate = format!("{ok}\r\nSec-WebSocket-Extensions: permessage-deflate");
        assert!(check_response(deflate.as_bytes(), key).is_err());
    }
}
