//! The publishing connection: one task owns it and pipelines every
//! `PUBLISH` (and history read) of the node over it.
//!
//! Jobs arrive on a channel in the order connections send them, are written
//! in batches without waiting for earlier replies, and are answered in that
//! same order as Redis replies: a connection's `PUBLISH`es reach Redis, and
//! their replies reach the client, in command order, while the client's
//! connection goes on reading commands (a held place in its outbox keeps
//! the reply's turn).
//!
//! A connection cut (Redis's `timeout`, `CLIENT KILL`, a proxy or NAT
//! dropping an idle flow) is noticed when the socket ends or a reply is
//! late, and the task reconnects by itself; jobs that arrive meanwhile, and
//! those that were in flight, get `ERR backend unavailable`.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Health;
use super::cluster::{self, Addr};
use super::connect::{self, REDIS_TIMEOUT, Stream, Target};
use super::resp::{self, Value};
use super::subscriber::{BACKOFF_FIRST, BACKOFF_MAX};
use crate::history::redis::{LIBRARY, Read};
use crate::outbox::{Hold, Outbox};
use crate::protocol::Framing;
use crate::protocol::reply::{Error, Reply};

/// How often a late reply is looked for.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Commands written per batch, at most.
const MAX_BATCH: usize = 1024;

/// A command for Redis and who gets its outcome.
pub struct Job {
    pub command: Bytes,
    pub done: Done,
    /// On a cluster: the slot of the channel it is about, which decides
    /// the master it goes to.
    pub slot: Option<u16>,
    /// On a cluster: times it was sent to a master.
    pub tries: u8,
    /// On a cluster: where the last master's `MOVED` said to go.
    pub moved_to: Option<Addr>,
}

impl Job {
    pub fn new(command: Bytes, done: Done, slot: Option<u16>) -> Job {
        Job { command, done, slot, tries: 0, moved_to: None }
    }
}

/// Who gets a job's outcome.
pub enum Done {
    /// A session's `PUBLISH`: the reply goes in the place it holds.
    Reply { outbox: Arc<Outbox>, hold: Hold, framing: Framing },
    /// An awaited publish (`POST /publish`).
    Published(oneshot::Sender<Result<(), Error>>),
    /// A history read (`GET /history`).
    Read(oneshot::Sender<Result<Read, Error>>),
}

impl Done {
    pub fn answer(self, reply: Result<&Value<'_>, Error>) {
        let failed = |reply: Result<&Value<'_>, Error>| match reply {
            Ok(Value::Error(text)) => {
                tracing::warn!("redis: {}", String::from_utf8_lossy(text));
                Err(Error::BackendUnavailable)
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        match self {
            Done::Reply { outbox, hold, framing } => {
                let reply = match failed(reply) {
                    Ok(()) => Reply::Confirmed,
                    Err(error) => Reply::Error(error),
                };
                outbox.release(hold, framing.reply(&reply));
            }
            Done::Published(sender) => {
                let _ = sender.send(failed(reply));
            }
            Done::Read(sender) => {
                let read = match reply {
                    Ok(value) => Read::parse(value).ok_or_else(|| {
                        tracing::warn!("redis: crier_read failed: {value:?}");
                        Error::BackendUnavailable
                    }),
                    Err(error) => Err(error),
                };
                let _ = sender.send(read);
            }
        }
    }
}

/// See the module documentation.
pub struct Publisher {
    pub target: Target,
    pub jobs: mpsc::Receiver<Job>,
    /// Load crier's functions on each connection (history is on).
    pub functions: bool,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    /// On a cluster: where a job answered `MOVED` or `ASK` goes back to
    /// (the router), instead of failing.
    pub bounce: Option<mpsc::UnboundedSender<Job>>,
    /// On a cluster: told when the connection is lost or cannot be opened
    /// (the master may have failed over: the map is read again).
    pub lost: Option<Arc<Notify>>,
}

/// The connection ended or a reply is late.
struct Lost;

impl Publisher {
    pub async fn run(mut self) {
        let mut delay = BACKOFF_FIRST;
        let mut lost_before = false;
        loop {
            let stream = tokio::select! {
                opened = self.open() => opened,
                _ = self.shutdown.cancelled() => return,
            };
            match stream {
                Ok(stream) => {
                    if lost_before {
                        tracing::info!("redis: publishing connection restored");
                    }
                    delay = BACKOFF_FIRST;
                    self.set_up(true);
                    let served = self.serve(stream).await;
                    self.set_up(false);
                    match served {
                        Ok(()) => return,
                        Err(Lost) => {
                            lost_before = true;
                            tracing::warn!("redis: publishing connection lost; reconnecting");
                            continue;
                        }
                    }
                }
                Err(error) => {
                    lost_before = true;
                    tracing::warn!(
                        "redis: cannot open the publishing connection to {}: {error}",
                        self.target.describe()
                    );
                    if let Some(lost) = &self.lost {
                        lost.notify_one();
                    }
                }
            }
            // Refuse what arrives while waiting: publishing needs Redis.
            let pause = tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    // The subscription connection got through: so may we.
                    _ = self.health.changed.notified() => break,
                    job = self.jobs.recv() => match job {
                        Some(job) => job.done.answer(Err(Error::BackendUnavailable)),
                        None => return,
                    },
                    _ = self.shutdown.cancelled() => return,
                }
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    fn set_up(&self, up: bool) {
        self.health.publishing.store(up, Ordering::Relaxed);
        self.health.changed.notify_waiters();
        if let (false, Some(lost)) = (up, &self.lost) {
            lost.notify_one();
        }
    }

    async fn open(&self) -> std::io::Result<Box<dyn Stream>> {
        let mut stream = self.target.open().await?;
        if self.functions {
            let load = resp::encode(&[b"FUNCTION", b"LOAD", b"REPLACE", LIBRARY.as_bytes()]);
            connect::ask(&mut *stream, &load, |_| Ok(())).await.map_err(|error| {
                std::io::Error::other(format!(
                    "cannot load crier's functions (history needs Redis 7): {error}"
                ))
            })?;
        }
        Ok(stream)
    }

    /// Pipelines jobs until the connection is lost (`Err`) or shutdown.
    async fn serve(&mut self, mut stream: Box<dyn Stream>) -> Result<(), Lost> {
        let mut in_flight: VecDeque<(Instant, Job)> = VecDeque::new();
        let mut input = BytesMut::with_capacity(16 * 1024);
        let mut output = BytesMut::new();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                read = stream.read_buf(&mut input) => match read {
                    Ok(0) | Err(_) => break Err(Lost),
                    Ok(_) => {
                        if self.answer(&mut input, &mut in_flight).is_err() {
                            break Err(Lost);
                        }
                    }
                },
                job = self.jobs.recv() => {
                    let Some(job) = job else { break Ok(()) };
                    let now = Instant::now();
                    output.extend_from_slice(&job.command);
                    in_flight.push_back((now, job));
                    for _ in 1..MAX_BATCH {
                        let Ok(job) = self.jobs.try_recv() else { break };
                        output.extend_from_slice(&job.command);
                        in_flight.push_back((now, job));
                    }
                    let written = tokio::time::timeout(REDIS_TIMEOUT, stream.write_all(&output)).await;
                    output.clear();
                    if !matches!(written, Ok(Ok(()))) {
                        break Err(Lost);
                    }
                },
                _ = check.tick() => {
                    if in_flight.front().is_some_and(|(sent, _)| sent.elapsed() > REDIS_TIMEOUT) {
                        tracing::warn!("redis: no reply within {} s", REDIS_TIMEOUT.as_secs());
                        break Err(Lost);
                    }
                },
                _ = self.shutdown.cancelled() => break Ok(()),
            }
        };
        for (_, job) in in_flight {
            job.done.answer(Err(Error::BackendUnavailable));
        }
        outcome
    }

    /// Answers the jobs whose replies are in `input`, in order; on a
    /// cluster, a job redirected elsewhere goes back to the router.
    fn answer(
        &self,
        input: &mut BytesMut,
        in_flight: &mut VecDeque<(Instant, Job)>,
    ) -> Result<(), Lost> {
        let mut used = 0;
        loop {
            match resp::parse(&input[used..]) {
                Ok(Some((Value::Push(_), len))) => used += len,
                Ok(Some((reply, len))) => {
                    used += len;
                    let Some((_, mut job)) = in_flight.pop_front() else {
                        tracing::warn!("redis: a reply nothing asked for");
                        return Err(Lost);
                    };
                    if let (Value::Error(text), Some(bounce)) = (&reply, &self.bounce)
                        && cluster::redirected(text)
                    {
                        job.moved_to = cluster::moved_to(text, self.target.host());
                        if let Err(refused) = bounce.send(job) {
                            refused.0.done.answer(Err(Error::BackendUnavailable));
                        }
                        continue;
                    }
                    job.done.answer(Ok(&reply));
                }
                Ok(None) => break,
                Err(malformed) => {
                    tracing::warn!("redis: {malformed}");
                    return Err(Lost);
                }
            }
        }
        input.advance(used);
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        Ok(())
    }
}
