//! The scheduler: publishes delayed tasks when they are due.
//!
//! A task submitted with `run_at` or `delay_ms` is stored `scheduled` in
//! PostgreSQL and not published. Every [`INTERVAL`], each worker process, in
//! one transaction, takes the due ones (`FOR UPDATE SKIP LOCKED`, earliest
//! first, at most [`BATCH`]), publishes them (in bundles, their confirms
//! awaited together: [`publish_first`]), marks the confirmed ones
//! `queued`, and commits. Several worker processes share the work without
//! taking the same task; a cancel racing a
//! pass waits for its commit and then finds the task `queued` (or still
//! `scheduled`), never both.
//!
//! A process that dies between a confirm and the commit leaves the task
//! `scheduled`, so the next pass publishes it again: the task may be
//! delivered twice. That is harmless — the claim and the outcome writes
//! make a duplicate delivery a no-op, as for the reaper.

use std::time::Duration;

use anyhow::Context;
use bibliomq_core::{
    broker::Publisher,
    metrics::Metrics,
    tasks::{Outgoing, publish_first, store},
};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

/// How often each worker process looks for due tasks.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// Most tasks one pass publishes; the next pass (at once) takes the rest.
/// Each pass commits before the workers can claim its tasks (a claim
/// waits for the row lock), so a smaller batch lets the first ones start
/// sooner.
const BATCH: i64 = 200;

/// Publishes due tasks every [`INTERVAL`] until `shutdown`.
pub async fn run(pool: Pool, publisher: Publisher, metrics: Metrics, shutdown: CancellationToken) {
    // A full batch means more may be due: the next pass runs at once.
    crate::periodic::every(
        INTERVAL,
        usize::try_from(BATCH).unwrap_or(usize::MAX),
        "scheduler",
        shutdown,
        || schedule_once(&pool, &publisher, &metrics),
    )
    .await;
}

/// One pass: publishes the scheduled tasks that are due and returns how many.
pub async fn schedule_once(
    pool: &Pool,
    publisher: &Publisher,
    metrics: &Metrics,
) -> anyhow::Result<usize> {
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let tx = client
        .transaction()
        .await
        .context("Failed to begin the scheduler's transaction")?;
    let due = store::due(&*tx, BATCH)
        .await
        .context("Failed to look for due tasks")?;
    if due.is_empty() {
        return Ok(0);
    }
    // A scheduled task was never attempted (only a submission makes one),
    // so each goes as a first attempt: in bundles, their confirms awaited
    // together. One confirm round trip after another made a burst of due
    // tasks wait seconds for the last ones (see the README, "Delayed tasks").
    let mut outgoing = Vec::with_capacity(due.len());
    for task in &due {
        match serde_json::to_vec(&task.message) {
            Ok(body) => outgoing.push(Outgoing {
                id: task.message.id,
                action: task.message.action.clone(),
                body,
                correlation_id: task.correlation_id.clone(),
            }),
            Err(e) => {
                tracing::warn!(task_id = %task.message.id, error = %e, "cannot write a due task's message");
            }
        }
    }
    let outcomes = publish_first(publisher, &outgoing).await;
    let mut published = Vec::with_capacity(outgoing.len());
    for (task, outcome) in outgoing.iter().zip(outcomes) {
        match outcome {
            Ok(()) => published.push(task.id),
            // Marked only once confirmed: the rest stay for the next pass.
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "could not publish a due task");
            }
        }
    }
    let lags = store::mark_queued(&*tx, &published)
        .await
        .context("Failed to record the published tasks")?;
    tx.commit()
        .await
        .context("Failed to commit the scheduler's pass")?;
    for lag in lags {
        metrics.scheduler_lag.observe(lag.max(0.0));
    }
    tracing::debug!(tasks = published.len(), "published due tasks");
    Ok(published.len())
}
