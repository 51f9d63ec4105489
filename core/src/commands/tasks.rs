//! Task commands: submit, look up, list, fetch results.

use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::Commands;
use crate::{
    batch::Batcher,
    broker::{headers, topology},
    db::DbFailure,
    error::{CommandError, Invalid},
    storage::ObjectBody,
    tasks::{
        Action, TaskMessage, TaskRequest, TaskState,
        store::{self, ListFilter, NewTask, TaskRecord},
    },
};

/// True when a string or key anywhere in `value` holds U+0000, which
/// PostgreSQL's `jsonb` cannot store.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Group-commits the `queued` rows of submissions arriving at the same time.
pub type TaskInserter = Batcher<NewTask, (), DbFailure>;

pub(super) fn inserter(pool: Pool) -> TaskInserter {
    Batcher::spawn(512, crate::batch::IN_FLIGHT, move |tasks: Vec<NewTask>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            store::insert_queued(&client, &tasks).await?;
            Ok(vec![(); tasks.len()])
        }
    })
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize)]
pub struct SubmittedTask {
    pub id: Uuid,
    pub action: Action,
    pub state: TaskState,
}

/// Most tasks one list call returns.
pub const LIST_MAX: i64 = 500;

impl Commands {
    /// Validates, records the task as `queued` and publishes it; returns once
    /// the broker has confirmed the message. On any failure nothing stays queued.
    #[tracing::instrument(skip_all, fields(action = %action, task_id))]
    pub async fn submit_task(
        &self,
        action: &str,
        payload: Value,
        correlation_id: &str,
    ) -> Result<SubmittedTask, CommandError> {
        let action: Action = action.parse()?;
        if holds_nul(&payload) {
            return Err(Invalid::field(
                "invalid_payload",
                "payload",
                "the payload cannot hold the character U+0000 (the database cannot store it)",
            )
            .into());
        }
        TaskRequest::parse(action, &payload)?;
        let id = Uuid::now_v7();
        tracing::Span::current().record("task_id", tracing::field::display(id));
        let message = TaskMessage {
            id,
            action: action.as_str().to_owned(),
            payload,
            submitted_at: chrono::Utc::now(),
        };
        let body = serde_json::to_vec(&message).map_err(anyhow::Error::from)?;

        self.inner
            .task_inserts
            .submit(NewTask {
                id,
                action: message.action.clone(),
                payload: message.payload,
                correlation_id: correlation_id.to_owned(),
            })
            .await?;

        let props = headers::with_header(
            headers::persistent_json(&id.to_string(), correlation_id),
            headers::ATTEMPT,
            lapin::types::AMQPValue::LongLongInt(1),
        );
        let published = self
            .publisher()
            .publish(
                topology::TASKS_EXCHANGE,
                &format!("task.{}", action.as_str()),
                &body,
                props,
                true,
            )
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "publish failed; withdrawing the task");
            if let Ok(client) = self.pool().get().await
                && let Err(e) = store::delete_queued(&**client, id).await
            {
                tracing::error!(error = %e, "could not withdraw the unpublished task");
            }
            return Err(e.into());
        }
        Ok(SubmittedTask {
            id,
            action,
            state: TaskState::Queued,
        })
    }

    pub async fn task(&self, id: Uuid) -> Result<TaskRecord, CommandError> {
        let client = self.pool().get().await?;
        store::get(&client, id).await?.ok_or_else(|| {
            CommandError::not_found("task_not_found", format!("no task with id {id}"))
        })
    }

    /// Waits until the task reaches a final state or `timeout` passes, and
    /// returns the latest record either way (check `state`).
    pub async fn wait_for_task(
        &self,
        id: Uuid,
        timeout: std::time::Duration,
    ) -> Result<TaskRecord, CommandError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let task = self.task(id).await?;
            if task.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
            tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }

    pub async fn list_tasks(
        &self,
        state: Option<&str>,
        action: Option<&str>,
        limit: Option<i64>,
        before: Option<Uuid>,
    ) -> Result<Vec<TaskRecord>, CommandError> {
        let state = state
            .map(str::parse::<TaskState>)
            .transpose()
            .map_err(|e| Invalid::field("invalid_state", "state", e.to_string()))?;
        let action = action.map(str::parse::<Action>).transpose()?;
        let limit = limit.unwrap_or(50);
        if !(1..=LIST_MAX).contains(&limit) {
            return Err(Invalid::field(
                "invalid_limit",
                "limit",
                format!("limit must be from 1 to {LIST_MAX}"),
            )
            .into());
        }
        let client = self.pool().get().await?;
        Ok(store::list(
            &**client,
            &ListFilter {
                state,
                action: action.map(|a| a.as_str().to_owned()),
                limit,
                before,
            },
        )
        .await?)
    }

    /// Opens a stored (large) result for streaming.
    pub async fn open_stored_result(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectBody, CommandError> {
        self.store().get(bucket, key).await.map_err(|e| match e {
            crate::storage::StorageError::NotFound => CommandError::not_found(
                "result_missing",
                "the stored result is missing from object storage",
            ),
            crate::storage::StorageError::Unavailable(detail) => {
                tracing::warn!(%detail, "object storage unavailable");
                CommandError::Unavailable("object storage unavailable".to_owned())
            }
        })
    }

    /// A presigned link to a stored result.
    pub async fn presign_result(&self, bucket: &str, key: &str) -> Result<String, CommandError> {
        self.store()
            .presigned_get(bucket, key)
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::holds_nul;

    #[test]
    fn a_nul_anywhere_in_a_payload_is_found() {
        assert!(!holds_nul(&json!({"a": ["b", 1, null]})));
        assert!(holds_nul(&json!("a\0b")));
        assert!(holds_nul(&json!([{"x": "\0"}])));
        assert!(holds_nul(&json!({"k\0": 1})));
    }
}
