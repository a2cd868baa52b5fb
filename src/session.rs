//! The transport-neutral core of a connection: what every transport (line
//! TCP, WebSocket, Server-Sent Events) shares. A transport adapter turns its
//! input into command lines, hands them to [`Session::execute`], and writes
//! what the session's outbox gives it; the outbox's framing decides how
//! replies and pushes look on the wire.
//!
//! The session owns the subscriptions, the push form, the limits, the
//! permission checks (tokens included), the confirm-before-deliver rule and
//! resumes from history. It ends its
//! subscriptions in `Drop`, so no early return, cancelled future or panic in
//! an adapter can leave a registry entry (or a Redis subscription) behind.

use bytes::Bytes;
use std::sync::Arc;
use std::time::SystemTime;

use crate::auth::{Action, Permissions};
use crate::broker::{Broker, Kind, Published, Topic, Waiter};
use crate::config::Config;
use crate::history::{Position, Resumed};
use crate::metrics;
use crate::outbox::{Flush, Outbox};
use crate::protocol::command::{Command, Hello};
use crate::protocol::reply::{Error, Reply};
use crate::protocol::{Framing, Version};

/// What the adapter does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// The client said `QUIT`: its `BYE` is queued; close once it is written.
    Quit,
}

/// See the module documentation.
pub struct Session<B: Broker> {
    broker: Arc<B>,
    config: Arc<Config>,
    outbox: Arc<Outbox>,
    framing: Framing,
    /// What the connection may do: the anonymous permissions, or a token's.
    permissions: Arc<Permissions>,
    /// What this connection is subscribed to, channels and patterns. A `Vec`:
    /// most connections hold a handful, and it is the smallest when idle;
    /// lookups are linear in at most `--max-subscriptions`.
    topics: Vec<Topic>,
    /// Outboxes (this one included) that the current burst of commands made
    /// busy; written out by [`Session::end_burst`].
    flush: Flush,
}

impl<B: Broker> Session<B> {
    /// A session with `permissions` from the start: the anonymous ones, or
    /// a token's the web request carried.
    pub fn new(
        broker: Arc<B>,
        config: Arc<Config>,
        outbox: Arc<Outbox>,
        framing: Framing,
        permissions: Arc<Permissions>,
    ) -> Session<B> {
        Session {
            broker,
            config,
            outbox,
            framing,
            permissions,
            topics: Vec::new(),
            flush: Flush::default(),
        }
    }

    /// Parses and executes one command line; its replies go to the outbox.
    pub async fn execute(&mut self, line: Bytes) -> Control {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => {
                self.reply(error.into());
                return Control::Continue;
            }
        };
        match command {
            Command::Subscribe(names) => {
                let topics = self.or_default(names).into_iter().map(Topic::channel).collect();
                self.subscribe(topics).await;
            }
            Command::Unsubscribe(names) => {
                for name in self.or_default(names) {
                    self.unsubscribe(Topic::channel(name));
                }
            }
            Command::PSubscribe(patterns) => {
                self.subscribe(patterns.into_iter().map(Topic::pattern).collect()).await;
            }
            Command::PUnsubscribe(patterns) => {
                for pattern in patterns {
                    self.unsubscribe(Topic::pattern(pattern));
                }
            }
            Command::Publish { channel, payload } => {
                if !self.permissions.allows(Action::Publish, &channel) {
                    self.reply(Error::Forbidden.into());
                } else {
                    let waiter = Waiter::Session(&self.outbox, self.framing);
                    match self.broker.publish(channel, payload, &mut self.flush, waiter).await {
                        Published::Done(Ok(())) => self.reply(Reply::Confirmed),
                        Published::Done(Err(error)) => self.reply(error.into()),
                        // The reply comes in the place the broker held.
                        Published::Queued | Published::Pending(_) => {}
                    }
                }
            }
            Command::Ping(text) => self.reply(Reply::Pong(text)),
            Command::Resume { channel, since } => {
                self.resume(channel, since).await;
            }
            Command::Hello(Hello::Supported(version)) => {
                let reply = self.framing.reply(&Reply::Confirmed).unwrap_or_default();
                self.outbox.push_and_switch(reply, version, &mut self.flush);
            }
            Command::Hello(Hello::Unsupported) => self.reply(Error::UnsupportedVersion.into()),
            Command::Auth(token) => {
                let reply = if !self.config.auth.enabled() {
                    Error::AuthDisabled.into()
                } else {
                    match self.config.auth.verify(&token) {
                        Ok(permissions) => {
                            self.authorize(Arc::new(permissions));
                            Reply::Confirmed
                        }
                        Err(why) => {
                            tracing::debug!(id = self.outbox.id(), reason = %why.0, "token refused");
                            Error::InvalidToken.into()
                        }
                    }
                };
                self.reply(reply);
            }
            Command::Quit => {
                self.reply(Reply::Bye);
                return Control::Quit;
            }
            Command::Unknown => self.reply(Reply::UnknownCommand),
        }
        Control::Continue
    }

    /// Writes out what the last commands queued (their replies, and the
    /// deliveries of their publishes): call once per burst of input.
    pub fn end_burst(&mut self) {
        self.flush.run();
    }

    /// Sends the error that ends the connection (`ERR line too long`).
    pub fn fail(&mut self, error: Error) {
        self.reply(error.into());
    }

    /// Takes a new token's permissions (`AUTH`): subscriptions they no
    /// longer allow end.
    fn authorize(&mut self, permissions: Arc<Permissions>) {
        let kept = |topic: &Topic| match topic.kind {
            Kind::Channel => permissions.allows(Action::Subscribe, &topic.name),
            Kind::Pattern => permissions.allows_pattern(&topic.name),
        };
        let (keep, drop): (Vec<Topic>, Vec<Topic>) = self.topics.drain(..).partition(kept);
        self.topics = keep;
        for topic in drop {
            self.broker.unsubscribe(&topic, self.outbox.id());
            metrics::get().subscriptions.dec();
        }
        self.permissions = permissions;
    }

    /// Ends the session: delivers what the last commands queued, ends every
    /// subscription and stops the outbox accepting output (its writer
    /// flushes what is queued, then stops). Dropping the session does the
    /// same; calling it twice is harmless.
    pub fn end(&mut self) {
        self.flush.run();
        metrics::get().subscriptions.dec_by(self.topics.len() as i64);
        for topic in self.topics.drain(..) {
            self.broker.unsubscribe(&topic, self.outbox.id());
        }
        self.outbox.close();
    }

    /// When the connection's token expires, if it has one.
    pub fn expires(&self) -> Option<SystemTime> {
        self.permissions.expires()
    }

    /// Queues a frame of the transport's own (a WebSocket pong or close), in
    /// order with the replies.
    pub fn send(&mut self, frame: Bytes) {
        let _ = self.outbox.push(frame, &mut self.flush);
    }

    /// Subscribes to every topic, for a transport without commands (SSE):
    /// the position each was confirmed at, in order (`None`: a pattern, or a
    /// channel without history), so that SSE can name it in its ids before
    /// any message. The first error ends the attempt (what was subscribed is
    /// undone when the session is dropped).
    pub async fn subscribe_all(
        &mut self,
        topics: Vec<Topic>,
    ) -> Result<Vec<Option<Position>>, Error> {
        let mut positions = Vec::with_capacity(topics.len());
        for answer in self.subscribe(topics).await {
            match answer {
                (Reply::Error(error), _) => return Err(error),
                (_, position) => positions.push(position),
            }
        }
        Ok(positions)
    }

    /// A bare `SUBSCRIBE` or `UNSUBSCRIBE` means the default channel (the seed's behaviour).
    fn or_default(&self, names: Vec<Bytes>) -> Vec<Bytes> {
        if names.is_empty() { vec![self.config.default_channel.clone()] } else { names }
    }

    /// Subscribes to each topic and queues the replies, in order; returns
    /// them with the positions confirmed (channels with history only). The
    /// broker is asked for all of them at once, so a `SUBSCRIBE` of many new
    /// channels costs one round trip to Redis, not one per channel.
    async fn subscribe(&mut self, topics: Vec<Topic>) -> Vec<(Reply, Option<Position>)> {
        let mut answers: Vec<Option<(Reply, Option<Position>)>> = vec![None; topics.len()];
        let mut asked = Vec::with_capacity(topics.len());
        for (at, topic) in topics.into_iter().enumerate() {
            if let Err(refusal) = self.admit(&topic, false) {
                answers[at] = Some((refusal, None));
                continue;
            }
            self.record(topic.clone());
            // Messages that arrive while the broker confirms queue up behind
            // the reply, so the client sees CONFIRMED first.
            asked.push((at, topic, self.outbox.hold()));
        }
        let outcomes = futures_util::future::join_all(
            asked.iter().map(|(_, topic, _)| self.broker.subscribe(topic.clone(), &self.outbox)),
        )
        .await;
        for ((at, topic, hold), outcome) in asked.into_iter().zip(outcomes) {
            let answer = match outcome {
                Ok(subscribed) => {
                    // Version 3 (the outbox's push form) confirms with positions.
                    let reply = match (&subscribed.topic.kind, self.outbox.form().version) {
                        (Kind::Channel, Version::V3) => {
                            Reply::ConfirmedAt(id_or_dash(subscribed.position.clone()))
                        }
                        _ => Reply::Confirmed,
                    };
                    self.settle(subscribed.topic);
                    (reply, subscribed.position)
                }
                Err(error) => {
                    self.unrecord(&topic);
                    (Reply::Error(error), None)
                }
            };
            self.outbox.release(hold, self.framing.reply(&answer.0));
            answers[at] = Some(answer);
        }
        answers.into_iter().flatten().collect()
    }

    /// Resumes each channel from its own position (an SSE client's
    /// `Last-Event-ID`; `None` where it names none: not recoverable), as
    /// `RESUME` does: the reply of each, in order (`RECOVERED <k>` or `NOT
    /// RECOVERED <id>`; a name given twice is resumed once, its repeats
    /// answered `ALREADY SUBSCRIBED`, since a second resume would replay the
    /// gap again). The first error ends the attempt.
    pub async fn resume_all(
        &mut self,
        channels: Vec<(Bytes, Option<Position>)>,
    ) -> Result<Vec<Reply>, Error> {
        let mut replies = Vec::with_capacity(channels.len());
        for (channel, since) in channels {
            if self.topics.contains(&Topic::channel(channel.clone())) {
                replies.push(Reply::AlreadySubscribed);
                continue;
            }
            match self.resume(channel, since).await {
                Reply::Error(error) => return Err(error),
                reply => replies.push(reply),
            }
        }
        Ok(replies)
    }

    /// `RESUME`: subscribes (unless already) and replays what was missed;
    /// queues the reply, which it returns.
    async fn resume(&mut self, channel: Bytes, since: Option<Position>) -> Reply {
        let topic = Topic::channel(channel.clone());
        let subscribed = self.topics.contains(&topic);
        if let Err(refusal) = self.admit(&topic, true) {
            return refusal;
        }
        if !subscribed {
            self.record(topic.clone());
        }
        // The replayed messages queue behind the reply's place.
        let hold = self.outbox.hold();
        let resumed =
            self.broker.resume(topic, since, subscribed, &self.outbox, &mut self.flush).await;
        let reply = match resumed {
            Ok((topic, resumed)) => {
                if !subscribed {
                    self.settle(topic);
                }
                match resumed {
                    Resumed::Recovered(k) => Reply::Recovered(k),
                    Resumed::NotRecovered(position) => Reply::NotRecovered(id_or_dash(position)),
                }
            }
            Err(error) => {
                if !subscribed {
                    self.unrecord(&Topic::channel(channel));
                }
                Reply::Error(error)
            }
        };
        self.outbox.release(hold, self.framing.reply(&reply));
        reply
    }

    /// The checks before a subscription: refused ones are answered here
    /// (but a closing connection, which gets nothing more).
    fn admit(&mut self, topic: &Topic, resuming: bool) -> Result<(), Reply> {
        let refusal = if !self.outbox.is_open() {
            // Cut off or closing: the rest of a long SUBSCRIBE would only
            // make the broker work for a connection about to end.
            return Err(Reply::Error(Error::Closing));
        } else if !resuming && self.topics.contains(topic) {
            Reply::AlreadySubscribed
        } else if !match topic.kind {
            Kind::Channel => self.permissions.allows(Action::Subscribe, &topic.name),
            Kind::Pattern => self.permissions.allows_pattern(&topic.name),
        } {
            Error::Forbidden.into()
        } else if !self.topics.contains(topic) && self.topics.len() >= self.config.max_subscriptions
        {
            Error::TooManySubscriptions.into()
        } else {
            return Ok(());
        };
        self.reply(refusal.clone());
        Err(refusal)
    }

    /// Records (and counts) a subscription before the broker is asked, so
    /// that `Drop` undoes it even if this future is dropped meanwhile.
    fn record(&mut self, topic: Topic) {
        if self.topics.is_empty() {
            // Most connections subscribe once: no room for four.
            self.topics.reserve_exact(1);
        }
        self.topics.push(topic);
        metrics::get().subscriptions.inc();
    }

    /// The broker confirmed a recorded topic: keep its shared name.
    fn settle(&mut self, shared: Topic) {
        if let Some(kept) = self.topics.iter_mut().find(|kept| **kept == shared) {
            *kept = shared;
        }
    }

    /// The broker refused a recorded topic.
    fn unrecord(&mut self, topic: &Topic) {
        if let Some(at) = self.topics.iter().position(|kept| kept == topic) {
            self.topics.swap_remove(at);
            metrics::get().subscriptions.dec();
        }
    }

    fn unsubscribe(&mut self, topic: Topic) {
        match self.topics.iter().position(|t| *t == topic) {
            Some(at) => {
                self.topics.swap_remove(at);
                self.broker.unsubscribe(&topic, self.outbox.id());
                metrics::get().subscriptions.dec();
                self.reply(Reply::Confirmed);
            }
            None => self.reply(Reply::AlreadyUnsubscribed),
        }
    }

    fn reply(&mut self, reply: Reply) {
        if let Some(frame) = self.framing.reply(&reply) {
            // A refused reply means the connection is already being cut off.
            let _ = self.outbox.push(frame, &mut self.flush);
        }
    }
}

impl<B: Broker> Drop for Session<B> {
    fn drop(&mut self) {
        self.end();
    }
}

/// An id for a reply: the position's, or `-` without history.
fn id_or_dash(position: Option<Position>) -> Bytes {
    position.map_or_else(|| Bytes::from_static(b"-"), |position| position.id())
}
