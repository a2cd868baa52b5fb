//! How a connection's bytes travel (`--transport`): the target's own
//! protocol straight over TCP, inside WebSocket frames, or (crier only,
//! one way) as Server-Sent Events in a chunked HTTP body. A [`Wire`] owns
//! the read buffer and turns what was read into the dialect's [`Frame`]s,
//! answering the server's pings itself; the subscriber and publisher loops
//! see the same frames whatever the transport.
//!
//! Over WebSocket:
//! - crier (`GET /ws`): every command and reply is one text message, and a
//!   delivery in version 1 (the default, no `HELLO`) is one message holding
//!   the payload alone, read in place from the buffer;
//! - NATS (its `websocket` listener): its text protocol is a byte stream cut
//!   into binary frames anywhere, so frame payloads are first joined in place
//!   ([`ws::Deframer`]) and then parsed as over TCP.
//!
//! Over Server-Sent Events (crier's `GET /sse?channel=CH`): chunk payloads
//! are joined in place ([`sse::Dechunker`]), then each event's JSON is read
//! in place ([`sse::events`]): one delivery per event, its `data` string the
//! payload. Nothing is sent after the request: the response head was the
//! subscription's confirmation.

use anyhow::{Result, anyhow, bail};
use bytes::{Buf, BytesMut};

use super::sse;
use super::targets::{self, Dialect, Frame};
use super::ws;

/// Which transport the subscribers use (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The target's native protocol over TCP.
    Tcp,
    /// WebSocket: crier's `GET /ws`, NATS's websocket listener.
    Ws,
    /// Server-Sent Events: crier's `GET /sse` (one way: subscribers only).
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// The exact bytes that start a delivery on one subscriber's connection, and
/// its payload's length (all bench messages have `--size` bytes): the read
/// loop compares them instead of parsing, so the load generator spends less
/// of the machine's two cores on itself. Anything else is parsed.
#[derive(Debug, Clone)]
pub struct Expected {
    pub head: Vec<u8>,
    pub size: usize,
}

/// One connection's framing and read buffer.
pub enum Wire {
    Tcp {
        dialect: Dialect,
        buf: BytesMut,
        expected: Option<Expected>,
    },
    /// crier over WebSocket: one message per reply or delivery.
    WsMessages(WsMessages),
    /// A stream protocol (NATS) inside WebSocket frames.
    WsStream {
        dialect: Dialect,
        buf: BytesMut,
        deframer: ws::Deframer,
    },
    /// crier's Server-Sent Events: one event per delivery, in a chunked body.
    Sse {
        buf: BytesMut,
        dechunker: sse::Dechunker,
    },
}

impl Wire {
    pub fn tcp(dialect: Dialect, buf: BytesMut) -> Self {
        Wire::Tcp { dialect, buf, expected: None }
    }

    /// Sets the fast path for deliveries (TCP only; see [`Expected`]).
    pub fn expect(&mut self, deliveries: Expected) {
        if let Wire::Tcp { expected, .. } = self {
            *expected = Some(deliveries);
        }
    }

    /// A WebSocket wire for `dialect`, `buf` holding what followed the
    /// handshake response.
    pub fn websocket(dialect: Dialect, buf: BytesMut) -> Result<Self> {
        Ok(match dialect {
            Dialect::Crier => Wire::WsMessages(WsMessages { buf, frag: Vec::new(), frag_op: None }),
            Dialect::Nats => Wire::WsStream { dialect, buf, deframer: ws::Deframer::default() },
            Dialect::Resp | Dialect::RespCluster => bail!("Redis has no WebSocket transport"),
        })
    }

    /// An event stream, `buf` holding what followed the response head.
    pub fn sse(buf: BytesMut, dechunker: sse::Dechunker) -> Self {
        Wire::Sse { buf, dechunker }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self, Wire::WsMessages(_) | Wire::WsStream { .. })
    }

    pub fn is_sse(&self) -> bool {
        matches!(self, Wire::Sse { .. })
    }

    /// Where reads land.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        match self {
            Wire::Tcp { buf, .. } | Wire::WsStream { buf, .. } | Wire::Sse { buf, .. } => buf,
            Wire::WsMessages(m) => &mut m.buf,
        }
    }

    pub fn into_buf(self) -> BytesMut {
        match self {
            Wire::Tcp { buf, .. } | Wire::WsStream { buf, .. } | Wire::Sse { buf, .. } => buf,
            Wire::WsMessages(m) => m.buf,
        }
    }

    /// Appends one command line (given without its line end) to `out` as
    /// this wire sends it: with CRLF over TCP; over WebSocket a masked text
    /// message (crier) or the line with CRLF in a masked binary frame (NATS).
    /// An event stream is one way: nothing is appended.
    pub fn put_line(&self, out: &mut Vec<u8>, line: &[u8]) {
        match self {
            Wire::Tcp { .. } => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            Wire::WsMessages(_) => ws::put_frame(out, ws::OP_TEXT, &[line], ws::mask_key()),
            Wire::WsStream { .. } => {
                ws::put_frame(out, ws::OP_BINARY, &[line, b"\r\n"], ws::mask_key())
            }
            Wire::Sse { .. } => {}
        }
    }

    /// Handles the complete frames read so far, in order: each goes to `f`
    /// until it returns `false` (the rest stays buffered). The server's pings
    /// (NATS `PING`, WebSocket ping frames) are answered into `out`, which
    /// the caller writes. An error ends the connection; frames before it
    /// have been handed over.
    #[inline]
    pub fn frames<F: FnMut(Frame<'_>) -> bool>(&mut self, out: &mut Vec<u8>, f: F) -> Result<()> {
        match self {
            Wire::Tcp { dialect, buf, expected } => {
                let pong = |out: &mut Vec<u8>| out.extend_from_slice(b"PONG\r\n");
                let used = stream_frames(*dialect, expected.as_ref(), buf, out, f, pong);
                buf.advance(used.0);
                used.1
            }
            Wire::WsMessages(m) => m.frames(out, f),
            Wire::WsStream { dialect, buf, deframer } => {
                let deframed = deframer.deframe(buf, |c| match c {
                    ws::Control::Ping(p) => {
                        ws::put_frame(out, ws::OP_PONG, &[p], ws::mask_key());
                        Ok(())
                    }
                    ws::Control::Pong => Ok(()),
                    ws::Control::Close(p) => bail!("server sent a {}", ws::describe_close(p)),
                });
                // Whatever arrived before a close or a broken frame is used first.
                let n = deframer.stream_len();
                let (used, parsed) = stream_frames(*dialect, None, &buf[..n], out, f, |out| {
                    ws::put_frame(out, ws::OP_BINARY, &[b"PONG\r\n"], ws::mask_key())
                });
                deframer.consume(buf, used);
                parsed.and(deframed)
            }
            Wire::Sse { buf, dechunker } => {
                // Whatever arrived before the end of the stream or a broken
                // chunk is used first.
                let dechunked = dechunker.dechunk(buf);
                let n = dechunker.stream_len();
                let (used, parsed) = sse::events(&mut buf[..n], f);
                dechunker.consume(buf, used);
                parsed.and(dechunked)
            }
        }
    }
}

/// Parses the dialect's frames from `buf` until one is incomplete or `f`
/// says stop: the bytes used and how it ended.
#[inline]
fn stream_frames<F: FnMut(Frame<'_>) -> bool>(
    d: Dialect,
    expected: Option<&Expected>,
    buf: &[u8],
    out: &mut Vec<u8>,
    mut f: F,
    pong: impl Fn(&mut Vec<u8>),
) -> (usize, Result<()>) {
    let mut used = 0;
    loop {
        if let Some(Expected { head, size }) = expected {
            let rest = &buf[used..];
            let end = head.len() + size;
            if rest.get(end..end + 2) == Some(b"\r\n") && rest.starts_with(head) {
                used += end + 2;
                if !f(Frame::Message(&rest[head.len()..end])) {
                    return (used, Ok(()));
                }
                continue;
            }
        }
        match targets::next_frame(d, &buf[used..]) {
            Ok(Some((frame, n))) => {
                used += n;
                if frame == Frame::Ping {
                    pong(out);
                } else if !f(frame) {
                    return (used, Ok(()));
                }
            }
            Ok(None) => return (used, Ok(())),
            Err(e) => return (used, Err(e)),
        }
    }
}

/// crier over WebSocket: each WebSocket message is one reply or one
/// delivery. Messages arrive whole in one frame, read in place; a message
/// fragmented over several frames (allowed, not expected) is assembled aside.
pub struct WsMessages {
    buf: BytesMut,
    frag: Vec<u8>,
    /// The opcode of the fragmented message being assembled.
    frag_op: Option<u8>,
}

impl WsMessages {
    #[inline]
    fn frames<F: FnMut(Frame<'_>) -> bool>(&mut self, out: &mut Vec<u8>, mut f: F) -> Result<()> {
        let mut used = 0;
        let result = loop {
            let (h, p, n) = match ws::next_frame(&self.buf[used..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            used += n;
            match (h.opcode, self.frag_op) {
                (ws::OP_TEXT | ws::OP_BINARY, None) if h.fin => {
                    if !f(targets::crier_ws_message(h.opcode == ws::OP_TEXT, p)) {
                        break Ok(());
                    }
                }
                (ws::OP_TEXT | ws::OP_BINARY, None) => {
                    self.frag_op = Some(h.opcode);
                    self.frag.extend_from_slice(p);
                }
                (ws::OP_CONTINUATION, Some(op)) => {
                    self.frag.extend_from_slice(p);
                    if h.fin {
                        self.frag_op = None;
                        let go_on = f(targets::crier_ws_message(op == ws::OP_TEXT, &self.frag));
                        self.frag.clear();
                        if !go_on {
                            break Ok(());
                        }
                    }
                }
                (ws::OP_PING, _) => ws::put_frame(out, ws::OP_PONG, &[p], ws::mask_key()),
                (ws::OP_PONG, _) => {}
                (ws::OP_CLOSE, _) => break Err(anyhow!("server sent a {}", ws::describe_close(p))),
                (op, _) => break Err(anyhow!("WebSocket frame out of sequence (opcode {op:#x})")),
            }
        };
        self.buf.advance(used);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    /// Unmasks the client frames in `out`: (opcode, payload) each.
    fn client_frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let len = usize::from(out[1] & 0x7f);
            assert!(len < 126 && out[1] & 0x80 != 0);
            let mask = [out[2], out[3], out[4], out[5]];
            let p = out[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
            v.push((out[0] & 0x0f, p));
            out = &out[6 + len..];
        }
        v
    }

    /// Feeds `input` to the wire split at `cut`; returns the frames seen (as
    /// text), the bytes written back, and the error, if any.
    fn run(mut wire: Wire, input: &[u8], cut: usize) -> (Vec<String>, Vec<u8>, Option<String>) {
        let (mut seen, mut out) = (Vec::new(), Vec::new());
        for part in [&input[..cut], &input[cut..]] {
            wire.read_buf().extend_from_slice(part);
            let r = wire.frames(&mut out, |f| {
                seen.push(match f {
                    Frame::Message(p) => format!("msg {}", String::from_utf8_lossy(p)),
                    other => format!("{other:?}"),
                });
                true
            });
            if let Err(e) = r {
                return (seen, out, Some(e.to_string()));
            }
        }
        (seen, out, None)
    }

    #[test]
    fn crier_messages_at_every_split() {
        let mut input = server_frame(ws::OP_TEXT, true, b"CONFIRMED");
        input.extend(server_frame(ws::OP_TEXT, true, b"0000hello"));
        input.extend(server_frame(ws::OP_PING, true, b"k"));
        input.extend(server_frame(ws::OP_BINARY, true, &[0xff, 0x00]));
        input.extend(server_frame(ws::OP_TEXT, false, b"frag"));
        input.extend(server_frame(ws::OP_PING, true, b""));
        input.extend(server_frame(ws::OP_CONTINUATION, true, b"ment"));
        input.extend(server_frame(ws::OP_TEXT, true, b"ERR slow consumer"));
        input.extend(server_frame(ws::OP_CLOSE, true, &[0x03, 0xf0]));
        for cut in 0..=input.len() {
            let wire = Wire::websocket(Dialect::Crier, BytesMut::new()).expect("wire");
            let (seen, out, err) = run(wire, &input, cut);
            assert_eq!(
                seen,
                [
                    "Ack",
                    "msg 0000hello",
                    "msg \u{fffd}\0",
                    "msg fragment",
                    "Error([69, 82, 82, 32, 115, 108, 111, 119, 32, 99, 111, 110, 115, 117, 109, 101, 114])"
                ],
                "cut {cut}"
            );
            assert_eq!(
                client_frames(&out),
                [(ws::OP_PONG, b"k".to_vec()), (ws::OP_PONG, vec![])],
                "cut {cut}"
            );
            assert_eq!(err.as_deref(), Some("server sent a close frame 1008 \"\""), "cut {cut}");
        }
    }

    #[test]
    fn nats_stream_at_every_split() {
        let text = b"INFO {}\r\nPING\r\nMSG bench.0 1 4\r\nabcd\r\n-ERR 'Slow Consumer'\r\n";
        let mut input = server_frame(ws::OP_BINARY, true, &text[..12]);
        input.extend(server_frame(ws::OP_PING, true, b"z"));
        input.extend(server_frame(ws::OP_BINARY, true, &text[12..33]));
        input.extend(server_frame(ws::OP_BINARY, true, &text[33..]));
        input.extend(server_frame(ws::OP_CLOSE, true, &[0x03, 0xe8, b'x']));
        for cut in 0..=input.len() {
            let wire = Wire::websocket(Dialect::Nats, BytesMut::new()).expect("wire");
            let (seen, out, err) = run(wire, &input, cut);
            assert_eq!(
                seen[..2],
                ["Info", "msg abcd"],
                "cut {cut}: NATS PING answered by the wire, not shown"
            );
            assert!(seen[2].starts_with("Error("), "cut {cut}: {seen:?}");
            assert_eq!(
                client_frames(&out),
                [(ws::OP_PONG, b"z".to_vec()), (ws::OP_BINARY, b"PONG\r\n".to_vec())],
                "cut {cut}"
            );
            assert_eq!(err.as_deref(), Some("server sent a close frame 1000 \"x\""), "cut {cut}");
        }
    }

    #[test]
    fn crier_sse_at_every_split() {
        let mut input = Vec::new();
        for chunk in [
            &b"data: {\"channel\":\"bench.0\",\"data\":\"0000hello\"}\n\n"[..],
            b": keep-alive\n\n",
            b"data: {\"channel\":\"bench.0\",\"data\":\"0000a\"}\n\ndata: {\"channel\":\"bench.0\",\"data\":\"0000b\"}\n\n",
            b"event: error\ndata: ERR slow consumer\n\n",
        ] {
            input.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            input.extend_from_slice(chunk);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
        for cut in 0..=input.len() {
            let wire = Wire::sse(BytesMut::new(), sse::Dechunker::new(sse::Body::Chunked));
            let (seen, out, err) = run(wire, &input, cut);
            assert_eq!(
                seen,
                [
                    "msg 0000hello",
                    "msg 0000a",
                    "msg 0000b",
                    "Error([69, 82, 82, 32, 115, 108, 111, 119, 32, 99, 111, 110, 115, 117, 109, 101, 114])"
                ],
                "cut {cut}"
            );
            assert!(out.is_empty(), "cut {cut}: an event stream is one way");
            assert_eq!(
                err.as_deref(),
                Some("the server ended the event stream (last chunk)"),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn expected_deliveries_read_as_parsed_at_every_split() {
        // Deliveries of the expected size and of another size, a reply and
        // a ping between them: the fast path agrees with the parser.
        let head = |size| crate::targets::delivery_head(Dialect::Nats, "bench.0", size);
        let mut input = Vec::new();
        for (size, payload) in [(4, &b"abcd"[..]), (2, b"xy"), (4, b"efgh")] {
            input.extend_from_slice(&head(size));
            input.extend_from_slice(payload);
            input.extend_from_slice(b"\r\nPING\r\n");
        }
        for cut in 0..=input.len() {
            let mut wire = Wire::tcp(Dialect::Nats, BytesMut::new());
            wire.expect(Expected { head: head(4), size: 4 });
            let (seen, out, err) = run(wire, &input, cut);
            assert_eq!(seen, ["msg abcd", "msg xy", "msg efgh"], "cut at {cut}");
            assert_eq!((out, err), (b"PONG\r\n".repeat(3), None));
        }
    }

    #[test]
    fn expected_shard_channel_deliveries_read_as_parsed_at_every_split() {
        // A Redis Cluster master's smessage pushes: of the expected size,
        // of another size, on another channel, then a reply; the fast path
        // agrees with the parser wherever the read was cut.
        let head = |ch, size| crate::targets::delivery_head(Dialect::RespCluster, ch, size);
        let mut input = Vec::new();
        for (ch, payload) in [
            ("bench.4", &b"abcd"[..]),
            ("bench.4", b"xy"),
            ("bench.44", b"wxyz"),
            ("bench.4", b"efgh"),
        ] {
            input.extend_from_slice(&head(ch, payload.len()));
            input.extend_from_slice(payload);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        for cut in 0..=input.len() {
            let mut wire = Wire::tcp(Dialect::RespCluster, BytesMut::new());
            wire.expect(Expected { head: head("bench.4", 4), size: 4 });
            let (seen, out, err) = run(wire, &input, cut);
            assert_eq!(
                seen,
                ["msg abcd", "msg xy", "msg wxyz", "msg efgh", "Pong"],
                "cut at {cut}"
            );
            assert_eq!((out, err), (Vec::new(), None));
        }
    }

    #[test]
    fn stop_leaves_the_rest_buffered() {
        let mut wire = Wire::websocket(Dialect::Crier, BytesMut::new()).expect("wire");
        for p in [&b"CONFIRMED"[..], b"0000a", b"0000b"] {
            wire.read_buf().extend_from_slice(&server_frame(ws::OP_TEXT, true, p));
        }
        let mut out = Vec::new();
        let mut n = 0;
        wire.frames(&mut out, |_| {
            n += 1;
            false
        })
        .expect("frames");
        assert_eq!(n, 1);
        let mut rest = Vec::new();
        wire.frames(&mut out, |f| {
            rest.push(format!("{f:?}"));
            true
        })
        .expect("frames");
        assert_eq!(rest, ["Message([48, 48, 48, 48, 97])", "Message([48, 48, 48, 48, 98])"]);
    }

    #[test]
    fn command_lines() {
        let mut out = Vec::new();
        Wire::tcp(Dialect::Crier, BytesMut::new()).put_line(&mut out, b"SUBSCRIBE a");
        assert_eq!(out, b"SUBSCRIBE a\r\n");
        out.clear();
        let crier = Wire::websocket(Dialect::Crier, BytesMut::new()).expect("wire");
        crier.put_line(&mut out, b"SUBSCRIBE a");
        assert_eq!(client_frames(&out), [(ws::OP_TEXT, b"SUBSCRIBE a".to_vec())]);
        out.clear();
        let nats = Wire::websocket(Dialect::Nats, BytesMut::new()).expect("wire");
        nats.put_line(&mut out, b"SUB a 1");
        assert_eq!(client_frames(&out), [(ws::OP_BINARY, b"SUB a 1\r\n".to_vec())]);
        assert!(Wire::websocket(Dialect::Resp, BytesMut::new()).is_err());
        out.clear();
        let sse = Wire::sse(BytesMut::new(), sse::Dechunker::new(sse::Body::Chunked));
        sse.put_line(&mut out, b"SUBSCRIBE a");
        assert!(out.is_empty());
        assert!(sse.is_sse() && !sse.is_websocket());
    }
}
