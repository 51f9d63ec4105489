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
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use tokio::sync::oneshot;

use tokio::time::Instant;

use super::{
    Broker, PublishError,
    publisher::{RECONNECT_GRACE, before_resending},
    retire,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The request could not be handed over; nothing was asked.
    #[error(transparent)]
    NotSent(Arc<PublishError>),
    /// The request was delivered but no reply came in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection broke while waiting; the request may or may not have run.
    #[error("the connection to the message broker broke while waiting for the reply")]
    Interrupted,
}

type Waiters = HashMap<String, (u64, oneshot::Sender<Vec<u8>>)>;

/// Hands `reply` to the caller waiting for `call`, if it still waits.
fn answer(waiters: &Mutex<Waiters>, call: &str, reply: Vec<u8>) {
    let waiter = match waiters.lock() {
        Ok(mut w) => w.remove(call),
        Err(poisoned) => poisoned.into_inner().remove(call),
    };
    if let Some((_, tx)) = waiter {
        let _ = tx.send(reply);
    }
}

/// A fresh id for one call, as [`RpcClient::call_many`] takes them.
pub fn new_call_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The AMQP `type` of a reply that answers several calls at once (the
/// calls of one bundled request).
pub const REPLY_BUNDLE_KIND: &str = "bibliomq.reply-bundle";

/// Whether a delivery's properties mark it as a reply bundle.
pub fn is_reply_bundle(props: &BasicProperties) -> bool {
    crate::broker::headers::has_type(props, REPLY_BUNDLE_KIND)
}

/// Body of a reply bundle: each call's reply, as the JSON it would be alone.
#[derive(Debug, serde::Deserialize)]
pub struct ReplyBundle {
    pub replies: Vec<BundledReply>,
}

#[derive(Debug, serde::Deserialize)]
pub struct BundledReply {
    pub call: String,
    pub body: Box<serde_json::value::RawValue>,
}

impl ReplyBundle {
    /// The body of a reply bundle answering each `(call, reply)`; each
    /// reply must be JSON, and is joined as it is.
    pub fn body<'a>(replies: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
        let mut body = b"{\"replies\":[".to_vec();
        for (i, (call, reply)) in replies.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"call\":");
            // A string always serializes.
            let _ = serde_json::to_writer(&mut body, call);
            body.extend_from_slice(b",\"body\":");
            body.extend_from_slice(reply);
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        body
    }
}

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
        let call = new_call_id();
        let properties = properties.with_correlation_id(call.as_str().into());
        let calls = std::slice::from_ref(&call);
        let mut replies = self
            .call_many(exchange, routing_key, body, properties, calls, timeout)
            .await;
        replies.pop().unwrap_or(Err(RpcError::Interrupted))
    }

    /// Publishes one persistent request that asks several calls at once (a
    /// bundle whose body names `calls`, each made by [`new_call_id`]) and
    /// waits up to `timeout` for each call's reply. The server answers them
    /// in one [`REPLY_BUNDLE_KIND`] message or one by one; answers come in
    /// the order of `calls`. As with [`RpcClient::call`], the request may
    /// be delivered more than once; when it is sent again, only the calls
    /// still unanswered wait for a reply.
    pub async fn call_many(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        calls: &[String],
        timeout: Duration,
    ) -> Vec<Result<Vec<u8>, RpcError>> {
        let deadline = Instant::now() + timeout;
        let mut answers: Vec<Option<Result<Vec<u8>, RpcError>>> = vec![None; calls.len()];
        let mut attempt = 0;
        loop {
            let waiting: Vec<usize> = (0..calls.len()).filter(|&i| answers[i].is_none()).collect();
            if waiting.is_empty() {
                break;
            }
            attempt += 1;
            let confirm_deadline = deadline.min(Instant::now() + self.confirm_timeout);
            let ids: Vec<&str> = waiting.iter().map(|&i| calls[i].as_str()).collect();
            let sent = self
                .send(
                    exchange,
                    routing_key,
                    body,
                    properties.clone(),
                    &ids,
                    confirm_deadline,
                )
                .await;
            let receivers = match sent {
                Ok(receivers) => receivers,
                Err(e) if before_resending(&self.broker, &e, attempt, confirm_deadline).await => {
                    tracing::debug!(error = %e, attempt, "request not confirmed; sending it again");
                    continue;
                }
                Err(e) => {
                    let e = RpcError::NotSent(Arc::new(e));
                    for &i in &waiting {
                        answers[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            let waits = waiting
                .iter()
                .zip(receivers)
                .map(|(&i, rx)| async move { (i, tokio::time::timeout_at(deadline, rx).await) });
            let mut interrupted = false;
            for (i, got) in futures::future::join_all(waits).await {
                match got {
                    Ok(Ok(reply)) => answers[i] = Some(Ok(reply)),
                    // The channel died with the reply on its way, or before
                    // the request was served.
                    Ok(Err(_)) => interrupted = true,
                    Err(_) => {
                        self.lock_waiters().remove(&calls[i]);
                        answers[i] = Some(Err(RpcError::Timeout(timeout)));
                    }
                }
            }
            if interrupted {
                // Ask again on the next connection (the idempotency keys
                // answer with the first outcomes), if there is time and a
                // connection.
                let grace = deadline.min(Instant::now() + RECONNECT_GRACE);
                let reconnected = tokio::time::timeout_at(grace, self.broker.connection())
                    .await
                    .ok()
                    .flatten()
                    .is_some();
                if !reconnected || Instant::now() >= deadline {
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(Err(RpcError::Interrupted));
                    }
                    break;
                }
                tracing::debug!(
                    attempt,
                    "connection lost while waiting for the reply; asking again"
                );
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(RpcError::Interrupted)))
            .collect()
    }

    /// Registers the waiters and publishes the request; done when the
    /// broker confirmed it.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        calls: &[&str],
        deadline: Instant,
    ) -> Result<Vec<oneshot::Receiver<Vec<u8>>>, PublishError> {
        let ReplyChannel {
            generation,
            channel,
            reply_to,
        } = self.channel().await?;
        let properties = properties.with_reply_to(reply_to);
        let receivers = {
            let mut waiters = self.lock_waiters();
            calls
                .iter()
                .map(|call| {
                    let (tx, rx) = oneshot::channel();
                    waiters.insert((*call).to_owned(), (generation, tx));
                    rx
                })
                .collect()
        };
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
            let mut waiters = self.lock_waiters();
            for call in calls {
                waiters.remove(*call);
            }
            return Err(e);
        }
        Ok(receivers)
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
        let (ch, reply_to, mut replies) = super::within(super::STEP_TIMEOUT, async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let queue = super::private_queue(&ch).await?;
            let reply_to = queue.name().clone();
            let replies = super::consume_unacked(&ch, reply_to.as_str()).await?;
            Ok((ch, reply_to, replies))
        })
        .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                if is_reply_bundle(&delivery.properties) {
                    match serde_json::from_slice::<ReplyBundle>(&delivery.data) {
                        Ok(bundle) => {
                            for reply in bundle.replies {
                                answer(&waiters, &reply.call, reply.body.get().as_bytes().to_vec());
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable reply bundle; dropped"),
                    }
                    continue;
                }
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                answer(&waiters, id.as_str(), delivery.data);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_bundle_carries_each_call_s_reply_as_it_is() {
        let body = ReplyBundle::body([
            ("a\"1", br#"{"outcome":"loaned"}"#.as_slice()),
            ("b2", b"null".as_slice()),
        ]);
        let bundle: ReplyBundle = serde_json::from_slice(&body).unwrap();
        assert_eq!(bundle.replies.len(), 2);
        assert_eq!(bundle.replies[0].call, "a\"1");
        assert_eq!(bundle.replies[0].body.get(), r#"{"outcome":"loaned"}"#);
        assert_eq!(bundle.replies[1].call, "b2");
        assert_eq!(bundle.replies[1].body.get(), "null");
        let empty: ReplyBundle = serde_json::from_slice(&ReplyBundle::body([])).unwrap();
        assert!(empty.replies.is_empty());
    }

    #[test]
    fn only_a_typed_message_is_a_reply_bundle() {
        let typed = BasicProperties::default().with_type(REPLY_BUNDLE_KIND.into());
        assert!(is_reply_bundle(&typed));
        assert!(!is_reply_bundle(&BasicProperties::default()));
    }
}
