//! `import titles|patrons FILE.csv`: the file is read a record at a time
//! and sent in batches to the API's bulk routes, which check every row as
//! the single routes do and write only what differs, so a second run of
//! the same file changes nothing. At the end, a summary: created, updated,
//! unchanged, and each rejected row with its line number and reason.

use std::{fs::File, io::IsTerminal};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::{
    cli::ImportArgs,
    error::{Failure, exit},
    http::Api,
    output::Output,
};

/// A batch is sent once it holds this many bytes of JSON, whatever
/// `--batch` says, to stay well under the API's body limit.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Titles,
    Patrons,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Titles => "/v1/import/titles",
            Self::Patrons => "/v1/import/patrons",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Titles => "titles",
            Self::Patrons => "patrons",
        }
    }

    /// Required columns, then optional ones.
    fn columns(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Titles => (&["isbn", "title"], &["authors", "year"]),
            Self::Patrons => (&["id", "name"], &["email"]),
        }
    }
}

/// A refused row.
struct Reject {
    line: u64,
    code: String,
    message: String,
    field: Option<String>,
}

#[derive(Default)]
struct Summary {
    created: u64,
    updated: u64,
    unchanged: u64,
    rejected: Vec<Reject>,
}

/// Rows waiting to be sent, with the line each came from.
#[derive(Default)]
struct Batch {
    rows: Vec<Value>,
    lines: Vec<u64>,
    bytes: usize,
}

pub async fn run(api: &Api, out: Output, kind: Kind, args: &ImportArgs) -> Result<(), Failure> {
    if args.batch == 0 || args.batch > 1000 {
        return Err(Failure::Usage("--batch is from 1 to 1000".into()));
    }
    let file = File::open(&args.file)
        .map_err(|e| Failure::Usage(format!("cannot open {}: {e}", args.file.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Failure::Usage(format!("cannot read the header line: {e}")))?
        .iter()
        .map(|h| h.to_lowercase())
        .collect();
    let (required, optional) = kind.columns();
    for column in required {
        if !header.iter().any(|h| h == column) {
            return Err(Failure::Usage(format!(
                "the header line has no `{column}` column; {} takes {} (and {})",
                kind.noun(),
                required.join(", "),
                optional.join(", ")
            )));
        }
    }
    if let Some(unknown) = header
        .iter()
        .find(|h| !required.contains(&h.as_str()) && !optional.contains(&h.as_str()))
    {
        return Err(Failure::Usage(format!(
            "unknown column `{unknown}`; {} takes {} (and {})",
            kind.noun(),
            required.join(", "),
            optional.join(", ")
        )));
    }

    let bar = progress_bar(size, out.json || args.quiet);
    let mut summary = Summary::default();
    let mut batch = Batch::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                summary.rejected.push(Reject {
                    line: e.position().map_or(line, csv::Position::line),
                    code: "malformed_csv".into(),
                    message: e.to_string(),
                    field: None,
                });
                continue;
            }
        }
        let line = record.position().map_or(line, csv::Position::line);
        if record.iter().all(str::is_empty) {
            continue;
        }
        match row(kind, &header, &record) {
            Ok(row) => {
                batch.bytes += row.to_string().len();
                batch.rows.push(row);
                batch.lines.push(line);
            }
            Err(reject) => summary.rejected.push(Reject { line, ..reject }),
        }
        if batch.rows.len() >= args.batch || batch.bytes >= BATCH_BYTES {
            send(api, kind, std::mem::take(&mut batch), &mut summary).await?;
            bar.set_position(reader.position().byte());
        }
    }
    if !batch.rows.is_empty() {
        send(api, kind, batch, &mut summary).await?;
    }
    bar.finish_and_clear();
    summary.rejected.sort_by_key(|r| r.line);
    print(out, kind, &summary);
    if summary.rejected.is_empty() {
        Ok(())
    } else {
        Err(Failure::Reported(exit::FAILED))
    }
}

/// Drawn only for a person watching a terminal.
fn progress_bar(len: u64, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// One record as the API's row. Only what a CSV cannot say as JSON is
/// checked here (a year that is not a number); the API checks the rest.
fn row(kind: Kind, header: &[String], record: &csv::StringRecord) -> Result<Value, Reject> {
    let mut row = Map::new();
    for (name, value) in header.iter().zip(record.iter()) {
        if value.is_empty() {
            continue;
        }
        let value = match (kind, name.as_str()) {
            (Kind::Titles, "authors") => json!(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect::<Vec<_>>()
            ),
            (Kind::Titles, "year") => match value.parse::<i64>() {
                Ok(y) => json!(y),
                Err(_) => {
                    return Err(Reject {
                        line: 0,
                        code: "invalid_year".into(),
                        message: format!("`{value}` is not a year"),
                        field: Some("year".into()),
                    });
                }
            },
            _ => json!(value),
        };
        row.insert(name.clone(), value);
    }
    for column in kind.columns().0 {
        if !row.contains_key(*column) {
            return Err(Reject {
                line: 0,
                code: "missing_field".into(),
                message: format!("the `{column}` column is empty"),
                field: Some((*column).to_owned()),
            });
        }
    }
    Ok(Value::Object(row))
}

async fn send(api: &Api, kind: Kind, batch: Batch, summary: &mut Summary) -> Result<(), Failure> {
    let report = api
        .post(kind.path(), &json!({ "rows": batch.rows }))
        .await?
        .body;
    let count = |k: &str| report[k].as_u64().unwrap_or(0);
    summary.created += count("created");
    summary.updated += count("updated");
    summary.unchanged += count("unchanged");
    for r in report["rejected"].as_array().into_iter().flatten() {
        let index = r["row"].as_u64().and_then(|i| usize::try_from(i).ok());
        summary.rejected.push(Reject {
            line: index.and_then(|i| batch.lines.get(i)).copied().unwrap_or(0),
            code: r["code"].as_str().unwrap_or("rejected").to_owned(),
            message: r["message"].as_str().unwrap_or_default().to_owned(),
            field: r["field"].as_str().map(str::to_owned),
        });
    }
    Ok(())
}

fn print(out: Output, kind: Kind, s: &Summary) {
    let rejected: Vec<Value> = s
        .rejected
        .iter()
        .map(|r| {
            let mut v = json!({"line": r.line, "code": r.code, "message": r.message});
            if let Some(f) = &r.field {
                v["field"] = json!(f);
            }
            v
        })
        .collect();
    if out.json(&json!({
        "created": s.created,
        "updated": s.updated,
        "unchanged": s.unchanged,
        "rejected": rejected,
    })) {
        return;
    }
    println!(
        "{}: {} created, {} updated, {} unchanged, {} rejected",
        kind.noun(),
        s.created,
        s.updated,
        s.unchanged,
        s.rejected.len()
    );
    for r in &s.rejected {
        match &r.field {
            Some(f) => println!("line {}: {} ({f}): {}", r.line, r.code, r.message),
            None => println!("line {}: {}: {}", r.line, r.code, r.message),
        }
    }
}
