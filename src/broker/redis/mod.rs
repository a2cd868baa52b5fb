//! The Redis backend: Redis Pub/Sub carries messages between crier nodes and
//! from any Redis client; each node fans them out locally.
//!
//! - `subscriber`: the node's subscription connection, one task that
//!   subscribes for the node (one Redis subscription per topic in use,
//!   whatever the number of local subscribers) and delivers what Redis sends.
//! - `publisher`: the node's publishing connection, one task that pipelines
//!   every `PUBLISH` and history read.
//! - `connect`: opening a connection (TCP or TLS, `HELLO 3`, credentials).
//! - `resp`: the protocol, parsed in place.
//!
//! Channels that keep history keep it in Redis (`history::redis`): published
//! through a Redis function that stores and publishes in one step, joined and
//! resumed through reads ordered with the messages on the subscription
//! connection.
//!
//! - `cluster`: Redis Cluster: slots, the map of masters, and the router
//!   that sends each publish to its channel's master.
//!
//! On a Redis Cluster (`--redis-cluster`) channels are shard channels
//! (`SSUBSCRIBE`, `SPUBLISH`): the subscriber keeps one connection per
//! master, the router one publishing connection per master. Patterns cannot
//! be sharded (a pattern would have to be asked of every master, and
//! Redis has no sharded `PSUBSCRIBE`): they are refused, and so are history
//! channels whose name holds a brace (see `history::redis::shardable`).
//!
//! When Redis goes away, clients stay connected. Both tasks reconnect with
//! capped, jittered backoff; the subscriber resubscribes everything still in
//! use and refills what it can. Meanwhile new subscriptions and publishes
//! fail at once with `ERR backend unavailable`.

pub mod cluster;
pub mod connect;
mod link;
pub mod publisher;
pub mod resp;
pub mod subscriber;

use anyhow::Context;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, Kind, Published, Registry, Subscribed, Topic, Waiter};
use crate::history::redis as stored;
use crate::history::{Position, Resumed, Settings};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;
use connect::Target;
use publisher::{Done, Job, Publisher};
use subscriber::{Join, Joined, Layout, Request, Subscriber};

/// Publishes and history reads queued for Redis, node-wide, before
/// publishing connections wait: a bound on memory when clients publish
/// faster than Redis answers.
const MAX_QUEUED_JOBS: usize = 16 * 1024;

/// The state of the node's two connections, which each task watches.
#[derive(Debug, Default)]
pub struct Health {
    /// The subscription connection is up and every topic resubscribed.
    pub subscribed: AtomicBool,
    /// The publishing connection is up.
    pub publishing: AtomicBool,
    /// Either changed: the subscriber announces readiness once both are up,
    /// and a publisher waiting out a backoff tries again at once.
    pub changed: Notify,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.publishing.load(Ordering::Relaxed)
    }
}

/// See the module documentation.
pub struct RedisBroker {
    registry: Arc<Registry>,
    requests: mpsc::UnboundedSender<Request>,
    jobs: mpsc::Sender<Job>,
    history: Settings,
    health: Arc<Health>,
    target: String,
    /// A Redis Cluster: shard channels, no patterns.
    cluster: bool,
    /// Cancelled when the subscription task's thread has ended.
    stopped: CancellationToken,
}

/// Which Redis: `--redis URL` or `--redis-cluster URL[,URL...]`.
pub enum Servers<'a> {
    Single(&'a str),
    /// Seed nodes: any one that answers tells where the others are.
    Cluster(&'a str),
}

impl RedisBroker {
    /// Starts the backend; it connects in the background and keeps trying, so
    /// a server started while Redis is down still starts.
    pub fn start(
        servers: Servers<'_>,
        max_channels: usize,
        read_ahead: usize,
        history: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<RedisBroker>> {
        let registry = Arc::new(Registry::new(max_channels));
        let (requests, inbox) = mpsc::unbounded_channel();
        let (jobs, queued) = mpsc::channel(MAX_QUEUED_JOBS);
        let health = Arc::new(Health::default());
        let functions = history.size > 0;
        let (layout, described, cluster) = match servers {
            Servers::Single(url) => {
                let target = Target::parse(url)
                    .map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
                let publisher = Publisher {
                    target: target.clone(),
                    jobs: queued,
                    functions,
                    health: Arc::clone(&health),
                    shutdown: shutdown.clone(),
                    bounce: None,
                    lost: None,
                };
                tokio::spawn(publisher.run());
                let described = format!("redis at {}", target.describe());
                (Layout::Single(target), described, false)
            }
            Servers::Cluster(urls) => {
                let seeds = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(|url| match Target::parse(url) {
                        Ok(target) if target.db() != 0 => Err(anyhow::anyhow!(
                            "--redis-cluster {url}: a cluster has only database 0"
                        )),
                        Ok(target) => Ok(target),
                        Err(error) => Err(anyhow::anyhow!("--redis-cluster {url}: {error}")),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let Some(seed) = seeds.first().cloned() else {
                    anyhow::bail!("--redis-cluster: at least one URL");
                };
                let described = format!(
                    "redis cluster at {}",
                    seeds.iter().map(Target::describe).collect::<Vec<_>>().join(",")
                );
                let (map, watched) = tokio::sync::watch::channel(Arc::default());
                let refresh = Arc::new(Notify::new());
                let shared = cluster::Shared { map: watched, refresh: Arc::clone(&refresh), seed };
                let topology =
                    cluster::Topology { seeds, map, refresh, shutdown: shutdown.clone() };
                let (bounce, bounced) = mpsc::unbounded_channel();
                let router = cluster::Router {
                    shared: shared.clone(),
                    jobs: queued,
                    bounced,
                    bounce,
                    functions,
                    shutdown: shutdown.clone(),
                    publishers: HashMap::new(),
                };
                // Each master's publishing connection comes up on first
                // use: readiness follows the subscription connections.
                health.publishing.store(true, Ordering::Relaxed);
                tokio::spawn(topology.run());
                tokio::spawn(router.run());
                (Layout::Cluster(shared), described, true)
            }
        };
        let subscriber = Subscriber::new(
            layout,
            Arc::clone(&registry),
            history.clone(),
            Arc::clone(&health),
            inbox,
            read_ahead,
            shutdown,
        );
        let stopped = CancellationToken::new();
        subscriber.spawn(stopped.clone()).context("cannot start the redis thread")?;
        Ok(Arc::new(RedisBroker {
            registry,
            requests,
            jobs,
            history,
            health,
            target: described,
            cluster,
            stopped,
        }))
    }

    /// Resolves once the subscription task has ended (after `shutdown`):
    /// its thread uses the runtime, which must not be gone before it.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// What a cluster cannot serve: patterns, and history channels whose
    /// name holds a brace.
    fn unshardable(&self, topic: &Topic) -> Result<(), Error> {
        if !self.cluster {
            return Ok(());
        }
        match topic.kind {
            Kind::Pattern => Err(Error::PatternsUnsupported),
            Kind::Channel if self.keeps(topic) && !stored::shardable(&topic.name) => {
                Err(Error::InvalidChannel)
            }
            Kind::Channel => Ok(()),
        }
    }

    /// The slot a job about `channel` goes to, on a cluster.
    fn slot(&self, channel: &[u8]) -> Option<u16> {
        self.cluster.then(|| cluster::slot(channel))
    }

    fn keeps(&self, topic: &Topic) -> bool {
        topic.kind == Kind::Channel && self.history.keeps(&topic.name)
    }

    /// Joins a history channel through the subscription connection.
    async fn join(
        &self,
        channel: Topic,
        outbox: &Arc<Outbox>,
        resume: Option<Option<Position>>,
        subscribed: bool,
    ) -> Result<Joined, Error> {
        let (reply, answer) = oneshot::channel();
        let join = Join { channel, outbox: Arc::clone(outbox), resume, subscribed, reply };
        self.requests.send(Request::Join(join)).map_err(|_| Error::BackendUnavailable)?;
        answer.await.unwrap_or(Err(Error::BackendUnavailable))
    }

    /// Reads up to `limit` messages of `channel` after offset `since`
    /// through the publishing connection (making no keys in Redis).
    async fn read(&self, channel: &[u8], since: u64, limit: usize) -> Result<stored::Read, Error> {
        let read = stored::read(channel, Some(since), limit, false, &self.history);
        let (sender, answer) = oneshot::channel();
        self.queue(Job::new(read, Done::Read(sender), self.slot(channel))).await;
        answer.await.unwrap_or(Err(Error::BackendUnavailable))
    }

    /// Queues a job for the publishing connection (on a cluster, the
    /// router).
    async fn queue(&self, job: Job) {
        if let Err(refused) = self.jobs.send(job).await {
            refused.0.done.answer(Err(Error::BackendUnavailable));
        }
    }
}

impl Broker for RedisBroker {
    async fn subscribe(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<Subscribed, Error> {
        self.unshardable(&topic)?;
        if self.keeps(&topic) {
            let joined = self.join(topic, outbox, None, false).await?;
            return Ok(Subscribed { topic: joined.topic, position: Some(joined.position) });
        }
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

    async fn resume(
        &self,
        channel: Topic,
        since: Option<Position>,
        subscribed: bool,
        outbox: &Arc<Outbox>,
        _flush: &mut Flush,
    ) -> Result<(Topic, Resumed), Error> {
        self.unshardable(&channel)?;
        if !self.keeps(&channel) {
            let topic =
                if subscribed { channel } else { self.subscribe(channel, outbox).await?.topic };
            return Ok((topic, Resumed::NotRecovered(None)));
        }
        let joined = self.join(channel, outbox, Some(since), subscribed).await?;
        let resumed = joined.resumed.unwrap_or(Resumed::NotRecovered(Some(joined.position)));
        Ok((joined.topic, resumed))
    }

    fn unsubscribe(&self, topic: &Topic, id: ConnId) {
        self.registry.remove(topic, id);
        let _ = self.requests.send(Request::Detach(topic.clone(), id));
    }

    /// Through Redis: local subscribers get the message back from Redis, like
    /// every node's, so nothing is queued on `flush` here.
    async fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        _flush: &mut Flush,
        waiter: Waiter<'_>,
    ) -> Published {
        if let Err(error) = self.unshardable(&Topic::channel(channel.clone())) {
            return Published::Done(Err(error));
        }
        let command = match (self.history.keeps(&channel), self.cluster) {
            (true, shard) => stored::publish(&channel, &payload, &self.history, shard),
            (false, false) => resp::encode(&[b"PUBLISH", &channel, &payload]),
            (false, true) => resp::encode(&[b"SPUBLISH", &channel, &payload]),
        };
        let slot = self.slot(&channel);
        match waiter {
            Waiter::Session(outbox, framing) => {
                let hold = outbox.hold_detached();
                let done = Done::Reply { outbox: Arc::clone(outbox), hold, framing };
                self.queue(Job::new(command, done, slot)).await;
                Published::Queued
            }
            Waiter::Caller => {
                let (sender, outcome) = oneshot::channel();
                self.queue(Job::new(command, Done::Published(sender), slot)).await;
                Published::Pending(outcome)
            }
        }
    }

    async fn history(
        &self,
        channel: &Bytes,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<Option<(Position, Vec<(Position, Bytes)>)>, Error> {
        if !self.history.keeps(channel) {
            return Ok(None);
        }
        self.unshardable(&Topic::channel(channel.clone()))?;
        let from = since.map_or(0, |since| since.offset);
        let mut read = self.read(channel, from, limit).await?;
        if from > 0 && since.is_some_and(|since| since.epoch != read.position.epoch) {
            // Everything of another epoch is after the client's position.
            read = self.read(channel, 0, limit).await?;
        }
        let (position, messages) = read.kept(&self.history);
        Ok(Some((position, messages)))
    }

    /// Kept in Redis, not here.
    fn history_bytes(&self) -> usize {
        0
    }

    fn ready(&self) -> bool {
        self.health.ready()
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}
