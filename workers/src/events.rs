//! Outcome events on `bibliomq.events`, published after the outcome is
//! committed. They are notifications for the edge and the dashboard: the
//! record of what happened is in PostgreSQL, so a worker does not hold its
//! ack for their confirms.

use bibliomq_core::broker::{Publisher, headers, topology};
use serde::Serialize;
use uuid::Uuid;

/// Publishes `event` under `routing_key` in the background; a lost event
/// is logged, never an error of the work it reports.
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
