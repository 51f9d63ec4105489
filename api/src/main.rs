use anyhow::Context;
use bibliomq_core::{
    config::{HumanDuration, Settings},
    db,
    library::seed::{SeedOptions, seed_database},
    ops, shutdown, telemetry,
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
    /// Run one retention pass by hand: delete the tasks that finished longer
    /// ago than `--older-than`, with their stored results; then apply the
    /// circulation history's retention and anonymisation (when set, or
    /// asked for here); print what was removed.
    Purge {
        /// `90s`, `30m`, `1h`, `7d` (default: BIBLIOMQ_TASK_RETENTION).
        #[arg(long)]
        older_than: Option<HumanDuration>,
        /// Delete circulation-history rows older than this (default:
        /// BIBLIOMQ_HISTORY_RETENTION; unset keeps them all).
        #[arg(long)]
        history_older_than: Option<HumanDuration>,
        /// Remove the patron from history rows and settled operations older
        /// than this (default: BIBLIOMQ_HISTORY_ANONYMISE_AFTER; unset: none).
        #[arg(long)]
        anonymise_older_than: Option<HumanDuration>,
    },
    /// API keys (README "API keys and roles"): make, list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Ask this machine's API for `/readyz`: exit 0 when it answers 200,
    /// 1 otherwise (for container healthchecks; no curl needed).
    Healthcheck,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key and print it: this is the only time it is shown.
    Create {
        /// admin, librarian, patron or service.
        #[arg(long)]
        role: String,
        /// A librarian key's branch (absent: every branch).
        #[arg(long)]
        branch: Option<String>,
        /// A patron key's patron (required for that role).
        #[arg(long)]
        patron: Option<String>,
        /// A note: whose key it is, what for.
        #[arg(long)]
        name: Option<String>,
        /// Print only the key (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// List the keys (never their secrets).
    List {
        /// Revoked keys too.
        #[arg(long)]
        revoked: bool,
    },
    /// Revoke a key by its id (or the whole key).
    Revoke { id: String },
}

async fn keys(settings: Settings, command: KeysCommand) -> anyhow::Result<()> {
    let infra = bibliomq_core::infra::Infra::connect(
        settings,
        "bibliomq-api-keys",
        std::time::Duration::ZERO,
    )
    .await?;
    // The CLI acts as the process itself: whoever can run it here can
    // already reach the database.
    let commands = infra.commands(bibliomq_core::clock::Clock::system());
    let show = |k: &bibliomq_core::commands::KeyInfo| {
        format!(
            "{}  {:<9}  branch={}  patron={}  name={}  created={}{}",
            k.id,
            k.role.as_str(),
            k.branch.as_deref().unwrap_or("-"),
            k.patron.as_deref().unwrap_or("-"),
            k.name.as_deref().unwrap_or("-"),
            k.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            k.revoked_at.map_or(String::new(), |r| format!(
                "  revoked={}",
                r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
        )
    };
    let result = match command {
        KeysCommand::Create {
            role,
            branch,
            patron,
            name,
            quiet,
        } => commands
            .create_key(bibliomq_core::commands::NewKey {
                role,
                branch,
                patron,
                name,
            })
            .await
            .map(|created| {
                if quiet {
                    println!("{}", created.key);
                } else {
                    println!("{}", show(&created.info));
                    println!("key (shown this once; keep it secret): {}", created.key);
                }
            }),
        KeysCommand::List { revoked } => commands.list_keys(revoked).await.map(|keys| {
            for k in &keys {
                println!("{}", show(k));
            }
            if keys.is_empty() {
                println!("no keys");
            }
        }),
        KeysCommand::Revoke { id } => commands
            .revoke_key(&id)
            .await
            .map(|k| println!("revoked: {}", show(&k))),
    };
    infra.broker.close().await;
    result.map_err(|e| anyhow::anyhow!("{} ({})", e.public_message(), e.code()))
}

/// The circulation history's part of `purge`: one pass, and what it did.
async fn history_pass(
    pool: &deadpool_postgres::Pool,
    retention: Option<std::time::Duration>,
    anonymise: Option<std::time::Duration>,
    metrics: &bibliomq_core::metrics::Metrics,
) -> anyhow::Result<()> {
    use bibliomq_core::library::retention::{HistoryCutoffs, purge_history};
    let cutoffs = HistoryCutoffs::at(chrono::Utc::now(), retention, anonymise);
    let when =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if cutoffs.is_nothing() {
        println!(
            "circulation history kept whole (BIBLIOMQ_HISTORY_RETENTION and \
             BIBLIOMQ_HISTORY_ANONYMISE_AFTER unset)"
        );
        return Ok(());
    }
    match purge_history(pool, cutoffs, metrics).await? {
        Some(p) => {
            match cutoffs.delete_before {
                Some(t) => println!(
                    "removed {} circulation-history row(s) from before {}",
                    p.deleted,
                    when(t)
                ),
                None => {
                    println!("circulation history: none removed (BIBLIOMQ_HISTORY_RETENTION unset)")
                }
            }
            if let Some(t) = cutoffs.anonymise_before {
                println!(
                    "anonymised {} circulation-history row(s) and {} operation(s), and forgot {} returned loan(s), from before {}",
                    p.anonymised,
                    p.operations_anonymised,
                    p.loans_forgotten,
                    when(t)
                );
            }
        }
        None => println!(
            "another process is applying the history's retention now; nothing changed by this one"
        ),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys { command } => keys(settings, command).await,
        Command::Healthcheck => ops::healthcheck(&settings.api.host, settings.api.port).await,
        Command::Migrate => {
            let applied = db::migrate_database(&settings.database).await?;
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
            let options = SeedOptions {
                titles,
                min_copies,
                max_copies: max_copies.max(min_copies),
                patrons,
                on_loan: on_loan.clamp(0.0, 1.0),
            };
            match seed_database(&settings, &options, chrono::Utc::now()).await? {
                Some(r) => println!(
                    "loaded {} titles, {} copies, {} patrons, {} loans",
                    r.titles, r.copies, r.patrons, r.loans
                ),
                None => println!("the catalogue already has titles; nothing loaded"),
            }
            Ok(())
        }
        Command::Purge {
            older_than,
            history_older_than,
            anonymise_older_than,
        } => {
            let older_than = older_than.map_or(settings.tasks.retention, |d| d.0);
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(older_than).context("--older-than is too long")?;
            let pool = db::pool(&settings.database)?;
            let store = bibliomq_core::storage::ObjectStore::new(&settings.s3);
            let metrics = bibliomq_core::metrics::Metrics::new();
            match bibliomq_core::tasks::retention::purge(&pool, &store, cutoff, &metrics).await? {
                Some(p) => println!(
                    "removed {} task(s) finished before {} and {} stored result(s)",
                    p.tasks,
                    cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    p.objects
                ),
                None => println!("another process is purging now; nothing removed by this one"),
            }
            let retention = history_older_than
                .map(|d| d.0)
                .or(settings.library.history_retention);
            let anonymise = anonymise_older_than
                .map(|d| d.0)
                .or(settings.library.history_anonymise_after);
            history_pass(&pool, retention, anonymise, &metrics).await
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
