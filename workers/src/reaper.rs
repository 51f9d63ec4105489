//! The reaper: publishes again, once, tasks whose message was lost.
//!
//! Nothing in the pipeline should lose a task's message — publishes are
//! confirmed, queues are replicated, dead-lettering is at-least-once — but a
//! task is the client's, and "should" is not enough: a message can still go
//! with a broker node in ways no single component sees. So every worker
//! process, every `BIBLIOMQ_TASK_REAP_INTERVAL_MS`:
//!
//! 1. touches the rows of the tasks it is running (a *heartbeat*), so a long
//!    task is never mistaken for a stranded one;
//! 2. takes the tasks still `queued` or `running` whose row has not changed
//!    for `BIBLIOMQ_TASK_REAP_AFTER_MS` and were never reaped, publishes
//!    each again with a confirm, and records that it did — in one
//!    transaction that holds the rows (`FOR UPDATE SKIP LOCKED`), so two
//!    worker processes never reap the same task, and a reaper that dies
//!    before committing leaves the task to the next one.
//!
//! If the old message was not lost after all (a queue far behind), the task
//! is delivered twice; the claim and the outcome writes already make a
//! duplicate delivery harmless.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use bibliomq_core::{
    broker::{Publisher, headers, topology},
    config::TaskSettings,
    tasks::store,
};
use deadpool_postgres::Pool;
use lapin::{BasicProperties, types::AMQPValue};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most tasks one pass publishes again; the next pass takes the rest.
const BATCH: i64 = 500;

/// The tasks this process is running right now, each with the token that
/// tells its run a client cancelled it. Cheap to clone.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<Uuid, CancellationToken>>>);

impl InFlight {
    /// Records `id` as held until the returned guard drops.
    pub fn hold(&self, id: Uuid) -> Held {
        let cancelled = CancellationToken::new();
        self.lock().insert(id, cancelled.clone());
        Held {
            set: self.clone(),
            id,
            cancelled,
        }
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Tells the runs of these tasks (those held here) that they were cancelled.
    pub fn cancel(&self, ids: &[Uuid]) {
        let held = self.lock();
        for id in ids {
            if let Some(token) = held.get(id) {
                token.cancel();
            }
        }
    }

    // A std Mutex: held for an insert or a copy, never across an await.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CancellationToken>> {
        match self.0.lock() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A task held by this process; dropping it lets go.
pub struct Held {
    set: InFlight,
    id: Uuid,
    cancelled: CancellationToken,
}

impl Held {
    /// Cancelled when a client cancels this task.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancelled
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// Heartbeats and reaps every `settings.reap_interval` until `shutdown`.
pub async fn run(
    pool: Pool,
    publisher: Publisher,
    settings: TaskSettings,
    in_flight: InFlight,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = heartbeat(&pool, &in_flight).await {
            tracing::warn!(error = %format!("{e:#}"), "could not record the running tasks' heartbeat");
        }
        match reap_once(&pool, &publisher, settings.reap_after).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(tasks = n, "published stranded tasks again"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reaper pass failed; trying again later")
            }
        }
    }
}

async fn heartbeat(pool: &Pool, in_flight: &InFlight) -> anyhow::Result<()> {
    let ids = in_flight.ids();
    if ids.is_empty() {
        return Ok(());
    }
    let client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    store::heartbeat(&**client, &ids)
        .await
        .context("Failed to touch the running tasks")?;
    Ok(())
}

/// One pass: publishes again the tasks stranded for longer than
/// `older_than` and returns how many. The single step tests drive.
pub async fn reap_once(
    pool: &Pool,
    publisher: &Publisher,
    older_than: Duration,
) -> anyhow::Result<usize> {
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let tx = client
        .transaction()
        .await
        .context("Failed to begin the reaper's transaction")?;
    let stranded = store::stranded(&*tx, older_than, BATCH)
        .await
        .context("Failed to look for stranded tasks")?;
    if stranded.is_empty() {
        return Ok(0);
    }
    // Published side by side (`publish_many` keeps up to 256 waiting for
    // their confirms at once), not one confirm after another: a pass of
    // 500 stranded tasks, as after a broker node's loss, took 500 round
    // trips one behind the other.
    let messages = stranded
        .iter()
        .map(message)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answers = publisher
        .publish_many(topology::TASKS_EXCHANGE, &messages, true)
        .await;
    let mut published = Vec::with_capacity(stranded.len());
    for (task, answer) in stranded.iter().zip(answers) {
        let id = task.message.id;
        match answer {
            Ok(()) => {
                tracing::warn!(task_id = %id, "task had no live message; published it again");
                published.push(id);
            }
            // Marked only once confirmed: the rest stay for the next pass.
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, "could not publish a stranded task");
            }
        }
    }
    store::mark_reaped(&*tx, &published)
        .await
        .context("Failed to record the reaped tasks")?;
    tx.commit()
        .await
        .context("Failed to commit the reaper's pass")?;
    Ok(published.len())
}

/// A stored task's next attempt as a message (routing key, body,
/// properties): persistent, and published mandatory with a confirm, as the
/// API first published it.
fn message(task: &store::Stranded) -> anyhow::Result<(String, Vec<u8>, BasicProperties)> {
    let message = &task.message;
    let body = serde_json::to_vec(message).context("Failed to encode a task message")?;
    let props = headers::with_header(
        headers::persistent_json(&message.id.to_string(), &task.correlation_id),
        headers::ATTEMPT,
        AMQPValue::LongLongInt(i64::from(task.attempts.max(0)) + 1),
    );
    Ok((message.routing_key(), body, props))
}
