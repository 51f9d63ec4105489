//! Request/reply over RabbitMQ.
//!
//! One channel per connection publishes the requests (with confirms) and
//! consumes the replies from an exclusive, server-named queue of its own.
//! Replies are matched to callers by correlation id. Replies are
//! at-most-once: a reply can be lost, so every call has a timeout and the
//! requests carry idempotency keys that make a retry safe.
//!
//! Why not direct reply-to (`amq.rabbitmq.reply-to`): on RabbitMQ 3.10 a
//! reply addressed to a channel on a cluster node that has gone down
//! crashes the *replying* connection (the server fails to decode the
//! address). After a node's loss, every request still queued for the
//! callers that were connected to it would take a worker's connection down
//! with it, again on each redelivery. A reply to an exclusive queue that
//! went with its node is merely unroutable, and dropped.
//!
//! The client relies on that: a request that was not confirmed, or whose
//! connection broke before the reply came (a node of the cluster went away),
//! is sent again on the next connection while the call's time lasts.

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
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::oneshot;

use tokio::time::Instant;

use super::{
    Broker, PublishError,
    publisher::{RECONNECT_GRACE, before_resending, retire},
};

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

/// The channel requests go out on, and the queue its replies come back to.
#[derive(Clone)]
struct ReplyChannel {
    generation: u64,
    channel: Channel,
    reply_to: ShortString,
}

#[derive(Clone)]
pub struct RpcClient {
    broker: Broker,
    channel: Arc<tokio::sync::Mutex<Option<ReplyChannel>>>,
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

    /// Publishes a persistent request and waits up to `timeout` for its
    /// reply. The request may be delivered more than once (see the module
    /// docs): it must be idempotent.
    pub async fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        let properties = properties.with_correlation_id(correlation_id.as_str().into());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let confirm_deadline = deadline.min(Instant::now() + self.confirm_timeout);
            let sent = self
                .send(
                    exchange,
                    routing_key,
                    body,
                    properties.clone(),
                    &correlation_id,
                    confirm_deadline,
                )
                .await;
            let rx = match sent {
                Ok(rx) => rx,
                Err(e) if before_resending(&self.broker, &e, attempt, confirm_deadline).await => {
                    tracing::debug!(error = %e, attempt, "request not confirmed; sending it again");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(_)) => {
                    // The channel died with the reply on its way, or before
                    // the request was served: ask again on the next
                    // connection (the idempotency key answers with the
                    // first outcome), if there is time and a connection.
                    let grace = deadline.min(Instant::now() + RECONNECT_GRACE);
                    let reconnected = tokio::time::timeout_at(grace, self.broker.connection())
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                    if !reconnected || Instant::now() >= deadline {
                        return Err(RpcError::Interrupted);
                    }
                    tracing::debug!(
                        attempt,
                        "connection lost while waiting for the reply; asking again"
                    );
                }
                Err(_) => {
                    self.lock_waiters().remove(&correlation_id);
                    return Err(RpcError::Timeout(timeout));
                }
            }
        }
    }

    /// Registers the waiter and publishes the request; done when the
    /// broker confirmed it.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        correlation_id: &str,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Vec<u8>>, PublishError> {
        let ReplyChannel {
            generation,
            channel,
            reply_to,
        } = self.channel().await?;
        let properties = properties.with_reply_to(reply_to);
        let (tx, rx) = oneshot::channel();
        self.lock_waiters()
            .insert(correlation_id.to_owned(), (generation, tx));
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
        let confirmed = match tokio::time::timeout_at(deadline, confirm).await {
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
            Ok(Err(e)) => Err(PublishError::Broken(e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err(PublishError::Unroutable(routing_key.to_owned()))
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                // See `publisher`: a channel that refused once may refuse
                // for good; the next try goes out on a new one.
                let mut slot = self.channel.lock().await;
                if slot.as_ref().is_some_and(|c| c.generation == generation) {
                    *slot = None;
                    retire(channel.clone());
                }
                Err(PublishError::Nacked)
            }
        };
        if let Err(e) = confirmed {
            self.lock_waiters().remove(correlation_id);
            return Err(e);
        }
        Ok(rx)
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        match self.waiters.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn channel(&self) -> Result<ReplyChannel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some(current) = slot.as_ref()
            && current.channel.status().connected()
        {
            return Ok(current.clone());
        }
        *slot = None;
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        // Server-named, so no two callers share one; exclusive and
        // auto-deleted, so it goes with this connection (or its node).
        let queue = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let reply_to = queue.name().clone();
        let mut replies = super::consume_unacked(&ch, reply_to.as_str()).await?;
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
        let current = ReplyChannel {
            generation,
            channel: ch,
            reply_to,
        };
        *slot = Some(current.clone());
        Ok(current)
    }
}
