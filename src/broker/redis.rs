//! The Redis backend: Redis Pub/Sub carries messages between crier nodes and
//! from any Redis client; each node fans them out locally.
//!
//! One task (the *subscriber*) owns the node's Redis subscription connection.
//! It counts local interest per channel and pattern, sends `SUBSCRIBE` for the
//! first local subscriber and `UNSUBSCRIBE` after the last, and answers the
//! waiting connection only once Redis has acknowledged: a message published
//! after a client saw `CONFIRMED` is never lost. Requests that arrive while it
//! waits are batched into the next round trip.
//!
//! A second task reads messages off that connection as fast as Redis sends
//! them (Redis cuts subscribers that fall far behind) and delivers them
//! through the registry. `PUBLISH` goes over a separate multiplexed
//! connection, since a connection in subscribe mode cannot publish.
//!
//! When Redis goes away, clients stay connected. The subscriber reconnects with
//! capped exponential backoff and jitter and resubscribes everything still in
//! use; meanwhile new subscriptions and publishes fail at once with
//! `ERR backend unavailable`.

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Broker, Kind, Registry, Subscribed, Topic};
use crate::history::{Position, Resumed};
use crate::metrics;
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;
use crate::sync;

/// How long Redis may take to answer anything before the connection is
/// considered lost.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle subscription connection is checked with a PING, so that
/// a silent network cut is noticed without waiting for traffic.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Reconnection backoff: first delay and cap (each delay is jittered).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// See the module documentation.
pub struct RedisBroker {
    registry: Arc<Registry>,
    requests: mpsc::UnboundedSender<Request>,
    /// The publishing connection; `None` while Redis is unreachable.
    publisher: Arc<RwLock<Option<MultiplexedConnection>>>,
    /// The subscription connection is up: new subscriptions can be served.
    connected: Arc<AtomicBool>,
    target: String,
}

enum Request {
    /// A local subscriber was added: answer once Redis delivers the topic here.
    Attach(Topic, oneshot::Sender<Result<(), Error>>),
    /// A local subscriber left.
    Detach(Topic),
}

impl RedisBroker {
    /// Starts the backend; it connects in the background and keeps trying, so
    /// a server started while Redis is down still starts.
    pub fn start(
        url: &str,
        max_channels: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<RedisBroker>> {
        // rustls needs a process-wide crypto provider for rediss:// URLs; a
        // second install (another broker in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client =
            redis::Client::open(url).map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
        let info = client.get_connection_info();
        let target = format!("redis at {}", info.addr());
        let registry = Arc::new(Registry::new(max_channels));
        let publisher = Arc::new(RwLock::new(None));
        let (requests, inbox) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            client,
            registry: Arc::clone(&registry),
            publisher: Arc::clone(&publisher),
            connected: Arc::clone(&connected),
            requests: inbox,
            wanted: HashMap::new(),
            shutdown,
        };
        tokio::spawn(subscriber.run());
        Ok(Arc::new(RedisBroker { registry, requests, publisher, connected, target }))
    }

    fn publisher(&self) -> Option<MultiplexedConnection> {
        sync::read(&self.publisher).clone()
    }
}

impl Broker for RedisBroker {
    async fn subscribe(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<Subscribed, Error> {
        // Registered before Redis confirms, so nothing published after the
        // acknowledgement can slip past; the outbox holds it behind the reply.
        let (topic, _) = self.registry.add(topic, outbox)?;
        let (reply, answer) = oneshot::channel();
        let attached = match self.requests.send(Request::Attach(topic.clone(), reply)) {
            Ok(()) => answer.await.unwrap_or(Err(Error::BackendUnavailable)),
            Err(_) => Err(Error::BackendUnavailable),
        };
        match attached {
            Ok(()) => Ok(Subscribed { topic, position: None }),
            Err(error) => {
                self.registry.remove(&topic, outbox.id());
                Err(error)
            }
        }
    }

    /// History with Redis is not built yet: a resume subscribes and says the
    /// gap cannot be filled.
    async fn resume(
        &self,
        channel: Topic,
        _since: Option<Position>,
        subscribed: bool,
        outbox: &Arc<Outbox>,
        _flush: &mut Flush,
    ) -> Result<(Topic, Resumed), Error> {
        let topic = if subscribed { channel } else { self.subscribe(channel, outbox).await?.topic };
        Ok((topic, Resumed::NotRecovered(None)))
    }

    fn unsubscribe(&self, topic: &Topic, id: ConnId) {
        self.registry.remove(topic, id);
        let _ = self.requests.send(Request::Detach(topic.clone()));
    }

    /// Through Redis: local subscribers get the message back from Redis, like
    /// every node's, so nothing is queued on `flush` here.
    async fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        _flush: &mut Flush,
    ) -> Result<(), Error> {
        let mut connection = self.publisher().ok_or(Error::BackendUnavailable)?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&channel[..]).arg(&payload[..]);
        match tokio::time::timeout(REDIS_TIMEOUT, publish.query_async::<i64>(&mut connection)).await
        {
            Ok(Ok(_receivers)) => Ok(()),
            _ => {
                // Dropped (Redis's `timeout`, `CLIENT KILL`, a proxy or NAT
                // cutting an idle flow) or silent: the subscriber task opens a
                // new one at its next health check.
                *sync::write(&self.publisher) = None;
                Err(Error::BackendUnavailable)
            }
        }
    }

    fn history(
        &self,
        _channel: &Bytes,
        _since: Option<&Position>,
        _limit: usize,
    ) -> Option<(Position, Vec<(Position, Bytes)>)> {
        None
    }

    fn history_bytes(&self) -> usize {
        0
    }

    fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// The task that owns the subscription connection; see the module documentation.
struct Subscriber {
    client: redis::Client,
    registry: Arc<Registry>,
    publisher: Arc<RwLock<Option<MultiplexedConnection>>>,
    connected: Arc<AtomicBool>,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Local subscribers per topic: what this node needs from Redis.
    wanted: HashMap<Topic, usize>,
    shutdown: CancellationToken,
}

/// A live subscription connection and its reader task.
struct Link {
    sink: PubSubSink,
    reader: JoinHandle<()>,
}

/// The connection failed or timed out; the subscriber reconnects.
struct Lost;

impl Subscriber {
    async fn run(mut self) {
        while let Some(mut link) = self.connect().await {
            let served = self.serve(&mut link).await;
            self.set_connected(false);
            link.reader.abort();
            self.set_publisher(None);
            match served {
                Ok(()) => return,
                Err(Lost) => {
                    metrics::get().redis_reconnects.inc();
                    tracing::warn!("redis: connection lost; reconnecting");
                }
            }
        }
    }

    /// Connects (retrying with backoff, answering requests meanwhile) and
    /// resubscribes everything in use. `None` on shutdown.
    async fn connect(&mut self) -> Option<Link> {
        let mut delay = BACKOFF_FIRST;
        let mut attempt = 1u32;
        loop {
            match self.open().await {
                Ok(link) => return Some(link),
                Err(error) => tracing::warn!(
                    attempt,
                    "redis: cannot connect ({error}); retrying in {} ms",
                    delay.as_millis()
                ),
            }
            // Full jitter keeps a fleet of nodes from reconnecting in step.
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

    /// While Redis is down every subscription needs it: refuse at once.
    fn refuse(&mut self, request: Request) {
        match request {
            Request::Attach(_, reply) => {
                let _ = reply.send(Err(Error::BackendUnavailable));
            }
            Request::Detach(topic) => {
                self.release(&topic);
            }
        }
    }

    fn release(&mut self, topic: &Topic) -> bool {
        match self.wanted.get_mut(topic) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.wanted.remove(topic);
                true
            }
            None => false,
        }
    }

    async fn open(&mut self) -> redis::RedisResult<Link> {
        let connect = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let publisher = self.client.get_multiplexed_async_connection().await?;
            redis::RedisResult::Ok((pubsub, publisher))
        };
        let (pubsub, publisher) =
            tokio::time::timeout(REDIS_TIMEOUT, connect).await.map_err(|_| timed_out())??;
        let (mut sink, stream) = pubsub.split();
        let topics: Vec<Topic> = self.wanted.keys().cloned().collect();
        send(&mut sink, Change::Subscribe, &topics).await?;
        let reader = tokio::spawn(read_messages(stream, Arc::clone(&self.registry)));
        self.set_publisher(Some(publisher));
        // Before the log line, which tests and operators take as "ready".
        self.set_connected(true);
        tracing::info!("redis: connected; {} channels and patterns subscribed", topics.len());
        Ok(Link { sink, reader })
    }

    /// Redis answers, but the publishing connection was found broken: opens
    /// a new one (publishes fail at once meanwhile).
    async fn restore_publisher(&self) {
        if sync::read(&self.publisher).is_some() {
            return;
        }
        let connect = self.client.get_multiplexed_async_connection();
        match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(Ok(publisher)) => {
                self.set_publisher(Some(publisher));
                tracing::info!("redis: publishing connection restored");
            }
            Ok(Err(error)) => {
                tracing::warn!("redis: cannot reopen the publishing connection: {error}")
            }
            Err(_) => tracing::warn!("redis: cannot reopen the publishing connection: timed out"),
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        metrics::get().redis_connected.set(i64::from(connected));
    }

    fn set_publisher(&self, publisher: Option<MultiplexedConnection>) {
        *sync::write(&self.publisher) = publisher;
    }

    /// Serves requests until the connection is lost (`Err`) or shutdown (`Ok`).
    async fn serve(&mut self, link: &mut Link) -> Result<(), Lost> {
        let start = tokio::time::Instant::now() + HEALTH_CHECK_EVERY;
        let mut health = tokio::time::interval_at(start, HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => request,
                    None => return Ok(()),
                },
                _ = health.tick() => {
                    let ping = link.sink.ping::<redis::Value>();
                    match tokio::time::timeout(REDIS_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {
                            self.restore_publisher().await;
                            continue;
                        }
                        _ => return Err(Lost),
                    }
                }
                _ = &mut link.reader => return Err(Lost),
                _ = self.shutdown.cancelled() => return Ok(()),
            };
            let mut batch = vec![first];
            while let Ok(request) = self.requests.try_recv() {
                batch.push(request);
            }
            self.apply(batch, &mut link.sink).await?;
        }
    }

    /// Applies a batch of requests with at most one UNSUBSCRIBE and one
    /// SUBSCRIBE round trip per kind of topic.
    async fn apply(&mut self, batch: Vec<Request>, sink: &mut PubSubSink) -> Result<(), Lost> {
        let mut leaving = Vec::new();
        let mut joining = Vec::new();
        let mut new: HashSet<Topic> = HashSet::new();
        let mut waiting = Vec::new();
        for request in batch {
            match request {
                Request::Attach(topic, reply) => {
                    let count = self.wanted.entry(topic.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        new.insert(topic.clone());
                        joining.push(topic.clone());
                    }
                    if new.contains(&topic) {
                        waiting.push((topic, reply));
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
                Request::Detach(topic) => {
                    if self.release(&topic) {
                        leaving.push(topic);
                    }
                }
            }
        }
        // Unsubscribing first keeps "last one left, then a new one came" right.
        let left = send(sink, Change::Unsubscribe, &leaving).await;
        let joined = match left {
            Ok(()) => send(sink, Change::Subscribe, &joining).await,
            Err(error) => Err(error),
        };
        let outcome = joined.as_ref().map(|_| ()).map_err(|_| Error::BackendUnavailable);
        for (topic, reply) in waiting {
            if outcome.is_err() {
                self.release(&topic);
            }
            let _ = reply.send(outcome);
        }
        joined.map_err(|error| {
            tracing::warn!("redis: subscription request failed: {error}");
            Lost
        })
    }
}

#[derive(Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// Sends (P)SUBSCRIBE or (P)UNSUBSCRIBE for `topics` and waits for every
/// acknowledgement, bounded by `REDIS_TIMEOUT`.
async fn send(sink: &mut PubSubSink, change: Change, topics: &[Topic]) -> redis::RedisResult<()> {
    for kind in [Kind::Channel, Kind::Pattern] {
        let names: Vec<&[u8]> =
            topics.iter().filter(|t| t.kind == kind).map(|t| &t.name[..]).collect();
        if names.is_empty() {
            continue;
        }
        let acknowledged = async {
            match (change, kind) {
                (Change::Subscribe, Kind::Channel) => sink.subscribe(&names).await,
                (Change::Subscribe, Kind::Pattern) => sink.psubscribe(&names).await,
                (Change::Unsubscribe, Kind::Channel) => sink.unsubscribe(&names).await,
                (Change::Unsubscribe, Kind::Pattern) => sink.punsubscribe(&names).await,
            }
        };
        tokio::time::timeout(REDIS_TIMEOUT, acknowledged).await.map_err(|_| timed_out())??;
    }
    Ok(())
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "redis timed out"))
}

/// Delivers every message Redis sends until the connection ends. Messages
/// that arrived together are flushed to subscribers together.
async fn read_messages(mut stream: PubSubStream, registry: Arc<Registry>) {
    let mut flush = Flush::default();
    while let Some(message) = stream.next().await {
        deliver(&registry, &message, &mut flush);
        while let Some(Some(message)) = stream.next().now_or_never() {
            deliver(&registry, &message, &mut flush);
        }
        flush.run();
    }
}

fn deliver(registry: &Registry, message: &redis::Msg, flush: &mut Flush) {
    let Ok(channel) = message.get_channel::<Vec<u8>>() else {
        return;
    };
    let payload = message.get_payload_bytes();
    if !message.from_pattern() {
        registry.deliver_channel(&channel, payload, flush);
    } else if let Ok(pattern) = message.get_pattern::<Vec<u8>>() {
        registry.deliver_pattern(&pattern, &channel, payload, flush);
    }
}
