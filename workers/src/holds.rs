//! The hold-shelf job: every `BIBLIOMQ_HOLD_EXPIRY_INTERVAL_MS`, expires the
//! pickups whose deadline passed (`library_hold_expire`): each copy goes to
//! the next waiting hold of its title, or back to available. Then it
//! announces `hold.expired.<branch>`, and `hold.ready.<branch>` for the
//! hold that got the copy.
//!
//! Every worker process runs it. A pass takes its pickups `FOR UPDATE SKIP
//! LOCKED`, so two processes never expire the same one, and an expired hold
//! is no longer `ready`, so running a pass again changes nothing.

use std::time::Duration;

use anyhow::Context;
use bibliomq_core::{
    broker::Publisher,
    clock::Clock,
    library::{
        hold::{HoldEvent, HoldEventType},
        store,
    },
};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use bibliomq_core::broker::events::announce;

/// Most pickups one pass expires; a full pass is followed by another at once.
const BATCH: i32 = 200;

/// Expires pickups every `interval` until `shutdown`.
pub async fn run(
    pool: Pool,
    publisher: Publisher,
    clock: Clock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    crate::periodic::every(
        interval,
        usize::try_from(BATCH).unwrap_or(usize::MAX),
        "hold expiry",
        shutdown,
        || expire_once(&pool, &publisher, &clock),
    )
    .await;
}

/// One pass: expires the pickups past their deadline, announces what
/// happened, and returns how many expired.
pub async fn expire_once(
    pool: &Pool,
    publisher: &Publisher,
    clock: &Clock,
) -> anyhow::Result<usize> {
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let now = clock.now();
    let tx = client
        .transaction()
        .await
        .context("Failed to begin the hold expiry transaction")?;
    let expired = store::expire_pickups(&*tx, now, BATCH)
        .await
        .context("Failed to expire pickups")?;
    tx.commit()
        .await
        .context("Failed to commit the hold expiry pass")?;
    for pickup in &expired {
        let event = HoldEvent::new(HoldEventType::Expired, &pickup.expired, now);
        tracing::info!(event = %event.describe(), "pickup expired");
        announce(publisher, event.routing_key(), &event);
        if let Some(next) = &pickup.passed {
            let event = HoldEvent::new(HoldEventType::Ready, next, now);
            announce(publisher, event.routing_key(), &event);
        }
    }
    Ok(expired.len())
}
