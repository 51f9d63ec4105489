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
    let mut body = json!({ "action": action, "payload": payload });
    if let Some(at) = &schedule.at {
        body["run_at"] = json!(at);
    }
    if let Some(delay) = schedule.delay {
        body["delay_ms"] = json!(delay);
    }
    Ok(api.post("/v1/tasks", &body).await?.body)
}

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
    let accepted = submit_scheduled(api, action, payload, schedule).await?;
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
    let task = wait(api, &id, timeout).await?;
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
