//! The subscription connection: one task owns it, writes the node's
//! `SUBSCRIBE`s and reads every message Redis sends the node.
//!
//! The connection speaks RESP3, where a subscribed connection still takes
//! any command, and everything Redis sends comes back in one ordered stream:
//! acknowledgements, messages, replies. The task relies on that order:
//! - a waiting subscriber is answered when Redis's acknowledgement arrives,
//!   so a message published after a client saw `CONFIRMED` is never lost;
//! - a channel that keeps history is joined by reading its position (and,
//!   for a `RESUME`, the messages after the client's) on this connection:
//!   messages before the reply are in what it read, messages after it are
//!   not, so the task adds the client to the registry right at the reply,
//!   after queueing what it read, and nothing is missed or sent twice;
//! - after a reconnect, each history channel is read from the last message
//!   this node delivered; messages that arrive before that reply are in it.
//!
//! A reader task reads from Redis ahead of the fan-out (up to
//! `--redis-read-ahead` bytes not yet handled), so that a burst Redis sends
//! faster than the node delivers waits here rather than in Redis's output
//! buffer, where it would get the node cut off. Messages are parsed in place
//! from the bytes read and delivered in batches: one flush per chunk.
//!
//! When the connection is lost, subscribers of channels without history and
//! of patterns are told at once that messages may be lost (`Outbox::gap`);
//! channels with history are refilled after the reconnect, or told if that
//! cannot be done. Meanwhile new subscriptions fail with `ERR backend
//! unavailable`; the task reconnects with capped, jittered backoff.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Health;
use super::connect::{REDIS_TIMEOUT, Stream, Target};
use super::resp::{self, Value};
use crate::broker::{Kind, Registry, Topic};
use crate::history::redis::{self as stored, Read};
use crate::history::{Position, Resumed, Settings};
use crate::metrics;
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::Form;
use crate::protocol::reply::Error;

/// How often the connection is checked with a PING, so that a silent
/// network cut is noticed without waiting for traffic.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Reconnection backoff: first delay and cap (each delay is jittered).
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Read buffer: grown by this much when less is free.
const READ_CHUNK: usize = 64 * 1024;

/// What connections ask of the subscription connection.
pub enum Request {
    /// A subscriber of a topic without history is in the registry: answer
    /// once Redis delivers the topic to this node.
    Attach(Topic, oneshot::Sender<Result<(), Error>>),
    /// Connection `ConnId` left the topic.
    Detach(Topic, ConnId),
    /// A `SUBSCRIBE` or `RESUME` of a channel that keeps history.
    Join(Join),
}

/// See [`Request::Join`].
pub struct Join {
    pub channel: Topic,
    pub outbox: Arc<Outbox>,
    /// `None`: a `SUBSCRIBE`; `Some(since)`: a `RESUME` from `since`.
    pub resume: Option<Option<Position>>,
    /// Already subscribed (a `RESUME` of a subscribed channel): nothing to add.
    pub subscribed: bool,
    pub reply: oneshot::Sender<Result<Joined, Error>>,
}

/// A join done: the topic as the registry keeps it, the channel's position,
/// and for a `RESUME` what it found.
pub struct Joined {
    pub topic: Topic,
    pub position: Position,
    pub resumed: Option<Resumed>,
}

/// See the module documentation.
pub struct Subscriber {
    pub target: Target,
    pub registry: Arc<Registry>,
    pub history: Settings,
    pub health: Arc<Health>,
    pub requests: mpsc::UnboundedReceiver<Request>,
    /// Bytes read ahead of the fan-out, at most (`--redis-read-ahead`).
    pub read_ahead: usize,
    pub shutdown: CancellationToken,
    /// Local subscribers per topic: what this node needs from Redis.
    pub wanted: HashMap<Topic, usize>,
    /// Channels in `wanted` that keep history: the position of the last
    /// message delivered here, where a reconnect resumes.
    pub last: HashMap<Bytes, Position>,
}

/// What the task waits for from Redis, in the order it will come.
enum Awaiting {
    /// A `subscribe` or `psubscribe` acknowledgement, and who waits for it.
    Subscribed(Topic, Vec<oneshot::Sender<Result<(), Error>>>),
    Unsubscribed,
    Pong,
    /// `FUNCTION LOAD`'s reply.
    Loaded,
    /// A join's read (`cancelled`: its connection left meanwhile).
    Join {
        join: Join,
        cancelled: bool,
    },
    /// A history channel read again after a reconnect, from `since`.
    Refill {
        channel: Bytes,
        since: Position,
    },
}

/// A live connection.
struct Link {
    writer: WriteHalf<Box<dyn Stream>>,
    /// What the reader task read, in order; closed when the connection ends.
    chunks: mpsc::UnboundedReceiver<Bytes>,
    ahead: Arc<Ahead>,
    reader: JoinHandle<()>,
    /// Read and not yet handled: a frame's start.
    input: BytesMut,
    output: BytesMut,
    awaiting: VecDeque<(Instant, Awaiting)>,
    /// History channels being refilled: their messages until the read's
    /// reply are in it, so they are not delivered live.
    refilling: HashSet<Bytes>,
}

/// The connection failed or timed out; the task reconnects.
struct Lost;

/// What the reader task and the subscriber task share.
struct Ahead {
    /// Bytes read and not yet handled.
    bytes: AtomicUsize,
    limit: usize,
    /// The reader waits for the fan-out to catch up.
    paused: AtomicBool,
    /// Wakes a paused reader.
    drained: Notify,
    /// When Redis last sent something: a silent Redis is a lost one.
    heard: std::sync::Mutex<Instant>,
}

impl Ahead {
    /// How long Redis has said nothing we have not yet handled: an answer
    /// late by this much is lost, not queued behind a backlog.
    fn silent_for(&self) -> Duration {
        if self.paused.load(Ordering::Relaxed) || self.bytes.load(Ordering::Acquire) > 0 {
            // Not reading, by choice, or not done with what was read: the
            // answer may well be there.
            return Duration::ZERO;
        }
        crate::sync::lock(&self.heard).elapsed()
    }
}

/// Reads from Redis until the connection ends, at most `ahead.limit`
/// bytes ahead of the subscriber task.
async fn read_ahead(
    mut reader: ReadHalf<Box<dyn Stream>>,
    chunks: mpsc::UnboundedSender<Bytes>,
    ahead: Arc<Ahead>,
) {
    let mut buf = BytesMut::new();
    loop {
        while ahead.bytes.load(Ordering::Acquire) >= ahead.limit {
            ahead.paused.store(true, Ordering::Relaxed);
            ahead.drained.notified().await;
        }
        if ahead.paused.swap(false, Ordering::Relaxed) {
            *crate::sync::lock(&ahead.heard) = Instant::now();
        }
        buf.reserve(READ_CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                ahead.bytes.fetch_add(read, Ordering::AcqRel);
                *crate::sync::lock(&ahead.heard) = Instant::now();
                if chunks.send(buf.split().freeze()).is_err() {
                    return;
                }
            }
        }
    }
}

impl Subscriber {
    pub async fn run(mut self) {
        while let Some(mut link) = self.connect().await {
            let served = self.serve(&mut link).await;
            self.health.subscribed.store(false, Ordering::Relaxed);
            metrics::get().redis_connected.set(0);
            self.abandon(link);
            match served {
                Ok(()) => return,
                Err(Lost) => {
                    metrics::get().redis_reconnects.inc();
                    tracing::warn!("redis: connection lost; reconnecting");
                    self.signal_gaps();
                }
            }
        }
    }

    /// Connects (retrying with backoff, refusing requests meanwhile) and
    /// sends the resubscriptions and refills. `None` on shutdown.
    async fn connect(&mut self) -> Option<Link> {
        let mut delay = BACKOFF_FIRST;
        let mut attempt = 1u32;
        loop {
            match self.target.open().await {
                Ok(stream) => {
                    let (reader, writer) = tokio::io::split(stream);
                    let (sender, chunks) = mpsc::unbounded_channel();
                    let ahead = Arc::new(Ahead {
                        bytes: AtomicUsize::new(0),
                        limit: self.read_ahead,
                        paused: AtomicBool::new(false),
                        drained: Notify::new(),
                        heard: std::sync::Mutex::new(Instant::now()),
                    });
                    let reader = tokio::spawn(read_ahead(reader, sender, Arc::clone(&ahead)));
                    let mut link = Link {
                        writer,
                        chunks,
                        ahead,
                        reader,
                        input: BytesMut::new(),
                        output: BytesMut::new(),
                        awaiting: VecDeque::new(),
                        refilling: HashSet::new(),
                    };
                    self.restore(&mut link);
                    match link.write().await {
                        Ok(()) => return Some(link),
                        Err(Lost) => tracing::warn!("redis: connection lost while resubscribing"),
                    }
                }
                Err(error) => tracing::warn!(
                    attempt,
                    "redis: cannot connect ({error}); retrying in {} ms",
                    delay.as_millis()
                ),
            }
            let pause = tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    request = self.requests.recv() => match request {
                        Some(request) => self.refuse(request),
                        None => return None,
                    },
                    _ = self.shutdown.cancelled() => return None,
                }
            }
            delay = (delay * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// Queues what a new connection needs: the functions, every topic in
    /// use, and a read of each history channel from its last message.
    fn restore(&mut self, link: &mut Link) {
        if self.history.size > 0 {
            resp::command(
                &mut link.output,
                &[b"FUNCTION", b"LOAD", b"REPLACE", stored::LIBRARY.as_bytes()],
            );
            link.expect(Awaiting::Loaded);
        }
        let topics: Vec<Topic> = self.wanted.keys().cloned().collect();
        for kind in [Kind::Channel, Kind::Pattern] {
            let names: Vec<&Topic> = topics.iter().filter(|t| t.kind == kind).collect();
            if !names.is_empty() {
                link.change(true, kind, &names);
                for topic in names {
                    link.expect(Awaiting::Subscribed(topic.clone(), Vec::new()));
                }
            }
        }
        for (channel, since) in &self.last {
            let read =
                stored::read(channel, Some(since.offset), self.read_limit(), true, &self.history);
            link.output.extend_from_slice(&read);
            link.refilling.insert(channel.clone());
            link.expect(Awaiting::Refill { channel: channel.clone(), since: since.clone() });
        }
    }

    /// At most this many messages are read for one resume: more than a
    /// channel keeps (`MAXLEN ~` trims in whole nodes of the stream).
    fn read_limit(&self) -> usize {
        self.history.size.saturating_mul(2).saturating_add(128)
    }

    /// Serves until the connection is lost (`Err`) or shutdown (`Ok`).
    async fn serve(&mut self, link: &mut Link) -> Result<(), Lost> {
        let start = Instant::now() + HEALTH_CHECK_EVERY;
        let mut health = tokio::time::interval_at(start, HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announced = false;
        let mut flush = Flush::default();
        loop {
            self.take_input(link, &mut flush)?;
            flush.run();
            if link.awaiting.is_empty() && !self.health.subscribed.swap(true, Ordering::Relaxed) {
                self.health.changed.notify_waiters();
            }
            if !announced && link.awaiting.is_empty() && self.health.ready() {
                announced = true;
                // Once every resubscription is acknowledged and publishing
                // works too: tests and operators take this line as "ready".
                metrics::get().redis_connected.set(1);
                tracing::info!(
                    "redis: connected; {} channels and patterns subscribed",
                    self.wanted.len()
                );
            }
            tokio::select! {
                chunk = link.chunks.recv() => match chunk {
                    // Everything read before the end is handled first.
                    None => return Err(Lost),
                    Some(chunk) => link.take(chunk),
                },
                request = self.requests.recv() => {
                    let Some(first) = request else { return Ok(()) };
                    self.apply(first, link);
                    while let Ok(request) = self.requests.try_recv() {
                        self.apply(request, link);
                    }
                    link.write().await?;
                },
                _ = health.tick() => {
                    let late = link.awaiting.front().is_some_and(|(sent, _)| sent.elapsed() > REDIS_TIMEOUT);
                    if late && link.ahead.silent_for() > REDIS_TIMEOUT {
                        tracing::warn!("redis: no answer within {} s", REDIS_TIMEOUT.as_secs());
                        return Err(Lost);
                    }
                    if !link.awaiting.iter().any(|(_, a)| matches!(a, Awaiting::Pong)) {
                        resp::command(&mut link.output, &[b"PING"]);
                        link.expect(Awaiting::Pong);
                        link.write().await?;
                    }
                },
                // The publishing connection came up: announce.
                _ = self.health.changed.notified(), if !announced => {},
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Handles every whole frame in the read buffer.
    fn take_input(&mut self, link: &mut Link, flush: &mut Flush) -> Result<(), Lost> {
        let mut used = 0;
        loop {
            let (value, len) = match resp::parse(&link.input[used..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(malformed) => {
                    tracing::warn!("redis: {malformed}");
                    return Err(Lost);
                }
            };
            used += len;
            match value {
                Value::Push(items) => {
                    self.push(&items, &mut link.awaiting, &link.refilling, flush)?
                }
                reply => {
                    let Some((_, awaiting)) = link.awaiting.pop_front() else {
                        tracing::warn!("redis: a reply nothing asked for");
                        return Err(Lost);
                    };
                    self.reply(awaiting, &reply, &mut link.refilling, flush)?;
                }
            }
        }
        link.input.advance(used);
        // Handled: the reader may read that much more.
        let before = link.ahead.bytes.fetch_sub(used, Ordering::AcqRel);
        if before >= link.ahead.limit && before - used < link.ahead.limit {
            link.ahead.drained.notify_one();
        }
        Ok(())
    }

    /// A push: a message, or an acknowledgement.
    fn push(
        &mut self,
        items: &[Value<'_>],
        awaiting: &mut VecDeque<(Instant, Awaiting)>,
        refilling: &HashSet<Bytes>,
        flush: &mut Flush,
    ) -> Result<(), Lost> {
        match items {
            [Value::Bulk(b"message"), Value::Bulk(channel), Value::Bulk(payload)] => {
                self.message(None, channel, payload, refilling, flush);
            }
            [
                Value::Bulk(b"pmessage"),
                Value::Bulk(pattern),
                Value::Bulk(channel),
                Value::Bulk(payload),
            ] => {
                self.message(Some(pattern), channel, payload, refilling, flush);
            }
            [Value::Bulk(b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe"), ..] => {
                match awaiting.pop_front() {
                    Some((_, Awaiting::Subscribed(_, waiters))) => {
                        for waiter in waiters {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                    Some((_, Awaiting::Unsubscribed)) => {}
                    _ => {
                        tracing::warn!("redis: an acknowledgement nothing asked for");
                        return Err(Lost);
                    }
                }
            }
            // Other pushes (client tracking...) are not for us.
            _ => {}
        }
        Ok(())
    }

    /// Delivers one message; on a history channel, with its id.
    fn message(
        &mut self,
        pattern: Option<&[u8]>,
        channel: &[u8],
        payload: &[u8],
        refilling: &HashSet<Bytes>,
        flush: &mut Flush,
    ) {
        let envelope = if self.history.keeps(channel) { stored::unwrap(payload) } else { None };
        let Some(envelope) = envelope else {
            match pattern {
                None => self.registry.deliver_channel(channel, payload, None, flush),
                Some(pattern) => {
                    self.registry.deliver_pattern(pattern, channel, payload, None, flush)
                }
            };
            return;
        };
        let id = Some(envelope.id);
        match pattern {
            Some(pattern) => {
                self.registry.deliver_pattern(pattern, channel, envelope.payload, id, flush);
            }
            // In the reply of the read under way.
            None if refilling.contains(channel) => {}
            None => {
                if let Some(last) = self.last.get_mut(channel) {
                    // Redis publishes a channel's messages in offset order:
                    // what is not the next one (or the first of a new epoch)
                    // is a plain PUBLISH that merely looks like an envelope.
                    let same_epoch = last.epoch == envelope.epoch;
                    let next = if same_epoch {
                        envelope.offset == last.offset + 1
                    } else {
                        envelope.offset == 1
                    };
                    if !next {
                        self.registry.deliver_channel(channel, payload, None, flush);
                        return;
                    }
                    if !same_epoch {
                        last.epoch = Bytes::copy_from_slice(envelope.epoch);
                    }
                    last.offset = envelope.offset;
                }
                self.registry.deliver_channel(channel, envelope.payload, id, flush);
            }
        }
    }

    /// A reply to what the front of the queue awaited.
    fn reply(
        &mut self,
        awaiting: Awaiting,
        reply: &Value<'_>,
        refilling: &mut HashSet<Bytes>,
        flush: &mut Flush,
    ) -> Result<(), Lost> {
        match awaiting {
            Awaiting::Pong => {}
            Awaiting::Loaded => {
                if let Value::Error(error) = reply {
                    tracing::error!(
                        "redis: cannot load crier's functions (history needs Redis 7): {}",
                        String::from_utf8_lossy(error)
                    );
                }
            }
            // An error instead of acknowledgements: a refused SUBSCRIBE
            // (an ACL). Its waiters are told; the others wait on.
            Awaiting::Subscribed(topic, waiters) => {
                tracing::warn!(
                    "redis: subscription refused: {}",
                    String::from_utf8_lossy(reply.bytes().unwrap_or_default())
                );
                for waiter in waiters {
                    self.release(&topic);
                    let _ = waiter.send(Err(Error::BackendUnavailable));
                }
            }
            Awaiting::Unsubscribed => {}
            Awaiting::Join { join, cancelled } => self.joined(join, cancelled, reply, flush),
            Awaiting::Refill { channel, since } => {
                refilling.remove(&channel);
                self.refilled(channel, &since, reply, flush);
            }
        }
        Ok(())
    }

    /// A join's read came back: queue what the client missed, add it to the
    /// registry, answer.
    fn joined(&mut self, join: Join, cancelled: bool, reply: &Value<'_>, flush: &mut Flush) {
        if cancelled {
            return;
        }
        let counted = !join.subscribed;
        let Some(read) = Read::parse(reply) else {
            tracing::warn!("redis: crier_read failed: {}", describe(reply));
            if counted {
                self.release(&join.channel);
            }
            let _ = join.reply.send(Err(Error::BackendUnavailable));
            return;
        };
        let position = read.position.clone();
        let name = join.channel.name.clone();
        if counted && !self.last.contains_key(&name) {
            self.last.insert(name.clone(), position.clone());
        }
        let topic = if join.subscribed {
            join.channel
        } else {
            match self.registry.add(join.channel.clone(), &join.outbox) {
                Ok((topic, _)) => topic,
                Err(error) => {
                    self.release(&join.channel);
                    let _ = join.reply.send(Err(error));
                    return;
                }
            }
        };
        let resumed = join.resume.map(|since| {
            let missed = since.and_then(|since| read.after(&since, &self.history));
            match missed {
                Some(missed) if replay_fits(&missed, &join.outbox) => {
                    let active = AtomicBool::new(true);
                    for (position, payload) in &missed {
                        let id = position.id();
                        let frame = |form: Form| form.encode(None, &name, payload, Some(&id));
                        join.outbox.deliver(&active, frame, flush);
                    }
                    Resumed::Recovered(missed.len())
                }
                _ => Resumed::NotRecovered(Some(position.clone())),
            }
        });
        let _ = join.reply.send(Ok(Joined { topic, position, resumed }));
    }

    /// A history channel's read after a reconnect: the messages missed
    /// meanwhile go to its subscribers, or they are told of the gap.
    fn refilled(&mut self, channel: Bytes, since: &Position, reply: &Value<'_>, flush: &mut Flush) {
        let missed = Read::parse(reply).map(|read| {
            let position = read.position.clone();
            (read.after(since, &self.history), position)
        });
        match missed {
            Some((Some(missed), position)) => {
                for (position, payload) in &missed {
                    let id = position.id();
                    self.registry.deliver_channel(&channel, payload, Some(&id), flush);
                }
                self.set_last(&channel, position);
            }
            Some((None, position)) => {
                self.gap(&Topic::channel(channel.clone()), flush);
                self.set_last(&channel, position);
            }
            None => {
                tracing::warn!("redis: crier_read failed: {}", describe(reply));
                self.gap(&Topic::channel(channel), flush);
            }
        }
    }

    fn set_last(&mut self, channel: &Bytes, position: Position) {
        if let Some(last) = self.last.get_mut(channel) {
            *last = position;
        }
    }

    fn gap(&self, topic: &Topic, flush: &mut Flush) {
        metrics::get().redis_gaps.inc();
        self.registry.gap(topic, flush);
    }

    /// The connection is gone: subscribers of what cannot be refilled are
    /// told at once.
    fn signal_gaps(&self) {
        let mut flush = Flush::default();
        for topic in self.wanted.keys() {
            if !self.last.contains_key(&topic.name) || topic.kind == Kind::Pattern {
                self.gap(topic, &mut flush);
            }
        }
        flush.run();
    }

    /// Turns one request into commands on `link`.
    fn apply(&mut self, request: Request, link: &mut Link) {
        match request {
            Request::Attach(topic, reply) => {
                let count = self.wanted.entry(topic.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    link.change(true, topic.kind, &[&topic]);
                    link.expect(Awaiting::Subscribed(topic, vec![reply]));
                } else if let Some(waiters) = link.in_flight(&topic) {
                    // Redis has not acknowledged it yet: wait with the first.
                    waiters.push(reply);
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Request::Detach(topic, id) => {
                if topic.kind == Kind::Channel && self.history.keeps(&topic.name) {
                    // Joins add to the registry here: undo here too, and
                    // cancel one still waiting for its read.
                    self.registry.remove(&topic, id);
                    for (_, awaiting) in link.awaiting.iter_mut() {
                        if let Awaiting::Join { join, cancelled } = awaiting
                            && join.channel == topic
                            && join.outbox.id() == id
                        {
                            *cancelled = true;
                        }
                    }
                }
                if self.release(&topic) {
                    link.change(false, topic.kind, &[&topic]);
                    link.expect(Awaiting::Unsubscribed);
                }
            }
            Request::Join(join) => {
                if !join.subscribed {
                    let count = self.wanted.entry(join.channel.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        link.change(true, Kind::Channel, &[&join.channel]);
                        link.expect(Awaiting::Subscribed(join.channel.clone(), Vec::new()));
                    }
                }
                let since = match &join.resume {
                    Some(Some(since)) => Some(since.offset),
                    _ => None,
                };
                let read =
                    stored::read(&join.channel.name, since, self.read_limit(), true, &self.history);
                link.output.extend_from_slice(&read);
                link.expect(Awaiting::Join { join, cancelled: false });
            }
        }
    }

    /// While Redis is down every subscription needs it: refuse at once.
    fn refuse(&mut self, request: Request) {
        match request {
            Request::Attach(_, reply) => {
                let _ = reply.send(Err(Error::BackendUnavailable));
            }
            Request::Join(join) => {
                let _ = join.reply.send(Err(Error::BackendUnavailable));
            }
            Request::Detach(topic, _) => {
                self.release(&topic);
            }
        }
    }

    /// A local subscriber of `topic` left; true when it was the last.
    fn release(&mut self, topic: &Topic) -> bool {
        match self.wanted.get_mut(topic) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.wanted.remove(topic);
                if topic.kind == Kind::Channel {
                    self.last.remove(&topic.name);
                }
                true
            }
            None => false,
        }
    }

    /// The link is gone: whoever waits on it is refused.
    fn abandon(&mut self, mut link: Link) {
        for (_, awaiting) in std::mem::take(&mut link.awaiting) {
            match awaiting {
                Awaiting::Subscribed(topic, waiters) => {
                    for waiter in waiters {
                        self.release(&topic);
                        let _ = waiter.send(Err(Error::BackendUnavailable));
                    }
                }
                Awaiting::Join { join, cancelled: false } => {
                    if !join.subscribed {
                        self.release(&join.channel);
                    }
                    let _ = join.reply.send(Err(Error::BackendUnavailable));
                }
                _ => {}
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The reader holds the socket's read half: the connection ends with it.
        self.reader.abort();
    }
}

impl Link {
    /// Appends a chunk the reader read (without a copy when nothing is left
    /// over from the last one).
    fn take(&mut self, chunk: Bytes) {
        if self.input.is_empty() {
            match chunk.try_into_mut() {
                Ok(chunk) => self.input = chunk,
                Err(chunk) => self.input.extend_from_slice(&chunk),
            }
        } else {
            self.input.extend_from_slice(&chunk);
        }
    }

    fn expect(&mut self, awaiting: Awaiting) {
        self.awaiting.push_back((Instant::now(), awaiting));
    }

    /// Queues `(P)SUBSCRIBE` (or `(P)UNSUBSCRIBE`) of `topics`, all of `kind`.
    fn change(&mut self, subscribe: bool, kind: Kind, topics: &[&Topic]) {
        let verb: &[u8] = match (subscribe, kind) {
            (true, Kind::Channel) => b"SUBSCRIBE",
            (true, Kind::Pattern) => b"PSUBSCRIBE",
            (false, Kind::Channel) => b"UNSUBSCRIBE",
            (false, Kind::Pattern) => b"PUNSUBSCRIBE",
        };
        let mut args: Vec<&[u8]> = Vec::with_capacity(topics.len() + 1);
        args.push(verb);
        args.extend(topics.iter().map(|topic| &topic.name[..]));
        resp::command(&mut self.output, &args);
    }

    /// The waiters of a `SUBSCRIBE` of `topic` not yet acknowledged.
    fn in_flight(&mut self, topic: &Topic) -> Option<&mut Vec<oneshot::Sender<Result<(), Error>>>> {
        for (_, awaiting) in self.awaiting.iter_mut().rev() {
            match awaiting {
                Awaiting::Subscribed(waiting, waiters) if waiting == topic => return Some(waiters),
                _ => {}
            }
        }
        None
    }

    /// Writes what is queued, within [`REDIS_TIMEOUT`].
    async fn write(&mut self) -> Result<(), Lost> {
        if self.output.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(REDIS_TIMEOUT, self.writer.write_all(&self.output)).await {
            Ok(Ok(())) => {
                self.output.clear();
                Ok(())
            }
            _ => Err(Lost),
        }
    }
}

/// A replay the connection's budget cannot hold would cut it off as a slow
/// consumer, again at every retry: it is said to be unrecoverable instead,
/// so the client reloads. Half the budget, for the framing and the live
/// messages that follow.
pub fn replay_fits(missed: &[(Position, Bytes)], outbox: &Outbox) -> bool {
    let replay: usize = missed.iter().map(|(_, payload)| payload.len() + 64).sum();
    replay <= outbox.budget() / 2
}

/// A reply for a log line.
fn describe(reply: &Value<'_>) -> String {
    match reply {
        Value::Error(text) => String::from_utf8_lossy(text).into_owned(),
        other => format!("unexpected reply {other:?}"),
    }
}
