//! The scheduler: publishes delayed tasks when they are due.
//!
//! A task submitted with `run_at` or `delay_ms` is stored `scheduled` in
//! PostgreSQL and not published. Every [`INTERVAL`], each worker process, in
//! one transaction, takes the due ones (`FOR UPDATE SKIP LOCKED`, earliest
//! first, at most [`BATCH`]), publishes them (in bundles of up to
//! [`BUNDLE_MAX`], their confirms awaited together), marks the confirmed
//! ones `queued`, and commits. Several worker
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
use bibliomq_core::{
    broker::{Publisher, topology},
    metrics::Metrics,
    tasks::{BUNDLE_MAX, Outgoing, first_messages, store},
};
use deadpool_postgres::Pool;
use futures::{StreamExt, stream::FuturesOrdered};
use tokio_util::sync::CancellationToken;

/// How often each worker process looks for due tasks.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// Most tasks one pass publishes; the next pass (at once) takes the rest.
/// Each pass commits before the workers can claim its tasks (a claim
/// waits for the row lock), so a smaller batch lets the first ones start
/// sooner.
const BATCH: i64 = 200;

/// Publishes of one pass awaiting their confirms at the same time.
const IN_FLIGHT: usize = 64;

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
    // First attempts (every scheduled task so far) travel in bundles,
    // their confirms awaited together (`publish_many`); any other goes
    // alone, IN_FLIGHT at a time, as the reaper publishes. One confirm
    // round trip after another made a burst of due tasks wait seconds for
    // the last ones (see the README, "Delayed tasks").
    let (first, again): (Vec<&store::Stranded>, Vec<&store::Stranded>) =
        due.iter().partition(|task| task.attempts <= 0);
    let mut outcomes = publish_first_attempts(publisher, &first).await;
    let mut in_flight = FuturesOrdered::new();
    for task in again {
        if in_flight.len() >= IN_FLIGHT
            && let Some(outcome) = in_flight.next().await
        {
            outcomes.push(outcome);
        }
        in_flight.push_back(publish_one(publisher, task));
    }
    while let Some(outcome) = in_flight.next().await {
        outcomes.push(outcome);
    }
    let mut published = Vec::with_capacity(due.len());
    for (id, outcome) in outcomes {
        match outcome {
            Ok(()) => published.push(id),
            // Marked only once confirmed: the rest stay for the next pass.
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, "could not publish a due task");
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

/// Publishes the first attempts of due tasks in bundles; each task's id
/// and how its bundle went.
async fn publish_first_attempts(
    publisher: &Publisher,
    tasks: &[&store::Stranded],
) -> Vec<(uuid::Uuid, anyhow::Result<()>)> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut outgoing = Vec::with_capacity(tasks.len());
    for task in tasks {
        match serde_json::to_vec(&task.message) {
            Ok(body) => outgoing.push(Outgoing {
                id: task.message.id,
                action: task.message.action.clone(),
                body,
                correlation_id: task.correlation_id.clone(),
            }),
            Err(e) => outcomes.push((task.message.id, Err(e.into()))),
        }
    }
    let messages = first_messages(&outgoing);
    let published = publisher
        .publish_many(topology::TASKS_EXCHANGE, &messages, true)
        .await;
    for (chunk, result) in outgoing.chunks(BUNDLE_MAX).zip(published) {
        for task in chunk {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            };
            outcomes.push((task.id, outcome));
        }
    }
    outcomes
}

/// Publishes one due task; its id and how it went.
async fn publish_one(
    publisher: &Publisher,
    task: &store::Stranded,
) -> (uuid::Uuid, anyhow::Result<()>) {
    (
        task.message.id,
        crate::reaper::publish(publisher, task).await,
    )
}
