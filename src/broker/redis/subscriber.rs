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
//! The task is the node's whole fan-out of what Redis sends, so it runs on a
//! thread of its own (`crier-redis`, see [`Subscriber::spawn`]): on a
//! runtime worker, a backlog of seconds would hold that worker, and the
//! sessions queued on it, as long (tokio does not preempt a task).
//!
//! A reader task reads from Redis ahead of the fan-out (up to
//! `--redis-read-ahead` bytes not yet handled), so that a burst Redis sends
//! faster than the node delivers waits here rather than in Redis's output
//! buffer, where it would get the node cut off. Messages are parsed in place
//! from the bytes read and delivered in batches: one flush per chunk, or per
//! [`BATCH`] of chunks when the reader is ahead.
//! When the connection is lost, subscribers of channels without history and
//! of patterns are told at once that messages may be lost (`Outbox::gap`);
//! channels with history are refilled after the reconnect, or told if that
//! cannot be done. Meanwhile new subscriptions fail with `ERR backend
//! unavailable`; the task reconnects with capped, jittered backoff.
//!
//! On a Redis Cluster ([`Layout::Cluster`]) the same task owns one such
//! connection per master, each carrying the shard channels
//! (`SSUBSCRIBE`, `smessage`) of the slots it serves: each connection's
//! stream is ordered on its own, and a channel lives on exactly one, so every
//! rule above holds per channel. A channel leaves its connection when the
//! connection is lost, when Redis says its slot moved (a `sunsubscribe` it
//! did not ask for) or when a new map puts its slot elsewhere: that is
//! handled like a reconnect of that channel alone (the gap signal, or a
//! refill from the last message delivered), at the master that serves it
//! now. A single Redis is the same machinery with one node that serves
//! everything.

use bytes::{Buf, Bytes};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Health;
use super::cluster::{self, Addr};
use super::connect::{REDIS_TIMEOUT, Stream, Target};
use super::link::{Awaiting, Link, Lost};
use super::resp::{self, Value};
use crate::broker::{Kind, Registry, Topic};
use crate::history::redis::{self as stored, Read};
use crate::history::{self, Position, Resumed, Settings};
use crate::metrics;
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;

/// How often the connection is checked with a PING, so that a silent
/// network cut is noticed without waiting for traffic.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Input handled before the deliveries are written out, at most: when the
/// reader is ahead, the chunks it read are taken together, so that each
/// subscriber's write carries many messages (one write per subscriber per
/// batch); when it is not, each chunk is written out at once.
const BATCH: usize = 256 * 1024;
/// Reconnection backoff: first delay and cap (each delay is jittered).
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

/// Where the subscription connections go.
pub enum Layout {
    /// One Redis: one connection carries every topic.
    Single(Target),
    /// A Redis Cluster: one connection per master, each channel on its
    /// slot's master, as shard channels.
    Cluster(cluster::Shared),
}

/// See the module documentation.
pub struct Subscriber {
    layout: Layout,
    registry: Arc<Registry>,
    history: Settings,
    health: Arc<Health>,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Bytes read ahead of the fan-out, at most (`--redis-read-ahead`).
    read_ahead: usize,
    shutdown: CancellationToken,
    /// Local subscribers per topic: what this node needs from Redis.
    wanted: HashMap<Topic, usize>,
    /// Channels in `wanted` that keep history: the position of the last
    /// message delivered here, where a reconnect resumes.
    last: HashMap<Bytes, Position>,
    /// The Redis nodes: the one Redis, or every master met so far.
    nodes: Vec<Node>,
    /// The node whose connection carries each topic of `wanted` (its
    /// subscription sent there). A topic missing here waits for its node's
    /// connection: a reconnect, a failover, a slot that moved.
    placed: HashMap<Topic, usize>,
    /// Where connection attempts report.
    opened: mpsc::UnboundedSender<Opened>,
    arrivals: Option<mpsc::UnboundedReceiver<Opened>>,
    /// History channels that left their node's connection and wait for
    /// their refill: the node they left, which a refill that cannot be
    /// complete counts its gap against (the refill itself may be read at
    /// another master, after a failover).
    left: HashMap<Bytes, usize>,
    /// `redis: connected` was logged since the last loss.
    announced: bool,
}

/// A connection attempt's outcome, for the node of that index.
type Opened = (usize, std::io::Result<Box<dyn Stream>>);

/// One Redis node and its connection.
struct Node {
    target: Target,
    link: Option<Link>,
    /// A connection attempt is under way.
    opening: bool,
    /// Wait before the next attempt (zero: at once).
    delay: Duration,
    attempt: u32,
    /// It serves slots in the latest map (a single Redis always does):
    /// only such nodes are connected to.
    serving: bool,
    /// `HOST:PORT`: the `node` label of its metrics.
    label: String,
    /// Its `crier_redis_reconnects_total` and `crier_redis_gaps_total`.
    counters: metrics::RedisNode,
    /// Its connection is up and has had, since it opened, a moment with no
    /// reply outstanding: what it carries was resubscribed. What
    /// `crier_redis_connected` reports (see [`Subscriber::report`]).
    ready: bool,
    /// What `crier_redis_connected` says of it now; `None`: no series.
    reported: Option<bool>,
}

impl Subscriber {
    pub fn new(
        layout: Layout,
        registry: Arc<Registry>,
        history: Settings,
        health: Arc<Health>,
        requests: mpsc::UnboundedReceiver<Request>,
        read_ahead: usize,
        shutdown: CancellationToken,
    ) -> Subscriber {
        let (opened, arrivals) = mpsc::unbounded_channel();
        let mut subscriber = Subscriber {
            layout,
            registry,
            history,
            health,
            requests,
            read_ahead,
            shutdown,
            wanted: HashMap::new(),
            last: HashMap::new(),
            nodes: Vec::new(),
            placed: HashMap::new(),
            opened,
            arrivals: Some(arrivals),
            left: HashMap::new(),
            announced: false,
        };
        if let Layout::Single(target) = &subscriber.layout {
            let node = Node::new(target.clone());
            subscriber.nodes.push(node);
        }
        subscriber
    }

    /// Runs the task on its own thread, with the runtime of the caller for
    /// its sockets, timers and the tasks it spawns; `stopped` is cancelled
    /// when it ends (the runtime must outlive it).
    pub fn spawn(self, stopped: CancellationToken) -> std::io::Result<()> {
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new().name("crier-redis".into()).spawn(move || {
            let _stopped = stopped.drop_guard();
            runtime.block_on(self.run());
        })?;
        Ok(())
    }

    async fn run(mut self) {
        let Some(mut arrivals) = self.arrivals.take() else { return };
        if matches!(self.layout, Layout::Cluster(_)) {
            self.reconcile();
        }
        let start = Instant::now() + HEALTH_CHECK_EVERY;
        let mut health = tokio::time::interval_at(start, HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = Flush::default();
        loop {
            self.open_links();
            self.write_all().await;
            self.announce();
            self.report();
            tokio::select! {
                (index, chunk) = read_any(&mut self.nodes) => match chunk {
                    // Everything read before the end is handled first.
                    None => self.lose(index),
                    Some(chunk) => {
                        let taken = self.take_input(index, chunk, &mut flush);
                        flush.run();
                        if taken.is_err() {
                            self.lose(index);
                        }
                    }
                },
                Some((index, opened)) = arrivals.recv() => self.opened(index, opened),
                request = self.requests.recv() => {
                    let Some(first) = request else { return };
                    self.apply(first);
                    while let Ok(request) = self.requests.try_recv() {
                        self.apply(request);
                    }
                },
                _ = health.tick() => self.check(),
                () = map_changed(&mut self.layout) => self.reconcile(),
                // The publishing connection came up: announce.
                _ = self.health.changed.notified(), if !self.announced => {},
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Starts a connection attempt for each serving node without one, after
    /// its backoff; the outcome comes back through `opened`.
    fn open_links(&mut self) {
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if !node.serving || node.link.is_some() || node.opening {
                continue;
            }
            node.opening = true;
            let target = node.target.clone();
            let delay = node.delay.mul_f64(0.5 + fastrand::f64() / 2.0);
            let opened = self.opened.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = opened.send((index, target.open().await));
            });
        }
    }

    /// A connection attempt came back: on success, resubscribe what lives
    /// there; on failure, back off (and, on a cluster, read the map again:
    /// the master may be gone for good).
    fn opened(&mut self, index: usize, opened: std::io::Result<Box<dyn Stream>>) {
        let shard = matches!(self.layout, Layout::Cluster(_));
        let Some(node) = self.nodes.get_mut(index) else { return };
        node.opening = false;
        match opened {
            Ok(_) if !node.serving => {}
            Ok(stream) => {
                node.delay = Duration::ZERO;
                node.attempt = 0;
                let mut link = Link::new(index, shard, stream, self.read_ahead);
                if self.history.size > 0 {
                    resp::command(
                        &mut link.output,
                        &[b"FUNCTION", b"LOAD", b"REPLACE", stored::LIBRARY.as_bytes()],
                    );
                    link.expect(Awaiting::Loaded);
                }
                self.nodes[index].link = Some(link);
                self.place_waiting();
            }
            Err(error) => {
                node.attempt += 1;
                node.delay = (node.delay * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
                let where_ =
                    if shard { format!(" to {}", node.target.describe()) } else { String::new() };
                tracing::warn!(
                    attempt = node.attempt,
                    "redis: cannot connect{where_} ({error}); retrying in {} ms",
                    node.delay.as_millis()
                );
                self.refresh();
            }
        }
    }

    /// Subscribes every topic waiting for a connection whose node's
    /// connection is up: the subscription, and a read of each history
    /// channel from its last message.
    fn place_waiting(&mut self) {
        let waiting: Vec<Topic> =
            self.wanted.keys().filter(|topic| !self.placed.contains_key(*topic)).cloned().collect();
        let mut by_node: HashMap<usize, Vec<Topic>> = HashMap::new();
        for topic in waiting {
            if let Some(index) = self.route(&topic) {
                by_node.entry(index).or_default().push(topic);
            }
        }
        for (index, topics) in by_node {
            let Some(mut link) = self.nodes[index].link.take() else { continue };
            self.place(&topics, &mut link);
            self.nodes[index].link = Some(link);
        }
    }

    /// Subscribes `topics` on `link`, refilling the history channels among
    /// them from their last message.
    fn place(&mut self, topics: &[Topic], link: &mut Link) {
        tracing::debug!(node = link.node, "redis: subscribing {topics:?}");
        for kind in [Kind::Channel, Kind::Pattern] {
            let names: Vec<&Topic> = topics.iter().filter(|t| t.kind == kind).collect();
            if !names.is_empty() {
                link.change(true, kind, &names);
                for topic in names {
                    link.expect(Awaiting::Subscribed(topic.clone(), Vec::new()));
                }
            }
        }
        for topic in topics {
            self.placed.insert(topic.clone(), link.node);
            let since = match topic.kind {
                Kind::Channel => self.last.get(&topic.name),
                Kind::Pattern => None,
            };
            if let Some(since) = since {
                let read = stored::read(
                    &topic.name,
                    Some(since.offset),
                    self.read_limit(),
                    true,
                    &self.history,
                );
                link.output.extend_from_slice(&read);
                link.refilling.insert(topic.name.clone());
                let since = since.clone();
                link.expect(Awaiting::Refill { channel: topic.name.clone(), since });
            }
        }
    }

    /// The node that serves `topic` now, if known.
    fn route(&mut self, topic: &Topic) -> Option<usize> {
        let addr = match &self.layout {
            Layout::Single(_) => return Some(0),
            Layout::Cluster(shared) => shared.owner(&topic.name)?,
        };
        Some(self.node_at(&addr))
    }

    /// The node serving `topic`, when its connection is up.
    fn live_route(&mut self, topic: &Topic) -> Option<usize> {
        self.route(topic).filter(|&index| self.nodes[index].link.is_some())
    }

    /// The index of the node at `addr`, added if new.
    fn node_at(&mut self, addr: &Addr) -> usize {
        let found = self.nodes.iter().position(|node| node.target.addr() == *addr);
        match found {
            Some(index) => index,
            None => {
                let Layout::Cluster(shared) = &self.layout else { return 0 };
                self.nodes.push(Node::new(shared.seed.at(&addr.0, addr.1)));
                self.nodes.len() - 1
            }
        }
    }

    /// A new cluster map: connect to its masters, drop the others, and move
    /// every channel whose slot is now elsewhere.
    fn reconcile(&mut self) {
        let Layout::Cluster(shared) = &mut self.layout else { return };
        let map = Arc::clone(&shared.map.borrow_and_update());
        for addr in &map.masters {
            self.node_at(addr);
        }
        for node in &mut self.nodes {
            let addr = node.target.addr();
            node.serving = map.masters.contains(&addr);
        }
        let placed: Vec<(Topic, usize)> =
            self.placed.iter().map(|(topic, index)| (topic.clone(), *index)).collect();
        let mut flush = Flush::default();
        for (topic, index) in placed {
            let route = self.route(&topic);
            if route == Some(index) {
                continue;
            }
            tracing::debug!(from = index, to = ?route, "redis: map moves {topic:?}");
            if let Some(link) = self.nodes[index].link.as_mut() {
                link.change(false, topic.kind, &[&topic]);
                link.expect(Awaiting::Unsubscribed(topic.name.clone()));
            }
            tracing::info!(
                "redis cluster: channel {} moved; resubscribing at its new master",
                String::from_utf8_lossy(&topic.name)
            );
            self.displace(&topic, index, &mut flush);
        }
        flush.run();
        for index in 0..self.nodes.len() {
            if !self.nodes[index].serving
                && let Some(link) = self.nodes[index].link.take()
            {
                self.abandon(link);
            }
        }
        self.place_waiting();
    }

    /// `topic` left the connection of node `from`: until it is subscribed
    /// again, its subscribers are told of the gap, or (history) refilled
    /// afterwards.
    fn displace(&mut self, topic: &Topic, from: usize, flush: &mut Flush) {
        self.placed.remove(topic);
        if topic.kind == Kind::Channel && self.last.contains_key(&topic.name) {
            self.left.insert(topic.name.clone(), from);
        } else {
            self.gap(topic, from, flush);
        }
        self.refresh();
    }

    /// On a cluster: asks for the map to be read again.
    fn refresh(&self) {
        if let Layout::Cluster(shared) = &self.layout {
            shared.refresh.notify_one();
        }
    }

    /// The connection of node `index` is gone: whoever waits on it is
    /// refused, its topics wait for the next one (with the gap signal, or a
    /// refill later), and it is opened again.
    fn lose(&mut self, index: usize) {
        let Some(link) = self.nodes[index].link.take() else { return };
        self.abandon(link);
        self.health.subscribed.store(false, Ordering::Relaxed);
        self.announced = false;
        self.nodes[index].counters.reconnects.inc();
        match &self.layout {
            Layout::Single(_) => tracing::warn!("redis: connection lost; reconnecting"),
            Layout::Cluster(_) => tracing::warn!(
                "redis: connection lost to {}; reconnecting",
                self.nodes[index].target.describe()
            ),
        }
        let topics: Vec<Topic> = self
            .placed
            .iter()
            .filter(|(_, placed)| **placed == index)
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut flush = Flush::default();
        for topic in topics {
            self.displace(&topic, index, &mut flush);
        }
        flush.run();
        self.refresh();
    }

    /// Writes what each connection has queued; a failed write loses it.
    async fn write_all(&mut self) {
        for index in 0..self.nodes.len() {
            let Some(link) = self.nodes[index].link.as_mut() else { continue };
            if link.write().await.is_err() {
                self.lose(index);
            }
        }
    }

    /// Readiness: every serving node connected, everything resubscribed.
    fn announce(&mut self) {
        let mut serving = self.nodes.iter().filter(|node| node.serving).peekable();
        let up = serving.peek().is_some()
            && serving.all(|node| node.link.as_ref().is_some_and(|link| link.awaiting.is_empty()))
            && self.placed.len() == self.wanted.len();
        if !up {
            return;
        }
        if !self.health.subscribed.swap(true, Ordering::Relaxed) {
            self.health.changed.notify_waiters();
        }
        if !self.announced && self.health.ready() {
            self.announced = true;
            // Once every resubscription is acknowledged and publishing
            // works too: tests and operators take this line as "ready".
            match &self.layout {
                Layout::Single(_) => tracing::info!(
                    "redis: connected; {} channels and patterns subscribed",
                    self.wanted.len()
                ),
                Layout::Cluster(_) => tracing::info!(
                    "redis: connected to {} masters; {} channels subscribed",
                    self.nodes.iter().filter(|node| node.serving).count(),
                    self.wanted.len()
                ),
            }
        }
    }

    /// Brings the Redis metrics in line with the nodes, once per turn of
    /// the loop rather than at each place a connection comes or goes, so
    /// that they cannot disagree with the state they describe. A node is
    /// reported connected once its connection has had no reply outstanding
    /// (what it carries resubscribed), and until that connection is gone; a
    /// node that serves nothing in the latest map loses its
    /// `crier_redis_connected` series: it is not wanted, so not down (an
    /// alert on 0 would fire forever after every failover), and its
    /// counters stay. It runs once per chunk read, so it touches no shared
    /// metric unless a node's state changed.
    fn report(&mut self) {
        let metrics = metrics::get();
        let (mut serving, mut connected, mut changed) = (0, 0, false);
        for node in &mut self.nodes {
            node.ready = match &node.link {
                None => false,
                Some(link) => node.ready || link.awaiting.is_empty(),
            };
            let now = node.serving.then_some(node.ready);
            if now != node.reported {
                metrics.redis_connected(&node.label, now);
                node.reported = now;
                changed = true;
            }
            serving += i64::from(node.serving);
            connected += i64::from(now == Some(true));
        }
        if changed {
            metrics.redis_nodes.set(serving);
            metrics.redis_nodes_connected.set(connected);
        }
    }

    /// Each second: a connection whose answer is late is lost; an idle one
    /// is pinged; on a cluster, channels still waiting for a master make
    /// the map be read again, and are subscribed again where the map says
    /// (Redis also drops a slot's shard subscriptions when the slot is
    /// assigned again to the same master, with no change to the map).
    fn check(&mut self) {
        for index in 0..self.nodes.len() {
            let Some(link) = self.nodes[index].link.as_mut() else { continue };
            let late =
                link.awaiting.front().is_some_and(|(sent, _)| sent.elapsed() > REDIS_TIMEOUT);
            if late && link.ahead.silent_for() > REDIS_TIMEOUT {
                tracing::warn!("redis: no answer within {} s", REDIS_TIMEOUT.as_secs());
                self.lose(index);
                continue;
            }
            if !link.awaiting.iter().any(|(_, a)| matches!(a, Awaiting::Pong)) {
                resp::command(&mut link.output, &[b"PING"]);
                link.expect(Awaiting::Pong);
            }
        }
        if self.placed.len() < self.wanted.len() {
            self.refresh();
            self.place_waiting();
        }
    }

    /// At most this many messages are read for one resume: more than a
    /// channel keeps (`MAXLEN ~` trims in whole nodes of the stream).
    fn read_limit(&self) -> usize {
        self.history.size.saturating_mul(2).saturating_add(128)
    }

    /// Handles every whole frame of what node `index`'s reader read:
    /// `chunk`, then the chunks already read after it, up to [`BATCH`] bytes
    /// in all (the caller then writes the deliveries out).
    fn take_input(&mut self, index: usize, chunk: Bytes, flush: &mut Flush) -> Result<(), Lost> {
        let Some(mut link) = self.nodes[index].link.take() else { return Ok(()) };
        let mut taken = chunk.len();
        link.take(chunk);
        let mut result = self.take_input_of(&mut link, flush);
        while result.is_ok() && taken < BATCH {
            let Ok(chunk) = link.chunks.try_recv() else { break };
            taken += chunk.len();
            link.take(chunk);
            result = self.take_input_of(&mut link, flush);
        }
        self.nodes[index].link = Some(link);
        result
    }

    fn take_input_of(&mut self, link: &mut Link, flush: &mut Flush) -> Result<(), Lost> {
        // Out of the link while frames borrow from it, so that the handlers
        // may change the rest of the link.
        let mut input = std::mem::take(&mut link.input);
        let mut used = 0;
        let mut result = Ok(());
        loop {
            if let Some((message, len)) = resp::message(&input[used..]) {
                used += len;
                let pattern = message.pattern;
                self.message(pattern, message.channel, message.payload, &link.refilling, flush);
                continue;
            }
            let (value, len) = match resp::parse(&input[used..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(malformed) => {
                    tracing::warn!("redis: {malformed}");
                    result = Err(Lost);
                    break;
                }
            };
            used += len;
            let handled = match value {
                Value::Push(items) => self.push(&items, link, flush),
                reply => match link.awaiting.pop_front() {
                    Some((_, awaiting)) => self.reply(awaiting, &reply, link, flush),
                    None => {
                        tracing::warn!("redis: a reply nothing asked for");
                        Err(Lost)
                    }
                },
            };
            if handled.is_err() {
                result = handled;
                break;
            }
        }
        input.advance(used);
        link.input = input;
        link.ahead.handled(used);
        result
    }

    /// A push: a message, or an acknowledgement.
    fn push(
        &mut self,
        items: &[Value<'_>],
        link: &mut Link,
        flush: &mut Flush,
    ) -> Result<(), Lost> {
        match items {
            [Value::Bulk(b"message" | b"smessage"), Value::Bulk(channel), Value::Bulk(payload)] => {
                self.message(None, channel, payload, &link.refilling, flush);
            }
            [
                Value::Bulk(b"pmessage"),
                Value::Bulk(pattern),
                Value::Bulk(channel),
                Value::Bulk(payload),
            ] => {
                self.message(Some(pattern), channel, payload, &link.refilling, flush);
            }
            // Not the answer to our SUNSUBSCRIBE: the channel's slot left
            // this master (resharding, a failover).
            [Value::Bulk(b"sunsubscribe"), Value::Bulk(channel), ..]
                if !matches!(
                    link.awaiting.front(),
                    Some((_, Awaiting::Unsubscribed(name))) if name[..] == channel[..]
                ) =>
            {
                let topic = Topic::channel(Bytes::copy_from_slice(channel));
                tracing::debug!(node = link.node, "redis: sunsubscribe pushed for {topic:?}");
                if self.placed.get(&topic) == Some(&link.node) {
                    tracing::info!(
                        "redis cluster: channel {} moved; resubscribing at its new master",
                        String::from_utf8_lossy(channel)
                    );
                    link.refilling.remove(&topic.name);
                    self.displace(&topic, link.node, flush);
                }
            }
            [
                Value::Bulk(
                    b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
                    | b"sunsubscribe",
                ),
                ..,
            ] => match link.awaiting.pop_front() {
                Some((_, Awaiting::Subscribed(_, waiters))) => {
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
                Some((_, Awaiting::Unsubscribed(_))) => {}
                _ => {
                    tracing::warn!("redis: an acknowledgement nothing asked for");
                    return Err(Lost);
                }
            },
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
        link: &mut Link,
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
            // (an ACL; on a cluster, `MOVED`: the map was stale). Its
            // waiters are told; on a cluster the others wait for the
            // channel's new master.
            Awaiting::Subscribed(topic, waiters) => {
                tracing::warn!("redis: subscription refused: {}", describe(reply));
                for waiter in waiters {
                    self.release(&topic);
                    let _ = waiter.send(Err(Error::BackendUnavailable));
                }
                if link.shard && self.placed.get(&topic) == Some(&link.node) {
                    link.refilling.remove(&topic.name);
                    self.displace(&topic, link.node, flush);
                }
            }
            Awaiting::Unsubscribed(_) => {}
            Awaiting::Join { join, cancelled } => self.joined(join, cancelled, reply, flush),
            Awaiting::Refill { channel, since } => {
                link.refilling.remove(&channel);
                // A channel that left this connection meanwhile (its slot
                // moved) is refilled where it went, from the same message.
                let topic = Topic::channel(channel);
                if self.placed.get(&topic) == Some(&link.node) {
                    let from = self.left.remove(&topic.name).unwrap_or(link.node);
                    self.refilled(topic.name, &since, reply, from, flush);
                }
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
                Some(missed) if history::replay(&join.outbox, &name, &missed, flush) => {
                    Resumed::Recovered(missed.len())
                }
                _ => Resumed::NotRecovered(Some(position.clone())),
            }
        });
        let _ = join.reply.send(Ok(Joined { topic, position, resumed }));
    }

    /// A history channel's read after a reconnect: the messages missed
    /// meanwhile go to its subscribers, or they are told of the gap
    /// (counted against node `from`, whose connection it left).
    fn refilled(
        &mut self,
        channel: Bytes,
        since: &Position,
        reply: &Value<'_>,
        from: usize,
        flush: &mut Flush,
    ) {
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
                self.gap(&Topic::channel(channel.clone()), from, flush);
                self.set_last(&channel, position);
            }
            None => {
                tracing::warn!("redis: crier_read failed: {}", describe(reply));
                self.gap(&Topic::channel(channel), from, flush);
            }
        }
    }

    fn set_last(&mut self, channel: &Bytes, position: Position) {
        if let Some(last) = self.last.get_mut(channel) {
            *last = position;
        }
    }

    /// Tells `topic`'s subscribers that messages may have been lost,
    /// counted against node `from`: the one whose connection it left.
    fn gap(&self, topic: &Topic, from: usize, flush: &mut Flush) {
        if let Some(node) = self.nodes.get(from) {
            node.counters.gaps.inc();
        }
        self.registry.gap(topic, flush);
    }

    /// Turns one request into commands on the connection of the node that
    /// serves its topic; while that connection is down, a subscription that
    /// needs it is refused at once.
    fn apply(&mut self, request: Request) {
        match request {
            Request::Attach(topic, reply) => {
                let Some(index) = self.live_route(&topic) else {
                    let _ = reply.send(Err(Error::BackendUnavailable));
                    return;
                };
                *self.wanted.entry(topic.clone()).or_insert(0) += 1;
                let Some(mut link) = self.nodes[index].link.take() else { return };
                if !self.placed.contains_key(&topic) {
                    self.place(std::slice::from_ref(&topic), &mut link);
                }
                match link.in_flight(&topic) {
                    // Redis has not acknowledged it yet: wait with the first.
                    Some(waiters) => waiters.push(reply),
                    None => {
                        let _ = reply.send(Ok(()));
                    }
                }
                self.nodes[index].link = Some(link);
            }
            Request::Detach(topic, id) => {
                let at = self.placed.get(&topic).copied();
                let link = at.and_then(|index| self.nodes[index].link.as_mut());
                if topic.kind == Kind::Channel && self.history.keeps(&topic.name) {
                    // Joins add to the registry here: undo here too, and
                    // cancel one still waiting for its read.
                    self.registry.remove(&topic, id);
                    for (_, awaiting) in link.into_iter().flat_map(|link| link.awaiting.iter_mut())
                    {
                        if let Awaiting::Join { join, cancelled } = awaiting
                            && join.channel == topic
                            && join.outbox.id() == id
                        {
                            *cancelled = true;
                        }
                    }
                }
                if self.release(&topic)
                    && let Some(link) = at.and_then(|index| self.nodes[index].link.as_mut())
                {
                    link.change(false, topic.kind, &[&topic]);
                    link.expect(Awaiting::Unsubscribed(topic.name.clone()));
                }
            }
            Request::Join(join) => {
                let Some(index) = self.live_route(&join.channel) else {
                    let _ = join.reply.send(Err(Error::BackendUnavailable));
                    return;
                };
                let Some(mut link) = self.nodes[index].link.take() else { return };
                if !join.subscribed {
                    *self.wanted.entry(join.channel.clone()).or_insert(0) += 1;
                }
                if !self.placed.contains_key(&join.channel) {
                    self.place(std::slice::from_ref(&join.channel), &mut link);
                }
                let since = match &join.resume {
                    Some(Some(since)) => Some(since.offset),
                    _ => None,
                };
                let read =
                    stored::read(&join.channel.name, since, self.read_limit(), true, &self.history);
                link.output.extend_from_slice(&read);
                link.expect(Awaiting::Join { join, cancelled: false });
                self.nodes[index].link = Some(link);
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
                self.placed.remove(topic);
                if topic.kind == Kind::Channel {
                    self.last.remove(&topic.name);
                    self.left.remove(&topic.name);
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

impl Node {
    fn new(target: Target) -> Node {
        let label = cluster::host_port(&target.addr());
        let counters = metrics::get().redis_node(&label);
        Node {
            target,
            link: None,
            opening: false,
            delay: Duration::ZERO,
            attempt: 0,
            serving: true,
            label,
            counters,
            ready: false,
            reported: None,
        }
    }
}

/// What whichever connection's reader read first: `(node, chunk)`, `None`
/// once that connection ended. Never ready without a connection. Starts at
/// a random one, so that a busy master cannot starve the others.
async fn read_any(nodes: &mut [Node]) -> (usize, Option<Bytes>) {
    let start = fastrand::usize(..nodes.len().max(1));
    std::future::poll_fn(|cx| {
        let count = nodes.len();
        for step in 0..count {
            let index = (start + step) % count;
            let Some(link) = nodes[index].link.as_mut() else { continue };
            if let Poll::Ready(chunk) = link.chunks.poll_recv(cx) {
                return Poll::Ready((index, chunk));
            }
        }
        Poll::Pending
    })
    .await
}

/// Resolves when a cluster's map changes; never for a single Redis (nor
/// once the map's task is gone).
async fn map_changed(layout: &mut Layout) {
    if let Layout::Cluster(shared) = layout
        && shared.map.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// A reply for a log line.
fn describe(reply: &Value<'_>) -> String {
    match reply {
        Value::Error(text) => String::from_utf8_lossy(text).into_owned(),
        other => format!("unexpected reply {other:?}"),
    }
}
