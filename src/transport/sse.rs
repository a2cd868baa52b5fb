//! Server-Sent Events (`GET /sse?channel=a&pattern=p`): a one-way
//! subscription. The response headers go out only once every subscription
//! is confirmed, so a browser's `open` event means `CONFIRMED`; then each
//! delivery is one `data:` event holding the JSON form of the message.
//!
//! The stream is the session's writer: it drains the outbox (a `Deferred`
//! sink: only hyper writes this socket) into body chunks, one per batch. A
//! comment line goes out after `KEEPALIVE` of silence so that proxies keep
//! the stream open. Past `--max-pending` the connection is cut off: if the
//! stream is still being read it ends with an `error` event carrying
//! `ERR slow consumer`; if the client stopped reading (hyper no longer polls
//! the stream), the connection is dropped at once (see [`Abort`]).
//!
//! Resuming (§9): `Last-Event-ID` holds one id, and a stream has many
//! channels, so an event's `id:` is the stream's, not the message's: the
//! position of every channel of the stream (see [`Ids`] for the format).
//! A message is encoded once for all its SSE subscribers, with its own id,
//! so each stream follows its channels' positions in the frames it drains
//! and writes its own `id:` line in place of the frame's.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::expiry::Expiry;
use crate::broker::{Broker, Topic};
use crate::history::Position;
use crate::http::query::Names;
use crate::http::{Connection, Credentials, Web, error};
use crate::metrics::{self, Transport};
use crate::outbox::{self, Batch, Next, Outbox, Sink};
use crate::protocol::reply::{Error, Reply};
use crate::protocol::{Framing, json};
use crate::server::closed::Closed;
use crate::session::Session;

/// Silence after which a comment line is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The outbox's sink: nothing is written by producers; a cut-off drops the
/// HTTP connection.
struct Abort(CancellationToken);

impl Sink for Abort {
    fn try_write(&self, _frames: &[IoSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn cut_off(&self) {
        self.0.cancel();
    }
}

pub async fn stream<B: Broker>(
    State(web): State<Web<B>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    Extension(connection): Extension<Arc<Connection>>,
) -> Response {
    let names = match Names::parse(query.as_deref(), true) {
        Ok(names) => names,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let credentials = match Credentials::check(&web.config, &headers, names.token.as_deref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return *refusal,
    };
    // Where a reconnecting EventSource left off: its header, or the URL.
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| Bytes::copy_from_slice(value.as_bytes()))
        .or(names.last_event_id);
    let mut channels = names.channels;
    if channels.is_empty() && names.patterns.is_empty() {
        channels.push(web.config.default_channel.clone());
    }
    // A name given twice is subscribed, replayed and named in ids once.
    let mut seen = HashSet::with_capacity(channels.len());
    channels.retain(|channel| seen.insert(channel.clone()));
    let patterns: Vec<Topic> = names.patterns.into_iter().map(Topic::pattern).collect();
    let abort = Abort(connection.abort.clone());
    let outbox =
        Outbox::new(outbox::next_id(), web.config.max_pending, Framing::EventStream, abort);
    let mut session = Session::new(
        Arc::clone(&web.broker),
        Arc::clone(&web.config),
        Arc::clone(&outbox) as Arc<Outbox>,
        Framing::EventStream,
        Arc::clone(&credentials.permissions),
    );
    let mut ids = Ids::new(&channels);
    // Each channel resumes from its own position in the id, if the id names
    // one it can be mapped to; the others cannot be recovered: they get
    // `event: reset`. Without an id: a plain subscription, whose confirmed
    // positions are where a later resume starts.
    let resuming = last_event_id.is_some();
    let subscribed = match last_event_id.as_deref().map(|id| ids.since(id)) {
        Some(since) => {
            let resumed = channels.iter().cloned().zip(since.iter().cloned()).collect();
            session.resume_all(resumed).await.map(|replies| {
                let mut lost = Vec::new();
                let positions = replies
                    .into_iter()
                    .zip(since)
                    .zip(&channels)
                    .map(|((reply, since), channel)| match reply {
                        // The replayed messages move it on from there.
                        Reply::Recovered(_) => since,
                        Reply::NotRecovered(now) => {
                            lost.push(channel.clone());
                            Position::parse(&now).ok().flatten()
                        }
                        _ => None,
                    })
                    .collect();
                (positions, lost)
            })
        }
        None => session
            .subscribe_all(channels.iter().cloned().map(Topic::channel).collect())
            .await
            .map(|positions| (positions, Vec::new())),
    };
    // Patterns have no position: on a resume they are reset too.
    let pattern_names: Vec<Bytes> = patterns.iter().map(|p| p.name.clone()).collect();
    let subscribed = match subscribed {
        Ok((positions, mut lost)) => session.subscribe_all(patterns).await.map(|_| {
            if resuming {
                lost.extend(pattern_names);
            }
            (positions, lost)
        }),
        Err(reason) => Err(reason),
    };
    let lost = match subscribed {
        Ok((positions, lost)) => {
            ids.start(positions);
            lost
        }
        Err(reason) => {
            let status = match reason {
                Error::Forbidden => return credentials.forbidden(&web.config),
                Error::InvalidChannel
                | Error::TooManySubscriptions
                | Error::PatternsUnsupported => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return error(status, reason);
        }
    };
    metrics::get().connection_opened(Transport::Sse);
    let first = ids.first(&lost);
    let events = Events {
        first,
        ids,
        session,
        outbox,
        closed: Closed::ClientClosed,
        ended: false,
        expiry: Expiry::default(),
    };
    let body = futures_util::stream::unfold((events, web.closing), |(mut events, closing)| async {
        let chunk = events.next(&closing).await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), (events, closing)))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (headers, Body::from_stream(body)).into_response()
}

/// One SSE client: its session (dropped with the stream, which ends its
/// subscriptions) and its outbox.
struct Events<B: Broker> {
    /// Sent before anything else: the `event: reset` of a resume that could
    /// not recover every channel, or the stream's first id.
    first: Option<Bytes>,
    /// The stream's `id:`, which the events carry.
    ids: Ids,
    /// Its `Drop` ends the subscriptions; its token's expiry ends the stream.
    session: Session<B>,
    outbox: Arc<Outbox<Abort>>,
    closed: Closed,
    ended: bool,
    /// The stream simply ends when the token expires.
    expiry: Expiry,
}

impl<B: Broker> Events<B> {
    /// The next body chunk; `None` ends the stream.
    async fn next(&mut self, closing: &tokio_util::sync::CancellationToken) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut batch = Batch::default();
        self.expiry.follow(self.session.expires());
        let next = tokio::select! {
            _ = std::future::poll_fn(|cx| self.expiry.poll(cx)) => {
                self.closed = Closed::TokenExpired;
                return None;
            }
            next = self.outbox.next(&mut batch) => next,
            _ = tokio::time::sleep(KEEPALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            _ = closing.cancelled() => {
                self.closed = Closed::Shutdown;
                return None;
            }
        };
        match next {
            Next::Write => {
                let chunk = self.ids.chunk(&batch);
                self.outbox.written(batch.bytes());
                metrics::SENT_BYTES.add(chunk.len() as u64);
                Some(chunk)
            }
            Next::Closed => None,
            Next::CutOff => {
                self.closed = Closed::SlowConsumer;
                self.ended = true;
                Some(Bytes::from(format!("event: error\ndata: ERR {}\n\n", Error::SlowConsumer)))
            }
        }
    }
}

impl<B: Broker> Drop for Events<B> {
    fn drop(&mut self) {
        if self.outbox.was_cut_off() {
            self.closed = Closed::SlowConsumer;
        }
        metrics::get().connection_closed(Transport::Sse, self.closed);
    }
}

/// The `id:` of a stream's events: where each of its channels is, so that
/// one `Last-Event-ID` resumes them all. Written `<check>.<entry>.<entry>…`:
/// - `<check>`: 8 lowercase hex digits naming the stream's channel list
///   ([`check`]), so that an id is only ever read against the channels it
///   was written for;
/// - one entry per distinct `channel=` of the stream, in the order of the
///   URL (which `EventSource` reuses as is): the channel's position
///   `<epoch>:<offset>` (the id of the last message the stream delivered,
///   or the position it was confirmed at before any), or `-` where none is
///   known (a channel without history).
///
/// `.` appears in no epoch or offset, and the id has one entry per channel
/// whatever arrives: it never grows. Patterns have no entry (they cannot be
/// resumed). Example, `?channel=news&channel=chat&channel=scores` where
/// `chat` keeps no history: `id: 7189d499.k3x9q0zb:42.-.p0w7m2ya:0`.
struct Ids {
    /// Whether events carry an `id:` line: once a channel of the stream has
    /// a position, or a message came with one (through a pattern). Without
    /// history the stream is as it always was: no ids.
    on: bool,
    check: [u8; 8],
    channels: Vec<Tracked>,
    /// The id, rebuilt when a position moved (`stale`).
    text: Vec<u8>,
    stale: bool,
}

struct Tracked {
    /// The name as the shared frames' JSON writes it; `None` when another
    /// channel of the stream is written the same way (names that differ only
    /// in bytes that are not UTF-8): its position cannot be followed, so it
    /// stays unknown, and is reset on a resume rather than replayed wrong.
    key: Option<Vec<u8>>,
    position: Option<Position>,
}

impl Ids {
    /// For a stream of `channels` (distinct), no position known yet.
    fn new(channels: &[Bytes]) -> Ids {
        let keys: Vec<Vec<u8>> = channels.iter().map(|name| json::channel_key(name)).collect();
        // Counted in one pass: a URL may name thousands of channels.
        let mut counts: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        for key in &keys {
            *counts.entry(key).or_insert(0) += 1;
        }
        let tracked = keys
            .iter()
            .map(|key| Tracked {
                key: (counts[&key[..]] == 1).then(|| key.clone()),
                position: None,
            })
            .collect();
        Ids { on: false, check: check(channels), channels: tracked, text: Vec::new(), stale: true }
    }

    /// Each channel's position in a `Last-Event-ID`, in order; `None` where
    /// it names none or cannot be mapped. An id written for another list of
    /// channels (or malformed, or of the one-position form crier used to
    /// write) maps nothing: every channel is then reset, never failed.
    fn since(&self, id: &[u8]) -> Vec<Option<Position>> {
        let mut entries = id.trim_ascii().split(|&b| b == b'.');
        if entries.next() == Some(&self.check[..]) {
            let positions: Vec<Option<Position>> =
                entries.map(|entry| Position::parse(entry).ok().flatten()).collect();
            if positions.len() == self.channels.len() {
                return positions;
            }
        }
        vec![None; self.channels.len()]
    }

    /// Where each channel starts: the positions its subscription was
    /// confirmed at, or resumed from.
    fn start(&mut self, positions: Vec<Option<Position>>) {
        for (tracked, position) in self.channels.iter_mut().zip(positions) {
            if tracked.key.is_some() {
                tracked.position = position;
            }
        }
        self.on = self.channels.iter().any(|tracked| tracked.position.is_some());
        self.stale = true;
    }

    /// The stream's first chunk: the `event: reset` naming `lost` when
    /// there is one, else the id alone when the stream has ids (an event
    /// without data fires nothing in a browser, but sets its last event id:
    /// a stream cut before its first message still resumes from where it was
    /// confirmed).
    fn first(&mut self, lost: &[Bytes]) -> Option<Bytes> {
        let mut chunk = BytesMut::new();
        if !lost.is_empty() {
            // The id line, then the reset event's own lines: one event.
            self.write(&mut chunk);
            let names: Vec<&[u8]> = lost.iter().map(|name| &name[..]).collect();
            chunk.put_slice(&json::reset(&names));
        } else if self.on {
            self.write(&mut chunk);
            chunk.put_u8(b'\n');
        }
        (!chunk.is_empty()).then(|| chunk.freeze())
    }

    /// A batch's events as one body chunk, each with the stream's id in
    /// place of its message's own. A stream without ids copies the frames as
    /// they are, looking at nothing but their first bytes.
    fn chunk(&mut self, batch: &Batch) -> Bytes {
        let mut extra = 0;
        if self.on {
            self.rebuild();
            extra = batch.frames().count() * (self.text.len() + 5);
        }
        let mut chunk = BytesMut::with_capacity(batch.bytes() + extra);
        for frame in batch.frames() {
            if !self.on && !frame.starts_with(b"id: ") {
                chunk.put_slice(frame);
                continue;
            }
            match json::Event::read(frame) {
                Some(event) => {
                    self.follow(&event);
                    self.write(&mut chunk);
                    chunk.put_slice(event.rest);
                }
                None => chunk.put_slice(frame),
            }
        }
        chunk.freeze()
    }

    /// Moves the position of the event's channel to the event's id. Only
    /// forward within an epoch (a message queued before the position was
    /// taken cannot move it back); another epoch replaces it. Deliveries
    /// through a pattern move nothing: the channel's own delivery of the
    /// same message does, if the stream names the channel.
    fn follow(&mut self, event: &json::Event<'_>) {
        let Some(id) = event.id else { return };
        self.on = true;
        if event.through_pattern {
            return;
        }
        let Some((epoch, offset)) = split_id(id) else { return };
        let Some(tracked) =
            self.channels.iter_mut().find(|tracked| tracked.key.as_deref() == Some(event.channel))
        else {
            return;
        };
        match &mut tracked.position {
            Some(position) if position.epoch == epoch => {
                if offset > position.offset {
                    position.offset = offset;
                    self.stale = true;
                }
            }
            other => {
                *other = Some(Position { epoch: Bytes::copy_from_slice(epoch), offset });
                self.stale = true;
            }
        }
    }

    /// `id: <the id>` and its line end.
    fn write(&mut self, chunk: &mut BytesMut) {
        self.rebuild();
        chunk.put_slice(b"id: ");
        chunk.put_slice(&self.text);
        chunk.put_u8(b'\n');
    }

    fn rebuild(&mut self) {
        if !self.stale {
            return;
        }
        self.stale = false;
        self.text.clear();
        self.text.extend_from_slice(&self.check);
        let mut digits = itoa::Buffer::new();
        for tracked in &self.channels {
            self.text.push(b'.');
            match &tracked.position {
                Some(position) => {
                    self.text.extend_from_slice(&position.epoch);
                    self.text.push(b':');
                    self.text.extend_from_slice(digits.format(position.offset).as_bytes());
                }
                None => self.text.push(b'-'),
            }
        }
    }
}

/// The check of a list of channels: FNV-1a (32 bits) over each name after
/// its length, in hex. It makes an id name the list it was written for, so
/// that a reconnection with other channels, or the same in another order,
/// resumes no channel from another's position: epochs are per channel, but
/// nothing promises they never coincide. The same on every node and every
/// run (no random seed), so a stream may reconnect to any node.
fn check(channels: &[Bytes]) -> [u8; 8] {
    let mut hash: u32 = 0x811c_9dc5;
    for name in channels {
        for &byte in (name.len() as u32).to_be_bytes().iter().chain(name.iter()) {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
    let mut hex = [0; 8];
    for (at, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(hash >> (28 - 4 * at)) as usize & 0xf];
    }
    hex
}

/// A message's id as the frames carry it, `<epoch>:<offset>`, without
/// allocating (this runs for every event of a stream with ids).
fn split_id(id: &[u8]) -> Option<(&[u8], u64)> {
    let colon = memchr::memrchr(b':', id)?;
    let (epoch, offset) = (&id[..colon], &id[colon + 1..]);
    if epoch.is_empty() || offset.is_empty() || offset.len() > 20 {
        return None;
    }
    let offset = offset.iter().try_fold(0u64, |n, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    Some((epoch, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Bytes> {
        list.iter().map(|name| Bytes::copy_from_slice(name.as_bytes())).collect()
    }

    fn at(epoch: &str, offset: u64) -> Option<Position> {
        Some(Position { epoch: Bytes::copy_from_slice(epoch.as_bytes()), offset })
    }

    fn frame(channel: &[u8], pattern: Option<&[u8]>, id: Option<&[u8]>) -> Bytes {
        json::event(&json::push(pattern, channel, b"x", id), id)
    }

    fn text(ids: &mut Ids) -> String {
        ids.rebuild();
        String::from_utf8(ids.text.clone()).expect("ASCII")
    }

    #[test]
    fn the_id_names_every_channel_and_reads_back() {
        let channels = names(&["s", "plain", "t"]);
        let mut ids = Ids::new(&channels);
        ids.start(vec![at("ea", 3), None, at("eb", 0)]);
        let check = String::from_utf8(check(&channels).to_vec()).expect("hex");
        assert_eq!(text(&mut ids), format!("{check}.ea:3.-.eb:0"));
        // Forward only, per channel; patterns and other channels move nothing.
        for (channel, pattern, id) in [
            (&b"t"[..], None, &b"eb:1"[..]),
            (b"s", None, b"ea:2"),
            (b"s", Some(&b"*"[..]), b"ea:9"),
            (b"other", None, b"ec:5"),
        ] {
            let frame = frame(channel, pattern, Some(id));
            ids.follow(&json::Event::read(&frame).expect("an event"));
        }
        assert_eq!(text(&mut ids), format!("{check}.ea:3.-.eb:1"));
        let id = text(&mut ids);
        assert_eq!(ids.since(id.as_bytes()), vec![at("ea", 3), None, at("eb", 1)]);
        // Another epoch replaces the position.
        ids.follow(&json::Event::read(&frame(b"s", None, Some(b"ez:1"))).expect("an event"));
        assert_eq!(text(&mut ids), format!("{check}.ez:1.-.eb:1"));
        // Another list of channels, a mangled id, the old form: nothing maps.
        let reordered = Ids::new(&names(&["t", "plain", "s"]));
        assert_eq!(reordered.since(id.as_bytes()), vec![None; 3]);
        for bad in [&b""[..], b"garbage", b"ea:3", b"...", &id.as_bytes()[..id.len() - 5]] {
            assert_eq!(ids.since(bad), vec![None; 3], "{}", bad.escape_ascii());
        }
        // One bad entry: that channel alone.
        let one_bad = format!("{check}.ea:3.-.eb:x");
        assert_eq!(ids.since(one_bad.as_bytes()), vec![at("ea", 3), None, None]);
    }

    #[test]
    fn the_check_is_the_documented_one() {
        // docs/protocol.md's examples.
        assert_eq!(&check(&names(&["news", "chat", "scores"])), b"7189d499");
        assert_eq!(&check(&names(&["news"])), b"8685d252");
    }

    #[test]
    fn a_stream_without_history_passes_frames_through() {
        let mut ids = Ids::new(&names(&["a"]));
        ids.start(vec![None]);
        assert_eq!(ids.first(&[]), None);
        let mut batch = Batch::default();
        batch.push(frame(b"a", None, None));
        assert_eq!(&ids.chunk(&batch)[..], &frame(b"a", None, None)[..]);
        // A message with an id (here through a pattern) turns ids on.
        batch.push(frame(b"h", Some(b"*"), Some(b"e:1")));
        let check = String::from_utf8(check(&names(&["a"])).to_vec()).expect("hex");
        let chunk = String::from_utf8(ids.chunk(&batch).to_vec()).expect("UTF-8");
        assert_eq!(
            chunk,
            format!(
                "data: {{\"channel\":\"a\",\"data\":\"x\"}}\n\n\
                 id: {check}.-\ndata: {{\"channel\":\"h\",\"pattern\":\"*\",\"id\":\"e:1\",\"data\":\"x\"}}\n\n"
            )
        );
    }

    #[test]
    fn names_written_alike_are_not_followed() {
        let mut ids = Ids::new(&[Bytes::from_static(b"a\xff"), Bytes::from_static(b"a\xfe")]);
        ids.start(vec![at("e", 1), at("f", 1)]);
        assert!(!ids.on);
        ids.follow(&json::Event::read(&frame(b"a\xff", None, Some(b"e:2"))).expect("an event"));
        assert!(ids.channels.iter().all(|tracked| tracked.position.is_none()));
        assert_eq!(split_id(b"k3:18446744073709551616"), None);
        assert_eq!(split_id(b"k3:42"), Some((&b"k3"[..], 42)));
    }
}
