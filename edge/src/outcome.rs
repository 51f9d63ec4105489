//! Running a task through the real pipeline for a client that waits for the
//! answer: submit through the command layer, wait for the outcome, and, for
//! the line gateways, the result itself or why there is none.

use std::time::Duration;

use bibliomq_core::{
    commands::{Commands, TaskSubmission},
    error::CommandError,
    storage,
    tasks::store::TaskRecord,
};
use serde_json::Value;

use crate::{
    reply::{TaskProgress, result_path},
    wire::WireError,
};

/// Largest stored (object storage) result the line gateways inline in an
/// answer. Their clients read one line per answer; beyond this they are sent
/// to the HTTP download instead of receiving a line of unbounded size.
pub const MAX_FETCHED_RESULT: i64 = 16 * 1024 * 1024;

/// Where a submitted task stood when the wait ended.
#[derive(Debug)]
pub enum Progress {
    /// Succeeded, failed or dead.
    Finished(Box<TaskRecord>),
    /// Still queued or running when the wait ended.
    Unfinished(TaskProgress),
}

/// Submits a task (validation is the command layer's) and waits up to
/// `wait` for the outcome ([`Commands::submit_and_wait`]).
pub async fn submit_and_wait(
    commands: &Commands,
    submission: TaskSubmission,
    correlation_id: &str,
    wait: Duration,
) -> Result<Progress, CommandError> {
    let (submitted, latest) = commands
        .submit_and_wait(submission, correlation_id, wait)
        .await?;
    Ok(match latest {
        Some(task) if task.state.is_final() => Progress::Finished(Box::new(task)),
        Some(task) => Progress::Unfinished(TaskProgress {
            id: task.id,
            action: submitted.action,
            state: task.state,
        }),
        // Only following it failed: say what is certain, that it is queued.
        None => Progress::Unfinished(TaskProgress {
            id: submitted.id,
            action: submitted.action,
            state: submitted.state,
        }),
    })
}

/// The result of a succeeded task as a value, fetched from object storage
/// when it was too large for PostgreSQL (for the line gateways, whose
/// clients cannot follow a link). JSON results come back as JSON, text
/// results (CSV) as a string.
pub async fn result_value(commands: &Commands, task: &TaskRecord) -> Result<Value, WireError> {
    let Some(object) = &task.result_object else {
        return Ok(task.result.clone().unwrap_or(Value::Null));
    };
    if object.size > MAX_FETCHED_RESULT {
        return Err(WireError::new(
            "result_too_large",
            format!(
                "the result of task {} is {} bytes, more than this gateway sends; download it over HTTP at {}",
                task.id,
                object.size,
                result_path(task.id)
            ),
        ));
    }
    let body = commands
        .open_stored_result(&object.bucket, &object.key)
        .await?;
    let bytes = storage::collect(body).await.map_err(|e| {
        tracing::warn!(error = %e, "reading a stored result failed");
        WireError::new("unavailable", "object storage unavailable")
    })?;
    if object.content_type.starts_with("application/json") {
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(error = %e, key = %object.key, "a stored JSON result does not parse");
            WireError::new("internal", "internal error; it has been logged")
        })
    } else {
        Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// Why a finished task has no result, for the line gateways: `timeout`
/// or `cancelled` when it was stopped, `task_failed` otherwise.
pub fn failure(task: &TaskRecord) -> WireError {
    let code = match task.error_code.as_deref() {
        Some(bibliomq_core::tasks::TIMEOUT_CODE) => bibliomq_core::tasks::TIMEOUT_CODE,
        Some(bibliomq_core::tasks::CANCELLED_CODE) => bibliomq_core::tasks::CANCELLED_CODE,
        _ => "task_failed",
    };
    WireError::new(
        code,
        format!(
            "task {} {}: {}",
            task.id,
            task.state,
            task.error.as_deref().unwrap_or("no reason recorded")
        ),
    )
}

/// A task still going when the gateway stopped waiting.
pub fn still_going(progress: &TaskProgress, waited: Duration) -> WireError {
    let TaskProgress { id, state, .. } = progress;
    WireError::new(
        "not_finished",
        format!(
            "task {id} is still {state} after {} ms; follow it over HTTP at /v1/tasks/{id}",
            waited.as_millis()
        ),
    )
}
