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
}

impl TaskMessage {
    /// Routing key on the tasks exchange: `task.<action>`.
    pub fn routing_key(&self) -> String {
        format!("task.{}", self.action)
    }
}
