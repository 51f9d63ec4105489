//! Task rows in PostgreSQL. Writes take slices so the batch writers can
//! group many tasks into one statement.
//!
//! Statements that address tasks by id and also test their state are
//! written so that PostgreSQL finds the rows through the primary key
//! whatever its statistics say, because its estimates for `state` are
//! wrong exactly when speed matters: behind a backlog.
//! - The state test reads `(state ...) IS TRUE`. Statistics from an ANALYZE
//!   taken with few tasks waiting make `tasks_by_state` look like the way
//!   to "the few" `queued` rows; it then walks all of them. `IS TRUE` keeps
//!   the test and puts it out of the index's reach.
//! - The outcome writes, which join the tasks to their unnested outcomes,
//!   also say `t.id = ANY($1)`. On a table never analyzed (a new database
//!   under its first load) the planner guesses the state and cancel tests
//!   keep one row in a thousand and scans the whole table instead.
//!
//! - The claim and the outcome writes, one statement per batch, are not
//!   kept prepared: each call is planned for the table as it is then. A
//!   prepared statement settles on one plan after five calls and keeps it
//!   until the table's statistics change; planned while the table was
//!   nearly empty (a new database, the first tasks) that plan is a table
//!   scan, and it stayed one as the table grew to 20,000 rows, until
//!   autovacuum's first ANALYZE. Planning a batch costs a fraction of a
//!   millisecond. They are sent with their parameters' types
//!   (`query_typed`), so an unnamed statement is parsed, planned and run in
//!   one round trip, not prepared in one and run in the next.
//!
//! Before this, one batch of 100 outcomes behind 20,000 waiting tasks took
//! 150 to 300 ms instead of 3, and a run of batch submissions drained at
//! 540 tasks/s. `statements_by_id_go_through_the_primary_key...` in the
//! end-to-end tests checks every such statement's plan.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{
    GenericClient, Row,
    types::{ToSql, Type},
};
use uuid::Uuid;

use super::{Action, TaskState};
use crate::storage::StoredObject;

#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: Uuid,
    pub action: String,
    pub payload: Value,
    pub correlation_id: String,
    pub timeout_ms: Option<i64>,
    /// The client's Idempotency-Key and the request's fingerprint.
    pub idempotency: Option<(String, String)>,
    /// When a delayed task is due: it is stored `scheduled`, not `queued`.
    pub run_at: Option<DateTime<Utc>>,
}

/// Inserts tasks as `queued` (or `scheduled`, those with a `run_at`). Returns, per task, whether it was inserted:
/// a task whose Idempotency-Key is already taken (by an earlier task, or by
/// one earlier in the same batch) is not, and the caller reads the task that
/// holds the key with [`by_idempotency_key`]. The unique index decides, so
/// concurrent submissions with one key make one task.
pub async fn insert_queued(
    db: &Client,
    tasks: &[NewTask],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let statement = db.prepare_cached(INSERT_QUEUED).await?;
    insert_with(&***db, &statement, tasks).await
}

/// [`insert_queued`] inside a transaction: a batch submission stores all
/// its tasks, or none of them.
pub async fn insert_queued_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &[NewTask],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(INSERT_QUEUED).await?;
    insert_with(&**tx, &statement, tasks).await
}

const INSERT_QUEUED: &str = "INSERT INTO tasks (id, action, payload, correlation_id, timeout_ms,
                                idempotency_key, fingerprint, run_at, state)
             SELECT u.*, CASE WHEN u.run_at IS NULL THEN 'queued' ELSE 'scheduled' END
               FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int8[],
                           $6::text[], $7::text[], $8::timestamptz[])
                 AS u(id, action, payload, correlation_id, timeout_ms, idempotency_key,
                      fingerprint, run_at)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id";

async fn insert_with(
    db: &impl GenericClient,
    statement: &tokio_postgres::Statement,
    tasks: &[NewTask],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let actions: Vec<&str> = tasks.iter().map(|t| t.action.as_str()).collect();
    let payloads: Vec<&Value> = tasks.iter().map(|t| &t.payload).collect();
    let correlations: Vec<&str> = tasks.iter().map(|t| t.correlation_id.as_str()).collect();
    let timeouts: Vec<Option<i64>> = tasks.iter().map(|t| t.timeout_ms).collect();
    let keys: Vec<Option<&str>> = tasks
        .iter()
        .map(|t| t.idempotency.as_ref().map(|(k, _)| k.as_str()))
        .collect();
    let fingerprints: Vec<Option<&str>> = tasks
        .iter()
        .map(|t| t.idempotency.as_ref().map(|(_, f)| f.as_str()))
        .collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = tasks.iter().map(|t| t.run_at).collect();
    let rows = db
        .query(
            statement,
            &[
                &ids,
                &actions,
                &payloads,
                &correlations,
                &timeouts,
                &keys,
                &fingerprints,
                &run_ats,
            ],
        )
        .await?;
    let inserted: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    Ok(ids.iter().map(|id| inserted.contains(id)).collect())
}

/// The task that holds an Idempotency-Key.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub id: Uuid,
    pub action: String,
    pub fingerprint: Option<String>,
    /// Submitted with `run_at` or `delay_ms`.
    pub delayed: bool,
}

pub async fn by_idempotency_key(
    db: &impl GenericClient,
    key: &str,
) -> Result<Option<KeyHolder>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT id, action, fingerprint, run_at IS NOT NULL
               FROM tasks WHERE idempotency_key = $1",
            &[&key],
        )
        .await?;
    Ok(row.map(|r| KeyHolder {
        id: r.get(0),
        action: r.get(1),
        fingerprint: r.get(2),
        delayed: r.get(3),
    }))
}

/// The tasks that hold these Idempotency-Keys, by key.
pub async fn by_idempotency_keys(
    db: &impl GenericClient,
    keys: &[&str],
) -> Result<std::collections::HashMap<String, KeyHolder>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT idempotency_key, id, action, fingerprint, run_at IS NOT NULL
               FROM tasks WHERE idempotency_key = ANY($1)",
            &[&keys],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                KeyHolder {
                    id: r.get(1),
                    action: r.get(2),
                    fingerprint: r.get(3),
                    delayed: r.get(4),
                },
            )
        })
        .collect())
}

const LOCK_WAITING: &str = "SELECT (state IN ('queued', 'scheduled')) IS TRUE FROM tasks
              WHERE id = ANY($1) ORDER BY id FOR UPDATE";

const WITHDRAW: &str =
    "DELETE FROM tasks WHERE id = ANY($1) AND (state IN ('queued', 'scheduled')) IS TRUE";

const CANCEL: &str = "UPDATE tasks SET
                state = CASE WHEN state IN ('queued', 'scheduled') THEN 'cancelled' ELSE state END,
                error = CASE WHEN state IN ('queued', 'scheduled') THEN 'cancelled before it ran'
                             ELSE error END,
                error_code = CASE WHEN state IN ('queued', 'scheduled') THEN 'cancelled'
                                  ELSE error_code END,
                finished_at = CASE WHEN state IN ('queued', 'scheduled') THEN now()
                                   ELSE finished_at END,
                cancel_requested_at = coalesce(cancel_requested_at, now()),
                updated_at = now()
              WHERE id = $1 AND (state IN ('queued', 'scheduled', 'running')) IS TRUE
          RETURNING state, action";

const CANCEL_REQUESTED: &str = "SELECT id FROM tasks
              WHERE id = ANY($1) AND (state = 'running') IS TRUE
                AND cancel_requested_at IS NOT NULL";

const CLAIM: &str = "UPDATE tasks SET
                state = CASE WHEN cancel_requested_at IS NULL THEN 'running' ELSE 'cancelled' END,
                attempts = CASE WHEN cancel_requested_at IS NULL THEN attempts + 1 ELSE attempts END,
                started_at = coalesce(started_at, now()),
                finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
                error = CASE WHEN cancel_requested_at IS NULL THEN error
                             ELSE 'cancelled while it ran' END,
                error_code = CASE WHEN cancel_requested_at IS NULL THEN error_code
                                  ELSE 'cancelled' END,
                updated_at = now()
              WHERE id = ANY($1) AND (state IN ('scheduled', 'queued', 'running')) IS TRUE
          RETURNING id, attempts, state";

const HEARTBEAT: &str =
    "UPDATE tasks SET updated_at = now() WHERE id = ANY($1) AND (state = 'running') IS TRUE";

const MARK_QUEUED: &str = "UPDATE tasks SET state = 'queued', updated_at = now()
              WHERE id = ANY($1) AND (state = 'scheduled') IS TRUE
          RETURNING extract(epoch FROM clock_timestamp() - run_at)::float8";

/// The statements that address tasks by id and test their state, by name:
/// for the test that checks each goes through the primary key however
/// stale the statistics (see the module's documentation).
pub const BY_ID_WITH_STATE: &[(&str, &str)] = &[
    ("lock_waiting", LOCK_WAITING),
    ("withdraw", WITHDRAW),
    ("cancel", CANCEL),
    ("cancel_requested", CANCEL_REQUESTED),
    ("claim", CLAIM),
    ("heartbeat", HEARTBEAT),
    ("mark_queued", MARK_QUEUED),
    ("finish", FINISH),
    ("claim_and_finish", CLAIM_AND_FINISH),
];

/// Withdraws the tasks of a submission (one task, or a batch) whose
/// publishing failed, all of them or none: they are deleted when every one
/// is still waiting (`queued` or `scheduled`), and `true` comes back. When
/// a worker already took one (the broker had its message after all and
/// only the confirm was lost) nothing is deleted and `false` comes back:
/// the submission stands accepted, and the reaper publishes again any task
/// whose message never reached the broker. The rows are locked first, in
/// id order, so a claim racing the withdrawal either comes first (and the
/// tasks stay) or finds no row.
pub async fn withdraw(db: &mut Client, ids: &[Uuid]) -> Result<bool, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let waiting = tx.query(LOCK_WAITING, &[&ids]).await?;
    let all_waiting = waiting.len() == ids.len() && waiting.iter().all(|r| r.get::<_, bool>(0));
    if all_waiting {
        tx.execute(WITHDRAW, &[&ids]).await?;
    }
    tx.commit().await?;
    Ok(all_waiting)
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task had not started (`queued` or `scheduled`): it is
    /// `cancelled` and will never run.
    Cancelled {
        action: String,
    },
    /// The task is running: its worker has been asked to stop it.
    Requested,
    /// The task had already ended in this state (`cancelled` included).
    AlreadyFinal(TaskState),
    NotFound,
}

/// Cancels a queued or scheduled task, or asks the worker of a running one to stop it.
/// One statement takes the row lock, so a claim racing it either comes
/// first (the task is `running` and gets a stop request) or second (it
/// finds the task `cancelled` and skips it); never both ran and cancelled.
pub async fn cancel(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<CancelOutcome, tokio_postgres::Error> {
    let row = db.query_opt(CANCEL, &[&id]).await?;
    if let Some(row) = row {
        let state: TaskState = row.get(0);
        return Ok(match state {
            TaskState::Cancelled => CancelOutcome::Cancelled { action: row.get(1) },
            _ => CancelOutcome::Requested,
        });
    }
    let row = db
        .query_opt("SELECT state FROM tasks WHERE id = $1", &[&id])
        .await?;
    Ok(match row {
        Some(row) => CancelOutcome::AlreadyFinal(row.get(0)),
        None => CancelOutcome::NotFound,
    })
}

/// Of these running tasks, the ones a client asked to cancel.
pub async fn cancel_requested(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = db.query(CANCEL_REQUESTED, &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How a claim went for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Marked `running`: run it; this is attempt number `attempts`.
    Run { attempts: i32 },
    /// Its cancel was requested while it was running (and its worker went
    /// away): now recorded `cancelled`, not to be run.
    Cancelled,
}

/// Marks tasks `running` and counts the attempt. Returns the ids that may
/// run, with their attempt number; a task that already finished (a
/// redelivery), was cancelled, or does not exist is left out. A running task
/// whose cancel was requested is recorded `cancelled` instead.
///
/// A `scheduled` task is claimed too: the scheduler publishes a due task
/// before its transaction (which holds the row) commits it `queued`, so a
/// fast worker's claim waits for that commit and then sees `queued`. (Were
/// the scheduler to die after the publish, the task was due anyway.)
pub async fn claim(db: &Client, ids: &[Uuid]) -> Result<Vec<(Uuid, Claim)>, tokio_postgres::Error> {
    // Planned at each call (see the module's documentation), in one round trip.
    let rows = db.query_typed(CLAIM, &[(&ids, Type::UUID_ARRAY)]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let state: TaskState = r.get(2);
            let claim = match state {
                TaskState::Cancelled => Claim::Cancelled,
                _ => Claim::Run { attempts: r.get(1) },
            };
            (r.get(0), claim)
        })
        .collect())
}

/// Tells the reaper these tasks are in a worker's hands: their rows look
/// recently touched. Only `running` rows; finished ones are left alone.
pub async fn heartbeat(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    db.execute(HEARTBEAT, &[&ids]).await
}

/// A stored task the workers publish: again (the reaper), or when it is
/// due (the scheduler).
#[derive(Debug, Clone)]
pub struct Stranded {
    pub message: super::TaskMessage,
    pub correlation_id: String,
    /// Attempts so far; the new message is attempt `attempts + 1`.
    pub attempts: i32,
}

/// The columns [`stranded`] and [`due`] select, in this order.
const TO_PUBLISH: &str =
    "id, action, payload, created_at, coalesce(correlation_id, ''), attempts, timeout_ms";

impl Stranded {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        Self {
            message: super::TaskMessage {
                id: r.get(0),
                action: r.get(1),
                payload: r.get(2),
                submitted_at: r.get(3),
                timeout_ms: r
                    .get::<_, Option<i64>>(6)
                    .and_then(|ms| u64::try_from(ms).ok()),
            },
            correlation_id: r.get(4),
            attempts: r.get(5),
        }
    }
}

/// Up to `limit` tasks still `queued` or `running` with no change for
/// `older_than`, and never reaped, locked (`SKIP LOCKED`: several worker
/// processes reap side by side without taking the same task) for the
/// duration of `tx`. Mark them with [`mark_reaped`] in the same transaction,
/// after their messages were confirmed.
pub async fn stranded(
    tx: &impl GenericClient,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<Stranded>, tokio_postgres::Error> {
    let seconds = older_than.as_secs_f64();
    let rows = tx.query(&stranded_sql(), &[&seconds, &limit]).await?;
    Ok(rows.iter().map(Stranded::from_row).collect())
}

/// The statement of [`stranded`] (seconds, limit). Its conditions are the
/// predicate of the partial index `tasks_in_flight` (migration 0018), so it
/// reads only the tasks in flight, however many have finished.
pub fn stranded_sql() -> String {
    format!(
        "SELECT {TO_PUBLISH}
           FROM tasks
          WHERE state IN ('queued', 'running')
            AND reaped_at IS NULL
            AND updated_at < now() - make_interval(secs => $1)
          ORDER BY updated_at
          LIMIT $2
            FOR UPDATE SKIP LOCKED"
    )
}

/// Up to `limit` `scheduled` tasks whose `run_at` has come, earliest
/// first, locked for the duration of `tx` (`SKIP LOCKED`: several worker
/// processes schedule side by side without taking the same task, and a
/// cancel waits for the pass). Publish them, then [`mark_queued`] in the
/// same transaction and commit after the confirms.
pub async fn due(
    tx: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Stranded>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT {TO_PUBLISH}
                   FROM tasks
                  WHERE state = 'scheduled' AND run_at <= now()
                  ORDER BY run_at
                  LIMIT $1
                    FOR UPDATE SKIP LOCKED"
            ),
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(Stranded::from_row).collect())
}

/// Records that these scheduled tasks were published: now `queued`.
/// Returns, for each, how late it was: seconds from its `run_at` to now
/// (the wall clock, not the transaction's start).
pub async fn mark_queued(
    tx: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<f64>, tokio_postgres::Error> {
    let rows = tx.query(MARK_QUEUED, &[&ids]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, Option<f64>>(0))
        .collect())
}

/// Records that these tasks were published again.
pub async fn mark_reaped(
    tx: &impl GenericClient,
    ids: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "UPDATE tasks SET reaped_at = now(), updated_at = now() WHERE id = ANY($1)",
        &[&ids],
    )
    .await
}

/// How a run ended, to be written back.
#[derive(Debug, Clone)]
pub enum Finish {
    Succeeded {
        id: Uuid,
        result: FinishedResult,
    },
    Failed {
        id: Uuid,
        error: String,
        /// A stable code for the failure (`timeout`), when there is one.
        code: Option<&'static str>,
    },
    /// Stopped because a client cancelled it.
    Cancelled {
        id: Uuid,
    },
    /// Waiting in a retry queue.
    Retrying {
        id: Uuid,
        error: String,
    },
    Dead {
        id: Uuid,
        error: String,
    },
}

#[derive(Debug, Clone)]
pub enum FinishedResult {
    /// Serialised JSON (or, for CSV, the text) kept in the row.
    Inline {
        text: String,
        content_type: String,
    },
    Stored(StoredObject),
}

impl Finish {
    pub fn id(&self) -> Uuid {
        match self {
            Self::Succeeded { id, .. }
            | Self::Failed { id, .. }
            | Self::Cancelled { id }
            | Self::Retrying { id, .. }
            | Self::Dead { id, .. } => *id,
        }
    }
}

/// Writes outcomes. Only rows still `running` change (or, for `dead`, any
/// unfinished row), so a late duplicate never overwrites a finished task.
/// Returns, per outcome, whether it was applied.
pub async fn finish(db: &Client, outcomes: &[Finish]) -> Result<Vec<bool>, tokio_postgres::Error> {
    let rows = write_outcomes(db, outcomes, FINISH).await?;
    let applied: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    Ok(outcomes.iter().map(|o| applied.contains(&o.id())).collect())
}

/// Claims and finishes in one write: the outcome of a run that ended
/// before its task was claimed (a quick run, see the task worker). Only a
/// row still waiting to run (`queued`, or `scheduled` while its scheduler
/// commits it `queued`) without a cancel request changes: it ends in the
/// outcome's state with its attempt counted, never having been `running`.
/// Returns, per outcome, the attempt number when applied; `None` for a row
/// in any other state, which the caller claims and finishes as usual.
pub async fn claim_and_finish(
    db: &Client,
    outcomes: &[Finish],
) -> Result<Vec<Option<i32>>, tokio_postgres::Error> {
    let rows = write_outcomes(db, outcomes, CLAIM_AND_FINISH).await?;
    let applied: std::collections::HashMap<Uuid, i32> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(outcomes
        .iter()
        .map(|o| applied.get(&o.id()).copied())
        .collect())
}

/// The outcomes as arrays, one per column, for [`FINISH`] and
/// [`CLAIM_AND_FINISH`] (parameters `$1`..`$10`, the same in both).
async fn write_outcomes(
    db: &Client,
    outcomes: &[Finish],
    sql: &str,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let n = outcomes.len();
    let mut ids = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut texts: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut types: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut buckets: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut sizes: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut shas: Vec<Option<&str>> = Vec::with_capacity(n);
    for o in outcomes {
        ids.push(o.id());
        let (state, error, code) = match o {
            Finish::Succeeded { .. } => (TaskState::Succeeded, None, None),
            Finish::Failed { error, code, .. } => (TaskState::Failed, Some(error.as_str()), *code),
            Finish::Cancelled { .. } => (
                TaskState::Cancelled,
                Some("cancelled while it ran"),
                Some(super::CANCELLED_CODE),
            ),
            Finish::Retrying { error, .. } => (TaskState::Queued, Some(error.as_str()), None),
            Finish::Dead { error, .. } => (TaskState::Dead, Some(error.as_str()), None),
        };
        states.push(state.as_str());
        errors.push(error);
        codes.push(code);
        match o {
            Finish::Succeeded {
                result: FinishedResult::Inline { text, content_type },
                ..
            } => {
                texts.push(Some(text.as_str()));
                types.push(Some(content_type.as_str()));
                buckets.push(None);
                keys.push(None);
                sizes.push(None);
                shas.push(None);
            }
            Finish::Succeeded {
                result: FinishedResult::Stored(obj),
                ..
            } => {
                texts.push(None);
                types.push(Some(obj.content_type.as_str()));
                buckets.push(Some(obj.bucket.as_str()));
                keys.push(Some(obj.key.as_str()));
                sizes.push(Some(obj.size));
                shas.push(Some(obj.sha256.as_str()));
            }
            _ => {
                texts.push(None);
                types.push(None);
                buckets.push(None);
                keys.push(None);
                sizes.push(None);
                shas.push(None);
            }
        }
    }
    // Planned at each call (see the module's documentation), in one round
    // trip: the parameters' types are given, so nothing is prepared first.
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&ids, Type::UUID_ARRAY),
        (&states, Type::TEXT_ARRAY),
        (&errors, Type::TEXT_ARRAY),
        (&texts, Type::TEXT_ARRAY),
        (&types, Type::TEXT_ARRAY),
        (&buckets, Type::TEXT_ARRAY),
        (&keys, Type::TEXT_ARRAY),
        (&sizes, Type::INT8_ARRAY),
        (&shas, Type::TEXT_ARRAY),
        (&codes, Type::TEXT_ARRAY),
    ];
    let write = db.query_typed(sql, &params);
    tokio::pin!(write);
    // The first poll puts the write on the wire. The waiters' wake-up
    // follows it on the same connection, as a statement of its own: so
    // PostgreSQL runs it once the write has committed (or failed: a
    // wake-up is only a hint), and the write's commit does not hold the
    // lock every notifying transaction keeps until it ends, which would
    // queue concurrent outcome writes' commits one behind the other.
    let first = futures::poll!(write.as_mut());
    let payload = super::wakeups::payload(&ids);
    let wake_params: [(&(dyn ToSql + Sync), Type); 2] = [
        (&super::wakeups::CHANNEL, Type::TEXT),
        (&payload, Type::TEXT),
    ];
    let wake = db.query_typed("SELECT pg_notify($1, $2)", &wake_params);
    let (written, woken) = match first {
        std::task::Poll::Ready(written) => (written, wake.await),
        std::task::Poll::Pending => tokio::join!(write, wake),
    };
    if let Err(e) = woken {
        tracing::debug!(error = %e, "could not wake the waiters of finished tasks");
    }
    written
}

/// The outcome columns every finishing write sets, from `u` (the
/// outcomes unnested).
macro_rules! outcome_sql {
    ($set_more:literal, $where:literal, $returning:literal) => {
        concat!(
            "WITH u AS MATERIALIZED (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                     $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[])
                    AS u(id, state, error, text, content_type, bucket, key, size, sha256, code)
             )
             UPDATE tasks t SET
                state = u.state,
                error = CASE WHEN u.state = 'succeeded' THEN NULL ELSE u.error END,
                error_code = u.code,
                result = CASE
                    WHEN u.text IS NULL THEN NULL
                    WHEN u.content_type LIKE 'text/csv%' THEN to_jsonb(u.text)
                    ELSE u.text::jsonb END,
                result_content_type = u.content_type,
                result_bucket = u.bucket, result_key = u.key,
                result_size = coalesce(u.size, octet_length(u.text)),
                result_sha256 = u.sha256,
                finished_at = CASE WHEN u.state = 'queued' THEN NULL ELSE now() END,
                updated_at = now()",
            $set_more,
            "
             FROM u
             WHERE t.id = u.id AND t.id = ANY($1) AND ",
            $where,
            "
             RETURNING ",
            $returning
        )
    };
}

const FINISH: &str = outcome_sql!(
    "",
    "(t.state = 'running' OR (u.state = 'dead' AND t.state = 'queued')) IS TRUE",
    "t.id"
);

const CLAIM_AND_FINISH: &str = outcome_sql!(
    ",
                attempts = t.attempts + 1,
                started_at = coalesce(t.started_at, now())",
    "(t.state IN ('scheduled', 'queued')) IS TRUE AND t.cancel_requested_at IS NULL",
    "t.id, t.attempts"
);

/// A task as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskRecord {
    pub id: Uuid,
    #[schema(value_type = crate::tasks::Action)]
    pub action: String,
    pub state: TaskState,
    pub attempts: i32,
    #[schema(required = true)]
    pub correlation_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[schema(required = true)]
    pub error: Option<String>,
    /// Why the task did not succeed, as a stable code: `timeout` (stopped
    /// by its time limit), `cancelled`; null otherwise.
    #[schema(required = true)]
    pub error_code: Option<String>,
    /// When a client asked to cancel it.
    #[schema(required = true)]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// For a delayed task, when it is (or was) due; null otherwise.
    #[schema(required = true)]
    pub run_at: Option<DateTime<Utc>>,
    /// As submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The result itself when it is small enough to keep in the database.
    #[schema(required = true)]
    pub result: Option<Value>,
    /// Where a large result was stored, and how to check it.
    #[schema(required = true)]
    pub result_object: Option<ResultObject>,
    #[schema(required = true)]
    pub result_content_type: Option<String>,
    #[schema(required = true)]
    pub result_size: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResultObject {
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
}

const COLUMNS: &str = "id, action, state, attempts, correlation_id, created_at, started_at,
    finished_at, updated_at, error, error_code, cancel_requested_at, run_at, result, result_bucket,
    result_key, result_size, result_content_type, result_sha256";

fn record(row: &Row, payload: Option<Value>) -> TaskRecord {
    let bucket: Option<String> = row.get("result_bucket");
    let key: Option<String> = row.get("result_key");
    let size: Option<i64> = row.get("result_size");
    let content_type: Option<String> = row.get("result_content_type");
    let sha: Option<String> = row.get("result_sha256");
    let result_object = match (bucket, key, sha) {
        (Some(bucket), Some(key), Some(sha256)) => Some(ResultObject {
            bucket,
            key,
            size: size.unwrap_or_default(),
            content_type: content_type.clone().unwrap_or_default(),
            sha256,
        }),
        _ => None,
    };
    TaskRecord {
        id: row.get("id"),
        action: row.get("action"),
        state: row.get("state"),
        attempts: row.get("attempts"),
        correlation_id: row.get("correlation_id"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        updated_at: row.get("updated_at"),
        error: row.get("error"),
        error_code: row.get("error_code"),
        cancel_requested_at: row.get("cancel_requested_at"),
        run_at: row.get("run_at"),
        payload,
        result: row.get("result"),
        result_object,
        result_content_type: content_type,
        result_size: size,
    }
}

/// One task with its payload.
pub async fn get(db: &Client, id: Uuid) -> Result<Option<TaskRecord>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, payload FROM tasks WHERE id = $1"
        ))
        .await?;
    let row = db.query_opt(&statement, &[&id]).await?;
    Ok(row.map(|r| {
        let payload = r.get("payload");
        record(&r, Some(payload))
    }))
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<TaskState>,
    pub action: Option<String>,
    pub limit: i64,
    /// Only tasks created before this one (for paging).
    pub before: Option<Uuid>,
}

/// Tasks newest first, without payloads or inline results.
pub async fn list(
    db: &impl GenericClient,
    filter: &ListFilter,
) -> Result<Vec<TaskRecord>, tokio_postgres::Error> {
    let sql = list_sql(filter.state.is_some(), filter.action.is_some());
    let state = filter.state.map(TaskState::as_str);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(4);
    if let Some(state) = &state {
        params.push(state);
    }
    if let Some(action) = &filter.action {
        params.push(action);
    }
    params.push(&filter.limit);
    params.push(&filter.before);
    let rows = db.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut rec = record(r, None);
            rec.result = None;
            rec
        })
        .collect())
}

/// The statement of [`list`]: its parameters are the state (when filtered
/// by state), the action (when filtered by action), the limit, then the
/// task to page before (or NULL).
///
/// Every filter is served by an index without a sort of the matching rows
/// (migration 0018): no filter by `tasks_newest`; state and action by
/// `tasks_by_action_state`; state alone or action alone by that index too,
/// one branch for each action (or state), each stopping after `limit`
/// rows, merged in order. The actions and states are the code's own; a
/// row can hold no other (the API checks the action, and every state
/// written is a [`TaskState`] word).
pub fn list_sql(by_state: bool, by_action: bool) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    let state = by_state.then(&mut next);
    let action = by_action.then(&mut next);
    let (limit, before) = (next(), next());
    let branch = |state: &str, action: &str| {
        format!(
            "SELECT {COLUMNS} FROM tasks
              WHERE state = {state} AND action = {action}
                AND ({before}::uuid IS NULL OR (created_at, id) <
                     (SELECT created_at, id FROM tasks WHERE id = {before}))
              ORDER BY created_at DESC, id DESC
              LIMIT {limit}"
        )
    };
    let quoted = |value: &str| format!("'{value}'");
    let branches: Vec<String> = match (state, action) {
        (Some(state), Some(action)) => return branch(&state, &action),
        (Some(state), None) => Action::ALL
            .iter()
            .map(|a| branch(&state, &quoted(a.as_str())))
            .collect(),
        (None, Some(action)) => TaskState::ALL
            .iter()
            .map(|s| branch(&quoted(s.as_str()), &action))
            .collect(),
        (None, None) => {
            return format!(
                "SELECT {COLUMNS} FROM tasks
                  WHERE {before}::uuid IS NULL OR (created_at, id) <
                        (SELECT created_at, id FROM tasks WHERE id = {before})
                  ORDER BY created_at DESC, id DESC
                  LIMIT {limit}"
            );
        }
    };
    let union = branches
        .iter()
        .map(|b| format!("({b})"))
        .collect::<Vec<_>>()
        .join("\n UNION ALL ");
    format!("SELECT * FROM ({union}) AS t ORDER BY created_at DESC, id DESC LIMIT {limit}")
}

/// Count of tasks per state, for dashboards: the folded counts plus the
/// changes not folded yet, kept by triggers as tasks move (migration 0013),
/// so the cost does not grow with the table. One statement, so one
/// snapshot: exact whether or not a fold is under way.
pub async fn count_by_state(
    db: &impl GenericClient,
) -> Result<Vec<(TaskState, i64)>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT state, sum(n)::bigint FROM (
                    SELECT state, n FROM task_state_counts
                    UNION ALL
                    SELECT state, n FROM task_state_deltas
                ) c
              GROUP BY state HAVING sum(n) <> 0 ORDER BY state",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waiters' wake-up goes after the outcome writes, never inside
    /// them: a transaction that notifies holds PostgreSQL's notify lock
    /// until its commit is flushed, which queues concurrent outcome
    /// writes behind each other (`write_outcomes`).
    #[test]
    fn the_outcome_writes_do_not_notify_inside_their_transaction() {
        for sql in [FINISH, CLAIM_AND_FINISH, CLAIM] {
            let sql = sql.to_lowercase();
            assert!(!sql.contains("notify"), "{sql}");
        }
    }
}
