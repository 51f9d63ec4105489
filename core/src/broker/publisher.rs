//! Publishing with publisher confirms: a publish is done when the broker
//! has confirmed it, and fails fast (instead of hanging) while the broker is
//! unreachable.

use std::{sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::Mutex;

use super::Broker;
use crate::metrics::{Metrics, PublishOutcome};

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the message broker is unavailable")]
    Unavailable,
    #[error("the message broker did not confirm the message within {0:?}")]
    Timeout(Duration),
    #[error("the message broker refused the message")]
    Nacked,
    #[error("no queue is bound for routing key `{0}`")]
    Unroutable(String),
    #[error("the message broker connection failed: {0}")]
    Broken(#[from] lapin::Error),
}

/// A confirm-mode channel on the broker's current connection, re-opened
/// when the connection comes back. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    channel: Arc<Mutex<Option<Channel>>>,
    confirm_timeout: Duration,
    metrics: Metrics,
}

impl Publisher {
    pub fn new(broker: Broker, confirm_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            broker,
            channel: Arc::new(Mutex::new(None)),
            confirm_timeout,
            metrics,
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a
    /// message that no queue would receive is an error rather than lost.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let result = self
            .publish_confirmed(exchange, routing_key, body, properties, mandatory)
            .await;
        let outcome = if result.is_ok() {
            PublishOutcome::Confirmed
        } else {
            PublishOutcome::Failed
        };
        self.metrics.publish(exchange, outcome);
        result
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let confirm = async {
            let pending = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?;
            pending.await
        };
        let outcome = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))?;
        match outcome? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        *slot = Some(ch.clone());
        Ok(ch)
    }
}
