//! `bibliomq events`: the live outcome events, as `GET /v1/events/stream`
//! sends them (server-sent events), one line each: for people the routing
//! key and the event cut to a line; with `--json` one JSON object a line,
//! `{"routing_key", "event"}`, for programs. It runs until interrupted,
//! until `--count` events have come, or until the API ends the feed.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    error::Failure,
    http::{self, Api},
    output,
};

/// How long the feed may stay open: the request timeout bounds one
/// request, not a feed that is meant to stay.
const FEED_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One server-sent event: its name (`message` when unnamed) and its data.
#[derive(Debug, PartialEq)]
struct Sse {
    name: String,
    data: String,
}

/// Takes the complete events off the front of `buffer`.
fn take_events(buffer: &mut String) -> Vec<Sse> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut name = "message".to_owned();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                n.trim().clone_into(&mut name);
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        // Comment lines alone (`:` keep-alives) make no event.
        if !data.is_empty() || name != "message" {
            events.push(Sse {
                name,
                data: data.join("\n"),
            });
        }
    }
    events
}

/// The failure a feed's last event (`error`, the usual error body) stands
/// for. The stream's status (200) was sent long before, so the status is
/// the one the API gives that code: the key revoked (`unauthorized`) is
/// the caller's to fix, anything else (`unavailable`) the server's.
fn last_error(data: &str) -> Failure {
    let body: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let status = match body["error"]["code"].as_str() {
        Some("unauthorized") => StatusCode::UNAUTHORIZED,
        Some("forbidden") => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    http::failure_from_body(status, data.as_bytes())
}

pub async fn follow(
    api: &Api,
    out: output::Output,
    keys: Option<&str>,
    count: Option<u64>,
) -> Result<(), Failure> {
    let mut req = api
        .request(Method::GET, "/v1/events/stream")
        .header("accept", "text/event-stream")
        .timeout(FEED_TIMEOUT);
    if let Some(keys) = keys {
        req = req.query(&[("keys", keys)]);
    }
    if count == Some(0) {
        return Ok(());
    }
    let mut response = api.send(req).await?;
    let mut buffer = String::new();
    let mut seen = 0u64;
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk.map_err(|e| api.transport(&e))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Err(Failure::Api {
                status: 503,
                code: "feed_closed".into(),
                message:
                    "the API closed the feed (is it stopping?); run the command again to follow on"
                        .into(),
                field: None,
                error: json!({}),
            });
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        for event in take_events(&mut buffer) {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.name.as_str() {
                "ready" => {
                    let keys: Vec<String> = data["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(output::text)
                        .collect();
                    eprintln!("following {} (Ctrl-C to stop)", keys.join(","));
                }
                "error" => return Err(last_error(&event.data)),
                _ => {
                    if out.json {
                        println!("{data}");
                    } else {
                        println!(
                            "{:<24} {}",
                            output::text(&data["routing_key"]),
                            output::short_json(&data["event"], 160)
                        );
                    }
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_error_keeps_its_code_and_exits_as_the_api_would() {
        let revoked = last_error(
            r#"{"error":{"code":"unauthorized","message":"the key is no longer valid: it was revoked"}}"#,
        );
        assert_eq!(
            (revoked.code(), revoked.exit_code()),
            ("unauthorized", crate::error::exit::FAILED)
        );
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        let down =
            last_error(r#"{"error":{"code":"unavailable","message":"database unavailable"}}"#);
        assert_eq!(
            (down.code(), down.exit_code()),
            ("unavailable", crate::error::exit::SERVER)
        );
    }

    #[test]
    fn events_are_cut_at_blank_lines_and_keep_alives_skipped() {
        let mut buffer = "event: ready\ndata: {\"keys\":[\"#\"]}\n\n: keep-alive\n\ndata: {\"a\":1}\n\ndata: {\"b\"".to_owned();
        let events = take_events(&mut buffer);
        assert_eq!(
            events,
            [
                Sse {
                    name: "ready".into(),
                    data: r##"{"keys":["#"]}"##.into()
                },
                Sse {
                    name: "message".into(),
                    data: r#"{"a":1}"#.into()
                },
            ]
        );
        assert_eq!(buffer, "data: {\"b\"", "an unfinished event waits");
    }
}
