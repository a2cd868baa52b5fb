//! What `GET /metrics` reports, in the Prometheus text format (through
//! prometheus-client).
//!
//! The counters of the delivery path (messages, deliveries, bytes sent) are
//! [`Sharded`]: each thread adds to its own cache line, so a fan-out to
//! thousands of subscribers on two cores never fights over one counter. Each
//! is bumped once per publish or per write, never per subscriber under a lock.
//! Everything else changes once per connection or subscription and uses
//! prometheus-client's atomics directly.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::server::closed::Closed;

/// Messages that entered this node's fan-out (published here, or received
/// from Redis).
pub static MESSAGES: Sharded = Sharded::new();
/// Messages queued to a subscriber.
pub static DELIVERIES: Sharded = Sharded::new();
/// Bytes written to clients.
pub static SENT_BYTES: Sharded = Sharded::new();

/// The transports a client connects over: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
    Sse,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Tcp, Transport::WebSocket, Transport::Sse];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

type Labels<const N: usize> = [(&'static str, &'static str); N];
/// `node="HOST:PORT"`: a Redis node, as the cluster announces it.
type NodeLabel = [(&'static str, String); 1];

/// The counters of one Redis node, held by the subscriber so that an event
/// costs no lookup in the family. Counters are never removed, so these
/// handles stay the ones rendered.
#[derive(Debug, Clone, Default)]
pub struct RedisNode {
    pub reconnects: Counter,
    pub gaps: Counter,
}

/// See the module documentation.
pub struct Metrics {
    registry: Registry,
    /// Open connections, by transport (indexed like `Transport::ALL`).
    connections: [Gauge; 3],
    closed: Family<Labels<2>, Counter>,
    /// Subscriptions of all connections (channels and patterns).
    pub subscriptions: Gauge,
    /// Channels plus patterns with at least one subscriber on this node.
    pub channels: Gauge,
    /// Per Redis node (`node="HOST:PORT"`): 1 while its subscription
    /// connection is up and resubscribed, 0 while it is not. Labelled, so
    /// that on a cluster the operator sees which master is out; a node that
    /// left the cluster's map has no series (it is not wanted, so it is
    /// not down).
    redis_connected: Family<NodeLabel, Gauge>,
    /// Per Redis node: its subscription connection was lost.
    redis_reconnects: Family<NodeLabel, Counter>,
    /// Per Redis node: gap signals (a channel or pattern whose subscribers
    /// were told that messages may have been lost), counted against the
    /// node the channel left.
    redis_gaps: Family<NodeLabel, Counter>,
    /// The Redis nodes this node subscribes through (1 for `--redis`, the
    /// masters of the latest map for `--redis-cluster`, 0 with the embedded
    /// broker): with `redis_nodes_connected`, one figure per crier node that
    /// reads the same for a single Redis and a cluster.
    pub redis_nodes: Gauge,
    /// Of `redis_nodes`, those whose `redis_connected` is 1.
    pub redis_nodes_connected: Gauge,
    pub http_publishes: Counter,
    /// Payload bytes kept in the embedded history.
    pub history_bytes: Gauge,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("crier");
        let by_transport = Family::<Labels<1>, Gauge>::default();
        let connections = Transport::ALL
            .map(|t| by_transport.get_or_create(&[("transport", t.as_str())]).clone());
        registry.register("connections", "Open client connections, by transport", by_transport);
        let closed = Family::<Labels<2>, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections ended, by transport and reason",
            closed.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register(
            "subscriptions",
            "Subscriptions (channels and patterns) of all connections",
            subscriptions.clone(),
        );
        let channels = Gauge::default();
        registry.register(
            "channels",
            "Channels and patterns with at least one local subscriber",
            channels.clone(),
        );
        registry.register(
            "messages_published",
            "Messages fanned out by this node (published here or received from Redis)",
            Total(&MESSAGES),
        );
        registry.register("deliveries", "Messages queued to subscribers", Total(&DELIVERIES));
        registry.register("sent_bytes", "Bytes written to clients", Total(&SENT_BYTES));
        let http_publishes = Counter::default();
        registry.register(
            "http_publishes",
            "Accepted POST /publish requests",
            http_publishes.clone(),
        );
        let redis_connected = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "redis_connected",
            "1 while the subscription connection to this Redis node is up and resubscribed, else 0",
            redis_connected.clone(),
        );
        let redis_reconnects = Family::<NodeLabel, Counter>::default();
        registry.register(
            "redis_reconnects",
            "Times the subscription connection to this Redis node was lost",
            redis_reconnects.clone(),
        );
        let redis_gaps = Family::<NodeLabel, Counter>::default();
        registry.register(
            "redis_gaps",
            "Channels and patterns whose subscribers were told messages may be lost, by the Redis node they left",
            redis_gaps.clone(),
        );
        let redis_nodes = Gauge::default();
        registry.register(
            "redis_nodes",
            "Redis nodes this node subscribes through (the masters, on a cluster)",
            redis_nodes.clone(),
        );
        let redis_nodes_connected = Gauge::default();
        registry.register(
            "redis_nodes_connected",
            "Of crier_redis_nodes, those whose crier_redis_connected is 1",
            redis_nodes_connected.clone(),
        );
        let history_bytes = Gauge::default();
        registry.register(
            "history_bytes",
            "Payload bytes kept in history (embedded backend)",
            history_bytes.clone(),
        );
        Metrics {
            history_bytes,
            registry,
            connections,
            closed,
            subscriptions,
            channels,
            redis_connected,
            redis_reconnects,
            redis_gaps,
            redis_nodes,
            redis_nodes_connected,
            http_publishes,
        }
    }

    /// The counters of Redis node `node` (`HOST:PORT`), their series made
    /// at 0 on the first call: a counter that appears with its first
    /// increment would hide that increment from `increase()`.
    pub fn redis_node(&self, node: &str) -> RedisNode {
        let label = [("node", node.to_string())];
        RedisNode {
            reconnects: self.redis_reconnects.get_or_create_owned(&label),
            gaps: self.redis_gaps.get_or_create_owned(&label),
        }
    }

    /// Sets Redis node `node`'s `crier_redis_connected`; `None` removes its
    /// series (the node left the cluster's map: nobody wants it connected).
    pub fn redis_connected(&self, node: &str, connected: Option<bool>) {
        let label = [("node", node.to_string())];
        match connected {
            Some(connected) => {
                self.redis_connected.get_or_create(&label).set(i64::from(connected));
            }
            None => {
                self.redis_connected.remove(&label);
            }
        }
    }

    pub fn connection_opened(&self, transport: Transport) {
        self.connections[transport as usize].inc();
    }

    pub fn connection_closed(&self, transport: Transport, closed: Closed) {
        self.connections[transport as usize].dec();
        self.closed
            .get_or_create(&[("transport", transport.as_str()), ("reason", closed.as_str())])
            .inc();
    }

    /// A connection turned away before it was served (over
    /// `--max-connections`, a failed TLS handshake), on a listener (`tcp`
    /// or `http`): counted as closed, never as open.
    pub fn connection_refused(&self, listener: &'static str, closed: Closed) {
        self.closed.get_or_create(&[("transport", listener), ("reason", closed.as_str())]).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

const SHARDS: usize = 16;

/// One cache line per shard, so that two threads never share one.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// A counter split across threads; see the module documentation.
#[derive(Debug)]
pub struct Sharded([Shard; SHARDS]);

impl Sharded {
    pub const fn new() -> Sharded {
        Sharded([const { Shard(AtomicU64::new(0)) }; SHARDS])
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|shard| shard.0.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Sharded {
    fn default() -> Sharded {
        Sharded::new()
    }
}

/// This thread's shard: threads take them in turn.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// A [`Sharded`] counter as a Prometheus counter.
#[derive(Debug)]
struct Total(&'static Sharded);

impl EncodeMetric for Total {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counters_sum_every_thread() {
        let counter: &'static Sharded = Box::leak(Box::new(Sharded::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..1000).for_each(|_| counter.add(2))))
            .collect();
        threads.into_iter().for_each(|t| t.join().expect("no panic"));
        assert_eq!(counter.get(), 8000);
    }

    #[test]
    fn renders_every_family() {
        let metrics = Metrics::new();
        metrics.connection_opened(Transport::WebSocket);
        metrics.connection_closed(Transport::WebSocket, Closed::SlowConsumer);
        let text = metrics.render();
        for expected in [
            "crier_connections{transport=\"websocket\"} 0",
            "crier_connections_closed_total{transport=\"websocket\",reason=\"slow_consumer\"} 1",
            "crier_subscriptions 0",
            "crier_channels 0",
            "# TYPE crier_deliveries counter",
            "crier_sent_bytes_total",
            "crier_messages_published_total",
            "crier_redis_nodes 0",
            "crier_redis_nodes_connected 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }

    #[test]
    fn redis_series_are_per_node_and_a_node_leaving_removes_its_gauge() {
        let metrics = Metrics::new();
        // Embedded: no node, no series.
        assert!(!metrics.render().contains("crier_redis_connected{"));
        let node = metrics.redis_node("10.0.0.1:6379");
        metrics.redis_node("10.0.0.2:6379");
        node.reconnects.inc();
        node.gaps.inc();
        metrics.redis_connected("10.0.0.1:6379", Some(false));
        metrics.redis_connected("10.0.0.2:6379", Some(true));
        let text = metrics.render();
        for expected in [
            "crier_redis_connected{node=\"10.0.0.1:6379\"} 0",
            "crier_redis_connected{node=\"10.0.0.2:6379\"} 1",
            "crier_redis_reconnects_total{node=\"10.0.0.1:6379\"} 1",
            "crier_redis_reconnects_total{node=\"10.0.0.2:6379\"} 0",
            "crier_redis_gaps_total{node=\"10.0.0.1:6379\"} 1",
            "crier_redis_gaps_total{node=\"10.0.0.2:6379\"} 0",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected} missing from:\n{text}");
        }
        metrics.redis_connected("10.0.0.1:6379", None);
        let text = metrics.render();
        assert!(!text.contains("crier_redis_connected{node=\"10.0.0.1:6379\"}"), "{text}");
        // Its counters stay: what happened before it left still counts.
        assert!(text.contains("crier_redis_reconnects_total{node=\"10.0.0.1:6379\"} 1"), "{text}");
    }
}
