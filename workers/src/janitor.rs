//! The janitor: every `BIBLIOMQ_TASK_JANITOR_INTERVAL_MS`, deletes the
//! tasks that finished more than `BIBLIOMQ_TASK_RETENTION` ago, with their
//! stored results ([`bibliomq_core::tasks::retention`]), then applies the
//! circulation history's own retention and anonymisation when they are set
//! (`BIBLIOMQ_HISTORY_RETENTION`, `BIBLIOMQ_HISTORY_ANONYMISE_AFTER`;
//! [`bibliomq_core::library::retention`]). Every worker process runs it;
//! advisory locks let one of them at a time do each pass.

use bibliomq_core::{
    clock::Clock,
    config::{LibrarySettings, TaskSettings},
    library::retention::{HistoryCutoffs, purge_history},
    metrics::Metrics,
    storage::ObjectStore,
    tasks::retention,
};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

/// What the janitor works with.
pub struct Janitor {
    pub pool: Pool,
    pub store: ObjectStore,
    pub settings: TaskSettings,
    pub library: LibrarySettings,
    pub metrics: Metrics,
    pub clock: Clock,
}

pub async fn run(janitor: Janitor, shutdown: CancellationToken) {
    let Janitor {
        pool,
        store,
        settings,
        library,
        metrics,
        clock,
    } = janitor;
    let mut tick = tokio::time::interval(settings.janitor_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Ok(retention) = chrono::Duration::from_std(settings.retention) {
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
        let cutoffs = HistoryCutoffs::at(
            clock.now(),
            library.history_retention,
            library.history_anonymise_after,
        );
        if cutoffs.is_nothing() {
            continue;
        }
        let pass = tokio::select! {
            pass = purge_history(&pool, cutoffs, &metrics) => pass,
            () = shutdown.cancelled() => return,
        };
        match pass {
            Ok(Some(p)) if p != Default::default() => {
                tracing::info!(
                    deleted = p.deleted,
                    anonymised = p.anonymised,
                    operations_anonymised = p.operations_anonymised,
                    loans_forgotten = p.loans_forgotten,
                    "applied the circulation history's retention"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "history retention pass failed; trying again later");
            }
        }
    }
}
