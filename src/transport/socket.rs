//! The byte streams a connection runs over: plain TCP, and TLS over TCP.
//!
//! Both halves of a connection (its reader and its writer) run in one task
//! and use the stream through `&self`, so nothing is split or shared across
//! tasks. Every method is a non-blocking attempt that, when it cannot make
//! progress, registers the task's waker and answers `WouldBlock`.
//!
//! On plain TCP the stream is also the outbox's [`Sink`]: producers write
//! pushes straight into the socket. A TLS session's state is the writer's
//! alone, so as a sink it always answers `WouldBlock` and the writer writes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::outbox::Sink;
use crate::sync;

/// See the module documentation.
pub trait Socket: Sink {
    /// Reads into `buf`.
    fn read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes a prefix of `frames`.
    fn write_some(&self, cx: &mut Context<'_>, frames: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Pushes out what the stream itself buffered (TLS records).
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the sending side (FIN; for TLS, close_notify first).
    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Plain TCP.
#[derive(Debug)]
pub struct Tcp(pub TcpStream);

impl Sink for Tcp {
    fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(frames)
    }
}

impl Socket for Tcp {
    fn read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> io::Result<usize> {
        // poll_read_ready keeps the waker in the socket's registration: no
        // waiter node in every idle connection's task. A `WouldBlock` from
        // the read clears the readiness, so the loop registers again.
        loop {
            match self.0.poll_read_ready(cx) {
                Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Ready(Ok(())) => match self.0.try_read(buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                },
            }
        }
    }

    fn write_some(&self, cx: &mut Context<'_>, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match self.0.poll_write_ready(cx) {
                Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Ready(Ok(())) => match self.0.try_write_vectored(frames) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    written => return written,
                },
            }
        }
    }

    fn poll_flush(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// TLS over TCP. The lock is only ever taken by the connection's own task
/// (its reader and writer take turns), so it is never contended.
#[derive(Debug)]
pub struct Tls(pub Mutex<TlsStream<TcpStream>>);

impl Tls {
    fn with<T>(&self, f: impl FnOnce(Pin<&mut TlsStream<TcpStream>>) -> T) -> T {
        let mut stream = sync::lock(&self.0);
        f(Pin::new(&mut *stream))
    }
}

impl Sink for Tls {
    fn try_write(&self, _frames: &[IoSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn pending_as_would_block<T>(poll: Poll<io::Result<T>>) -> io::Result<T> {
    match poll {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Socket for Tls {
    fn read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        pending_as_would_block(self.with(|stream| stream.poll_read(cx, &mut buf)))?;
        Ok(buf.filled().len())
    }

    fn write_some(&self, cx: &mut Context<'_>, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        pending_as_would_block(self.with(|stream| stream.poll_write_vectored(cx, frames)))
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_flush(cx))
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_shutdown(cx))
    }
}
