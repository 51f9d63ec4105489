//! The connections every bibliomq process opens, opened the same way in
//! each: the PostgreSQL pool (with migrations and the configured branches
//! when `BIBLIOMQ_MIGRATE_ON_START` is on), the supervised RabbitMQ
//! connection, the object store and the process's metrics.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;

use crate::{
    broker::{Broker, Publisher, Topology},
    clock::Clock,
    commands::Commands,
    config::Settings,
    db,
    metrics::Metrics,
    ops::Probes,
    storage::ObjectStore,
};

pub struct Infra {
    pub settings: Settings,
    pub pool: Pool,
    pub broker: Broker,
    pub store: ObjectStore,
    pub metrics: Metrics,
}

impl Infra {
    /// Opens everything. `name` is how the broker connection shows in the
    /// management UI. With a non-zero `broker_wait` it waits that long for
    /// the first broker connection, so a normal start serves its first
    /// request with the broker in place; a broker that is down does not stop
    /// the start (connections come when they can).
    pub async fn connect(
        settings: Settings,
        name: &str,
        broker_wait: Duration,
    ) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        if settings.database.migrate_on_start {
            db::migrate(&pool)
                .await
                .context("Failed to apply migrations")?;
            let client = pool
                .get()
                .await
                .context("Failed to connect to PostgreSQL")?;
            crate::library::store::ensure_branches(&**client, &settings.library.branches)
                .await
                .context("Failed to record the branches")?;
        }
        let broker = Broker::start(&settings.amqp.url, name, Topology::new(&settings.tasks));
        if !broker_wait.is_zero() && !broker.wait_connected(broker_wait).await {
            tracing::warn!(
                "RabbitMQ is not reachable yet; work that needs it is refused until it is"
            );
        }
        Ok(Self {
            store: ObjectStore::new(&settings.s3),
            settings,
            pool,
            broker,
            metrics: Metrics::new(),
        })
    }

    /// A confirm-mode publisher on the process's connection.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(
            self.broker.clone(),
            self.settings.amqp.confirm_timeout,
            self.metrics.clone(),
        )
    }

    /// What `/readyz` checks.
    pub fn probes(&self) -> Probes {
        Probes {
            broker: self.broker.clone(),
            pool: self.pool.clone(),
            store: self.store.clone(),
        }
    }

    /// The command layer over these connections.
    pub fn commands(&self, clock: Clock) -> Commands {
        Commands::new(
            self.pool.clone(),
            self.publisher(),
            self.store.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            clock,
        )
    }
}
