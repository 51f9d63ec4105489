//! `/v1/dead-letters`: what the dead-letter queues hold, and replaying it.

use axum::Json;
use bibliomq_core::commands::{DeadLetterList, DeadLetterReplay, DeadQueue, ReplaySelection};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::Routes;
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
};

pub fn routes() -> Routes {
    Routes::new().routes(routes!(list)).routes(routes!(replay))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Which dead-letter queue (default `tasks`).
    #[param(value_type = Option<DeadQueue>, inline)]
    queue: Option<String>,
    /// At most this many (1 to 500, default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// Page on: `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[0-9]{1,4}$")]
    cursor: Option<String>,
}

/// Dead letters, oldest first
///
/// Read without losing any: the messages are held unacknowledged while they
/// are read and handed back to the queue, in their order, afterwards.
#[utoipa::path(
    get, path = "/dead-letters", tag = "tasks", operation_id = "listDeadLetters",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the queue.", body = DeadLetterList),
        (status = 400, description = "A bad `cursor` (`invalid_cursor`) or an unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "Bad `queue` (`invalid_queue`) or `limit` (`invalid_limit`), with `field`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn list(
    Acting(state): Acting,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = super::parse_limit(q.limit.as_deref())?;
    let list = state
        .commands
        .dead_letters(q.queue.as_deref(), limit, q.cursor.as_deref())
        .await?;
    Ok(Json(list))
}

/// Dead letters to replay: `ids`, or `all: true`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeadLetterReplayRequest)]
struct ReplayBody {
    /// Which dead-letter queue (default `tasks`).
    #[serde(default)]
    #[schema(value_type = Option<DeadQueue>, nullable = false)]
    queue: Option<String>,
    /// The ids (`id` of a listed dead letter) to replay.
    #[serde(default)]
    #[schema(nullable = false, min_items = 1, max_items = 10000)]
    ids: Option<Vec<String>>,
    /// Replay everything in the queue.
    #[serde(default)]
    #[schema(nullable = false)]
    all: Option<bool>,
}

/// Replay dead letters
///
/// Each one is re-published to the exchange it was first sent to, and
/// removed from the dead-letter queue only once RabbitMQ has confirmed the
/// publish. A dead task is `queued` again, from its first attempt.
#[utoipa::path(
    post, path = "/dead-letters/replay", tag = "tasks", operation_id = "replayDeadLetters",
    request_body = ReplayBody,
    responses(
        (status = 200, description = "What was replayed.", body = DeadLetterReplay),
        (status = 400, description = "Malformed JSON (`malformed_json`).", body = ErrorAnswer),
        (status = 404, description = "An id is not in the queue (`dead_letter_not_found`); nothing was replayed.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json` (`unsupported_media_type`).", body = ErrorAnswer),
        (status = 422, description = "Neither `ids` nor `all: true`, both, or a bad `queue`, with `field`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing more was replayed.", body = ErrorAnswer),
    )
)]
async fn replay(
    Acting(state): Acting,
    JsonBody(body): JsonBody<ReplayBody>,
) -> Result<Json<DeadLetterReplay>, ApiError> {
    let selection = match (body.ids, body.all) {
        (Some(ids), None | Some(false)) => ReplaySelection::Ids(ids),
        (None, Some(true)) => ReplaySelection::All,
        _ => {
            return Err(ApiError::from(bibliomq_core::error::Invalid::field(
                "invalid_field",
                "ids",
                "give either `ids` or `all: true`",
            )));
        }
    };
    let replayed = state
        .commands
        .replay_dead_letters(body.queue.as_deref(), selection)
        .await?;
    Ok(Json(replayed))
}
