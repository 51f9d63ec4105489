//! Counters kept as work flows (migration 0013): triggers append the net
//! change of every statement on `tasks` and `circulation_history` to delta
//! tables; [`fold`] moves those deltas into small folded tables. Readers
//! (the dashboard) add both, so their cost follows the number of states and
//! minutes shown, not the number of tasks or operations ever recorded.
//!
//! Folding only keeps the delta tables short: figures are exact whether or
//! not it has run.

use std::time::Duration;

use tokio_postgres::GenericClient;

/// How often the workers fold. The delta tables then hold about a second of
/// changes (a few thousand rows at full speed), which a reader sums in well
/// under a millisecond per thousand.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Moves every committed delta into the folded tables, in one transaction of
/// its own; returns how many delta rows it moved (0 as well when another
/// process was folding at that moment).
pub async fn fold(db: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one("SELECT fold_counters()", &[]).await?.get(0))
}
