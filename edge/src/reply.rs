//! What the ZeroMQ edge answers, one type per reply: handlers return an
//! [`Answer`] and the dispatcher wraps it in a [`ZmqReply`], so what a client
//! gets is what these types say. Where the HTTP API answers the same thing
//! (a book search, a loan receipt, an accepted operation) the type is the
//! command layer's own; errors are the system's one [`ErrorBody`].
//!
//! Members come in the order the types declare them, `ok` first.

use bibliomq_core::{
    answers::BookSearch,
    commands::{
        HoldCancelled, LoanReceipt, OperationAccepted, PatronHolds, PatronPage, TaskCancellation,
        TitleHolds,
    },
    error::ErrorBody,
    library::store::{BookView, CopyRecord, HoldView, OperationView, PatronView, TitleView},
    tasks::{
        Action, TaskState,
        store::{ResultObject, TaskRecord},
    },
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use zeromq::ZmqMessage;

/// `text` behind `envelope` (the identity frames a ROUTER message came
/// with, and the delimiter a REQ adds), for the ROUTER socket to send back
/// where it came from: a request's reply, or a followed feed's frame.
pub fn address(envelope: &[Bytes], text: String) -> ZmqMessage {
    let mut message = ZmqMessage::from(text);
    // The envelope goes in front of the body, last frame first.
    for frame in envelope.iter().rev() {
        message.push_front(frame.clone());
    }
    message
}

/// The HTTP path a task's result can be downloaded from.
pub fn result_path(id: Uuid) -> String {
    format!("/v1/tasks/{id}/result")
}

/// Every reply: `{"ok": true, ...answer}` or `{"ok": false, "error": {...}}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ZmqReply {
    Answered {
        ok: bool,
        // Boxed: answers are far larger than an error.
        #[serde(flatten)]
        answer: Box<Answer>,
    },
    Failed {
        ok: bool,
        error: ErrorBody,
    },
}

impl ZmqReply {
    pub fn answered(answer: Answer) -> Self {
        Self::Answered {
            ok: true,
            answer: Box::new(answer),
        }
    }

    pub fn failed(error: ErrorBody) -> Self {
        Self::Failed { ok: false, error }
    }
}

/// What a request that went well answers (the members beside `"ok": true`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `task` (finished) and `task_status`.
    Task(TaskReply),
    /// `task` still queued or running when the wait ended.
    TaskProgress(TaskProgress),
    /// `task_batch`: every task of the batch, in the order sent.
    TaskBatch { tasks: Vec<TaskProgress> },
    /// `task_cancel`: `cancelled`, or `running` with `stopping` while its
    /// worker stops it.
    Cancelled(TaskCancellation),
    /// `query_isbn`.
    Book(BookReply),
    /// `query_title`: the same answer as `GET /v1/books?title=`.
    Books(BookSearch),
    /// `loan`: the same answer as `POST /v1/loans`.
    Loan(LoanReceipt),
    /// `renew` and `return` without `wait`: the operation accepted.
    Accepted(OperationAccepted),
    /// `renew` and `return` with `wait`: the operation as it stood.
    Operation(OperationReply),
    /// `title_add`: the title as stored.
    Title { title: TitleView },
    /// `copy_add`, `copy_withdraw`: the copy as it now stands.
    Copy { copy: CopyRecord },
    /// `patron_add`, `patron_block`, `patron_unblock`, `patron_show`.
    Patron { patron: PatronView },
    /// `patron_list`: the same page as `GET /v1/patrons`.
    Patrons(PatronPage),
    /// `hold_place`: the hold placed, with its place in the queue.
    Hold { hold: HoldView },
    /// `hold_cancel`: the same answer as `DELETE /v1/holds/{id}`.
    HoldCancelled(HoldCancelled),
    /// `holds` with `patron`: the same answer as `GET /v1/patrons/{id}/holds`.
    PatronHolds(PatronHolds),
    /// `holds` with `isbn`: the same answer as `GET /v1/titles/{isbn}/holds`.
    TitleHolds(TitleHolds),
    /// `me`: the same answer as `GET /v1/me`.
    Me { caller: bibliomq_core::auth::Caller },
    /// `follow`: the patterns now followed; `unfollow`: none.
    Following { following: Vec<String> },
}

/// A task: id, action, state, attempts, and the result inline, or where a
/// large one is stored and its HTTP path, or why the task failed.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReply {
    pub id: Uuid,
    pub action: String,
    pub state: TaskState,
    pub attempts: i32,
    /// Succeeded tasks only.
    #[serde(flatten)]
    pub output: Option<TaskOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Why the task failed; named apart from `error`, which in a reply
    /// means the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_error: Option<String>,
    /// The failure's code (`timeout`, `cancelled`, ...), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_error_code: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// The result of a succeeded task.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TaskOutput {
    /// Small enough for the database: the result itself (`null` when none).
    Inline { result: Value },
    /// Kept in object storage: where, and the HTTP download.
    Stored {
        result_object: ResultObject,
        result_path: String,
    },
}

impl From<&TaskRecord> for TaskReply {
    fn from(task: &TaskRecord) -> Self {
        let succeeded = task.state == TaskState::Succeeded;
        let output = succeeded.then(|| match &task.result_object {
            Some(object) => TaskOutput::Stored {
                result_object: object.clone(),
                result_path: result_path(task.id),
            },
            None => TaskOutput::Inline {
                result: task.result.clone().unwrap_or(Value::Null),
            },
        });
        Self {
            id: task.id,
            action: task.action.clone(),
            state: task.state,
            attempts: task.attempts,
            output,
            content_type: task.result_content_type.clone().filter(|_| succeeded),
            task_error: task.error.clone(),
            task_error_code: task.error_code.clone(),
            created_at: task.created_at,
            finished_at: task.finished_at,
        }
    }
}

/// A task still queued or running when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskProgress {
    pub id: Uuid,
    pub action: Action,
    pub state: TaskState,
}

/// `query_isbn`: the book with its copies.
#[derive(Debug, Clone, Serialize)]
pub struct BookReply {
    pub book: BookView,
}

/// `renew` or `return` with `wait`: the operation, with the members of its
/// acceptance (`operation_id`, a renewal's `tentative_due_at`).
#[derive(Debug, Clone, Serialize)]
pub struct OperationReply {
    #[serde(flatten)]
    pub operation: OperationView,
    pub operation_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tentative_due_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use bibliomq_core::library::message::{OperationKind, OperationState};
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn task(state: TaskState) -> TaskRecord {
        TaskRecord {
            id: Uuid::nil(),
            action: "sum".into(),
            state,
            attempts: 1,
            correlation_id: Some("c-1".into()),
            created_at: at("2026-01-01T00:00:00Z"),
            started_at: Some(at("2026-01-01T00:00:01Z")),
            finished_at: Some(at("2026-01-01T00:00:02Z")),
            updated_at: at("2026-01-01T00:00:02Z"),
            error: None,
            error_code: None,
            cancel_requested_at: None,
            run_at: None,
            payload: Some(json!("1,2")),
            result: Some(json!(3)),
            result_object: None,
            result_content_type: Some("application/json".into()),
            result_size: Some(1),
        }
    }

    /// The reply as a client reads it back: text, then JSON.
    fn read_back(answer: Answer) -> (String, Value) {
        let text = crate::wire::to_text(&ZmqReply::answered(answer));
        let value = serde_json::from_str(&text).unwrap();
        (text, value)
    }

    #[test]
    fn a_succeeded_task_reads_back_with_its_result_inline() {
        let (text, value) = read_back(Answer::Task(TaskReply::from(&task(TaskState::Succeeded))));
        assert!(text.starts_with(r#"{"ok":true,"id":"#), "{text}");
        assert_eq!(
            value,
            json!({"ok": true, "id": Uuid::nil(), "action": "sum", "state": "succeeded",
                "attempts": 1, "result": 3, "content_type": "application/json",
                "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:02Z"})
        );
    }

    #[test]
    fn a_null_result_is_sent_as_null_and_a_stored_one_as_its_object_and_path() {
        let mut none = task(TaskState::Succeeded);
        none.result = None;
        none.result_content_type = None;
        let (_, value) = read_back(Answer::Task(TaskReply::from(&none)));
        assert_eq!(value.get("result"), Some(&Value::Null));
        assert!(value.get("content_type").is_none());

        let mut stored = task(TaskState::Succeeded);
        stored.result = None;
        stored.result_object = Some(ResultObject {
            bucket: "b".into(),
            key: "k".into(),
            size: 9,
            content_type: "text/csv".into(),
            sha256: "00".into(),
        });
        let (_, value) = read_back(Answer::Task(TaskReply::from(&stored)));
        assert!(value.get("result").is_none(), "{value}");
        assert_eq!(
            value["result_object"],
            json!({"bucket": "b", "key": "k", "size": 9, "content_type": "text/csv", "sha256": "00"})
        );
        assert_eq!(
            value["result_path"],
            "/v1/tasks/00000000-0000-0000-0000-000000000000/result"
        );
    }

    #[test]
    fn a_failed_task_reads_back_with_its_error_and_no_result() {
        let mut failed = task(TaskState::Failed);
        failed.error = Some("boom".into());
        let (_, value) = read_back(Answer::Task(TaskReply::from(&failed)));
        assert_eq!(
            value,
            json!({"ok": true, "id": Uuid::nil(), "action": "sum", "state": "failed",
                "attempts": 1, "task_error": "boom", "created_at": "2026-01-01T00:00:00Z",
                "finished_at": "2026-01-01T00:00:02Z"})
        );
    }

    #[test]
    fn a_settled_operation_reads_back_with_the_members_of_its_acceptance() {
        let operation = OperationView {
            id: Uuid::nil(),
            kind: OperationKind::Renewal,
            state: OperationState::Pending,
            reason: None,
            loan_id: Some(Uuid::nil()),
            isbn: Some("9788437604947".into()),
            patron: Some("ana".into()),
            branch: "norte".into(),
            requested_at: at("2026-01-01T00:00:00Z"),
            settled_at: None,
            outcome: None,
        };
        let due = at("2026-01-08T00:00:00Z");
        let (_, value) = read_back(Answer::Operation(OperationReply {
            operation: operation.clone(),
            operation_id: Uuid::nil(),
            tentative_due_at: Some(due),
        }));
        let mut expected = serde_json::to_value(&operation).unwrap();
        expected["ok"] = json!(true);
        expected["operation_id"] = json!(Uuid::nil());
        expected["tentative_due_at"] = json!(due);
        assert_eq!(value, expected);

        let (_, value) = read_back(Answer::Operation(OperationReply {
            operation,
            operation_id: Uuid::nil(),
            tentative_due_at: None,
        }));
        assert!(value.get("tentative_due_at").is_none(), "{value}");
    }

    #[test]
    fn a_failed_request_reads_back_as_the_error_body() {
        let error = ErrorBody::new("not_available", "none left").with_details(
            bibliomq_core::error::ErrorDetails::NotAvailable {
                earliest_due_at: Some(at("2026-01-08T00:00:00Z")),
                idempotency_key: "k-1".into(),
            },
        );
        let text = crate::wire::to_text(&ZmqReply::failed(error));
        assert_eq!(
            text,
            r#"{"ok":false,"error":{"code":"not_available","message":"none left","earliest_due_at":"2026-01-08T00:00:00Z","idempotency_key":"k-1"}}"#
        );
    }
}
