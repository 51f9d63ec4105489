//! The command layer: every transport (HTTP, ZeroMQ, TCP) calls these and
//! nothing else, so each rule and each validation exists exactly once.

mod tasks;

use std::sync::Arc;

use deadpool_postgres::Pool;

pub use tasks::{SubmittedTask, TaskInserter};

use crate::{broker::Publisher, config::Settings, metrics::Metrics, storage::ObjectStore};

/// What the commands need, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    publisher: Publisher,
    store: ObjectStore,
    settings: Settings,
    metrics: Metrics,
    task_inserts: TaskInserter,
}

impl Commands {
    pub fn new(
        pool: Pool,
        publisher: Publisher,
        store: ObjectStore,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let task_inserts = tasks::inserter(pool.clone());
        Self {
            inner: Arc::new(Inner {
                pool,
                publisher,
                store,
                settings,
                metrics,
                task_inserts,
            }),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    pub fn store(&self) -> &ObjectStore {
        &self.inner.store
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}
