//! Loans and operations as readers see them, and the open loan a renewal or
//! return names.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row, types::Json};
use uuid::Uuid;

use crate::library::{
    Rules,
    message::{OperationKind, OperationState},
    outcome::Settlement,
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Loan)]
pub struct LoanView {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub patron: String,
    pub copy: String,
    pub branch: String,
    pub loaned_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub renewals: i32,
    #[schema(required = true)]
    pub returned_at: Option<DateTime<Utc>>,
    pub overdue: bool,
}

const LOAN_COLUMNS: &str = "l.id, c.isbn, t.title, l.patron_id, c.barcode, l.branch, l.loaned_at,
    l.due_at, l.renewals, l.returned_at";

fn loan_view(r: &Row, now: DateTime<Utc>) -> LoanView {
    let due_at: DateTime<Utc> = r.get(7);
    let returned_at: Option<DateTime<Utc>> = r.get(9);
    LoanView {
        id: r.get(0),
        isbn: r.get(1),
        title: r.get(2),
        patron: r.get(3),
        copy: r.get(4),
        branch: r.get(5),
        loaned_at: r.get(6),
        due_at,
        renewals: r.get(8),
        returned_at,
        overdue: returned_at.is_none() && due_at < now,
    }
}

pub async fn loan(
    db: &impl GenericClient,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<LoanView>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {LOAN_COLUMNS} FROM loans l JOIN copies c ON c.id = l.copy_id
                   JOIN titles t ON t.isbn = c.isbn WHERE l.id = $1"
            ),
            &[&id],
        )
        .await?;
    Ok(row.map(|r| loan_view(&r, now)))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PatronLoans {
    pub patron: String,
    pub name: String,
    pub max_loans: i32,
    pub loans: Vec<LoanView>,
}

/// A patron's open loans (and closed ones too with `include_returned`),
/// soonest due first.
pub async fn patron_loans(
    db: &impl GenericClient,
    patron: &str,
    include_returned: bool,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Option<PatronLoans>, tokio_postgres::Error> {
    let Some(p) = db
        .query_opt("SELECT id, name FROM patrons WHERE id = $1", &[&patron])
        .await?
    else {
        return Ok(None);
    };
    let rows = db
        .query(
            &format!(
                "SELECT {LOAN_COLUMNS} FROM loans l JOIN copies c ON c.id = l.copy_id
                   JOIN titles t ON t.isbn = c.isbn
                  WHERE l.patron_id = $1 AND ($2 OR l.returned_at IS NULL)
                  ORDER BY l.returned_at IS NOT NULL, l.due_at, l.id
                  LIMIT 500"
            ),
            &[&patron, &include_returned],
        )
        .await?;
    Ok(Some(PatronLoans {
        patron: p.get(0),
        name: p.get(1),
        max_loans: rules.max_loans,
        loans: rows.iter().map(|r| loan_view(r, now)).collect(),
    }))
}

/// An open loan, as renewals and returns need it.
#[derive(Debug, Clone)]
pub struct OpenLoan {
    pub loan_id: Uuid,
    pub isbn: String,
    pub patron: String,
    pub due_at: DateTime<Utc>,
}

/// What looking up an open loan found.
#[derive(Debug, Clone)]
pub enum LoanLookup {
    Found(OpenLoan),
    NoSuchPatron,
    NoSuchTitle,
    NoSuchLoan,
    /// The loan exists but was already returned.
    Closed,
}

/// The patron's open loan of a copy of `isbn`.
pub async fn find_open_loan(
    db: &impl GenericClient,
    isbn: &str,
    patron: &str,
) -> Result<LoanLookup, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM patrons WHERE id = $2),
                    EXISTS (SELECT 1 FROM titles WHERE isbn = $1),
                    (SELECT l.id FROM loans l JOIN copies c ON c.id = l.copy_id
                      WHERE c.isbn = $1 AND l.patron_id = $2 AND l.returned_at IS NULL
                      ORDER BY l.due_at LIMIT 1),
                    (SELECT l.due_at FROM loans l JOIN copies c ON c.id = l.copy_id
                      WHERE c.isbn = $1 AND l.patron_id = $2 AND l.returned_at IS NULL
                      ORDER BY l.due_at LIMIT 1)",
            &[&isbn, &patron],
        )
        .await?;
    let (patron_exists, title_exists): (bool, bool) = (row.get(0), row.get(1));
    Ok(
        match (patron_exists, title_exists, row.get::<_, Option<Uuid>>(2)) {
            (false, _, _) => LoanLookup::NoSuchPatron,
            (_, false, _) => LoanLookup::NoSuchTitle,
            (true, true, None) => LoanLookup::NoSuchLoan,
            (true, true, Some(loan_id)) => LoanLookup::Found(OpenLoan {
                loan_id,
                isbn: isbn.to_owned(),
                patron: patron.to_owned(),
                due_at: row.get(3),
            }),
        },
    )
}

/// A loan by id, if it is still open.
pub async fn find_loan_by_id(
    db: &impl GenericClient,
    loan_id: Uuid,
) -> Result<LoanLookup, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT c.isbn, l.patron_id, l.due_at, l.returned_at IS NOT NULL
               FROM loans l JOIN copies c ON c.id = l.copy_id WHERE l.id = $1",
            &[&loan_id],
        )
        .await?;
    Ok(match row {
        None => LoanLookup::NoSuchLoan,
        Some(r) if r.get::<_, bool>(3) => LoanLookup::Closed,
        Some(r) => LoanLookup::Found(OpenLoan {
            loan_id,
            isbn: r.get(0),
            patron: r.get(1),
            due_at: r.get(2),
        }),
    })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Operation)]
pub struct OperationView {
    pub id: Uuid,
    pub kind: OperationKind,
    pub state: OperationState,
    /// Why it was rejected: a stable code.
    #[schema(required = true)]
    pub reason: Option<String>,
    #[schema(required = true)]
    pub loan_id: Option<Uuid>,
    #[schema(required = true)]
    pub isbn: Option<String>,
    #[schema(required = true)]
    pub patron: Option<String>,
    pub branch: String,
    pub requested_at: DateTime<Utc>,
    #[schema(required = true)]
    pub settled_at: Option<DateTime<Utc>>,
    /// What it did (new due date, ...) or why it was refused (`code` and `message`).
    #[schema(required = true, value_type = Option<Object>)]
    pub outcome: Option<Settlement>,
}

pub async fn operation(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<OperationView>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT id, kind, state, reason, loan_id, isbn, patron_id, branch, requested_at,
                    settled_at, outcome FROM operations WHERE id = $1",
            &[&id],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    Ok(Some(OperationView {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        reason: r.get(3),
        loan_id: r.get(4),
        isbn: r.get(5),
        patron: r.get(6),
        branch: r.get(7),
        requested_at: r.get(8),
        settled_at: r.get(9),
        outcome: r.try_get::<_, Option<Json<Settlement>>>(10)?.map(|j| j.0),
    }))
}
