//! bibliomq-workers: the consumers that do the work behind the API.
//!
//! # Layout
//! - [`consumer`]: the consume loop shared by every worker kind (resubscribe
//!   after broker restarts, drain on shutdown) and how deliveries are settled.
//! - [`tasks`]: the task worker (claim, run, store, commit, ack, retry, dead-letter).
//! - [`library`]: the loan RPC server and the renewal and return workers.
//! - [`reaper`]: heartbeats of running tasks; publishes again, once, a task
//!   whose message was lost.
//! - [`cancels`]: tells running tasks that a client cancelled them.
//! - [`janitor`]: deletes tasks past their retention, with their stored results.
//! - [`counters`]: folds the dashboard's counters, kept by triggers as work flows.
//! - [`scheduler`]: publishes delayed (`scheduled`) tasks when they are due.
//! - [`holds`]: expires hold-shelf pickups past their deadline.
//!
//! Next to the consumers each worker process serves `/metrics`, `/healthz`
//! and `/readyz` on its operations port ([`bibliomq_core::ops`]).

pub mod cancels;
pub mod consumer;
pub mod counters;
pub mod holds;
pub mod janitor;
pub mod library;
pub mod periodic;
pub mod reaper;
pub mod scheduler;
pub mod tasks;

use std::{sync::Arc, time::Duration};

use bibliomq_core::{
    broker::{Broker, topology},
    clock::Clock,
    config::Settings,
    infra::Infra,
    library::{Rules, message::OperationKind},
    metrics::Metrics,
    ops::OpsServer,
};
use tokio_util::sync::CancellationToken;

/// How long a starting worker may spend rehearsing circulation on its
/// database connections before it consumes ([`library::rehearse_connections`]).
const REHEARSAL_LIMIT: Duration = Duration::from_secs(5);

/// A worker process: its connections and consumers.
pub struct WorkerApp {
    infra: Infra,
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
        // No waiting for the broker: the consumers subscribe when it comes.
        let infra = Infra::connect(settings, "bibliomq-workers", Duration::ZERO).await?;
        let ops = OpsServer::bind(
            &infra.settings.worker.ops_host,
            infra.settings.worker.ops_port,
            infra.metrics.clone(),
            infra.probes(),
        )
        .await?;
        Ok(Self { infra, clock, ops })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.ops.local_addr()
    }

    pub fn broker(&self) -> &Broker {
        &self.infra.broker
    }

    /// This worker process's metrics (tests read the counters directly).
    pub fn metrics(&self) -> &Metrics {
        &self.infra.metrics
    }

    /// Runs every consumer until `shutdown` is cancelled, then drains them
    /// and closes the connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let infra = &self.infra;
        let publisher = infra.publisher();
        let store = infra.store.clone();
        let stop = consumer::Stop {
            graceful: shutdown,
            abandon: CancellationToken::new(),
        };
        let prefetch = infra.settings.amqp.prefetch;
        let drain = infra.settings.tasks.drain_timeout;
        let in_flight = reaper::InFlight::default();
        let task_worker = Arc::new(tasks::TaskWorker::new(
            infra.pool.clone(),
            publisher.clone(),
            store,
            infra.settings.tasks.clone(),
            infra.metrics.clone(),
            in_flight.clone(),
            usize::from(prefetch),
        ));
        let reaper_stop = CancellationToken::new();
        let cancel_watch = tokio::spawn(cancels::watch(
            infra.pool.clone(),
            in_flight.clone(),
            reaper_stop.clone(),
        ));
        let janitor = tokio::spawn(janitor::run(
            janitor::Janitor {
                pool: infra.pool.clone(),
                store: infra.store.clone(),
                settings: infra.settings.tasks.clone(),
                library: infra.settings.library.clone(),
                metrics: infra.metrics.clone(),
                clock: self.clock.clone(),
            },
            reaper_stop.clone(),
        ));
        let counters = tokio::spawn(counters::run(infra.pool.clone(), reaper_stop.clone()));
        let scheduler = tokio::spawn(scheduler::run(
            infra.pool.clone(),
            publisher.clone(),
            infra.metrics.clone(),
            reaper_stop.clone(),
        ));
        let hold_shelf = tokio::spawn(holds::run(
            infra.pool.clone(),
            publisher.clone(),
            self.clock.clone(),
            infra.settings.library.hold_expiry_interval,
            reaper_stop.clone(),
        ));
        let reaper = tokio::spawn(reaper::run(
            infra.pool.clone(),
            publisher.clone(),
            infra.settings.tasks.clone(),
            in_flight,
            reaper_stop.clone(),
        ));
        let deps = Arc::new(library::LibraryDeps {
            pool: infra.pool.clone(),
            publisher,
            rules: Rules::from_settings(&infra.settings.library),
            clock: self.clock.clone(),
            metrics: infra.metrics.clone(),
            poison_delivery_limit: infra.settings.tasks.poison_delivery_limit,
        });
        library::rehearse_connections(
            &deps,
            infra.settings.database.pool_size,
            REHEARSAL_LIMIT,
            &stop.graceful,
        )
        .await;
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
        let b = &infra.broker;
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
        reaper_stop.cancel();
        let _ = reaper.await;
        let _ = janitor.await;
        let _ = counters.await;
        let _ = scheduler.await;
        let _ = hold_shelf.await;
        let _ = cancel_watch.await;
        ops_stop.cancel();
        match ops.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "operations server"),
            Err(e) => tracing::warn!(error = %e, "operations server task"),
            Ok(Ok(())) => {}
        }
        infra.broker.close().await;
        Ok(())
    }
}
