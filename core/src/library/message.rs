//! Library messages as they travel through RabbitMQ.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    /// Event routing key prefix of an applied operation.
    pub fn applied_event(self) -> &'static str {
        match self {
            Self::Loan => "loaned",
            Self::Renewal => "renewed",
            Self::Return => "returned",
        }
    }
}
