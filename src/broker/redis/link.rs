//! One connection of the subscription task (`subscriber.rs`): its socket's
//! halves, what it waits for from Redis, and the reader task that reads
//! ahead of the fan-out.
//!
//! The reader owns the read half and hands what it reads, in order, to the
//! subscriber task, at most `--redis-read-ahead` bytes ahead of it: a burst
//! Redis sends faster than the node delivers waits here rather than in
//! Redis's output buffer, where it would get the node cut off.

use bytes::{Bytes, BytesMut};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::connect::{REDIS_TIMEOUT, Stream};
use super::resp;
use super::subscriber::Join;
use crate::broker::{Kind, Topic};
use crate::history::Position;
use crate::protocol::reply::Error;

/// Read buffer: grown by this much when less is free.
const READ_CHUNK: usize = 64 * 1024;

/// What the task waits for from Redis, in the order it will come.
pub enum Awaiting {
    /// A `subscribe` or `psubscribe` acknowledgement, and who waits for it.
    Subscribed(Topic, Vec<oneshot::Sender<Result<(), Error>>>),
    /// An unsubscribe's acknowledgement, for this topic's name.
    Unsubscribed(Bytes),
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
pub struct Link {
    /// The index of its node.
    pub node: usize,
    /// Shard channels (`SSUBSCRIBE`): a cluster.
    pub shard: bool,
    pub writer: WriteHalf<Box<dyn Stream>>,
    /// What the reader task read, in order; closed when the connection ends.
    pub chunks: mpsc::UnboundedReceiver<Bytes>,
    pub ahead: Arc<Ahead>,
    pub reader: JoinHandle<()>,
    /// Read and not yet handled: a frame's start.
    pub input: BytesMut,
    pub output: BytesMut,
    pub awaiting: VecDeque<(Instant, Awaiting)>,
    /// History channels being refilled: their messages until the read's
    /// reply are in it, so they are not delivered live.
    pub refilling: HashSet<Bytes>,
}

/// The connection failed or timed out; the task reconnects.
pub struct Lost;

/// What the reader task and the subscriber task share.
pub struct Ahead {
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
    /// `used` bytes were handled: the reader may read that much more.
    pub fn handled(&self, used: usize) {
        let before = self.bytes.fetch_sub(used, Ordering::AcqRel);
        if before >= self.limit && before - used < self.limit {
            self.drained.notify_one();
        }
    }

    /// How long Redis has said nothing we have not yet handled: an answer
    /// late by this much is lost, not queued behind a backlog.
    pub fn silent_for(&self) -> Duration {
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
async fn read_ahead_of(
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

impl Drop for Link {
    fn drop(&mut self) {
        // The reader holds the socket's read half: the connection ends with it.
        self.reader.abort();
    }
}

impl Link {
    /// Appends a chunk the reader read (without a copy when nothing is left
    /// over from the last one).
    pub fn take(&mut self, chunk: Bytes) {
        if self.input.is_empty() {
            match chunk.try_into_mut() {
                Ok(chunk) => self.input = chunk,
                Err(chunk) => self.input.extend_from_slice(&chunk),
            }
        } else {
            self.input.extend_from_slice(&chunk);
        }
    }

    pub fn expect(&mut self, awaiting: Awaiting) {
        self.awaiting.push_back((Instant::now(), awaiting));
    }

    /// Queues `(P)SUBSCRIBE` (or `(P)UNSUBSCRIBE`) of `topics`, all of
    /// `kind`, in one command; on a cluster `SSUBSCRIBE` (`SUNSUBSCRIBE`),
    /// one command per channel, since one may name only channels of one
    /// slot (pipelined all the same: one write).
    pub fn change(&mut self, subscribe: bool, kind: Kind, topics: &[&Topic]) {
        let verb: &[u8] = match (subscribe, kind, self.shard) {
            (true, Kind::Channel, false) => b"SUBSCRIBE",
            (true, Kind::Channel, true) => b"SSUBSCRIBE",
            (true, Kind::Pattern, _) => b"PSUBSCRIBE",
            (false, Kind::Channel, false) => b"UNSUBSCRIBE",
            (false, Kind::Channel, true) => b"SUNSUBSCRIBE",
            (false, Kind::Pattern, _) => b"PUNSUBSCRIBE",
        };
        let per_command = if self.shard { 1 } else { topics.len().max(1) };
        for topics in topics.chunks(per_command) {
            let mut args: Vec<&[u8]> = Vec::with_capacity(topics.len() + 1);
            args.push(verb);
            args.extend(topics.iter().map(|topic| &topic.name[..]));
            resp::command(&mut self.output, &args);
        }
    }

    /// The waiters of a `SUBSCRIBE` of `topic` not yet acknowledged.
    pub fn in_flight(
        &mut self,
        topic: &Topic,
    ) -> Option<&mut Vec<oneshot::Sender<Result<(), Error>>>> {
        for (_, awaiting) in self.awaiting.iter_mut().rev() {
            match awaiting {
                Awaiting::Subscribed(waiting, waiters) if waiting == topic => return Some(waiters),
                _ => {}
            }
        }
        None
    }

    /// Writes what is queued, within [`REDIS_TIMEOUT`].
    pub async fn write(&mut self) -> Result<(), Lost> {
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

impl Link {
    /// A connection to node `node` (`shard`: a cluster's), its reader
    /// started, at most `read_ahead` bytes ahead.
    pub fn new(node: usize, shard: bool, stream: Box<dyn Stream>, read_ahead: usize) -> Link {
        let (reader, writer) = tokio::io::split(stream);
        let (sender, chunks) = mpsc::unbounded_channel();
        let ahead = Arc::new(Ahead {
            bytes: AtomicUsize::new(0),
            limit: read_ahead,
            paused: AtomicBool::new(false),
            drained: Notify::new(),
            heard: std::sync::Mutex::new(Instant::now()),
        });
        let reader = tokio::spawn(read_ahead_of(reader, sender, Arc::clone(&ahead)));
        Link {
            node,
            shard,
            writer,
            chunks,
            ahead,
            reader,
            input: BytesMut::new(),
            output: BytesMut::new(),
            awaiting: VecDeque::new(),
            refilling: HashSet::new(),
        }
    }
}
