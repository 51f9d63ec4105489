//! Outcome events on `bibliomq.events`, published after the outcome is
//! committed. They are notifications for the edge and the dashboard: the
//! record of what happened is in PostgreSQL, so a worker does not hold its
//! ack for their confirms.

use bibliomq_core::broker::{Publisher, headers, topology};
use serde_json::Value;
use uuid::Uuid;

pub fn announce(publisher: &Publisher, routing_key: String, event: Value) {
    let publisher = publisher.clone();
    tokio::spawn(async move {
        let props = headers::persistent_json(&Uuid::now_v7().to_string(), "");
        if let Err(e) = publisher
            .publish(
                topology::EVENTS_EXCHANGE,
                &routing_key,
                event.to_string().as_bytes(),
                props,
                false,
            )
            .await
        {
            tracing::debug!(error = %e, %routing_key, "could not publish an event");
        }
    });
}
