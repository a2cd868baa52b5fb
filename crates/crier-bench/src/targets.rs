//! The wire dialects the bench speaks: crier (v2 pushes over TCP, v1
//! messages over WebSocket), Redis (RESP2; on a Redis Cluster, shard
//! channels) and NATS. Each has a small
//! incremental parser over a `BytesMut` (crier's is `crier::protocol::push`,
//! shared with the clients and the tests) and the request encoders, so one
//! generic subscriber / publisher loop drives all three (through a [`Wire`],
//! which adds the WebSocket framing where used).
//!
//! Parsers borrow from the read buffer and never allocate on the happy path:
//! a read of 64 KiB may hold hundreds of frames and all are handled before the
//! buffer is advanced once.

use anyhow::{Context, Result, bail};
use bytes::{BufMut, BytesMut};
use crier::protocol::push;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::payload::{self, Header};
use super::wire::Wire;

/// Which server the bench measures (`--target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Crier,
    Redis,
    Nats,
}

impl Target {
    /// The address the target listens on out of the box.
    pub fn default_addr(self) -> &'static str {
        match self {
            Target::Crier => "127.0.0.1:7070",
            Target::Redis => "127.0.0.1:6379",
            Target::Nats => "127.0.0.1:4222",
        }
    }

    /// Where its HTTP listener for WebSocket (and crier's SSE) is out of the
    /// box (crier: `--http`; NATS has no default, 8080 is the port its docs use).
    pub fn default_http_addr(self) -> Option<&'static str> {
        match self {
            Target::Crier => Some("127.0.0.1:7080"),
            Target::Redis => None,
            Target::Nats => Some("127.0.0.1:8080"),
        }
    }

    /// The request path of the WebSocket upgrade; `None`: no WebSocket.
    pub fn ws_path(self) -> Option<&'static str> {
        match self {
            Target::Crier => Some("/ws"),
            Target::Redis => None,
            Target::Nats => Some("/"),
        }
    }

    /// The request path of a Server-Sent Events stream (the channel goes
    /// in the query); `None`: no SSE.
    pub fn sse_path(self) -> Option<&'static str> {
        match self {
            Target::Crier => Some("/sse"),
            Target::Redis | Target::Nats => None,
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Target::Crier => Dialect::Crier,
            Target::Redis => Dialect::Resp,
            Target::Nats => Dialect::Nats,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Crier => "crier",
            Target::Redis => "redis",
            Target::Nats => "nats",
        }
    }
}

/// A wire protocol. Distinct from [`Target`] because crier with a Redis
/// backend may be published to over RESP (`--publish-redis`), and Redis
/// measured as a cluster (`--redis-cluster`) speaks RESP with shard channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Crier,
    Resp,
    /// RESP2 to one master of a Redis Cluster: `SSUBSCRIBE`, `SPUBLISH`,
    /// deliveries as `smessage` pushes.
    RespCluster,
    Nats,
}

/// One frame from a server, as far as the bench cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A delivered message's payload.
    Message(&'a [u8]),
    /// A positive reply to one command: crier `CONFIRMED`, Redis `:n` to
    /// PUBLISH or the `subscribe` acknowledgement.
    Ack,
    Pong,
    /// The server pings us (NATS): it must be answered with `PONG`.
    Ping,
    /// NATS's greeting.
    Info,
    /// An error reply or notice (`ERR ...`, `-ERR ...`).
    Error(&'a [u8]),
    /// crier's gap signal (`GAP ch`, `PGAP pat` in version 2): messages of
    /// that channel may be lost (its Redis connection was cut). Counted,
    /// so that a loss the server owned up to is told apart from one it did not.
    Gap,
    /// Anything else (`+OK`, unknown lines): ignored.
    Other,
}

/// A header line longer than this without a line end means the peer is not
/// speaking the dialect we think (or is broken): give up rather than buffer.
const MAX_LINE: usize = 64 * 1024;

/// Parses the frame at the start of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the frame and how many bytes it took.
pub fn next_frame(d: Dialect, buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    match d {
        Dialect::Crier => crier_frame(buf),
        Dialect::Resp | Dialect::RespCluster => resp_frame(buf),
        Dialect::Nats => nats_frame(buf),
    }
}

/// The line starting at `pos` (without its CRLF / LF) and the offset after it.
fn line_at(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>> {
    let rest = &buf[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(rel) => {
            let end = pos + rel;
            let line = match rest[..rel].last() {
                Some(b'\r') => &buf[pos..end - 1],
                _ => &buf[pos..end],
            };
            Ok(Some((line, end + 1)))
        }
        None if rest.len() > MAX_LINE => bail!("no line end within {MAX_LINE} bytes"),
        None => Ok(None),
    }
}

fn parse_len(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    s.iter().try_fold(0usize, |n, &c| c.is_ascii_digit().then(|| n * 10 + usize::from(c - b'0')))
}

/// The length in the last space-separated word of a header line.
fn trailing_len(line: &[u8]) -> Result<usize> {
    let word = line.rsplit(|&b| b == b' ').next().unwrap_or(line);
    parse_len(word).with_context(|| format!("bad length in {:?}", String::from_utf8_lossy(line)))
}

/// `n` payload bytes then CRLF, starting at `start`.
fn payload_at(buf: &[u8], start: usize, n: usize) -> Result<Option<(&[u8], usize)>> {
    let end = start + n;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        bail!("payload of {n} bytes not followed by CRLF");
    }
    Ok(Some((&buf[start..end], end + 2)))
}

fn crier_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let Some((frame, used)) = push::parse(buf)? else {
        if buf.len() > MAX_LINE && !buf.contains(&b'\n') {
            bail!("no line end within {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    let frame = match frame {
        push::Frame::Push { payload, .. } => Frame::Message(&buf[payload]),
        push::Frame::Line(line) => match &buf[line] {
            // No reply on a version 2 connection starts like this: it is a
            // broken push header, and skipping it would read its payload as lines.
            l if l.starts_with(b"MESSAGE ") || l.starts_with(b"PMESSAGE ") => {
                bail!("bad push header {:?}", show(l))
            }
            b"CONFIRMED" | b"ALREADY SUBSCRIBED" => Frame::Ack,
            b"PONG" => Frame::Pong,
            l if l.starts_with(b"ERR") => Frame::Error(l),
            l if l.starts_with(b"GAP ") || l.starts_with(b"PGAP ") => Frame::Gap,
            _ => Frame::Other,
        },
    };
    Ok(Some((frame, used)))
}

/// One message of crier's WebSocket transport in version 1 (the default):
/// a reply (text) or a delivery, the payload alone (text when UTF-8, else
/// binary). The bench's payloads are lower-case hex and `x`, so no delivery
/// reads as a reply.
#[inline]
pub fn crier_ws_message(text: bool, m: &[u8]) -> Frame<'_> {
    if !text {
        return Frame::Message(m);
    }
    match m {
        b"CONFIRMED" | b"ALREADY SUBSCRIBED" => Frame::Ack,
        b"PONG" => Frame::Pong,
        l if l.starts_with(b"ERR ") => Frame::Error(l),
        _ => Frame::Message(m),
    }
}

fn nats_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let Some((line, next)) = line_at(buf, 0)? else {
        return Ok(None);
    };
    if line.starts_with(b"MSG ") {
        let n = trailing_len(line)?;
        return Ok(payload_at(buf, next, n)?.map(|(p, used)| (Frame::Message(p), used)));
    }
    let frame = match line {
        b"PING" => Frame::Ping,
        b"PONG" => Frame::Pong,
        l if l.starts_with(b"INFO") => Frame::Info,
        l if l.starts_with(b"-ERR") => Frame::Error(l),
        _ => Frame::Other,
    };
    Ok(Some((frame, next)))
}

/// A RESP2 value that is not an array.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    Bulk(&'a [u8]),
    Int,
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Nil,
}

fn resp_item(buf: &[u8], pos: usize) -> Result<Option<(Item<'_>, usize)>> {
    let Some((line, next)) = line_at(buf, pos)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = line.split_first() else {
        bail!("empty RESP line");
    };
    Ok(match kind {
        b'$' if rest == b"-1" => Some((Item::Nil, next)),
        b'$' => {
            let n = parse_len(rest).context("bad RESP bulk length")?;
            payload_at(buf, next, n)?.map(|(p, used)| (Item::Bulk(p), used))
        }
        b':' => Some((Item::Int, next)),
        b'+' => Some((Item::Simple(rest), next)),
        b'-' => Some((Item::Error(line), next)),
        _ => bail!("unexpected RESP type byte {kind:#04x}"),
    })
}

fn resp_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    if buf.first() != Some(&b'*') {
        if buf.is_empty() {
            return Ok(None);
        }
        return Ok(resp_item(buf, 0)?.map(|(item, used)| {
            let frame = match item {
                // PUBLISH's count, or crier_publish's id.
                Item::Int | Item::Bulk(_) => Frame::Ack,
                Item::Error(e) => Frame::Error(e),
                Item::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => Frame::Pong,
                _ => Frame::Other,
            };
            (frame, used)
        }));
    }
    let Some((line, mut pos)) = line_at(buf, 0)? else {
        return Ok(None);
    };
    let n = parse_len(&line[1..]).context("bad RESP array length")?;
    if n > 4 {
        bail!("unexpected RESP array of {n} items");
    }
    let mut items = [Item::Nil; 4];
    for slot in items.iter_mut().take(n) {
        let Some((item, used)) = resp_item(buf, pos)? else {
            return Ok(None);
        };
        *slot = item;
        pos = used;
    }
    let frame = match (n, items[0]) {
        (3, Item::Bulk(k)) if k == b"message" || k == b"smessage" => match items[2] {
            Item::Bulk(p) => Frame::Message(p),
            _ => bail!("RESP message without a bulk payload"),
        },
        (4, Item::Bulk(k)) if k == b"pmessage" => match items[3] {
            Item::Bulk(p) => Frame::Message(p),
            _ => bail!("RESP pmessage without a bulk payload"),
        },
        (_, Item::Bulk(k)) if k == b"subscribe" || k == b"psubscribe" || k == b"ssubscribe" => {
            Frame::Ack
        }
        // A cluster drops a shard channel's subscribers when its slot moves
        // away: nothing more will arrive on this connection, which must not
        // pass for a quiet channel.
        (_, Item::Bulk(k)) if k == b"sunsubscribe" => Frame::Error(k),
        (_, Item::Bulk(k)) if k == b"pong" => Frame::Pong,
        _ => Frame::Other,
    };
    Ok(Some((frame, pos)))
}

/// Appends a RESP array of bulk strings (a Redis command) to `out`.
fn resp_command(out: &mut Vec<u8>, words: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
}

/// A server's error text for a message: lossy UTF-8, cut to a sane length
/// (Redis's protected-mode refusal alone is ~1 KiB).
pub fn show(text: &[u8]) -> String {
    const MAX: usize = 160;
    let s = String::from_utf8_lossy(text);
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.into_owned(),
    }
}

/// The bench's channel (NATS subject) names.
pub fn channel_name(i: usize) -> String {
    format!("bench.{i}")
}

/// What `expect` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Ack,
    Pong,
    Info,
}

/// Reads until `count` frames of kind `want` arrived; frames after them stay
/// buffered. Server pings are answered, error replies fail. Callers bound
/// it with a timeout.
pub async fn expect(
    stream: &mut TcpStream,
    wire: &mut Wire,
    want: Want,
    mut count: usize,
) -> Result<()> {
    let mut out = Vec::new();
    while count > 0 {
        let mut refused = None;
        wire.frames(&mut out, |frame| {
            match frame {
                Frame::Ack if want == Want::Ack => count -= 1,
                Frame::Pong if want == Want::Pong => count -= 1,
                Frame::Info if want == Want::Info => count -= 1,
                Frame::Error(e) => {
                    refused = Some(show(e));
                    return false;
                }
                _ => {}
            }
            count > 0
        })?;
        if let Some(e) = refused {
            bail!("server replied {e:?}");
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if count > 0 {
            let buf = wire.read_buf();
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                bail!("server closed the connection during the handshake");
            }
        }
    }
    Ok(())
}

const NATS_CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}";

/// What precedes the payload of a `size`-byte message on `channel` as the
/// dialect delivers it to a subscriber of [`subscribe`] over TCP (crier in
/// version 2).
pub fn delivery_head(d: Dialect, channel: &str, size: usize) -> Vec<u8> {
    match d {
        Dialect::Crier => format!("MESSAGE {channel} {size}\r\n"),
        Dialect::Resp => resp_head("message", channel, size),
        Dialect::RespCluster => resp_head("smessage", channel, size),
        Dialect::Nats => format!("MSG {channel} 1 {size}\r\n"),
    }
    .into_bytes()
}

/// A three-item RESP array up to its last bulk's length: `word`, `channel`,
/// then a `size`-byte bulk (a `PUBLISH`, or a `message` push, without its payload).
fn resp_head(word: &str, channel: &str, size: usize) -> String {
    format!("*3\r\n${}\r\n{word}\r\n${}\r\n{channel}\r\n${size}\r\n", word.len(), channel.len())
}

/// Subscribes a fresh connection to `channel` and returns once the server
/// has confirmed it, so that every message published afterwards must arrive.
/// crier over TCP switches to version 2 pushes (`HELLO 2`); over WebSocket
/// it keeps version 1, where a delivery is one message holding the payload.
/// An event stream is already subscribed: its request named the channel and
/// its response head, read by [`super::sse::handshake`], confirmed it.
pub async fn subscribe(
    stream: &mut TcpStream,
    wire: &mut Wire,
    d: Dialect,
    channel: &str,
) -> Result<()> {
    if wire.is_sse() {
        return Ok(());
    }
    let mut req = Vec::with_capacity(128);
    let subscribe = format!("SUBSCRIBE {channel}");
    match d {
        Dialect::Crier if wire.is_websocket() => {
            wire.put_line(&mut req, subscribe.as_bytes());
            stream.write_all(&req).await?;
            expect(stream, wire, Want::Ack, 1).await
        }
        Dialect::Crier => {
            wire.put_line(&mut req, b"HELLO 2");
            wire.put_line(&mut req, subscribe.as_bytes());
            stream.write_all(&req).await?;
            expect(stream, wire, Want::Ack, 2).await
        }
        Dialect::Resp | Dialect::RespCluster => {
            let command: &[u8] =
                if d == Dialect::RespCluster { b"SSUBSCRIBE" } else { b"SUBSCRIBE" };
            resp_command(&mut req, &[command, channel.as_bytes()]);
            stream.write_all(&req).await?;
            expect(stream, wire, Want::Ack, 1).await
        }
        Dialect::Nats => {
            expect(stream, wire, Want::Info, 1).await?;
            wire.put_line(&mut req, NATS_CONNECT);
            // The PONG to this PING proves the SUB before it was processed.
            wire.put_line(&mut req, format!("SUB {channel} 1").as_bytes());
            wire.put_line(&mut req, b"PING");
            stream.write_all(&req).await?;
            expect(stream, wire, Want::Pong, 1).await
        }
    }
}

/// Readies a publisher connection and checks the server answers on it.
pub async fn publisher_hello(stream: &mut TcpStream, wire: &mut Wire, d: Dialect) -> Result<()> {
    match d {
        Dialect::Crier => stream.write_all(b"PING\r\n").await?,
        Dialect::Resp | Dialect::RespCluster => stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?,
        Dialect::Nats => {
            expect(stream, wire, Want::Info, 1).await?;
            let mut req = NATS_CONNECT.to_vec();
            req.extend_from_slice(b"\r\nPING\r\n");
            stream.write_all(&req).await?;
        }
    }
    expect(stream, wire, Want::Pong, 1).await
}

/// Encodes publish requests: the per-channel prefix is computed once, so a
/// message costs two memcpys and 40 hex digits.
pub struct Encoder {
    prefixes: Vec<Box<[u8]>>,
    /// After the payload: `crier_publish`'s size and TTL arguments.
    suffix: &'static [u8],
    size: usize,
}

impl Encoder {
    /// With `function`, RESP publishes call crier's `crier_publish`.
    pub fn new(d: Dialect, channels: usize, size: usize, function: bool) -> Self {
        let prefixes = (0..channels)
            .map(|i| {
                let ch = channel_name(i);
                let p = match d {
                    Dialect::Crier => format!("PUBLISH {ch} "),
                    Dialect::Resp if function => {
                        let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
                        let (meta, stream) =
                            (format!("crier:{{{ch}}}:m"), format!("crier:{{{ch}}}:s"));
                        format!(
                            "*9\r\n{}{}{}{}{}{}${size}\r\n",
                            bulk("FCALL"),
                            bulk("crier_publish"),
                            bulk("2"),
                            bulk(&meta),
                            bulk(&stream),
                            bulk(&ch),
                        )
                    }
                    Dialect::Resp => resp_head("PUBLISH", &ch, size),
                    // To the channel's master (the publisher's connection).
                    Dialect::RespCluster => resp_head("SPUBLISH", &ch, size),
                    Dialect::Nats => format!("PUB {ch} {size}\r\n"),
                };
                p.into_bytes().into_boxed_slice()
            })
            .collect();
        let suffix: &[u8] =
            if function && d == Dialect::Resp { b"$4\r\n1000\r\n$7\r\n3600000\r\n" } else { b"" };
        Encoder { prefixes, suffix, size }
    }

    /// Appends one publish request for `channel` to `out`.
    pub fn encode(&self, out: &mut BytesMut, channel: usize, h: Header) {
        out.put_slice(&self.prefixes[channel]);
        payload::write(out, h, self.size);
        out.put_slice(b"\r\n");
        out.put_slice(self.suffix);
    }

    /// Bytes of the longest request, to size write batches.
    pub fn max_request_len(&self) -> usize {
        self.prefixes.iter().map(|p| p.len()).max().unwrap_or(0) + self.size + 2 + self.suffix.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: Dialect, mut buf: &[u8]) -> Vec<Frame<'_>> {
        let mut out = Vec::new();
        while let Some((f, n)) = next_frame(d, buf).expect("parse") {
            out.push(f);
            buf = &buf[n..];
        }
        out
    }

    #[test]
    fn crier_pushes_and_replies() {
        let b = b"CONFIRMED\r\nMESSAGE bench.0 5\r\nab\r\nc\r\nGAP bench.0\r\nPGAP b*\r\n\
                  ERR slow consumer\r\nMESSAGE x 3\r\nab";
        assert_eq!(
            all(Dialect::Crier, b),
            vec![
                Frame::Ack,
                Frame::Message(b"ab\r\nc"),
                Frame::Gap,
                Frame::Gap,
                Frame::Error(b"ERR slow consumer")
            ]
        );
        assert!(next_frame(Dialect::Crier, b"MESSAGE x 3\r\nabcXY").is_err());
        assert!(next_frame(Dialect::Crier, b"MESSAGE x abc\r\nabc\r\n").is_err());
    }

    #[test]
    fn resp_pushes_and_replies() {
        let b = b"*3\r\n$9\r\nsubscribe\r\n$7\r\nbench.0\r\n:1\r\n\
                  *3\r\n$7\r\nmessage\r\n$7\r\nbench.0\r\n$4\r\nhi\r\n\r\n\
                  :3\r\n-ERR nope\r\n+PONG\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$9\r\nab";
        assert_eq!(
            all(Dialect::Resp, b),
            vec![
                Frame::Ack,
                Frame::Message(b"hi\r\n"),
                Frame::Ack,
                Frame::Error(b"-ERR nope"),
                Frame::Pong
            ]
        );
    }

    #[test]
    fn resp_shard_channel_pushes_and_replies() {
        // What a cluster master sends a shard channel's subscriber (RESP2).
        let b = b"*3\r\n$10\r\nssubscribe\r\n$7\r\nbench.0\r\n:1\r\n\
                  *3\r\n$8\r\nsmessage\r\n$7\r\nbench.0\r\n$4\r\nhi\r\n\r\n\
                  -MOVED 15082 127.0.0.1:7203\r\n\
                  *3\r\n$12\r\nsunsubscribe\r\n$7\r\nbench.0\r\n:0\r\n\
                  *3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$9\r\nab";
        assert_eq!(
            all(Dialect::RespCluster, b),
            vec![
                Frame::Ack,
                Frame::Message(b"hi\r\n"),
                Frame::Error(b"-MOVED 15082 127.0.0.1:7203"),
                Frame::Error(b"sunsubscribe"),
            ]
        );
        assert!(
            next_frame(Dialect::RespCluster, b"*3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n:4\r\n").is_err(),
            "an smessage without a bulk payload is broken"
        );
        // Cut anywhere, an smessage is incomplete, never another frame.
        let full = b"*3\r\n$8\r\nsmessage\r\n$7\r\nbench.3\r\n$5\r\nabcde\r\n";
        for cut in 0..full.len() {
            assert_eq!(next_frame(Dialect::RespCluster, &full[..cut]).ok(), Some(None), "{cut}");
        }
        assert_eq!(
            next_frame(Dialect::RespCluster, full).ok(),
            Some(Some((Frame::Message(b"abcde"), full.len())))
        );
    }

    #[test]
    fn the_delivery_head_is_what_each_parser_reads_as_a_message() {
        for d in [Dialect::Crier, Dialect::Resp, Dialect::RespCluster, Dialect::Nats] {
            let mut b = delivery_head(d, "bench.12", 5);
            b.extend_from_slice(b"abcde\r\n");
            assert_eq!(all(d, &b), vec![Frame::Message(b"abcde")], "{d:?}");
        }
    }

    #[test]
    fn nats_frames() {
        let b = b"INFO {\"x\":1}\r\n+OK\r\nPING\r\nMSG bench.1 1 4\r\nabcd\r\nMSG a 1 r 2\r\nxy\r\nPONG\r\n-ERR 'Slow Consumer'\r\nMSG a 1 9\r\n";
        assert_eq!(
            all(Dialect::Nats, b),
            vec![
                Frame::Info,
                Frame::Other,
                Frame::Ping,
                Frame::Message(b"abcd"),
                Frame::Message(b"xy"),
                Frame::Pong,
                Frame::Error(b"-ERR 'Slow Consumer'")
            ]
        );
    }

    #[test]
    fn crier_websocket_messages() {
        assert_eq!(crier_ws_message(true, b"CONFIRMED"), Frame::Ack);
        assert_eq!(crier_ws_message(true, b"ALREADY SUBSCRIBED"), Frame::Ack);
        assert_eq!(crier_ws_message(true, b"PONG"), Frame::Pong);
        assert_eq!(
            crier_ws_message(true, b"ERR slow consumer"),
            Frame::Error(b"ERR slow consumer")
        );
        assert_eq!(crier_ws_message(true, b"00000001abc"), Frame::Message(b"00000001abc"));
        // A binary message is always a delivery, whatever it holds.
        assert_eq!(crier_ws_message(false, b"CONFIRMED"), Frame::Message(b"CONFIRMED"));
        assert_eq!(crier_ws_message(true, b""), Frame::Message(b""));
    }

    #[test]
    fn encoders() {
        let h = Header { publisher: 1, seq: 2, sent_ns: 3 };
        for d in [Dialect::Crier, Dialect::Resp, Dialect::RespCluster, Dialect::Nats] {
            let e = Encoder::new(d, 2, 48, false);
            let mut b = BytesMut::new();
            e.encode(&mut b, 1, h);
            assert_eq!(b.len(), e.max_request_len());
            let text = String::from_utf8_lossy(&b).into_owned();
            assert!(text.contains("bench.1"), "{text}");
            assert!(text.ends_with("xxxxxxxx\r\n"), "{text}");
        }
        let mut b = BytesMut::new();
        Encoder::new(Dialect::RespCluster, 1, 40, false).encode(&mut b, 0, h);
        assert!(b.starts_with(b"*3\r\n$8\r\nSPUBLISH\r\n$7\r\nbench.0\r\n$40\r\n"), "{b:?}");
    }
}
