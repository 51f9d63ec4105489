//! `bibliomq task ...`: submit, wait, look up, list, fetch results.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    error::Failure,
    follow::poll,
    http::{Api, segment},
    output::{self, Output},
};

/// The payload as typed: JSON when the words parse as JSON (`30`,
/// `[1, 2]`, `{"name": "Ana"}`, `"quoted"`), otherwise the words joined by
/// spaces, as a string (`1,2,3`, `hola mundo`). Nothing at all is `null`.
pub fn parse_payload(words: &str, force_string: bool) -> Value {
    let words = words.trim();
    if force_string {
        return Value::String(words.to_owned());
    }
    if words.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(words).unwrap_or_else(|_| Value::String(words.to_owned()))
}

pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "dead" | "cancelled")
}

/// Submits and returns the API's answer (`id`, `state`, `links`).
pub async fn submit_raw(api: &Api, action: &str, payload: Value) -> Result<Value, Failure> {
    submit_scheduled(api, action, payload, &Schedule::default()).await
}

/// When a submitted task should run: `--at` or `--delay`, or at once.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// RFC 3339.
    pub at: Option<String>,
    /// Milliseconds from now.
    pub delay: Option<u64>,
}

/// Submits, with `run_at` or `delay_ms` when given, and returns the API's answer.
pub async fn submit_scheduled(
    api: &Api,
    action: &str,
    payload: Value,
    schedule: &Schedule,
) -> Result<Value, Failure> {
    submit_waiting(api, action, payload, schedule, Duration::ZERO).await
}

/// As [`submit_scheduled`], asking the API to wait up to `wait` for the
/// task to end (`?wait_ms=`): the answer is then the finished task, or the
/// usual acceptance when it did not end in time.
async fn submit_waiting(
    api: &Api,
    action: &str,
    payload: Value,
    schedule: &Schedule,
    wait: Duration,
) -> Result<Value, Failure> {
    let mut body = json!({ "action": action, "payload": payload });
    if let Some(at) = &schedule.at {
        body["run_at"] = json!(at);
    }
    if let Some(delay) = schedule.delay {
        body["delay_ms"] = json!(delay);
    }
    let path = match wait.as_millis() {
        0 => "/v1/tasks".to_owned(),
        ms => format!("/v1/tasks?wait_ms={ms}"),
    };
    Ok(api.post(&path, &body).await?.body)
}

/// The longest the submit itself waits for the task (`?wait_ms=`), well
/// within any HTTP time limit; a longer `--wait-timeout` goes on polling.
const SUBMIT_WAIT: Duration = Duration::from_secs(5);

/// Polls the task until it is final or `timeout` passes. A task that
/// finished other than `succeeded` is a [`Failure::Unsuccessful`].
pub async fn wait(api: &Api, id: &str, timeout: Duration) -> Result<Value, Failure> {
    let path = format!("/v1/tasks/{}", segment(id));
    let task = match poll(timeout, || async {
        let task = api.get(&path).await?;
        Ok((is_final(task["state"].as_str().unwrap_or_default()), task))
    })
    .await?
    {
        Ok(task) => task,
        Err(last) => {
            return Err(Failure::Unsuccessful {
                code: "wait_timeout".into(),
                message: format!(
                    "task {id} is still {} after {:.0} s",
                    output::text(&last["state"]),
                    timeout.as_secs_f64()
                ),
                body: last,
            });
        }
    };
    succeeded(id, task)
}

/// The task when it `succeeded`, else a [`Failure::Unsuccessful`] naming
/// how it ended.
fn succeeded(id: &str, task: Value) -> Result<Value, Failure> {
    match task["state"].as_str() {
        Some("succeeded") => Ok(task),
        other => Err(Failure::Unsuccessful {
            code: format!("task_{}", other.unwrap_or("unknown")),
            message: format!(
                "task {id} {}: {}",
                other.unwrap_or("ended"),
                task["error"].as_str().unwrap_or("no reason recorded")
            ),
            body: task,
        }),
    }
}

pub async fn submit(
    api: &Api,
    out: Output,
    action: &str,
    payload: Value,
    schedule: &Schedule,
    wait_for: Option<Duration>,
) -> Result<(), Failure> {
    let started = Instant::now();
    let submit_wait = wait_for.map_or(Duration::ZERO, |t| t.min(SUBMIT_WAIT));
    let accepted = submit_waiting(api, action, payload, schedule, submit_wait).await?;
    let id = output::text(&accepted["id"]);
    let Some(timeout) = wait_for else {
        if !out.json(&accepted) {
            println!(
                "{}  {id}  {}",
                output::text(&accepted["state"]),
                output::text(&accepted["action"])
            );
            println!("  follow: bibliomq task get {id}");
        }
        return Ok(());
    };
    let task = match is_final(accepted["state"].as_str().unwrap_or_default()) {
        true => succeeded(&id, accepted)?,
        false => wait(api, &id, timeout.saturating_sub(started.elapsed())).await?,
    };
    if !out.json(&task) {
        println!(
            "succeeded  {id}  {}  ({} attempt{}, {} ms)",
            output::text(&task["action"]),
            task["attempts"],
            if task["attempts"] == 1 { "" } else { "s" },
            started.elapsed().as_millis()
        );
        print_result(&task);
    }
    Ok(())
}

/// What became of one batch of a file.
enum BatchOutcome {
    Queued(Vec<String>),
    /// Refused, whole: the lines at fault and why.
    Refused(Vec<Value>),
}

/// Sends one batch; `lines` are the file's line numbers of its items.
async fn send_batch(
    api: &Api,
    items: Vec<Value>,
    lines: &[usize],
) -> Result<BatchOutcome, Failure> {
    match api.post("/v1/tasks/batch", &Value::Array(items)).await {
        Ok(answer) => Ok(BatchOutcome::Queued(
            answer.body["tasks"]
                .as_array()
                .map(|tasks| tasks.iter().map(|t| output::text(&t["id"])).collect())
                .unwrap_or_default(),
        )),
        Err(Failure::Api {
            status,
            code,
            message,
            error,
            ..
        }) if status == 422 || status == 400 => {
            let refused = match error["errors"].as_array() {
                Some(errors) => errors
                    .iter()
                    .map(|e| {
                        let line = e["index"]
                            .as_u64()
                            .and_then(|i| lines.get(usize::try_from(i).ok()?))
                            .copied();
                        json!({
                            "line": line,
                            "code": e["code"],
                            "message": e["message"],
                            "field": e["field"],
                        })
                    })
                    .collect(),
                None => vec![json!({
                    "line": lines.first(),
                    "code": code,
                    "message": message,
                })],
            };
            Ok(BatchOutcome::Refused(refused))
        }
        Err(other) => Err(other),
    }
}

/// `task submit --file FILE`: reads NDJSON (blank lines skipped), sends
/// batches of `batch_size` to `POST /v1/tasks/batch` as they fill, and
/// prints a summary. A batch holding a line that is not a JSON object is
/// not sent (the server would refuse it whole); a batch the server refuses
/// queued nothing. Either way the summary names the lines at fault and the
/// exit code is 1; the other batches are queued.
pub async fn submit_file(
    api: &Api,
    out: Output,
    path: &Path,
    batch_size: usize,
) -> Result<(), Failure> {
    use tokio::io::AsyncBufReadExt;
    let started = Instant::now();
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path == Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?,
        )
    };
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut ids: Vec<String> = Vec::new();
    let mut refused: Vec<Value> = Vec::new();
    let (mut batches, mut refused_batches, mut refused_tasks) = (0usize, 0usize, 0usize);
    let mut items = Vec::with_capacity(batch_size);
    let mut numbers = Vec::with_capacity(batch_size);
    let mut unreadable: Vec<Value> = Vec::new();
    let mut number = 0usize;
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?;
        let done = line.is_none();
        if let Some(line) = line {
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(item @ Value::Object(_)) => items.push(item),
                Ok(_) | Err(_) => {
                    unreadable.push(json!({
                        "line": number,
                        "code": "invalid_line",
                        "message": "not a JSON object (one task per line)",
                    }));
                    items.push(Value::Null);
                }
            }
            numbers.push(number);
            if items.len() < batch_size {
                continue;
            }
        }
        if !items.is_empty() {
            batches += 1;
            let sent = std::mem::take(&mut items);
            let count = sent.len();
            if unreadable.is_empty() {
                match send_batch(api, sent, &numbers).await? {
                    BatchOutcome::Queued(batch_ids) => ids.extend(batch_ids),
                    BatchOutcome::Refused(errors) => {
                        refused_batches += 1;
                        refused_tasks += count;
                        refused.extend(errors);
                    }
                }
            } else {
                refused_batches += 1;
                refused_tasks += count;
                refused.append(&mut unreadable);
            }
            numbers.clear();
        }
        if done {
            break;
        }
    }
    let summary = json!({
        "submitted": ids.len(),
        "batches": batches,
        "refused_batches": refused_batches,
        "refused_tasks": refused_tasks,
        "refused": refused,
        "seconds": started.elapsed().as_secs_f64(),
        "ids": ids,
    });
    if !out.json(&summary) {
        println!(
            "submitted {} task{} in {} batch{} ({:.2} s)",
            ids.len(),
            if ids.len() == 1 { "" } else { "s" },
            batches - refused_batches,
            if batches - refused_batches == 1 {
                ""
            } else {
                "es"
            },
            started.elapsed().as_secs_f64()
        );
        if refused_batches > 0 {
            println!(
                "refused {refused_batches} batch{} ({refused_tasks} tasks, none of them queued):",
                if refused_batches == 1 { "" } else { "es" }
            );
            for e in &refused {
                println!(
                    "  line {}: {} ({})",
                    output::text(&e["line"]),
                    output::text(&e["message"]),
                    output::text(&e["code"])
                );
            }
        }
    }
    if refused_batches > 0 {
        return Err(Failure::Reported(crate::error::exit::FAILED));
    }
    Ok(())
}

fn print_result(task: &Value) {
    let id = output::text(&task["id"]);
    if task["result_object"].is_object() {
        println!(
            "result stored in object storage ({} bytes, {}); fetch it with: bibliomq task result {id} -o FILE",
            task["result_object"]["size"],
            output::text(&task["result_object"]["content_type"])
        );
        return;
    }
    match &task["result"] {
        Value::String(s) => println!("{s}"),
        Value::Null => {}
        other => println!(
            "{}",
            serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string())
        ),
    }
}

/// `POST /v1/tasks/{id}/cancel`: prints the task's state after the cancel.
pub async fn cancel(api: &Api, out: Output, id: &str) -> Result<(), Failure> {
    let answer = api
        .post(&format!("/v1/tasks/{}/cancel", segment(id)), &json!({}))
        .await?
        .body;
    if out.json(&answer) {
        return Ok(());
    }
    let id = output::text(&answer["id"]);
    if answer["stopping"] == true {
        println!("task {id} is running; its worker is stopping it");
    } else {
        println!("task {id} {}", output::text(&answer["state"]));
    }
    Ok(())
}

pub async fn get(api: &Api, out: Output, id: &str) -> Result<(), Failure> {
    let task = api.get(&format!("/v1/tasks/{}", segment(id))).await?;
    if out.json(&task) {
        return Ok(());
    }
    println!("task {}", output::text(&task["id"]));
    let mut rows = vec![
        ("action", output::text(&task["action"])),
        ("state", output::text(&task["state"])),
        ("attempts", output::text(&task["attempts"])),
        ("created", output::when(&task["created_at"])),
        ("started", output::when(&task["started_at"])),
        ("finished", output::when(&task["finished_at"])),
    ];
    if !task["error"].is_null() {
        rows.push(("error", output::text(&task["error"])));
    }
    if !task["error_code"].is_null() {
        rows.push(("error code", output::text(&task["error_code"])));
    }
    if task["result_object"].is_object() {
        let o = &task["result_object"];
        rows.push((
            "result",
            format!(
                "stored: {}/{} ({} bytes, {}, sha256 {})",
                output::text(&o["bucket"]),
                output::text(&o["key"]),
                o["size"],
                output::text(&o["content_type"]),
                output::text(&o["sha256"])
            ),
        ));
    } else if task["state"] == "succeeded" {
        rows.push(("result", output::short_json(&task["result"], 200)));
    }
    output::fields(&rows);
    Ok(())
}

pub async fn list(
    api: &Api,
    out: Output,
    state: Option<&str>,
    action: Option<&str>,
    limit: Option<u32>,
    before: Option<&str>,
) -> Result<(), Failure> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = state {
        query.push(("state", s.to_owned()));
    }
    if let Some(a) = action {
        query.push(("action", a.to_owned()));
    }
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(b) = before {
        query.push(("before", b.to_owned()));
    }
    let page = api
        .json(api.request(Method::GET, "/v1/tasks").query(&query))
        .await?
        .body;
    if out.json(&page) {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page["tasks"]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .map(|t| {
                    vec![
                        output::text(&t["id"]),
                        output::text(&t["action"]),
                        output::text(&t["state"]),
                        output::text(&t["attempts"]),
                        output::when(&t["created_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no tasks");
        return Ok(());
    }
    output::table(&["ID", "ACTION", "STATE", "ATTEMPTS", "CREATED"], &rows);
    if let Some(next) = page["next_before"].as_str() {
        println!("more: bibliomq task list --before {next}");
    }
    Ok(())
}

/// Streams the result to `output` (through a `.part` file renamed at the
/// end, so an interrupted download never looks complete) or to stdout, and
/// checks it against `x-content-sha256` when the API sends one.
pub async fn result(
    api: &Api,
    out: Output,
    id: &str,
    output_file: Option<&Path>,
) -> Result<(), Failure> {
    let response = api
        .send(api.request(Method::GET, &format!("/v1/tasks/{}/result", segment(id))))
        .await?;
    let expected = response
        .headers()
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    let mut stream = response.bytes_stream();
    let Some(path) = output_file else {
        let mut stdout = std::io::stdout().lock();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| api.transport(&e))?;
            hasher.update(&chunk);
            stdout.write_all(&chunk)?;
        }
        stdout.flush()?;
        return check_sha(expected.as_deref(), &hex::encode(hasher.finalize()));
    };
    let part = part_path(path);
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| Failure::Local(format!("cannot write {}: {e}", part.display())))?;
    let written: Result<(), Failure> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| api.transport(&e))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(())
    }
    .await;
    let sha = hex::encode(hasher.finalize());
    let checked = written.and_then(|()| check_sha(expected.as_deref(), &sha));
    if let Err(e) = checked {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, path)
        .await
        .map_err(|e| Failure::Local(format!("cannot write {}: {e}", path.display())))?;
    let report = json!({
        "file": path.display().to_string(),
        "bytes": bytes,
        "sha256": sha,
        "verified": expected.is_some(),
    });
    if !out.json(&report) {
        let verified = if expected.is_some() {
            ", SHA-256 verified"
        } else {
            ""
        };
        println!("wrote {bytes} bytes to {}{verified}", path.display());
    }
    Ok(())
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn check_sha(expected: Option<&str>, actual: &str) -> Result<(), Failure> {
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(actual) => Err(Failure::Api {
            status: 502,
            code: "checksum_mismatch".into(),
            message: format!("the result's SHA-256 is {actual}, but the API announced {e}"),
            field: None,
            error: json!({}),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_payload("30", false), json!(30));
        assert_eq!(parse_payload("1,2,3", false), json!("1,2,3"));
        assert_eq!(parse_payload("hola mundo", false), json!("hola mundo"));
        assert_eq!(
            parse_payload(r#"{"name": "Ana"}"#, false),
            json!({"name": "Ana"})
        );
        assert_eq!(parse_payload(r#""30""#, false), json!("30"));
        assert_eq!(parse_payload("30", true), json!("30"));
        assert_eq!(parse_payload("  ", false), Value::Null);
    }

    #[test]
    fn downloads_go_through_a_part_file() {
        assert_eq!(
            part_path(Path::new("/tmp/out.csv")),
            PathBuf::from("/tmp/out.csv.part")
        );
    }
}
