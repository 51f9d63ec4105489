//! The task message as it travels through RabbitMQ.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Body of a message on [`crate::broker::topology::TASKS_EXCHANGE`]. The
/// payload is the client's, unparsed: the worker checks it with the same
/// [`super::TaskRequest::parse`] the API used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub id: Uuid,
    pub action: String,
    pub payload: Value,
    pub submitted_at: DateTime<Utc>,
    /// The time limit the client asked for (`timeout_ms`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl TaskMessage {
    /// How long this task may run: the client's limit when it asked for one,
    /// never more than the action's own limit or `max`.
    pub fn time_limit(
        &self,
        action: super::Action,
        max: std::time::Duration,
    ) -> std::time::Duration {
        let own = action.default_timeout().min(max);
        match self.timeout_ms {
            Some(ms) => own.min(std::time::Duration::from_millis(ms)),
            None => own,
        }
    }

    /// Routing key on the tasks exchange: `task.<action>`.
    pub fn routing_key(&self) -> String {
        format!("task.{}", self.action)
    }
}

/// A task's outcome event on `bibliomq.events`: `task.succeeded`,
/// `task.failed`, `task.dead` or `task.cancelled`, published once the
/// outcome is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// `task.<state>`, the routing key too.
    #[serde(rename = "type")]
    pub event: String,
    pub task_id: Uuid,
    pub action: String,
    pub state: super::TaskState,
    pub attempts: i32,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

impl TaskEvent {
    pub fn new(
        message: &TaskMessage,
        state: super::TaskState,
        attempts: i32,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event: format!("task.{state}"),
            task_id: message.id,
            action: message.action.clone(),
            state,
            attempts,
            error: error.map(str::to_owned),
            at,
        }
    }
}
