//! The command layer: every transport (HTTP, ZeroMQ, TCP) calls these and
//! nothing else, so each rule and each validation exists exactly once.

mod admin;
mod dashboard;
mod dead;
mod events;
mod holds;
mod keys;
mod library;
mod tasks;

use std::sync::Arc;

use deadpool_postgres::Pool;

pub use admin::{
    AUTHOR_MAX, AUTHORS_MAX, EMAIL_MAX, IMPORT_MAX_ROWS, ImportReport, NAME_MAX, NewPatron,
    NewTitle, PATRON_QUERY_MAX, PATRONS_DEFAULT_LIMIT, PATRONS_MAX_LIMIT, PatronEdit, PatronPage,
    REASON_MAX, RowRejected, TITLE_MAX, TitleChange, YEAR_MAX, YEAR_MIN,
};
pub use dashboard::{
    BranchSeries, CIRCULATION_DEFAULT_MINUTES, CIRCULATION_MAX_MINUTES, Circulation, KindCount,
    TaskCounts,
};
pub use dead::{
    DEAD_LIST_MAX, DEAD_REACH, DeadLetter, DeadLetterList, DeadLetterReplay, DeadQueue,
    ReplaySelection,
};
pub use events::{EVENT_PATTERNS_MAX, EventFeed};
pub use holds::{HoldCancel, HoldCancelled, HoldRequest, PatronHolds, TitleHolds, hold_id};
pub use keys::{KeyCreated, KeyInfo, NewKey};
pub use library::{
    CirculationRequest, LoanReceipt, LoanRequest, OperationAccepted, SEARCH_MAX_LIMIT,
    SEARCH_MAX_WORDS,
};
pub use tasks::{
    BATCH_MAX, LIST_MAX, SubmittedTask, TaskCancellation, TaskInserter, TaskSubmission, WAIT_MAX_MS,
};

use crate::{
    broker::{Publisher, rpc::RpcClient},
    clock::Clock,
    config::Settings,
    library::Rules,
    metrics::Metrics,
    storage::ObjectStore,
};

/// What the commands need, shared by every request, and who they act for
/// (see [`Commands::acting_as`]). Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    inner: Arc<Inner>,
    /// `None`: nobody, every command answers `unauthorized`.
    caller: Option<Arc<crate::auth::Caller>>,
}

struct Inner {
    pool: Pool,
    publisher: Publisher,
    rpc: RpcClient,
    store: ObjectStore,
    settings: Settings,
    rules: Rules,
    metrics: Metrics,
    clock: Clock,
    task_inserts: TaskInserter,
    task_publishes: tasks::TaskPublisher,
    request_inserts: library::RequestInserter,
    loan_calls: library::LoanCaller,
    circulation_publishes: library::CirculationPublisher,
    /// Listing and replaying dead letters hold a queue's messages; one at a
    /// time in this process, so two do not each see half of them.
    dead_letters: tokio::sync::Mutex<()>,
    /// Key look-ups and per-key budgets.
    gate: Arc<crate::auth::Gate>,
    /// Word of finished tasks, for those waiting on them.
    wakeups: crate::tasks::wakeups::Wakeups,
    /// Live feeds this process may still open (BIBLIOMQ_LIVE_FEEDS_MAX).
    live_feeds: Arc<tokio::sync::Semaphore>,
}

impl Commands {
    pub fn new(
        pool: Pool,
        publisher: Publisher,
        store: ObjectStore,
        settings: Settings,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        let task_inserts = tasks::inserter(pool.clone());
        let task_publishes = tasks::task_publisher(publisher.clone());
        let request_inserts = library::request_inserter(pool.clone());
        let rpc = RpcClient::new(publisher.broker().clone(), settings.amqp.confirm_timeout);
        let loan_calls = library::loan_caller(rpc.clone());
        let circulation_publishes = library::circulation_publisher(publisher.clone());
        let wakeups = crate::tasks::wakeups::Wakeups::new(&settings.database.url);
        let live_feeds = Arc::new(tokio::sync::Semaphore::new(
            settings.dashboard.live_feeds_max,
        ));
        let gate = Arc::new(crate::auth::Gate::new(
            settings.auth.cache_ttl,
            settings.auth.rate_per_sec,
            settings.auth.rate_burst,
        ));
        Self {
            // The process's own use (CLI sub-commands); transports start
            // from `for_transport` instead.
            caller: Some(Arc::new(crate::auth::Caller::internal())),
            inner: Arc::new(Inner {
                gate,
                pool,
                publisher,
                rpc,
                store,
                rules: Rules::from_settings(&settings.library),
                settings,
                metrics,
                clock,
                task_inserts,
                task_publishes,
                request_inserts,
                loan_calls,
                circulation_publishes,
                dead_letters: tokio::sync::Mutex::new(()),
                live_feeds,
                wakeups,
            }),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.inner.rpc
    }

    pub fn store(&self) -> &ObjectStore {
        &self.inner.store
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn rules(&self) -> Rules {
        self.inner.rules
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}
