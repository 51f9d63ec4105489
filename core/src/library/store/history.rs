//! The circulation history, counted for the dashboard.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::library::message::{OperationKind, OperationState};

/// A count of settled operations of one kind, outcome and branch, in the
/// calendar minute `minutes_ago` minutes before the one holding the end of
/// the window (0: the last, still running, minute).
#[derive(Debug, Clone)]
pub struct CirculationCount {
    pub branch: String,
    pub minutes_ago: i32,
    pub kind: OperationKind,
    pub outcome: OperationState,
    pub count: i64,
}

/// Settled operations per branch, minute, kind and outcome in the `minutes`
/// calendar minutes (UTC) ending with the one that holds `until`.
///
/// Read from the per-minute counts that a trigger keeps as the history is
/// written (migration 0013): folded minutes plus the deltas not folded yet,
/// in one statement. The cost follows the window's length, not how much
/// history there is. A minute may come in several rows (folded and not
/// yet); the caller adds them up.
pub async fn circulation_counts(
    db: &impl GenericClient,
    until: DateTime<Utc>,
    minutes: u32,
) -> Result<Vec<CirculationCount>, tokio_postgres::Error> {
    let minutes = i32::try_from(minutes).unwrap_or(i32::MAX);
    let rows = db
        .query(
            "SELECT branch,
                    (date_part('epoch', date_trunc('minute', $1::timestamptz) - minute) / 60)::int,
                    loan_applied, loan_rejected, renewal_applied, renewal_rejected,
                    return_applied, return_rejected
               FROM circulation_minutes
              WHERE minute > date_trunc('minute', $1::timestamptz) - make_interval(mins => $2)
                AND minute <= date_trunc('minute', $1::timestamptz)
             UNION ALL
             SELECT branch,
                    (date_part('epoch', date_trunc('minute', $1::timestamptz) - minute) / 60)::int,
                    loan_applied, loan_rejected, renewal_applied, renewal_rejected,
                    return_applied, return_rejected
               FROM circulation_minute_deltas
              WHERE minute > date_trunc('minute', $1::timestamptz) - make_interval(mins => $2)
                AND minute <= date_trunc('minute', $1::timestamptz)",
            &[&until, &minutes],
        )
        .await?;
    // The columns after the minute, in order.
    const COLUMNS: [(OperationKind, OperationState); 6] = [
        (OperationKind::Loan, OperationState::Applied),
        (OperationKind::Loan, OperationState::Rejected),
        (OperationKind::Renewal, OperationState::Applied),
        (OperationKind::Renewal, OperationState::Rejected),
        (OperationKind::Return, OperationState::Applied),
        (OperationKind::Return, OperationState::Rejected),
    ];
    let mut counts = Vec::with_capacity(rows.len());
    for r in &rows {
        let branch: String = r.try_get(0)?;
        let minutes_ago: i32 = r.try_get(1)?;
        for (i, (kind, outcome)) in COLUMNS.iter().enumerate() {
            let n: i32 = r.try_get(i + 2)?;
            if n != 0 {
                counts.push(CirculationCount {
                    branch: branch.clone(),
                    minutes_ago,
                    kind: *kind,
                    outcome: *outcome,
                    count: i64::from(n),
                });
            }
        }
    }
    Ok(counts)
}
