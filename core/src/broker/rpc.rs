//! Request/reply over RabbitMQ with direct reply-to.
//!
//! One channel per connection both publishes the requests (with confirms)
//! and consumes `amq.rabbitmq.reply-to`, as direct reply-to requires.
//! Replies are matched to callers by correlation id. Direct reply-to is
//! at-most-once: a reply can be lost, so every call has a timeout and the
//! requests carry idempotency keys that make a retry safe.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::oneshot;

use super::{Broker, PublishError};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The request could not be handed over; nothing was asked.
    #[error(transparent)]
    NotSent(#[from] PublishError),
    /// The request was delivered but no reply came in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection broke while waiting; the request may or may not have run.
    #[error("the connection to the message broker broke while waiting for the reply")]
    Interrupted,
}

type Waiters = HashMap<String, (u64, oneshot::Sender<Vec<u8>>)>;

#[derive(Clone)]
pub struct RpcClient {
    broker: Broker,
    channel: Arc<tokio::sync::Mutex<Option<(u64, Channel)>>>,
    waiters: Arc<Mutex<Waiters>>,
    generation: Arc<AtomicU64>,
    confirm_timeout: Duration,
}

impl RpcClient {
    pub fn new(broker: Broker, confirm_timeout: Duration) -> Self {
        Self {
            broker,
            channel: Arc::new(tokio::sync::Mutex::new(None)),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
            confirm_timeout,
        }
    }

    /// Publishes a persistent request and waits up to `timeout` for its reply.
    pub async fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let (generation, channel) = self.channel().await?;
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.lock_waiters()
            .insert(correlation_id.clone(), (generation, tx));
        let forget = || {
            self.lock_waiters().remove(&correlation_id);
        };

        let started = tokio::time::Instant::now();
        let properties = properties
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into());
        let confirm = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirmed = match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
            Ok(Err(e)) => Err(PublishError::Broken(e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err(PublishError::Unroutable(routing_key.to_owned()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        };
        if let Err(e) = confirmed {
            forget();
            return Err(e.into());
        }
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RpcError::Interrupted),
            Err(_) => {
                forget();
                Err(RpcError::Timeout(timeout))
            }
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        match self.waiters.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
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
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut replies = super::consume_unacked(&ch, REPLY_TO).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                let waiter = match waiters.lock() {
                    Ok(mut w) => w.remove(id.as_str()),
                    Err(poisoned) => poisoned.into_inner().remove(id.as_str()),
                };
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(delivery.data);
                }
            }
            // The channel is gone: its replies will never come.
            let mut w = match waiters.lock() {
                Ok(w) => w,
                Err(poisoned) => poisoned.into_inner(),
            };
            w.retain(|_, (g, _)| *g != generation);
        });
        *slot = Some((generation, ch.clone()));
        Ok((generation, ch))
    }
}
