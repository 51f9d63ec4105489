//! Hold commands: place, cancel, list. Each runs one PL/pgSQL function in
//! one transaction (`migrations/0010_holds.sql`), where the rules live; a
//! copy a cancellation passes to the next hold is announced
//! (`hold.ready.<branch>`) after the commit.
//!
//! Every command that changes a hold names the patron it acts for: placing
//! always (the hold is theirs), cancelling optionally (a desk cancels any
//! hold; when a patron is named the hold must be theirs).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::Commands;
use crate::auth::Permission;
use crate::{
    broker::events,
    error::{CommandError, Invalid},
    library::{
        BranchCode, PatronId,
        hold::{CancelOutcome, HoldEvent, HoldEventType, HoldPickup, HoldRefusal, PlaceOutcome},
        store::{self, HoldView, NewHold},
    },
};

/// A hold as asked for: a title by ISBN or by title words, for a patron,
/// to be picked up at a branch.
#[derive(Debug, Clone, Default)]
pub struct HoldRequest {
    pub isbn: Option<String>,
    pub title: Option<String>,
    /// The patron the hold is for (and the request acts for).
    pub patron: String,
    pub pickup_branch: String,
}

/// A hold to cancel, by id; `patron`, when given, is the patron the request
/// acts for, and the hold must be theirs.
#[derive(Debug, Clone, Default)]
pub struct HoldCancel {
    pub hold_id: String,
    pub patron: Option<String>,
}

/// A cancelled hold.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CancelledHold)]
pub struct HoldCancelled {
    pub hold: HoldView,
    /// It was cancelled before this request: nothing changed.
    pub already_cancelled: bool,
    /// The copy that was on the shelf for it, now on the shelf for the next
    /// hold (absent when there was none, or it went back to available).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub passed_to: Option<HoldPickup>,
}

/// A patron's holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PatronHolds {
    pub patron: String,
    pub holds: Vec<HoldView>,
}

/// A title's open holds: copies on the shelf first, then the queue in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TitleHolds {
    pub isbn: String,
    pub holds: Vec<HoldView>,
}

fn refused(refusal: HoldRefusal) -> CommandError {
    if refusal.is_not_found() {
        CommandError::not_found(refusal.code(), refusal.message())
    } else {
        CommandError::conflict(refusal.code(), refusal.message())
    }
}

/// A hold id from a request: `invalid_hold_id` when it is not a UUID.
pub fn hold_id(raw: &str) -> Result<Uuid, Invalid> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        Invalid::field(
            "invalid_hold_id",
            "id",
            format!("`{raw}` is not a hold id (a UUID)"),
        )
    })
}

impl Commands {
    fn pickup_branch(&self, raw: &str) -> Result<BranchCode, Invalid> {
        self.branch(raw).map_err(|mut e| {
            e.field = Some("pickup_branch".to_owned());
            e
        })
    }

    /// Places a hold: answered with the hold and its place in the queue.
    #[tracing::instrument(skip_all, fields(patron = %req.patron, branch = %req.pickup_branch))]
    pub async fn place_hold(&self, req: HoldRequest) -> Result<HoldView, CommandError> {
        let patron = PatronId::parse(&req.patron)?;
        let branch = self.pickup_branch(&req.pickup_branch)?;
        self.authorize(Permission::PlaceHold {
            patron: patron.as_str(),
            branch: branch.as_str(),
        })?;
        let isbn = self
            .isbn_or_title(req.isbn.as_deref(), req.title.as_deref())
            .await?;
        let hold = NewHold {
            id: Uuid::now_v7(),
            isbn: isbn.as_str(),
            patron: patron.as_str(),
            pickup_branch: branch.as_str(),
            placed_at: self.clock().now(),
            pickup_period: self.settings().library.hold_pickup,
        };
        let mut client = self.pool().get().await?;
        let mut tries = 0;
        loop {
            let tx = client.transaction().await?;
            let placed = match store::place_hold(&*tx, &hold).await {
                Err(e) if tries < 3 && crate::db::is_contention(&e) => {
                    tries += 1;
                    continue;
                }
                other => other?,
            };
            return match placed {
                PlaceOutcome::Placed { hold_id } => {
                    let view = store::hold(&*tx, hold_id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("the hold just placed is not there"))?;
                    tx.commit().await?;
                    Ok(view)
                }
                PlaceOutcome::Rejected(r) | PlaceOutcome::NotFound(r) => Err(refused(r)),
            };
        }
    }

    /// Cancels a hold. Cancelling a cancelled hold answers the same and
    /// changes nothing; a copy on the shelf for it goes to the next hold.
    #[tracing::instrument(skip_all, fields(hold = %req.hold_id))]
    pub async fn cancel_hold(&self, req: HoldCancel) -> Result<HoldCancelled, CommandError> {
        let id = hold_id(&req.hold_id)?;
        let patron = req.patron.as_deref().map(PatronId::parse).transpose()?;
        self.authorize_role(Permission::CancelHold { patron: "" })?;
        let now = self.clock().now();
        let mut client = self.pool().get().await?;
        // Whose hold it is decides whether a patron key may cancel it.
        if let Some(hold) = store::hold(&**client, id).await? {
            self.authorize(Permission::CancelHold {
                patron: &hold.patron,
            })?;
        }
        let mut tries = 0;
        let (cancelled, view) =
            loop {
                let tx = client.transaction().await?;
                let outcome =
                    match store::cancel_hold(&*tx, id, patron.as_ref().map(PatronId::as_str), now)
                        .await
                    {
                        Err(e) if tries < 3 && crate::db::is_contention(&e) => {
                            tries += 1;
                            continue;
                        }
                        other => other?,
                    };
                match outcome {
                    CancelOutcome::Cancelled {
                        already, passed, ..
                    } => {
                        let view = store::hold(&*tx, id).await?.ok_or_else(|| {
                            anyhow::anyhow!("the hold just cancelled is not there")
                        })?;
                        tx.commit().await?;
                        break ((already, passed), view);
                    }
                    CancelOutcome::Rejected(r) | CancelOutcome::NotFound(r) => {
                        return Err(refused(r));
                    }
                }
            };
        let (already_cancelled, passed_to) = cancelled;
        if let Some(pickup) = &passed_to {
            self.announce_hold(HoldEventType::Ready, pickup, now);
        }
        Ok(HoldCancelled {
            hold: view,
            already_cancelled,
            passed_to,
        })
    }

    /// Announces a hold event after its change was committed.
    fn announce_hold(&self, event: HoldEventType, pickup: &HoldPickup, at: DateTime<Utc>) {
        let event = HoldEvent::new(event, pickup, at);
        events::announce(self.publisher(), event.routing_key(), &event);
    }

    pub async fn hold_view(&self, id: &str) -> Result<HoldView, CommandError> {
        let id = hold_id(id)?;
        self.authorize_role(Permission::ListHolds { patron: "" })?;
        let client = self.pool().get().await?;
        let view = store::hold(&**client, id).await?.ok_or_else(|| {
            CommandError::not_found("hold_not_found", format!("no hold with id {id}"))
        })?;
        self.authorize(Permission::ListHolds {
            patron: &view.patron,
        })?;
        Ok(view)
    }

    /// A patron's open holds, and with `include_closed` the closed ones too.
    pub async fn patron_holds(
        &self,
        patron: &str,
        include_closed: bool,
    ) -> Result<PatronHolds, CommandError> {
        let patron = PatronId::parse(patron)?;
        self.authorize(Permission::ListHolds {
            patron: patron.as_str(),
        })?;
        let client = self.pool().get().await?;
        let holds = store::patron_holds(&**client, patron.as_str(), include_closed)
            .await?
            .ok_or_else(|| {
                CommandError::not_found("patron_not_found", format!("no patron with id {patron}"))
            })?;
        Ok(PatronHolds {
            patron: patron.to_string(),
            holds,
        })
    }

    /// A title's open holds, in the order they are served.
    pub async fn title_holds(&self, isbn: &str) -> Result<TitleHolds, CommandError> {
        let isbn = crate::library::Isbn::parse(isbn)?;
        self.authorize(Permission::ListTitleHolds)?;
        let client = self.pool().get().await?;
        let holds = store::title_holds(&**client, isbn.as_str())
            .await?
            .ok_or_else(|| {
                CommandError::not_found(
                    "title_not_found",
                    format!("no title with ISBN {isbn} in the catalogue"),
                )
            })?;
        Ok(TitleHolds {
            isbn: isbn.to_string(),
            holds,
        })
    }
}
