//! The embedded backend: the server is its own broker. Publishing is a direct
//! fan-out through the local registry; nothing else to start.

use bytes::Bytes;
use std::sync::Arc;

use super::{Broker, BrokerError, Registry, Topic};
use crate::outbox::{ConnId, Flush, Outbox};

#[derive(Debug, Default)]
pub struct Embedded {
    registry: Registry,
}

impl Broker for Embedded {
    async fn subscribe(&self, topic: Topic, outbox: &Arc<Outbox>) -> Result<Topic, BrokerError> {
        Ok(self.registry.add(topic, outbox).0)
    }

    fn unsubscribe(&self, topic: &Topic, id: ConnId) {
        self.registry.remove(topic, id);
    }

    async fn publish(
        &self,
        channel: Bytes,
        payload: Bytes,
        flush: &mut Flush,
    ) -> Result<(), BrokerError> {
        self.registry.publish(&channel, &payload, flush);
        Ok(())
    }

    fn describe(&self) -> String {
        "embedded".to_string()
    }
}
