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

/// The AMQP `type` of a loan request that carries several loans (a
/// bundle). A lone request is a [`LoanRequestMessage`] with no type.
pub const LOAN_BUNDLE_KIND: &str = "bibliomq.loan-bundle";

/// Most loans one bundle carries: as many as a loan worker settles in one
/// transaction.
pub const LOAN_BUNDLE_MAX: usize = 64;

/// Body of a loan bundle: loan requests that came together, each its own
/// call ([`crate::broker::rpc::RpcClient::call_many`]). The worker settles
/// them as it settles lone requests and answers them all in one reply
/// bundle ([`crate::broker::rpc::REPLY_BUNDLE_KIND`]). A bundle delivered
/// again is settled again: each request's idempotency key replays its
/// first answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoanBundle {
    pub requests: Vec<LoanRequestMessage>,
    /// The call id of each request, in order.
    pub calls: Vec<String>,
    /// Each request's correlation id, in order.
    pub correlation_ids: Vec<String>,
}

impl LoanBundle {
    /// The body of a bundle of `requests`, each already a serialized
    /// [`LoanRequestMessage`] (joined as it is), with their `calls` and
    /// `correlation_ids` in the same order.
    pub fn body<'a>(
        requests: impl IntoIterator<Item = &'a [u8]>,
        calls: &[String],
        correlation_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<u8> {
        let mut body = br#"{"requests":"#.to_vec();
        crate::broker::push_json_array(&mut body, requests);
        body.extend_from_slice(br#","calls":"#);
        // Strings always serialize.
        let _ = serde_json::to_writer(&mut body, calls);
        body.extend_from_slice(b",\"correlation_ids\":");
        let ids: Vec<&str> = correlation_ids.into_iter().collect();
        let _ = serde_json::to_writer(&mut body, &ids);
        body.push(b'}');
        body
    }

    /// Whether every request has its call and correlation id.
    pub fn is_whole(&self) -> bool {
        self.calls.len() == self.requests.len() && self.correlation_ids.len() == self.requests.len()
    }
}

/// Whether a delivery's properties mark it as a loan bundle.
pub fn is_loan_bundle(props: &lapin::BasicProperties) -> bool {
    crate::broker::headers::has_type(props, LOAN_BUNDLE_KIND)
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

/// The AMQP `type` of a message that carries several renewals or returns
/// (a bundle), all of one kind at one branch, under their routing key
/// (`renewal.<branch>` or `return.<branch>`). A lone operation is a
/// [`CirculationMessage`] with no type.
pub const CIRCULATION_BUNDLE_KIND: &str = "bibliomq.circulation-bundle";

/// Most operations one circulation bundle carries: as many as a worker
/// settles in one transaction.
pub const CIRCULATION_BUNDLE_MAX: usize = 128;

/// Body of a circulation bundle: operations recorded as `pending` that
/// came together. The worker settles each as if it had come alone and
/// acks the bundle once all are committed; a bundle that comes again is
/// settled again, and the operations already settled are duplicates that
/// change nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CirculationBundle {
    pub operations: Vec<CirculationMessage>,
    /// Each operation's correlation id, in order.
    pub correlation_ids: Vec<String>,
}

impl CirculationBundle {
    /// The body of a bundle of `operations`, each already a serialized
    /// [`CirculationMessage`] (joined as it is), with their
    /// `correlation_ids` in the same order.
    pub fn body<'a>(
        operations: impl IntoIterator<Item = &'a [u8]>,
        correlation_ids: &[&str],
    ) -> Vec<u8> {
        let mut body = br#"{"operations":"#.to_vec();
        crate::broker::push_json_array(&mut body, operations);
        body.extend_from_slice(br#","correlation_ids":"#);
        // Strings always serialize.
        let _ = serde_json::to_writer(&mut body, correlation_ids);
        body.push(b'}');
        body
    }

    /// Whether every operation has its correlation id.
    pub fn is_whole(&self) -> bool {
        self.correlation_ids.len() == self.operations.len()
    }
}

/// Whether a delivery's properties mark it as a circulation bundle.
pub fn is_circulation_bundle(props: &lapin::BasicProperties) -> bool {
    crate::broker::headers::has_type(props, CIRCULATION_BUNDLE_KIND)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: u8) -> LoanRequestMessage {
        LoanRequestMessage {
            operation_id: Uuid::now_v7(),
            idempotency_key: format!("key-{n}"),
            fingerprint: "f".into(),
            isbn: "9780000000002".into(),
            patron: format!("P{n}"),
            branch: "central".into(),
            requested_at: Utc::now(),
        }
    }

    #[test]
    fn a_loan_bundle_joins_the_requests_as_they_are_with_their_calls() {
        let (one, two) = (request(1), request(2));
        let bodies = [
            serde_json::to_vec(&one).unwrap(),
            serde_json::to_vec(&two).unwrap(),
        ];
        let calls = vec!["c1".to_owned(), "c2".to_owned()];
        let body = LoanBundle::body(bodies.iter().map(Vec::as_slice), &calls, ["x\"1", "x2"]);
        let bundle: LoanBundle = serde_json::from_slice(&body).unwrap();
        assert!(bundle.is_whole());
        assert_eq!(bundle.requests[0].operation_id, one.operation_id);
        assert_eq!(bundle.requests[1].patron, "P2");
        assert_eq!(bundle.calls, calls);
        assert_eq!(bundle.correlation_ids, vec!["x\"1", "x2"]);
    }

    #[test]
    fn a_circulation_bundle_joins_the_operations_as_they_are() {
        let operation = |kind| CirculationMessage {
            operation_id: Uuid::now_v7(),
            kind,
            loan_id: Uuid::now_v7(),
            isbn: "9780000000002".into(),
            patron: "P1".into(),
            branch: "central".into(),
            requested_at: Utc::now(),
        };
        let (one, two) = (
            operation(OperationKind::Return),
            operation(OperationKind::Return),
        );
        let bodies = [
            serde_json::to_vec(&one).unwrap(),
            serde_json::to_vec(&two).unwrap(),
        ];
        let body = CirculationBundle::body(bodies.iter().map(Vec::as_slice), &["a\"1", "b"]);
        let bundle: CirculationBundle = serde_json::from_slice(&body).unwrap();
        assert!(bundle.is_whole());
        assert_eq!(bundle.operations[0].operation_id, one.operation_id);
        assert_eq!(bundle.operations[1].loan_id, two.loan_id);
        assert_eq!(bundle.correlation_ids, vec!["a\"1", "b"]);
        let typed = lapin::BasicProperties::default().with_type(CIRCULATION_BUNDLE_KIND.into());
        assert!(is_circulation_bundle(&typed));
        assert!(!is_loan_bundle(&typed));
    }

    #[test]
    fn a_bundle_missing_a_call_is_not_whole() {
        let body = LoanBundle::body(
            [serde_json::to_vec(&request(1)).unwrap().as_slice()],
            &[],
            ["x"],
        );
        let bundle: LoanBundle = serde_json::from_slice(&body).unwrap();
        assert!(!bundle.is_whole());
        let typed = lapin::BasicProperties::default().with_type(LOAN_BUNDLE_KIND.into());
        assert!(is_loan_bundle(&typed));
        assert!(!is_loan_bundle(&lapin::BasicProperties::default()));
    }
}
