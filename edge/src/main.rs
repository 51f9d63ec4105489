use anyhow::Context;
use bibliomq_core::{config::Settings, shutdown, telemetry};
use clap::Parser;

/// bibliomq edge: ZeroMQ requests and event feed, legacy TCP task gateways.
/// Configured by the BIBLIOMQ_EDGE_* variables (see .env.example).
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let token = shutdown::on_signals();
    let app = bibliomq_edge::EdgeApp::build(settings)
        .await
        .context("Failed to start the edge")?;
    app.run_until_stopped(token).await
}
