//! `bibliomq dead list|replay`: the dead-letter queues.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    error::Failure,
    http::Api,
    output::{self, Output},
};

/// `GET /v1/dead-letters`: one page, and how to get the next.
pub async fn list(
    api: &Api,
    out: Output,
    queue: &str,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(), Failure> {
    let mut query: Vec<(&str, String)> = vec![("queue", queue.to_owned())];
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        query.push(("cursor", c.to_owned()));
    }
    let page = api
        .json(api.request(Method::GET, "/v1/dead-letters").query(&query))
        .await?
        .body;
    if out.json(&page) {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page["dead_letters"]
        .as_array()
        .map(|letters| letters.iter().map(row).collect())
        .unwrap_or_default();
    println!("{} dead letter(s) in {queue}", page["total"]);
    if rows.is_empty() {
        return Ok(());
    }
    output::table(
        &[
            "ID",
            "ROUTING KEY",
            "REASON",
            "ATTEMPTS",
            "DEAD AT",
            "LAST ERROR",
        ],
        &rows,
    );
    if let Some(next) = page["next_cursor"].as_str() {
        println!("more: bibliomq dead list --queue {queue} --cursor {next}");
    }
    Ok(())
}

fn row(d: &Value) -> Vec<String> {
    vec![
        output::text(&d["id"]),
        output::text(&d["routing_key"]),
        output::text(&d["reason"]),
        output::text(&d["attempts"]),
        output::when(&d["dead_at"]),
        output::text(&d["last_error"]),
    ]
}

/// `POST /v1/dead-letters/replay`: the ids given, or all with `all`.
pub async fn replay(
    api: &Api,
    out: Output,
    queue: &str,
    ids: &[String],
    all: bool,
) -> Result<(), Failure> {
    let body = match (ids.is_empty(), all) {
        (true, true) => json!({"queue": queue, "all": true}),
        (false, false) => json!({"queue": queue, "ids": ids}),
        _ => return Err(Failure::Usage("give the ids to replay, or --all".into())),
    };
    // `all` on a long queue is answered in parts (`left`): ask again while
    // each answer moves on, and no more times than the first answer left
    // letters, so letters that keep dying cannot keep this going.
    let mut answer = api.post("/v1/dead-letters/replay", &body).await?.body;
    let mut replayed = answer["replayed"].as_array().cloned().unwrap_or_default();
    let mut rounds = answer["left"].as_u64().unwrap_or(0);
    while all && rounds > 0 && answer["left"].as_u64().unwrap_or(0) > 0 {
        rounds -= 1;
        let next = match api.post("/v1/dead-letters/replay", &body).await {
            Ok(next) => next.body,
            Err(e) => {
                // What the earlier answers replayed stays replayed: say so.
                eprintln!(
                    "replayed {} dead letter(s) from {queue} before this failure",
                    replayed.len()
                );
                return Err(e);
            }
        };
        let more = next["replayed"].as_array().cloned().unwrap_or_default();
        if more.is_empty() {
            answer = next;
            break;
        }
        replayed.extend(more);
        answer = next;
    }
    let left = answer["left"].as_u64().unwrap_or(0);
    if out.json(&json!({"queue": queue, "replayed": replayed, "left": left})) {
        return Ok(());
    }
    println!("replayed {} dead letter(s) from {queue}", replayed.len());
    for id in &replayed {
        println!("  {}", output::text(id));
    }
    if left > 0 {
        println!("{left} left in {queue}: run the replay again for the rest");
    }
    Ok(())
}
