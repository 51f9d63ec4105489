//! `GET /v1/events/stream`: the outcome events of `bibliomq.events` as
//! server-sent events, for the dashboard's live feed.
//!
//! Each client gets its own server-named queue (see
//! [`bibliomq_core::broker::events`]); the response starts only once that
//! queue is bound, and its first event, `ready`, says so: whatever happens
//! after it is seen. Events published while the broker connection is down
//! are missed (the record is in PostgreSQL); the feed carries on when it is
//! back. The stream ends when the server stops, or with an `error` event
//! when the key that opened it is revoked. The patterns, the permission and
//! the key's re-check are the command layer's
//! ([`bibliomq_core::commands::Commands::follow_events`]).

use std::{convert::Infallible, time::Duration};

use axum::response::sse::{Event, KeepAlive, Sse};
use bibliomq_core::{broker::events::EventMessage, commands::EVENT_PATTERNS_MAX};
use futures::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, QueryParams},
    routing::Routes,
};

/// Events a slow client may fall behind by before it misses some.
const BUFFER: usize = 512;

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(stream_events))
        .schema::<StreamReady>()
        .schema::<StreamEvent>()
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Comma-separated topic patterns: dot-separated words, `*` for one
    /// word, `#` for any number (`task.*,loaned.#`). Every event when absent.
    #[param(value_type = Option<KeyPatterns>, inline)]
    keys: Option<String>,
}

/// What `?keys=` takes: 1 to [`EVENT_PATTERNS_MAX`] comma-separated
/// patterns of dot-separated words (letters, digits, `-`, `_`), `*` or `#`.
/// Stricter than the server on lengths (up to 8 words of 16 characters,
/// where the server takes 255 bytes), which a regex can bound only word by
/// word.
struct KeyPatterns;

impl utoipa::PartialSchema for KeyPatterns {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::RefOr::T(keys_pattern())
    }
}

impl ToSchema for KeyPatterns {}

fn keys_pattern() -> utoipa::openapi::Schema {
    let word = "(\\*|#|[A-Za-z0-9_-]{1,16})";
    let key = format!("{word}(\\.{word}){{0,7}}");
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some(format!(
            "^ *{key}( *, *{key}){{0,{}}} *$",
            EVENT_PATTERNS_MAX - 1
        )))
        .into()
}

/// Outcome events of `bibliomq.events`, live, as server-sent events
///
/// A `text/event-stream` that stays open. Its first event is named `ready`
/// and comes once the stream's own queue is bound, so every outcome
/// published after it is delivered; its `data` is one line of JSON,
/// `EventStreamReady`. Then one unnamed event per outcome event whose
/// routing key matches `keys`, its `data` one line of JSON,
/// `EventStreamEvent`. Comment lines (`:`) keep the connection alive every
/// 15 s. Events published while the API is cut off from RabbitMQ are missed
/// (PostgreSQL has the record); the stream ends when the server stops, and
/// when the key that opened it is revoked: then its last event is named
/// `error`, its `data` the usual error body (`unauthorized`). A key sees
/// only what its role may: an admin every event, a service key the task
/// events, a librarian the circulation events (of their branch, for a key
/// made for one). The request timeout bounds only the wait for the answer
/// to start, not how long it streams. Routing keys: `task.<state>`,
/// `loaned.<branch>`, `renewed.<branch>`, `returned.<branch>`,
/// `rejected.<kind>.<branch>`, `hold.<kind>.<branch>`; at most 16
/// patterns.
#[utoipa::path(
    get, path = "/events/stream", tag = "web", operation_id = "streamEvents",
    params(StreamQuery),
    responses(
        (status = 200, description = "The stream: `event: ready`, then `data:` lines, one event per outcome.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "An unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "A malformed pattern, none, or too many (`invalid_keys`, field `keys`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ cannot be reached, so there is no live feed, or this process serves `BIBLIOMQ_LIVE_FEEDS_MAX` feeds already (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn stream_events(
    Acting(state): Acting,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = state
        .commands
        .follow_events(q.keys.as_deref(), BUFFER)
        .await?;
    let ready = Event::default().event("ready").data(to_line(&StreamReady {
        keys: feed.patterns(),
    }));
    // The feed gives only what the key may see while it is in force; its
    // refusal is the stream's last event.
    let events = stream::unfold(feed, |mut feed| async move {
        let event = match feed.next().await? {
            Ok(message) => to_event(&message),
            Err(e) => {
                let body = ErrorAnswer {
                    error: ApiError::from(e).into_body(),
                };
                Event::default().event("error").data(to_line(&body))
            }
        };
        Some((Ok(event), feed))
    });
    let stream = stream::once(async move { Ok(ready) })
        .chain(events)
        .take_until(state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The data of the `ready` event of /v1/events/stream.
#[derive(Serialize, ToSchema)]
#[schema(as = EventStreamReady)]
struct StreamReady<'a> {
    /// The patterns followed.
    #[schema(value_type = Vec<String>)]
    keys: &'a [String],
}

/// The data of each other event of /v1/events/stream: its routing key and
/// its body.
#[derive(Serialize, ToSchema)]
#[schema(as = EventStreamEvent)]
struct StreamEvent<'a> {
    routing_key: &'a str,
    /// The outcome event as published: its JSON, or its text when it is not JSON.
    event: Value,
}

fn to_line(data: &impl Serialize) -> String {
    // Plain structs of strings and JSON values always serialise.
    serde_json::to_string(data).unwrap_or_default()
}

fn to_event(message: &EventMessage) -> Event {
    Event::default().data(to_line(&StreamEvent {
        routing_key: &message.routing_key,
        event: message.json(),
    }))
}
