//! Catalogue and patron administration: titles, copies (added and
//! withdrawn) and patrons (added, changed, blocked, listed).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

/// A title as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Title)]
pub struct TitleView {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    /// The year of publication, when known.
    #[schema(required = true)]
    pub year: Option<i32>,
}

fn title_of(r: &Row) -> TitleView {
    TitleView {
        isbn: r.get(0),
        title: r.get(1),
        authors: r.get(2),
        year: r.get(3),
    }
}

/// Adds a title; `None` when one with that ISBN exists already.
pub async fn insert_title(
    db: &impl GenericClient,
    t: &TitleView,
) -> Result<Option<TitleView>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "INSERT INTO titles (isbn, title, authors, published_year) VALUES ($1, $2, $3, $4)
             ON CONFLICT (isbn) DO NOTHING
             RETURNING isbn, title, authors, published_year",
            &[&t.isbn, &t.title, &t.authors, &t.year],
        )
        .await?
        .as_ref()
        .map(title_of))
}

/// Changes what is given of a title; `None` when there is no such title.
pub async fn update_title(
    db: &impl GenericClient,
    isbn: &str,
    title: Option<&str>,
    authors: Option<&[String]>,
    year: Option<Option<i32>>,
) -> Result<Option<TitleView>, tokio_postgres::Error> {
    let set_year = year.is_some();
    let year = year.flatten();
    Ok(db
        .query_opt(
            "UPDATE titles SET title = coalesce($2, title), authors = coalesce($3, authors),
                    published_year = CASE WHEN $4 THEN $5 ELSE published_year END
              WHERE isbn = $1
             RETURNING isbn, title, authors, published_year",
            &[&isbn, &title, &authors, &set_year, &year],
        )
        .await?
        .as_ref()
        .map(title_of))
}

/// A copy as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = CopyRecord)]
pub struct CopyRecord {
    pub barcode: String,
    pub isbn: String,
    pub branch: String,
    /// `available`, `on_loan` or `withdrawn`.
    #[schema(schema_with = crate::schema::copy_record_status)]
    pub status: String,
}

fn copy_of(r: &Row) -> CopyRecord {
    CopyRecord {
        barcode: r.get(0),
        isbn: r.get(1),
        branch: r.get(2),
        status: r.get(3),
    }
}

/// What adding a copy did.
#[derive(Debug)]
pub enum CopyAdded {
    Added(CopyRecord),
    NoSuchTitle,
    BarcodeTaken,
}

/// Adds a copy of a title at a branch, with the given barcode or, when
/// none is given, the next generated one (`<BRANCH>-C<n>`).
pub async fn add_copy(
    db: &impl GenericClient,
    isbn: &str,
    branch: &str,
    barcode: Option<&str>,
) -> Result<CopyAdded, tokio_postgres::Error> {
    if db
        .query_opt("SELECT 1 FROM titles WHERE isbn = $1", &[&isbn])
        .await?
        .is_none()
    {
        return Ok(CopyAdded::NoSuchTitle);
    }
    // A generated barcode could meet one given by hand earlier: the next
    // number is tried then, a few times.
    for _ in 0..5 {
        let row = db
            .query_opt(
                "INSERT INTO copies (isbn, branch, barcode)
                 VALUES ($1, $2, coalesce($3, upper($2) || '-C' || nextval('copy_barcodes')))
                 ON CONFLICT (barcode) DO NOTHING
                 RETURNING barcode, isbn, branch, status",
                &[&isbn, &branch, &barcode],
            )
            .await?;
        match row {
            Some(r) => return Ok(CopyAdded::Added(copy_of(&r))),
            None if barcode.is_some() => return Ok(CopyAdded::BarcodeTaken),
            None => {}
        }
    }
    Ok(CopyAdded::BarcodeTaken)
}

/// What withdrawing a copy did.
#[derive(Debug)]
pub enum Withdrawal {
    /// Withdrawn now, or earlier (withdrawing twice changes nothing).
    Withdrawn(CopyRecord),
    OnLoan,
    /// On the hold shelf, kept for a patron's hold.
    OnHoldShelf,
    NoSuchCopy,
}

/// Withdraws an available copy. The update takes the copy's row lock, so a
/// loan taking the copy at the same moment either wins (the copy is then on
/// loan) or finds it withdrawn.
pub async fn withdraw_copy(
    db: &impl GenericClient,
    barcode: &str,
) -> Result<Withdrawal, tokio_postgres::Error> {
    if let Some(r) = db
        .query_opt(
            "UPDATE copies SET status = 'withdrawn' WHERE barcode = $1 AND status = 'available'
             RETURNING barcode, isbn, branch, status",
            &[&barcode],
        )
        .await?
    {
        return Ok(Withdrawal::Withdrawn(copy_of(&r)));
    }
    let row = db
        .query_opt(
            "SELECT barcode, isbn, branch, status FROM copies WHERE barcode = $1",
            &[&barcode],
        )
        .await?;
    Ok(match row.as_ref().map(copy_of) {
        None => Withdrawal::NoSuchCopy,
        Some(c) if c.status == "withdrawn" => Withdrawal::Withdrawn(c),
        Some(c) if c.status == "on_hold_shelf" => Withdrawal::OnHoldShelf,
        Some(_) => Withdrawal::OnLoan,
    })
}

/// Why a patron may not borrow.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Block {
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// A patron as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Patron)]
pub struct PatronView {
    pub id: String,
    pub name: String,
    #[schema(required = true)]
    pub email: Option<String>,
    /// Why the patron is blocked, or `null`.
    #[schema(required = true)]
    pub blocked: Option<Block>,
}

const PATRON_COLUMNS: &str = "id, name, email, blocked_reason, blocked_at";

fn patron_of(r: &Row) -> PatronView {
    let reason: Option<String> = r.get(3);
    let since: Option<DateTime<Utc>> = r.get(4);
    PatronView {
        id: r.get(0),
        name: r.get(1),
        email: r.get(2),
        blocked: reason
            .zip(since)
            .map(|(reason, since)| Block { reason, since }),
    }
}

/// Adds a patron; `None` when one with that id exists already.
pub async fn insert_patron(
    db: &impl GenericClient,
    id: &str,
    name: &str,
    email: Option<&str>,
) -> Result<Option<PatronView>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            &format!(
                "INSERT INTO patrons (id, name, email) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING RETURNING {PATRON_COLUMNS}"
            ),
            &[&id, &name, &email],
        )
        .await?
        .as_ref()
        .map(patron_of))
}

/// A change to a patron: each `Some` is set.
#[derive(Debug, Default)]
pub struct PatronChange {
    pub name: Option<String>,
    /// `Some(None)` removes the e-mail.
    pub email: Option<Option<String>>,
    /// `Some(Some(reason))` blocks, `Some(None)` unblocks.
    pub blocked: Option<Option<String>>,
}

/// Changes a patron; `None` when there is no such patron. Blocking an
/// already blocked patron keeps the first date and takes the new reason.
pub async fn update_patron(
    db: &impl GenericClient,
    id: &str,
    change: &PatronChange,
    now: DateTime<Utc>,
) -> Result<Option<PatronView>, tokio_postgres::Error> {
    let set_email = change.email.is_some();
    let email = change.email.clone().flatten();
    let set_block = change.blocked.is_some();
    let reason = change.blocked.clone().flatten();
    Ok(db
        .query_opt(
            &format!(
                "UPDATE patrons SET name = coalesce($2, name),
                        email = CASE WHEN $3 THEN $4 ELSE email END,
                        blocked_reason = CASE WHEN $5 THEN $6 ELSE blocked_reason END,
                        blocked_at = CASE WHEN NOT $5 THEN blocked_at
                                          WHEN $6::text IS NULL THEN NULL
                                          ELSE coalesce(blocked_at, $7) END
                  WHERE id = $1 RETURNING {PATRON_COLUMNS}"
            ),
            &[
                &id,
                &change.name,
                &set_email,
                &email,
                &set_block,
                &reason,
                &now,
            ],
        )
        .await?
        .as_ref()
        .map(patron_of))
}

pub async fn patron(
    db: &impl GenericClient,
    id: &str,
) -> Result<Option<PatronView>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            &format!("SELECT {PATRON_COLUMNS} FROM patrons WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(patron_of))
}

/// Patrons in id order after `after`, whose id starts with `q` or whose
/// name contains it (ignoring case and accents); one more than `limit` is
/// read to know whether another page follows.
pub async fn list_patrons(
    db: &impl GenericClient,
    q: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<PatronView>, bool), tokio_postgres::Error> {
    let pattern = q.map(|q| {
        let literal = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        (
            format!("{}%", literal.to_lowercase()),
            format!("%{literal}%"),
        )
    });
    let (prefix, contains) = match &pattern {
        Some((p, c)) => (Some(p.as_str()), Some(c.as_str())),
        None => (None, None),
    };
    let rows = db
        .query(
            &format!(
                "SELECT {PATRON_COLUMNS} FROM patrons
                  WHERE ($1::text IS NULL OR id > $1)
                    AND ($2::text IS NULL OR id LIKE $2
                         OR library_fold(name) LIKE library_fold($3))
                  ORDER BY id LIMIT $4"
            ),
            &[&after, &prefix, &contains, &(limit + 1)],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    Ok((
        rows.iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .map(patron_of)
            .collect(),
        more,
    ))
}

/// What an upsert did to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
    /// The row was there already, exactly so.
    Unchanged,
}

fn upserted(row: Option<Row>) -> Upserted {
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Upserted::Unchanged,
        Some(true) => Upserted::Created,
        Some(false) => Upserted::Updated,
    }
}

/// Adds a title or makes it as given; a row that is already so is not
/// written at all (an import run twice changes nothing).
pub async fn upsert_title(
    db: &impl GenericClient,
    t: &TitleView,
) -> Result<Upserted, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "INSERT INTO titles AS t (isbn, title, authors, published_year) VALUES ($1, $2, $3, $4)
             ON CONFLICT (isbn) DO UPDATE
                SET title = EXCLUDED.title, authors = EXCLUDED.authors,
                    published_year = EXCLUDED.published_year
              WHERE (t.title, t.authors, t.published_year)
                    IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.authors, EXCLUDED.published_year)
             RETURNING (xmax = 0)",
            &[&t.isbn, &t.title, &t.authors, &t.year],
        )
        .await?;
    Ok(upserted(row))
}

/// Adds a patron or gives them the name and e-mail given (blocks stay as
/// they are); a patron already so is not written.
pub async fn upsert_patron(
    db: &impl GenericClient,
    p: &PatronView,
) -> Result<Upserted, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "INSERT INTO patrons AS p (id, name, email) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email
              WHERE (p.name, p.email) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.email)
             RETURNING (xmax = 0)",
            &[&p.id, &p.name, &p.email],
        )
        .await?;
    Ok(upserted(row))
}
