//! The HTTP API's answers, one struct each, built from the command layer's
//! types. Handlers return these (never JSON built by hand), so what a
//! client gets is what these types say.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    commands::{OperationAccepted, SubmittedTask, TaskCancellation},
    config::Branch,
    library::store::BookSummary,
    tasks::{Action, TaskState, store::TaskRecord},
};

/// Where to follow a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TaskLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub result: String,
}

impl TaskLinks {
    pub fn of(id: Uuid) -> Self {
        Self {
            this: format!("/v1/tasks/{id}"),
            result: format!("/v1/tasks/{id}/result"),
        }
    }
}

/// `202` to `POST /v1/tasks`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskAccepted {
    pub id: Uuid,
    pub action: Action,
    #[schema(schema_with = crate::schema::queued_or_scheduled)]
    pub state: TaskState,
    pub links: TaskLinks,
}

impl From<&SubmittedTask> for TaskAccepted {
    fn from(t: &SubmittedTask) -> Self {
        Self {
            id: t.id,
            action: t.action,
            state: t.state,
            links: TaskLinks::of(t.id),
        }
    }
}

/// `202` to `POST /v1/tasks/batch`: every task of the batch, in the order
/// sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TaskBatchAccepted)]
pub struct TaskBatchAccepted {
    pub tasks: Vec<TaskAccepted>,
}

impl From<&[SubmittedTask]> for TaskBatchAccepted {
    fn from(tasks: &[SubmittedTask]) -> Self {
        Self {
            tasks: tasks.iter().map(TaskAccepted::from).collect(),
        }
    }
}

/// `200` (cancelled) or `202` (running, being stopped) to
/// `POST /v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TaskCancel)]
pub struct TaskCancelAnswer {
    pub id: Uuid,
    /// `cancelled`, or `running` while its worker stops it.
    #[schema(schema_with = crate::schema::cancelled_or_running)]
    pub state: TaskState,
    /// True while the task still runs and its worker is stopping it.
    pub stopping: bool,
    pub links: TaskLinks,
}

impl From<TaskCancellation> for TaskCancelAnswer {
    fn from(c: TaskCancellation) -> Self {
        Self {
            id: c.id,
            state: c.state,
            stopping: c.stopping,
            links: TaskLinks::of(c.id),
        }
    }
}

/// A task, with its links: `GET /v1/tasks/{id}` and each item of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Task)]
pub struct TaskAnswer {
    #[serde(flatten)]
    pub task: TaskRecord,
    pub links: TaskLinks,
}

impl From<TaskRecord> for TaskAnswer {
    fn from(task: TaskRecord) -> Self {
        let links = TaskLinks::of(task.id);
        Self { task, links }
    }
}

/// `GET /v1/tasks`: newest first; `next_before` pages on (absent on the last page).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskAnswer>,
    /// Pass as `before` for the next page; null on the last.
    #[schema(required = true)]
    pub next_before: Option<Uuid>,
}

/// Where to follow an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OperationLinks {
    #[serde(rename = "self")]
    pub this: String,
}

/// `202` to `POST /v1/renewals` and `POST /v1/returns`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = OperationAccepted)]
pub struct OperationAcceptedAnswer {
    #[serde(flatten)]
    pub accepted: OperationAccepted,
    pub links: OperationLinks,
}

impl From<OperationAccepted> for OperationAcceptedAnswer {
    fn from(accepted: OperationAccepted) -> Self {
        let links = OperationLinks {
            this: format!("/v1/operations/{}", accepted.operation_id),
        };
        Self { accepted, links }
    }
}

/// `GET /v1/books?title=`: the words searched for and the titles found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BookSearch {
    pub query: String,
    pub books: Vec<BookSummary>,
}

/// One branch: its code and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Branch)]
pub struct BranchAnswer {
    pub code: String,
    pub name: String,
}

/// `GET /v1/branches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Branches)]
pub struct BranchList {
    pub branches: Vec<BranchAnswer>,
}

impl From<&[Branch]> for BranchList {
    fn from(branches: &[Branch]) -> Self {
        Self {
            branches: branches
                .iter()
                .map(|b| BranchAnswer {
                    code: b.code.clone(),
                    name: b.name.clone(),
                })
                .collect(),
        }
    }
}
