//! Results: latency histograms, the figures of a run, the human summary and
//! the one JSON line that scripts collect.

use std::sync::Mutex;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::Mode;
use super::targets::Target;
use super::wire::Transport;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to an hour.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// Latency histograms in a few shards. A histogram at this precision takes
/// ~270 KiB, so one per subscriber would cost gigabytes at 20,000
/// subscribers (and miss the CPU cache on every record); a few shards, each
/// locked once per read batch rather than per message, keep contention
/// negligible on a small machine. They are merged at the end.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub fn new(shards: usize) -> Result<Self> {
        let shards = (0..shards.max(1))
            .map(|_| {
                Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                    .map(Mutex::new)
                    .map_err(|e| anyhow!("histogram: {e:?}"))
            })
            .collect::<Result<_>>()?;
        Ok(Latencies { shards })
    }

    /// Records a batch of latencies (ns) into shard `shard % shard_count`.
    pub fn record(&self, shard: usize, values: &[u64]) {
        let mut h = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &v in values {
            h.saturating_record(v.max(1));
        }
    }

    pub fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
            .map_err(|e| anyhow!("histogram: {e:?}"))?;
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            all.add(&*h).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        }
        Ok(all)
    }
}

/// Latency percentiles in microseconds, publish to delivery. Flattened into
/// the JSON line as `latency_count`, `latency_p50_us`, ...
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LatencySummary {
    #[serde(rename = "latency_count")]
    pub count: u64,
    #[serde(rename = "latency_p50_us")]
    pub p50_us: f64,
    #[serde(rename = "latency_p90_us")]
    pub p90_us: f64,
    #[serde(rename = "latency_p99_us")]
    pub p99_us: f64,
    #[serde(rename = "latency_p999_us")]
    pub p999_us: f64,
    #[serde(rename = "latency_max_us")]
    pub max_us: f64,
    #[serde(rename = "latency_mean_us")]
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        LatencySummary {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1e3,
        }
    }
}

/// Everything a run measured, with all its parameters: serialised as the one
/// JSON line. Field names are a contract with the scripts that collect them.
#[derive(Debug, Serialize)]
pub struct Report {
    // Parameters.
    pub target: Target,
    pub mode: Mode,
    /// The subscribers' transport (publishers always use the native one).
    pub transport: Transport,
    /// Where the subscribers connect (the HTTP listener with `ws` and `sse`).
    pub addr: String,
    /// `target` itself, or `redis:ADDR` with `--publish-redis`.
    pub publish_via: String,
    /// Where the publishers connect (with `--redis-cluster`, every master
    /// owning a channel of the run, comma-separated; so is `addr`).
    pub publish_addr: String,
    /// `--redis-cluster`: how many masters own the run's channels.
    pub redis_cluster_masters: Option<usize>,
    pub subscribers: usize,
    pub publishers: usize,
    /// Publisher connections: `publishers`, times the masters on a cluster.
    pub publish_conns: usize,
    pub channels: usize,
    pub size: usize,
    pub rate: Option<f64>,
    pub messages: Option<u64>,
    pub duration_s: Option<f64>,
    pub window: usize,
    pub source_addrs: usize,
    pub drain_timeout_s: f64,
    pub nofile_limit: u64,
    // Setup.
    pub setup_s: f64,
    pub sub_errors: usize,
    pub first_sub_error: Option<String>,
    // Publishing.
    pub published: u64,
    pub publish_s: f64,
    pub publish_rate: f64,
    pub publish_acked: u64,
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    // Delivery.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// Gap signals the subscribers received: losses the server reported.
    pub gap_signals: u64,
    pub drained: bool,
    pub deliver_s: f64,
    pub deliveries_per_s: f64,
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Conns mode: publish of the one broadcast until the last connection got it.
    pub broadcast_us: Option<f64>,
    // Costs.
    pub server_pid: Option<u32>,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_subscribed: Option<u64>,
    pub server_rss_kib_end: Option<u64>,
    /// (RSS subscribed − RSS before) / connections, in bytes.
    pub server_rss_bytes_per_conn: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub bench_cpu_s: f64,
    pub bench_cpu_pct: f64,
    pub wall_s: f64,
}

fn kib(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl Report {
    /// The readable summary, then exactly one JSON line.
    pub fn print(&self) -> Result<()> {
        let rate = self.rate.map_or_else(|| "max".into(), |r| format!("{r}/s"));
        let limit = match (self.messages, self.duration_s) {
            (Some(m), Some(d)) => format!("{m} msgs or {d} s"),
            (Some(m), None) => format!("{m} msgs"),
            (None, Some(d)) => format!("{d} s"),
            (None, None) => "-".into(),
        };
        println!(
            "crier-bench: target={} mode={} transport={} addr={} publish_via={} ({})",
            self.target.name(),
            self.mode.name(),
            self.transport.name(),
            self.addr,
            self.publish_via,
            self.publish_addr
        );
        println!(
            "  params:     subscribers={} publishers={} channels={} size={} B rate={} for {} window={}",
            self.subscribers, self.publishers, self.channels, self.size, rate, limit, self.window
        );
        if let Some(masters) = self.redis_cluster_masters {
            println!(
                "  cluster:    {masters} master(s) own the channels; {} publisher connection(s), \
                 one per publisher and master",
                self.publish_conns
            );
        }
        println!(
            "  setup:      {} subscribers confirmed in {:.2} s over {} source address(es)",
            self.subscribers, self.setup_s, self.source_addrs
        );
        if let Some(e) = &self.first_sub_error {
            println!(
                "  sub errors: {} subscriber connection(s) ended early; first: {e}",
                self.sub_errors
            );
        }
        println!(
            "  published:  {} msgs in {:.3} s = {:.0} msgs/s (acked {}, errors {})",
            self.published,
            self.publish_s,
            self.publish_rate,
            self.publish_acked,
            self.publish_errors
        );
        if let Some(e) = &self.first_publish_error {
            println!("              first publish error: {e}");
        }
        println!(
            "  delivered:  {} of {} expected in {:.3} s = {:.0} deliveries/s",
            self.received, self.expected, self.deliver_s, self.deliveries_per_s
        );
        println!(
            "  integrity:  lost {} (sequence gaps {}), reordered {}, corrupt {}, gap signals {}{}",
            self.lost,
            self.gaps,
            self.reordered,
            self.corrupt,
            self.gap_signals,
            if self.drained { "" } else { " — gave up waiting (drain timeout)" }
        );
        let l = &self.latency;
        println!(
            "  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
        );
        if let Some(b) = self.broadcast_us {
            println!(
                "  broadcast:  one message reached all {} connections in {:.1} µs ({:.3} ms)",
                self.subscribers,
                b,
                b / 1e3
            );
        }
        if let Some(pid) = self.server_pid {
            println!(
                "  server:     pid {pid} RSS before {}, subscribed {}, end {}{}{}",
                kib(self.server_rss_kib_before),
                kib(self.server_rss_kib_subscribed),
                kib(self.server_rss_kib_end),
                self.server_rss_bytes_per_conn
                    .map_or_else(String::new, |b| format!(", {b:.0} B/connection")),
                self.server_cpu_s.map_or_else(String::new, |c| format!("; cpu {c:.2} s")),
            );
        }
        println!(
            "  bench cpu:  {:.2} s user+sys = {:.0}% of {:.2} s wall (shares the machine with the server)",
            self.bench_cpu_s, self.bench_cpu_pct, self.wall_s
        );
        println!("{}", serde_json::to_string(self)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge() {
        let l = Latencies::new(4).expect("histograms");
        l.record(0, &[1_000, 2_000]);
        l.record(5, &[3_000, 0]);
        let h = l.merged().expect("merge");
        assert_eq!(h.len(), 4);
        let s = LatencySummary::of(&h);
        assert!((s.max_us - 3.0).abs() < 0.01, "{s:?}");
    }
}
