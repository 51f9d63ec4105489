//! The catalogue: a title with its copies, and search by title.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Book)]
pub struct BookView {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    #[schema(required = true)]
    pub published_year: Option<i32>,
    /// Per branch: copies, how many are available, and when the next one is due back.
    pub branches: Vec<BranchAvailability>,
    pub copies: Vec<CopyView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BranchAvailability {
    pub branch: String,
    pub total: i64,
    pub available: i64,
    #[schema(required = true)]
    pub next_due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Copy)]
pub struct CopyView {
    pub barcode: String,
    pub branch: String,
    /// `available`, `on_loan` or `on_hold_shelf` (kept for a patron's hold).
    #[schema(schema_with = crate::schema::copy_status)]
    pub status: String,
    #[schema(required = true)]
    pub due_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
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
              WHERE c.isbn = $1 AND c.status <> 'withdrawn' ORDER BY c.branch, c.barcode",
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BookSummary {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    #[schema(required = true)]
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

/// How many matching titles a search ranks at most. A query matching fewer
/// is ranked whole; one matching more (a common word: "de" is in most
/// Spanish titles) takes the first this many the index or table scan finds
/// and ranks those, so its cost does not grow with the catalogue.
pub const SEARCH_CANDIDATES: i64 = 500;

/// Titles whose title contains every word, ignoring case and accents
/// ("quijote" finds "Don Quijote de la Mancha"). Closest matches first: an
/// exact title, then by trigram similarity to the words, then by title.
///
/// Every title that matches all the words is a candidate, but at most
/// [`SEARCH_CANDIDATES`] of them are ranked (plus any exact title, always
/// found through its own index). Below that many matches the ranking is
/// over all of them; above it, the answer holds only matching titles, the
/// best of those candidates — the common-words fast path.
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
    // One LIKE per word on the stored folded title: the trigram index
    // serves rare words, and for common ones the planner reads the table
    // and stops after the candidates it needs. `library_fold` of a
    // parameter is folded once, when the statement is planned.
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&phrase, &limit, &SEARCH_CANDIDATES];
    for (i, p) in patterns.iter().enumerate() {
        conditions.push(format!("title_folded LIKE library_fold(${})", i + 4));
        params.push(p);
    }
    let sql = format!(
        "WITH candidates AS MATERIALIZED (
                SELECT isbn, title, authors, published_year, title_folded FROM titles
                 WHERE {}
                 LIMIT $3),
              exact AS (
                SELECT isbn, title, authors, published_year, title_folded FROM titles
                 WHERE title_folded = library_fold($1)
                 ORDER BY isbn LIMIT $2)
         SELECT isbn, title, authors, published_year
           FROM (SELECT * FROM candidates UNION SELECT * FROM exact) t
          ORDER BY (title_folded = library_fold($1)) DESC,
                   similarity(title_folded, library_fold($1)) DESC, title, isbn
          LIMIT $2",
        conditions.join(" AND ")
    );
    let rows = db.query(&sql, &params).await?;
    let isbns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let counts = db
        .query(
            "SELECT isbn, branch, count(*), count(*) FILTER (WHERE status = 'available')
               FROM copies WHERE isbn = ANY($1) AND status <> 'withdrawn' GROUP BY isbn, branch",
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
            "SELECT isbn, title FROM titles WHERE title_folded = library_fold($1)
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
