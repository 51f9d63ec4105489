//! bibliomq-bench: load generators for the benchmarks in `scripts/`.
//!
//! Every number it prints is measured end to end against running services:
//! requests go over HTTP to the API, and completion times are read back from
//! PostgreSQL, where the workers commit them.

mod library;
mod reads;
mod scheduled;
mod serial;
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
    /// Delayed tasks: how late each starts after its `run_at`.
    Scheduled(scheduled::Args),
    /// The read routes, each at a fixed rate: p50 and p99 per route.
    Reads(reads::Args),
}

/// What a benchmark runs against, and how it reports.
#[derive(clap::Args)]
pub struct Target {
    /// Base URL of the API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// PostgreSQL database the workers write to (completion times are read there).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/bibliomq")]
    pub(crate) database_url: String,
    /// Process ids whose peak memory to report, as name=pid.
    #[arg(long = "process", value_parser = stats::parse_process)]
    pub(crate) processes: Vec<(String, u32)>,
    /// Print the results as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// API key sent as `Authorization: Bearer` (servers with BIBLIOMQ_AUTH=on).
    #[arg(long, env = "BIBLIOMQ_API_TOKEN", hide_env_values = true)]
    key: Option<String>,
}

impl Target {
    /// The headers every request carries: the key, when there is one.
    pub fn headers(&self) -> anyhow::Result<reqwest::header::HeaderMap> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = self.key.as_deref().filter(|k| !k.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(headers)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tasks(args) if args.one_at_a_time => serial::run(args).await,
        Command::Tasks(args) => tasks::run(args).await,
        Command::Library(args) => library::run(args).await,
        Command::Scheduled(args) => scheduled::run(args).await,
        Command::Reads(args) => reads::run(args).await,
    }
}
