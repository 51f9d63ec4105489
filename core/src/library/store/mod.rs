//! Library reads and writes in PostgreSQL, one file per job. Reads serve the
//! query endpoints directly; writes are the circulation functions of the
//! migrations.
//!
//! # Layout
//! - [`admin`]: adding and changing titles, copies and patrons.
//! - [`catalogue`]: titles, their copies per branch, search by title.
//! - [`loans`]: loans and operations as the API shows them, and the open loan
//!   a renewal or return names.
//! - [`history`]: the circulation history, counted per minute.
//! - [`holds`]: placing, cancelling, listing and expiring holds.
//! - [`settle`]: recording operations as pending and the circulation
//!   functions that settle loans, renewals and returns.

mod admin;
mod catalogue;
mod history;
mod holds;
mod loans;
mod settle;

pub use admin::*;
pub use catalogue::*;
pub use history::*;
pub use holds::*;
pub use loans::*;
pub use settle::*;

use tokio_postgres::GenericClient;

use crate::config::Branch;

/// Makes sure every configured branch has its row (names may change).
pub async fn ensure_branches(
    db: &impl GenericClient,
    branches: &[Branch],
) -> Result<(), tokio_postgres::Error> {
    let codes: Vec<&str> = branches.iter().map(|b| b.code.as_str()).collect();
    let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    db.execute(
        "INSERT INTO branches (code, name) SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name",
        &[&codes, &names],
    )
    .await?;
    Ok(())
}
