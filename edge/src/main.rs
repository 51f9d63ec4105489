use anyhow::Context;
use bibliomq_core::{config::Settings, ops, shutdown, telemetry};
use clap::{Parser, Subcommand};

/// bibliomq edge: ZeroMQ requests and event feed, legacy TCP task gateways.
/// Configured by the BIBLIOMQ_EDGE_* variables (see .env.example).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sockets until SIGTERM or ctrl-c (the default).
    Run,
    /// Ask this machine's edge operations server for `/readyz`: exit 0 when
    /// it answers 200, 1 otherwise (for container healthchecks).
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Healthcheck => ops::healthcheck(&settings.edge.host, settings.edge.ops_port).await,
        Command::Run => {
            let token = shutdown::on_signals();
            let app = bibliomq_edge::EdgeApp::build(settings)
                .await
                .context("Failed to start the edge")?;
            app.run_until_stopped(token).await
        }
    }
}
