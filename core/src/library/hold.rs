//! Holds: what the hold functions of PostgreSQL answer (codes and data,
//! `migrations/0010_holds.sql`), typed; the messages people read, written
//! here once; and the events `hold.ready.<branch>` and
//! `hold.expired.<branch>`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

crate::words::word_enum!(
    "hold state",
    /// A hold waits in its title's queue (`waiting`), then has a copy on
    /// the hold shelf (`ready`), and ends `fulfilled` (lent to its patron),
    /// `cancelled` or `expired` (not picked up in time).
    pub enum HoldState {
        Waiting = "waiting",
        Ready = "ready",
        Fulfilled = "fulfilled",
        Cancelled = "cancelled",
        Expired = "expired",
    }
);

/// A copy put on the hold shelf for a hold (a return, a cancelled or an
/// expired pickup passed it on), or a pickup that expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = HoldPickup)]
pub struct HoldPickup {
    pub hold_id: Uuid,
    pub isbn: String,
    pub patron: String,
    pub pickup_branch: String,
    /// The copy's barcode.
    pub copy: String,
    /// When the copy leaves the shelf if not picked up.
    pub pickup_by: DateTime<Utc>,
}

/// Why a hold was refused, or not found: a stable code and its data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum HoldRefusal {
    PatronNotFound {
        patron: String,
    },
    TitleNotFound {
        isbn: String,
    },
    HoldNotFound {
        hold_id: Uuid,
    },
    PatronBlocked {
        patron: String,
        #[serde(default)]
        reason: Option<String>,
    },
    AlreadyOnLoan {
        patron: String,
        title: String,
    },
    AlreadyHeld {
        patron: String,
        title: String,
        hold_id: Uuid,
    },
    AvailableAtBranch {
        title: String,
        branch: String,
    },
    /// The hold belongs to another patron than the one the request acts for.
    NotPatronsHold {
        hold_id: Uuid,
        patron: String,
    },
    /// Fulfilled or expired: nothing to cancel.
    HoldClosed {
        hold_id: Uuid,
        state: HoldState,
    },
}

impl HoldRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::PatronNotFound { .. } => "patron_not_found",
            Self::TitleNotFound { .. } => "title_not_found",
            Self::HoldNotFound { .. } => "hold_not_found",
            Self::PatronBlocked { .. } => "patron_blocked",
            Self::AlreadyOnLoan { .. } => "already_on_loan",
            Self::AlreadyHeld { .. } => "already_held",
            Self::AvailableAtBranch { .. } => "available_at_branch",
            Self::NotPatronsHold { .. } => "not_patrons_hold",
            Self::HoldClosed { .. } => "hold_closed",
        }
    }

    /// What a person reads: the one place these messages are written.
    pub fn message(&self) -> String {
        match self {
            Self::PatronNotFound { patron } => format!("no patron with id {patron}"),
            Self::TitleNotFound { isbn } => format!("no title with ISBN {isbn} in the catalogue"),
            Self::HoldNotFound { hold_id } => format!("no hold with id {hold_id}"),
            Self::PatronBlocked { patron, reason } => format!(
                "patron {patron} is blocked ({}): no loans, renewals or holds until unblocked",
                reason.as_deref().unwrap_or("no reason recorded")
            ),
            Self::AlreadyOnLoan { patron, title } => {
                format!("patron {patron} already has {title} on loan")
            }
            Self::AlreadyHeld {
                patron,
                title,
                hold_id,
            } => format!("patron {patron} already holds {title} (hold {hold_id})"),
            Self::AvailableAtBranch { title, branch } => format!(
                "a copy of {title} is available at {branch}: lend it instead of placing a hold"
            ),
            Self::NotPatronsHold { hold_id, patron } => {
                format!("hold {hold_id} is not a hold of patron {patron}")
            }
            Self::HoldClosed { hold_id, state } => {
                format!("hold {hold_id} is {state} already; there is nothing to cancel")
            }
        }
    }

    /// Whether the thing asked about does not exist (rather than a rule refusing it).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::PatronNotFound { .. } | Self::TitleNotFound { .. } | Self::HoldNotFound { .. }
        )
    }
}

/// What `library_hold_place` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PlaceOutcome {
    Placed { hold_id: Uuid },
    Rejected(HoldRefusal),
    NotFound(HoldRefusal),
}

/// What `library_hold_cancel` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelled {
        hold_id: Uuid,
        /// It was cancelled before: nothing changed.
        already: bool,
        /// The copy that was on the shelf for it, now on the shelf for the next hold.
        #[serde(default)]
        passed: Option<HoldPickup>,
    },
    Rejected(HoldRefusal),
    NotFound(HoldRefusal),
}

crate::words::word_enum!(
    "hold event",
    /// The `type` of a hold event; with the pickup branch, its routing key.
    pub enum HoldEventType {
        Ready = "hold.ready",
        Expired = "hold.expired",
    }
);

/// An event on `bibliomq.events` about a hold, published after the change
/// is committed: `hold.ready.<pickup branch>` when a copy is put on the
/// hold shelf for it, `hold.expired.<pickup branch>` when its pickup
/// deadline passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldEvent {
    #[serde(rename = "type")]
    pub event: HoldEventType,
    pub hold_id: Uuid,
    /// The pickup branch.
    pub branch: String,
    pub isbn: String,
    pub patron: String,
    /// The copy's barcode.
    pub copy: String,
    pub pickup_by: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

impl HoldEvent {
    pub fn new(event: HoldEventType, pickup: &HoldPickup, at: DateTime<Utc>) -> Self {
        Self {
            event,
            hold_id: pickup.hold_id,
            branch: pickup.pickup_branch.clone(),
            isbn: pickup.isbn.clone(),
            patron: pickup.patron.clone(),
            copy: pickup.copy.clone(),
            pickup_by: pickup.pickup_by,
            at,
        }
    }

    /// The routing key it is published with.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.event, self.branch)
    }

    /// One line for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {} for {} at {}, pickup by {}",
            self.event,
            self.copy,
            self.patron,
            self.branch,
            self.pickup_by.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hold_answers_from_postgres_read_as_types_with_their_messages() {
        let placed: PlaceOutcome =
            serde_json::from_value(json!({"outcome": "placed", "hold_id": Uuid::nil()})).unwrap();
        assert_eq!(
            placed,
            PlaceOutcome::Placed {
                hold_id: Uuid::nil()
            }
        );
        let refused: PlaceOutcome = serde_json::from_value(json!({"outcome": "rejected",
            "code": "available_at_branch", "title": "Don Quijote", "branch": "norte"}))
        .unwrap();
        let PlaceOutcome::Rejected(r) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(r.code(), "available_at_branch");
        assert_eq!(
            r.message(),
            "a copy of Don Quijote is available at norte: lend it instead of placing a hold"
        );
        let closed: CancelOutcome = serde_json::from_value(json!({"outcome": "rejected",
            "code": "hold_closed", "hold_id": Uuid::nil(), "state": "expired"}))
        .unwrap();
        let CancelOutcome::Rejected(r) = closed else {
            panic!("{closed:?}")
        };
        assert!(
            r.message().contains("is expired already"),
            "{}",
            r.message()
        );
        let cancelled: CancelOutcome = serde_json::from_value(json!({"outcome": "cancelled",
            "hold_id": Uuid::nil(), "already": false, "passed": null}))
        .unwrap();
        assert!(matches!(
            cancelled,
            CancelOutcome::Cancelled {
                already: false,
                passed: None,
                ..
            }
        ));
    }

    #[test]
    fn a_hold_event_is_routed_by_type_and_pickup_branch() {
        let pickup = HoldPickup {
            hold_id: Uuid::nil(),
            isbn: "9788437604947".into(),
            patron: "ana".into(),
            pickup_branch: "norte".into(),
            copy: "NOR-1".into(),
            pickup_by: Utc::now(),
        };
        let event = HoldEvent::new(HoldEventType::Ready, &pickup, Utc::now());
        assert_eq!(event.routing_key(), "hold.ready.norte");
        assert_eq!(serde_json::to_value(&event).unwrap()["type"], "hold.ready");
    }
}
