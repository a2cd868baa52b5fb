//! Server-Sent Events (`GET /sse?channel=a&pattern=p`): a one-way
//! subscription. The response headers go out only once every subscription
//! is confirmed, so a browser's `open` event means `CONFIRMED`; then each
//! delivery is one `data:` event holding the JSON form of the message.
//!
//! The stream is the session's writer: it drains the outbox (a `Deferred`
//! sink: only hyper writes this socket) into body chunks, one per batch. A
//! comment line goes out after `KEEPALIVE` of silence so that proxies keep
//! the stream open. Past `--max-pending` the connection is cut off: if the
//! stream is still being read it ends with an `error` event carrying
//! `ERR slow consumer`; if the client stopped reading (hyper no longer polls
//! the stream), the connection is dropped at once (see [`Abort`]).

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::expiry::Expiry;
use crate::broker::{Broker, Topic};
use crate::history::Position;
use crate::http::query::Names;
use crate::http::{Connection, Credentials, Web, error};
use crate::metrics::{self, Transport};
use crate::outbox::{self, Batch, Next, Outbox, Sink};
use crate::protocol::reply::Error;
use crate::protocol::{Framing, json};
use crate::server::closed::Closed;
use crate::session::Session;

/// Silence after which a comment line is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The outbox's sink: nothing is written by producers; a cut-off drops the
/// HTTP connection.
struct Abort(CancellationToken);

impl Sink for Abort {
    fn try_write(&self, _frames: &[IoSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn cut_off(&self) {
        self.0.cancel();
    }
}

pub async fn stream<B: Broker>(
    State(web): State<Web<B>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    Extension(connection): Extension<Arc<Connection>>,
) -> Response {
    let names = match Names::parse(query.as_deref(), true) {
        Ok(names) => names,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let credentials = match Credentials::check(&web.config, &headers, names.token.as_deref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return *refusal,
    };
    // Where a reconnecting EventSource left off: its header, or the URL.
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| Bytes::copy_from_slice(value.as_bytes()))
        .or(names.last_event_id);
    // A Last-Event-ID this server cannot read (another server's, a
    // mangled one) means nothing can be recovered: every channel is reset.
    // A 400 would make the browser's EventSource give up for good.
    let since = last_event_id.as_deref().map(|id| {
        Position::parse(id).ok().flatten().unwrap_or(Position { epoch: Bytes::new(), offset: 0 })
    });
    let mut channels = names.channels;
    if channels.is_empty() && names.patterns.is_empty() {
        channels.push(web.config.default_channel.clone());
    }
    let patterns: Vec<Topic> = names.patterns.into_iter().map(Topic::pattern).collect();
    let abort = Abort(connection.abort.clone());
    let outbox =
        Outbox::new(outbox::next_id(), web.config.max_pending, Framing::EventStream, abort);
    let mut session = Session::new(
        Arc::clone(&web.broker),
        Arc::clone(&web.config),
        Arc::clone(&outbox) as Arc<Outbox>,
        Framing::EventStream,
        Arc::clone(&credentials.permissions),
    );
    // Channels resume from the one position the stream's last event named
    // (the others cannot be recovered: they get `event: reset`).
    let subscribed = match &since {
        Some(since) => session.resume_all(channels, since).await,
        None => session
            .subscribe_all(channels.into_iter().map(Topic::channel).collect())
            .await
            .map(|()| Vec::new()),
    };
    // Patterns have no position: on a resume they are reset too.
    let pattern_names: Vec<Bytes> = patterns.iter().map(|p| p.name.clone()).collect();
    let subscribed = match subscribed {
        Ok(mut lost) => session.subscribe_all(patterns).await.map(|()| {
            if since.is_some() {
                lost.extend(pattern_names);
            }
            lost
        }),
        Err(reason) => Err(reason),
    };
    let lost = match subscribed {
        Ok(lost) => lost,
        Err(reason) => {
            let status = match reason {
                Error::Forbidden => return credentials.forbidden(&web.config),
                Error::InvalidChannel | Error::TooManySubscriptions => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return error(status, reason);
        }
    };
    metrics::get().connection_opened(Transport::Sse);
    let reset = (!lost.is_empty()).then(|| {
        let names: Vec<&[u8]> = lost.iter().map(|name| &name[..]).collect();
        json::reset(&names)
    });
    let events = Events {
        first: reset,
        session,
        outbox,
        closed: Closed::ClientClosed,
        ended: false,
        expiry: Expiry::default(),
    };
    let body = futures_util::stream::unfold((events, web.closing), |(mut events, closing)| async {
        let chunk = events.next(&closing).await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), (events, closing)))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (headers, Body::from_stream(body)).into_response()
}

/// One SSE client: its session (dropped with the stream, which ends its
/// subscriptions) and its outbox.
struct Events<B: Broker> {
    /// Sent before anything else: the `event: reset` of a resume that could
    /// not recover every channel.
    first: Option<Bytes>,
    /// Its `Drop` ends the subscriptions; its token's expiry ends the stream.
    session: Session<B>,
    outbox: Arc<Outbox<Abort>>,
    closed: Closed,
    ended: bool,
    /// The stream simply ends when the token expires.
    expiry: Expiry,
}

impl<B: Broker> Events<B> {
    /// The next body chunk; `None` ends the stream.
    async fn next(&mut self, closing: &tokio_util::sync::CancellationToken) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut batch = Batch::default();
        self.expiry.follow(self.session.expires());
        let next = tokio::select! {
            _ = std::future::poll_fn(|cx| self.expiry.poll(cx)) => {
                self.closed = Closed::TokenExpired;
                return None;
            }
            next = self.outbox.next(&mut batch) => next,
            _ = tokio::time::sleep(KEEPALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            _ = closing.cancelled() => {
                self.closed = Closed::Shutdown;
                return None;
            }
        };
        match next {
            Next::Write => {
                let mut chunk = BytesMut::with_capacity(batch.bytes());
                batch.frames().for_each(|frame| chunk.extend_from_slice(frame));
                self.outbox.written(batch.bytes());
                metrics::SENT_BYTES.add(chunk.len() as u64);
                Some(chunk.freeze())
            }
            Next::Closed => None,
            Next::CutOff => {
                self.closed = Closed::SlowConsumer;
                self.ended = true;
                Some(Bytes::from(format!("event: error\ndata: ERR {}\n\n", Error::SlowConsumer)))
            }
        }
    }
}

impl<B: Broker> Drop for Events<B> {
    fn drop(&mut self) {
        if self.outbox.was_cut_off() {
            self.closed = Closed::SlowConsumer;
        }
        metrics::get().connection_closed(Transport::Sse, self.closed);
    }
}
