//! The task message as it travels through RabbitMQ.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::broker::headers;

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
        routing_key(&self.action)
    }
}

/// The AMQP `type` of a message that carries several tasks (a bundle).
pub const BUNDLE_KIND: &str = "bibliomq.task-bundle";

/// Routing key of a bundle on the tasks exchange.
pub const BUNDLE_ROUTING_KEY: &str = "task.bundle";

/// Most tasks one bundle carries. A batch submission's tasks travel in
/// bundles of up to this many, so a thousand tasks cost ten messages, not a
/// thousand; small enough that a batch still spreads over several workers,
/// and that a bundle given back after a crash sends little work round again.
pub const BUNDLE_MAX: usize = 100;

/// Body of a bundle: several first-attempt [`TaskMessage`]s in one
/// message. A worker runs each task as if it had come alone and acks the
/// bundle once every task's outcome is committed. A bundle delivered again
/// (its worker died, or gave it back) is not run as a bundle: the worker
/// splits it into one message per task, so retries, poison checks and dead
/// letters stay per task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TaskBundle {
    pub tasks: Vec<TaskMessage>,
    /// Each task's correlation id, in order, when the tasks came from
    /// different requests; empty when they share the bundle's own.
    #[serde(default)]
    pub correlation_ids: Vec<String>,
}

impl TaskBundle {
    /// The body of a bundle of `messages`, each already a serialized
    /// [`TaskMessage`]: they are joined as they are, not serialized again.
    /// `correlation_ids`: one a task, or none when they share the bundle's.
    pub fn body<'a>(
        messages: impl IntoIterator<Item = &'a [u8]>,
        correlation_ids: &[&str],
    ) -> Vec<u8> {
        let mut body = br#"{"tasks":"#.to_vec();
        crate::broker::push_json_array(&mut body, messages);
        if !correlation_ids.is_empty() {
            body.extend_from_slice(br#","correlation_ids":"#);
            // A list of strings always serializes.
            body.extend_from_slice(&serde_json::to_vec(correlation_ids).unwrap_or_default());
        }
        body.push(b'}');
        body
    }

    /// The correlation id of the task at `index`, when it has its own.
    pub fn correlation_id(&self, index: usize) -> Option<&str> {
        self.correlation_ids.get(index).map(String::as_str)
    }
}

/// Whether a delivery's properties mark it as a bundle.
pub fn is_bundle(props: &lapin::BasicProperties) -> bool {
    crate::broker::headers::has_type(props, BUNDLE_KIND)
}

/// A task's routing key on the tasks exchange.
fn routing_key(action: &str) -> String {
    format!("task.{action}")
}

/// The properties of a task's first message: persistent, attempt 1.
fn first_attempt(id: Uuid, correlation_id: &str) -> lapin::BasicProperties {
    headers::with_header(
        headers::persistent_json(&id.to_string(), correlation_id),
        headers::ATTEMPT,
        lapin::types::AMQPValue::LongLongInt(1),
    )
}

/// A task's first message, ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: Uuid,
    /// The task's action, as its routing key `task.<action>` names it.
    pub action: String,
    /// A serialized [`TaskMessage`].
    pub body: Vec<u8>,
    /// The correlation id of the request that made it.
    pub correlation_id: String,
}

/// Publishes the first attempts of `tasks` on the tasks exchange, in
/// bundles ([`first_messages`]), their confirms awaited together
/// (`publish_many`); answers, a task at a time in order, whether the
/// message that carries it was confirmed, or why not.
pub async fn publish_first(
    publisher: &crate::broker::Publisher,
    tasks: &[Outgoing],
) -> Vec<Result<(), String>> {
    let messages = first_messages(tasks);
    let published = publisher
        .publish_many(crate::broker::topology::TASKS_EXCHANGE, &messages, true)
        .await;
    let mut answers = Vec::with_capacity(tasks.len());
    for (chunk, result) in tasks.chunks(BUNDLE_MAX).zip(published) {
        let answer = result.map_err(|e| e.to_string());
        answers.extend(std::iter::repeat_n(answer, chunk.len()));
    }
    answers
}

/// The messages (routing key, body, properties) that carry the first
/// attempts of `tasks`, in order: bundles of up to [`BUNDLE_MAX`], and a
/// task left alone as its own message.
fn first_messages(tasks: &[Outgoing]) -> Vec<(String, Vec<u8>, lapin::BasicProperties)> {
    tasks
        .chunks(BUNDLE_MAX)
        .map(|chunk| match chunk {
            [one] => (
                routing_key(&one.action),
                one.body.clone(),
                first_attempt(one.id, &one.correlation_id),
            ),
            _ => {
                let first = chunk[0].correlation_id.as_str();
                let own: Vec<&str> = if chunk.iter().all(|t| t.correlation_id == first) {
                    Vec::new()
                } else {
                    chunk.iter().map(|t| t.correlation_id.as_str()).collect()
                };
                (
                    BUNDLE_ROUTING_KEY.to_owned(),
                    TaskBundle::body(chunk.iter().map(|t| t.body.as_slice()), &own),
                    first_attempt(Uuid::new_v4(), first).with_type(BUNDLE_KIND.into()),
                )
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tasks::Action;

    fn message(timeout_ms: Option<u64>) -> TaskMessage {
        TaskMessage {
            id: Uuid::nil(),
            action: "primes".into(),
            payload: Value::from(10),
            submitted_at: Utc::now(),
            timeout_ms,
        }
    }

    #[test]
    fn a_run_gets_the_least_of_the_asked_the_action_s_own_and_the_maximum_limit() {
        let max = Duration::from_secs(300);
        let own = Action::Primes.default_timeout();
        assert_eq!(message(None).time_limit(Action::Primes, max), own);
        assert_eq!(
            message(Some(250)).time_limit(Action::Primes, max),
            Duration::from_millis(250)
        );
        assert_eq!(message(Some(299_000)).time_limit(Action::Primes, max), own);
        let low_max = Duration::from_secs(1);
        assert_eq!(message(None).time_limit(Action::Primes, low_max), low_max);
    }

    fn outgoing(n: usize, correlation: impl Fn(usize) -> String) -> Vec<Outgoing> {
        (0..n)
            .map(|i| Outgoing {
                id: Uuid::now_v7(),
                action: "sum".to_owned(),
                body: format!(
                    r#"{{"id":"{}","action":"sum","payload":"{i},1","submitted_at":"2026-12-06T00:00:00Z"}}"#,
                    Uuid::now_v7()
                )
                .into_bytes(),
                correlation_id: correlation(i),
            })
            .collect()
    }

    #[test]
    fn tasks_go_a_hundred_to_a_bundle_and_one_left_alone_as_its_own_message() {
        let messages = first_messages(&outgoing(201, |_| "req".to_owned()));
        assert_eq!(messages.len(), 3);
        for (key, body, props) in &messages[..2] {
            assert_eq!(key, BUNDLE_ROUTING_KEY);
            assert!(is_bundle(props));
            let bundle: TaskBundle = serde_json::from_slice(body).unwrap();
            assert_eq!(bundle.tasks.len(), 100);
            assert!(bundle.correlation_ids.is_empty(), "they share the bundle's");
            assert_eq!(headers::correlation_id(props), "req");
        }
        let (key, _, props) = &messages[2];
        assert_eq!(key, "task.sum");
        assert!(!is_bundle(props));
    }

    #[test]
    fn tasks_of_different_requests_keep_their_own_correlation_ids_in_a_bundle() {
        let tasks = outgoing(3, |i| format!("req-{i}"));
        let messages = first_messages(&tasks);
        assert_eq!(messages.len(), 1);
        let bundle: TaskBundle = serde_json::from_slice(&messages[0].1).unwrap();
        assert_eq!(bundle.correlation_ids, vec!["req-0", "req-1", "req-2"]);
        let ids: Vec<String> = bundle.tasks.iter().map(|t| t.payload.to_string()).collect();
        assert_eq!(ids, vec![r#""0,1""#, r#""1,1""#, r#""2,1""#], "in order");
    }

    #[test]
    fn a_bundle_body_joins_the_messages_as_they_are() {
        let one = serde_json::to_vec(&message(None)).unwrap();
        let two = serde_json::to_vec(&message(Some(5))).unwrap();
        let body = TaskBundle::body([one.as_slice(), two.as_slice()], &[]);
        let bundle: TaskBundle = serde_json::from_slice(&body).unwrap();
        assert_eq!(bundle.tasks.len(), 2);
        assert_eq!(bundle.tasks[0], serde_json::from_slice(&one).unwrap());
        assert_eq!(bundle.tasks[1].timeout_ms, Some(5));
        assert_eq!(bundle.correlation_id(0), None);
        let empty: TaskBundle = serde_json::from_slice(&TaskBundle::body([], &[])).unwrap();
        assert!(empty.tasks.is_empty());

        // Tasks of different requests keep their own correlation ids.
        let body = TaskBundle::body([one.as_slice(), two.as_slice()], &["a\"b", "c"]);
        let bundle: TaskBundle = serde_json::from_slice(&body).unwrap();
        assert_eq!(bundle.correlation_id(0), Some("a\"b"));
        assert_eq!(bundle.correlation_id(1), Some("c"));
    }

    #[test]
    fn a_message_without_a_limit_reads_as_before() {
        let old = r#"{"id":"00000000-0000-0000-0000-000000000000","action":"sum","payload":"1,2","submitted_at":"2026-11-30T00:00:00Z"}"#;
        let m: TaskMessage = serde_json::from_str(old).unwrap();
        assert_eq!(m.timeout_ms, None);
        assert!(!serde_json::to_string(&m).unwrap().contains("timeout_ms"));
    }
}
