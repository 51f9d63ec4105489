//! Library reads and writes in PostgreSQL. Reads serve the query endpoints
//! directly; writes are the circulation functions of the migration.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{Rules, message::OperationKind};
use crate::config::Branch;

/// Makes sure every configured branch has its row (names may change).
pub async fn ensure_branches(
    db: &impl GenericClient,
    branches: &[Branch],
) -> Result<(), tokio_postgres::Error> {
    let codes: Vec<&str> = branches.iter().map(|b| b.code.as_str()).collect();
    let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    db.execute(
        "INSERT INTO branches (code, name) SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name",
        &[&codes, &names],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct BookView {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    pub published_year: Option<i32>,
    /// Per branch: copies, how many are available, and when the next one is due back.
    pub branches: Vec<BranchAvailability>,
    pub copies: Vec<CopyView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BranchAvailability {
    pub branch: String,
    pub total: i64,
    pub available: i64,
    pub next_due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyView {
    pub barcode: String,
    pub branch: String,
    pub status: String,
    pub due_at: Option<DateTime<Utc>>,
    pub loan_id: Option<Uuid>,
}

/// A title with its copies per branch, each with status and due date.
pub async fn book(
    db: &impl GenericClient,
    isbn: &str,
) -> Result<Option<BookView>, tokio_postgres::Error> {
    let Some(t) = db
        .query_opt(
            "SELECT isbn, title, authors, published_year FROM titles WHERE isbn = $1",
            &[&isbn],
        )
        .await?
    else {
        return Ok(None);
    };
    let copies: Vec<CopyView> = db
        .query(
            "SELECT c.barcode, c.branch, c.status, l.due_at, l.id
               FROM copies c LEFT JOIN loans l ON l.copy_id = c.id AND l.returned_at IS NULL
              WHERE c.isbn = $1 ORDER BY c.branch, c.barcode",
            &[&isbn],
        )
        .await?
        .iter()
        .map(|r| CopyView {
            barcode: r.get(0),
            branch: r.get(1),
            status: r.get(2),
            due_at: r.get(3),
            loan_id: r.get(4),
        })
        .collect();
    let mut per_branch: BTreeMap<String, BranchAvailability> = BTreeMap::new();
    for c in &copies {
        let entry = per_branch
            .entry(c.branch.clone())
            .or_insert_with(|| BranchAvailability {
                branch: c.branch.clone(),
                total: 0,
                available: 0,
                next_due_at: None,
            });
        entry.total += 1;
        if c.status == "available" {
            entry.available += 1;
        }
        if let Some(due) = c.due_at {
            entry.next_due_at = Some(entry.next_due_at.map_or(due, |d| d.min(due)));
        }
    }
    Ok(Some(BookView {
        isbn: t.get(0),
        title: t.get(1),
        authors: t.get(2),
        published_year: t.get(3),
        branches: per_branch.into_values().collect(),
        copies,
    }))
}

#[derive(Debug, Clone, Serialize)]
pub struct BookSummary {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    pub published_year: Option<i32>,
    pub total_copies: i64,
    pub available_copies: i64,
    pub available_by_branch: BTreeMap<String, i64>,
}

/// Escapes LIKE's wildcards so user text matches literally.
fn like_literal(word: &str) -> String {
    word.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Titles whose title contains every word, ignoring case and accents
/// ("quijote" finds "Don Quijote de la Mancha"). Closest matches first.
pub async fn search(
    db: &impl GenericClient,
    words: &[String],
    limit: i64,
) -> Result<Vec<BookSummary>, tokio_postgres::Error> {
    let patterns: Vec<String> = words
        .iter()
        .map(|w| format!("%{}%", like_literal(w)))
        .collect();
    let phrase = words.join(" ");
    // One LIKE per word keeps the trigram index usable.
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&phrase, &limit];
    for (i, p) in patterns.iter().enumerate() {
        conditions.push(format!(
            "library_fold(t.title) LIKE library_fold(${})",
            i + 3
        ));
        params.push(p);
    }
    let sql = format!(
        "SELECT t.isbn, t.title, t.authors, t.published_year
           FROM titles t
          WHERE {}
          ORDER BY (library_fold(t.title) = library_fold($1)) DESC,
                   similarity(library_fold(t.title), library_fold($1)) DESC, t.title, t.isbn
          LIMIT $2",
        conditions.join(" AND ")
    );
    let rows = db.query(&sql, &params).await?;
    let isbns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let counts = db
        .query(
            "SELECT isbn, branch, count(*), count(*) FILTER (WHERE status = 'available')
               FROM copies WHERE isbn = ANY($1) GROUP BY isbn, branch",
            &[&isbns],
        )
        .await?;
    let mut per_title: BTreeMap<String, (i64, i64, BTreeMap<String, i64>)> = BTreeMap::new();
    for c in &counts {
        let entry = per_title.entry(c.get(0)).or_default();
        let (total, available): (i64, i64) = (c.get(2), c.get(3));
        entry.0 += total;
        entry.1 += available;
        entry.2.insert(c.get(1), available);
    }
    Ok(rows
        .iter()
        .map(|r| {
            let isbn: String = r.get(0);
            let (total_copies, available_copies, available_by_branch) =
                per_title.remove(&isbn).unwrap_or_default();
            BookSummary {
                isbn,
                title: r.get(1),
                authors: r.get(2),
                published_year: r.get(3),
                total_copies,
                available_copies,
                available_by_branch,
            }
        })
        .collect())
}

/// Titles a loan "by title" could mean: an exact match (ignoring case and
/// accents) if there is one, else every title containing all the words.
pub async fn resolve_title(
    db: &impl GenericClient,
    query: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let exact = db
        .query(
            "SELECT isbn, title FROM titles WHERE library_fold(title) = library_fold($1)
              ORDER BY isbn LIMIT 10",
            &[&query],
        )
        .await?;
    if !exact.is_empty() {
        return Ok(exact.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    let words: Vec<String> = query.split_whitespace().map(str::to_owned).collect();
    Ok(search(db, &words, 10)
        .await?
        .into_iter()
        .map(|b| (b.isbn, b.title))
        .collect())
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub id: Uuid,
    pub kind: String,
    pub state: String,
    /// Why it was rejected: a stable code.
    pub reason: Option<String>,
    pub loan_id: Option<Uuid>,
    pub isbn: Option<String>,
    pub patron: Option<String>,
    pub branch: String,
    pub requested_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
    /// What it did (new due date, ...) or the rejection's message.
    pub outcome: Option<Value>,
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
    Ok(row.map(|r| OperationView {
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
        outcome: r.get(10),
    }))
}

/// Runs `library_loan`: the whole loan in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn apply_loan(
    db: &impl GenericClient,
    op: Uuid,
    key: &str,
    fingerprint: &str,
    isbn: &str,
    patron: &str,
    branch: &str,
    now: DateTime<Utc>,
    due: DateTime<Utc>,
    max_loans: i32,
    correlation_id: &str,
) -> Result<Value, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT library_loan($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &op,
                &key,
                &fingerprint,
                &isbn,
                &patron,
                &branch,
                &now,
                &due,
                &max_loans,
                &correlation_id,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Settles a pending renewal; `None` when it was settled already (a duplicate).
pub async fn apply_renewal(
    db: &impl GenericClient,
    op: Uuid,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Option<Value>, tokio_postgres::Error> {
    let extension = rules.renewal_extension.num_seconds();
    let row = db
        .query_one(
            "SELECT library_renew($1, $2, $3::bigint * interval '1 second', $4)",
            &[&op, &now, &extension, &rules.max_renewals],
        )
        .await?;
    Ok(row.get(0))
}

/// Settles a pending return; `None` when it was settled already (a duplicate).
pub async fn apply_return(
    db: &impl GenericClient,
    op: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Value>, tokio_postgres::Error> {
    let row = db
        .query_one("SELECT library_return($1, $2)", &[&op, &now])
        .await?;
    Ok(row.get(0))
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
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let ops: Vec<Uuid> = items.iter().map(|i| i.op).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    let fingerprints: Vec<&str> = items.iter().map(|i| i.fingerprint.as_str()).collect();
    let isbns: Vec<&str> = items.iter().map(|i| i.isbn.as_str()).collect();
    let patrons: Vec<&str> = items.iter().map(|i| i.patron.as_str()).collect();
    let branches: Vec<&str> = items.iter().map(|i| i.branch.as_str()).collect();
    let correlations: Vec<&str> = items.iter().map(|i| i.correlation_id.as_str()).collect();
    let statement = db
        .prepare_cached(
            "SELECT op, outcome FROM library_loan_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    let rows = db
        .query(
            &statement,
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
    let mut by_op: std::collections::HashMap<Uuid, Value> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(ops
        .iter()
        .map(|op| by_op.remove(op).unwrap_or(Value::Null))
        .collect())
}

/// Settles many renewals in one transaction. `None` for those already
/// settled (duplicates); answers in the order of `ops`.
pub async fn apply_renewals(
    db: &deadpool_postgres::Client,
    ops: &[Uuid],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Vec<Option<Value>>, tokio_postgres::Error> {
    let extension = rules.renewal_extension.num_seconds();
    let statement = db
        .prepare_cached(
            "SELECT op, outcome FROM library_renew_batch($1, $2, $3::bigint * interval '1 second', $4)",
        )
        .await?;
    let rows = db
        .query(&statement, &[&ops, &now, &extension, &rules.max_renewals])
        .await?;
    Ok(in_order(ops, &rows))
}

/// Settles many returns in one transaction, like [`apply_renewals`].
pub async fn apply_returns(
    db: &deadpool_postgres::Client,
    ops: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Value>>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached("SELECT op, outcome FROM library_return_batch($1, $2)")
        .await?;
    let rows = db.query(&statement, &[&ops, &now]).await?;
    Ok(in_order(ops, &rows))
}

fn in_order(ops: &[Uuid], rows: &[Row]) -> Vec<Option<Value>> {
    let mut by_op: std::collections::HashMap<Uuid, Option<Value>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    ops.iter().map(|op| by_op.remove(op).flatten()).collect()
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
    // A prepared statement rather than a function: its plan is kept per
    // connection instead of being made on every call.
    let statement = db
        .prepare_cached(
            "WITH picked AS (
                SELECT u.op, u.kind, u.branch, u.at, u.corr,
                       coalesce(by_id.id, by_book.id) AS loan_id,
                       coalesce(by_id.isbn, by_book.isbn) AS isbn,
                       coalesce(by_id.patron_id, by_book.patron_id) AS patron,
                       coalesce(by_id.due_at, by_book.due_at) AS due_at
                  FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                              $6::text[], $7::timestamptz[], $8::text[])
                       AS u(op, kind, loan, isbn, patron, branch, at, corr)
                  LEFT JOIN LATERAL (
                       SELECT l.id, c.isbn, l.patron_id, l.due_at
                         FROM loans l JOIN copies c ON c.id = l.copy_id
                        WHERE l.id = u.loan AND l.returned_at IS NULL) by_id ON true
                  LEFT JOIN LATERAL (
                       SELECT l.id, c.isbn, l.patron_id, l.due_at
                         FROM loans l JOIN copies c ON c.id = l.copy_id
                        WHERE u.loan IS NULL AND l.patron_id = u.patron AND c.isbn = u.isbn
                          AND l.returned_at IS NULL
                        ORDER BY l.due_at LIMIT 1) by_book ON true
             ), recorded AS (
                INSERT INTO operations (id, kind, state, loan_id, isbn, patron_id, branch,
                                        requested_at, correlation_id)
                SELECT p.op, p.kind, 'pending', p.loan_id, p.isbn, p.patron, p.branch, p.at, p.corr
                  FROM picked p WHERE p.loan_id IS NOT NULL
                 -- Loan order, as the workers lock loans: no deadlock between them.
                 ORDER BY p.loan_id
                RETURNING id
             )
             SELECT p.op, p.loan_id, p.isbn, p.patron, p.due_at
               FROM picked p JOIN recorded r ON r.id = p.op",
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
    let mut by_op: std::collections::HashMap<Uuid, OpenLoan> = rows
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
