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
    /// 1 while the Redis backend is connected (always 0 with the embedded one).
    pub redis_connected: Gauge,
    pub redis_reconnects: Counter,
    /// Gap signals: a channel or pattern whose subscribers were told that
    /// messages may have been lost.
    pub redis_gaps: Counter,
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
        let redis_connected = Gauge::default();
        registry.register(
            "redis_connected",
            "1 while the Redis backend is connected, else 0",
            redis_connected.clone(),
        );
        let redis_reconnects = Counter::default();
        registry.register(
            "redis_reconnects",
            "Times the Redis connection was lost and reopened",
            redis_reconnects.clone(),
        );
        let redis_gaps = Counter::default();
        registry.register(
            "redis_gaps",
            "Channels and patterns whose subscribers were told messages may be lost (Redis cut this node off)",
            redis_gaps.clone(),
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
            http_publishes,
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
            "crier_redis_connected 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }
}
