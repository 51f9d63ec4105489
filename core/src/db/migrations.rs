//! Applies the plain SQL files in `migrations/` in order, once each.
//!
//! A file that changed after it was applied is an error: landed migrations are
//! never edited, a new file is added instead.

use anyhow::{Context, bail};
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

/// Every migration, in order. Add new files at the end.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "tasks",
        include_str!("../../../migrations/0001_tasks.sql"),
    ),
    (
        2,
        "library",
        include_str!("../../../migrations/0002_library.sql"),
    ),
    (
        3,
        "library_batches",
        include_str!("../../../migrations/0003_library_batches.sql"),
    ),
    (
        4,
        "task_reaper",
        include_str!("../../../migrations/0004_task_reaper.sql"),
    ),
    (
        5,
        "outcome_codes",
        include_str!("../../../migrations/0005_outcome_codes.sql"),
    ),
    (
        6,
        "task_control",
        include_str!("../../../migrations/0006_task_control.sql"),
    ),
    (
        7,
        "library_admin",
        include_str!("../../../migrations/0007_library_admin.sql"),
    ),
    (
        8,
        "task_retention",
        include_str!("../../../migrations/0008_task_retention.sql"),
    ),
    (
        9,
        "delayed_tasks",
        include_str!("../../../migrations/0009_delayed_tasks.sql"),
    ),
    (
        10,
        "holds",
        include_str!("../../../migrations/0010_holds.sql"),
    ),
    (
        11,
        "api_keys",
        include_str!("../../../migrations/0011_api_keys.sql"),
    ),
    (
        13,
        "flat_counters",
        include_str!("../../../migrations/0013_flat_counters.sql"),
    ),
    (
        14,
        "history_retention",
        include_str!("../../../migrations/0014_history_retention.sql"),
    ),
    (
        15,
        "history_per_batch",
        include_str!("../../../migrations/0015_history_per_batch.sql"),
    ),
    (
        16,
        "hot_settles",
        include_str!("../../../migrations/0016_hot_settles.sql"),
    ),
    (
        17,
        "generic_plans",
        include_str!("../../../migrations/0017_generic_plans.sql"),
    ),
    (
        18,
        "fewer_task_indexes",
        include_str!("../../../migrations/0018_fewer_task_indexes.sql"),
    ),
    (
        19,
        "loans_by_the_batch",
        include_str!("../../../migrations/0019_loans_by_the_batch.sql"),
    ),
    (
        20,
        "renewals_and_returns_by_the_batch",
        include_str!("../../../migrations/0020_renewals_and_returns_by_the_batch.sql"),
    ),
    (
        21,
        "no_table_scans_in_circulation",
        include_str!("../../../migrations/0021_no_table_scans_in_circulation.sql"),
    ),
    (
        22,
        "key_changes_announced",
        include_str!("../../../migrations/0022_key_changes_announced.sql"),
    ),
];

/// Arbitrary constant: the advisory lock that serialises concurrent runners
/// (an API and a worker starting at the same moment).
const LOCK_KEY: i64 = 0x6269_626c_696f;

/// Applies pending migrations and returns the versions it applied.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL to run migrations")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .context("Failed to take the migration lock")?;
    let result = apply_pending(&mut client).await;
    // The lock is released even when a migration failed.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock.context("Failed to release the migration lock")?;
    Ok(applied)
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> anyhow::Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .context("Failed to create schema_migrations")?;
    let rows = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await
        .context("Failed to read schema_migrations")?;
    let done: std::collections::HashMap<i32, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        match done.get(&version) {
            Some(existing) if *existing == checksum => continue,
            Some(_) => bail!(
                "migration {version:04} ({name}) changed after it was applied; add a new migration instead"
            ),
            None => {}
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("Failed to apply migration {version:04} ({name})"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        applied.push(version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_in_migrations_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = super::MIGRATIONS
            .iter()
            .map(|(v, name, _)| format!("{v:04}_{name}.sql"))
            .collect();
        assert_eq!(files, listed);
    }
}
