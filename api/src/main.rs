use anyhow::Context;
use bibliomq_core::{config::Settings, db, shutdown, telemetry};
use clap::{Parser, Subcommand};

/// bibliomq HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP until SIGTERM or ctrl-c (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let pool = db::pool(&settings.database)?;
            let applied = db::migrate(&pool).await?;
            tracing::info!(?applied, "migrations up to date");
            Ok(())
        }
        Command::Serve => {
            let token = shutdown::on_signals();
            let app = bibliomq_api::Application::build(settings)
                .await
                .context("Failed to start the API")?;
            app.run_until_stopped(token).await
        }
    }
}
