//! A connection's outbound queue: the one place where the broker (many
//! producers, publishing) meets the connection's socket.
//!
//! Producers never wait. `push` appends a shared `Bytes` under a short lock.
//! The frames are then written, in order, by whoever gets there first:
//! - the producer itself, at the end of its burst of work (see [`Flush`]): it
//!   writes straight into the socket without blocking, as Redis does, so an
//!   idle subscriber gets a message with one syscall and no task wake-up, and
//!   a burst of messages goes out in one write;
//! - or the connection's writer, which takes over whenever the socket would
//!   block (it waits for the socket to drain), and for replies that waited for
//!   the broker.
//!
//! A `writing` flag makes those two mutually exclusive, so bytes of two
//! writes never interleave.
//!
//! Every byte queued counts against `max_pending`. Past it the queue is dropped
//! and the connection is marked a slow consumer: its writer sends
//! `ERR slow consumer` and closes, and no producer ever waits for it.
//!
//! A *hold* reserves the place of a reply that is not known yet (the answer to a
//! `SUBSCRIBE` that waits for Redis): pushes queue up behind it, and nothing
//! is written past it until `release` puts the reply in its place. That is how
//! a subscriber sees `CONFIRMED` before the first message of its channel.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::protocol::Version;

/// Identifies a connection in the broker's tables.
pub type ConnId = u64;

/// Frames handed to the kernel per `writev` call.
const MAX_SLICES: usize = 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    id: ConnId,
    max_pending: usize,
    version: AtomicU8,
    /// The connection's socket; `None` for an outbox that only queues (tests).
    socket: Option<TcpStream>,
    state: Mutex<State>,
    /// Wakes the connection's writer.
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    pending: usize,
    /// With a hold: how many frames of `queue` come before the held reply.
    hold: Option<usize>,
    /// Frames taken from the queue are being written (by a producer or the writer).
    writing: bool,
    /// The first frame of `queue` is the rest of a frame partly written: the
    /// client has begun to receive it, so it is never dropped.
    started: bool,
    status: Status,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Status {
    #[default]
    Open,
    /// No more frames are accepted; the writer flushes the queue, then stops.
    Closing,
    /// The budget was exceeded: the queue is gone, the writer reports and stops.
    SlowConsumer,
}

/// What the writer is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the writer's batch: write them, then call
    /// [`Outbox::written`].
    Write,
    /// The queue is flushed and the connection is closing.
    Closed,
    /// The connection exceeded its budget of pending output.
    SlowConsumer,
}

impl Outbox {
    /// An outbox for the connection on `socket`.
    pub fn new(id: ConnId, max_pending: usize, socket: TcpStream) -> Outbox {
        Outbox::build(id, max_pending, Some(socket))
    }

    /// An outbox without a socket: frames wait for [`Outbox::next`].
    pub fn detached(id: ConnId, max_pending: usize) -> Outbox {
        Outbox::build(id, max_pending, None)
    }

    fn build(id: ConnId, max_pending: usize, socket: Option<TcpStream>) -> Outbox {
        Outbox {
            id,
            max_pending,
            version: AtomicU8::new(Version::V1 as u8),
            socket,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    /// The push form this connection asked for.
    pub fn version(&self) -> Version {
        match self.version.load(Ordering::Relaxed) {
            2 => Version::V2,
            _ => Version::V1,
        }
    }

    pub fn set_version(&self, version: Version) {
        self.version.store(version as u8, Ordering::Relaxed);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every update is a single push or take), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; when this makes the outbox busy, adds it to `flush`,
    /// whose owner writes it out at the end of its burst. Returns false when
    /// the connection no longer accepts output (closing, or cut off as a slow
    /// consumer by this very push).
    pub fn push(self: &Arc<Self>, frame: Bytes, flush: &mut Flush) -> bool {
        let mut state = self.state();
        if state.status != Status::Open {
            return false;
        }
        if state.pending + frame.len() > self.max_pending {
            state.status = Status::SlowConsumer;
            let keep = usize::from(state.started);
            state.queue.truncate(keep);
            state.pending = state.queue.iter().map(Bytes::len).sum();
            drop(state);
            self.wake.notify_one();
            return false;
        }
        // Otherwise someone is already due to write: an earlier producer's
        // flush, the writer (which looks again when done), or a release.
        let idle = state.queue.is_empty() && !state.writing && state.hold.is_none();
        state.pending += frame.len();
        state.queue.push_back(frame);
        drop(state);
        if idle {
            flush.add(self);
        }
        true
    }

    /// Writes what is queued straight into the socket, as far as it takes it
    /// without blocking; hands the rest to the writer.
    fn flush(&self) {
        let Some(socket) = &self.socket else {
            return self.wake.notify_one();
        };
        let mut frames = {
            let mut state = self.state();
            let busy = state.writing || state.hold.is_some() || state.status != Status::Open;
            if busy || state.queue.is_empty() {
                return;
            }
            state.writing = true;
            state.started = false;
            state.pending = 0;
            std::mem::take(&mut state.queue)
        };
        // An error is the writer's to meet and report: keep the frames for it.
        let started = write_now(socket, &mut frames).unwrap_or(false);
        let mut state = self.state();
        state.writing = false;
        if state.status == Status::SlowConsumer {
            // Cut off meanwhile: drop what is left, but finish a frame the
            // client has begun to receive, so the error line stands alone.
            frames.truncate(usize::from(started));
        }
        if !frames.is_empty() {
            state.pending += frames.iter().map(Bytes::len).sum::<usize>();
            state.started = started;
            // A hold taken meanwhile counts the frames before it: these too.
            if let Some(at) = state.hold.as_mut() {
                *at += frames.len();
            }
            frames.append(&mut state.queue);
            state.queue = frames;
        }
        let writer_needed = !state.queue.is_empty() || state.status != Status::Open;
        drop(state);
        if writer_needed {
            self.wake.notify_one();
        }
    }

    /// Reserves the place of the next reply; see the module documentation.
    /// At most one hold exists at a time: the connection answers in order.
    pub fn hold(&self) {
        let mut state = self.state();
        state.hold = Some(state.queue.len());
    }

    /// Puts `reply` in the held place and lets the writer go on.
    pub fn release(&self, reply: Bytes) {
        let mut state = self.state();
        if let Some(at) = state.hold.take()
            && state.status == Status::Open
        {
            state.pending += reply.len();
            state.queue.insert(at, reply);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Stops accepting frames; the writer flushes what is queued and stops.
    pub fn close(&self) {
        let mut state = self.state();
        if state.status == Status::Open {
            state.status = Status::Closing;
        }
        state.hold = None;
        drop(state);
        self.wake.notify_one();
    }

    /// For the writer: waits for work and moves every writable frame into
    /// `batch`, which must be empty.
    pub async fn next(&self, batch: &mut VecDeque<Bytes>) -> Next {
        loop {
            {
                let mut state = self.state();
                if !state.writing {
                    match state.status {
                        Status::SlowConsumer if state.queue.is_empty() => {
                            return Next::SlowConsumer;
                        }
                        Status::Closing if state.queue.is_empty() => return Next::Closed,
                        _ => {}
                    }
                    match state.hold {
                        None if !state.queue.is_empty() => {
                            // Taken, not swapped: an idle connection keeps no
                            // queue allocation.
                            *batch = std::mem::take(&mut state.queue);
                            state.pending = 0;
                        }
                        Some(at) if at > 0 => {
                            batch.extend(state.queue.drain(..at));
                            state.pending -= batch.iter().map(Bytes::len).sum::<usize>();
                            state.hold = Some(0);
                        }
                        _ => {}
                    }
                    if !batch.is_empty() {
                        state.writing = true;
                        state.started = false;
                        return Next::Write;
                    }
                }
            }
            self.wake.notified().await;
        }
    }

    /// For the writer: the batch from [`Outbox::next`] is written.
    pub fn written(&self) {
        self.state().writing = false;
    }
}

/// Writes `frames` with `writev` until done or the socket would block,
/// removing what was written (a partly written frame is sliced). Returns
/// whether the first frame left was partly written. Producers and the writer
/// both write through it.
pub(crate) fn write_now(socket: &TcpStream, frames: &mut VecDeque<Bytes>) -> io::Result<bool> {
    let mut started = false;
    while !frames.is_empty() {
        let mut written = match write_slices(socket, frames) {
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(started),
            Err(error) => return Err(error),
        };
        while let Some(front) = frames.front_mut() {
            if written < front.len() {
                *front = front.slice(written..);
                started |= written > 0;
                break;
            }
            written -= front.len();
            frames.pop_front();
            started = false;
        }
    }
    Ok(started)
}

/// One `writev` of the first frames. Few frames (the usual case: one message
/// to an idle subscriber) use a small array on the stack, many a heap array,
/// so that no call pays for setting up more slices than it sends.
fn write_slices(socket: &TcpStream, frames: &VecDeque<Bytes>) -> io::Result<usize> {
    const ON_STACK: usize = 8;
    let count = frames.len().min(MAX_SLICES);
    if count <= ON_STACK {
        let mut slices = [IoSlice::new(&[]); ON_STACK];
        for (slice, frame) in slices.iter_mut().zip(frames) {
            *slice = IoSlice::new(frame);
        }
        socket.try_write_vectored(&slices[..count])
    } else {
        let slices: Vec<IoSlice<'_>> = frames.iter().take(count).map(|f| IoSlice::new(f)).collect();
        socket.try_write_vectored(&slices)
    }
}

/// Outboxes made busy during one burst of a producer's work (the commands of
/// one read, or the messages Redis sent at once). Running it writes each
/// outbox out once, however many frames the burst queued on it: fan-out
/// bursts cost one syscall per subscriber, not one per message.
#[derive(Debug, Default)]
pub struct Flush {
    outboxes: Vec<Arc<Outbox>>,
}

impl Flush {
    /// A list longer than this is given back after a run, so one large burst
    /// does not pin memory on a connection that then goes quiet.
    const KEEP: usize = 4096;

    fn add(&mut self, outbox: &Arc<Outbox>) {
        self.outboxes.push(Arc::clone(outbox));
    }

    /// A burst touching more outboxes than this is written out by two tasks,
    /// so that a large fan-out uses two cores.
    const SPLIT: usize = 256;

    /// Writes out every outbox of the burst.
    pub fn run(&mut self) {
        if self.outboxes.len() >= Self::SPLIT
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let half = self.outboxes.split_off(self.outboxes.len() / 2);
            runtime.spawn(async move { half.iter().for_each(|outbox| outbox.flush()) });
        }
        self.outboxes.drain(..).for_each(|outbox| outbox.flush());
        if self.outboxes.capacity() > Self::KEEP {
            self.outboxes = Vec::new();
        }
    }
}

impl Drop for Flush {
    /// No frame is ever stranded by a producer that forgot to flush.
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(batch: &VecDeque<Bytes>) -> Vec<&[u8]> {
        batch.iter().map(|b| &b[..]).collect()
    }

    fn outbox(max_pending: usize) -> Arc<Outbox> {
        Arc::new(Outbox::detached(1, max_pending))
    }

    fn push(outbox: &Arc<Outbox>, frame: &'static str) -> bool {
        outbox.push(Bytes::from(frame), &mut Flush::default())
    }

    #[tokio::test]
    async fn hands_over_everything_queued_at_once() {
        let outbox = outbox(100);
        assert!(push(&outbox, "a") && push(&outbox, "b"));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"a", b"b"]);
    }

    #[tokio::test]
    async fn a_held_reply_goes_before_what_was_pushed_after_it() {
        let outbox = outbox(100);
        push(&outbox, "before");
        outbox.hold();
        push(&outbox, "message");
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"before"]);
        batch.clear();
        outbox.written();
        outbox.release(Bytes::from("CONFIRMED"));
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"CONFIRMED".as_slice(), b"message"]);
    }

    #[tokio::test]
    async fn over_budget_is_a_slow_consumer() {
        let outbox = outbox(10);
        assert!(push(&outbox, "12345"));
        assert!(push(&outbox, "12345"));
        assert!(!push(&outbox, "1"));
        assert!(!push(&outbox, "1"), "stays cut off");
        assert_eq!(outbox.next(&mut VecDeque::new()).await, Next::SlowConsumer);
    }

    #[tokio::test]
    async fn closing_flushes_then_stops() {
        let outbox = outbox(100);
        push(&outbox, "BYE");
        outbox.close();
        assert!(!push(&outbox, "late"));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        batch.clear();
        outbox.written();
        assert_eq!(outbox.next(&mut batch).await, Next::Closed);
    }
}
