//! How a worker learns that a task it is running was cancelled: it polls
//! the rows of the tasks it holds.
//!
//! `POST /v1/tasks/{id}/cancel` (and its ZeroMQ and CLI twins) records the
//! request on the task's row (`cancel_requested_at`). Every
//! [`CANCEL_POLL`], each worker process asks PostgreSQL, in one query for
//! all the tasks it is running, which of them have a cancel request, and
//! cancels their runs' tokens. Polling rather than a broadcast over a
//! fanout exchange because the row is the truth already: a broadcast
//! missed while a worker's connection recovers, or sent before the worker
//! claimed the task, would leave the task running, where the next poll
//! cannot miss it. The cost is one indexed query per interval per process,
//! and only while it runs tasks.

use anyhow::Context;
use bibliomq_core::tasks::{CANCEL_POLL, store};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::reaper::InFlight;

/// Polls for cancel requests of the tasks in `in_flight` until `shutdown`.
pub async fn watch(pool: Pool, in_flight: InFlight, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CANCEL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = poll_once(&pool, &in_flight).await {
            tracing::warn!(error = %format!("{e:#}"), "could not look for cancelled tasks");
        }
    }
}

/// One look: cancels the runs of held tasks whose cancel was requested.
pub async fn poll_once(pool: &Pool, in_flight: &InFlight) -> anyhow::Result<usize> {
    let ids = in_flight.ids();
    if ids.is_empty() {
        return Ok(0);
    }
    let client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let cancelled = store::cancel_requested(&**client, &ids)
        .await
        .context("Failed to read the cancel requests")?;
    in_flight.cancel(&cancelled);
    Ok(cancelled.len())
}
