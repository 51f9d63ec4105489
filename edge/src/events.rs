//! The ZeroMQ event feed: every message on the `bibliomq.events` exchange,
//! republished on a PUB socket as two frames, the AMQP routing key as the
//! topic (`task.succeeded`, `renewed.norte`, ...) and the JSON body. SUB
//! clients filter by topic prefix.
//!
//! Like any PUB socket this is a live feed: clients that are not connected,
//! or fall behind, miss events. What happened is kept in PostgreSQL.

use bibliomq_core::broker::{Broker, topology::EVENTS_EXCHANGE};
use tokio_util::sync::CancellationToken;
use zeromq::{PubSocket, SocketSend, ZmqMessage};

/// Events buffered between RabbitMQ and the PUB socket. Publishing on the
/// socket only queues, so this is rarely used; when it overflows, the
/// broker-side feed drops the excess rather than slowing RabbitMQ down.
const FEED_CAPACITY: usize = 4096;

/// Follows the events exchange and publishes each event until `shutdown`.
pub async fn serve(mut socket: PubSocket, broker: Broker, shutdown: CancellationToken) {
    let mut feed = broker.subscribe(EVENTS_EXCHANGE, &["#"], FEED_CAPACITY);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = feed.recv() => event,
        };
        // The feed ends only when the broker handle closes.
        let Some(event) = event else { break };
        let mut message = ZmqMessage::from(event.routing_key);
        message.push_back(event.body.into());
        if let Err(e) = socket.send(message).await {
            tracing::debug!(error = %e, "publishing an event failed");
        }
    }
    drop(feed);
    // Dropping the socket closes the subscribers' connections.
    drop(socket);
}
