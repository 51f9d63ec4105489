//! What the circulation functions of PostgreSQL answer, typed. The functions
//! return codes and data only (`migrations/0005_outcome_codes.sql`); these
//! types read them at the store boundary, and the messages people read are
//! written here, once, from the code and its data.
//!
//! Rows settled before that migration also carry a `message` of their own;
//! it is ignored, and the message is written here like any other.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, ser::SerializeMap};
use serde_json::{Value, json};
use uuid::Uuid;

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
}

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
}

/// A timestamp in messages: to the second, in UTC.
fn when(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::PatronNotFound { .. } => "patron_not_found",
            Self::TitleNotFound { .. } => "title_not_found",
            Self::LoanLimitReached { .. } => "loan_limit_reached",
            Self::NotAvailable { .. } => "not_available",
            Self::NotOnLoan => "not_on_loan",
            Self::Overdue { .. } => "overdue",
            Self::RenewalLimitReached { .. } => "renewal_limit_reached",
        }
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
        }
    }

    /// Members an error answer carries besides code and message, as they
    /// have always been: when a copy may come back, and the loan limit.
    pub fn details(&self) -> Option<Value> {
        match self {
            Self::NotAvailable {
                earliest_due_at, ..
            } => Some(json!({ "earliest_due_at": earliest_due_at })),
            Self::LoanLimitReached {
                open_loans,
                max_loans,
                ..
            } => Some(json!({ "open_loans": open_loans, "max_loans": max_loans })),
            _ => None,
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
        }
        map.end()
    }
}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    pub loan_id: Uuid,
    pub previous_due_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub renewals: i32,
    pub copy: String,
}

/// A return applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Returned {
    pub loan_id: Uuid,
    pub copy: String,
    pub returned_at: DateTime<Utc>,
    pub was_due_at: DateTime<Utc>,
    pub overdue: bool,
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

#[cfg(test)]
mod tests {
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
    fn unit_refusals_ignore_an_old_message() {
        let old = json!({"code": "not_on_loan", "message": "the loan is already closed"});
        let r: Refusal = serde_json::from_value(old).unwrap();
        assert_eq!(r, Refusal::NotOnLoan);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"code": "not_on_loan", "message": "the loan is already closed"})
        );
    }
}
