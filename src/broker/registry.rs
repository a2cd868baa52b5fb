//! The local fan-out table: which connections of this node want which channel
//! or pattern. Both backends deliver through it.
//!
//! Read-mostly: delivering takes a read lock, so publishers never contend with
//! each other; subscribing takes the write lock for one map update. No lock is
//! held across an await, and delivering never waits for a subscriber: it only
//! pushes onto each outbox (see `outbox`).
//!
//! A message is encoded at most once per push form (v1, v2, and v2 per
//! matching pattern) and the same `Bytes` goes to every subscriber.

use bytes::Bytes;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::glob::Glob;
use super::{Kind, Topic};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::{Version, codec};

type Subscribers = IndexMap<ConnId, Arc<Outbox>>;

#[derive(Debug, Default)]
pub struct Registry {
    channels: RwLock<HashMap<Bytes, Subscribers>>,
    patterns: RwLock<HashMap<Bytes, PatternEntry>>,
}

#[derive(Debug)]
struct PatternEntry {
    glob: Glob,
    subscribers: Subscribers,
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
        subscribers: &Subscribers,
        flush: &mut Flush,
    ) -> usize {
        let mut delivered = 0;
        for outbox in subscribers.values() {
            let frame = match outbox.version() {
                Version::V1 => self.v1.get_or_insert_with(|| codec::push_v1(self.payload)),
                Version::V2 => self.v2.get_or_insert_with(|| match pattern {
                    Some(pattern) => codec::push_pmessage(pattern, self.channel, self.payload),
                    None => codec::push_message(self.channel, self.payload),
                }),
            };
            delivered += usize::from(outbox.push(frame.clone(), flush));
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

impl Registry {
    /// Adds a subscriber. Returns the topic with its name shared with the
    /// table's key (one allocation per name, however many subscribe to it)
    /// and how many local subscribers the topic has now.
    pub fn add(&self, topic: Topic, outbox: &Arc<Outbox>) -> (Topic, usize) {
        fn insert<V>(
            map: &mut HashMap<Bytes, V>,
            name: Bytes,
            new: impl FnOnce(&Bytes) -> V,
        ) -> (Bytes, &mut V) {
            let key = match map.get_key_value(&name) {
                Some((key, _)) => key.clone(),
                None => name,
            };
            let value = map.entry(key.clone()).or_insert_with(|| new(&key));
            (key, value)
        }
        let (id, outbox) = (outbox.id(), Arc::clone(outbox));
        let (name, count) = match topic.kind {
            Kind::Channel => {
                let mut channels = write(&self.channels);
                let (name, subscribers) =
                    insert(&mut channels, topic.name, |_| Subscribers::default());
                subscribers.insert(id, outbox);
                (name, subscribers.len())
            }
            Kind::Pattern => {
                let mut patterns = write(&self.patterns);
                let (name, pattern) = insert(&mut patterns, topic.name, |name| PatternEntry {
                    glob: Glob::new(name),
                    subscribers: Subscribers::default(),
                });
                pattern.subscribers.insert(id, outbox);
                (name, pattern.subscribers.len())
            }
        };
        (Topic { kind: topic.kind, name }, count)
    }

    /// Removes a subscriber; returns how many local subscribers the topic has left.
    pub fn remove(&self, topic: &Topic, id: ConnId) -> usize {
        fn remove_from<V>(
            map: &mut HashMap<Bytes, V>,
            name: &Bytes,
            subscribers: impl Fn(&mut V) -> &mut Subscribers,
            id: ConnId,
        ) -> usize {
            let Some(value) = map.get_mut(name) else {
                return 0;
            };
            let set = subscribers(value);
            set.swap_remove(&id);
            let left = set.len();
            if left == 0 {
                map.remove(name);
            }
            left
        }
        match topic.kind {
            Kind::Channel => remove_from(&mut write(&self.channels), &topic.name, |s| s, id),
            Kind::Pattern => {
                remove_from(&mut write(&self.patterns), &topic.name, |p| &mut p.subscribers, id)
            }
        }
    }

    /// Delivers to the subscribers of `channel` by name only (a Redis `message`).
    /// Like every delivery, it queues: the caller runs `flush` when its burst ends.
    pub fn deliver_channel(&self, channel: &[u8], payload: &[u8], flush: &mut Flush) -> usize {
        let channels = read(&self.channels);
        match channels.get(channel) {
            Some(subscribers) => Frames::new(channel, payload).deliver(None, subscribers, flush),
            None => 0,
        }
    }

    /// Delivers to the subscribers of `pattern` only (a Redis `pmessage`).
    pub fn deliver_pattern(
        &self,
        pattern: &[u8],
        channel: &[u8],
        payload: &[u8],
        flush: &mut Flush,
    ) -> usize {
        let patterns = read(&self.patterns);
        match patterns.get(pattern) {
            Some(entry) => {
                Frames::new(channel, payload).deliver(Some(pattern), &entry.subscribers, flush)
            }
            None => 0,
        }
    }

    /// Delivers to the subscribers of `channel` and of every matching pattern
    /// (the embedded broker's publish). Returns the number of deliveries.
    pub fn publish(&self, channel: &[u8], payload: &[u8], flush: &mut Flush) -> usize {
        // One set of frames for the whole publish: the v1 frame does not
        // depend on who matched, so it is encoded once for names and patterns.
        let mut frames = Frames::new(channel, payload);
        let mut delivered = match read(&self.channels).get(channel) {
            Some(subscribers) => frames.deliver(None, subscribers, flush),
            None => 0,
        };
        for (pattern, entry) in read(&self.patterns).iter() {
            if entry.glob.matches(channel) {
                frames.v2 = None;
                delivered += frames.deliver(Some(pattern), &entry.subscribers, flush);
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn publish(registry: &Registry, channel: &[u8], payload: &[u8]) -> usize {
        registry.publish(channel, payload, &mut Flush::default())
    }

    async fn drain(outbox: &Outbox) -> Vec<Bytes> {
        let mut batch = VecDeque::new();
        outbox.next(&mut batch).await;
        batch.into_iter().collect()
    }

    #[tokio::test]
    async fn one_encoding_shared_by_all_subscribers() {
        let registry = Registry::default();
        let (a, b) = (Arc::new(Outbox::detached(1, 1024)), Arc::new(Outbox::detached(2, 1024)));
        let topic = Topic::channel(Bytes::from("news"));
        let (first, count) = registry.add(topic.clone(), &a);
        assert_eq!(count, 1);
        let (second, count) = registry.add(topic, &b);
        assert_eq!(count, 2);
        assert_eq!(first.name.as_ptr(), second.name.as_ptr(), "one copy of the name");
        assert_eq!(publish(&registry, b"news", b"hi"), 2);
        let (fa, fb) = (drain(&a).await, drain(&b).await);
        assert_eq!(fa, [Bytes::from("hi\r\n")]);
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr(), "the same buffer, not a copy");
    }

    #[tokio::test]
    async fn v1_is_encoded_once_for_names_and_patterns() {
        let registry = Registry::default();
        let a = Arc::new(Outbox::detached(1, 1024));
        registry.add(Topic::channel(Bytes::from("news.x")), &a);
        registry.add(Topic::pattern(Bytes::from("news.*")), &a);
        assert_eq!(publish(&registry, b"news.x", b"p"), 2);
        let frames = drain(&a).await;
        assert_eq!(frames, [Bytes::from("p\r\n"), Bytes::from("p\r\n")]);
        assert_eq!(frames[0].as_ptr(), frames[1].as_ptr(), "the same buffer, not a copy");
    }

    #[tokio::test]
    async fn patterns_and_names_each_deliver_once() {
        let registry = Registry::default();
        let a = Arc::new(Outbox::detached(1, 1024));
        a.set_version(Version::V2);
        registry.add(Topic::channel(Bytes::from("news.x")), &a);
        registry.add(Topic::pattern(Bytes::from("news.*")), &a);
        registry.add(Topic::pattern(Bytes::from("other.*")), &a);
        assert_eq!(publish(&registry, b"news.x", b"p"), 2);
        assert_eq!(
            drain(&a).await,
            [
                Bytes::from("MESSAGE news.x 1\r\np\r\n"),
                Bytes::from("PMESSAGE news.* news.x 1\r\np\r\n")
            ]
        );
        assert_eq!(registry.remove(&Topic::pattern(Bytes::from("news.*")), 1), 0);
        assert_eq!(publish(&registry, b"news.x", b"p"), 1);
    }
}
