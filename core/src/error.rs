//! The errors of the command layer. Each transport (HTTP, ZeroMQ, TCP) turns
//! them into its own representation; none invents its own validation errors.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::tasks::state::TaskState;

/// The error object of every transport: the HTTP API answers
/// `{"error": ErrorBody}`, the ZeroMQ edge `{"ok": false, "error": ErrorBody}`
/// and the line gateways put its message and code on their lines. Serialised
/// as `{"code", "message", "field"?, ...details}`, in that order.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `not_available`.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
    /// Further members of the error object: what the error is about.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(inline, value_type = ErrorDetailMembers)]
    pub details: Option<Box<ErrorDetails>>,
}

/// What some errors carry beside code, message and field, as members of the
/// error object: one variant per kind of error that has any.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ErrorDetails {
    /// `ambiguous_title`: the titles the words match.
    Candidates { candidates: Vec<TitleCandidate> },
    /// A refused loan (`not_available`): when a copy is due back, if any
    /// is; and the loan's idempotency key.
    NotAvailable {
        earliest_due_at: Option<DateTime<Utc>>,
        idempotency_key: String,
    },
    /// A refused loan (`loan_limit_reached`): the patron's loans and the
    /// limit; and the loan's idempotency key.
    LoanLimitReached {
        open_loans: i64,
        max_loans: i64,
        idempotency_key: String,
    },
    /// A refused loan (`patron_blocked`): why the patron is blocked; and
    /// the loan's idempotency key.
    PatronBlocked {
        patron: Option<String>,
        reason: Option<String>,
        idempotency_key: String,
    },
    /// Any other refused loan: its idempotency key, to retry with.
    RefusedLoan { idempotency_key: String },
    /// `idempotency_key_reused` (a task submission): the key.
    KeyReused { idempotency_key: String },
    /// `task_failed`, `result_not_ready`: the task's state.
    TaskState { state: TaskState },
    /// `forbidden`: the roles that may do it, and the caller's.
    Forbidden {
        required_roles: Vec<crate::auth::Role>,
        role: crate::auth::Role,
    },
    /// `rate_limited`: seconds to wait (also the `Retry-After` header).
    RateLimited { retry_after: u64 },
    /// `invalid_tasks` (a batch submission): what is wrong with which item.
    Items { errors: Vec<ItemError> },
}

/// What is wrong with one item of a batch, by its index (from 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    /// The item's place in the batch, from 0.
    pub index: usize,
    /// Stable machine-readable code, as the single request would answer it
    /// (`invalid_payload`, `unknown_action`, `idempotency_key_reused`, ...).
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
    /// The item's field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
}

/// A title that matched the words of a loan request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TitleCandidate {
    pub isbn: String,
    pub title: String,
}

/// The members [`ErrorDetails`] may add, for the OpenAPI document: each
/// optional, and present only with the errors named. (Only its schema is
/// used: an untagged enum flattened into the error object has no derived
/// schema a client could read.)
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetailMembers {
    /// `ambiguous_title`: the titles the words match.
    #[schema(nullable = false)]
    candidates: Option<Vec<TitleCandidate>>,
    /// `not_available`: when the first copy is due back (null when none is known).
    earliest_due_at: Option<DateTime<Utc>>,
    /// `loan_limit_reached`: the patron's open loans.
    #[schema(nullable = false)]
    open_loans: Option<i64>,
    /// `loan_limit_reached`: the most a patron may hold.
    #[schema(nullable = false)]
    max_loans: Option<i64>,
    /// A refused loan: the idempotency key to retry with.
    #[schema(nullable = false)]
    idempotency_key: Option<String>,
    /// `patron_blocked`: the patron.
    #[schema(nullable = false)]
    patron: Option<String>,
    /// `patron_blocked`: why the patron is blocked (null when no reason was recorded).
    reason: Option<String>,
    /// `task_failed`, `result_not_ready`, `task_finished`: the task's state.
    #[schema(nullable = false)]
    state: Option<TaskState>,
    /// `forbidden`: the roles that may do what was asked.
    #[schema(nullable = false)]
    required_roles: Option<Vec<crate::auth::Role>>,
    /// `forbidden`: the role of the key that asked.
    #[schema(nullable = false)]
    role: Option<crate::auth::Role>,
    /// `rate_limited`: seconds to wait before trying again.
    #[schema(nullable = false)]
    retry_after: Option<u64>,
    /// `invalid_tasks`: the refused items of a batch, by index.
    #[schema(nullable = false)]
    errors: Option<Vec<ItemError>>,
}

impl ErrorBody {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Adds what the error is about.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }
}

/// The body a client sees for a command error. Our own failures are logged
/// here, with their cause, and reach the client without it.
impl From<CommandError> for ErrorBody {
    fn from(e: CommandError) -> Self {
        let code = e.code();
        let message = e.public_message();
        match e {
            CommandError::Invalid(invalid) | CommandError::OutOfBounds(invalid) => Self {
                field: invalid.field,
                ..Self::new(code, message)
            },
            CommandError::Conflict { details, .. } => {
                let body = Self::new(code, message);
                match details {
                    Some(details) => body.with_details(details),
                    None => body,
                }
            }
            CommandError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "internal error");
                Self::new(code, message)
            }
            CommandError::Unavailable(_) => {
                tracing::warn!(%message, "a dependency is unavailable");
                Self::new(code, message)
            }
            CommandError::NotFound { .. }
            | CommandError::Timeout(_)
            | CommandError::Unauthenticated(_) => Self::new(code, message),
            CommandError::Forbidden(refused) => {
                Self::new(code, message).with_details(ErrorDetails::Forbidden {
                    required_roles: refused.required,
                    role: refused.role,
                })
            }
            CommandError::RateLimited(wait) => {
                Self::new(code, message).with_details(ErrorDetails::RateLimited {
                    retry_after: retry_after_secs(wait),
                })
            }
            CommandError::InvalidItems(errors) => {
                Self::new(code, message).with_details(ErrorDetails::Items { errors })
            }
        }
    }
}

impl From<Invalid> for ErrorBody {
    fn from(i: Invalid) -> Self {
        Self {
            code: i.code,
            message: i.message,
            field: i.field,
            details: None,
        }
    }
}

/// A request that cannot be carried out as given: the caller's mistake.
/// Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// Stable machine-readable code, e.g. `invalid_isbn`.
    pub code: &'static str,
    /// The request field at fault, when there is one (`payload`, `isbn`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            field: None,
            message: message.into(),
        }
    }

    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// Everything a command can fail with. The variants separate the caller's
/// mistakes (which say what to fix) from our failures (which are logged and
/// reported without internals).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A request parameter beyond what this server is configured to accept
    /// (e.g. a `timeout_ms` above the maximum): a malformed request, told
    /// apart from [`CommandError::Invalid`] content (HTTP 400, not 422).
    #[error(transparent)]
    OutOfBounds(Invalid),
    /// What was asked for does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request is valid but a rule or the current state refuses it.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<ErrorDetails>,
    },
    /// A dependency (message broker, database, object storage) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The work was accepted but its answer did not come in time.
    #[error("{0}")]
    Timeout(String),
    /// Our own failure; the details are logged, never shown to the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// No key, or not a valid one (unknown, revoked, mistyped). The message
    /// never repeats what was sent.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid key whose role (or branch, or patron) does not cover the request.
    #[error("{}", .0.message)]
    Forbidden(crate::auth::Refused),
    /// The key has made too many requests; try again after the wait.
    #[error("this key has made too many requests; try again in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    /// Items of a batch that cannot be carried out as given, by index
    /// (`invalid_tasks`); nothing of the batch was done.
    #[error("{} item(s) of the batch were refused, the first at index {}; nothing was queued", .0.len(), .0.first().map_or(0, |e| e.index))]
    InvalidItems(Vec<ItemError>),
}

/// Whole seconds to wait, at least one.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl CommandError {
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The stable code a client can switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(i) | Self::OutOfBounds(i) => i.code,
            Self::NotFound { code, .. } | Self::Conflict { code, .. } => code,
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
            Self::Unauthenticated(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited(_) => "rate_limited",
            Self::InvalidItems(_) => "invalid_tasks",
        }
    }

    /// The message a client may see. Internal errors say nothing of their cause.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error; it has been logged".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<crate::broker::PublishError> for CommandError {
    fn from(e: crate::broker::PublishError) -> Self {
        Self::publish_failed(e)
    }
}

impl CommandError {
    /// A publish the broker did not confirm, and nothing was queued.
    pub fn publish_failed(reason: impl std::fmt::Display) -> Self {
        Self::Unavailable(format!(
            "message broker unavailable, nothing was queued: {reason}"
        ))
    }
}

impl From<deadpool_postgres::PoolError> for CommandError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        if crate::db::is_unavailable(&e) {
            Self::Unavailable("database unavailable".to_owned())
        } else {
            Self::Internal(anyhow::Error::new(e).context("database query failed"))
        }
    }
}

impl From<tokio_postgres::Error> for CommandError {
    fn from(e: tokio_postgres::Error) -> Self {
        deadpool_postgres::PoolError::Backend(e).into()
    }
}

impl From<crate::db::DbFailure> for CommandError {
    fn from(e: crate::db::DbFailure) -> Self {
        if e.unavailable {
            Self::Unavailable("database unavailable".to_owned())
        } else {
            Self::Internal(anyhow::anyhow!("database statement failed: {}", e.message))
        }
    }
}

impl<E: Into<CommandError>> From<crate::batch::BatchError<E>> for CommandError {
    fn from(e: crate::batch::BatchError<E>) -> Self {
        match e {
            crate::batch::BatchError::Failed(e) => e.into(),
            crate::batch::BatchError::Closed => Self::Unavailable("shutting down".to_owned()),
        }
    }
}
