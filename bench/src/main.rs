//! bibliomq-bench: load generators for the benchmarks in `scripts/`.
//!
//! Every number it prints is measured end to end against running services:
//! requests go over HTTP to the API, and completion times are read back from
//! PostgreSQL, where the workers commit them.

mod library;
mod stats;
mod tasks;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit tasks over HTTP and measure submit → result committed.
    Tasks(tasks::Args),
    /// A circulation mix (loans, renewals, returns) over HTTP.
    Library(library::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tasks(args) => tasks::run(args).await,
        Command::Library(args) => library::run(args).await,
    }
}
