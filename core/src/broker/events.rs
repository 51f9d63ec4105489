//! Outcome events on `bibliomq.events`: announcing one after its change
//! was committed, and following the exchange — a private, server-named
//! queue bound to some routing keys, re-created after every reconnection.
//! For live feeds (the ZeroMQ PUB socket, the dashboard); events published
//! while the connection is down are missed, which is why outcomes live in
//! PostgreSQL.
//!
//! Events that come together share a message: an event announced while
//! the ones before it are being sent is published with the others
//! of its routing key that wait beside it, as one message of AMQP `type`
//! [`EVENT_BUNDLE_KIND`] whose body is the JSON array of the events, in
//! the order they were announced. An event that comes alone is published
//! alone, as its own JSON. Followers ([`Broker::subscribe`]) hand on every
//! event of a bundle as an event of its own.
//!
//! Events go out on a channel of their own, as transient messages and
//! without publisher confirms. The queues that receive them are the
//! followers' own, private and not durable, gone with their connection: a
//! persistent mark or a confirm would promise nothing more about an event
//! reaching a follower, and both cost something on every operation (README,
//! Performance, item 30). The work an event reports was committed before
//! it was announced, and its record is in PostgreSQL.

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, QueueBindOptions},
    types::FieldTable,
};
use tokio::sync::mpsc;

use serde::Serialize;
use uuid::Uuid;

use super::{Broker, PublishError, Publisher, headers, topology};
use crate::metrics::{Metrics, PublishOutcome};

/// The AMQP `type` of a message carrying several outcome events of one
/// routing key: a JSON array of the events.
pub const EVENT_BUNDLE_KIND: &str = "bibliomq.event-bundle";
/// Most events in one bundle.
pub const EVENT_BUNDLE_MAX: usize = 256;
/// Events waiting to be published at most; an event announced beyond that
/// (the broker unreachable for a long while) is dropped and logged.
const EVENT_BACKLOG: usize = 65_536;

/// Publishes `event` under `routing_key` in the background, after the
/// change it reports was committed. Events are notifications: the record
/// of what happened is in PostgreSQL, so nobody holds an ack or an answer
/// for them, and an event that cannot be sent is logged, never an error of
/// the work it reports.
pub fn announce(publisher: &Publisher, routing_key: String, event: &impl Serialize) {
    let body = match serde_json::to_vec(event) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, %routing_key, "could not serialise an event");
            return;
        }
    };
    if let Err(e) = publisher.event_queue().tx.try_send((routing_key, body)) {
        let (routing_key, _) = e.into_inner();
        tracing::debug!(%routing_key, "too many events waiting; dropped one");
    }
}

/// The events announced through one publisher, and the task that
/// publishes them.
pub(crate) struct EventQueue {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl EventQueue {
    pub(crate) fn start(broker: Broker, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::channel(EVENT_BACKLOG);
        tokio::spawn(async move {
            let mut channel = EventChannel { broker, open: None };
            let mut waiting = Vec::new();
            // Everything announced since the last round, in one round.
            while rx.recv_many(&mut waiting, EVENT_BACKLOG).await > 0 {
                let messages = bundle(std::mem::take(&mut waiting));
                let answers = channel.send(&messages).await;
                for ((routing_key, _, _), answer) in messages.iter().zip(answers) {
                    let outcome = match answer {
                        Ok(()) => PublishOutcome::Sent,
                        Err(e) => {
                            tracing::debug!(error = %e, %routing_key, "could not publish an event");
                            PublishOutcome::Failed
                        }
                    };
                    metrics.publish(topology::EVENTS_EXCHANGE, outcome);
                }
            }
        });
        Self { tx }
    }
}

/// The channel events go out on, not in confirm mode; opened again on the
/// broker's current connection once it is gone.
struct EventChannel {
    broker: Broker,
    open: Option<Channel>,
}

impl EventChannel {
    /// Hands each message to the connection; the answers come in the
    /// order of `messages`.
    async fn send(
        &mut self,
        messages: &[(String, Vec<u8>, BasicProperties)],
    ) -> Vec<Result<(), PublishError>> {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(error = %e, "no channel for events");
                return messages
                    .iter()
                    .map(|_| Err(PublishError::Unavailable))
                    .collect();
            }
        };
        let sending =
            futures::future::join_all(messages.iter().map(|(routing_key, body, props)| {
                let channel = &channel;
                async move {
                    channel
                        .basic_publish(
                            topology::EVENTS_EXCHANGE.into(),
                            routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            body,
                            props.clone(),
                        )
                        .await?;
                    Ok(())
                }
            }));
        // Bounded, so that a connection the broker holds up (a resource
        // alarm) holds up no more than this round: the events announced
        // meanwhile wait in the backlog, and the channel is opened again.
        match tokio::time::timeout(super::STEP_TIMEOUT, sending).await {
            Ok(answers) => answers,
            Err(_) => {
                if let Some(stuck) = self.open.take() {
                    super::retire(stuck);
                }
                messages
                    .iter()
                    .map(|_| Err(PublishError::Timeout(super::STEP_TIMEOUT)))
                    .collect()
            }
        }
    }

    async fn channel(&mut self) -> Result<Channel, PublishError> {
        if let Some(channel) = &self.open
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        self.open = None;
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        let channel = super::within(super::STEP_TIMEOUT, conn.create_channel()).await?;
        self.open = Some(channel.clone());
        Ok(channel)
    }
}

/// The messages for `events`: per routing key (in the order the keys were
/// first announced), one message alone or a bundle of up to
/// [`EVENT_BUNDLE_MAX`], each keeping the order of its events.
fn bundle(events: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>, lapin::BasicProperties)> {
    let mut keys: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (routing_key, body) in events {
        match keys.iter_mut().find(|(k, _)| *k == routing_key) {
            Some((_, bodies)) => bodies.push(body),
            None => keys.push((routing_key, vec![body])),
        }
    }
    let mut messages = Vec::new();
    for (routing_key, bodies) in keys {
        for chunk in bodies.chunks(EVENT_BUNDLE_MAX) {
            // Transient: see the module's documentation.
            let props = headers::transient_json(&Uuid::now_v7().to_string(), "");
            let message = match chunk {
                [one] => (routing_key.clone(), one.clone(), props),
                many => {
                    let mut body =
                        Vec::with_capacity(many.iter().map(|b| b.len() + 1).sum::<usize>() + 1);
                    super::push_json_array(&mut body, many.iter().map(Vec::as_slice));
                    (
                        routing_key.clone(),
                        body,
                        props.with_type(EVENT_BUNDLE_KIND.into()),
                    )
                }
            };
            messages.push(message);
        }
    }
    messages
}

/// The events a message carries: each of a bundle, or the message itself.
fn unbundle(props: &lapin::BasicProperties, body: Vec<u8>) -> Vec<Vec<u8>> {
    if !headers::has_type(props, EVENT_BUNDLE_KIND) {
        return vec![body];
    }
    match serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&body) {
        Ok(events) => events
            .into_iter()
            .map(|e| e.get().as_bytes().to_vec())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "an event bundle that is not a JSON array; passed on whole");
            vec![body]
        }
    }
}

/// One message seen on the followed exchange.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub routing_key: String,
    pub body: Vec<u8>,
}

impl EventMessage {
    /// The body as JSON: the event as published, or its text when it is
    /// not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        })
    }
}

impl Broker {
    /// Follows `exchange` for `keys` (topic patterns such as `#` or
    /// `loaned.*`). The feed ends when the receiver is dropped or the broker
    /// handle closes. A receiver that falls more than `capacity` events
    /// behind loses the excess rather than slowing the broker down.
    pub fn subscribe(
        &self,
        exchange: &str,
        keys: &[&str],
        capacity: usize,
    ) -> mpsc::Receiver<EventMessage> {
        self.spawn_follower(exchange, keys, capacity, None)
    }

    /// As [`Broker::subscribe`], returning once the queue is bound, so that
    /// nothing published afterwards is missed. `None` if that does not
    /// happen within `timeout`.
    pub async fn subscribe_bound(
        &self,
        exchange: &str,
        keys: &[&str],
        capacity: usize,
        timeout: std::time::Duration,
    ) -> Option<mpsc::Receiver<EventMessage>> {
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let rx = self.spawn_follower(exchange, keys, capacity, Some(bound_tx));
        match tokio::time::timeout(timeout, bound_rx).await {
            Ok(Ok(())) => Some(rx),
            _ => None,
        }
    }

    fn spawn_follower(
        &self,
        exchange: &str,
        keys: &[&str],
        capacity: usize,
        mut bound: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> mpsc::Receiver<EventMessage> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let broker = self.clone();
        let exchange = exchange.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        tokio::spawn(async move {
            while !tx.is_closed() {
                let Some(conn) = (tokio::select! {
                    c = broker.connection() => c,
                    () = tx.closed() => return,
                }) else {
                    return;
                };
                match follow(&conn, &exchange, &keys, &tx, &mut bound).await {
                    Ok(()) => return, // the receiver went away
                    Err(e) => {
                        tracing::debug!(error = %e, %exchange, "event feed interrupted; resubscribing");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        rx
    }
}

async fn follow(
    conn: &lapin::Connection,
    exchange: &str,
    keys: &[String],
    tx: &mpsc::Sender<EventMessage>,
    bound: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), lapin::Error> {
    let (ch, mut consumer) = super::within(super::STEP_TIMEOUT, async {
        let ch = conn.create_channel().await?;
        let queue = super::private_queue(&ch).await?;
        for key in keys {
            ch.queue_bind(
                queue.name().clone(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let consumer = super::consume_unacked(&ch, queue.name().as_str()).await?;
        Ok((ch, consumer))
    })
    .await?;
    if let Some(signal) = bound.take() {
        let _ = signal.send(());
    }
    loop {
        tokio::select! {
            () = tx.closed() => {
                let _ = super::within(super::STEP_TIMEOUT, ch.close(200, "feed closed".into())).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let routing_key = delivery.routing_key.as_str().to_owned();
                    for body in unbundle(&delivery.properties, delivery.data) {
                        let event = EventMessage { routing_key: routing_key.clone(), body };
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                            return Ok(());
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed,
                    "consumer cancelled",
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Vec<u8> {
        format!(r#"{{"n":{n}}}"#).into_bytes()
    }

    #[test]
    fn events_are_bundled_per_routing_key_in_order_and_unbundled_as_they_were() {
        let mut events = vec![("task.failed".to_owned(), event(0))];
        events.extend((1..=EVENT_BUNDLE_MAX + 2).map(|n| ("task.succeeded".to_owned(), event(n))));
        let messages = bundle(events);
        // One alone, as itself; a full bundle; the rest in a second one.
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].0, "task.failed");
        assert_eq!(messages[0].1, event(0));
        assert!(!headers::has_type(&messages[0].2, EVENT_BUNDLE_KIND));
        let mut n = 1;
        for (routing_key, body, props) in &messages[1..] {
            assert_eq!(routing_key, "task.succeeded");
            assert!(headers::has_type(props, EVENT_BUNDLE_KIND));
            for inside in unbundle(props, body.clone()) {
                assert_eq!(inside, event(n));
                n += 1;
            }
        }
        assert_eq!(n, EVENT_BUNDLE_MAX + 3);
        // A message that is not a bundle is passed on as it came.
        assert_eq!(unbundle(&messages[0].2, event(7)), vec![event(7)]);
    }
}
