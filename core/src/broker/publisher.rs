//! Publishing with publisher confirms: a publish is done when the broker
//! has confirmed it, and fails in bounded time (instead of hanging) while
//! the broker is unreachable.
//!
//! A publish that the broker did not confirm because its connection broke,
//! or that it refused (`basic.nack`, as a quorum queue does while it elects
//! a new leader), is sent again — on the new connection, perhaps to another
//! node of the cluster — until the confirm timeout runs out. The first copy
//! may have arrived after all, so consumers deduplicate.
//!
//! A channel that got a refusal is closed and the message sent again on a
//! new one: on RabbitMQ 3.10, a channel whose quorum queue changed leader
//! while it had publishes pending can go on refusing every later publish to
//! that queue, while a new channel on the same connection is served.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::Mutex;

use super::{Broker, retire};
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

impl PublishError {
    /// Sending the message again may succeed: the connection, the node or
    /// the queue's leader was changing under it.
    pub fn worth_resending(&self) -> bool {
        matches!(self, Self::Unavailable | Self::Nacked | Self::Broken(_))
    }
}

/// How long a publish waits for a lost connection to come back (to any node)
/// before it gives up: a node's loss is noticed and another node reached
/// well within this; a broker that is down for good should still be
/// reported quickly.
pub(crate) const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// Waits, until `deadline` at the latest, before sending again: for a live
/// connection, and a moment more after a refusal so a queue that is
/// electing its leader is not hammered. False when it is not worth trying.
pub(crate) async fn before_resending(
    broker: &Broker,
    error: &PublishError,
    attempt: u32,
    deadline: Instant,
) -> bool {
    if !error.worth_resending() || Instant::now() >= deadline {
        return false;
    }
    let grace = deadline.min(Instant::now() + RECONNECT_GRACE);
    if tokio::time::timeout_at(grace, broker.connection())
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return false;
    }
    let pause = Duration::from_millis(25u64.saturating_mul(1 << attempt.min(5)));
    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
    Instant::now() < deadline
}

/// [`Publisher::publish_many`]: messages awaiting their confirms at once.
/// All 1,000 of a full batch at once cost the API about 10 KiB of memory
/// each (every publish is a future holding its message and its retry
/// state), 70 MiB at four batches; 256 keep the confirms pipelined for a
/// fraction of that.
pub const PUBLISH_MANY_WINDOW: usize = 256;

/// A confirm-mode channel on the broker's current connection, re-opened
/// when the connection comes back. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    channel: Arc<Mutex<Option<(u64, Channel)>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    confirm_timeout: Duration,
    metrics: Metrics,
    /// Outcome events waiting for [`super::events::announce`]'s publisher,
    /// started with the first event.
    events: Arc<std::sync::OnceLock<super::events::EventQueue>>,
}

impl Publisher {
    pub fn new(broker: Broker, confirm_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            broker,
            channel: Arc::new(Mutex::new(None)),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            confirm_timeout,
            metrics,
            events: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The queue of outcome events to publish; the first call starts the
    /// task that publishes them, which ends once every clone of this
    /// publisher is gone.
    pub(crate) fn event_queue(&self) -> &super::events::EventQueue {
        self.events.get_or_init(|| {
            super::events::EventQueue::start(self.broker.clone(), self.metrics.clone())
        })
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
        let deadline = Instant::now() + self.confirm_timeout;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let result = self
                .publish_confirmed(
                    exchange,
                    routing_key,
                    body,
                    properties.clone(),
                    mandatory,
                    deadline,
                )
                .await;
            match result {
                Err(e) if before_resending(&self.broker, &e, attempt, deadline).await => {
                    tracing::debug!(error = %e, attempt, exchange, routing_key, "publish not confirmed; sending it again");
                    self.metrics.publish(exchange, PublishOutcome::Resent);
                }
                other => break other,
            }
        };
        let outcome = if result.is_ok() {
            PublishOutcome::Confirmed
        } else {
            PublishOutcome::Failed
        };
        self.metrics.publish(exchange, outcome);
        result
    }

    /// Publishes the messages on the shared channel, [`PUBLISH_MANY_WINDOW`]
    /// at a time, each group's confirms awaited together:
    /// confirms come back in rounds for a batch, not one round trip per
    /// message. Each message keeps the promise of [`Publisher::publish`]
    /// (confirmed, or sent again until the confirm timeout); the answers
    /// come in the order of `messages`.
    pub async fn publish_many(
        &self,
        exchange: &str,
        messages: &[(String, Vec<u8>, BasicProperties)],
        mandatory: bool,
    ) -> Vec<Result<(), PublishError>> {
        let mut answers = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(PUBLISH_MANY_WINDOW) {
            answers.extend(
                futures::future::join_all(chunk.iter().map(|(routing_key, body, props)| {
                    self.publish(exchange, routing_key, body, props.clone(), mandatory)
                }))
                .await,
            );
        }
        answers
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let (generation, channel) = self.channel().await?;
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
        let outcome = tokio::time::timeout_at(deadline, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))?;
        match outcome? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
            Confirmation::Nack(_) => {
                let mut slot = self.channel.lock().await;
                if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                    *slot = None;
                    retire(channel);
                }
                Err(PublishError::Nacked)
            }
        }
    }

    async fn channel(&self) -> Result<(u64, Channel), PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some((generation, ch)) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok((*generation, ch.clone()));
        }
        *slot = None;
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        let ch = super::within(super::STEP_TIMEOUT, async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(ch)
        })
        .await?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        *slot = Some((generation, ch.clone()));
        Ok((generation, ch))
    }
}
