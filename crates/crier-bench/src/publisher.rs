//! One publisher connection: pipelined publishes with a bounded number in
//! flight, optionally paced to a rate, replies counted by a reader task.
//! Publishers always use the target's native protocol over TCP, whatever
//! the subscribers' `--transport`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant as TokioInstant;

use super::net::Connector;
use super::payload::Header;
use super::targets::{self, Dialect, Encoder, Frame};
use super::wire::Wire;

/// What every publisher shares.
pub struct Plan {
    pub dialect: Dialect,
    pub channels: usize,
    pub encoder: Encoder,
    /// Requests in flight (sent, not yet answered) per connection.
    pub window: usize,
    /// Longest wait for any reply before the publisher gives up.
    pub timeout: Duration,
    /// The shared bench start: send times are nanoseconds since it.
    pub start: Instant,
}

/// What one publisher connection does.
#[derive(Debug, Clone)]
pub struct Job {
    /// The publisher id in every header it sends. On a Redis Cluster a
    /// publisher has one connection (one job) per master, each with the
    /// master's own channels: each (publisher, channel) sequence is still
    /// sent in order on one connection.
    pub id: u32,
    /// The channels it publishes to, in turn (never empty).
    pub channels: Vec<usize>,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    /// Messages per second for this publisher; `None` = as fast as possible.
    pub rate: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub sent: u64,
    /// Messages sent per channel: what subscribers of each should receive.
    pub per_channel: Vec<u64>,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// When the last message was handed to the socket, ns since start.
    pub send_done_ns: u64,
    /// Why the publisher stopped early, if it did.
    pub fatal: Option<String>,
}

/// Counters the reply reader shares with the writer.
#[derive(Default)]
struct Replies {
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    fatal: Mutex<Option<String>>,
    /// The server pinged (NATS): the writer owes it a PONG.
    owe_pong: AtomicBool,
}

fn note(slot: &Mutex<Option<String>>, msg: String) {
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    s.get_or_insert(msg);
}

fn taken(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Opens and readies publisher connection `index`.
pub async fn connect(
    conn: &Connector,
    index: usize,
    dialect: Dialect,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut)> {
    let mut stream = conn.connect(index).await?;
    let mut wire = Wire::tcp(dialect, BytesMut::with_capacity(64 * 1024));
    tokio::time::timeout(timeout, targets::publisher_hello(&mut stream, &mut wire, dialect))
        .await
        .map_err(|_| anyhow!("publisher {index}: no answer to PING within {timeout:?}"))?
        .with_context(|| format!("publisher {index}"))?;
    Ok((stream, wire.into_buf()))
}

/// How many messages one NATS PING acknowledges: NATS does not answer PUB
/// (verbose off), so a PING every `window / 4` messages and its PONG bound the
/// in-flight count like crier's `CONFIRMED` and Redis's `:n` do.
fn per_pong(d: Dialect, window: usize) -> usize {
    match d {
        Dialect::Nats => (window / 4).max(1),
        _ => 0,
    }
}

/// Reads replies, returning a permit per answered request.
async fn read_replies(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    d: Dialect,
    per_pong: usize,
    sem: Arc<Semaphore>,
    r: Arc<Replies>,
) {
    loop {
        buf.reserve(32 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                note(&r.fatal, "server closed the connection".into());
                break;
            }
            Err(e) => {
                note(&r.fatal, format!("read: {e}"));
                break;
            }
            Ok(_) => {}
        }
        let (mut used, mut permits, mut acked, mut errors) = (0, 0usize, 0u64, 0u64);
        let mut broken = false;
        loop {
            match targets::next_frame(d, &buf[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    match frame {
                        Frame::Ack => {
                            acked += 1;
                            permits += 1;
                        }
                        Frame::Pong if per_pong > 0 => {
                            acked += per_pong as u64;
                            permits += per_pong;
                        }
                        Frame::Ping => r.owe_pong.store(true, Ordering::Relaxed),
                        Frame::Error(e) => {
                            errors += 1;
                            // crier and Redis answer each request once, errors included.
                            if per_pong == 0 {
                                permits += 1;
                            }
                            note(&r.first_error, targets::show(e));
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    note(&r.fatal, format!("protocol: {e:#}"));
                    broken = true;
                    break;
                }
            }
        }
        buf.advance(used);
        r.acked.fetch_add(acked, Ordering::Relaxed);
        r.errors.fetch_add(errors, Ordering::Relaxed);
        sem.add_permits(permits);
        if broken {
            break;
        }
    }
    // Wakes a writer waiting for permits: no reply will come any more.
    sem.close();
}

/// Takes up to `want` permits, waiting for at least one. `Ok(0)` when the
/// deadline passed while waiting.
async fn take_permits(
    sem: &Semaphore,
    want: usize,
    timeout: Duration,
    deadline: Option<TokioInstant>,
) -> Result<usize> {
    let grab = |n: usize| match sem.try_acquire_many(n as u32) {
        Ok(p) => {
            p.forget();
            n
        }
        Err(_) => 0,
    };
    let now_avail = sem.available_permits().min(want);
    if now_avail > 0 && grab(now_avail) > 0 {
        return Ok(now_avail);
    }
    let limit = TokioInstant::now() + timeout;
    let wake = deadline.map_or(limit, |d| d.min(limit));
    match tokio::time::timeout_at(wake, sem.acquire()).await {
        Ok(Ok(p)) => {
            p.forget();
            let more = sem.available_permits().min(want - 1);
            Ok(1 + if more > 0 { grab(more) } else { 0 })
        }
        Ok(Err(_)) => bail!("connection lost"),
        Err(_) if deadline.is_some_and(|d| TokioInstant::now() >= d) => Ok(0),
        Err(_) => bail!("no reply for {timeout:?} with the window full"),
    }
}

/// Publishes `job` once `go` turns true.
pub async fn run(
    stream: TcpStream,
    buf: BytesMut,
    job: Job,
    plan: Arc<Plan>,
    mut go: watch::Receiver<bool>,
) -> Stats {
    // `run` builds each job's channels from the layout: a master is listed
    // only if it owns a channel of the run.
    debug_assert!(!job.channels.is_empty() && job.channels.iter().all(|&c| c < plan.channels));
    let mut st = Stats { per_channel: vec![0; plan.channels], ..Stats::default() };
    let per_pong = per_pong(plan.dialect, plan.window);
    let (rd, mut wr) = stream.into_split();
    let sem = Arc::new(Semaphore::new(plan.window));
    let replies = Arc::new(Replies::default());
    let reader =
        tokio::spawn(read_replies(rd, buf, plan.dialect, per_pong, sem.clone(), replies.clone()));
    if go.wait_for(|g| *g).await.is_err() {
        reader.abort();
        st.fatal = Some("cancelled before start".into());
        return st;
    }

    let t0 = TokioInstant::now();
    let deadline = job.duration.map(|d| t0 + d);
    let req_len = plan.encoder.max_request_len();
    // Write ~64 KiB at a time: few syscalls, yet small enough to interleave.
    let batch_max = (64 * 1024 / req_len).clamp(1, plan.window);
    let mut out = BytesMut::with_capacity(batch_max * (req_len + 6) + 16);
    let sent_before_failure: Result<()> = async {
        loop {
            let mut want = batch_max as u64;
            if let Some(m) = job.messages {
                if st.sent >= m {
                    break;
                }
                want = want.min(m - st.sent);
            }
            let now = TokioInstant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            if let Some(rate) = job.rate {
                // Message k is due at t0 + k / rate; send all that are due.
                let due = ((now - t0).as_secs_f64() * rate) as u64 + 1;
                if due <= st.sent {
                    let next = t0 + Duration::from_secs_f64(st.sent as f64 / rate);
                    tokio::time::sleep_until(deadline.map_or(next, |d| next.min(d))).await;
                    continue;
                }
                want = want.min(due - st.sent);
            }
            let n = take_permits(&sem, want as usize, plan.timeout, deadline).await?;
            if n == 0 {
                break;
            }
            for _ in 0..n {
                let ch = job.channels[(job.id as usize + st.sent as usize) % job.channels.len()];
                let seq = st.per_channel[ch];
                st.per_channel[ch] += 1;
                let h = Header {
                    publisher: job.id,
                    seq,
                    sent_ns: plan.start.elapsed().as_nanos() as u64,
                };
                plan.encoder.encode(&mut out, ch, h);
                st.sent += 1;
                if per_pong > 0 && st.sent.is_multiple_of(per_pong as u64) {
                    out.put_slice(b"PING\r\n");
                }
            }
            if replies.owe_pong.swap(false, Ordering::Relaxed) {
                out.put_slice(b"PONG\r\n");
            }
            tokio::time::timeout(plan.timeout, wr.write_all(&out))
                .await
                .map_err(|_| anyhow!("write blocked for {:?}", plan.timeout))??;
            out.clear();
        }
        st.send_done_ns = plan.start.elapsed().as_nanos() as u64;
        // Flush: the last PING's PONG (NATS) or the last reply means the
        // server has handled every message we sent.
        if per_pong > 0 && !st.sent.is_multiple_of(per_pong as u64) {
            wr.write_all(b"PING\r\n").await?;
        }
        let all = tokio::time::timeout(plan.timeout, sem.acquire_many(plan.window as u32))
            .await
            .map_err(|_| anyhow!("replies missing after {:?}", plan.timeout))?;
        all.map_err(|_| anyhow!("connection lost before all replies arrived"))?.forget();
        Ok(())
    }
    .await;
    if st.send_done_ns == 0 {
        st.send_done_ns = plan.start.elapsed().as_nanos() as u64;
    }
    reader.abort();
    let fatal = taken(&replies.fatal);
    if let Err(e) = sent_before_failure {
        st.fatal = Some(match fatal {
            Some(f) => format!("publisher {}: {e:#} ({f})", job.id),
            None => format!("publisher {}: {e:#}", job.id),
        });
    }
    st.acked = replies.acked.load(Ordering::Relaxed).min(st.sent);
    st.errors = replies.errors.load(Ordering::Relaxed);
    st.first_error = taken(&replies.first_error);
    st
}
