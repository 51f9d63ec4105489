//! Holds: the calls to the PL/pgSQL hold functions (placing, cancelling,
//! expiring) and the holds as readers see them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row, types::Json};
use uuid::Uuid;

use crate::library::hold::{CancelOutcome, HoldPickup, HoldState, PlaceOutcome};

/// A hold as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Hold)]
pub struct HoldView {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub patron: String,
    pub pickup_branch: String,
    pub state: HoldState,
    pub placed_at: DateTime<Utc>,
    /// Waiting holds: the place in the title's queue (1 is served next).
    #[schema(required = true)]
    pub position: Option<i64>,
    /// Ready: the copy on the hold shelf; fulfilled: the copy lent.
    #[schema(required = true)]
    pub copy: Option<String>,
    #[schema(required = true)]
    pub ready_at: Option<DateTime<Utc>>,
    /// Ready: when the copy leaves the shelf if not picked up.
    #[schema(required = true)]
    pub pickup_by: Option<DateTime<Utc>>,
    /// Fulfilled: the loan that fulfilled it.
    #[schema(required = true)]
    pub loan_id: Option<Uuid>,
    #[schema(required = true)]
    pub closed_at: Option<DateTime<Utc>>,
}

const HOLD_COLUMNS: &str = "h.id, h.isbn, t.title, h.patron_id, h.pickup_branch, h.state,
    h.placed_at,
    CASE WHEN h.state = 'waiting' THEN
        (SELECT count(*) FROM holds w
          WHERE w.isbn = h.isbn AND w.state = 'waiting' AND w.queued <= h.queued) END,
    c.barcode, h.ready_at, h.pickup_by, h.loan_id, h.closed_at";

const HOLD_FROM: &str =
    "holds h JOIN titles t ON t.isbn = h.isbn LEFT JOIN copies c ON c.id = h.copy_id";

fn hold_view(r: &Row) -> Result<HoldView, tokio_postgres::Error> {
    Ok(HoldView {
        id: r.try_get(0)?,
        isbn: r.try_get(1)?,
        title: r.try_get(2)?,
        patron: r.try_get(3)?,
        pickup_branch: r.try_get(4)?,
        state: r.try_get(5)?,
        placed_at: r.try_get(6)?,
        position: r.try_get(7)?,
        copy: r.try_get(8)?,
        ready_at: r.try_get(9)?,
        pickup_by: r.try_get(10)?,
        loan_id: r.try_get(11)?,
        closed_at: r.try_get(12)?,
    })
}

/// A hold to place, as `library_hold_place` takes it.
#[derive(Debug, Clone)]
pub struct NewHold<'a> {
    pub id: Uuid,
    pub isbn: &'a str,
    pub patron: &'a str,
    pub pickup_branch: &'a str,
    pub placed_at: DateTime<Utc>,
    /// How long a copy waits on the shelf for it.
    pub pickup_period: std::time::Duration,
}

/// Runs `library_hold_place`.
pub async fn place_hold(
    db: &impl GenericClient,
    hold: &NewHold<'_>,
) -> Result<PlaceOutcome, tokio_postgres::Error> {
    let millis = i64::try_from(hold.pickup_period.as_millis()).unwrap_or(i64::MAX);
    let row = db
        .query_one(
            "SELECT library_hold_place($1, $2, $3, $4, $5, $6::bigint * interval '1 millisecond')",
            &[
                &hold.id,
                &hold.isbn,
                &hold.patron,
                &hold.pickup_branch,
                &hold.placed_at,
                &millis,
            ],
        )
        .await?;
    Ok(row.try_get::<_, Json<PlaceOutcome>>(0)?.0)
}

/// Runs `library_hold_cancel`; `patron`, when given, must be the hold's.
pub async fn cancel_hold(
    db: &impl GenericClient,
    id: Uuid,
    patron: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT library_hold_cancel($1, $2, $3)",
            &[&id, &patron, &now],
        )
        .await?;
    Ok(row.try_get::<_, Json<CancelOutcome>>(0)?.0)
}

/// A pickup that expired, and where its copy went: to the next hold, or
/// back to available (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredPickup {
    pub expired: HoldPickup,
    pub passed: Option<HoldPickup>,
}

/// Runs `library_hold_expire`: at most `limit` pickups past their deadline.
pub async fn expire_pickups(
    db: &impl GenericClient,
    now: DateTime<Utc>,
    limit: i32,
) -> Result<Vec<ExpiredPickup>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT expired, passed FROM library_hold_expire($1, $2)",
            &[&now, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ExpiredPickup {
                expired: r.try_get::<_, Json<HoldPickup>>(0)?.0,
                passed: r.try_get::<_, Option<Json<HoldPickup>>>(1)?.map(|j| j.0),
            })
        })
        .collect()
}

pub async fn hold(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<HoldView>, tokio_postgres::Error> {
    db.query_opt(
        &format!("SELECT {HOLD_COLUMNS} FROM {HOLD_FROM} WHERE h.id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(hold_view)
    .transpose()
}

/// A patron's holds: open ones (ready, then waiting, oldest first), and
/// with `include_closed` the closed ones after them. `None`: no such patron.
pub async fn patron_holds(
    db: &impl GenericClient,
    patron: &str,
    include_closed: bool,
) -> Result<Option<Vec<HoldView>>, tokio_postgres::Error> {
    if db
        .query_opt("SELECT 1 FROM patrons WHERE id = $1", &[&patron])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = db
        .query(
            &format!(
                "SELECT {HOLD_COLUMNS} FROM {HOLD_FROM}
                  WHERE h.patron_id = $1 AND ($2 OR h.state IN ('waiting', 'ready'))
                  ORDER BY h.state NOT IN ('waiting', 'ready'), h.state <> 'ready', h.queued
                  LIMIT 500"
            ),
            &[&patron, &include_closed],
        )
        .await?;
    rows.iter()
        .map(hold_view)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// A title's open holds: those with a copy on the shelf, then the queue in
/// order. `None`: no such title.
pub async fn title_holds(
    db: &impl GenericClient,
    isbn: &str,
) -> Result<Option<Vec<HoldView>>, tokio_postgres::Error> {
    if db
        .query_opt("SELECT 1 FROM titles WHERE isbn = $1", &[&isbn])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = db
        .query(
            &format!(
                "SELECT {HOLD_COLUMNS} FROM {HOLD_FROM}
                  WHERE h.isbn = $1 AND h.state IN ('waiting', 'ready')
                  ORDER BY h.state <> 'ready', h.queued
                  LIMIT 1000"
            ),
            &[&isbn],
        )
        .await?;
    rows.iter()
        .map(hold_view)
        .collect::<Result<_, _>>()
        .map(Some)
}
