//! The embedded backend's history: a ring of recent messages per channel,
//! bounded per channel (`--history-size`, `--history-ttl`) and in all
//! (`--history-max-bytes`, evicting the oldest message of the server first).
//!
//! A message is appended and fanned out under its channel's ring lock, and
//! a resume reads the ring and joins the subscribers under that same lock:
//! so a resuming client gets exactly the messages after its position, then
//! every later one live, with nothing twice and nothing out of order.
//!
//! Cost per kept message: the payload, plus about 64 bytes (`Kept` and its
//! queue slot).

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{Position, Resumed, Settings};
use crate::sync::{lock, read, write};

/// See the module documentation.
#[derive(Debug)]
pub struct Memory {
    settings: Settings,
    rings: RwLock<HashMap<Bytes, Arc<Mutex<Ring>>>>,
    /// One entry per ring that holds messages: (a time no later than its
    /// oldest message, channel). Kept lazily, so that publishing never
    /// takes this global lock but when a ring gets its first message: the
    /// byte cap, which walks it from the first, puts an entry back with the
    /// ring's true oldest time when it finds it stale.
    fronts: Mutex<BTreeSet<(Instant, Bytes)>>,
    bytes: AtomicUsize,
}

/// One channel's kept messages.
#[derive(Debug)]
pub struct Ring {
    channel: Bytes,
    epoch: Bytes,
    /// The offset of the channel's last message (0 before the first).
    last: u64,
    kept: VecDeque<Kept>,
    /// Taken out of the map (emptied): whoever locked it late must look again.
    removed: bool,
    /// Has an entry in `fronts`.
    in_fronts: bool,
}

#[derive(Debug)]
struct Kept {
    offset: u64,
    at: Instant,
    payload: Bytes,
}

impl Memory {
    pub fn new(settings: Settings) -> Memory {
        Memory {
            settings,
            rings: RwLock::default(),
            fronts: Mutex::default(),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the locked ring of a channel that keeps history (made,
    /// with a new epoch, if it has none); `None` for a channel without.
    pub fn with_ring<T>(&self, channel: &Bytes, f: impl FnOnce(&mut Ring) -> T) -> Option<T> {
        loop {
            let ring = self.ring(channel)?;
            let mut ring = lock(&ring);
            if !ring.removed {
                return Some(f(&mut ring));
            }
        }
    }

    fn ring(&self, channel: &Bytes) -> Option<Arc<Mutex<Ring>>> {
        if !self.settings.keeps(channel) {
            return None;
        }
        if let Some(ring) = read(&self.rings).get(channel) {
            return Some(Arc::clone(ring));
        }
        let mut rings = write(&self.rings);
        let ring = rings.entry(channel.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Ring {
                channel: channel.clone(),
                epoch: new_epoch(),
                last: 0,
                kept: VecDeque::new(),
                removed: false,
                in_fronts: false,
            }))
        });
        Some(Arc::clone(ring))
    }

    /// Appends a message to a locked ring; returns its position. Call
    /// [`Memory::enforce_cap`] once the ring's lock is released.
    pub fn append(&self, ring: &mut Ring, payload: Bytes) -> Position {
        let now = Instant::now();
        self.expire(ring, now);
        while ring.kept.len() >= self.settings.size {
            self.pop_front(ring);
        }
        ring.last += 1;
        if !ring.in_fronts {
            lock(&self.fronts).insert((now, ring.channel.clone()));
            ring.in_fronts = true;
        }
        self.bytes.fetch_add(payload.len(), Ordering::Relaxed);
        // A copy: the payload may be a slice of a connection's read buffer,
        // which a kept slice would pin whole (and the cap would not count).
        let payload = Bytes::copy_from_slice(&payload);
        ring.kept.push_back(Kept { offset: ring.last, at: now, payload });
        ring.position()
    }

    /// Evicts the server's oldest messages while over `--history-max-bytes`.
    pub fn enforce_cap(&self) {
        while self.bytes.load(Ordering::Relaxed) > self.settings.max_bytes {
            let Some((at, channel)) = lock(&self.fronts).pop_first() else {
                return;
            };
            let Some(ring) = read(&self.rings).get(&channel).cloned() else {
                continue;
            };
            let mut ring = lock(&ring);
            match ring.kept.front().map(|kept| kept.at) {
                None => ring.in_fronts = false,
                // Stale: the ring's oldest is newer; back in its true place.
                Some(oldest) if oldest > at => {
                    lock(&self.fronts).insert((oldest, channel));
                }
                Some(_) => {
                    self.pop_front(&mut ring);
                    match ring.kept.front() {
                        Some(next) => {
                            lock(&self.fronts).insert((next.at, channel));
                        }
                        None => {
                            ring.in_fronts = false;
                            self.forget(&mut ring);
                        }
                    }
                }
            }
        }
    }

    /// The messages after `since`, if every one of them is still kept.
    pub fn resume(
        &self,
        ring: &mut Ring,
        since: Option<&Position>,
    ) -> (Resumed, Vec<(Position, Bytes)>) {
        self.expire(ring, Instant::now());
        let Some(since) =
            since.filter(|since| since.epoch == ring.epoch && since.offset <= ring.last)
        else {
            return (Resumed::NotRecovered(Some(ring.position())), Vec::new());
        };
        // Complete only if the first message after `since` is still here.
        let first_kept = ring.kept.front().map_or(ring.last + 1, |kept| kept.offset);
        if since.offset + 1 < first_kept {
            return (Resumed::NotRecovered(Some(ring.position())), Vec::new());
        }
        let missed: Vec<(Position, Bytes)> = ring
            .kept
            .iter()
            .filter(|kept| kept.offset > since.offset)
            .map(|kept| (ring.at(kept.offset), kept.payload.clone()))
            .collect();
        (Resumed::Recovered(missed.len()), missed)
    }

    /// Up to `limit` kept messages after `since` (all kept without it, or
    /// when it is of another epoch), and the channel's position; `None` for
    /// a channel without history.
    pub fn read(
        &self,
        channel: &Bytes,
        since: Option<&Position>,
        limit: usize,
    ) -> Option<(Position, Vec<(Position, Bytes)>)> {
        if !self.settings.keeps(channel) {
            return None;
        }
        // Reading makes no ring: a client naming ever new channels must not
        // grow the server's memory. No ring yet: nothing kept, no epoch.
        let Some(ring) = read(&self.rings).get(channel).cloned() else {
            return Some((Position { epoch: Bytes::from_static(b"-"), offset: 0 }, Vec::new()));
        };
        let mut ring = lock(&ring);
        self.expire(&mut ring, Instant::now());
        let after = since.filter(|since| since.epoch == ring.epoch).map_or(0, |s| s.offset);
        let messages = ring
            .kept
            .iter()
            .filter(|kept| kept.offset > after)
            .take(limit)
            .map(|kept| (ring.at(kept.offset), kept.payload.clone()))
            .collect();
        Some((ring.position(), messages))
    }

    /// Payload bytes kept in all (for metrics).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn expire(&self, ring: &mut Ring, now: Instant) {
        while ring.kept.front().is_some_and(|kept| now.duration_since(kept.at) >= self.settings.ttl)
        {
            self.pop_front(ring);
        }
    }

    /// Drops a ring's oldest message (its `fronts` entry stays, a lower
    /// bound the byte cap corrects when it gets there).
    fn pop_front(&self, ring: &mut Ring) {
        if let Some(kept) = ring.kept.pop_front() {
            self.bytes.fetch_sub(kept.payload.len(), Ordering::Relaxed);
        }
    }

    /// A ring emptied by the byte cap is dropped (a server publishing to
    /// ever new channels must not keep a ring for each): its continuity is
    /// lost, and the channel's next message starts a new epoch.
    fn forget(&self, ring: &mut Ring) {
        ring.removed = true;
        write(&self.rings).remove(&ring.channel);
    }
}

impl Ring {
    /// The position of the channel's last message (`<epoch>:0` before any).
    pub fn position(&self) -> Position {
        self.at(self.last)
    }

    fn at(&self, offset: u64) -> Position {
        Position { epoch: self.epoch.clone(), offset }
    }
}

/// Eight letters and digits, random: a new epoch.
fn new_epoch() -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    Bytes::from((0..8).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())]).collect::<Vec<u8>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn memory(size: usize, max_bytes: usize) -> Memory {
        Memory::new(Settings { size, ttl: Duration::from_secs(3600), channels: None, max_bytes })
    }

    fn publish(memory: &Memory, channel: &str, payload: &str) -> Position {
        let channel = Bytes::copy_from_slice(channel.as_bytes());
        let payload = Bytes::copy_from_slice(payload.as_bytes());
        let position = memory.with_ring(&channel, |ring| memory.append(ring, payload));
        memory.enforce_cap();
        position.expect("history")
    }

    fn resume(
        memory: &Memory,
        channel: &str,
        since: &Position,
    ) -> (Resumed, Vec<(Position, Bytes)>) {
        let channel = Bytes::copy_from_slice(channel.as_bytes());
        memory.with_ring(&channel, |ring| memory.resume(ring, Some(since))).expect("history")
    }

    #[test]
    fn offsets_count_up_and_a_resume_gets_exactly_the_gap() {
        let memory = memory(10, 1 << 20);
        let first = publish(&memory, "c", "a");
        assert_eq!(first.offset, 1);
        publish(&memory, "c", "b");
        publish(&memory, "c", "c");
        let (resumed, missed) = resume(&memory, "c", &first);
        assert_eq!(resumed, Resumed::Recovered(2));
        assert_eq!(
            missed.iter().map(|(p, m)| (p.offset, &m[..])).collect::<Vec<_>>(),
            [(2, &b"b"[..]), (3, b"c")]
        );
        let other = Position { epoch: Bytes::from("other"), offset: 1 };
        let (resumed, _) = resume(&memory, "c", &other);
        assert!(matches!(resumed, Resumed::NotRecovered(Some(p)) if p.offset == 3));
    }

    #[test]
    fn evicted_messages_make_a_resume_not_recovered() {
        let memory = memory(2, 1 << 20);
        let first = publish(&memory, "c", "a");
        publish(&memory, "c", "b");
        publish(&memory, "c", "c");
        // From offset 1, messages 2 and 3 are both kept: complete.
        assert_eq!(resume(&memory, "c", &first).0, Resumed::Recovered(2));
        // From offset 0, message 1 is gone: not complete, so nothing.
        let before = Position { epoch: first.epoch, offset: 0 };
        let (resumed, missed) = resume(&memory, "c", &before);
        assert!(missed.is_empty());
        assert!(matches!(resumed, Resumed::NotRecovered(Some(p)) if p.offset == 3));
    }

    #[test]
    fn the_byte_cap_evicts_the_servers_oldest_first() {
        let memory = memory(100, 10);
        publish(&memory, "old", "12345");
        publish(&memory, "new", "12345");
        assert_eq!(memory.bytes(), 10);
        publish(&memory, "new", "678");
        assert_eq!(memory.bytes(), 8, "the oldest message (of \"old\") went first");
        let (position, kept) = memory.read(&Bytes::from("new"), None, 10).expect("history");
        assert_eq!((position.offset, kept.len()), (2, 2));
        // "old" lost its only message: a new epoch starts.
        let (position, kept) = memory.read(&Bytes::from("old"), None, 10).expect("history");
        assert_eq!((position.offset, kept.len()), (0, 0));
    }
}
