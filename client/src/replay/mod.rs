//! `bibliomq run <file>`: replays a request file against the API.
//!
//! Lines run concurrently (up to `--concurrency`), optionally paced at a
//! steady `--rate`, except that lines about the same patron run in file
//! order, so a loan is made before its renewal and its return. Every
//! line ends as ok, rejected (a library rule said no) or failed; the summary
//! counts them per kind with latency percentiles, and `--report` draws the
//! run over time as an HTML page.

pub mod file;
pub mod report;
pub mod stats;

use std::{
    collections::HashMap,
    io::{IsTerminal, Read},
    sync::Arc,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};

use crate::{
    cli::RunArgs,
    error::{Failure, exit},
    http::Api,
    library::{self, Circulation, LoanRef},
    output::Output,
    tasks,
};
use file::Op;
pub use stats::{Class, Record};

/// What the report says about how the run was made.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub file: String,
    pub api: String,
    pub started: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub wait: bool,
}

fn read_file(args: &RunArgs) -> Result<String, Failure> {
    if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("cannot read the request file from stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(&args.file).map_err(|e| {
        Failure::Usage(format!(
            "cannot read the request file {}: {e}",
            args.file.display()
        ))
    })
}

pub async fn run(api: &Api, out: Output, args: &RunArgs) -> Result<(), Failure> {
    if args.concurrency == 0 {
        return Err(Failure::Usage("--concurrency must be at least 1".into()));
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err(Failure::Usage(
            "--rate must be a positive number of operations per second".into(),
        ));
    }
    let text = read_file(args)?;
    let (lines, errors) = file::parse(&text);
    let file_name = args.file.display().to_string();

    if args.dry_run {
        let report = serde_json::json!({
            "file": file_name,
            "operations": lines.len(),
            "malformed": errors.iter().map(|e| serde_json::json!({
                "line": e.number, "text": e.text, "error": e.message
            })).collect::<Vec<_>>(),
        });
        if !out.json(&report) {
            println!(
                "{file_name}: {} operations, {} malformed lines",
                lines.len(),
                errors.len()
            );
            for e in &errors {
                println!("line {}: {}\n  {}", e.number, e.text, e.message);
            }
        }
        return if errors.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reported(exit::FAILED))
        };
    }

    // One look before starting: a system that is not there is one clear
    // message, not a failure per line.
    api.send(api.request(reqwest::Method::GET, "/healthz"))
        .await?;

    let started_wall = chrono::Utc::now();
    let total = lines.len() + errors.len();
    let bar = progress_bar(total as u64, out);
    let start = Instant::now();
    let mut records: Vec<Record> = errors
        .iter()
        .map(|e| Record {
            line: e.number,
            text: e.text.clone(),
            kind: None,
            class: Class::Failed {
                message: e.message.clone(),
            },
            latency: None,
            at: Duration::ZERO,
        })
        .collect();
    for r in &records {
        report_line(&bar, r, args.verbose);
        bar.inc(1);
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let collector = {
        let bar = bar.clone();
        let verbose = args.verbose;
        tokio::spawn(async move {
            let mut done = Vec::new();
            let (mut refused, mut failed) = (0usize, 0usize);
            while let Some(r) = rx.recv().await {
                match r.class {
                    Class::Ok => {}
                    Class::Rejected { .. } => refused += 1,
                    Class::Failed { .. } => failed += 1,
                }
                report_line(&bar, &r, verbose);
                bar.set_message(format!("{refused} rejected, {failed} failed"));
                bar.inc(1);
                done.push(r);
            }
            done
        })
    };

    let wait = args
        .wait
        .then(|| Duration::from_secs_f64(args.wait_for.timeout));
    let permits = Arc::new(Semaphore::new(args.concurrency));
    // The last operation dispatched for each key: the next one with that
    // key waits for it to end.
    let mut last_of_key: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        // With `--rate`, when the line was due: its latency counts from
        // then, also the time it waited for a free slot or for the line
        // before it about the same patron, so a slow server cannot hide
        // the queue it builds (no coordinated omission).
        #[allow(clippy::cast_precision_loss)]
        let due = args
            .rate
            .map(|rate| start + Duration::from_secs_f64(i as f64 / rate));
        if let Some(at) = due {
            // Steady pacing from the start time, so a slow answer does not
            // shift every later start (no drift, no bursts to catch up
            // beyond what the concurrency limit holds back).
            tokio::time::sleep_until(at).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (done_tx, done_rx) = oneshot::channel();
        let before = line.op.key().and_then(|k| last_of_key.insert(k, done_rx));
        let api = api.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(before) = before {
                // Err: the earlier one's task ended without a word; go on.
                let _ = before.await;
            }
            let sent = due.unwrap_or_else(Instant::now);
            let class = execute(&api, &line.op, wait).await;
            let ended = Instant::now();
            let _ = done_tx.send(());
            drop(permit);
            let _ = tx.send(Record {
                line: line.number,
                text: line.text,
                kind: Some(line.op.kind()),
                class,
                latency: Some(ended - sent),
                at: ended - start,
            });
        });
    }
    drop(tx);
    let done = collector
        .await
        .map_err(|e| Failure::Local(format!("the replay's collector stopped: {e}")))?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    records.extend(done);
    records.sort_by_key(|r| r.line);

    let summary = stats::Summary::new(&records, elapsed);
    let info = RunInfo {
        file: file_name.clone(),
        api: api.base().to_owned(),
        started: started_wall.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        concurrency: args.concurrency,
        rate: args.rate,
        wait: args.wait,
    };
    let mut written = None;
    if let Some(path) = &args.report {
        std::fs::write(path, report::render(&info, &summary, &records)).map_err(|e| {
            Failure::Local(format!("cannot write the report {}: {e}", path.display()))
        })?;
        written = Some(path.display().to_string());
    }
    let mut json = summary.to_json();
    json["file"] = serde_json::json!(file_name);
    json["report"] = serde_json::json!(written);
    if !out.json(&json) {
        print!("{file_name}: {}", summary.render());
        if let Some(path) = &written {
            println!("report: {path}");
        }
    }
    if summary.failed() > 0 {
        Err(Failure::Reported(exit::FAILED))
    } else {
        Ok(())
    }
}

const PROGRESS_TEMPLATE: &str = "{bar:40.cyan/blue} {pos}/{len} lines  {per_sec}  eta {eta}  {msg}";

fn progress_bar(len: u64, out: Output) -> ProgressBar {
    // Drawn only for a person watching a terminal; never into a pipe, a
    // log file or between JSON lines.
    if out.json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(PROGRESS_TEMPLATE) {
        bar.set_style(style);
    }
    bar
}

/// Failed lines are told as they happen (rejected ones too with
/// `--verbose`), above the progress bar, on stderr.
fn report_line(bar: &ProgressBar, r: &Record, verbose: bool) {
    let text = match &r.class {
        Class::Failed { message } => format!("line {}: failed: {}\n  {message}", r.line, r.text),
        Class::Rejected { code } if verbose => {
            format!("line {}: rejected ({code}): {}", r.line, r.text)
        }
        _ => return,
    };
    bar.suspend(|| eprintln!("{text}"));
}

/// Runs one operation and says how it ended.
async fn execute(api: &Api, op: &Op, wait: Option<Duration>) -> Class {
    let outcome = match op {
        Op::Loan {
            book,
            patron,
            branch,
        } => library::loan_raw(api, book, patron, branch, None)
            .await
            .map(|_| ()),
        Op::Renew {
            isbn,
            patron,
            branch,
        } => circulate(api, Circulation::Renewal, isbn, patron, branch, wait).await,
        Op::Return {
            isbn,
            patron,
            branch,
        } => circulate(api, Circulation::Return, isbn, patron, branch, wait).await,
        Op::Task { action, payload } => task(api, action, payload.clone(), wait).await,
    };
    match outcome {
        Ok(()) => Class::Ok,
        Err(e) => classify(e),
    }
}

async fn circulate(
    api: &Api,
    kind: Circulation,
    isbn: &str,
    patron: &str,
    branch: &str,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let loan = LoanRef {
        isbn: Some(isbn.to_owned()),
        patron: Some(patron.to_owned()),
        loan_id: None,
    };
    let accepted = library::circulate_raw(api, kind, &loan, branch).await?;
    if let Some(timeout) = wait {
        let id = accepted["operation_id"].as_str().unwrap_or_default();
        library::wait_operation(api, id, timeout).await?;
    }
    Ok(())
}

async fn task(
    api: &Api,
    action: &str,
    payload: serde_json::Value,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let accepted = tasks::submit_raw(api, action, payload).await?;
    if let Some(timeout) = wait {
        let id = accepted["id"].as_str().unwrap_or_default();
        // A task that ran and failed is a failure of the line, not a refusal.
        tasks::wait(api, id, timeout).await.map_err(|e| match e {
            Failure::Unsuccessful { message, .. } => Failure::Local(message),
            other => other,
        })?;
    }
    Ok(())
}

/// Refusals are answers about the library (a 404 for an unknown title or
/// loan, a 409 from a rule, a rejected renewal or return); everything else
/// that is not a success is a failure of the line or of the system.
fn classify(e: Failure) -> Class {
    match e {
        Failure::Api {
            status: 404 | 409,
            code,
            ..
        } => Class::Rejected { code },
        Failure::Unsuccessful { code, .. } if code != "wait_timeout" => Class::Rejected { code },
        other => Class::Failed {
            message: other.describe().replace('\n', " "),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api_failure(status: u16, code: &str) -> Failure {
        Failure::Api {
            status,
            code: code.into(),
            message: "m".into(),
            field: None,
            error: json!({}),
        }
    }

    #[test]
    fn the_sample_files_parse_and_cover_every_kind() {
        for text in [
            include_str!("../../samples/central.txt"),
            include_str!("../../samples/norte.txt"),
        ] {
            let (lines, errors) = file::parse(text);
            assert!(errors.is_empty(), "{errors:?}");
            for kind in file::Kind::ALL {
                assert!(lines.iter().any(|l| l.op.kind() == kind), "no {kind:?}");
            }
        }
    }

    #[test]
    fn the_progress_bar_template_is_valid() {
        assert!(ProgressStyle::with_template(PROGRESS_TEMPLATE).is_ok());
    }

    #[test]
    fn library_refusals_are_not_failures() {
        assert_eq!(
            classify(api_failure(409, "not_available")),
            Class::Rejected {
                code: "not_available".into()
            }
        );
        assert!(matches!(
            classify(api_failure(404, "loan_not_found")),
            Class::Rejected { .. }
        ));
        assert!(matches!(
            classify(Failure::Unsuccessful {
                code: "max_renewals_reached".into(),
                message: "m".into(),
                body: json!({})
            }),
            Class::Rejected { .. }
        ));
    }

    #[test]
    fn bad_lines_outages_and_timeouts_are_failures() {
        for f in [
            api_failure(422, "invalid_isbn"),
            api_failure(503, "unavailable"),
            api_failure(401, "unauthorized"),
            Failure::Unreachable {
                url: "u".into(),
                detail: "refused".into(),
            },
            Failure::Unsuccessful {
                code: "wait_timeout".into(),
                message: "m".into(),
                body: json!({}),
            },
        ] {
            assert!(matches!(classify(f), Class::Failed { .. }));
        }
    }
}
