//! Outcome events on `bibliomq.events`: announcing one after its change
//! was committed, and following the exchange — a private, server-named
//! queue bound to some routing keys, re-created after every reconnection.
//! For live feeds (the ZeroMQ PUB socket, the dashboard); events published
//! while the connection is down are missed, which is why outcomes live in
//! PostgreSQL.

use futures::StreamExt;
use lapin::{
    options::{QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::mpsc;

use serde::Serialize;
use uuid::Uuid;

use super::{Broker, Publisher, headers, topology};

/// Publishes `event` under `routing_key` in the background, after the
/// change it reports was committed. Events are notifications: the record
/// of what happened is in PostgreSQL, so nobody holds an ack or an answer
/// for their confirms, and a lost event is logged, never an error of the
/// work it reports.
pub fn announce(publisher: &Publisher, routing_key: String, event: &impl Serialize) {
    let body = match serde_json::to_vec(event) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, %routing_key, "could not serialise an event");
            return;
        }
    };
    let publisher = publisher.clone();
    tokio::spawn(async move {
        let props = headers::persistent_json(&Uuid::now_v7().to_string(), "");
        if let Err(e) = publisher
            .publish(topology::EVENTS_EXCHANGE, &routing_key, &body, props, false)
            .await
        {
            tracing::debug!(error = %e, %routing_key, "could not publish an event");
        }
    });
}

/// One message seen on the followed exchange.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub routing_key: String,
    pub body: Vec<u8>,
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
    let ch = conn.create_channel().await?;
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
    let mut consumer = super::consume_unacked(&ch, queue.name().as_str()).await?;
    if let Some(signal) = bound.take() {
        let _ = signal.send(());
    }
    loop {
        tokio::select! {
            () = tx.closed() => {
                let _ = ch.close(200, "feed closed".into()).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let event = EventMessage {
                        routing_key: delivery.routing_key.as_str().to_owned(),
                        body: delivery.data,
                    };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                        return Ok(());
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
