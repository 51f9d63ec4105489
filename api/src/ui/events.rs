//! `GET /v1/events/stream`: the outcome events of `bibliomq.events` as
//! server-sent events, for the dashboard's live feed.
//!
//! Each client gets its own server-named queue (see
//! [`bibliomq_core::broker::events`]); the response starts only once that
//! queue is bound, and its first event, `ready`, says so: whatever happens
//! after it is seen. Events published while the broker connection is down
//! are missed (the record is in PostgreSQL); the feed carries on when it is
//! back. The stream ends when the server stops.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::StatusCode,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use bibliomq_core::broker::{events::EventMessage, topology};
use futures::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AppState, error::ApiError, extract::QueryParams, routing::Routes};

/// Most patterns one stream may follow.
pub const MAX_KEYS: usize = 16;
/// Events a slow client may fall behind by before it misses some.
const BUFFER: usize = 512;
/// How long to wait for the subscription before answering 503.
const BIND_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Routes {
    Routes::new().route("/events/stream", get(stream_events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Comma-separated topic patterns (`task.*,loaned.#`); all events when absent.
    keys: Option<String>,
}

/// Topic patterns: dot-separated words of letters, digits, `-` and `_`, or
/// the wildcards `*` and `#`.
fn parse_keys(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let invalid = |message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_keys", message).with_field("keys")
    };
    let keys: Vec<String> = raw
        .unwrap_or("#")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(invalid(format!(
            "give 1 to {MAX_KEYS} comma-separated routing key patterns, such as `task.*,loaned.#`"
        )));
    }
    for key in &keys {
        let valid = key.len() <= 255
            && key.split('.').all(|word| {
                word == "*"
                    || word == "#"
                    || (!word.is_empty()
                        && word
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            });
        if !valid {
            return Err(invalid(format!(
                "`{key}` is not a routing key pattern: use dot-separated words, `*` for one word, `#` for any"
            )));
        }
    }
    Ok(keys)
}

/// `text/event-stream`: a `ready` event, then one unnamed event per outcome
/// event with `{"routing_key", "event"}` as data.
async fn stream_events(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let keys = parse_keys(q.keys.as_deref())?;
    let patterns: Vec<&str> = keys.iter().map(String::as_str).collect();
    let rx = state
        .broker
        .subscribe_bound(topology::EVENTS_EXCHANGE, &patterns, BUFFER, BIND_TIMEOUT)
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the message broker cannot be reached, so there is no live feed; try again shortly",
            )
        })?;
    let ready = Event::default()
        .event("ready")
        .data(to_line(&StreamReady { keys: &keys }));
    let events = stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        Some((Ok(to_event(&message)), rx))
    });
    let stream = stream::once(async move { Ok(ready) })
        .chain(events)
        .take_until(state.stopping.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The data of the stream's first event, `ready`: the patterns followed.
#[derive(Serialize)]
struct StreamReady<'a> {
    keys: &'a [String],
}

/// The data of every other event: its routing key and its body (JSON, or
/// the text when the body is not JSON).
#[derive(Serialize)]
struct StreamEvent<'a> {
    routing_key: &'a str,
    event: Value,
}

fn to_line(data: &impl Serialize) -> String {
    // Plain structs of strings and JSON values always serialise.
    serde_json::to_string(data).unwrap_or_default()
}

fn to_event(message: &EventMessage) -> Event {
    let event = serde_json::from_slice::<Value>(&message.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&message.body).into_owned()));
    Event::default().data(to_line(&StreamEvent {
        routing_key: &message.routing_key,
        event,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_follows_every_event() {
        assert_eq!(parse_keys(None).unwrap(), vec!["#"]);
    }

    #[test]
    fn patterns_with_wildcards_are_accepted() {
        assert_eq!(
            parse_keys(Some("task.*, loaned.#,rejected.renewal.central")).unwrap(),
            vec!["task.*", "loaned.#", "rejected.renewal.central"]
        );
    }

    #[test]
    fn malformed_patterns_are_refused_naming_the_culprit() {
        for bad in ["task..x", "task.a b", "", ",,", "tä.*"] {
            let err = parse_keys(Some(bad)).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        let many = vec!["a"; MAX_KEYS + 1].join(",");
        assert!(parse_keys(Some(&many)).is_err());
    }
}
