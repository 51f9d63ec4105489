use anyhow::Context;
use bibliomq_core::{config::Settings, db, ops, shutdown, telemetry};
use clap::{Parser, Subcommand};

/// bibliomq task and library workers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and process work until SIGTERM or ctrl-c (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Ask this machine's worker operations server for `/readyz`: exit 0
    /// when it answers 200, 1 otherwise (for container healthchecks).
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Healthcheck => {
            ops::healthcheck(&settings.worker.ops_host, settings.worker.ops_port).await
        }
        Command::Migrate => {
            let applied = db::migrate_database(&settings.database).await?;
            tracing::info!(?applied, "migrations up to date");
            Ok(())
        }
        Command::Run => {
            let token = shutdown::on_signals();
            let app = bibliomq_workers::WorkerApp::build(settings)
                .await
                .context("Failed to start the workers")?;
            app.run_until_stopped(token).await
        }
    }
}
