//! Retention: tasks that finished longer ago than `BIBLIOMQ_TASK_RETENTION`
//! are deleted with their stored results.
//!
//! A pass takes a small batch at a time, oldest first, in a transaction
//! that holds a PostgreSQL advisory lock (`pg_try_advisory_xact_lock`): the
//! janitor runs in every worker process, and the one that does not get the
//! lock leaves the pass to the one that did. Within a batch the objects are
//! deleted first and the rows last: a pass that fails half way leaves rows
//! whose objects may be gone (the next pass deletes them again, which is no
//! error), never objects that no row points at.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;

use crate::{metrics::Metrics, storage::ObjectStore};

/// Rows one batch deletes: small, so each transaction is short.
pub const BATCH: i64 = 200;

/// Arbitrary constant: the advisory lock of the retention pass.
const LOCK_KEY: i64 = 0x6269_626c_7265;

/// What a pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub tasks: u64,
    pub objects: u64,
}

/// Deletes tasks that finished before `cutoff`, and their stored results.
/// `None` when another process holds the lock (it is purging now).
pub async fn purge(
    pool: &Pool,
    store: &ObjectStore,
    cutoff: DateTime<Utc>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Purged>> {
    use anyhow::Context;
    let mut total = Purged::default();
    loop {
        let mut client = pool
            .get()
            .await
            .context("Failed to get a database connection")?;
        let tx = client.transaction().await.context("Failed to begin")?;
        let locked = crate::db::try_xact_lock(&tx, LOCK_KEY)
            .await
            .context("Failed to take the retention lock")?;
        if !locked {
            // Another process is purging; what this one did so far stands.
            return Ok((total != Purged::default()).then_some(total));
        }
        let rows = tx
            .query(
                "SELECT id, result_bucket, result_key FROM tasks
                  WHERE finished_at < $1
                    AND state IN ('succeeded', 'failed', 'dead', 'cancelled')
                  ORDER BY finished_at
                  LIMIT $2
                    FOR UPDATE SKIP LOCKED",
                &[&cutoff, &BATCH],
            )
            .await
            .context("Failed to find expired tasks")?;
        if rows.is_empty() {
            return Ok(Some(total));
        }
        let mut objects = 0u64;
        for row in &rows {
            let bucket: Option<String> = row.get(1);
            let key: Option<String> = row.get(2);
            if let (Some(bucket), Some(key)) = (bucket, key) {
                store
                    .delete(&bucket, &key)
                    .await
                    .with_context(|| format!("Failed to delete {bucket}/{key}"))?;
                objects += 1;
            }
        }
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let deleted = tx
            .execute("DELETE FROM tasks WHERE id = ANY($1)", &[&ids])
            .await
            .context("Failed to delete expired tasks")?;
        tx.commit().await.context("Failed to commit")?;
        metrics.tasks_purged.inc_by(deleted);
        metrics.results_purged.inc_by(objects);
        total.tasks += deleted;
        total.objects += objects;
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < BATCH {
            return Ok(Some(total));
        }
    }
}
