//! What the circulation functions of PostgreSQL answer, typed. The functions
//! return codes and data only (`migrations/0005_outcome_codes.sql`); these
//! types read them at the store boundary, and the messages people read are
//! written here, once, from the code and its data.
//!
//! Rows settled before that migration also carry a `message` of their own;
//! it is ignored, and the message is written here like any other.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, ser::SerializeMap};

use utoipa::{PartialSchema, openapi::Schema};
use uuid::Uuid;

use crate::schema;

/// A loan as it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = NewLoan)]
pub struct LoanMade {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub patron: String,
    /// The copy's barcode.
    pub copy: String,
    pub branch: String,
    pub loaned_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub renewals: i32,
    /// The hold this loan fulfilled, when the patron had one on the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub fulfilled_hold: Option<Uuid>,
}

crate::words::word_enum!(
    "refusal code",
    /// The stable code of a [`Refusal`]: an operation's `reason`.
    pub enum RefusalCode {
        IdempotencyKeyReused = "idempotency_key_reused",
        PatronNotFound = "patron_not_found",
        TitleNotFound = "title_not_found",
        LoanLimitReached = "loan_limit_reached",
        NotAvailable = "not_available",
        NotOnLoan = "not_on_loan",
        Overdue = "overdue",
        RenewalLimitReached = "renewal_limit_reached",
        PatronBlocked = "patron_blocked",
        OnHold = "on_hold",
    }
);

/// Why a loan, renewal or return was refused: a stable code (the `code`
/// member) and the data its message needs. Serialised with its message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    /// The idempotency key came with a different request before.
    IdempotencyKeyReused,
    PatronNotFound {
        #[serde(default)]
        patron: Option<String>,
    },
    TitleNotFound {
        #[serde(default)]
        isbn: Option<String>,
    },
    LoanLimitReached {
        #[serde(default)]
        patron: Option<String>,
        open_loans: i64,
        max_loans: i64,
    },
    NotAvailable {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        earliest_due_at: Option<DateTime<Utc>>,
    },
    /// The loan is closed already.
    NotOnLoan,
    Overdue {
        #[serde(default)]
        due_at: Option<DateTime<Utc>>,
    },
    RenewalLimitReached {
        #[serde(default)]
        renewals: Option<i64>,
    },
    /// The patron is blocked: no loans or renewals until unblocked.
    PatronBlocked {
        #[serde(default)]
        patron: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// A renewal while holds wait for the title: how many.
    OnHold {
        #[serde(default)]
        waiting: Option<i64>,
    },
}

/// A timestamp in messages: to the second, in UTC.
fn when(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Refusal {
    pub fn reason(&self) -> RefusalCode {
        match self {
            Self::IdempotencyKeyReused => RefusalCode::IdempotencyKeyReused,
            Self::PatronNotFound { .. } => RefusalCode::PatronNotFound,
            Self::TitleNotFound { .. } => RefusalCode::TitleNotFound,
            Self::LoanLimitReached { .. } => RefusalCode::LoanLimitReached,
            Self::NotAvailable { .. } => RefusalCode::NotAvailable,
            Self::NotOnLoan => RefusalCode::NotOnLoan,
            Self::Overdue { .. } => RefusalCode::Overdue,
            Self::RenewalLimitReached { .. } => RefusalCode::RenewalLimitReached,
            Self::PatronBlocked { .. } => RefusalCode::PatronBlocked,
            Self::OnHold { .. } => RefusalCode::OnHold,
        }
    }

    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }

    /// What a person reads: the one place these messages are written.
    pub fn message(&self) -> String {
        match self {
            Self::IdempotencyKeyReused => {
                "this Idempotency-Key was already used for a different loan request".to_owned()
            }
            Self::PatronNotFound { patron: Some(p) } => format!("no patron with id {p}"),
            Self::PatronNotFound { patron: None } => "no such patron".to_owned(),
            Self::TitleNotFound { isbn: Some(i) } => {
                format!("no title with ISBN {i} in the catalogue")
            }
            Self::TitleNotFound { isbn: None } => {
                "no title with that ISBN in the catalogue".to_owned()
            }
            Self::LoanLimitReached {
                patron, open_loans, ..
            } => format!(
                "patron {} already holds {open_loans} loans, the most allowed",
                patron.as_deref().unwrap_or("?")
            ),
            Self::NotAvailable {
                title,
                earliest_due_at,
            } => {
                let title = title.as_deref().unwrap_or("this title");
                match earliest_due_at {
                    Some(t) => format!(
                        "no copy of {title} is available; the earliest is due back {}",
                        when(t)
                    ),
                    None => format!("no copy of {title} is available"),
                }
            }
            Self::NotOnLoan => "the loan is already closed".to_owned(),
            Self::Overdue { due_at: Some(t) } => format!(
                "the loan was due {}; overdue loans cannot be renewed",
                when(t)
            ),
            Self::Overdue { due_at: None } => {
                "the loan is overdue; overdue loans cannot be renewed".to_owned()
            }
            Self::RenewalLimitReached { renewals } => format!(
                "the loan was already renewed {} times, the most allowed",
                renewals.map_or_else(|| "the most".to_owned(), |n| n.to_string())
            ),
            Self::PatronBlocked { patron, reason } => format!(
                "patron {} is blocked ({}): no loans or renewals until unblocked",
                patron.as_deref().unwrap_or("?"),
                reason.as_deref().unwrap_or("no reason recorded")
            ),
            Self::OnHold { waiting } => format!(
                "{} waiting for this title; a loan others wait for cannot be renewed",
                match waiting {
                    Some(1) => "a hold is".to_owned(),
                    Some(n) => format!("{n} holds are"),
                    None => "holds are".to_owned(),
                }
            ),
        }
    }
}

impl Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("code", self.code())?;
        map.serialize_entry("message", &self.message())?;
        match self {
            Self::IdempotencyKeyReused | Self::NotOnLoan => {}
            Self::PatronNotFound { patron } => map.serialize_entry("patron", patron)?,
            Self::TitleNotFound { isbn } => map.serialize_entry("isbn", isbn)?,
            Self::LoanLimitReached {
                patron,
                open_loans,
                max_loans,
            } => {
                map.serialize_entry("patron", patron)?;
                map.serialize_entry("open_loans", open_loans)?;
                map.serialize_entry("max_loans", max_loans)?;
            }
            Self::NotAvailable {
                title,
                earliest_due_at,
            } => {
                map.serialize_entry("title", title)?;
                map.serialize_entry("earliest_due_at", earliest_due_at)?;
            }
            Self::Overdue { due_at } => map.serialize_entry("due_at", due_at)?,
            Self::RenewalLimitReached { renewals } => {
                map.serialize_entry("renewals", renewals)?;
            }
            Self::PatronBlocked { patron, reason } => {
                map.serialize_entry("patron", patron)?;
                map.serialize_entry("reason", reason)?;
            }
            Self::OnHold { waiting } => map.serialize_entry("waiting", waiting)?,
        }
        map.end()
    }
}

/// One object per code: `code` (that one word), `message`, and the data
/// members [`Refusal`]'s serialiser writes for it, each present (`null`
/// when not known).
impl utoipa::PartialSchema for Refusal {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        schema::one_of(refusals(RefusalCode::ALL, None))
            .description(Some(
                "Why an operation was refused: a stable `code`, its `message`, and what the refusal is about.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Refusal {}

/// What `library_loan` answers (and what the loan worker replies). Stored
/// with the operation, so a retry with the same key gets it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LoanOutcome {
    Loaned {
        loan: LoanMade,
        /// An answer given before, to the same idempotency key.
        #[serde(default)]
        replayed: bool,
    },
    /// A rule refused it (recorded in the history).
    Rejected(Refusal),
    /// The patron or the title does not exist (not recorded).
    NotFound(Refusal),
    /// The worker could not reach its database; nothing was lent.
    Error,
}

/// A renewal applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Renewed {
    pub loan_id: Uuid,
    pub previous_due_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub renewals: i32,
    pub copy: String,
}

/// A return applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Returned {
    pub loan_id: Uuid,
    pub copy: String,
    pub returned_at: DateTime<Utc>,
    pub was_due_at: DateTime<Utc>,
    pub overdue: bool,
    /// The first waiting hold of the title, when there was one: the copy
    /// went onto the hold shelf for it instead of back to available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub hold: Option<crate::library::hold::HoldPickup>,
}

/// What a settled operation did, as stored with it: a loan's outcome, a
/// refusal, or what a renewal or return changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Settlement {
    Loan(LoanOutcome),
    Refused(Refusal),
    Renewed(Renewed),
    Returned(Returned),
}

impl Settlement {
    /// The refusal, when the operation was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) | Self::Loan(LoanOutcome::Rejected(r) | LoanOutcome::NotFound(r)) => {
                Some(r)
            }
            _ => None,
        }
    }
}

/// What a settled operation did, as clients see it (`GET
/// /v1/operations/{id}`, the edge's `"wait": true` replies): tagged by
/// its `outcome`. A loan's outcome is the loan worker's answer as it always
/// was; renewals and returns read `renewed`, `returned` or `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OperationOutcome {
    /// A loan made (or, with `replayed`, made earlier for the same key).
    Loaned { loan: LoanMade, replayed: bool },
    /// A renewal applied: the new due date.
    Renewed(Renewed),
    /// A return applied.
    Returned(Returned),
    /// A rule refused it.
    Rejected(Refusal),
    /// The patron or the title does not exist (loans).
    NotFound(Refusal),
    /// The loan worker could not reach its database; nothing was lent.
    Error,
}

/// One object per outcome, and per refusal code for the refused ones, each
/// with its `outcome` word: written out rather than derived, because a
/// derive would join the tag to the closed objects with `allOf`, which no
/// object can satisfy.
impl utoipa::PartialSchema for OperationOutcome {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{ObjectBuilder, Ref, Type};
        let mut objects = vec![
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .title(Some("loaned"))
                .property("outcome", schema::word("loaned"))
                .required("outcome")
                .property("loan", Ref::from_schema_name("NewLoan"))
                .required("loan")
                .property("replayed", ObjectBuilder::new().schema_type(Type::Boolean))
                .required("replayed")
                .into(),
            schema::tagged(Renewed::schema(), "outcome", "renewed"),
            schema::tagged(Returned::schema(), "outcome", "returned"),
        ];
        objects.extend(refusals(RefusalCode::ALL, Some("rejected")));
        objects.extend(refusals(
            &[RefusalCode::PatronNotFound, RefusalCode::TitleNotFound],
            Some("not_found"),
        ));
        objects.push(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .title(Some("error"))
                .property("outcome", schema::word("error"))
                .required("outcome")
                .into(),
        );
        schema::one_of(objects)
            .description(Some(
                "What a settled operation did, tagged by `outcome`: `loaned` (loans), `renewed`, `returned`, `rejected` (with the refusal's `code` and `message`), `not_found` (loans), `error` (loans).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for OperationOutcome {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push(("NewLoan".to_owned(), LoanMade::schema()));
        <LoanMade as utoipa::ToSchema>::schemas(schemas);
    }
}

impl From<Settlement> for OperationOutcome {
    fn from(settled: Settlement) -> Self {
        match settled {
            Settlement::Loan(LoanOutcome::Loaned { loan, replayed }) => {
                Self::Loaned { loan, replayed }
            }
            Settlement::Loan(LoanOutcome::Rejected(r)) | Settlement::Refused(r) => {
                Self::Rejected(r)
            }
            Settlement::Loan(LoanOutcome::NotFound(r)) => Self::NotFound(r),
            Settlement::Loan(LoanOutcome::Error) => Self::Error,
            Settlement::Renewed(r) => Self::Renewed(r),
            Settlement::Returned(r) => Self::Returned(r),
        }
    }
}

/// A [`Refusal`](crate::library::outcome::Refusal) of each of `codes`, as
/// its serialiser writes it: `code`, `message` and the data members of that
/// code, each present (`null` when not known); with `outcome` too when
/// given (a refused operation's outcome).
pub(crate) fn refusals(codes: &[RefusalCode], outcome: Option<&str>) -> Vec<Schema> {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type, schema::SchemaType};
    let nullable =
        |ty: Type| ObjectBuilder::new().schema_type(SchemaType::from_iter([ty, Type::Null]));
    let text = || nullable(Type::String);
    let time =
        || nullable(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
    let int64 = || Some(SchemaFormat::KnownFormat(KnownFormat::Int64));
    let count = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(int64())
    };
    codes
        .iter()
        .map(|code| {
            let data: Vec<(&str, ObjectBuilder)> = match code {
                RefusalCode::IdempotencyKeyReused | RefusalCode::NotOnLoan => vec![],
                RefusalCode::PatronNotFound => vec![("patron", text())],
                RefusalCode::TitleNotFound => vec![("isbn", text())],
                RefusalCode::LoanLimitReached => vec![
                    ("patron", text()),
                    ("open_loans", count()),
                    ("max_loans", count()),
                ],
                RefusalCode::NotAvailable => vec![("title", text()), ("earliest_due_at", time())],
                RefusalCode::Overdue => vec![("due_at", time())],
                RefusalCode::RenewalLimitReached => {
                    vec![("renewals", nullable(Type::Integer).format(int64()))]
                }
                RefusalCode::PatronBlocked => vec![("patron", text()), ("reason", text())],
                RefusalCode::OnHold => {
                    vec![("waiting", nullable(Type::Integer).format(int64()))]
                }
            };
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .title(Some(code.as_str()));
            if let Some(outcome) = outcome {
                object = object
                    .property("outcome", schema::word(outcome))
                    .required("outcome");
            }
            object = object
                .property("code", schema::word(code.as_str()))
                .required("code")
                .property(
                    "message",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("What a person reads.")),
                )
                .required("message");
            data.into_iter()
                .fold(object, |o, (name, schema)| {
                    o.property(name, schema).required(name)
                })
                .into()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn codes_and_data_from_postgres_read_as_types_and_get_their_messages() {
        let from_sql = json!({"outcome": "rejected", "code": "not_available",
            "title": "Tomo 2", "earliest_due_at": "2026-12-06T08:51:14.943089+00:00"});
        let outcome: LoanOutcome = serde_json::from_value(from_sql).unwrap();
        let LoanOutcome::Rejected(refusal) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(refusal.code(), "not_available");
        assert_eq!(
            refusal.message(),
            "no copy of Tomo 2 is available; the earliest is due back 2026-12-06T08:51:14Z"
        );
        let answer = serde_json::to_value(&outcome).unwrap();
        assert_eq!(answer["earliest_due_at"], "2026-12-06T08:51:14.943089Z");
        assert_eq!(answer["outcome"], "rejected");
        assert_eq!(answer["message"], refusal.message());
    }

    #[test]
    fn rows_settled_before_the_codes_migration_still_read() {
        let old = json!({"code": "renewal_limit_reached",
            "message": "the loan was already renewed 2 times, the most allowed"});
        let settled: Settlement = serde_json::from_value(old).unwrap();
        assert_eq!(
            settled,
            Settlement::Refused(Refusal::RenewalLimitReached { renewals: None })
        );
        let renewed = json!({"loan_id": Uuid::nil(), "previous_due_at": "2026-01-01T00:00:00+00:00",
            "due_at": "2026-01-08T00:00:00+00:00", "renewals": 1, "copy": "NOR-1"});
        let settled: Settlement = serde_json::from_value(renewed).unwrap();
        assert!(matches!(settled, Settlement::Renewed(_)), "{settled:?}");
        assert_eq!(
            serde_json::to_value(&settled).unwrap()["due_at"],
            "2026-01-08T00:00:00Z"
        );
        let loaned = json!({"outcome": "loaned", "replayed": true, "loan": {"id": Uuid::nil(),
            "isbn": "9788437604947", "title": "Don Quijote", "patron": "ana", "copy": "NOR-1",
            "branch": "norte", "loaned_at": "2026-01-01T00:00:00+00:00",
            "due_at": "2026-01-15T00:00:00+00:00", "renewals": 0}});
        let settled: Settlement = serde_json::from_value(loaned).unwrap();
        assert!(
            matches!(
                settled,
                Settlement::Loan(LoanOutcome::Loaned { replayed: true, .. })
            ),
            "{settled:?}"
        );
    }

    #[test]
    fn a_blocked_patron_s_refusal_reads_its_reason_into_the_message() {
        let from_sql = json!({"outcome": "rejected", "code": "patron_blocked",
            "patron": "ana", "reason": "unpaid fines"});
        let outcome: LoanOutcome = serde_json::from_value(from_sql).unwrap();
        let LoanOutcome::Rejected(refusal) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(refusal.code(), "patron_blocked");
        assert_eq!(
            refusal.message(),
            "patron ana is blocked (unpaid fines): no loans or renewals until unblocked"
        );
        let renewal: Settlement = serde_json::from_value(
            json!({"code": "patron_blocked", "patron": "ana", "reason": "unpaid fines"}),
        )
        .unwrap();
        assert_eq!(renewal.refusal(), Some(refusal));
    }

    #[test]
    fn unit_refusals_ignore_an_old_message() {
        let old = json!({"code": "not_on_loan", "message": "the loan is already closed"});
        let r: Refusal = serde_json::from_value(old).unwrap();
        assert_eq!(r, Refusal::NotOnLoan);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"code": "not_on_loan", "message": "the loan is already closed"})
        );
    }

    #[test]
    fn an_operation_outcome_is_tagged_and_a_loan_s_reads_as_before() {
        let renewed = json!({"loan_id": Uuid::nil(), "previous_due_at": "2026-01-01T00:00:00+00:00",
            "due_at": "2026-01-08T00:00:00+00:00", "renewals": 1, "copy": "NOR-1"});
        let settled: Settlement = serde_json::from_value(renewed).unwrap();
        let shown = serde_json::to_value(OperationOutcome::from(settled)).unwrap();
        assert_eq!(
            shown,
            json!({"outcome": "renewed", "loan_id": Uuid::nil(),
                "previous_due_at": "2026-01-01T00:00:00Z", "due_at": "2026-01-08T00:00:00Z",
                "renewals": 1, "copy": "NOR-1"})
        );

        let refused: Settlement =
            serde_json::from_value(json!({"code": "overdue", "due_at": "2026-01-01T00:00:00Z"}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(OperationOutcome::from(refused)).unwrap(),
            json!({"outcome": "rejected", "code": "overdue", "due_at": "2026-01-01T00:00:00Z",
                "message": "the loan was due 2026-01-01T00:00:00Z; overdue loans cannot be renewed"})
        );

        for stored in [
            json!({"outcome": "rejected", "code": "loan_limit_reached", "patron": "ana",
                "open_loans": 5, "max_loans": 5}),
            json!({"outcome": "not_found", "code": "patron_not_found", "patron": "zed"}),
        ] {
            let settled: Settlement = serde_json::from_value(stored).unwrap();
            let Settlement::Loan(loan) = &settled else {
                panic!("{settled:?}")
            };
            assert_eq!(
                serde_json::to_value(OperationOutcome::from(settled.clone())).unwrap(),
                serde_json::to_value(loan).unwrap(),
                "a loan's outcome is shown as the worker answered it"
            );
        }
    }

    #[test]
    fn refusal_codes_are_the_words_of_the_reason() {
        for code in RefusalCode::ALL {
            let refusal: Refusal = serde_json::from_value(json!({"code": code.as_str(),
                "open_loans": 1, "max_loans": 1}))
            .unwrap();
            assert_eq!(refusal.reason(), *code);
            assert_eq!(refusal.code(), code.as_str());
        }
    }
}
