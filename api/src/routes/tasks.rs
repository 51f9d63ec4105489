//! `/v1/tasks`: submit, follow, list, cancel, fetch results.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use bibliomq_core::{
    answers::{TaskAccepted, TaskAnswer, TaskCancelAnswer, TaskList},
    commands::TaskSubmission,
    tasks::TaskState,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Routes;
use crate::{
    AppState,
    error::ApiError,
    extract::{JsonBody, QueryParams},
    middleware::CorrelationId,
};

pub fn routes() -> Routes {
    Routes::new()
        .route("/tasks", get(list).post(submit))
        .route("/tasks/{id}", get(show))
        .route("/tasks/{id}/result", get(result))
        .route("/tasks/{id}/cancel", post(cancel))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTask {
    action: String,
    #[serde(default)]
    payload: Value,
    /// Checked by the command layer (a whole number up to the maximum).
    #[serde(default)]
    timeout_ms: Option<Value>,
}

/// `202 Accepted` once RabbitMQ has confirmed the task message. With an
/// `Idempotency-Key` already used for the same request: the first answer
/// again, with `idempotent-replayed: true`.
async fn submit(
    State(state): State<AppState>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitTask>,
) -> Result<Response, ApiError> {
    let submission = TaskSubmission {
        action: req.action,
        payload: req.payload,
        timeout_ms: req.timeout_ms,
        idempotency_key: super::idempotency_key(&headers)?,
    };
    let submitted = state.commands.submit(submission, &correlation_id).await?;
    let location = format!("/v1/tasks/{}", submitted.id);
    let mut response = (StatusCode::ACCEPTED, Json(TaskAccepted::from(&submitted))).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if submitted.replayed {
        h.insert(super::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `200` when the task is cancelled (now or before), `202` while its worker
/// stops it; `409` when it already ended otherwise.
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
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

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let task = state.commands.task(parse_id(&id)?).await?;
    Ok(Json(task.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    action: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

async fn list(
    State(state): State<AppState>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultQuery {
    /// `true`: answer with a redirect to a presigned object-storage link.
    redirect: Option<bool>,
}

/// The result itself: inline results from PostgreSQL, large ones streamed
/// from object storage (or a redirect to a presigned link with `?redirect=true`).
async fn result(
    State(state): State<AppState>,
    Path(id): Path<String>,
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
            .with_details(json!({ "state": task.state })));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "result_not_ready",
                format!("the task is {other}; its result is not ready yet"),
            )
            .with_details(json!({ "state": other })));
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
