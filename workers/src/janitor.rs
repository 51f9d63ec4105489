//! The janitor: every `BIBLIOMQ_TASK_JANITOR_INTERVAL_MS`, deletes the
//! tasks that finished more than `BIBLIOMQ_TASK_RETENTION` ago, with their
//! stored results ([`bibliomq_core::tasks::retention`]). Every worker
//! process runs it; an advisory lock lets one of them at a time do a pass.

use bibliomq_core::{
    clock::Clock, config::TaskSettings, metrics::Metrics, storage::ObjectStore, tasks::retention,
};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

pub async fn run(
    pool: Pool,
    store: ObjectStore,
    settings: TaskSettings,
    metrics: Metrics,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.janitor_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(retention) = chrono::Duration::from_std(settings.retention) else {
            continue;
        };
        let cutoff = clock.now() - retention;
        let pass = tokio::select! {
            pass = retention::purge(&pool, &store, cutoff, &metrics) => pass,
            () = shutdown.cancelled() => return,
        };
        match pass {
            Ok(Some(p)) if p.tasks > 0 => {
                tracing::info!(tasks = p.tasks, objects = p.objects, "purged expired tasks");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "retention pass failed; trying again later");
            }
        }
    }
}
