//! A connection's outbound queue: the one place where the broker (many
//! producers, publishing) meets the connection's writer task (one consumer).
//!
//! Producers never wait: `push` appends a shared `Bytes` under a short lock and
//! wakes the writer when the queue goes from empty to non-empty. The writer takes
//! everything queued at once and writes it with one syscall, so a burst of
//! messages costs one wake-up and one write, not one per message.
//!
//! Every byte queued counts against `max_pending`. Past it the queue is dropped
//! and the connection is marked a slow consumer: its writer sends
//! `ERR slow consumer` and closes, and no producer ever waits for it.
//!
//! A *hold* reserves the place of a reply that is not known yet (the answer to a
//! `SUBSCRIBE` that waits for Redis): pushes queue up behind it, and the writer
//! stops there until `release` puts the reply in its place. That is how a
//! subscriber sees `CONFIRMED` before the first message of its channel.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::protocol::Version;

/// Identifies a connection in the broker's tables.
pub type ConnId = u64;

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    id: ConnId,
    max_pending: usize,
    version: AtomicU8,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    pending: usize,
    /// With a hold: how many frames of `queue` come before the held reply.
    hold: Option<usize>,
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
    /// Frames were moved into the writer's batch: write them.
    Write,
    /// The queue is flushed and the connection is closing.
    Closed,
    /// The connection exceeded its budget of pending output.
    SlowConsumer,
}

impl Outbox {
    pub fn new(id: ConnId, max_pending: usize) -> Outbox {
        Outbox {
            id,
            max_pending,
            version: AtomicU8::new(Version::V1 as u8),
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
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

    /// Queues a frame. Returns false when the connection no longer accepts
    /// output (closing, or cut off as a slow consumer by this very push).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut state = self.state();
        if state.status != Status::Open {
            return false;
        }
        if state.pending + frame.len() > self.max_pending {
            state.status = Status::SlowConsumer;
            state.queue = VecDeque::new();
            state.pending = 0;
            drop(state);
            self.wake.notify_one();
            return false;
        }
        let was_empty = state.queue.is_empty();
        state.pending += frame.len();
        state.queue.push_back(frame);
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        true
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

    /// Waits for work and moves every writable frame into `batch`, which must
    /// be empty.
    pub async fn next(&self, batch: &mut VecDeque<Bytes>) -> Next {
        loop {
            {
                let mut state = self.state();
                match state.status {
                    Status::SlowConsumer => return Next::SlowConsumer,
                    Status::Closing if state.queue.is_empty() => return Next::Closed,
                    _ => {}
                }
                match state.hold {
                    None if !state.queue.is_empty() => {
                        // Taken, not swapped: an idle connection keeps no
                        // queue allocation on either side.
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
                    return Next::Write;
                }
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(batch: &VecDeque<Bytes>) -> Vec<&[u8]> {
        batch.iter().map(|b| &b[..]).collect()
    }

    #[tokio::test]
    async fn hands_over_everything_queued_at_once() {
        let outbox = Outbox::new(1, 100);
        assert!(outbox.push(Bytes::from("a")) && outbox.push(Bytes::from("b")));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"a", b"b"]);
    }

    #[tokio::test]
    async fn a_held_reply_goes_before_what_was_pushed_after_it() {
        let outbox = Outbox::new(1, 100);
        outbox.push(Bytes::from("before"));
        outbox.hold();
        outbox.push(Bytes::from("message"));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"before"]);
        batch.clear();
        outbox.release(Bytes::from("CONFIRMED"));
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        assert_eq!(frames(&batch), [b"CONFIRMED".as_slice(), b"message"]);
    }

    #[tokio::test]
    async fn over_budget_is_a_slow_consumer() {
        let outbox = Outbox::new(1, 10);
        assert!(outbox.push(Bytes::from("12345")));
        assert!(outbox.push(Bytes::from("12345")));
        assert!(!outbox.push(Bytes::from("1")));
        assert!(!outbox.push(Bytes::from("1")), "stays cut off");
        assert_eq!(outbox.next(&mut VecDeque::new()).await, Next::SlowConsumer);
    }

    #[tokio::test]
    async fn closing_flushes_then_stops() {
        let outbox = Outbox::new(1, 100);
        outbox.push(Bytes::from("BYE"));
        outbox.close();
        assert!(!outbox.push(Bytes::from("late")));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Next::Write);
        batch.clear();
        assert_eq!(outbox.next(&mut batch).await, Next::Closed);
    }
}
