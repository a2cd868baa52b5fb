//! One subscriber connection: subscribe, then read pushes until told to stop,
//! checking sequence numbers and recording latencies. Over TCP, WebSocket or
//! Server-Sent Events (`Plan::via`): the [`Wire`] hides the framing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use super::http::Endpoint;
use super::net::Connector;
use super::payload::{Seen, Sequences};
use super::report::Latencies;
use super::targets::{self, Dialect, Frame};
use super::wire::{Expected, Wire};
use super::{sse, ws};

/// State shared by all subscribers and watched by the orchestrator.
pub struct Shared {
    /// The instant all send times are measured from (same process).
    pub start: Instant,
    /// Messages received by all subscribers together: drain progress.
    pub delivered: AtomicU64,
    /// Subscriber tasks still running.
    pub alive: AtomicUsize,
    pub latencies: Latencies,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// What every subscriber needs to know.
pub struct Plan {
    pub dialect: Dialect,
    pub channels: usize,
    pub publishers: usize,
    /// Payload size of every message (`--size`).
    pub size: usize,
    /// Read buffer size: large for few subscribers (fewer syscalls), small
    /// for many (memory).
    pub buf_cap: usize,
    pub timeout: Duration,
    /// Send one byte without a newline once subscribed: a connection in the
    /// middle of a command line (what it costs the server is what is measured).
    pub partial_line: bool,
    /// How to subscribe (with WebSocket or SSE the `Connector` points at
    /// the HTTP listener).
    pub via: Via,
}

/// How a subscriber opens its subscription.
pub enum Via {
    /// The dialect's subscribe command over TCP.
    Tcp,
    /// A WebSocket upgrade (`host` is the HTTP `Host`, `path` the request
    /// path), then the dialect's subscribe command in messages.
    WebSocket { host: String, path: &'static str },
    /// `GET path?channel=CH` (crier): the response head is the confirmation.
    Sse { host: String, path: &'static str },
}

/// One subscriber's findings.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: u64,
    /// Messages skipped over in a (publisher, channel) sequence when seen.
    pub gaps: u64,
    /// Messages older than one already seen from the same publisher.
    pub reordered: u64,
    /// Payloads without a valid bench header.
    pub corrupt: u64,
    /// Gap signals received (crier on Redis: see `Frame::Gap`).
    pub gap_signals: u64,
    /// Time of the last delivery, ns since `Shared::start`.
    pub last_ns: u64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

/// A subscriber's findings, handed to the orchestrator however its task
/// ends: by returning, or by being aborted at the end of the run. Aborting is
/// how subscribers are stopped, so the read loop checks no stop signal (a
/// watch channel there cost two lock round trips per read).
struct Outcome {
    index: usize,
    stats: Stats,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<(usize, Stats)>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let _ = self.tx.send((self.index, std::mem::take(&mut self.stats)));
        self.shared.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs subscriber `index` on channel `index % channels`. Setup is gated by
/// `gate` (bounded concurrent handshakes, so that the server's accept backlog
/// is not overrun), its outcome goes to `ready`, then it reads until the
/// connection ends or the task is aborted; its [`Stats`] go to `done`.
pub async fn run(
    index: usize,
    plan: Arc<Plan>,
    conn: Arc<Connector>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    done: mpsc::UnboundedSender<(usize, Stats)>,
) {
    let mut outcome = Outcome { index, stats: Stats::default(), shared: shared.clone(), tx: done };
    let st = &mut outcome.stats;
    let channel = targets::channel_name(index % plan.channels);
    let setup = async {
        let _permit = gate.acquire().await.map_err(|_| anyhow!("setup cancelled"))?;
        let mut stream = conn.connect(index).await?;
        let opened = async {
            let mut wire = match &plan.via {
                Via::Tcp => Wire::tcp(plan.dialect, BytesMut::with_capacity(plan.buf_cap)),
                Via::WebSocket { host, path } => {
                    let ep = Endpoint { host, path };
                    let buf = ws::handshake(&mut stream, &ep, plan.buf_cap)
                        .await
                        .context("WebSocket handshake")?;
                    Wire::websocket(plan.dialect, buf)?
                }
                Via::Sse { host, path } => {
                    let ep = Endpoint { host, path };
                    let (buf, dechunker) = sse::handshake(&mut stream, &ep, &channel, plan.buf_cap)
                        .await
                        .context("SSE request")?;
                    Wire::sse(buf, dechunker)
                }
            };
            targets::subscribe(&mut stream, &mut wire, plan.dialect, &channel).await?;
            let head = targets::delivery_head(plan.dialect, &channel, plan.size);
            wire.expect(Expected { head, size: plan.size });
            anyhow::Ok(wire)
        };
        let wire = tokio::time::timeout(plan.timeout, opened)
            .await
            .map_err(|_| anyhow!("no subscribe confirmation within {:?}", plan.timeout))??;
        if plan.partial_line {
            stream.write_all(b"P").await?;
        }
        anyhow::Ok((stream, wire))
    };
    let (mut stream, mut wire) = match setup.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let msg = format!("subscriber {index} on {channel}: {e:#}");
            let _ = ready.send(Err(msg.clone()));
            st.error = Some(msg);
            return;
        }
    };
    drop(ready);

    // Next expected sequence number per publisher (this connection has one channel).
    let mut sequences = Sequences::new(plan.publishers);
    let mut lat: Vec<u64> = Vec::with_capacity(1024);
    // Replies the wire owes the server (PONGs).
    let mut out: Vec<u8> = Vec::new();
    let spare = (plan.buf_cap / 2).max(1024);
    loop {
        let buf = wire.read_buf();
        buf.reserve(spare);
        match stream.read_buf(buf).await {
            Ok(0) => {
                st.error = Some("server closed the connection".into());
                break;
            }
            Err(e) => {
                st.error = Some(format!("read: {e}"));
                break;
            }
            Ok(_) => {}
        }
        // One clock read per batch: every message in it arrived by now.
        let now = shared.now_ns();
        let mut got = 0u64;
        let parsed = wire.frames(&mut out, |frame| {
            match frame {
                Frame::Message(p) => {
                    got += 1;
                    let sent_ns = match sequences.check(p) {
                        Seen::InOrder { sent_ns, skipped } => {
                            st.gaps += skipped;
                            sent_ns
                        }
                        Seen::Reordered { sent_ns } => {
                            st.reordered += 1;
                            sent_ns
                        }
                        Seen::Corrupt => {
                            st.corrupt += 1;
                            return true;
                        }
                    };
                    lat.push(now.saturating_sub(sent_ns));
                }
                Frame::Gap => st.gap_signals += 1,
                Frame::Error(e) => {
                    st.error = Some(format!("server said {:?}", targets::show(e)));
                }
                _ => {}
            }
            true
        });
        if let Err(e) = parsed
            && st.error.is_none()
        {
            st.error = Some(format!("protocol: {e:#}"));
        }
        if got > 0 {
            st.received += got;
            st.last_ns = now;
            shared.delivered.fetch_add(got, Ordering::Relaxed);
            shared.latencies.record(index, &lat);
            lat.clear();
        }
        if st.error.is_some() {
            break;
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                st.error = Some(format!("write: {e}"));
                break;
            }
            out.clear();
        }
    }
}
