//! The broker: who receives what. [`Broker`] is what a connection talks to;
//! the connection code does not know which backend is behind it.
//!
//! - `embedded`: the server is its own broker; publishing is a local fan-out.
//! - `redis`: Redis Pub/Sub carries messages between nodes; each node keeps one
//!   Redis subscription per topic in use and fans out locally.
//!
//! Both fan out through the same [`Registry`].

pub mod embedded;
pub mod glob;
pub mod redis;
pub mod registry;

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::oneshot;

pub use embedded::Embedded;
pub use registry::Registry;

use crate::history::{Position, Resumed};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::Framing;
use crate::protocol::reply::Error;

/// Who waits for a publish's outcome.
pub enum Waiter<'a> {
    /// The caller, which awaits it (`POST /publish`).
    Caller,
    /// A session's `PUBLISH`: when the outcome is not known at once, the
    /// reply takes a place held in the session's outbox, and the connection
    /// goes on reading commands meanwhile (pipelining).
    Session(&'a Arc<Outbox>, Framing),
}

/// What became of a publish.
#[derive(Debug)]
pub enum Published {
    /// Done: the outcome.
    Done(Result<(), Error>),
    /// Sent on; the reply will fill the place held in the session's outbox.
    Queued,
    /// Sent on; the outcome comes here.
    Pending(oneshot::Receiver<Result<(), Error>>),
}

impl Published {
    /// The outcome, for a caller that waits (a `Queued` one is the
    /// session's to answer).
    pub async fn outcome(self) -> Result<(), Error> {
        match self {
            Published::Done(outcome) => outcome,
            Published::Queued => Ok(()),
            Published::Pending(outcome) => outcome.await.unwrap_or(Err(Error::BackendUnavailable)),
        }
    }
}

/// A subscription made: the topic as the broker stores it, and for a
/// channel that keeps history, the position of its last message (a client
/// that resumes from it misses nothing).
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub topic: Topic,
    pub position: Option<Position>,
}

/// A channel name or a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub kind: Kind,
    pub name: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Pattern,
}

impl Topic {
    pub fn channel(name: Bytes) -> Topic {
        Topic { kind: Kind::Channel, name }
    }

    pub fn pattern(name: Bytes) -> Topic {
        Topic { kind: Kind::Pattern, name }
    }
}

/// What a connection needs from a backend.
pub trait Broker: Send + Sync + 'static {
    /// Adds `outbox` to the subscribers of `topic`. Resolves once every message
    /// published to `topic` from now on is sure to reach it (with Redis: once
    /// Redis acknowledged the subscription), with the topic as the broker
    /// stores it (its name shared, so subscribers need not keep a copy each).
    /// Errors: `TooManyChannels` (`--max-channels`), `BackendUnavailable`.
    fn subscribe(
        &self,
        topic: Topic,
        outbox: &Arc<Outbox>,
    ) -> impl Future<Output = Result<Subscribed, Error>> + Send;

    /// Subscribes to `channel` (unless `subscribed` says the connection
    /// already is) and queues to `outbox`, before any later message, every
    /// message kept after `since`, if all of them are still kept. The
    /// outbox holds the reply's place, so the messages follow it.
    fn resume(
        &self,
        channel: Topic,
        since: Option<Position>,
        subscribed: bool,
        outbox: &Arc<Outbox>,
        flush: &mut Flush,
    ) -> impl Future<Output = Result<(Topic, Resumed), Error>> + Send;

    /// Removes connection `id` from the subscribers of `topic`; nothing of
    /// `topic` is queued to it after this returns.
    fn unsubscribe(&self, topic: &Topic, id: ConnId);

    /// Publishes `payload` to `channel`. Local deliveries it makes are queued
    /// on `flush`, which the caller runs when its burst of commands ends; the
    /// outcome goes to `waiter` (see [`Published`]). Waits only when the
    /// backend's queue to Redis is full.
    fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        flush: &mut Flush,
        waiter: Waiter<'_>,
    ) -> impl Future<Output = Published> + Send;

    /// Up to `limit` kept messages of `channel` after `since` (all kept
    /// without it, or when it is of another epoch), and the channel's
    /// position; `None` for a channel without history.
    #[allow(clippy::type_complexity)]
    fn history(
        &self,
        channel: &Bytes,
        since: Option<&Position>,
        limit: usize,
    ) -> impl Future<Output = Result<Option<(Position, Vec<(Position, Bytes)>)>, Error>> + Send;

    /// Payload bytes this node keeps in history (for `/metrics`).
    fn history_bytes(&self) -> usize;

    /// Whether new subscriptions can be served now (with Redis: connected).
    fn ready(&self) -> bool;

    /// A one-line description for the startup log.
    fn describe(&self) -> String;
}
