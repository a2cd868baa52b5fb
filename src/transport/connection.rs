//! A session served over a socket (TCP or TLS), whatever its framing (the
//! line protocol, or WebSocket after the HTTP upgrade). A reader feeds the
//! client's commands to the session and a writer drains the outbox; they run
//! concurrently in one task, so a client that pipelines many commands without
//! reading replies cannot deadlock the server: replies queue in the outbox,
//! bounded by `--max-pending` like any other output.
//!
//! On plain TCP, producers write pushes straight into the socket, for both
//! framings: a WebSocket frame from the server is unmasked, so it is encoded
//! once per message like a line push. Over TLS the writer writes (see
//! `socket`).
//!
//! Idle connections are what a pub/sub server holds most of, so their cost is
//! watched: no read buffer while idle, a small task (cold paths are boxed,
//! read readiness is polled without a waiter node).

use bytes::Bytes;
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use tokio_util::sync::CancellationToken;

use super::expiry::Expiry;
use super::socket::Socket;
use crate::auth::Permissions;
use crate::broker::Broker;
use crate::config::Config;
use crate::outbox::{Batch, ConnId, Next, Outbox};
use crate::protocol::Framing;
use crate::protocol::codec::{FrameError, LineReader};
use crate::protocol::reply::{Error, Reply};
use crate::protocol::websocket::{self, CloseCode, Input, Violation};
use crate::server::GRACE;
use crate::server::closed::{Cause, Closed};
use crate::session::{Control, Session};

/// How the client's bytes are split into commands.
pub enum Decoder {
    Line(LineReader),
    WebSocket(websocket::Reader),
}

impl Decoder {
    fn framing(&self) -> Framing {
        match self {
            Decoder::Line(_) => Framing::Line,
            Decoder::WebSocket(_) => Framing::WebSocket,
        }
    }

    fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        match self {
            Decoder::Line(reader) => reader.read_with(read),
            Decoder::WebSocket(reader) => reader.read_with(read),
        }
    }

    fn next(&mut self) -> Result<Option<Input>, Violation> {
        match self {
            Decoder::Line(reader) => match reader.next_line() {
                Ok(line) => Ok(line.map(Input::Line)),
                Err(FrameError::LineTooLong) => Err(Violation::TooBig),
            },
            Decoder::WebSocket(reader) => reader.next_input(),
        }
    }
}

/// Serves one client until it leaves, misbehaves or the server shuts down;
/// returns why the connection ended.
pub async fn serve<B: Broker, S: Socket>(
    socket: S,
    mut decoder: Decoder,
    permissions: Arc<Permissions>,
    id: ConnId,
    broker: Arc<B>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Closed {
    let framing = decoder.framing();
    let outbox = Outbox::new(id, config.max_pending, framing, socket);
    let socket = outbox.sink();
    // Cancelled by the server's shutdown, by the reader when it is done, or
    // by the writer when it gives up.
    let closed = shutdown.child_token();
    let cause = Cause::default();
    let mut session =
        Session::new(broker, config, Arc::clone(&outbox) as Arc<Outbox>, framing, permissions);
    // Both halves borrow the one socket: no split, no shared handle to
    // allocate. The session and the decoder live here once and are borrowed:
    // every byte of this future is paid by every idle connection.
    let reading = async {
        let (reason, violation) = read(&mut session, &mut decoder, socket, &closed).await;
        cause.set(reason);
        if let Some(close) = last_words(framing, reason) {
            // Refused if the connection was cut off meanwhile: it got its own.
            session.send(close);
        }
        session.end();
        closed.cancel();
        if violation {
            Box::pin(linger(socket)).await;
        }
    };
    tokio::join!(reading, write_loop(&outbox, framing, &closed, &cause));
    cause.get_or(Closed::Shutdown)
}

/// What the framing says before the connection closes for `reason`: a
/// WebSocket close frame with its code; nothing for the line protocol.
fn last_words(framing: Framing, reason: Closed) -> Option<Bytes> {
    if framing != Framing::WebSocket {
        return None;
    }
    let code = match reason {
        Closed::Shutdown => CloseCode::GoingAway,
        Closed::LineTooLong => CloseCode::TooBig,
        Closed::ProtocolError => CloseCode::Protocol,
        Closed::TokenExpired | Closed::SlowConsumer => CloseCode::Policy,
        _ => CloseCode::Normal,
    };
    Some(websocket::close(code))
}

/// Feeds the client's commands to the session until the client leaves,
/// breaks the framing or `closed` is cancelled; returns why it stopped, and
/// whether unread input may remain (then the socket lingers so the client
/// reads its error).
async fn read<B: Broker, S: Socket>(
    session: &mut Session<B>,
    reader: &mut Decoder,
    socket: &S,
    closed: &CancellationToken,
) -> (Closed, bool) {
    // The token's expiry, armed only for connections that have one: a timer
    // entry, not a task, and on the heap so idle connections do not carry it.
    let mut expiry = Expiry::default();
    loop {
        expiry.follow(session.expires());
        let read = poll_fn(|cx| match reader.read_with(|scratch| socket.read_some(cx, scratch)) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            read => Poll::Ready(read),
        });
        let read = tokio::select! {
            read = read => read,
            _ = closed.cancelled() => return (Closed::Shutdown, false),
            _ = poll_fn(|cx| expiry.poll(cx)) => {
                session.fail(Error::TokenExpired);
                return (Closed::TokenExpired, false);
            }
        };
        match read {
            Ok(0) => return (Closed::ClientClosed, false),
            Ok(_) => loop {
                match reader.next() {
                    Ok(Some(_)) if closed.is_cancelled() => {
                        // Cut off meanwhile: the rest of the input is moot.
                        return (Closed::Shutdown, false);
                    }
                    Ok(Some(Input::Line(line))) => {
                        // Boxed: what a command awaits (the broker) would
                        // otherwise enlarge every idle connection's task.
                        if Box::pin(session.execute(line)).await == Control::Quit {
                            return (Closed::ClientQuit, false);
                        }
                    }
                    Ok(Some(Input::Ping(payload))) => session.send(websocket::pong(&payload)),
                    Ok(Some(Input::Close)) => return (Closed::ClientClosed, false),
                    Ok(None) => {
                        session.end_burst();
                        break;
                    }
                    Err(Violation::TooBig) => {
                        session.fail(Error::LineTooLong);
                        return (Closed::LineTooLong, true);
                    }
                    Err(Violation::Protocol) => return (Closed::ProtocolError, true),
                }
            },
            Err(error) => {
                let reason = match error.kind() {
                    io::ErrorKind::ConnectionReset => Closed::ClientClosed,
                    _ => Closed::ReadError,
                };
                return (reason, false);
            }
        }
    }
}

/// Why a write stopped before the batch was out.
enum Stop {
    CutOff,
    Failed,
}

/// Drains the outbox into the socket until the connection closes; on the way
/// out it cancels `closed`, which stops the reader too.
async fn write_loop<S: Socket>(
    outbox: &Outbox<S>,
    framing: Framing,
    closed: &CancellationToken,
    cause: &Cause,
) {
    let mut batch = Batch::default();
    loop {
        let stop = match outbox.next(&mut batch).await {
            Next::Write => {
                let bytes = batch.bytes();
                // Boxed: the select it awaits is large, and only a blocked
                // write needs it; every idle connection would carry it.
                match Box::pin(write(outbox, &mut batch, closed)).await {
                    Ok(()) => {
                        outbox.written(bytes);
                        // An idle connection keeps no queue allocation.
                        batch = Batch::default();
                        continue;
                    }
                    Err(stop) => stop,
                }
            }
            Next::Closed => break,
            Next::CutOff => Stop::CutOff,
        };
        match stop {
            Stop::CutOff => Box::pin(cut_off(outbox.sink(), framing, batch, closed, cause)).await,
            Stop::Failed => cause.set(Closed::WriteError),
        }
        break;
    }
    closed.cancel();
    // FIN now, even if the reader still lingers on the socket.
    let sink = outbox.sink();
    // Boxed: a timer is hundreds of bytes every idle connection would carry.
    let _ = Box::pin(tokio::time::timeout(GRACE, poll_fn(|cx| sink.poll_shutdown(cx)))).await;
}

/// A slow consumer: finishes the frame the client has begun to receive,
/// sends `ERR slow consumer` (and a WebSocket close 1008) where the socket
/// still takes it (bounded by `GRACE`), and stops the reader.
async fn cut_off<S: Socket>(
    sink: &S,
    framing: Framing,
    mut batch: Batch,
    closed: &CancellationToken,
    cause: &Cause,
) {
    cause.set(Closed::SlowConsumer);
    closed.cancel();
    batch.keep_rest();
    if let Some(error) = framing.reply(&Reply::Error(Error::SlowConsumer)) {
        batch.push(error);
    }
    if let Some(close) = last_words(framing, Closed::SlowConsumer) {
        batch.push(close);
    }
    let _ = tokio::time::timeout(GRACE, write_all(sink, &mut batch)).await;
}

/// Writes all of `batch`. Unbounded while the connection is open (a stuck
/// client is caught by its output budget, which this wait watches); once it
/// is closing, bounded by `GRACE`.
async fn write<S: Socket>(
    outbox: &Outbox<S>,
    batch: &mut Batch,
    closed: &CancellationToken,
) -> Result<(), Stop> {
    let sink = outbox.sink();
    tokio::select! {
        written = write_all(sink, batch) => return written.map_err(|_| Stop::Failed),
        _ = outbox.cut_off() => return Err(Stop::CutOff),
        _ = closed.cancelled() => {}
    }
    match tokio::time::timeout(GRACE, write_all(sink, batch)).await {
        Ok(written) => written.map_err(|_| Stop::Failed),
        Err(_) => Err(Stop::Failed),
    }
}

/// Writes `batch` as the socket drains, removing what went out, so that a
/// cancelled call loses no progress; then flushes the stream.
async fn write_all<S: Socket>(socket: &S, batch: &mut Batch) -> io::Result<()> {
    poll_fn(|cx| {
        batch.write_with(|frames| socket.write_some(cx, frames))?;
        if !batch.is_empty() {
            return Poll::Pending;
        }
        socket.poll_flush(cx)
    })
    .await
}

/// After a protocol violation, reads and discards what the client still sends
/// (bounded by `GRACE`), so that closing does not reset the connection before
/// the client has read the error.
async fn linger<S: Socket>(socket: &S) {
    // On the heap: a stack array would sit in every connection's task.
    let mut sink = vec![0u8; 4096];
    let discard = poll_fn(|cx| {
        loop {
            match socket.read_some(cx, &mut sink) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(_) => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(GRACE, discard).await;
}
