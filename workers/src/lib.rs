//! bibliomq-workers: the consumers that do the work behind the API.
//!
//! # Layout
//! - [`consumer`]: the consume loop shared by every worker kind (resubscribe
//!   after broker restarts, drain on shutdown).
//! - [`tasks`]: the task worker (claim, run, store, commit, ack, retry, dead-letter).

pub mod consumer;
pub mod tasks;

use std::sync::Arc;

use anyhow::Context;
use bibliomq_core::{
    broker::{Broker, Publisher, Topology, topology},
    config::Settings,
    db,
    metrics::Metrics,
    storage::ObjectStore,
};
use tokio_util::sync::CancellationToken;

/// A worker process: its connections and consumers.
pub struct WorkerApp {
    settings: Settings,
    pool: deadpool_postgres::Pool,
    broker: Broker,
    metrics: Metrics,
}

impl WorkerApp {
    /// Connects (lazily: starting while a dependency is down is fine) and
    /// applies migrations when configured to.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        if settings.database.migrate_on_start {
            db::migrate(&pool)
                .await
                .context("Failed to apply migrations")?;
        }
        let broker = Broker::start(
            &settings.amqp.url,
            "bibliomq-workers",
            Topology::new(&settings.tasks),
        );
        Ok(Self {
            settings,
            pool,
            broker,
            metrics: Metrics::new(),
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// This worker process's metrics (tests read the counters directly).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs every consumer until `shutdown` is cancelled, then drains them
    /// and closes the connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let publisher = Publisher::new(
            self.broker.clone(),
            self.settings.amqp.confirm_timeout,
            self.metrics.clone(),
        );
        let store = ObjectStore::new(&self.settings.s3);
        let stop = consumer::Stop {
            graceful: shutdown,
            abandon: CancellationToken::new(),
        };
        let task_worker = Arc::new(tasks::TaskWorker::new(
            self.pool.clone(),
            publisher,
            store,
            self.settings.tasks.clone(),
            self.metrics.clone(),
        ));
        consumer::run(
            self.broker.clone(),
            topology::TASKS_QUEUE,
            self.settings.amqp.prefetch,
            task_worker,
            stop,
            self.settings.tasks.drain_timeout,
        )
        .await;
        self.broker.close().await;
        Ok(())
    }
}
