//! Folds the dashboard's counters every [`counters::FOLD_INTERVAL`]
//! ([`bibliomq_core::db::counters`]). Every worker process runs it; a fold
//! that finds another one running returns at once.

use bibliomq_core::db::counters;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

pub async fn run(pool: Pool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(counters::FOLD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let folded = async {
            let client = pool.get().await.map_err(anyhow::Error::from)?;
            counters::fold(&**client).await.map_err(anyhow::Error::from)
        };
        let result = tokio::select! {
            r = folded => r,
            () = shutdown.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "folding the counters failed; trying again later");
        }
    }
}
