//! bibliomq-workers: the consumers that do the work behind the API.
//!
//! # Layout
//! - [`consumer`]: the consume loop shared by every worker kind (resubscribe
//!   after broker restarts, drain on shutdown) and how deliveries are settled.
//! - [`tasks`]: the task worker (claim, run, store, commit, ack, retry, dead-letter).
//! - [`library`]: the loan RPC server and the renewal and return workers.
//! - [`events`]: outcome events published after commits.
//!
//! Next to the consumers each worker process serves `/metrics`, `/healthz`
//! and `/readyz` on its operations port ([`bibliomq_core::ops`]).

pub mod consumer;
pub mod events;
pub mod library;
pub mod tasks;

use std::sync::Arc;

use anyhow::Context;
use bibliomq_core::{
    broker::{Broker, Publisher, Topology, topology},
    clock::Clock,
    config::Settings,
    db,
    library::{Rules, message::OperationKind},
    metrics::Metrics,
    ops::{OpsServer, Probes},
    storage::ObjectStore,
};
use tokio_util::sync::CancellationToken;

/// A worker process: its connections and consumers.
pub struct WorkerApp {
    settings: Settings,
    pool: deadpool_postgres::Pool,
    broker: Broker,
    metrics: Metrics,
    clock: Clock,
    ops: OpsServer,
}

impl WorkerApp {
    /// Connects (lazily: starting while a dependency is down is fine) and
    /// applies migrations when configured to.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// As [`WorkerApp::build`], with the clock the library rules read.
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        if settings.database.migrate_on_start {
            db::migrate(&pool)
                .await
                .context("Failed to apply migrations")?;
            let client = pool.get().await?;
            bibliomq_core::library::store::ensure_branches(&**client, &settings.library.branches)
                .await
                .context("Failed to record the branches")?;
        }
        let broker = Broker::start(
            &settings.amqp.url,
            "bibliomq-workers",
            Topology::new(&settings.tasks),
        );
        let metrics = Metrics::new();
        let probes = Probes {
            broker: broker.clone(),
            pool: pool.clone(),
            store: ObjectStore::new(&settings.s3),
        };
        let ops = OpsServer::bind(
            &settings.worker.ops_host,
            settings.worker.ops_port,
            metrics.clone(),
            probes,
        )
        .await?;
        Ok(Self {
            settings,
            pool,
            broker,
            metrics,
            clock,
            ops,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.ops.local_addr()
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
        let prefetch = self.settings.amqp.prefetch;
        let drain = self.settings.tasks.drain_timeout;
        let task_worker = Arc::new(tasks::TaskWorker::new(
            self.pool.clone(),
            publisher.clone(),
            store,
            self.settings.tasks.clone(),
            self.metrics.clone(),
        ));
        let deps = Arc::new(library::LibraryDeps {
            pool: self.pool.clone(),
            publisher,
            rules: Rules::from_settings(&self.settings.library),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            poison_delivery_limit: self.settings.tasks.poison_delivery_limit,
        });
        let loans = Arc::new(library::LoanServer::new(deps.clone()));
        let renewals = Arc::new(library::CirculationWorker::new(
            deps.clone(),
            topology::RENEWALS_QUEUE,
            OperationKind::Renewal,
        ));
        let returns = Arc::new(library::CirculationWorker::new(
            deps,
            topology::RETURNS_QUEUE,
            OperationKind::Return,
        ));
        // The operations server outlives the drain, so /metrics and /readyz
        // still answer while in-flight work finishes; it stops after.
        let ops_stop = CancellationToken::new();
        let ops = tokio::spawn(self.ops.run_until_stopped(ops_stop.clone()));
        let b = &self.broker;
        tokio::join!(
            consumer::run(
                b.clone(),
                topology::TASKS_QUEUE,
                prefetch,
                task_worker,
                stop.clone(),
                drain
            ),
            consumer::run(
                b.clone(),
                topology::LOANS_QUEUE,
                prefetch,
                loans,
                stop.clone(),
                drain
            ),
            consumer::run(
                b.clone(),
                topology::RENEWALS_QUEUE,
                prefetch,
                renewals,
                stop.clone(),
                drain
            ),
            consumer::run(
                b.clone(),
                topology::RETURNS_QUEUE,
                prefetch,
                returns,
                stop,
                drain
            ),
        );
        ops_stop.cancel();
        match ops.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "operations server"),
            Err(e) => tracing::warn!(error = %e, "operations server task"),
            Ok(Ok(())) => {}
        }
        self.broker.close().await;
        Ok(())
    }
}
