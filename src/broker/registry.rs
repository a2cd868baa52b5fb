//! The local fan-out table: which connections of this node want which channel
//! or pattern. Both backends deliver through it.
//!
//! No lock is held while fanning out. The maps from names to topics are
//! behind `RwLock`s taken only for a lookup or one update; each topic keeps its
//! subscribers behind its own mutex, with a snapshot (`Arc<[_]>`) that a
//! publisher clones and then walks lock-free. A change to the subscribers
//! drops the snapshot, and the next publish rebuilds it: subscribing costs
//! O(1), and a publish pays at most one extra pass over the subscribers it is
//! about to walk anyway. So a `SUBSCRIBE` or a disconnect never waits for a
//! fan-out, and publishers never queue behind one.
//!
//! A snapshot may name a subscription that has just ended: each
//! [`Subscription`] carries an `active` flag, cleared before the
//! `UNSUBSCRIBE` is answered and checked under the outbox lock that orders
//! the replies (see `Outbox::deliver`), so nothing follows that `CONFIRMED`.
//!
//! Patterns are indexed by their literal prefix (the bytes before the first
//! `*`, `?`, `[` or `\`): a publish looks up the prefixes of its channel name
//! among the prefix lengths in use and runs the glob matcher only on those
//! candidates, not on every pattern of the server.
//!
//! A message is encoded at most once per push form (v1, v2, and v2 per
//! matching pattern) and the same `Bytes` goes to every subscriber.

use bytes::Bytes;
use indexmap::IndexMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::glob::Glob;
use super::{Kind, Topic};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;
use crate::protocol::{Version, codec};

/// One connection's interest in one topic.
#[derive(Debug)]
pub struct Subscription {
    outbox: Arc<Outbox>,
    /// Cleared when the subscription ends; see the module documentation.
    active: AtomicBool,
}

/// A channel or a pattern with its subscribers.
#[derive(Debug)]
struct Entry {
    /// The pattern compiled; `None` for a channel.
    glob: Option<Glob>,
    subscribers: Mutex<Subscribers>,
}

#[derive(Debug, Default)]
struct Subscribers {
    by_conn: IndexMap<ConnId, Arc<Subscription>>,
    /// What publishers walk; `None` after a change, rebuilt by the next publish.
    snapshot: Option<Arc<[Arc<Subscription>]>>,
}

/// The patterns in use, indexed by literal prefix.
#[derive(Debug, Default)]
struct Patterns {
    by_name: HashMap<Bytes, Arc<Entry>>,
    by_prefix: HashMap<Bytes, Vec<(Bytes, Arc<Entry>)>>,
    /// Prefix length -> how many patterns have a prefix that long.
    lengths: BTreeMap<usize, usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Registry {
    channels: RwLock<HashMap<Bytes, Arc<Entry>>>,
    patterns: RwLock<Patterns>,
    /// Channels plus patterns in use, bounded by `max_topics` (`--max-channels`).
    topics: AtomicUsize,
    max_topics: usize,
}

impl Registry {
    pub fn new(max_topics: usize) -> Registry {
        Registry {
            channels: RwLock::default(),
            patterns: RwLock::default(),
            topics: AtomicUsize::new(0),
            max_topics,
        }
    }

    /// Adds a subscriber. Returns the topic with its name shared with the
    /// table's key (one allocation per name, however many subscribe to it)
    /// and how many local subscribers the topic has now; `TooManyChannels`
    /// when the topic is new and the server holds `--max-channels` already.
    pub fn add(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<(Topic, usize), Error> {
        let subscription =
            Arc::new(Subscription { outbox: Arc::clone(outbox), active: AtomicBool::new(true) });
        // Inserted under the map's write lock, so that `remove` cannot drop
        // the entry from the map between the lookup and the insert.
        let id = outbox.id();
        let (name, count) = match topic.kind {
            Kind::Channel => {
                let mut channels = write(&self.channels);
                let (name, entry) = match channels.get_key_value(&topic.name) {
                    Some((name, entry)) => (name.clone(), Arc::clone(entry)),
                    None => {
                        self.count_new_topic()?;
                        let entry = Arc::new(Entry::new(None));
                        channels.insert(topic.name.clone(), Arc::clone(&entry));
                        (topic.name, entry)
                    }
                };
                (name, entry.insert(id, subscription))
            }
            Kind::Pattern => {
                let mut patterns = write(&self.patterns);
                let (name, entry) = match patterns.by_name.get_key_value(&topic.name) {
                    Some((name, entry)) => (name.clone(), Arc::clone(entry)),
                    None => {
                        self.count_new_topic()?;
                        (topic.name.clone(), patterns.insert(topic.name))
                    }
                };
                (name, entry.insert(id, subscription))
            }
        };
        Ok((Topic { kind: topic.kind, name }, count))
    }

    /// Removes a subscriber; returns how many local subscribers the topic has left.
    pub fn remove(&self, topic: &Topic, id: ConnId) -> usize {
        match topic.kind {
            Kind::Channel => {
                let mut channels = write(&self.channels);
                let Some(entry) = channels.get(&topic.name) else {
                    return 0;
                };
                let left = entry.remove(id);
                if left == 0 {
                    channels.remove(&topic.name);
                    self.topics.fetch_sub(1, Ordering::Relaxed);
                }
                left
            }
            Kind::Pattern => {
                let mut patterns = write(&self.patterns);
                let Some(entry) = patterns.by_name.get(&topic.name) else {
                    return 0;
                };
                let left = entry.remove(id);
                if left == 0 {
                    patterns.remove(&topic.name);
                    self.topics.fetch_sub(1, Ordering::Relaxed);
                }
                left
            }
        }
    }

    /// Delivers to the subscribers of `channel` by name only (a Redis `message`).
    /// Like every delivery, it queues: the caller runs `flush` when its burst ends.
    pub fn deliver_channel(&self, channel: &[u8], payload: &[u8], flush: &mut Flush) -> usize {
        let Some(entry) = read(&self.channels).get(channel).cloned() else {
            return 0;
        };
        Frames::new(channel, payload).deliver(None, &entry.snapshot(), flush)
    }

    /// Delivers to the subscribers of `pattern` only (a Redis `pmessage`).
    pub fn deliver_pattern(
        &self,
        pattern: &[u8],
        channel: &[u8],
        payload: &[u8],
        flush: &mut Flush,
    ) -> usize {
        let Some(entry) = read(&self.patterns).by_name.get(pattern).cloned() else {
            return 0;
        };
        Frames::new(channel, payload).deliver(Some(pattern), &entry.snapshot(), flush)
    }

    /// Delivers to the subscribers of `channel` and of every matching pattern
    /// (the embedded broker's publish). Returns the number of deliveries.
    pub fn publish(&self, channel: &[u8], payload: &[u8], flush: &mut Flush) -> usize {
        // One set of frames for the whole publish: the v1 frame does not
        // depend on who matched, so it is encoded once for names and patterns.
        let mut frames = Frames::new(channel, payload);
        let named = read(&self.channels).get(channel).cloned();
        let mut delivered = named.map_or(0, |entry| frames.deliver(None, &entry.snapshot(), flush));
        for (pattern, entry) in read(&self.patterns).matching(channel) {
            frames.v2 = None;
            delivered += frames.deliver(Some(&pattern), &entry.snapshot(), flush);
        }
        delivered
    }

    fn count_new_topic(&self) -> Result<(), Error> {
        let max = self.max_topics;
        self.topics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .map(|_| ())
            .map_err(|_| Error::TooManyChannels)
    }
}

impl Entry {
    fn new(glob: Option<Glob>) -> Entry {
        Entry { glob, subscribers: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // Updates are single map operations: a panic elsewhere cannot leave
        // the set half-changed, so a poisoned lock is still consistent.
        self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The subscribers to walk, without holding any lock while walking.
    fn snapshot(&self) -> Arc<[Arc<Subscription>]> {
        let mut subscribers = self.lock();
        if let Some(snapshot) = &subscribers.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot: Arc<[Arc<Subscription>]> = subscribers.by_conn.values().cloned().collect();
        subscribers.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }

    /// Adds connection `id`'s subscription; returns how many there are.
    fn insert(&self, id: ConnId, subscription: Arc<Subscription>) -> usize {
        let mut subscribers = self.lock();
        let replaced = subscribers.by_conn.insert(id, subscription);
        debug_assert!(replaced.is_none(), "a session subscribes to a topic once");
        subscribers.snapshot = None;
        subscribers.by_conn.len()
    }

    /// Ends connection `id`'s subscription; returns how many are left.
    fn remove(&self, id: ConnId) -> usize {
        let mut subscribers = self.lock();
        if let Some(subscription) = subscribers.by_conn.swap_remove(&id) {
            subscription.active.store(false, Ordering::Relaxed);
            subscribers.snapshot = None;
        }
        subscribers.by_conn.len()
    }
}

impl Patterns {
    fn insert(&mut self, name: Bytes) -> Arc<Entry> {
        let entry = Arc::new(Entry::new(Some(Glob::new(&name))));
        let prefix = name.slice(..literal_prefix(&name));
        *self.lengths.entry(prefix.len()).or_default() += 1;
        self.by_prefix.entry(prefix).or_default().push((name.clone(), Arc::clone(&entry)));
        self.by_name.insert(name, Arc::clone(&entry));
        entry
    }

    fn remove(&mut self, name: &Bytes) {
        self.by_name.remove(name);
        let prefix = &name[..literal_prefix(name)];
        if let Some(list) = self.by_prefix.get_mut(prefix) {
            list.retain(|(pattern, _)| pattern != name);
            if list.is_empty() {
                self.by_prefix.remove(prefix);
            }
        }
        if let Some(count) = self.lengths.get_mut(&prefix.len()) {
            *count -= 1;
            if *count == 0 {
                self.lengths.remove(&prefix.len());
            }
        }
    }

    /// The patterns that match `channel`, found through the prefix index.
    fn matching(&self, channel: &[u8]) -> Vec<(Bytes, Arc<Entry>)> {
        let mut found = Vec::new();
        for &len in self.lengths.keys().take_while(|&&len| len <= channel.len()) {
            let Some(candidates) = self.by_prefix.get(&channel[..len]) else {
                continue;
            };
            for (pattern, entry) in candidates {
                if entry.glob.as_ref().is_some_and(|glob| glob.matches(channel)) {
                    found.push((pattern.clone(), Arc::clone(entry)));
                }
            }
        }
        found
    }
}

/// The bytes of a pattern before its first special character: every channel
/// it matches starts with them.
fn literal_prefix(pattern: &[u8]) -> usize {
    pattern.iter().position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')).unwrap_or(pattern.len())
}

/// Lazily encoded frames of one message, shared by all its subscribers.
struct Frames<'a> {
    channel: &'a [u8],
    payload: &'a [u8],
    v1: Option<Bytes>,
    v2: Option<Bytes>,
}

impl<'a> Frames<'a> {
    fn new(channel: &'a [u8], payload: &'a [u8]) -> Self {
        Frames { channel, payload, v1: None, v2: None }
    }

    /// Pushes the message to each subscriber in its form; returns how many took it.
    fn deliver(
        &mut self,
        pattern: Option<&[u8]>,
        subscribers: &[Arc<Subscription>],
        flush: &mut Flush,
    ) -> usize {
        let mut delivered = 0;
        for subscription in subscribers {
            let frame = |version: Version| match version {
                Version::V1 => self.v1.get_or_insert_with(|| codec::push_v1(self.payload)).clone(),
                Version::V2 => self
                    .v2
                    .get_or_insert_with(|| match pattern {
                        Some(pattern) => codec::push_pmessage(pattern, self.channel, self.payload),
                        None => codec::push_message(self.channel, self.payload),
                    })
                    .clone(),
            };
            let outbox = &subscription.outbox;
            delivered += usize::from(outbox.deliver(&subscription.active, frame, flush));
        }
        delivered
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Updates are single map operations: a panic elsewhere cannot leave the
    // table half-changed, so a poisoned lock is still consistent.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
