//! Library messages as they travel through RabbitMQ.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema;

/// A loan request on the loans RPC queue; the reply goes to `reply_to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoanRequestMessage {
    pub operation_id: Uuid,
    pub idempotency_key: String,
    /// Identifies what was asked, so a key reused for something else is caught.
    pub fingerprint: String,
    pub isbn: String,
    pub patron: String,
    pub branch: String,
    pub requested_at: DateTime<Utc>,
}

/// A renewal or return on the circulation exchange (`renewal.<branch>`,
/// `return.<branch>`). The operation row exists (`pending`) before it is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CirculationMessage {
    pub operation_id: Uuid,
    pub kind: OperationKind,
    pub loan_id: Uuid,
    pub isbn: String,
    pub patron: String,
    pub branch: String,
    pub requested_at: DateTime<Utc>,
}

crate::words::word_enum!(
    "operation state",
    /// A renewal or return is `pending` until a worker settles it as
    /// `applied` or `rejected`; loans are settled at once. The settled two
    /// are also the outcomes in the circulation history.
    pub enum OperationState {
        Pending = "pending",
        Applied = "applied",
        Rejected = "rejected",
    }
);

crate::words::word_enum!(
    "operation kind",
    /// What an operation does; its word is also the routing key prefix on
    /// the circulation exchange.
    pub enum OperationKind {
        Loan = "loan",
        Renewal = "renewal",
        Return = "return",
    }
);

impl OperationKind {
    /// The event of an applied operation.
    pub fn applied_event(self) -> CirculationEventType {
        match self {
            Self::Loan => CirculationEventType::Loaned,
            Self::Renewal => CirculationEventType::Renewed,
            Self::Return => CirculationEventType::Returned,
        }
    }
}

crate::words::word_enum!(
    "circulation event",
    /// The `type` of a circulation event; also the first word of its routing key.
    pub enum CirculationEventType {
        Loaned = "loaned",
        Renewed = "renewed",
        Returned = "returned",
        Rejected = "rejected",
    }
);

/// An outcome event of the library on `bibliomq.events`, published after
/// the change is committed: `loaned.<branch>`, `renewed.<branch>`,
/// `returned.<branch>` or `rejected.<operation>.<branch>`. Every event has
/// every member; those that do not apply are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CirculationEvent {
    #[serde(rename = "type")]
    pub event: CirculationEventType,
    pub operation: OperationKind,
    pub operation_id: Uuid,
    pub loan_id: Option<Uuid>,
    pub branch: String,
    pub isbn: String,
    pub patron: String,
    /// Loans: the loan made.
    pub loan: Option<super::outcome::LoanMade>,
    /// Renewals and returns: what changed, or the refusal.
    pub outcome: Option<super::outcome::Settlement>,
    /// Refusals: the code and its message.
    pub reason: Option<super::outcome::RefusalCode>,
    pub message: Option<String>,
    pub correlation_id: String,
    pub at: DateTime<Utc>,
}

impl CirculationEvent {
    /// The routing key it is published with.
    pub fn routing_key(&self) -> String {
        match self.event {
            CirculationEventType::Rejected => {
                format!("rejected.{}.{}", self.operation, self.branch)
            }
            applied => format!("{applied}.{}", self.branch),
        }
    }
}

// The OpenAPI schemas of the words an operation answer may hold.

/// The state of an operation just accepted.
pub fn pending() -> utoipa::openapi::Schema {
    schema::one_of_words(&[OperationState::Pending.as_str()])
}

/// What an accepted operation is: a renewal or a return (loans are
/// answered at once).
pub fn renewal_or_return() -> utoipa::openapi::Schema {
    schema::one_of_words(&[
        OperationKind::Renewal.as_str(),
        OperationKind::Return.as_str(),
    ])
}

/// How an operation was settled.
pub fn settled() -> utoipa::openapi::Schema {
    schema::one_of_words(&[
        OperationState::Applied.as_str(),
        OperationState::Rejected.as_str(),
    ])
}
