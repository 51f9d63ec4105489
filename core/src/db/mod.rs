//! PostgreSQL connection pool, the migration runner and the counters kept
//! by triggers ([`counters`]).

pub mod counters;
mod migrations;
pub mod notifications;

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, config::TargetSessionAttrs};

pub use migrations::{MIGRATIONS, migrate};

use crate::config::DatabaseSettings;

/// Fails (division by zero) on a server in recovery, i.e. a standby.
const PRIMARY_CHECK: &str = "SELECT 1 / (NOT pg_is_in_recovery())::int";

/// Builds a pool. Connections are opened lazily, so this succeeds while the
/// database is down; the first query then fails fast instead of hanging.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let pg = config(&settings.url)?;
    let recycling_method = if pg.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
        // A cluster behind a multi-host URL: new connections find the
        // primary by themselves, but a connection kept from before a
        // failover may sit on a server that is now a read-only standby
        // (pg_auto_failover restarts a demoted primary, which closes it, but
        // not every tool does). Each checkout checks: the division fails on
        // a standby, and the pool drops that connection and opens one to
        // the new primary. Checkouts are per batch, not per operation, so
        // the round trip is cheap.
        RecyclingMethod::Custom(PRIMARY_CHECK.to_owned())
    } else {
        // A cheap `is_closed` check; a dead connection surfaces as a query
        // error and the pool replaces it on the next checkout.
        RecyclingMethod::Fast
    };
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method });
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("Failed to build the PostgreSQL pool")
}

/// The connection settings of `url` (BIBLIOMQ_DATABASE_URL), as every
/// connection of the process opens them: a short connect timeout, and
/// `bibliomq` as the application name unless the URL gives one.
pub fn config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .context("BIBLIOMQ_DATABASE_URL is not a valid PostgreSQL URL")?;
    pg.connect_timeout(Duration::from_secs(3));
    if pg.get_application_name().is_none() {
        pg.application_name("bibliomq");
    }
    Ok(pg)
}

/// Connects and applies the pending migrations: the `migrate` subcommand.
pub async fn migrate_database(settings: &DatabaseSettings) -> anyhow::Result<Vec<i32>> {
    let pool = pool(settings)?;
    migrate(&pool).await
}

/// Takes the transaction-scoped advisory lock `key` unless another
/// session holds it: `false` then (another process is doing the same work
/// now). Released when `tx` ends. What the periodic passes that every
/// worker process runs (the retention passes) take, so one does each.
pub async fn try_xact_lock(
    tx: &deadpool_postgres::Transaction<'_>,
    key: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
        .await?
        .get(0))
}

/// True when the error means PostgreSQL could not be reached or the
/// connection broke, as opposed to a query PostgreSQL rejected.
pub fn is_unavailable(err: &deadpool_postgres::PoolError) -> bool {
    match err {
        deadpool_postgres::PoolError::Backend(e) => e.as_db_error().is_none() || is_failing_over(e),
        _ => true,
    }
}

/// The server refused because it is shutting down, starting up, or no
/// longer the primary: what a failover looks like from a connection that
/// is still open. Another server (or the same one, soon) will take it.
pub fn is_failing_over(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::READ_ONLY_SQL_TRANSACTION
            || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CRASH_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW
    })
}

/// Errors that only mean two transactions met (a unique key taken at the
/// same instant, a deadlock, a serialization failure): trying again is safe.
pub fn is_contention(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A database failure that can be shared by every item of a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DbFailure {
    /// PostgreSQL could not be reached (as opposed to rejecting a statement).
    pub unavailable: bool,
    pub message: String,
}

impl From<deadpool_postgres::PoolError> for DbFailure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self {
            unavailable: is_unavailable(&e),
            message: error_chain(&e),
        }
    }
}

/// An error with its causes: PostgreSQL's own message ("too many clients",
/// "deadlock detected") hides behind a bare "db error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        deadpool_postgres::PoolError::Backend(e).into()
    }
}
