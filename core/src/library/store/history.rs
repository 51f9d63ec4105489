//! The circulation history, counted for the dashboard.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::library::message::{OperationKind, OperationState};

/// A count of settled operations of one kind, outcome and branch, in the
/// minute `minutes_ago` minutes before the end of the window (0: the last).
#[derive(Debug, Clone)]
pub struct CirculationCount {
    pub branch: String,
    pub minutes_ago: i32,
    pub kind: OperationKind,
    pub outcome: OperationState,
    pub count: i64,
}

/// Settled operations per branch, minute, kind and outcome in the `minutes`
/// minutes up to `until`.
pub async fn circulation_counts(
    db: &impl GenericClient,
    until: DateTime<Utc>,
    minutes: u32,
) -> Result<Vec<CirculationCount>, tokio_postgres::Error> {
    let minutes = i32::try_from(minutes).unwrap_or(i32::MAX);
    let rows = db
        .query(
            "SELECT branch,
                    floor(extract(epoch FROM ($1::timestamptz - at)) / 60)::int AS ago,
                    kind, outcome, count(*)
               FROM circulation_history
              WHERE at > $1::timestamptz - make_interval(mins => $2) AND at <= $1::timestamptz
              GROUP BY 1, 2, 3, 4",
            &[&until, &minutes],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(CirculationCount {
                branch: r.try_get(0)?,
                minutes_ago: r.try_get(1)?,
                kind: r.try_get(2)?,
                outcome: r.try_get(3)?,
                count: r.try_get(4)?,
            })
        })
        .collect()
}
