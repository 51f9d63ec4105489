use anyhow::Context;
use bibliomq_core::{
    config::Settings,
    db,
    library::{
        Rules,
        seed::{SeedOptions, seed},
    },
    shutdown, telemetry,
};
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
    /// Load the deterministic demo catalogue (only into an empty catalogue).
    Seed {
        /// Generated titles, on top of the well-known ones.
        #[arg(long, default_value_t = 1_200)]
        titles: usize,
        #[arg(long, default_value_t = 300)]
        patrons: usize,
        /// Fewest copies of a title per branch.
        #[arg(long, default_value_t = 1)]
        min_copies: u32,
        /// Most copies of a title per branch.
        #[arg(long, default_value_t = 3)]
        max_copies: u32,
        /// Share of copies that start on loan (0 to 1).
        #[arg(long, default_value_t = 0.15)]
        on_loan: f64,
    },
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
        Command::Seed {
            titles,
            patrons,
            min_copies,
            max_copies,
            on_loan,
        } => {
            let pool = db::pool(&settings.database)?;
            db::migrate(&pool).await?;
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let options = SeedOptions {
                titles,
                min_copies,
                max_copies: max_copies.max(min_copies),
                patrons,
                on_loan: on_loan.clamp(0.0, 1.0),
            };
            let rules = Rules::from_settings(&settings.library);
            let report = seed(
                &tx,
                &settings.library.branches,
                &options,
                &rules,
                chrono::Utc::now(),
            )
            .await
            .context("Failed to load the catalogue")?;
            tx.commit().await?;
            match report {
                Some(r) => println!(
                    "loaded {} titles, {} copies, {} patrons, {} loans",
                    r.titles, r.copies, r.patrons, r.loans
                ),
                None => println!("the catalogue already has titles; nothing loaded"),
            }
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
