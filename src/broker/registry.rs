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
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::glob::{Glob, literal_prefix};
use super::{Kind, Topic};
use crate::metrics;
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::Form;
use crate::protocol::reply::Error;
use crate::sync::{self, read, write};

/// One connection's interest in one topic: its outbox, and a flag cleared
/// when the subscription ends (see the module documentation). The outbox is
/// held here directly, not through the flag's allocation, so that a fan-out
/// does not touch one more cache line per subscriber: the flag is read only
/// for connections that have unsubscribed from something.
#[derive(Debug, Clone)]
pub struct Subscription {
    outbox: Arc<Outbox>,
    active: Arc<AtomicBool>,
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
    by_conn: IndexMap<ConnId, Subscription>,
    /// What publishers walk; `None` after a change, rebuilt by the next publish.
    snapshot: Option<Arc<[Subscription]>>,
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
    /// Whether any pattern is in use: most servers have none, and then a
    /// publish does not look at the pattern index at all.
    any_pattern: AtomicBool,
    /// Channels plus patterns in use, bounded by `max_topics` (`--max-channels`).
    topics: AtomicUsize,
    max_topics: usize,
}

impl Registry {
    pub fn new(max_topics: usize) -> Registry {
        Registry {
            channels: RwLock::default(),
            patterns: RwLock::default(),
            any_pattern: AtomicBool::new(false),
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
            Subscription { outbox: Arc::clone(outbox), active: Arc::new(AtomicBool::new(true)) };
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
                        self.any_pattern.store(true, Ordering::Release);
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
                    metrics::get().channels.dec();
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
                    metrics::get().channels.dec();
                    self.any_pattern.store(!patterns.by_name.is_empty(), Ordering::Release);
                }
                left
            }
        }
    }

    /// Delivers to the subscribers of `channel` by name only (a Redis
    /// `message`), with the message's `id` when the channel keeps history.
    /// Like every delivery, it queues: the caller runs `flush` when its burst ends.
    pub fn deliver_channel(
        &self,
        channel: &[u8],
        payload: &[u8],
        id: Option<&[u8]>,
        flush: &mut Flush,
    ) -> usize {
        metrics::MESSAGES.add(1);
        let Some(snapshot) = read(&self.channels).get(channel).map(|e| e.snapshot()) else {
            return 0;
        };
        counted(Frames::new(channel, payload, id).deliver(None, &snapshot, flush))
    }

    /// Delivers to the subscribers of `pattern` only (a Redis `pmessage`).
    pub fn deliver_pattern(
        &self,
        pattern: &[u8],
        channel: &[u8],
        payload: &[u8],
        id: Option<&[u8]>,
        flush: &mut Flush,
    ) -> usize {
        metrics::MESSAGES.add(1);
        let Some(snapshot) = read(&self.patterns).by_name.get(pattern).map(|e| e.snapshot()) else {
            return 0;
        };
        counted(Frames::new(channel, payload, id).deliver(Some(pattern), &snapshot, flush))
    }

    /// Tells every subscriber of `topic` that messages may have been lost
    /// (see [`Outbox::gap`]).
    pub fn gap(&self, topic: &Topic, flush: &mut Flush) {
        let entry = match topic.kind {
            Kind::Channel => read(&self.channels).get(&topic.name).cloned(),
            Kind::Pattern => read(&self.patterns).by_name.get(&topic.name).cloned(),
        };
        let Some(entry) = entry else { return };
        let pattern = topic.kind == Kind::Pattern;
        for subscription in entry.snapshot().iter() {
            subscription.outbox.gap(&subscription.active, &topic.name, pattern, flush);
        }
    }

    /// Delivers to the subscribers of `channel` and of every matching pattern
    /// (the embedded broker's publish), with the message's `id` when the
    /// channel keeps history. Returns the number of deliveries.
    pub fn publish(
        &self,
        channel: &[u8],
        payload: &[u8],
        id: Option<&[u8]>,
        flush: &mut Flush,
    ) -> usize {
        metrics::MESSAGES.add(1);
        // One set of frames for the whole publish: the v1 frame does not
        // depend on who matched, so it is encoded once for names and patterns.
        let mut frames = Frames::new(channel, payload, id);
        // The snapshot is taken under the map's read lock (the entry's mutex
        // nests inside it, as in `add` and `remove`), which is released before
        // the fan-out: one reference taken per publish, not two.
        let named = read(&self.channels).get(channel).map(|entry| entry.snapshot());
        let mut delivered = named.map_or(0, |snapshot| frames.deliver(None, &snapshot, flush));
        if !self.any_pattern.load(Ordering::Acquire) {
            return counted(delivered);
        }
        // Collected first: the index's read guard must not live through the fan-out.
        let matching = read(&self.patterns).matching(channel);
        for (pattern, entry) in matching {
            frames.next_pattern();
            delivered += frames.deliver(Some(&pattern), &entry.snapshot(), flush);
        }
        counted(delivered)
    }

    fn count_new_topic(&self) -> Result<(), Error> {
        let max = self.max_topics;
        self.topics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .map(|_| metrics::get().channels.inc())
            .map_err(|_| Error::TooManyChannels)?;
        Ok(())
    }
}

impl Entry {
    fn new(glob: Option<Glob>) -> Entry {
        Entry { glob, subscribers: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // Updates are single map operations: a panic elsewhere cannot leave
        // the set half-changed, so a poisoned lock is still consistent.
        sync::lock(&self.subscribers)
    }

    /// The subscribers to walk, without holding any lock while walking.
    fn snapshot(&self) -> Arc<[Subscription]> {
        let mut subscribers = self.lock();
        if let Some(snapshot) = &subscribers.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot: Arc<[Subscription]> = subscribers.by_conn.values().cloned().collect();
        subscribers.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }

    /// Adds connection `id`'s subscription; returns how many there are.
    fn insert(&self, id: ConnId, subscription: Subscription) -> usize {
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
            subscription.outbox.unsubscribed();
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

/// Lazily encoded frames of one message, one per push form, shared by all
/// its subscribers.
struct Frames<'a> {
    channel: &'a [u8],
    payload: &'a [u8],
    /// The message's position when its channel keeps history.
    id: Option<&'a [u8]>,
    encoded: [Option<Bytes>; Form::COUNT],
}

impl<'a> Frames<'a> {
    fn new(channel: &'a [u8], payload: &'a [u8], id: Option<&'a [u8]>) -> Self {
        Frames { channel, payload, id, encoded: Default::default() }
    }

    /// Pushes the message to each subscriber in its form; returns how many took it.
    fn deliver(
        &mut self,
        pattern: Option<&[u8]>,
        subscribers: &[Subscription],
        flush: &mut Flush,
    ) -> usize {
        let mut delivered = 0;
        let (channel, payload, id) = (self.channel, self.payload, self.id);
        for subscription in subscribers {
            let encoded = &mut self.encoded;
            let frame = move |form: Form| {
                let encoded = encoded;
                &*encoded[form.index()]
                    .get_or_insert_with(|| form.encode(pattern, channel, payload, id))
            };
            let outbox = &subscription.outbox;
            delivered += usize::from(outbox.deliver(&subscription.active, frame, flush));
        }
        delivered
    }

    /// Forgets the forms that name a pattern: the next delivery goes
    /// through another one.
    fn next_pattern(&mut self) {
        for (index, frame) in self.encoded.iter_mut().enumerate() {
            if Form::names_pattern_at(index) {
                *frame = None;
            }
        }
    }
}

/// Counts a fan-out's deliveries: once per message, not per subscriber.
fn counted(deliveries: usize) -> usize {
    metrics::DELIVERIES.add(deliveries as u64);
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Batch, Deferred};
    use crate::protocol::{Framing, Version};
    use std::sync::mpsc;
    use std::time::Duration;

    fn publish(registry: &Registry, channel: &[u8], payload: &[u8]) -> usize {
        registry.publish(channel, payload, None, &mut Flush::default())
    }

    fn outbox(id: ConnId) -> Arc<Outbox> {
        Outbox::new(id, 1 << 20, Framing::Line, Deferred)
    }

    fn add(registry: &Registry, topic: Topic, outbox: &Arc<Outbox>) -> (Topic, usize) {
        registry.add(topic, outbox).expect("under the limit")
    }

    /// The bytes the connection's writer would write next.
    async fn drain(outbox: &Outbox) -> Vec<u8> {
        let mut batch = Batch::default();
        outbox.next(&mut batch).await;
        batch.frames().flatten().copied().collect()
    }

    #[tokio::test]
    async fn one_copy_of_each_name_and_each_frame() {
        let registry = Registry::new(10);
        let (a, b) = (outbox(1), outbox(2));
        let topic = Topic::channel(Bytes::from("news"));
        let (first, count) = add(&registry, topic.clone(), &a);
        assert_eq!(count, 1);
        let (second, count) = add(&registry, topic, &b);
        assert_eq!(count, 2);
        assert_eq!(first.name.as_ptr(), second.name.as_ptr(), "one copy of the name");
        assert_eq!(publish(&registry, b"news", b"hi"), 2);
        assert_eq!(drain(&a).await, b"hi\r\n");
        assert_eq!(drain(&b).await, b"hi\r\n");
    }

    #[tokio::test]
    async fn patterns_and_names_each_deliver_once() {
        let registry = Registry::new(10);
        let a = outbox(1);
        a.push_and_switch(Bytes::new(), Version::V2, &mut Flush::default());
        add(&registry, Topic::channel(Bytes::from("news.x")), &a);
        add(&registry, Topic::pattern(Bytes::from("news.*")), &a);
        add(&registry, Topic::pattern(Bytes::from("other.*")), &a);
        add(&registry, Topic::pattern(Bytes::from("*.x")), &a);
        assert_eq!(publish(&registry, b"news.x", b"p"), 3);
        assert_eq!(
            drain(&a).await,
            b"MESSAGE news.x 1\r\np\r\nPMESSAGE *.x news.x 1\r\np\r\nPMESSAGE news.* news.x 1\r\np\r\n"
        );
        assert_eq!(registry.remove(&Topic::pattern(Bytes::from("news.*")), 1), 0);
        assert_eq!(publish(&registry, b"news.x", b"p"), 2);
    }

    #[test]
    fn patterns_are_found_by_prefix_not_by_scanning() {
        let registry = Registry::new(100_000);
        let a = outbox(1);
        for i in 0..10_000 {
            add(&registry, Topic::pattern(Bytes::from(format!("user.{i}.*"))), &a);
        }
        add(&registry, Topic::pattern(Bytes::from("*")), &a);
        let patterns = read(&registry.patterns);
        let found: Vec<Bytes> =
            patterns.matching(b"user.42.x").into_iter().map(|(p, _)| p).collect();
        assert_eq!(found, [Bytes::from("*"), Bytes::from("user.42.*")]);
        let candidates: usize = patterns
            .lengths
            .keys()
            .filter_map(|&len| b"user.42.x".get(..len))
            .filter_map(|prefix| patterns.by_prefix.get(prefix))
            .map(Vec::len)
            .sum();
        assert_eq!(candidates, 2, "two globs run, not 10,001");
        drop(patterns);
        for i in 0..10_000 {
            registry.remove(&Topic::pattern(Bytes::from(format!("user.{i}.*"))), 1);
        }
        let patterns = read(&registry.patterns);
        assert_eq!((patterns.by_name.len(), patterns.by_prefix.len()), (1, 1));
        assert_eq!(patterns.lengths.len(), 1, "no prefix length left behind");
    }

    #[test]
    fn the_server_wide_cap_counts_channels_and_patterns() {
        let registry = Registry::new(2);
        let (a, b) = (outbox(1), outbox(2));
        add(&registry, Topic::channel(Bytes::from("one")), &a);
        add(&registry, Topic::pattern(Bytes::from("two.*")), &a);
        let third = registry.add(Topic::channel(Bytes::from("three")), &a);
        assert_eq!(third.map(|(_, n)| n), Err(Error::TooManyChannels));
        add(&registry, Topic::channel(Bytes::from("one")), &b);
        registry.remove(&Topic::pattern(Bytes::from("two.*")), 1);
        add(&registry, Topic::channel(Bytes::from("three")), &a);
    }

    #[test]
    fn subscribing_never_waits_for_a_fan_out() {
        // The first version held the table's read lock for the whole fan-out:
        // a subscriber (and every publisher after it) waited for it.
        let registry = Arc::new(Registry::new(10));
        let (first, stuck) = (outbox(1), outbox(2));
        let topic = Topic::channel(Bytes::from("busy"));
        add(&registry, topic.clone(), &first);
        add(&registry, topic.clone(), &stuck);
        // The fan-out reaches `first`, then stops at `stuck`, whose lock we hold.
        let held = stuck.lock_for_test();
        let publisher = {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || publish(&registry, b"busy", b"m"))
        };
        // It flushes only at the end of its fan-out: watch the queue instead.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while first.queued() == 0 {
            assert!(std::time::Instant::now() < deadline, "the fan-out never reached `first`");
            std::thread::yield_now();
        }
        // Mid fan-out: a subscribe and a disconnect go through at once.
        let (done, finished) = mpsc::channel();
        {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                add(&registry, Topic::channel(Bytes::from("busy")), &outbox(3));
                registry.remove(&Topic::channel(Bytes::from("busy")), 1);
                let _ = done.send(());
            });
        }
        let waited = finished.recv_timeout(Duration::from_secs(20));
        drop(held);
        assert_eq!(publisher.join().expect("publisher"), 2);
        assert!(waited.is_ok(), "the subscribe waited for the fan-out");
    }

    #[tokio::test]
    async fn nothing_follows_the_confirmed_of_an_unsubscribe() {
        let registry = Registry::new(10);
        let a = outbox(1);
        let topic = Topic::channel(Bytes::from("c"));
        add(&registry, topic.clone(), &a);
        let entry = read(&registry.channels).get(&b"c"[..]).cloned().expect("entry");
        let before = entry.snapshot();
        registry.remove(&topic, 1);
        a.push(Bytes::from("CONFIRMED"), &mut Flush::default());
        // A publisher that took its snapshot before the unsubscribe.
        let late = Frames::new(b"c", b"late", None).deliver(None, &before, &mut Flush::default());
        assert_eq!(late, 0);
        assert_eq!(drain(&a).await, b"CONFIRMED");
    }
}
