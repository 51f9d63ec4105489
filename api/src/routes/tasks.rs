//! `/v1/tasks`: submit, follow, list, cancel, fetch results.

use axum::{
    Extension, Json,
    body::Body,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use bibliomq_core::{
    answers::{TaskAccepted, TaskAnswer, TaskBatchAccepted, TaskCancelAnswer, TaskList},
    commands::TaskSubmission,
    error::{ErrorDetails, Invalid},
    tasks::{Action, TaskState},
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use uuid::Uuid;

use super::Routes;
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
    middleware::CorrelationId,
};

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(list, submit))
        .routes(routes!(submit_batch))
        .routes(routes!(show))
        .routes(routes!(result))
        .routes(routes!(cancel))
}

/// A task to run. What `payload` may be depends on `action`: the document
/// says so action by action ([`crate::openapi`]).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TaskSubmission)]
struct SubmitTask {
    #[schema(value_type = Action)]
    action: String,
    /// What the action works on, e.g. `"1,2,3"` for sum, `30` for fib, a string for upper.
    #[serde(default)]
    payload: Value,
    /// A time limit for this run, in milliseconds, up to
    /// BIBLIOMQ_TASK_TIMEOUT_MAX_MS (the `maximum` here). The action's own
    /// limit still applies when lower. Past it the task is stopped and fails
    /// with `error_code` `timeout`, not retried. Checked by the command
    /// layer (a whole number up to the maximum).
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1)]
    timeout_ms: Option<Value>,
    /// Run it at this time (RFC 3339), not before: the task is `scheduled`
    /// until then. At most 5 s in the past and at most
    /// BIBLIOMQ_TASK_DELAY_MAX_MS ahead, else 400 `invalid_schedule`. Not
    /// with `delay_ms`.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    run_at: Option<Value>,
    /// Run it this many milliseconds from now: the task is `scheduled`
    /// until then. Up to BIBLIOMQ_TASK_DELAY_MAX_MS (the `maximum` here).
    /// Not with `run_at`.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 0)]
    delay_ms: Option<Value>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TaskId {
    /// The task id.
    #[param(value_type = uuid::Uuid)]
    id: String,
}

/// Submit a task
///
/// Answered once RabbitMQ has confirmed the message. With an
/// `Idempotency-Key` already used for the same request: the first answer
/// again, with `idempotent-replayed: true`, and nothing queued.
///
/// With `?wait_ms=N` the request also waits, up to N ms, for the task to
/// end: 200 with the finished task (as `GET /v1/tasks/{id}` shows it), or,
/// when it is still unfinished then, the usual 202. Submit and result in
/// one request, for quick tasks.
#[utoipa::path(
    post, path = "/tasks", tag = "tasks", operation_id = "submitTask",
    params(
        (
            "Idempotency-Key" = Option<String>, Header,
            description = "Your key for safe retries: the same key with the same request answers with the first task (header `idempotent-replayed: true`) and queues nothing; with a different request, 409 `idempotency_key_reused`. A key lives as long as its task.",
            min_length = 1, max_length = 200, pattern = "^[!-~]+$", nullable = false
        ),
        WaitQuery,
    ),
    request_body = SubmitTask,
    responses(
        (status = 200, description = "With `wait_ms`: the task ended within the wait; here it is, finished (check `state`).", body = TaskAnswer,
            headers(
                ("Location" = String, description = "The task's path."),
                ("idempotent-replayed" = String, description = "`true` when this is the answer to an earlier request with the same Idempotency-Key."),
            )),
        (status = 202, description = "Queued, or `scheduled` when `run_at` or `delay_ms` was given (or, for a retried Idempotency-Key, the first answer again); follow it at `Location`.", body = TaskAccepted,
            headers(
                ("Location" = String, description = "The task's path."),
                ("idempotent-replayed" = String, description = "`true` when this is the answer to an earlier request with the same Idempotency-Key."),
            )),
        (status = 400, description = "The body is not JSON (`malformed_json`), `timeout_ms` is not from 1 to BIBLIOMQ_TASK_TIMEOUT_MAX_MS (`invalid_timeout`, with `field`), `run_at` is in the past, beyond BIBLIOMQ_TASK_DELAY_MAX_MS or not RFC 3339, `delay_ms` is over that maximum, or both are given (`invalid_schedule`, with `field`), the Idempotency-Key is not visible ASCII (`invalid_idempotency_key`), or an unknown query parameter (`invalid_query`); nothing was queued.", body = ErrorAnswer),
        (status = 409, description = "The Idempotency-Key was already used for a different request (`idempotency_key_reused`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json` (`unsupported_media_type`).", body = ErrorAnswer),
        (status = 422, description = "Unknown action or a payload the action cannot take (`unknown_action`, `invalid_payload`, `invalid_field`), a malformed Idempotency-Key (`invalid_idempotency_key`), or `wait_ms` not a whole number from 0 to 30000 (`invalid_wait`), with `field`; nothing was queued.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn submit(
    Acting(state): Acting,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<WaitQuery>,
    JsonBody(req): JsonBody<SubmitTask>,
) -> Result<Response, ApiError> {
    // Checked before anything is queued.
    let wait = q.wait_ms.as_deref().map(parse_wait).transpose()?;
    let submission = TaskSubmission {
        action: req.action,
        payload: req.payload,
        timeout_ms: req.timeout_ms,
        idempotency_key: super::idempotency_key(&headers)?,
        run_at: req.run_at,
        delay_ms: req.delay_ms,
    };
    // A wait that fails answers the 202, as without one: the task is
    // queued all the same (`Commands::submit_and_wait`).
    let (submitted, latest) = match wait {
        Some(wait) if !wait.is_zero() => {
            let wait = wait.min(longest_wait(&state));
            state
                .commands
                .submit_and_wait(submission, &correlation_id, wait)
                .await?
        }
        _ => (
            state.commands.submit(submission, &correlation_id).await?,
            None,
        ),
    };
    let location = format!("/v1/tasks/{}", submitted.id);
    let finished = latest.filter(|task| task.state.is_final());
    let mut response = match finished {
        Some(task) => (StatusCode::OK, Json(TaskAnswer::from(task))).into_response(),
        None => (StatusCode::ACCEPTED, Json(TaskAccepted::from(&submitted))).into_response(),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if submitted.replayed {
        h.insert(super::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One task of a batch: a task submission, with its own Idempotency-Key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TaskBatchItem)]
struct BatchTask {
    #[schema(value_type = Action)]
    action: String,
    /// What the action works on, as for a single submission.
    #[serde(default)]
    payload: Value,
    /// A time limit for this run, in milliseconds, as for a single submission.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1)]
    timeout_ms: Option<Value>,
    /// Run it at this time (RFC 3339), as for a single submission.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    run_at: Option<Value>,
    /// Run it this many milliseconds from now, as for a single submission.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 0)]
    delay_ms: Option<Value>,
    /// This task's key for safe retries, as the `Idempotency-Key` header
    /// of a single submission: sent again with the same task, the item
    /// answers with the first task and queues nothing.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[!-~]+$",
        nullable = false
    )]
    idempotency_key: Option<String>,
}

impl From<BatchTask> for TaskSubmission {
    fn from(t: BatchTask) -> Self {
        Self {
            action: t.action,
            payload: t.payload,
            timeout_ms: t.timeout_ms,
            idempotency_key: t.idempotency_key,
            run_at: t.run_at,
            delay_ms: t.delay_ms,
        }
    }
}

/// An item of a batch as a submission, or why it cannot be one (its
/// shape: a missing or unknown member, a wrong type).
fn batch_item(value: Value) -> Result<TaskSubmission, Invalid> {
    serde_json::from_value::<BatchTask>(value)
        .map(TaskSubmission::from)
        .map_err(|e| {
            let text = e.to_string();
            let field = ["missing field `", "unknown field `"]
                .iter()
                .find_map(|m| text.split(m).nth(1))
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            Invalid {
                code: "invalid_field",
                field,
                message: text,
            }
        })
}

/// Submit many tasks at once
///
/// Up to 1,000 tasks, each checked as `POST /v1/tasks` checks one: all are
/// queued, or none. Stored in one transaction, published together, and
/// answered once RabbitMQ has confirmed every message, with every task in
/// the order sent.
#[utoipa::path(
    post, path = "/tasks/batch", tag = "tasks", operation_id = "submitTaskBatch",
    request_body(content = Vec<BatchTask>, description = "From 1 to 1,000 tasks."),
    responses(
        (status = 202, description = "All queued (or `scheduled`, or for an item's retried `idempotency_key` the first task again), in the order sent.", body = TaskBatchAccepted),
        (status = 400, description = "The body is not JSON (`malformed_json`), holds no task (`empty_batch`) or more than 1,000 (`too_many_tasks`); nothing was queued.", body = ErrorAnswer),
        (status = 409, description = "Every refused item's `idempotency_key` was already used for a different task request (`invalid_tasks`, each error `idempotency_key_reused`); nothing was queued.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json` (`unsupported_media_type`).", body = ErrorAnswer),
        (status = 422, description = "The body is not an array (`invalid_field`), or items were refused (`invalid_tasks`): `errors` lists each with its `index` (from 0), `code` and `message` as the single submission would answer, and `field`; nothing was queued.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); the whole batch was withdrawn: send it again, with `idempotency_key`s to be safe. (When a worker had already taken one of its tasks, the batch stands accepted and the answer is 202.)", body = ErrorAnswer),
    )
)]
async fn submit_batch(
    Acting(state): Acting,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    JsonBody(items): JsonBody<Vec<Value>>,
) -> Result<Response, ApiError> {
    let items = items.into_iter().map(batch_item).collect();
    let submitted = state.commands.submit_batch(items, &correlation_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TaskBatchAccepted::from(submitted.as_slice())),
    )
        .into_response())
}

/// Cancel a task
///
/// A queued task is cancelled at once and never runs. A running one is
/// stopped by its worker within about a second and ends `cancelled`.
/// Cancelling again gives the same answer.
#[utoipa::path(
    post, path = "/tasks/{id}/cancel", tag = "tasks", operation_id = "cancelTask",
    params(TaskId),
    responses(
        (status = 200, description = "Cancelled (now, or earlier).", body = TaskCancelAnswer),
        (status = 202, description = "Running: its worker has been told to stop it (`stopping`); follow the task until it is `cancelled`.", body = TaskCancelAnswer),
        (status = 400, description = "The id is not a UUID (`invalid_task_id`).", body = ErrorAnswer),
        (status = 404, description = "No such task (`task_not_found`).", body = ErrorAnswer),
        (status = 409, description = "The task already ended otherwise (`task_finished`); `state` says how. Nothing changed.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn cancel(
    Acting(state): Acting,
    Path(TaskId { id }): Path<TaskId>,
) -> Result<Response, ApiError> {
    let cancelled = state.commands.cancel_task(parse_id(&id)?).await?;
    let status = if cancelled.stopping {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TaskCancelAnswer::from(cancelled))).into_response())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    super::parse_uuid(raw, "a task id", "invalid_task_id")
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ShowQuery {
    /// Wait up to this many milliseconds (0 to 30000, and at most a second
    /// less than the server's request time limit) for the task to end
    /// before answering: one request instead of polling. The answer is the
    /// task as it is then, finished or not (check `state`).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 30000)]
    wait_ms: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Once queued, wait up to this many milliseconds (0 to 30000, and at
    /// most a second less than the server's request time limit) for the
    /// task to end: 200 with the finished task, or 202 as without it.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 30000)]
    wait_ms: Option<String>,
}

/// The longest a request waits for a task: a second less than the
/// request's own time limit (`BIBLIOMQ_API_REQUEST_TIMEOUT_MS`), so a long
/// wait still answers with the task rather than with 504
/// `request_timeout`.
fn longest_wait(state: &crate::AppState) -> std::time::Duration {
    state
        .settings
        .api
        .request_timeout
        .saturating_sub(std::time::Duration::from_secs(1))
}

/// A task's state, attempts, timestamps, error and result
///
/// With `?wait_ms=N` the answer comes as soon as the task is finished, or
/// after N ms with the task as it is then.
#[utoipa::path(
    get, path = "/tasks/{id}", tag = "tasks", operation_id = "getTask",
    params(TaskId, ShowQuery),
    responses(
        (status = 200, description = "The task; `result` inline when small, `result_object` when stored in the bucket.", body = TaskAnswer),
        (status = 400, description = "The id is not a UUID (`invalid_task_id`), or an unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 404, description = "No such task (`task_not_found`).", body = ErrorAnswer),
        (status = 422, description = "`wait_ms` is not a whole number from 0 to 30000 (`invalid_wait`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn show(
    Acting(state): Acting,
    Path(TaskId { id }): Path<TaskId>,
    QueryParams(q): QueryParams<ShowQuery>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let task = match q.wait_ms.as_deref().map(parse_wait).transpose()? {
        Some(wait) if !wait.is_zero() => {
            state
                .commands
                .wait_for_task(id, wait.min(longest_wait(&state)))
                .await?
        }
        _ => state.commands.task(id).await?,
    };
    Ok(Json(task.into()))
}

/// `wait_ms`: 422 `invalid_wait` unless a whole number from 0 to 30000.
fn parse_wait(raw: &str) -> Result<std::time::Duration, ApiError> {
    use bibliomq_core::commands::WAIT_MAX_MS;
    match raw.parse::<u64>() {
        Ok(ms) if ms <= WAIT_MAX_MS => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_wait",
            format!("wait_ms must be a whole number of milliseconds from 0 to {WAIT_MAX_MS}, got `{raw}`"),
        )
        .with_field("wait_ms")),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>, inline)]
    state: Option<String>,
    /// Only tasks of this action.
    #[param(value_type = Option<Action>, inline)]
    action: Option<String>,
    /// At most this many (1 to 500, default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// Page on: tasks older than this id (`next_before` of the previous page).
    #[param(value_type = Option<uuid::Uuid>)]
    before: Option<String>,
}

/// Tasks, newest first
#[utoipa::path(
    get, path = "/tasks", tag = "tasks", operation_id = "listTasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks.", body = TaskList),
        (status = 400, description = "`before` is not a task id (`invalid_task_id`), or an unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "Bad `state`, `action` or `limit`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn list(
    Acting(state): Acting,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = super::parse_limit(q.limit.as_deref())?;
    let before = q.before.as_deref().map(parse_id).transpose()?;
    let tasks = state
        .commands
        .list_tasks(q.state.as_deref(), q.action.as_deref(), limit, before)
        .await?;
    let next = (tasks.len() as i64 == limit.unwrap_or(50))
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(Json(TaskList {
        tasks: tasks.into_iter().map(TaskAnswer::from).collect(),
        next_before: next,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ResultQuery {
    /// Answer with a redirect to a presigned object-storage link (large results only).
    redirect: Option<bool>,
}

/// The result itself
///
/// Inline results come from PostgreSQL; large ones are streamed from object
/// storage with `x-content-sha256`, or with `?redirect=true` answered by a
/// redirect to a presigned link.
#[utoipa::path(
    get, path = "/tasks/{id}/result", tag = "tasks", operation_id = "getTaskResult",
    params(TaskId, ResultQuery),
    responses(
        (status = 200, description = "The result: JSON, or CSV for `report`.",
            content((Value = "application/json"), (String = "text/csv")),
            headers(("x-content-sha256" = String, description = "SHA-256 of a stored result."))),
        (status = 307, description = "Redirect to a presigned link (`?redirect=true`, stored results).",
            headers(("Location" = String))),
        (status = 400, description = "The id is not a UUID (`invalid_task_id`).", body = ErrorAnswer),
        (status = 404, description = "No such task (`task_not_found`), or the stored result is missing (`result_missing`).", body = ErrorAnswer),
        (status = 409, description = "Not finished (`result_not_ready`) or finished without a result (`task_failed`); `state` says which.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn result(
    Acting(state): Acting,
    Path(TaskId { id }): Path<TaskId>,
    QueryParams(q): QueryParams<ResultQuery>,
) -> Result<Response, ApiError> {
    let task = state.commands.task(parse_id(&id)?).await?;
    match task.state {
        TaskState::Succeeded => {}
        TaskState::Failed | TaskState::Dead | TaskState::Cancelled => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "task_failed",
                format!(
                    "the task {} and has no result: {}",
                    task.state,
                    task.error.as_deref().unwrap_or("no reason recorded")
                ),
            )
            .with_details(ErrorDetails::TaskState { state: task.state }));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "result_not_ready",
                format!("the task is {other}; its result is not ready yet"),
            )
            .with_details(ErrorDetails::TaskState { state: other }));
        }
    }
    let content_type = task
        .result_content_type
        .clone()
        .unwrap_or_else(|| "application/json".to_owned());
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(obj) = &task.result_object {
        if q.redirect.unwrap_or(false) {
            let url = state.commands.presign_result(&obj.bucket, &obj.key).await?;
            return Ok(Redirect::temporary(&url).into_response());
        }
        let body = state
            .commands
            .open_stored_result(&obj.bucket, &obj.key)
            .await?;
        if let Ok(v) = HeaderValue::from_str(&obj.sha256) {
            headers.insert("x-content-sha256", v);
        }
        if let Some(size) = body.size {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        let stream = tokio_util::io::ReaderStream::new(body.body.into_async_read());
        return Ok((headers, Body::from_stream(stream)).into_response());
    }
    let body = match task.result {
        Some(Value::String(text)) if content_type.starts_with("text/") => text,
        Some(v) => v.to_string(),
        None => "null".to_owned(),
    };
    Ok((headers, body).into_response())
}
