//! The embedded backend: the server is its own broker. Publishing is a direct
//! fan-out through the local registry; nothing else to start. Channels that
//! keep history keep it here (`history::Memory`): a message is stored and
//! fanned out under its channel's ring lock, which subscriptions and resumes
//! of that channel take too, so positions and deliveries always agree.

use bytes::Bytes;
use std::sync::Arc;

use super::{Broker, Kind, Published, Registry, Subscribed, Topic, Waiter};
use crate::history::memory::Memory;
use crate::history::{self, Position, Resumed, Settings};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;

#[derive(Debug)]
pub struct Embedded {
    registry: Registry,
    history: Memory,
}

impl Embedded {
    /// A broker holding at most `max_channels` channels and patterns, with
    /// the history `settings` (size 0: none).
    pub fn new(max_channels: usize, settings: Settings) -> Embedded {
        Embedded { registry: Registry::new(max_channels), history: Memory::new(settings) }
    }
}

impl Broker for Embedded {
    async fn subscribe(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<Subscribed, Error> {
        if topic.kind == Kind::Channel {
            let name = topic.name.clone();
            let kept = self.history.with_ring(&name, |ring| {
                let (topic, _) = self.registry.add(topic.clone(), outbox)?;
                Ok(Subscribed { topic, position: Some(ring.position()) })
            });
            if let Some(subscribed) = kept {
                return subscribed;
            }
        }
        let (topic, _) = self.registry.add(topic, outbox)?;
        Ok(Subscribed { topic, position: None })
    }

    async fn resume(
        &self,
        channel: Topic,
        since: Option<Position>,
        subscribed: bool,
        outbox: &Arc<Outbox>,
        flush: &mut Flush,
    ) -> Result<(Topic, Resumed), Error> {
        let add = |topic: Topic| {
            if subscribed { Ok(topic) } else { self.registry.add(topic, outbox).map(|(t, _)| t) }
        };
        let name = channel.name.clone();
        let kept = self.history.with_ring(&name, |ring| {
            let topic = add(channel.clone())?;
            let (mut resumed, missed) = self.history.resume(ring, since.as_ref());
            // Queued under the ring's lock: before any message published after.
            if !history::replay(outbox, &name, &missed, flush) {
                resumed = Resumed::NotRecovered(Some(ring.position()));
            }
            Ok((topic, resumed))
        });
        match kept {
            Some(resumed) => resumed,
            None => Ok((add(channel)?, Resumed::NotRecovered(None))),
        }
    }

    fn unsubscribe(&self, topic: &Topic, id: ConnId) {
        self.registry.remove(topic, id);
    }

    async fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        flush: &mut Flush,
        _waiter: Waiter<'_>,
    ) -> Published {
        let kept = self.history.with_ring(&channel, |ring| {
            let id = self.history.append(ring, payload.clone()).id();
            self.registry.publish(&channel, &payload, Some(&id), flush);
        });
        match kept {
            Some(()) => self.history.enforce_cap(),
            None => {
                self.registry.publish(&channel, &payload, None, flush);
            }
        }
        Published::Done(Ok(()))
    }

    async fn history(
        &self,
        channel: &Bytes,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<Option<(Position, Vec<(Position, Bytes)>)>, Error> {
        Ok(self.history.read(channel, since, limit))
    }

    fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    fn ready(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "embedded".to_string()
    }
}
