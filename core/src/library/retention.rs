//! Circulation-history retention and patron anonymisation.
//!
//! `circulation_history` is append-only (a trigger refuses UPDATE and
//! DELETE). It keeps its own retention, `BIBLIOMQ_HISTORY_RETENTION`
//! (unset: forever), and may forget who borrowed after
//! `BIBLIOMQ_HISTORY_ANONYMISE_AFTER` (unset: never): the patron of older
//! history rows, and of operations settled before then, is removed —
//! `patron_id` becomes NULL and the outcome loses its patron
//! (`library_without_patron` in `migrations/0014_history_retention.sql`),
//! and loans returned before then are deleted: a loan row names its
//! patron, and a returned loan is only the patron's record of it (see the
//! README's "Circulation history retention").
//!
//! A pass works in small batches, oldest first, each its own short
//! transaction holding a PostgreSQL advisory lock (`pg_try_advisory_xact_lock`),
//! so one process at a time does it, as for task retention. Only inside
//! such a transaction is `bibliomq.history_maintenance` set, which is what
//! lets the trigger allow the change.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::metrics::{Metrics, TableLabels};

/// Rows one batch changes: small, so each transaction is short.
pub const BATCH: i64 = 500;

/// Arbitrary constant: the advisory lock of the history pass.
const LOCK_KEY: i64 = 0x6269_626c_6869;

/// What a pass is to do: delete history before one time, anonymise before
/// another; either may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCutoffs {
    pub delete_before: Option<DateTime<Utc>>,
    pub anonymise_before: Option<DateTime<Utc>>,
}

impl HistoryCutoffs {
    /// The cutoffs for settings of "older than" durations, at `now`.
    pub fn at(
        now: DateTime<Utc>,
        retention: Option<std::time::Duration>,
        anonymise_after: Option<std::time::Duration>,
    ) -> Self {
        let before = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
        };
        Self {
            delete_before: retention.and_then(before),
            anonymise_before: anonymise_after.and_then(before),
        }
    }

    pub fn is_nothing(&self) -> bool {
        self.delete_before.is_none() && self.anonymise_before.is_none()
    }
}

/// What a pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HistoryPurged {
    /// History rows deleted.
    pub deleted: u64,
    /// History rows whose patron was removed.
    pub anonymised: u64,
    /// Settled operations whose patron was removed.
    pub operations_anonymised: u64,
    /// Loans returned before the anonymising cutoff, deleted.
    pub loans_forgotten: u64,
}

enum Step {
    Delete,
    AnonymiseHistory,
    AnonymiseOperations,
    ForgetLoans,
}

/// The smallest time-ordered id (UUIDv7) made at `t`: every loan made
/// earlier has a smaller id, every loan made from then on a larger one.
/// Loan ids are UUIDv7s made when the loan is asked for, before it is
/// made, let alone returned.
fn first_id_at(t: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// Runs one pass. `None` when another process holds the lock (it is
/// running a pass now); what this one did before that stands.
pub async fn purge_history(
    pool: &Pool,
    cutoffs: HistoryCutoffs,
    metrics: &Metrics,
) -> anyhow::Result<Option<HistoryPurged>> {
    let mut total = HistoryPurged::default();
    let mut steps = Vec::new();
    if let Some(cutoff) = cutoffs.delete_before {
        steps.push((Step::Delete, cutoff));
    }
    if let Some(cutoff) = cutoffs.anonymise_before {
        steps.push((Step::AnonymiseHistory, cutoff));
        steps.push((Step::AnonymiseOperations, cutoff));
        steps.push((Step::ForgetLoans, cutoff));
    }
    for (step, cutoff) in steps {
        loop {
            let Some(n) = batch(pool, &step, cutoff).await? else {
                return Ok((total != HistoryPurged::default()).then_some(total));
            };
            match step {
                Step::Delete => {
                    total.deleted += n;
                    metrics.history_purged.inc_by(n);
                }
                Step::AnonymiseHistory => {
                    total.anonymised += n;
                    metrics
                        .history_anonymised
                        .get_or_create(&TableLabels {
                            table: "circulation_history".to_owned(),
                        })
                        .inc_by(n);
                }
                Step::AnonymiseOperations => {
                    total.operations_anonymised += n;
                    metrics
                        .history_anonymised
                        .get_or_create(&TableLabels {
                            table: "operations".to_owned(),
                        })
                        .inc_by(n);
                }
                Step::ForgetLoans => {
                    total.loans_forgotten += n;
                    metrics
                        .history_anonymised
                        .get_or_create(&TableLabels {
                            table: "loans".to_owned(),
                        })
                        .inc_by(n);
                }
            }
            if i64::try_from(n).unwrap_or(i64::MAX) < BATCH {
                break;
            }
        }
    }
    Ok(Some(total))
}

/// One batch in its own transaction: how many rows it changed, or `None`
/// when another process holds the lock.
async fn batch(pool: &Pool, step: &Step, cutoff: DateTime<Utc>) -> anyhow::Result<Option<u64>> {
    use anyhow::Context;
    let mut client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    let tx = client.transaction().await.context("Failed to begin")?;
    let locked = crate::db::try_xact_lock(&tx, LOCK_KEY)
        .await
        .context("Failed to take the history-retention lock")?;
    if !locked {
        return Ok(None);
    }
    tx.execute(
        "SELECT set_config('bibliomq.history_maintenance', 'on', true)",
        &[],
    )
    .await
    .context("Failed to open the history for maintenance")?;
    let first_id = first_id_at(cutoff);
    let (sql, params): (&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match step {
        Step::Delete => (
            "DELETE FROM circulation_history
              WHERE id IN (SELECT id FROM circulation_history
                            WHERE at < $1 ORDER BY at LIMIT $2)",
            vec![&cutoff, &BATCH],
        ),
        Step::AnonymiseHistory => (
            "UPDATE circulation_history
                SET patron_id = NULL, details = library_without_patron(details)
              WHERE id IN (SELECT id FROM circulation_history
                            WHERE at < $1 AND patron_id IS NOT NULL
                            ORDER BY at LIMIT $2)",
            vec![&cutoff, &BATCH],
        ),
        // Walks `requested_at` (never later than `settled_at`, and never
        // changed, so settling stays a HOT update: migration 0016); only
        // settled operations are anonymised.
        Step::AnonymiseOperations => (
            "UPDATE operations
                SET patron_id = NULL, outcome = library_without_patron(outcome)
              WHERE id IN (SELECT id FROM operations
                            WHERE requested_at < $1 AND settled_at < $1
                              AND patron_id IS NOT NULL
                            ORDER BY requested_at LIMIT $2
                              FOR UPDATE SKIP LOCKED)",
            vec![&cutoff, &BATCH],
        ),
        // A loan returned before the cutoff was made before it, so its id
        // is below the cutoff's first id: the primary key leads straight to
        // the loans old enough, with no index kept for this on every
        // return. Open loans are never touched.
        Step::ForgetLoans => (
            "DELETE FROM loans
              WHERE id IN (SELECT id FROM loans
                            WHERE id < $3 AND returned_at < $1
                            ORDER BY id LIMIT $2
                              FOR UPDATE SKIP LOCKED)",
            vec![&cutoff, &BATCH, &first_id],
        ),
    };
    let n = tx
        .execute(sql, &params)
        .await
        .context("Failed to apply the history retention")?;
    tx.commit().await.context("Failed to commit")?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_are_now_minus_each_setting_and_unset_means_never() {
        let now = Utc::now();
        let day = std::time::Duration::from_secs(86_400);
        let c = HistoryCutoffs::at(now, None, Some(day));
        assert_eq!(c.delete_before, None);
        assert_eq!(c.anonymise_before, Some(now - chrono::Duration::days(1)));
        assert!(HistoryCutoffs::at(now, None, None).is_nothing());
    }

    #[test]
    fn the_first_id_at_a_time_parts_the_ids_made_before_from_those_made_after() {
        let t = Utc::now();
        let at = |t: DateTime<Utc>| {
            let ms = u64::try_from(t.timestamp_millis()).unwrap();
            Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1_000,
                u32::try_from(ms % 1_000).unwrap() * 1_000_000,
            ))
        };
        let bound = first_id_at(t);
        assert!(at(t - chrono::Duration::milliseconds(1)) < bound);
        assert!(at(t) > bound);
        assert!(at(t + chrono::Duration::days(1)) > bound);
        assert!(Uuid::now_v7() > first_id_at(t - chrono::Duration::days(30)));
    }
}
