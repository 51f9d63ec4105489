//! The errors of the command layer. Each transport (HTTP, ZeroMQ, TCP) turns
//! them into its own representation; none invents its own validation errors.

use serde::Serialize;

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
    /// What was asked for does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request is valid but a rule or the current state refuses it.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<serde_json::Value>,
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
            Self::Invalid(i) => i.code,
            Self::NotFound { code, .. } | Self::Conflict { code, .. } => code,
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
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
        Self::Unavailable(format!(
            "message broker unavailable, nothing was queued: {e}"
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
