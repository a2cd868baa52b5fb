//! One client connection: a reader that parses and executes commands in order,
//! and a writer that drains the connection's [`Outbox`]. They run concurrently
//! in one task, so a client that pipelines many commands without reading
//! replies cannot deadlock the server: replies queue in the outbox, bounded by
//! `--max-pending` like any other output.
//!
//! Idle connections are what a pub/sub server holds most of, so their cost is
//! watched: no read buffer while idle, a small task (cold paths are boxed, read
//! readiness is polled without a waiter node), subscriptions in a `Vec`.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::GRACE;
use crate::broker::{Broker, Topic};
use crate::config::Config;
use crate::outbox::{ConnId, Flush, Next, Outbox, write_now};
use crate::protocol::codec::{self, FrameError};
use crate::protocol::command::{Command, Hello};

/// Bytes asked of the socket per read. The commands of one read are one
/// burst: their deliveries go out in one write per subscriber, so a larger
/// read means fewer syscalls under load (the buffer is released when idle).
const READ_CHUNK: usize = 64 * 1024;

const CONFIRMED: Bytes = Bytes::from_static(b"CONFIRMED\r\n");
const ALREADY_SUBSCRIBED: Bytes = Bytes::from_static(b"ALREADY SUBSCRIBED\r\n");
const ALREADY_UNSUBSCRIBED: Bytes = Bytes::from_static(b"ALREADY UNSUBSCRIBED\r\n");
const UNKNOWN_COMMAND: Bytes = Bytes::from_static(b"UNKNOWN COMMAND\r\n");

/// Why the reader stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed, quit, or the server is shutting down.
    Done,
    /// The client broke the framing; unread input may remain.
    Violation,
}

/// Serves one client until it leaves, misbehaves or the server shuts down.
pub async fn serve<B: Broker>(
    stream: TcpStream,
    id: ConnId,
    broker: Arc<B>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let outbox = Arc::new(Outbox::new(id, config.max_pending, stream));
    let Some(stream) = outbox.socket() else {
        return;
    };
    // Cancelled by the server's shutdown, or by the writer when it gives up.
    let closed = shutdown.child_token();
    let mut session = Session {
        broker,
        config,
        outbox: Arc::clone(&outbox),
        topics: Vec::new(),
        flush: Flush::default(),
    };
    // Both halves borrow the one socket: no split, no shared handle to allocate.
    let reading = async {
        let end = session.read_loop(stream, &closed).await;
        session.leave();
        closed.cancel();
        if end == End::Violation {
            Box::pin(linger(stream)).await;
        }
    };
    tokio::join!(reading, write_loop(stream, &outbox, &closed));
}

/// A connection's state, as the reader sees it.
struct Session<B> {
    broker: Arc<B>,
    config: Arc<Config>,
    outbox: Arc<Outbox>,
    /// What this connection is subscribed to, channels and patterns. A `Vec`:
    /// most connections hold a handful, and it is the smallest when idle;
    /// lookups are linear in at most `--max-subscriptions`.
    topics: Vec<Topic>,
    /// Outboxes (this one included) that the current read's commands made
    /// busy; written out once the read's commands are done.
    flush: Flush,
}

impl<B: Broker> Session<B> {
    async fn read_loop(&mut self, stream: &TcpStream, closed: &CancellationToken) -> End {
        // Allocated when data arrives and given back once consumed: an idle
        // connection holds no read buffer.
        let mut buf = BytesMut::new();
        loop {
            // poll_read_ready keeps the waker in the socket's registration:
            // a smaller future than `readable()`, which every idle task holds.
            let readable = poll_fn(|cx| stream.poll_read_ready(cx));
            tokio::select! {
                ready = readable => if ready.is_err() { return End::Done },
                _ = closed.cancelled() => return End::Done,
            }
            buf.reserve(READ_CHUNK);
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return End::Done,
                Ok(_) => loop {
                    match codec::next_line(&mut buf, self.config.max_line) {
                        Ok(Some(line)) => {
                            // Boxed: what a command awaits (the broker) would
                            // otherwise enlarge every idle connection's task.
                            if !Box::pin(self.execute(line.freeze())).await {
                                return End::Done;
                            }
                        }
                        Ok(None) => {
                            self.flush.run();
                            break;
                        }
                        Err(FrameError::LineTooLong) => {
                            self.reply(Bytes::from_static(b"ERR line too long\r\n"));
                            return End::Violation;
                        }
                    }
                },
                // Readiness was stale: wait again (without a buffer, below).
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return End::Done,
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            }
        }
    }

    /// Executes one command line; false when the connection is to close.
    async fn execute(&mut self, line: Bytes) -> bool {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => {
                self.reply_error(&error);
                return true;
            }
        };
        match command {
            Command::Subscribe(names) => {
                for name in self.or_default(names) {
                    self.subscribe(Topic::channel(name)).await;
                }
            }
            Command::Unsubscribe(names) => {
                for name in self.or_default(names) {
                    self.unsubscribe(Topic::channel(name));
                }
            }
            Command::PSubscribe(patterns) => {
                for pattern in patterns {
                    self.subscribe(Topic::pattern(pattern)).await;
                }
            }
            Command::PUnsubscribe(patterns) => {
                for pattern in patterns {
                    self.unsubscribe(Topic::pattern(pattern));
                }
            }
            Command::Publish { channel, payload } => {
                if self.config.deny_publish {
                    self.reply(Bytes::from_static(b"ERR forbidden\r\n"));
                } else {
                    match self.broker.publish(channel, payload, &mut self.flush).await {
                        Ok(()) => self.reply(CONFIRMED),
                        Err(error) => self.reply_error(&error),
                    }
                }
            }
            Command::Ping(text) if text.is_empty() => self.reply(Bytes::from_static(b"PONG\r\n")),
            Command::Ping(text) => self.reply(codec::line(&[b"PONG ", &text[..]].concat())),
            Command::Hello(Hello::Supported(version)) => {
                self.reply(CONFIRMED);
                self.outbox.set_version(version);
            }
            Command::Hello(Hello::Unsupported) => {
                self.reply(Bytes::from_static(b"ERR unsupported protocol version\r\n"));
            }
            Command::Quit => {
                self.reply(Bytes::from_static(b"BYE\r\n"));
                return false;
            }
            Command::Unknown => self.reply(UNKNOWN_COMMAND),
        }
        true
    }

    /// A bare `SUBSCRIBE` or `UNSUBSCRIBE` means the default channel (the seed's behaviour).
    fn or_default(&self, names: Vec<Bytes>) -> Vec<Bytes> {
        if names.is_empty() { vec![self.config.default_channel.clone()] } else { names }
    }

    async fn subscribe(&mut self, topic: Topic) {
        if self.topics.contains(&topic) {
            return self.reply(ALREADY_SUBSCRIBED);
        }
        if self.topics.len() >= self.config.max_subscriptions {
            return self.reply(Bytes::from_static(b"ERR too many subscriptions\r\n"));
        }
        // Messages that arrive while the broker confirms queue up behind the
        // reply, so the client sees CONFIRMED first.
        self.outbox.hold();
        match self.broker.subscribe(topic, &self.outbox).await {
            Ok(topic) => {
                if self.topics.is_empty() {
                    // Most connections subscribe once: no room for four.
                    self.topics.reserve_exact(1);
                }
                self.topics.push(topic);
                self.outbox.release(CONFIRMED);
            }
            Err(error) => self.outbox.release(error_line(&error)),
        }
    }

    fn unsubscribe(&mut self, topic: Topic) {
        if let Some(at) = self.topics.iter().position(|t| *t == topic) {
            self.topics.swap_remove(at);
            self.broker.unsubscribe(&topic, self.outbox.id());
            self.reply(CONFIRMED);
        } else {
            self.reply(ALREADY_UNSUBSCRIBED);
        }
    }

    /// Delivers what the last commands queued, drops every subscription and
    /// stops the outbox accepting output.
    fn leave(&mut self) {
        self.flush.run();
        for topic in self.topics.drain(..) {
            self.broker.unsubscribe(&topic, self.outbox.id());
        }
        self.outbox.close();
    }

    fn reply(&mut self, frame: Bytes) {
        // A refused reply means the connection is already being cut off.
        let _ = self.outbox.push(frame, &mut self.flush);
    }

    fn reply_error(&mut self, error: &dyn std::fmt::Display) {
        self.reply(error_line(error));
    }
}

fn error_line(error: &dyn std::fmt::Display) -> Bytes {
    codec::line(format!("ERR {error}").as_bytes())
}

/// Drains the outbox into the socket until the connection closes; on the way
/// out it cancels `closed`, which stops the reader too.
async fn write_loop(stream: &TcpStream, outbox: &Outbox, closed: &CancellationToken) {
    let mut batch = VecDeque::new();
    loop {
        match outbox.next(&mut batch).await {
            Next::Write => {
                if write(stream, &mut batch, closed).await.is_err() {
                    break;
                }
                outbox.written();
                // An idle connection keeps no queue allocation.
                batch = VecDeque::new();
            }
            Next::Closed => break,
            Next::SlowConsumer => {
                tracing::debug!(id = outbox.id(), "slow consumer cut off");
                closed.cancel();
                let mut last = VecDeque::from([Bytes::from_static(b"ERR slow consumer\r\n")]);
                let _ = write(stream, &mut last, closed).await;
                break;
            }
        }
    }
    closed.cancel();
    // FIN now, even if the reader still lingers on the socket.
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// Writes all of `frames`. Unbounded while the connection is open (a stuck
/// client is caught by its output budget); once it is closing, bounded by `GRACE`.
async fn write(
    stream: &TcpStream,
    frames: &mut VecDeque<Bytes>,
    closed: &CancellationToken,
) -> io::Result<()> {
    tokio::select! {
        written = write_all(stream, frames) => return written,
        _ = closed.cancelled() => {}
    }
    // Boxed: the timer is large and only closing connections need it.
    match Box::pin(tokio::time::timeout(GRACE, write_all(stream, frames))).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `frames` as the socket drains, removing what went out, so that a
/// cancelled call loses no progress.
async fn write_all(stream: &TcpStream, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !frames.is_empty() {
        poll_fn(|cx| stream.poll_write_ready(cx)).await?;
        write_now(stream, frames)?;
    }
    Ok(())
}

/// After a protocol violation, reads and discards what the client still sends
/// (bounded by `GRACE`), so that closing does not reset the connection before
/// the client has read the error.
async fn linger(stream: &TcpStream) {
    // On the heap: a stack array would sit in every connection's task.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(GRACE, async {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
