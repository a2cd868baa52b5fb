//! The embedded backend: the server is its own broker. Publishing is a direct
//! fan-out through the local registry; nothing else to start.

use bytes::Bytes;
use std::sync::Arc;

use super::{Broker, Registry, Topic};
use crate::outbox::{ConnId, Flush, Outbox};
use crate::protocol::reply::Error;

#[derive(Debug)]
pub struct Embedded {
    registry: Registry,
}

impl Embedded {
    /// A broker holding at most `max_channels` channels and patterns.
    pub fn new(max_channels: usize) -> Embedded {
        Embedded { registry: Registry::new(max_channels) }
    }
}

impl Broker for Embedded {
    async fn subscribe(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<Topic, Error> {
        self.registry.add(topic, outbox).map(|(topic, _)| topic)
    }

    fn unsubscribe(&self, topic: &Topic, id: ConnId) {
        self.registry.remove(topic, id);
    }

    async fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        flush: &mut Flush,
    ) -> Result<(), Error> {
        self.registry.publish(&channel, &payload, flush);
        Ok(())
    }

    fn ready(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "embedded".to_string()
    }
}
