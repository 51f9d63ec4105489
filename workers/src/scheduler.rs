//! The scheduler: publishes delayed tasks when they are due.
//!
//! A task submitted with `run_at` or `delay_ms` is stored `scheduled` in
//! PostgreSQL and not published. Every [`INTERVAL`], each worker process, in
//! one transaction, takes the due ones (`FOR UPDATE SKIP LOCKED`, earliest
//! first, at most [`BATCH`]), publishes each task message with a confirm,
//! marks them `queued`, and commits after the confirms. Several worker
//! processes share the work without taking the same task; a cancel racing a
//! pass waits for its commit and then finds the task `queued` (or still
//! `scheduled`), never both.
//!
//! A process that dies between a confirm and the commit leaves the task
//! `scheduled`, so the next pass publishes it again: the task may be
//! delivered twice. That is harmless — the claim and the outcome writes
//! make a duplicate delivery a no-op, as for the reaper.

use std::time::Duration;

use anyhow::Context;
use bibliomq_core::{broker::Publisher, metrics::Metrics, tasks::store};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

/// How often each worker process looks for due tasks.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// Most tasks one pass publishes; the next pass (at once) takes the rest.
const BATCH: i64 = 500;

/// Publishes due tasks every [`INTERVAL`] until `shutdown`.
pub async fn run(pool: Pool, publisher: Publisher, metrics: Metrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // A full batch means more may be due: go on without waiting.
        loop {
            match schedule_once(&pool, &publisher, &metrics).await {
                Ok(n) if usize::try_from(BATCH).is_ok_and(|b| n >= b) => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "scheduler pass failed; trying again later");
                    break;
                }
            }
        }
    }
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
    let mut published = Vec::with_capacity(due.len());
    for task in &due {
        let message = &task.message;
        match crate::reaper::publish(publisher, task).await {
            Ok(()) => published.push(message.id),
            // Marked only once confirmed: the rest stay for the next pass.
            Err(e) => {
                tracing::warn!(task_id = %message.id, error = %e, "could not publish a due task");
                break;
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
