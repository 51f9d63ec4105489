//! Writes: operations recorded as pending, and the calls to the PL/pgSQL
//! circulation functions that settle loans, renewals and returns (one at a
//! time, or a batch in one transaction).

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row, ToStatement, types::Json};
use uuid::Uuid;

use super::OpenLoan;
use crate::library::{
    Rules,
    message::OperationKind,
    outcome::{LoanOutcome, Settlement},
};

/// Withdraws a pending operation that never reached the broker.
pub async fn delete_pending(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "DELETE FROM operations WHERE id = $1 AND state = 'pending'",
        &[&id],
    )
    .await?;
    Ok(())
}

/// The batch functions: every settlement goes through one, which also
/// writes the history of what it settled (`migrations/0015_history_per_batch.sql`).
const LOAN_BATCH: &str =
    "SELECT op, outcome FROM library_loan_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const RENEW_BATCH: &str =
    "SELECT op, outcome FROM library_renew_batch($1, $2, $3::bigint * interval '1 second', $4)";
const RETURN_BATCH: &str = "SELECT op, outcome FROM library_return_batch($1, $2)";

/// One loan in its own transaction, as a batch of one (the batch's
/// fallback when batches meet each other).
pub async fn apply_loan(
    db: &impl GenericClient,
    item: &LoanItem,
    now: DateTime<Utc>,
    due: DateTime<Utc>,
    max_loans: i32,
) -> Result<LoanOutcome, tokio_postgres::Error> {
    let answers = loans(
        db,
        LOAN_BATCH,
        std::slice::from_ref(item),
        now,
        due,
        max_loans,
    )
    .await?;
    Ok(answers.into_iter().next().unwrap_or(LoanOutcome::Error))
}

/// Settles a pending renewal; `None` when it was settled already (a duplicate).
pub async fn apply_renewal(
    db: &impl GenericClient,
    op: Uuid,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Option<Settlement>, tokio_postgres::Error> {
    let answers = renewals(db, RENEW_BATCH, &[op], now, rules).await?;
    Ok(answers.into_iter().next().flatten())
}

/// Settles a pending return; `None` when it was settled already (a duplicate).
pub async fn apply_return(
    db: &impl GenericClient,
    op: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Settlement>, tokio_postgres::Error> {
    let answers = returns(db, RETURN_BATCH, &[op], now).await?;
    Ok(answers.into_iter().next().flatten())
}

/// One loan request, as the batch function takes it.
#[derive(Debug, Clone)]
pub struct LoanItem {
    pub op: Uuid,
    pub key: String,
    pub fingerprint: String,
    pub isbn: String,
    pub patron: String,
    pub branch: String,
    pub correlation_id: String,
}

/// Runs many loans in one transaction (`library_loan_batch`); the answers
/// come back in the order of `items`.
pub async fn apply_loans(
    db: &deadpool_postgres::Client,
    items: &[LoanItem],
    now: DateTime<Utc>,
    due: DateTime<Utc>,
    max_loans: i32,
) -> Result<Vec<LoanOutcome>, tokio_postgres::Error> {
    let statement = db.prepare_cached(LOAN_BATCH).await?;
    loans(&***db, &statement, items, now, due, max_loans).await
}

async fn loans<S: ToStatement + Sync + Send + ?Sized>(
    db: &impl GenericClient,
    statement: &S,
    items: &[LoanItem],
    now: DateTime<Utc>,
    due: DateTime<Utc>,
    max_loans: i32,
) -> Result<Vec<LoanOutcome>, tokio_postgres::Error> {
    let ops: Vec<Uuid> = items.iter().map(|i| i.op).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    let fingerprints: Vec<&str> = items.iter().map(|i| i.fingerprint.as_str()).collect();
    let isbns: Vec<&str> = items.iter().map(|i| i.isbn.as_str()).collect();
    let patrons: Vec<&str> = items.iter().map(|i| i.patron.as_str()).collect();
    let branches: Vec<&str> = items.iter().map(|i| i.branch.as_str()).collect();
    let correlations: Vec<&str> = items.iter().map(|i| i.correlation_id.as_str()).collect();
    let rows = db
        .query(
            statement,
            &[
                &ops,
                &keys,
                &fingerprints,
                &isbns,
                &patrons,
                &branches,
                &now,
                &due,
                &max_loans,
                &correlations,
            ],
        )
        .await?;
    // The rows come in the order the function took the items (by patron);
    // an operation named twice (a redelivery beside its first delivery)
    // has a row each, in the order of `items`: the first settled, the
    // second a replay.
    let mut by_op: HashMap<Uuid, VecDeque<LoanOutcome>> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let Json(outcome) = r.try_get::<_, Json<LoanOutcome>>(1)?;
        by_op
            .entry(r.try_get::<_, Uuid>(0)?)
            .or_default()
            .push_back(outcome);
    }
    // Every item has its row; one missing would be our bug, answered as an
    // error the caller may retry rather than as a loan.
    Ok(ops
        .iter()
        .map(|op| {
            by_op
                .get_mut(op)
                .and_then(VecDeque::pop_front)
                .unwrap_or(LoanOutcome::Error)
        })
        .collect())
}

/// Settles many renewals in one transaction. `None` for those already
/// settled (duplicates); answers in the order of `ops`.
pub async fn apply_renewals(
    db: &deadpool_postgres::Client,
    ops: &[Uuid],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Vec<Option<Settlement>>, tokio_postgres::Error> {
    let statement = db.prepare_cached(RENEW_BATCH).await?;
    renewals(&***db, &statement, ops, now, rules).await
}

async fn renewals<S: ToStatement + Sync + Send + ?Sized>(
    db: &impl GenericClient,
    statement: &S,
    ops: &[Uuid],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Vec<Option<Settlement>>, tokio_postgres::Error> {
    let extension = rules.renewal_extension.num_seconds();
    let rows = db
        .query(statement, &[&ops, &now, &extension, &rules.max_renewals])
        .await?;
    in_order(ops, &rows)
}

/// Settles many returns in one transaction, like [`apply_renewals`].
pub async fn apply_returns(
    db: &deadpool_postgres::Client,
    ops: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Settlement>>, tokio_postgres::Error> {
    let statement = db.prepare_cached(RETURN_BATCH).await?;
    returns(&***db, &statement, ops, now).await
}

async fn returns<S: ToStatement + Sync + Send + ?Sized>(
    db: &impl GenericClient,
    statement: &S,
    ops: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Settlement>>, tokio_postgres::Error> {
    let rows = db.query(statement, &[&ops, &now]).await?;
    in_order(ops, &rows)
}

fn in_order(ops: &[Uuid], rows: &[Row]) -> Result<Vec<Option<Settlement>>, tokio_postgres::Error> {
    let mut by_op = HashMap::with_capacity(rows.len());
    for r in rows {
        let outcome = r.try_get::<_, Option<Json<Settlement>>>(1)?;
        by_op.insert(r.try_get::<_, Uuid>(0)?, outcome.map(|j| j.0));
    }
    Ok(ops.iter().map(|op| by_op.remove(op).flatten()).collect())
}

/// A renewal or return to record as `pending`: the loan by id, or by ISBN
/// and patron.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub id: Uuid,
    pub kind: OperationKind,
    pub loan_id: Option<Uuid>,
    pub isbn: Option<String>,
    pub patron: Option<String>,
    pub branch: String,
    pub requested_at: DateTime<Utc>,
    pub correlation_id: String,
}

/// Records many renewals and returns at once, each with the open loan it
/// names (by id, or by ISBN and patron), in one statement.
/// `None` for a request whose loan is not open; the answers come in the
/// order of `requests`.
pub async fn record_requests(
    db: &deadpool_postgres::Client,
    requests: &[PendingRequest],
) -> Result<Vec<Option<OpenLoan>>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let kinds: Vec<&str> = requests.iter().map(|r| r.kind.as_str()).collect();
    let loans: Vec<Option<Uuid>> = requests.iter().map(|r| r.loan_id).collect();
    let isbns: Vec<Option<&str>> = requests.iter().map(|r| r.isbn.as_deref()).collect();
    let patrons: Vec<Option<&str>> = requests.iter().map(|r| r.patron.as_deref()).collect();
    let branches: Vec<&str> = requests.iter().map(|r| r.branch.as_str()).collect();
    let at: Vec<DateTime<Utc>> = requests.iter().map(|r| r.requested_at).collect();
    let correlations: Vec<&str> = requests.iter().map(|r| r.correlation_id.as_str()).collect();
    // A PL/pgSQL function (migration 0017), so that its plan is kept per
    // connection, generic, instead of being made again on every call.
    let statement = db
        .prepare_cached(
            "SELECT op, loan_id, isbn, patron, due_at
               FROM library_record_requests($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let rows = db
        .query(
            &statement,
            &[
                &ids,
                &kinds,
                &loans,
                &isbns,
                &patrons,
                &branches,
                &at,
                &correlations,
            ],
        )
        .await?;
    let mut by_op: HashMap<Uuid, OpenLoan> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                OpenLoan {
                    loan_id: r.get(1),
                    isbn: r.get(2),
                    patron: r.get(3),
                    due_at: r.get(4),
                },
            )
        })
        .collect();
    Ok(ids.iter().map(|id| by_op.remove(id)).collect())
}

/// What a rehearsal did before it was rolled back ([`rehearse`]).
#[derive(Debug)]
pub struct Rehearsal {
    pub loan: LoanOutcome,
    pub renewal: Option<Settlement>,
    pub giving_back: Option<Settlement>,
}

/// Lends a copy, renews the loan and takes it back on `db`, in a
/// transaction that is then rolled back: nothing stays, but the connection
/// has run the statements of the circulation functions once.
///
/// PL/pgSQL plans each statement of a function the first time it runs on a
/// connection, and a statement on a branch not taken is not planned at all.
/// Run on each new connection before work comes, this moves that cost out
/// of the first batches a fresh worker settles under load. `nth` picks the
/// copy and the patron (so that connections rehearsing at once lock
/// different rows). `None` when there is nothing to lend (no available
/// copy or no patron): nothing ran.
pub async fn rehearse(
    db: &deadpool_postgres::Client,
    nth: i64,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Option<Rehearsal>, tokio_postgres::Error> {
    db.batch_execute("BEGIN").await?;
    let rehearsed = rehearse_in_transaction(db, nth, now, rules).await;
    db.batch_execute("ROLLBACK").await?;
    rehearsed
}

async fn rehearse_in_transaction(
    db: &deadpool_postgres::Client,
    nth: i64,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Option<Rehearsal>, tokio_postgres::Error> {
    let copy = db
        .query_opt(
            "SELECT isbn, branch FROM copies WHERE status = 'available'
              ORDER BY id LIMIT 1 OFFSET $1",
            &[&nth],
        )
        .await?;
    let patron = db
        .query_opt(
            "SELECT id FROM patrons ORDER BY id LIMIT 1 OFFSET $1",
            &[&nth],
        )
        .await?;
    let (Some(copy), Some(patron)) = (copy, patron) else {
        return Ok(None);
    };
    let (isbn, branch): (String, String) = (copy.try_get(0)?, copy.try_get(1)?);
    let patron: String = patron.try_get(0)?;
    let loan = LoanItem {
        op: Uuid::new_v4(),
        key: format!("rehearsal-{}", Uuid::new_v4()),
        fingerprint: "rehearsal".to_owned(),
        isbn: isbn.clone(),
        patron: patron.clone(),
        branch: branch.clone(),
        correlation_id: "rehearsal".to_owned(),
    };
    let due = rules.due_for_loan(now);
    let loan = apply_loans(db, &[loan], now, due, rules.max_loans)
        .await?
        .into_iter()
        .next()
        .unwrap_or(LoanOutcome::Error);
    let request = |kind| PendingRequest {
        id: Uuid::new_v4(),
        kind,
        loan_id: None,
        isbn: Some(isbn.clone()),
        patron: Some(patron.clone()),
        branch: branch.clone(),
        requested_at: now,
        correlation_id: "rehearsal".to_owned(),
    };
    let (renewal, giving_back) = (
        request(OperationKind::Renewal),
        request(OperationKind::Return),
    );
    record_requests(db, &[renewal.clone(), giving_back.clone()]).await?;
    let renewal = apply_renewals(db, &[renewal.id], now, rules).await?;
    let giving_back = apply_returns(db, &[giving_back.id], now).await?;
    Ok(Some(Rehearsal {
        loan,
        renewal: renewal.into_iter().next().flatten(),
        giving_back: giving_back.into_iter().next().flatten(),
    }))
}
