//! bibliomq-client: the `bibliomq` command-line client.
//!
//! A thin HTTP client of the API: every rule and validation stays on the
//! server (the command layer), and the client shows its answers, including
//! its errors (code, message, field), as text for people or as JSON with
//! `--json`. On top of single commands it replays request files, the way
//! branch systems used to send their day's operations, and measures them.
//!
//! # Layout
//! - [`cli`]: the command line (clap), with the exit codes in its help.
//! - [`error`]: what can fail, how it is shown, and its exit code.
//! - [`http`]: requests to the API (token, timeouts) and their answers.
//! - [`output`]: JSON or aligned text.
//! - [`follow`]: polling accepted work until it settles, with a deadline.
//! - [`tasks`]: `task submit|get|list|result`.
//! - [`library`]: `loan`, `renew`, `return`, `operation`, `book`, `search`,
//!   `loans`, `branches`, `status`.
//! - [`admin`]: `title add`, `copy add|withdraw`, `patron add|block|unblock|show|list`.
//! - [`import`]: `import titles|patrons <file.csv>`, streamed in batches.
//! - [`holds`]: `hold place|cancel|list`.
//! - [`events`]: `events`: the live outcome events, one a line.
//! - [`replay`]: `run <file>`: the request-file format, the paced concurrent
//!   replay, its summary and its HTML report.

pub mod admin;
pub mod cli;
pub mod dead;
pub mod error;
pub mod events;
pub mod follow;
pub mod holds;
pub mod http;
pub mod import;
pub mod library;
pub mod output;
pub mod replay;
pub mod tasks;

use std::time::Duration;

use clap::Parser;

use cli::{
    Cli, Command, CopyCommand, DeadCommand, HoldCommand, ImportCommand, PatronCommand, TaskCommand,
    TitleCommand,
};
use error::{Failure, exit};
use output::Output;

/// Parses the command line, runs the command, prints any failure, and
/// returns the exit code.
pub async fn main_with_args(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout and errors to stderr,
            // with its own exit codes (0 and 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    let out = Output {
        json: cli.global.json,
    };
    match run(cli).await {
        Ok(()) => exit::OK,
        Err(Failure::Reported(code)) => code,
        Err(failure) => {
            if out.json {
                out.json(&failure.to_json());
            } else {
                eprintln!("error: {}", failure.describe());
            }
            failure.exit_code()
        }
    }
}

fn seconds(s: f64, what: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::Usage(format!("{what} must be a positive number of seconds")))
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    let api = http::Api::new(
        &g.api_url,
        g.token.clone(),
        seconds(g.request_timeout, "--request-timeout")?,
    )?;
    let out = Output { json: g.json };
    match cli.command {
        Command::Task(t) => match t {
            TaskCommand::Submit {
                action,
                payload,
                string,
                at,
                delay,
                wait,
                wait_for,
                file,
                batch_size,
            } => {
                if let Some(file) = file {
                    return tasks::submit_file(&api, out, &file, usize::from(batch_size)).await;
                }
                let Some(action) = action else {
                    return Err(Failure::Usage("give an action (or --file FILE)".to_owned()));
                };
                let payload = tasks::parse_payload(&payload.join(" "), string);
                let schedule = tasks::Schedule { at, delay };
                let wait = if wait {
                    Some(seconds(wait_for.timeout, "--wait-timeout")?)
                } else {
                    None
                };
                tasks::submit(&api, out, &action, payload, &schedule, wait).await
            }
            TaskCommand::Get { id } => tasks::get(&api, out, &id).await,
            TaskCommand::Cancel { id } => tasks::cancel(&api, out, &id).await,
            TaskCommand::List {
                state,
                action,
                limit,
                before,
            } => {
                tasks::list(
                    &api,
                    out,
                    state.as_deref(),
                    action.as_deref(),
                    limit,
                    before.as_deref(),
                )
                .await
            }
            TaskCommand::Result { id, output } => {
                tasks::result(&api, out, &id, output.as_deref()).await
            }
        },
        Command::Dead(d) => match d {
            DeadCommand::List {
                queue,
                limit,
                cursor,
            } => dead::list(&api, out, &queue, limit, cursor.as_deref()).await,
            DeadCommand::Replay { queue, all, ids } => {
                dead::replay(&api, out, &queue, &ids, all).await
            }
        },
        Command::Loan(a) => {
            let book = match (a.isbn, a.title) {
                (_, Some(title)) => library::Book::Title(title),
                (Some(isbn), None) => library::Book::Isbn(isbn),
                (None, None) => {
                    return Err(Failure::Usage("give the ISBN or --title".into()));
                }
            };
            library::loan(
                &api,
                out,
                &book,
                &a.patron,
                &a.branch,
                a.idempotency_key.as_deref(),
            )
            .await
        }
        Command::Renew(a) => circulate(&api, out, library::Circulation::Renewal, a).await,
        Command::Return(a) => circulate(&api, out, library::Circulation::Return, a).await,
        Command::Operation { id, wait, wait_for } => {
            let wait = if wait {
                Some(seconds(wait_for.timeout, "--wait-timeout")?)
            } else {
                None
            };
            library::operation(&api, out, &id, wait).await
        }
        Command::Book { isbn } => library::book(&api, out, &isbn).await,
        Command::Search { words, limit } => library::search(&api, out, &words, limit).await,
        Command::Loans { patron, all } => library::loans(&api, out, &patron, all).await,
        Command::Branches => library::branches(&api, out).await,
        Command::Title(TitleCommand::Add {
            isbn,
            title,
            authors,
            year,
        }) => {
            let fields = admin::TitleFields {
                isbn: &isbn,
                title: &title,
                authors: &authors,
                year,
            };
            admin::add_title(&api, out, &fields).await
        }
        Command::Copy(CopyCommand::Add {
            isbn,
            branch,
            barcode,
        }) => admin::add_copy(&api, out, &isbn, &branch, barcode.as_deref()).await,
        Command::Copy(CopyCommand::Withdraw { barcode }) => {
            admin::withdraw_copy(&api, out, &barcode).await
        }
        Command::Patron(p) => match p {
            PatronCommand::Add { id, name, email } => {
                admin::add_patron(&api, out, &id, &name, email.as_deref()).await
            }
            PatronCommand::Block { id, reason } => {
                let mut change = serde_json::Map::new();
                change.insert("blocked".into(), serde_json::json!({ "reason": reason }));
                admin::change_patron(&api, out, &id, change).await
            }
            PatronCommand::Unblock { id } => {
                let mut change = serde_json::Map::new();
                change.insert("blocked".into(), serde_json::Value::Null);
                admin::change_patron(&api, out, &id, change).await
            }
            PatronCommand::Show { id } => admin::show_patron(&api, out, &id).await,
            PatronCommand::List {
                query,
                limit,
                cursor,
                all,
            } => {
                admin::list_patrons(&api, out, query.as_deref(), limit, cursor.as_deref(), all)
                    .await
            }
        },
        Command::Import(i) => match i {
            ImportCommand::Titles(a) => import::run(&api, out, import::Kind::Titles, &a).await,
            ImportCommand::Patrons(a) => import::run(&api, out, import::Kind::Patrons, &a).await,
        },
        Command::Hold(h) => match h {
            HoldCommand::Place {
                isbn,
                title,
                patron,
                branch,
            } => {
                let book = match (isbn, title) {
                    (_, Some(title)) => library::Book::Title(title),
                    (Some(isbn), None) => library::Book::Isbn(isbn),
                    (None, None) => {
                        return Err(Failure::Usage("give the ISBN or --title".into()));
                    }
                };
                holds::place(&api, out, &book, &patron, &branch).await
            }
            HoldCommand::Cancel { id, patron } => {
                holds::cancel(&api, out, &id, patron.as_deref()).await
            }
            HoldCommand::List { patron, isbn, all } => match (patron, isbn) {
                (Some(patron), _) => holds::patron(&api, out, &patron, all).await,
                (None, Some(isbn)) => holds::title(&api, out, &isbn).await,
                (None, None) => Err(Failure::Usage("give --patron or --isbn".into())),
            },
        },
        Command::Status => library::status(&api, out).await,
        Command::Events { keys, count } => events::follow(&api, out, keys.as_deref(), count).await,
        Command::Run(args) => {
            seconds(args.wait_for.timeout, "--wait-timeout")?;
            replay::run(&api, out, &args).await
        }
    }
}

async fn circulate(
    api: &http::Api,
    out: Output,
    kind: library::Circulation,
    a: cli::CirculationArgs,
) -> Result<(), Failure> {
    let wait = if a.wait {
        Some(seconds(a.wait_for.timeout, "--wait-timeout")?)
    } else {
        None
    };
    let loan = library::LoanRef {
        isbn: a.isbn,
        patron: a.patron,
        loan_id: a.loan_id,
    };
    library::circulate(api, out, kind, &loan, &a.branch, wait).await
}
