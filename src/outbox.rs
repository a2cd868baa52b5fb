//! A connection's outbound queue: the one place where the broker (many
//! producers, publishing) meets the connection's transport.
//!
//! Producers never wait. `push` and `deliver` append a frame under a short
//! lock: a large one as the shared `Bytes` every subscriber gets, a small one
//! copied to the end of the outbox's open block, so that a burst of small
//! messages is written as a few large slices (see `COPY_BELOW`). The frames
//! are then written, in order, by whoever gets there first:
//! - the producer itself, at the end of its burst of work (see [`Flush`]),
//!   through [`Sink::try_write`]: on plain TCP it writes straight into the
//!   socket without blocking, as Redis does, so an idle subscriber gets a
//!   message with one syscall and no task wake-up;
//! - or the transport's writer task, which takes over whenever the sink would
//!   block, and always for sinks that only their own task can write (TLS,
//!   WebSocket), via [`Outbox::next`].
//!
//! A `writing` flag makes those two mutually exclusive, so bytes of two
//! writes never interleave.
//!
//! The invariants are held by the queue's shape, not by indexes into it:
//! - a *hold* is an [`Entry::Hold`] in the queue: the place of a reply not
//!   known yet (a `SUBSCRIBE` waiting for Redis). Nothing is written past it
//!   until `release` puts the reply in its place, so a subscriber sees
//!   `CONFIRMED` before the first message of its channel;
//! - the unwritten rest of a frame the client has begun to receive has its
//!   own slot ahead of the queue (`rest`): the one thing a cut-off never
//!   drops, so the error line that follows starts on a frame boundary;
//! - the push form (`HELLO`) is state under the same lock that orders the
//!   queue, so every push after a `HELLO` reply is in the new form.
//!
//! Every byte not yet handed to the transport (queued, or taken by a writer
//! and not yet written) counts against `max_pending`. Past it the queue is
//! dropped and the connection is cut off as a slow consumer: the writer learns
//! it wherever it waits ([`Outbox::cut_off`]), sends `ERR slow consumer` and
//! closes. No producer ever waits for a subscriber.

use bytes::{Bytes, BytesMut};
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::metrics;
use crate::protocol::{Form, Framing, Version};
use crate::sync;

/// Identifies a connection in the broker's tables.
pub type ConnId = u64;

/// A connection id not used before in this process, whatever the transport.
pub fn next_id() -> ConnId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Frames handed to the kernel per `writev` call.
const MAX_SLICES: usize = 1024;

/// Frames shorter than this are copied into the outbox's open block
/// (`State::tail`) instead of being queued as shared `Bytes`: `writev` costs
/// the kernel about 100 ns per slice, far more than copying a small frame, so
/// a burst of small messages goes out as a few large slices (measured in
/// docs/benchmarks.md). Larger frames stay shared by all their subscribers,
/// so subscribers lagging behind hold references to them, not copies.
const COPY_BELOW: usize = 256;

/// The open block is queued as one frame when it would outgrow this.
const BLOCK: usize = 16 * 1024;

/// Where an outbox's frames go: the transport below it.
pub trait Sink: Send + Sync + 'static {
    /// Writes a prefix of `frames` without waiting, from whichever thread
    /// calls; returns how many bytes it took, or `WouldBlock` when none fit.
    /// A transport that only its own task can write (TLS, whose session
    /// state is the writer's; SSE, written by hyper) always answers
    /// `WouldBlock`, and its writer does the writing.
    fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Called once, by the producer that cut the connection off. A
    /// transport whose writer may not be running (an SSE body is polled
    /// only while its socket drains) ends the connection from here.
    fn cut_off(&self) {}
}

/// A sink that producers never write: everything goes through [`Outbox::next`].
#[derive(Debug, Default)]
pub struct Deferred;

impl Sink for Deferred {
    fn try_write(&self, _frames: &[IoSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// See the module documentation. `S` is the transport's sink; the broker holds
/// outboxes as `Arc<Outbox>` (the sink behind a vtable), the transport as
/// `Arc<Outbox<ItsSink>>`: the same allocation.
pub struct Outbox<S: ?Sized + Sink = dyn Sink> {
    id: ConnId,
    max_pending: usize,
    state: Mutex<State>,
    /// Set once with the status `CutOff`: what a writer blocked on its socket
    /// watches, without taking the lock producers are busy with.
    cut: AtomicBool,
    /// Wakes the connection's writer.
    wake: Notify,
    sink: S,
}

impl<S: ?Sized + Sink> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("id", &self.id).finish_non_exhaustive()
    }
}

/// One place in the queue; see the module documentation. As small as a
/// `Bytes` (the hold takes the niche), which the queues' churn under load
/// makes worth keeping.
#[derive(Debug)]
enum Entry {
    Frame(Bytes),
    Hold(Hold),
}

/// The ticket of a held place: replies may be known in another order than
/// their places (a pipelined `PUBLISH` answered by Redis after a later
/// `SUBSCRIBE` was), so each release names its place. The top bit marks a
/// detached hold ([`Outbox::hold_detached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold(u32);

impl Hold {
    const DETACHED: u32 = 1 << 31;

    fn detached(self) -> bool {
        self.0 & Hold::DETACHED != 0
    }
}

#[derive(Debug)]
struct State {
    /// The unwritten rest of a frame the client has begun to receive: it
    /// goes out before the queue.
    rest: Option<Bytes>,
    queue: VecDeque<Entry>,
    /// Small frames copied end to end, after the queue: the open block. It
    /// is sealed (queued as one `Entry::Frame`) before anything that is not
    /// copied is queued, and when a writer takes the queue.
    tail: BytesMut,
    /// Bytes queued plus bytes taken by a writer and not yet written.
    pending: usize,
    /// `Entry::Hold`s in `queue`.
    holds: usize,
    /// The next hold's ticket.
    tickets: u32,
    /// A writer (a producer's flush or the writer task) holds frames taken
    /// from the queue.
    writing: bool,
    /// The push form; its version changes with `HELLO`.
    form: Form,
    status: Status,
    /// The connection has ended a subscription: deliveries must check that
    /// theirs is still active (see `deliver`).
    unsubscribed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    /// No more frames are accepted; the writer flushes the queue, then stops.
    Closing,
    /// Over budget: the queue is gone, the writer reports and stops.
    CutOff,
}

/// What the writer task is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the writer's batch: write them, then call
    /// [`Outbox::written`].
    Write,
    /// The queue is flushed and the connection is closing.
    Closed,
    /// The connection exceeded its budget of pending output.
    CutOff,
}

/// Frames taken from an outbox by one writer, in order.
#[derive(Debug, Default)]
pub struct Batch {
    /// A frame partly written: what is left of it.
    rest: Option<Bytes>,
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl<S: Sink> Outbox<S> {
    /// An outbox writing into `sink`.
    pub fn new(id: ConnId, max_pending: usize, framing: Framing, sink: S) -> Arc<Outbox<S>> {
        let state = State {
            rest: None,
            queue: VecDeque::new(),
            tail: BytesMut::new(),
            pending: 0,
            holds: 0,
            tickets: 0,
            writing: false,
            form: Form::new(framing),
            status: Status::Open,
            unsubscribed: false,
        };
        let cut = AtomicBool::new(false);
        Arc::new(Outbox {
            id,
            max_pending,
            state: Mutex::new(state),
            cut,
            wake: Notify::new(),
            sink,
        })
    }
}

impl<S: ?Sized + Sink> Outbox<S> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The connection's budget of pending output (`--max-pending`).
    pub fn budget(&self) -> usize {
        self.max_pending
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before anything that
        // could panic, so a poisoned lock is still usable.
        sync::lock(&self.state)
    }

    /// The push form now (its version changes with `HELLO`).
    pub fn form(&self) -> Form {
        self.state().form
    }

    /// Whether the connection was cut off as a slow consumer.
    pub fn was_cut_off(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// False once the connection is closing or cut off: nothing more it
    /// asks for will reach it.
    pub fn is_open(&self) -> bool {
        self.state().status == Status::Open
    }

    /// Reserves the place of the next reply; see the module documentation.
    /// Closing the outbox drops it: the session that would release it is
    /// ending too.
    pub fn hold(&self) -> Hold {
        self.reserve(0)
    }

    /// Reserves the place of a reply that another task always releases, at
    /// the latest within Redis's timeout (a pipelined `PUBLISH`): it
    /// survives closing, so a client that sends `PUBLISH` then `QUIT`, or
    /// closes its side, still gets its `CONFIRMED` before the connection ends.
    pub fn hold_detached(&self) -> Hold {
        self.reserve(Hold::DETACHED)
    }

    fn reserve(&self, kind: u32) -> Hold {
        let mut state = self.state();
        let hold = Hold((state.tickets & !Hold::DETACHED) | kind);
        state.tickets = state.tickets.wrapping_add(1);
        if state.status == Status::Open {
            state.seal();
            state.queue.push_back(Entry::Hold(hold));
            state.holds += 1;
        }
        hold
    }

    /// Puts `reply` in the place of `hold` (or, with `None`, just drops the
    /// hold) and lets the writer go on.
    pub fn release(&self, hold: Hold, reply: Option<Bytes>) {
        let mut state = self.state();
        // Once the outbox is closing, only detached holds are still there.
        if state.status != Status::CutOff
            && let Some(at) =
                state.queue.iter().position(|e| matches!(e, Entry::Hold(h) if *h == hold))
        {
            state.holds -= 1;
            match reply {
                Some(reply) => {
                    state.pending += reply.len();
                    state.queue[at] = Entry::Frame(reply);
                }
                None => {
                    state.queue.remove(at);
                }
            }
            state.check();
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Stops accepting frames; the writer flushes what is queued and stops.
    /// Holds still waiting are dropped (their replies would come too late),
    /// but detached ones, whose replies the writer waits for.
    pub fn close(&self) {
        let mut state = self.state();
        if state.status == Status::Open {
            state.status = Status::Closing;
            state.queue.retain(|entry| !matches!(entry, Entry::Hold(hold) if !hold.detached()));
            state.holds = state.queue.iter().filter(|e| matches!(e, Entry::Hold(_))).count();
        }
        drop(state);
        self.wake.notify_one();
    }

    /// For the writer task: waits for work and moves every writable frame
    /// into `batch`, which must be empty.
    pub async fn next(&self, batch: &mut Batch) -> Next {
        debug_assert!(batch.is_empty());
        loop {
            {
                let mut state = self.state();
                if !state.writing {
                    match state.status {
                        Status::CutOff => {
                            // At most the rest of a frame already begun.
                            state.take(batch);
                            return Next::CutOff;
                        }
                        Status::Closing if state.is_empty() => return Next::Closed,
                        _ => {}
                    }
                    if state.take(batch) {
                        return Next::Write;
                    }
                }
            }
            self.wake.notified().await;
        }
    }

    /// For the writer task: the batch from [`Outbox::next`] is written.
    pub fn written(&self, bytes: usize) {
        let mut state = self.state();
        debug_assert!(state.writing && state.pending >= bytes);
        state.writing = false;
        state.pending -= bytes;
    }

    /// Resolves once the connection is cut off as a slow consumer. A writer
    /// waits on it beside any wait for its transport, so a client that stops
    /// reading is cut off even while a write to it is blocked.
    pub async fn cut_off(&self) {
        while !self.cut.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
    }
}

impl Outbox {
    /// Queues a frame (a reply); when this makes the outbox busy, adds it to
    /// `flush`, whose owner writes it out at the end of its burst. Returns
    /// false when the connection no longer accepts output.
    pub fn push(self: &Arc<Self>, frame: Bytes, flush: &mut Flush) -> bool {
        let accepted = self.state().accept(&frame, self.max_pending);
        self.accepted(accepted, flush)
    }

    /// Queues a reply and switches the push form in one step: every push
    /// queued after the reply is in `version`'s form.
    pub fn push_and_switch(self: &Arc<Self>, frame: Bytes, version: Version, flush: &mut Flush) {
        let accepted = {
            let mut state = self.state();
            state.form.version = version;
            state.accept(&frame, self.max_pending)
        };
        self.accepted(accepted, flush);
    }

    /// Delivers a message to a subscription: `frame` gives the message in a
    /// push form, chosen under the lock that orders the queue. Nothing is
    /// queued once `active` is false: a message fanned out from a snapshot
    /// taken before an `UNSUBSCRIBE` never follows its `CONFIRMED`. The flag
    /// is only read once the connection has unsubscribed from something
    /// ([`Outbox::unsubscribed`]), which most never do.
    #[inline]
    pub fn deliver<F: Borrow<Bytes>>(
        self: &Arc<Self>,
        active: &AtomicBool,
        frame: impl FnOnce(Form) -> F,
        flush: &mut Flush,
    ) -> bool {
        let accepted = {
            let mut state = self.state();
            if state.unsubscribed && !active.load(Ordering::Relaxed) {
                return false;
            }
            let frame = frame(state.form);
            state.accept(frame.borrow(), self.max_pending)
        };
        self.accepted(accepted, flush)
    }

    /// Tells the connection that messages of the channel (or pattern) `name`
    /// may have been lost (Redis cut this node off): the form's gap signal,
    /// in order with the messages. A version 1 connection gets nothing: its
    /// pushes are bare payloads, and any signal would read as a message.
    pub fn gap(
        self: &Arc<Self>,
        active: &AtomicBool,
        name: &[u8],
        pattern: bool,
        flush: &mut Flush,
    ) {
        let accepted = {
            let mut state = self.state();
            if state.unsubscribed && !active.load(Ordering::Relaxed) {
                return;
            }
            match state.form.gap(name, pattern) {
                Some(frame) => state.accept(&frame, self.max_pending),
                None => return,
            }
        };
        self.accepted(accepted, flush);
    }

    /// Called when one of this connection's subscriptions ends, after its
    /// flag is cleared and before the reply is queued: from then on every
    /// delivery checks its subscription's flag.
    pub fn unsubscribed(&self) {
        self.state().unsubscribed = true;
    }

    /// What a producer does once the lock is released: hand a newly busy
    /// outbox to its flush, or wake the writer to report a cut-off.
    #[inline]
    fn accepted(self: &Arc<Self>, accepted: Accepted, flush: &mut Flush) -> bool {
        match accepted {
            Accepted::Idle => flush.add(self),
            Accepted::Queued => {}
            Accepted::Refused => return false,
            Accepted::CutOff => {
                self.cut.store(true, Ordering::Release);
                self.wake.notify_one();
                self.sink.cut_off();
                return false;
            }
        }
        true
    }

    /// Writes what is queued straight into the sink, as far as it takes it
    /// without blocking; hands the rest to the writer.
    fn flush(&self) {
        let mut batch = Batch::default();
        {
            let mut state = self.state();
            if state.writing || state.status != Status::Open || !state.take(&mut batch) {
                return;
            }
        }
        let taken = batch.bytes;
        // An error is the writer's to meet and report: keep the frames for it.
        let _ = batch.write_to(&self.sink);
        let mut state = self.state();
        state.writing = false;
        state.pending -= taken - batch.bytes;
        if state.status == Status::CutOff {
            // Cut off meanwhile: the writer sends the error after the rest of
            // a frame already begun, and nothing else.
            let left = batch.bytes;
            batch.keep_rest();
            state.pending -= left - batch.bytes;
        }
        if !batch.is_empty() {
            debug_assert!(state.rest.is_none());
            state.rest = batch.rest;
            batch.entries.append(&mut state.queue);
            state.queue = batch.entries;
        }
        let writer_needed = !state.is_empty() || state.status != Status::Open;
        state.check();
        drop(state);
        if writer_needed {
            self.wake.notify_one();
        }
    }
}

/// What became of a frame a producer offered.
enum Accepted {
    /// Queued on an outbox nobody was due to write: the producer flushes it.
    Idle,
    /// Queued behind frames someone is already due to write.
    Queued,
    /// The connection is closing or cut off.
    Refused,
    /// Over budget: this frame cut the connection off.
    CutOff,
}

impl State {
    #[inline]
    fn accept(&mut self, frame: &Bytes, max_pending: usize) -> Accepted {
        if self.status != Status::Open {
            return Accepted::Refused;
        }
        if self.pending + frame.len() > max_pending {
            self.cut_off();
            return Accepted::CutOff;
        }
        // Otherwise someone is already due to write: an earlier producer's
        // flush, the writer (which looks again when done), or a release.
        let idle = self.is_empty() && !self.writing;
        self.pending += frame.len();
        // An event stream rewrites each event's id as it writes it, so it
        // needs its frames one by one.
        if frame.len() < COPY_BELOW && self.form.framing != Framing::EventStream {
            self.append(frame);
        } else {
            self.seal();
            self.queue.push_back(Entry::Frame(frame.clone()));
        }
        if idle { Accepted::Idle } else { Accepted::Queued }
    }

    /// Copies a small frame to the end of the open block. The first frame of
    /// a block gets just its size (one message to each of many idle
    /// connections must not cost each a large buffer); a block that grows
    /// is in a burst, and grows fourfold, at least to 1 KiB, so that the
    /// reallocations (made under the lock producers take) stay few.
    fn append(&mut self, frame: &[u8]) {
        if self.tail.len() + frame.len() > BLOCK {
            self.seal();
        }
        let (len, capacity) = (self.tail.len(), self.tail.capacity());
        if capacity - len < frame.len() && len > 0 {
            let grown = (capacity * 4).clamp(1024, BLOCK).max(len + frame.len());
            self.tail.reserve(grown - len);
        }
        self.tail.extend_from_slice(frame);
    }

    /// Queues the open block as one frame. Taking it leaves no allocation
    /// behind: an idle connection keeps no block.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let block = std::mem::take(&mut self.tail).freeze();
            self.queue.push_back(Entry::Frame(block));
        }
    }

    /// Nothing to write: no rest, no frame, no hold.
    fn is_empty(&self) -> bool {
        self.rest.is_none() && self.queue.is_empty() && self.tail.is_empty()
    }

    /// Moves the rest and the frames before the first hold into `batch` and
    /// marks the outbox as being written; false when there is nothing to take.
    fn take(&mut self, batch: &mut Batch) -> bool {
        debug_assert!(!self.writing && batch.is_empty());
        batch.rest = self.rest.take();
        if self.holds == 0 {
            self.seal();
            // Taken, not copied: an idle connection keeps no queue allocation.
            batch.entries = std::mem::take(&mut self.queue);
            // With no writer, every pending byte is queued.
            batch.bytes = self.pending;
        } else {
            let before = self.queue.iter().position(|e| matches!(e, Entry::Hold(_))).unwrap_or(0);
            batch.entries.extend(self.queue.drain(..before));
            batch.bytes = batch.rest.as_ref().map_or(0, Bytes::len)
                + batch.entries.iter().map(Entry::len).sum::<usize>();
        }
        debug_assert_eq!(batch.bytes, batch.frames().map(<[u8]>::len).sum::<usize>());
        self.writing = !batch.is_empty();
        self.writing
    }

    /// Over budget: everything queued is dropped but the rest of a frame
    /// already begun (at the front, when no writer holds it).
    fn cut_off(&mut self) {
        self.status = Status::CutOff;
        self.pending -= self.queue.iter().map(Entry::len).sum::<usize>() + self.tail.len();
        self.queue.clear();
        self.tail = BytesMut::new();
        self.holds = 0;
        self.check();
    }

    /// The queue's shape, checked in debug builds.
    fn check(&self) {
        debug_assert_eq!(
            self.holds,
            self.queue.iter().filter(|e| matches!(e, Entry::Hold(_))).count()
        );
        let queued = self.rest.as_ref().map_or(0, Bytes::len)
            + self.queue.iter().map(Entry::len).sum::<usize>()
            + self.tail.len();
        debug_assert!(self.pending >= queued);
        debug_assert!(self.tail.len() <= BLOCK);
    }
}

impl Entry {
    fn bytes(&self) -> &[u8] {
        match self {
            Entry::Frame(frame) => frame,
            Entry::Hold(_) => {
                debug_assert!(false, "a hold is never taken into a batch");
                &[]
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Entry::Frame(frame) => frame.len(),
            Entry::Hold(_) => 0,
        }
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rest.is_none() && self.entries.is_empty()
    }

    /// Bytes left to write.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The frames left, in order (a partly written one as its rest).
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.rest.as_deref().into_iter().chain(self.entries.iter().map(Entry::bytes))
    }

    /// Drops every frame but the rest of one the client has begun to receive.
    pub fn keep_rest(&mut self) {
        self.entries.clear();
        self.bytes = self.rest.as_ref().map_or(0, Bytes::len);
    }

    /// Appends a frame (the error line after a cut-off).
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.entries.push_back(Entry::Frame(frame));
    }

    /// Writes with `try_write` until done or the sink would block, removing
    /// what was written; a partly written frame stays as its rest.
    pub fn write_to<S: ?Sized + Sink>(&mut self, sink: &S) -> io::Result<()> {
        self.write_with(|frames| sink.try_write(frames))
    }

    /// [`Batch::write_to`] through any non-blocking vectored write.
    pub fn write_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<()> {
        while !self.is_empty() {
            let written = match self.write_once(&mut write) {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            };
            metrics::SENT_BYTES.add(written as u64);
            self.advance(written);
        }
        Ok(())
    }

    /// One `writev` of the first frames. Few frames (the usual case: one
    /// message to an idle subscriber) use a small array on the stack, many a
    /// heap array, so that no call pays for more slices than it sends.
    fn write_once(
        &self,
        write: &mut impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        const ON_STACK: usize = 8;
        let count = (usize::from(self.rest.is_some()) + self.entries.len()).min(MAX_SLICES);
        if count <= ON_STACK {
            let mut slices = [IoSlice::new(&[]); ON_STACK];
            for (slice, frame) in slices.iter_mut().zip(self.frames()) {
                *slice = IoSlice::new(frame);
            }
            write(&slices[..count])
        } else {
            let slices: Vec<IoSlice<'_>> = self.frames().take(count).map(IoSlice::new).collect();
            write(&slices)
        }
    }

    fn advance(&mut self, mut written: usize) {
        debug_assert!(written <= self.bytes);
        if written == self.bytes {
            // The usual case: all of it went out.
            self.rest = None;
            self.entries.clear();
            self.bytes = 0;
            return;
        }
        self.bytes -= written;
        let mut front = self.rest.take();
        while written > 0 {
            let frame = match front.take() {
                Some(frame) => frame,
                None => match self.entries.pop_front() {
                    Some(Entry::Frame(frame)) => frame,
                    Some(Entry::Hold(_)) => continue,
                    None => return,
                },
            };
            if written < frame.len() {
                self.rest = Some(frame.slice(written..));
                return;
            }
            written -= frame.len();
        }
        self.rest = front;
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

    /// A burst touching more outboxes than this is written out by two tasks,
    /// so that a large fan-out uses two cores.
    const SPLIT: usize = 256;

    fn add(&mut self, outbox: &Arc<Outbox>) {
        self.outboxes.push(Arc::clone(outbox));
    }

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
impl Outbox {
    /// Holds the outbox's lock, as a producer in the middle of a push does.
    pub(crate) fn lock_for_test(&self) -> impl Drop + '_ {
        self.state()
    }

    /// Bytes queued (a producer's pushes show here before its flush).
    pub(crate) fn queued(&self) -> usize {
        self.state().pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A sink that takes at most `room` bytes, then would block.
    #[derive(Default)]
    struct Narrow {
        room: AtomicUsize,
        taken: Mutex<Vec<u8>>,
    }

    impl Sink for Narrow {
        fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
            let room = self.room.load(Ordering::Relaxed);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut taken = self.taken.lock().expect("test lock");
            let before = taken.len();
            for frame in frames {
                let n = frame.len().min(room - (taken.len() - before));
                taken.extend_from_slice(&frame[..n]);
            }
            let n = taken.len() - before;
            self.room.fetch_sub(n, Ordering::Relaxed);
            Ok(n)
        }
    }

    fn outbox(max_pending: usize) -> Arc<Outbox> {
        Outbox::new(1, max_pending, Framing::Line, Deferred)
    }

    fn push(outbox: &Arc<Outbox>, frame: &'static str) -> bool {
        outbox.push(Bytes::from(frame), &mut Flush::default())
    }

    /// What the writer takes next, as the bytes it would write (how they
    /// are cut into frames is the outbox's business).
    async fn take(outbox: &Outbox) -> (Next, Vec<u8>) {
        let mut batch = Batch::default();
        let next = outbox.next(&mut batch).await;
        (next, batch.frames().flatten().copied().collect())
    }

    #[test]
    fn a_queue_entry_is_as_small_as_a_frame() {
        assert_eq!(std::mem::size_of::<Entry>(), std::mem::size_of::<Bytes>());
    }

    #[tokio::test]
    async fn hands_over_everything_queued_at_once() {
        let outbox = outbox(100);
        assert!(push(&outbox, "a") && push(&outbox, "b"));
        assert_eq!(take(&outbox).await, (Next::Write, b"ab".to_vec()));
    }

    #[tokio::test]
    async fn a_held_reply_goes_before_what_was_pushed_after_it() {
        let outbox = outbox(100);
        push(&outbox, "before");
        let hold = outbox.hold();
        push(&outbox, "message");
        assert_eq!(take(&outbox).await, (Next::Write, b"before".to_vec()));
        outbox.written(6);
        outbox.release(hold, Some(Bytes::from("CONFIRMED")));
        let (next, frames) = take(&outbox).await;
        assert_eq!((next, frames), (Next::Write, b"CONFIRMEDmessage".to_vec()));
    }

    #[tokio::test]
    async fn replies_released_out_of_order_keep_their_places() {
        // A pipelined PUBLISH answered after a later SUBSCRIBE's CONFIRMED.
        let outbox = outbox(100);
        let first = outbox.hold();
        let second = outbox.hold();
        outbox.release(second, Some(Bytes::from("second")));
        outbox.release(first, Some(Bytes::from("first")));
        let (next, frames) = take(&outbox).await;
        assert_eq!((next, frames), (Next::Write, b"firstsecond".to_vec()));
    }

    #[tokio::test]
    async fn a_cut_off_while_a_reply_is_held_is_clean() {
        // The first version kept the hold as an index into the queue; a cut
        // off truncated the queue under it and the release panicked.
        let outbox = outbox(10);
        push(&outbox, "12345");
        let hold = outbox.hold();
        assert!(push(&outbox, "6789"));
        assert!(!push(&outbox, "overflow"), "over budget");
        outbox.release(hold, Some(Bytes::from("CONFIRMED")));
        assert_eq!(take(&outbox).await, (Next::CutOff, vec![]));
    }

    #[tokio::test]
    async fn frames_being_written_count_against_the_budget() {
        // The first version forgot a batch once its writer took it, so a
        // writer stuck on a client that does not read let the queue refill
        // for ever and the cut-off never came.
        let outbox = outbox(10);
        assert!(push(&outbox, "12345678"));
        assert_eq!(take(&outbox).await.0, Next::Write);
        assert!(!push(&outbox, "123"), "8 bytes in flight + 3 > 10");
        outbox.cut_off().await;
    }

    fn narrow(max_pending: usize, room: usize) -> Arc<Outbox<Narrow>> {
        Outbox::new(
            1,
            max_pending,
            Framing::Line,
            Narrow { room: AtomicUsize::new(room), ..Narrow::default() },
        )
    }

    #[tokio::test]
    async fn the_rest_of_a_frame_begun_survives_the_cut() {
        let narrow = narrow(2 * COPY_BELOW + 5, 3);
        let shared: Arc<Outbox> = narrow.clone();
        let mut flush = Flush::default();
        let (message, next) = ("M".repeat(COPY_BELOW), "N".repeat(COPY_BELOW));
        assert!(shared.push(Bytes::from(message.clone()), &mut flush));
        assert!(shared.push(Bytes::from(next), &mut flush));
        flush.run();
        assert_eq!(narrow.sink().taken.lock().expect("test lock").as_slice(), b"MMM");
        assert!(!shared.push(Bytes::from("0123456789ABC"), &mut flush), "over budget");
        let rest = message.as_bytes()[3..].to_vec();
        assert_eq!(take(&shared).await, (Next::CutOff, rest));
    }

    #[tokio::test]
    async fn small_frames_go_out_as_one_block() {
        let narrow = narrow(100, 3);
        let shared: Arc<Outbox> = narrow.clone();
        let mut flush = Flush::default();
        assert!(shared.push(Bytes::from("MESSAGE\r\n"), &mut flush));
        assert!(shared.push(Bytes::from("NEXT\r\n"), &mut flush));
        flush.run();
        assert_eq!(narrow.sink().taken.lock().expect("test lock").as_slice(), b"MES");
        // The block begun is finished whole: it ends on a frame boundary.
        assert!(!shared.push(Bytes::from("X".repeat(100)), &mut flush), "over budget");
        let mut batch = Batch::default();
        assert_eq!(shared.next(&mut batch).await, Next::CutOff);
        assert_eq!(batch.frames().collect::<Vec<_>>(), [b"SAGE\r\nNEXT\r\n"]);
    }

    #[tokio::test]
    async fn a_block_is_sealed_before_a_hold_and_a_large_frame() {
        let outbox = outbox(1 << 20);
        push(&outbox, "a");
        let hold = outbox.hold();
        push(&outbox, "b");
        assert!(outbox.push(Bytes::from("L".repeat(COPY_BELOW)), &mut Flush::default()));
        push(&outbox, "c");
        outbox.release(hold, Some(Bytes::from("R")));
        let mut batch = Batch::default();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        let large = "L".repeat(COPY_BELOW);
        let frames: Vec<&[u8]> = vec![b"a", b"R", b"b", large.as_bytes(), b"c"];
        assert_eq!(batch.frames().collect::<Vec<_>>(), frames);
    }

    #[tokio::test]
    async fn the_push_form_switches_with_the_reply() {
        let outbox = outbox(100);
        let active = AtomicBool::new(true);
        let form = |form: Form| Bytes::from(format!("v{}", form.version as u8));
        let mut flush = Flush::default();
        assert!(outbox.deliver(&active, form, &mut flush));
        outbox.push_and_switch(Bytes::from("CONFIRMED"), Version::V2, &mut flush);
        assert!(outbox.deliver(&active, form, &mut flush));
        active.store(false, Ordering::Relaxed);
        outbox.unsubscribed();
        assert!(!outbox.deliver(&active, form, &mut flush), "an ended subscription");
        let frames = take(&outbox).await.1;
        assert_eq!(frames, b"v1CONFIRMEDv2");
    }

    #[tokio::test]
    async fn closing_flushes_then_stops() {
        let outbox = outbox(100);
        push(&outbox, "BYE");
        outbox.close();
        assert!(!push(&outbox, "late"));
        assert_eq!(take(&outbox).await.0, Next::Write);
        outbox.written(3);
        assert_eq!(take(&outbox).await.0, Next::Closed);
    }
}
