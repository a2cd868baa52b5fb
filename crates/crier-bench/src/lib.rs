//! `crier-bench`: a load generator in the spirit of redis-benchmark and
//! `nats bench`, speaking crier's, Redis's and NATS's protocols with the same
//! code so that crier and its rivals are measured the same way.
//!
//! A run: raise the open-file limit, connect and subscribe every subscriber
//! (each confirmed by the server, so nothing published later may be missed),
//! connect the publishers, start them together, wait for deliveries to drain
//! (bounded), then print a summary and one JSON line.
//!
//! Files: `targets` (wire dialects), `wire` (TCP, WebSocket or SSE framing of
//! a dialect), `http` (the request and response head both use), `ws` (the
//! WebSocket client side), `sse` (the Server-Sent Events client side),
//! `payload` (the message header), `cluster` (Redis Cluster direct: which
//! master serves each channel),
//! `subscriber` / `publisher` (the connection loops), `net` (connecting many
//! sockets), `report` (histograms, summary, JSON); process facts (rlimit,
//! rusage, /proc) are `crier::sys`, shared with the server.

mod cluster;
mod http;
mod join;
mod net;
mod payload;
mod publisher;
mod report;
mod sse;
mod subscriber;
mod targets;
mod wire;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crier::sys;

/// How long a `--receive-only` bench waits for the broadcast to begin.
const RECEIVE_ONLY_WAIT: Duration = Duration::from_secs(300);

/// The monotonic clock's zero as an `Instant`: the same in every process of
/// the machine (Linux's `Instant` is `CLOCK_MONOTONIC`).
fn monotonic_zero() -> Instant {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Read after the clock, so that it is no earlier than `ts`.
    let now = Instant::now();
    if read != 0 {
        return now;
    }
    let since_zero = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    now.checked_sub(since_zero).unwrap_or(now)
}
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use net::{CONNS_PER_SOURCE, Connector};
use report::{Latencies, LatencySummary, Report};
pub use targets::Target;
use targets::{Dialect, Encoder};
pub use wire::Transport;

/// What to measure (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Publishers send to subscribers: throughput, latency, losses.
    Fanout,
    /// Many idle subscribed connections: server memory per connection, then
    /// the time one broadcast takes to reach them all.
    Conns,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fanout => "fanout",
            Mode::Conns => "conns",
        }
    }
}

/// Load generator for crier, Redis and NATS pub/sub (`crier-bench ...`).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Server to measure; each has its own wire protocol.
    #[arg(long, value_enum, default_value_t = Target::Crier)]
    pub target: Target,
    /// Server address HOST:PORT of its native protocol, for the publishers
    /// and (with --transport tcp) the subscribers [default: crier
    /// 127.0.0.1:7070, redis 127.0.0.1:6379, nats 127.0.0.1:4222].
    #[arg(long)]
    pub addr: Option<String>,
    /// How the subscribers connect: tcp (the target's native protocol), ws
    /// (WebSocket: crier's `GET /ws` on its HTTP listener, one message per
    /// delivery; NATS's websocket listener) or sse (Server-Sent Events,
    /// crier only: `GET /sse?channel=CH` on its HTTP listener, one event per
    /// delivery). Publishers always use the native protocol over TCP at
    /// --addr: ws and sse measure delivery over that transport.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// HTTP address HOST:PORT of the subscribers with --transport ws or sse
    /// (alias --ws-addr) [default: crier 127.0.0.1:7080 (its --http
    /// listener, paths /ws and /sse), nats 127.0.0.1:8080 (the port of its
    /// websocket block, path /)].
    #[arg(long, visible_alias = "ws-addr", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// fanout: throughput and latency; conns: memory per idle connection and
    /// time of one broadcast to all.
    #[arg(long, value_enum, default_value_t = Mode::Fanout)]
    pub mode: Mode,
    /// Subscriber connections (fanout mode); subscriber i listens on
    /// channel `bench.{i % channels}`.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Publishers (fanout mode): one connection each (one per master with
    /// --redis-cluster).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Channels to spread subscribers and messages over (fanout mode).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Payload size in bytes (at least the 40-byte bench header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Total publish rate in messages per second across all publishers
    /// [default: as fast as the window allows].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Total messages to publish (fanout mode) [default: run for --duration].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to publish for (fanout mode) [default: 5 unless --messages].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Publish requests in flight per publisher (pipelining bound).
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Idle subscribed connections to hold (conns mode, all on `bench.0`).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Conns mode: each connection then sends one byte without a newline,
    /// so the server holds a partial command line for every connection
    /// (TCP only).
    #[arg(long)]
    pub partial_line: bool,
    /// Seconds to hold the idle connections before measuring memory (conns mode).
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// Conns mode, several bench processes (the open-file cap is per
    /// process): create this file once every connection is subscribed.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Conns mode: publish nothing; wait for the one broadcast another bench
    /// process publishes (send times are on the machine's monotonic clock,
    /// shared by every process) and report when it reached every connection.
    #[arg(long, requires = "ready_file")]
    pub receive_only: bool,
    /// Publish through Redis (RESP PUBLISH) at this address or redis:// URL
    /// instead of through the target: for crier with a Redis backend.
    #[arg(long, value_name = "URL_OR_ADDR")]
    pub publish_redis: Option<String>,
    /// With --publish-redis: publish as a backend does to a crier channel
    /// that keeps history in Redis, with `FCALL crier_publish` (keeping
    /// 1,000 messages per channel), not `PUBLISH`.
    #[arg(long, requires = "publish_redis")]
    pub publish_via_function: bool,
    /// With --target redis: --addr is one node (a seed) of a Redis Cluster,
    /// measured directly. The bench reads the slots from it (`CLUSTER
    /// SLOTS`), each subscriber `SSUBSCRIBE`s at its channel's master, and
    /// each of the --publishers has one connection per master owning a
    /// channel of the run (publish connections = publishers × masters),
    /// sending `SPUBLISH` for that master's channels only. At full speed
    /// each connection publishes as fast as its master answers, so channels
    /// get unequal counts (each channel's own count is what its subscribers
    /// are checked against); with --messages or --rate a publisher's share
    /// is split over its connections by their channel counts.
    #[arg(long, conflicts_with = "publish_redis")]
    pub redis_cluster: bool,
    /// The server's process id: report its memory (VmRSS) and CPU time.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Loopback source addresses (127.0.0.1, .2, ...) to spread connections
    /// over [default: one per 20,000 connections].
    #[arg(long, value_name = "N")]
    pub source_addrs: Option<usize>,
    /// After publishing, seconds without delivery progress before giving up
    /// on missing messages.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub drain_timeout: f64,
    /// Bound on every other wait: a connect, a handshake, a reply.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// The parameters of a run once defaults and the mode are applied.
#[derive(Debug, Clone)]
struct Params {
    subscribers: usize,
    publishers: usize,
    channels: usize,
    messages: Option<u64>,
    duration: Option<f64>,
    rate: Option<f64>,
}

impl Params {
    fn resolve(a: &BenchArgs) -> Result<Self> {
        if a.size < payload::HEADER_LEN {
            bail!("--size must be at least {} bytes (the bench header)", payload::HEADER_LEN);
        }
        if a.window == 0 || a.window > 1_000_000 {
            bail!("--window must be between 1 and 1,000,000");
        }
        if a.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        for (name, v) in
            [("--drain-timeout", a.drain_timeout), ("--timeout", a.timeout), ("--hold", a.hold)]
        {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be a number of seconds >= 0");
            }
        }
        if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            bail!("--rate must be a positive number of messages per second");
        }
        if a.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            bail!("--duration must be a positive number of seconds");
        }
        if a.messages == Some(0) {
            bail!("--messages must be at least 1");
        }
        if a.redis_cluster && a.target != Target::Redis {
            bail!("--redis-cluster is for --target redis (crier finds a cluster's masters itself)");
        }
        match a.transport {
            Transport::Tcp if a.http_addr.is_some() => {
                bail!("--http-addr (--ws-addr) needs --transport ws or sse")
            }
            Transport::Tcp => {}
            Transport::Ws if a.target.ws_path().is_none() => {
                bail!("--transport ws: {} has no WebSocket transport", a.target.name())
            }
            Transport::Sse if a.target.sse_path().is_none() => bail!(
                "--transport sse: {} has no Server-Sent Events transport (crier only)",
                a.target.name()
            ),
            Transport::Ws | Transport::Sse if a.partial_line => {
                bail!("--partial-line is for --transport tcp")
            }
            Transport::Ws | Transport::Sse => {}
        }
        Ok(match a.mode {
            Mode::Conns => Params {
                subscribers: a.conns,
                publishers: 1,
                channels: 1,
                messages: Some(1),
                duration: None,
                rate: None,
            },
            Mode::Fanout => {
                if a.publishers == 0 || a.channels == 0 {
                    bail!("--publishers and --channels must be at least 1");
                }
                Params {
                    subscribers: a.subscribers,
                    publishers: a.publishers,
                    channels: a.channels,
                    messages: a.messages,
                    duration: a.duration.or(a.messages.is_none().then_some(5.0)),
                    rate: a.rate,
                }
            }
        })
    }

    /// Subscribers listening on channel `c`.
    fn subscribers_on(&self, c: usize) -> u64 {
        (self.subscribers / self.channels + usize::from(c < self.subscribers % self.channels))
            as u64
    }
}

/// `redis://host:port[/db]` or `host[:port]` to `host:port`.
fn redis_addr(spec: &str) -> Result<String> {
    if spec.starts_with("rediss://") {
        bail!("--publish-redis: TLS (rediss://) is not supported by the bench");
    }
    let rest = spec.strip_prefix("redis://").unwrap_or(spec);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains('@') {
        bail!("--publish-redis: credentials in the URL are not supported by the bench");
    }
    if host.is_empty() {
        bail!("--publish-redis: no host in {spec:?}");
    }
    Ok(if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        host.to_string()
    } else {
        format!("{host}:6379")
    })
}

/// A server and the channels the bench uses on it: the one server, or one
/// master of a Redis Cluster.
struct Route {
    sub: Arc<Connector>,
    publish: Arc<Connector>,
    channels: Vec<usize>,
}

/// Aborts the tasks it still holds when dropped, so that an early error
/// return does not leave connections behind.
struct Tasks<T>(Vec<JoinHandle<T>>);

impl<T> Drop for Tasks<T> {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Runs one benchmark and prints its report.
pub async fn run(args: BenchArgs) -> Result<()> {
    // Times are measured from the monotonic clock's zero, the same Instant in
    // every process of the machine: a broadcast published by one bench
    // process is timed by the others (--receive-only).
    let start = monotonic_zero();
    let began = Instant::now();
    let cpu_start = sys::own_cpu_seconds();
    let p = Params::resolve(&args)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let addr = args.addr.clone().unwrap_or_else(|| args.target.default_addr().to_string());
    // A Redis Cluster: where each channel lives, asked of the seed at --addr.
    let layout = if args.redis_cluster {
        let seed = Connector::new(&addr, 1, false, timeout).await?;
        let map = cluster::slot_map(&seed, timeout).await?;
        Some(cluster::Layout::of(&map, p.channels)?)
    } else {
        None
    };
    let masters = layout.as_ref().map_or(1, |l| l.masters.len());
    let conns_total = p.subscribers + p.publishers * masters;

    let nofile = sys::raise_nofile().context("reading the open-file limit (RLIMIT_NOFILE)")?;
    if nofile.now > nofile.before {
        eprintln!(
            "bench: raised the open-file limit (RLIMIT_NOFILE) from {} to the hard limit {}",
            nofile.before, nofile.now
        );
    }
    let need = conns_total as u64 + 32;
    if need > nofile.now {
        bail!(
            "{conns_total} connections need about {need} file descriptors, but this process may \
             open only {} (RLIMIT_NOFILE hard limit {}, which it cannot raise): use fewer \
             connections, or raise the hard limit before starting the bench",
            nofile.now,
            nofile.hard
        );
    }

    let sources =
        args.source_addrs.unwrap_or_else(|| conns_total.div_ceil(CONNS_PER_SOURCE)).max(1);
    let explicit_sources = args.source_addrs.is_some();
    // Subscribers over WebSocket or SSE connect to the HTTP listener,
    // publishers to the native one.
    let http_host = || {
        args.http_addr
            .clone()
            .unwrap_or_else(|| args.target.default_http_addr().unwrap_or_default().to_string())
    };
    let via = match args.transport {
        Transport::Tcp => subscriber::Via::Tcp,
        Transport::Ws => subscriber::Via::WebSocket {
            host: http_host(),
            path: args.target.ws_path().unwrap_or("/"),
        },
        Transport::Sse => subscriber::Via::Sse {
            host: http_host(),
            path: args.target.sse_path().unwrap_or("/sse"),
        },
    };
    let sub_addr = match &via {
        subscriber::Via::Tcp => addr.as_str(),
        subscriber::Via::WebSocket { host, .. } | subscriber::Via::Sse { host, .. } => host,
    };
    let sub_conn = Arc::new(Connector::new(sub_addr, sources, explicit_sources, timeout).await?);
    let native_conn = if args.transport != Transport::Tcp {
        Arc::new(Connector::new(&addr, sources, explicit_sources, timeout).await?)
    } else {
        sub_conn.clone()
    };
    let dialect = if layout.is_some() { Dialect::RespCluster } else { args.target.dialect() };
    let (pub_conn, pub_dialect, publish_via) = match &args.publish_redis {
        Some(spec) => {
            let raddr = redis_addr(spec)?;
            // A few publishers need no source spreading, and Redis in protected
            // mode refuses any loopback source but 127.0.0.1.
            let c = Connector::new(&raddr, 1, false, timeout).await?;
            (Arc::new(c), Dialect::Resp, format!("redis:{raddr}"))
        }
        None if layout.is_some() => (native_conn.clone(), dialect, "redis-cluster".to_string()),
        None => (native_conn.clone(), dialect, args.target.name().to_string()),
    };
    // The channels each server serves: one server, or each master of a cluster.
    let routes = match &layout {
        None => vec![Route {
            sub: sub_conn.clone(),
            publish: pub_conn.clone(),
            channels: (0..p.channels).collect(),
        }],
        Some(l) => {
            let mut routes = Vec::with_capacity(l.masters.len());
            for (m, master) in l.masters.iter().enumerate() {
                let c = Arc::new(Connector::new(master, sources, explicit_sources, timeout).await?);
                routes.push(Route { sub: c.clone(), publish: c, channels: l.channels_of(m) });
            }
            routes
        }
    };
    let route_of_channel = layout.as_ref().map_or_else(|| vec![0; p.channels], |l| l.owner.clone());
    let servers = |of: fn(&Route) -> &Arc<Connector>| {
        routes.iter().map(|r| of(r).server.to_string()).collect::<Vec<_>>().join(",")
    };

    let pid = args.server_pid;
    let rss_before = pid.and_then(sys::rss_kib);
    let server_cpu_start = pid.and_then(sys::proc_cpu_seconds);
    if let Some(pid) = pid
        && rss_before.is_none()
    {
        eprintln!("bench: cannot read /proc/{pid}/status: no server memory figures");
    }

    // Subscribers: all confirmed before anything is published.
    let shared = Arc::new(subscriber::Shared {
        start,
        delivered: AtomicU64::new(0),
        alive: AtomicUsize::new(p.subscribers),
        latencies: Latencies::new(p.subscribers.min(8))?,
    });
    let sub_plan = Arc::new(subscriber::Plan {
        dialect,
        channels: p.channels,
        publishers: p.publishers,
        size: args.size,
        buf_cap: match p.subscribers {
            0..=1_000 => 64 * 1024,
            1_001..=5_000 => 16 * 1024,
            _ => 4 * 1024,
        }
        .max(2 * (args.size + 128)),
        timeout,
        partial_line: args.partial_line,
        via,
    });
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let setup_start = Instant::now();
    let subs = Tasks(
        (0..p.subscribers)
            .map(|i| {
                tokio::spawn(subscriber::run(
                    i,
                    sub_plan.clone(),
                    routes[route_of_channel[i % p.channels]].sub.clone(),
                    shared.clone(),
                    gate.clone(),
                    ready_tx.clone(),
                    done_tx.clone(),
                ))
            })
            .collect(),
    );
    drop(ready_tx);
    drop(done_tx);
    let mut ready = 0;
    let mut last_report = Instant::now();
    // No subscriber may take longer than a connect plus a handshake.
    let setup_stall = timeout * 2 + Duration::from_secs(1);
    while ready < p.subscribers {
        match tokio::time::timeout(setup_stall, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ready += 1,
            Ok(Some(Err(e))) => {
                gate.close();
                let hint = if e.contains("protected mode") {
                    " (Redis in protected mode accepts only 127.0.0.1: start it with \
                     --protected-mode no, or pass --source-addrs 1)"
                } else {
                    ""
                };
                bail!(
                    "only {ready} of {} subscribers could subscribe; first failure: {e}{hint}",
                    p.subscribers
                );
            }
            Ok(None) => bail!("subscriber tasks ended during setup"),
            Err(_) => bail!(
                "subscribing stalled: {ready} of {} subscribers ready, none more within {setup_stall:?}",
                p.subscribers
            ),
        }
        if p.subscribers >= 5_000 && last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!("bench: {ready} of {} subscribers ready", p.subscribers);
            last_report = Instant::now();
        }
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    if args.receive_only && args.mode != Mode::Conns {
        bail!("--receive-only is for --mode conns");
    }
    if args.mode == Mode::Conns {
        // Let the server settle (allocations, lazy buffers) before measuring.
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let rss_subscribed = pid.and_then(sys::rss_kib);
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }

    // Publishers: connected and answered before the common start.
    let pub_plan = Arc::new(publisher::Plan {
        dialect: pub_dialect,
        channels: p.channels,
        encoder: Encoder::new(pub_dialect, p.channels, args.size, args.publish_via_function),
        window: args.window,
        timeout,
        start,
    });
    let (go_tx, go_rx) = watch::channel(false);
    let mut pubs = Tasks(Vec::with_capacity(p.publishers * routes.len()));
    let publishers = if args.receive_only { 0 } else { p.publishers };
    // A publisher's messages and rate are split over its connections (one
    // per route) by their channel counts.
    let weights: Vec<usize> = routes.iter().map(|r| r.channels.len()).collect();
    for j in 0..publishers {
        let share = |total: u64| {
            total / p.publishers as u64 + u64::from((j as u64) < total % p.publishers as u64)
        };
        let messages = p.messages.map(|m| cluster::split(share(m), &weights));
        for (r, route) in routes.iter().enumerate() {
            let index = p.subscribers + j * routes.len() + r;
            let (stream, buf) =
                publisher::connect(&route.publish, index, pub_dialect, timeout).await?;
            let job = publisher::Job {
                id: j as u32,
                channels: route.channels.clone(),
                messages: messages.as_ref().and_then(|m| m.get(r).copied()),
                duration: p.duration.map(Duration::from_secs_f64),
                rate: p.rate.map(|rate| {
                    rate / p.publishers as f64 * route.channels.len() as f64 / p.channels as f64
                }),
            };
            pubs.0.push(tokio::spawn(publisher::run(
                stream,
                buf,
                job,
                pub_plan.clone(),
                go_rx.clone(),
            )));
        }
    }
    let publish_conns = pubs.0.len();
    let publish_start_ns = shared.now_ns();
    go_tx.send_replace(true);
    let mut pub_stats = Vec::with_capacity(publish_conns);
    for h in std::mem::take(&mut pubs.0) {
        pub_stats.push(h.await.unwrap_or_else(|e| publisher::Stats {
            fatal: Some(format!("publisher task failed: {e}")),
            ..publisher::Stats::default()
        }));
    }
    let mut sent_per_channel = vec![0u64; p.channels];
    for s in &pub_stats {
        for (total, n) in sent_per_channel.iter_mut().zip(&s.per_channel) {
            *total += n;
        }
    }
    if args.receive_only {
        // The one broadcast, published by another process once every
        // process is ready: wait for its first delivery here.
        sent_per_channel[0] = 1;
        let deadline = Instant::now() + RECEIVE_ONLY_WAIT;
        while shared.delivered.load(Ordering::Relaxed) == 0
            && shared.alive.load(Ordering::Relaxed) > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let expected: u64 = (0..p.channels).map(|c| sent_per_channel[c] * p.subscribers_on(c)).sum();

    // Drain: until all arrived, no subscriber is left, or no progress.
    let drain_timeout = Duration::from_secs_f64(args.drain_timeout);
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    let drained = loop {
        let now_delivered = shared.delivered.load(Ordering::Relaxed);
        if now_delivered >= expected {
            break true;
        }
        if shared.alive.load(Ordering::Relaxed) == 0 {
            break false;
        }
        if now_delivered != last {
            last = now_delivered;
            last_change = Instant::now();
        } else if last_change.elapsed() >= drain_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Stop the subscribers: each hands over its stats as its task is dropped.
    drop(subs);
    let mut sub_stats: Vec<Option<subscriber::Stats>> = (0..p.subscribers).map(|_| None).collect();
    let collect_until = tokio::time::Instant::now() + timeout;
    while let Ok(Some((i, s))) = tokio::time::timeout_at(collect_until, done_rx.recv()).await {
        sub_stats[i] = Some(s);
    }
    let sub_stats: Vec<subscriber::Stats> = sub_stats
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| subscriber::Stats {
                error: Some("subscriber did not stop in time".into()),
                ..Default::default()
            })
        })
        .collect();
    let rss_end = pid.and_then(sys::rss_kib);
    let server_cpu_s =
        pid.and_then(sys::proc_cpu_seconds).zip(server_cpu_start).map(|(end, begin)| end - begin);
    let wall_s = began.elapsed().as_secs_f64();
    let bench_cpu_s = sys::own_cpu_seconds() - cpu_start;

    // Figures.
    let published: u64 = pub_stats.iter().map(|s| s.sent).sum();
    let publish_end_ns = pub_stats.iter().map(|s| s.send_done_ns).max().unwrap_or(0);
    let publish_s = publish_end_ns.saturating_sub(publish_start_ns) as f64 / 1e9;
    let received: u64 = sub_stats.iter().map(|s| s.received).sum();
    let lost: u64 = sub_stats
        .iter()
        .enumerate()
        .map(|(i, s)| sent_per_channel[i % p.channels].saturating_sub(s.received))
        .sum();
    let last_delivery_ns = sub_stats.iter().map(|s| s.last_ns).max().unwrap_or(0);
    let deliver_s = last_delivery_ns.saturating_sub(publish_start_ns) as f64 / 1e9;
    let rate_of = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let hist = shared.latencies.merged()?;
    let latency = LatencySummary::of(&hist);
    let sub_errors: Vec<&String> = sub_stats.iter().filter_map(|s| s.error.as_ref()).collect();
    let first_publish_error = pub_stats
        .iter()
        .find_map(|s| s.fatal.clone())
        .or_else(|| pub_stats.iter().find_map(|s| s.first_error.clone()));
    let report = Report {
        target: args.target,
        mode: args.mode,
        transport: args.transport,
        addr: servers(|r| &r.sub),
        publish_addr: servers(|r| &r.publish),
        publish_via,
        redis_cluster_masters: layout.as_ref().map(|l| l.masters.len()),
        subscribers: p.subscribers,
        publishers: p.publishers,
        publish_conns,
        channels: p.channels,
        size: args.size,
        rate: p.rate,
        messages: p.messages,
        duration_s: p.duration,
        window: args.window,
        source_addrs: sub_conn.source_count(),
        drain_timeout_s: args.drain_timeout,
        nofile_limit: nofile.now,
        setup_s,
        sub_errors: sub_errors.len(),
        first_sub_error: sub_errors.first().map(|e| e.to_string()),
        published,
        publish_s,
        publish_rate: rate_of(published, publish_s),
        publish_acked: pub_stats.iter().map(|s| s.acked).sum(),
        publish_errors: pub_stats.iter().map(|s| s.errors).sum(),
        first_publish_error,
        expected,
        received,
        lost,
        gaps: sub_stats.iter().map(|s| s.gaps).sum(),
        reordered: sub_stats.iter().map(|s| s.reordered).sum(),
        corrupt: sub_stats.iter().map(|s| s.corrupt).sum(),
        gap_signals: sub_stats.iter().map(|s| s.gap_signals).sum(),
        drained,
        deliver_s,
        deliveries_per_s: rate_of(received, deliver_s),
        latency,
        broadcast_us: (args.mode == Mode::Conns && latency.count > 0).then_some(latency.max_us),
        server_pid: pid,
        server_rss_kib_before: rss_before,
        server_rss_kib_subscribed: rss_subscribed,
        server_rss_kib_end: rss_end,
        server_rss_bytes_per_conn: rss_before
            .zip(rss_subscribed)
            .filter(|_| p.subscribers > 0)
            .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / p.subscribers as f64),
        server_cpu_s,
        bench_cpu_s,
        bench_cpu_pct: if wall_s > 0.0 { 100.0 * bench_cpu_s / wall_s } else { 0.0 },
        wall_s,
    };
    report.print()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_addresses() {
        assert_eq!(redis_addr("redis://127.0.0.1:6380/0").ok().as_deref(), Some("127.0.0.1:6380"));
        assert_eq!(redis_addr("localhost").ok().as_deref(), Some("localhost:6379"));
        assert!(redis_addr("redis://u:p@h:1").is_err());
    }

    #[test]
    fn subscribers_spread_over_channels() {
        let p = Params {
            subscribers: 10,
            publishers: 1,
            channels: 3,
            messages: None,
            duration: None,
            rate: None,
        };
        assert_eq!((0..3).map(|c| p.subscribers_on(c)).collect::<Vec<_>>(), [4, 3, 3]);
    }
}
