//! Catalogue and patron administration: titles, copies, patrons. Every
//! field is checked here, once, for every transport; the limits are the
//! constants below, which the OpenAPI document reads too.

use serde::Serialize;

use super::Commands;
use crate::{
    auth::Permission,
    error::{CommandError, Invalid},
    library::{
        Isbn, PatronId,
        store::{self, CopyAdded, CopyRecord, PatronChange, PatronView, TitleView, Withdrawal},
    },
};

pub use crate::limits::{
    AUTHOR_MAX, AUTHORS_MAX, EMAIL_MAX, NAME_MAX, PATRON_QUERY_MAX, PATRONS_DEFAULT_LIMIT,
    PATRONS_MAX_LIMIT, REASON_MAX, TITLE_MAX, YEAR_MAX, YEAR_MIN,
};

/// A title to add.
#[derive(Debug, Clone, Default)]
pub struct NewTitle {
    pub isbn: String,
    pub title: String,
    pub authors: Vec<String>,
    /// A JSON number: `1998.0` is the year 1998, as JSON Schema's `integer` says.
    pub year: Option<serde_json::Number>,
}

/// What to change of a title (each `Some`).
#[derive(Debug, Clone, Default)]
pub struct TitleChange {
    pub title: Option<String>,
    pub authors: Option<Vec<String>>,
    pub year: Option<serde_json::Number>,
}

/// A patron to add.
#[derive(Debug, Clone, Default)]
pub struct NewPatron {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
}

/// What to change of a patron (each `Some`); `blocked: Some(None)` unblocks.
#[derive(Debug, Clone, Default)]
pub struct PatronEdit {
    pub name: Option<String>,
    pub email: Option<String>,
    pub blocked: Option<Option<String>>,
}

/// One page of patrons; `next_cursor` fetches the next one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PatronPage {
    pub patrons: Vec<PatronView>,
    /// Give it as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Text of 1 to `max` characters, not all white space, without control
/// characters; answered trimmed.
pub fn label(raw: &str, field: &str, max: usize) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || raw.chars().count() > max || raw.chars().any(char::is_control) {
        return Err(Invalid::field(
            "invalid_text",
            field,
            format!("`{field}` takes 1 to {max} characters, not all spaces, no control characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// `local@domain`: one `@`, something on each side, no spaces or control
/// characters.
pub fn email(raw: &str) -> Result<String, Invalid> {
    let ok = raw.chars().count() <= EMAIL_MAX
        && raw.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid::field(
            "invalid_email",
            "email",
            format!(
                "`{raw}` is not an e-mail address (local@domain, up to {EMAIL_MAX} characters)"
            ),
        ))
    }
}

/// A copy's barcode: a letter or digit, then letters, digits, `.`, `_`, `-`; up to 64.
pub fn barcode(raw: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid::field(
            "invalid_barcode",
            "barcode",
            format!("`{raw}` is not a barcode (letters, digits, `.`, `_`, `-`; up to 64)"),
        ))
    }
}

fn authors(raw: &[String]) -> Result<Vec<String>, Invalid> {
    if raw.len() > AUTHORS_MAX {
        return Err(Invalid::field(
            "invalid_authors",
            "authors",
            format!("at most {AUTHORS_MAX} authors"),
        ));
    }
    raw.iter()
        .map(|a| label(a, "authors", AUTHOR_MAX))
        .collect()
}

fn year(raw: &serde_json::Number) -> Result<i32, Invalid> {
    let whole = raw.as_i64().or_else(|| {
        raw.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e9)
            .map(|f| f as i64)
    });
    match whole.and_then(|y| i32::try_from(y).ok()) {
        Some(y) if (YEAR_MIN..=YEAR_MAX).contains(&y) => Ok(y),
        _ => Err(Invalid::field(
            "invalid_year",
            "year",
            format!("the year is a whole number from {YEAR_MIN} to {YEAR_MAX}"),
        )),
    }
}

fn no_title(isbn: &Isbn) -> CommandError {
    CommandError::not_found(
        "title_not_found",
        format!("no title with ISBN {isbn} in the catalogue"),
    )
}

fn no_patron(id: &PatronId) -> CommandError {
    CommandError::not_found("patron_not_found", format!("no patron with id {id}"))
}

impl NewTitle {
    /// The title as it would be stored, or what is wrong with it.
    pub fn check(&self) -> Result<TitleView, Invalid> {
        Ok(TitleView {
            isbn: Isbn::parse(&self.isbn)?.to_string(),
            title: label(&self.title, "title", TITLE_MAX)?,
            authors: authors(&self.authors)?,
            year: self.year.as_ref().map(year).transpose()?,
        })
    }
}

impl NewPatron {
    /// The patron as it would be stored (not blocked), or what is wrong.
    pub fn check(&self) -> Result<PatronView, Invalid> {
        Ok(PatronView {
            id: PatronId::parse(&self.id)?.to_string(),
            name: label(&self.name, "name", NAME_MAX)?,
            email: self.email.as_deref().map(email).transpose()?,
            blocked: None,
        })
    }
}

impl Commands {
    /// Adds a title; `409 title_exists` when its ISBN is taken.
    pub async fn add_title(&self, new: NewTitle) -> Result<TitleView, CommandError> {
        self.authorize(Permission::AddTitle)?;
        let title = new.check()?;
        let client = self.pool().get().await?;
        store::insert_title(&**client, &title)
            .await?
            .ok_or_else(|| {
                CommandError::conflict(
                    "title_exists",
                    format!(
                        "a title with ISBN {} is already in the catalogue",
                        title.isbn
                    ),
                )
            })
    }

    pub async fn change_title(
        &self,
        isbn: &str,
        change: TitleChange,
    ) -> Result<TitleView, CommandError> {
        self.authorize(Permission::ChangeTitle)?;
        let isbn = Isbn::parse(isbn)?;
        let title = change
            .title
            .as_deref()
            .map(|t| label(t, "title", TITLE_MAX))
            .transpose()?;
        let authors = change.authors.as_deref().map(authors).transpose()?;
        let year = change.year.as_ref().map(year).transpose()?;
        let client = self.pool().get().await?;
        store::update_title(
            &**client,
            isbn.as_str(),
            title.as_deref(),
            authors.as_deref(),
            year.map(Some),
        )
        .await?
        .ok_or_else(|| no_title(&isbn))
    }

    /// Adds a copy of a title at a branch; a barcode is made when none is given.
    pub async fn add_copy(
        &self,
        isbn: &str,
        branch: &str,
        barcode_given: Option<&str>,
    ) -> Result<CopyRecord, CommandError> {
        let isbn = Isbn::parse(isbn)?;
        let branch = self.branch(branch)?;
        self.authorize(Permission::AddCopy {
            branch: branch.as_str(),
        })?;
        let given = barcode_given.map(barcode).transpose()?;
        let client = self.pool().get().await?;
        match store::add_copy(&**client, isbn.as_str(), branch.as_str(), given.as_deref()).await? {
            CopyAdded::Added(copy) => Ok(copy),
            CopyAdded::NoSuchTitle => Err(no_title(&isbn)),
            CopyAdded::BarcodeTaken => Err(CommandError::conflict(
                "barcode_taken",
                format!(
                    "the barcode {} belongs to another copy",
                    given.as_deref().unwrap_or("made")
                ),
            )),
        }
    }

    /// Withdraws a copy: never lent again, its history kept. Refused while
    /// it is on loan; withdrawing twice changes nothing.
    pub async fn withdraw_copy(&self, raw: &str) -> Result<CopyRecord, CommandError> {
        self.authorize_role(Permission::WithdrawCopy { branch: "" })?;
        let code = barcode(raw)?;
        let client = self.pool().get().await?;
        // A branch librarian withdraws only their branch's copies.
        if self.caller().is_some_and(|c| c.branch.is_some()) {
            let branch: Option<String> = client
                .query_opt("SELECT branch FROM copies WHERE barcode = $1", &[&code])
                .await?
                .map(|r| r.get(0));
            if let Some(branch) = branch {
                self.authorize(Permission::WithdrawCopy { branch: &branch })?;
            }
        }
        match store::withdraw_copy(&**client, &code).await? {
            Withdrawal::Withdrawn(copy) => Ok(copy),
            Withdrawal::OnLoan => Err(CommandError::conflict(
                "copy_on_loan",
                format!("the copy {code} is on loan; withdraw it once it is returned"),
            )),
            Withdrawal::OnHoldShelf => Err(CommandError::conflict(
                "copy_on_hold_shelf",
                format!(
                    "the copy {code} is on the hold shelf for a patron's hold; withdraw it once it has left the shelf"
                ),
            )),
            Withdrawal::NoSuchCopy => Err(CommandError::not_found(
                "copy_not_found",
                format!("no copy with barcode {code}"),
            )),
        }
    }

    /// Adds a patron; `409 patron_exists` when the id is taken.
    pub async fn add_patron(&self, new: NewPatron) -> Result<PatronView, CommandError> {
        self.authorize(Permission::AddPatron)?;
        let patron = new.check()?;
        let client = self.pool().get().await?;
        store::insert_patron(&**client, &patron.id, &patron.name, patron.email.as_deref())
            .await?
            .ok_or_else(|| {
                CommandError::conflict(
                    "patron_exists",
                    format!("a patron with id {} exists already", patron.id),
                )
            })
    }

    pub async fn change_patron(
        &self,
        id: &str,
        edit: PatronEdit,
    ) -> Result<PatronView, CommandError> {
        self.authorize(Permission::ChangePatron)?;
        let id = PatronId::parse(id)?;
        let change = PatronChange {
            name: edit
                .name
                .as_deref()
                .map(|n| label(n, "name", NAME_MAX))
                .transpose()?,
            email: edit.email.as_deref().map(email).transpose()?.map(Some),
            blocked: edit
                .blocked
                .map(|b| {
                    b.map(|r| label(&r, "blocked.reason", REASON_MAX))
                        .transpose()
                })
                .transpose()?,
        };
        let client = self.pool().get().await?;
        store::update_patron(&**client, id.as_str(), &change, self.clock().now())
            .await?
            .ok_or_else(|| no_patron(&id))
    }

    pub async fn patron(&self, id: &str) -> Result<PatronView, CommandError> {
        let id = PatronId::parse(id)?;
        self.authorize(Permission::ReadPatron {
            patron: id.as_str(),
        })?;
        let client = self.pool().get().await?;
        store::patron(&**client, id.as_str())
            .await?
            .ok_or_else(|| no_patron(&id))
    }

    /// Patrons in id order whose id starts with `q` or whose name contains
    /// it, a page at a time: `cursor` is the `next_cursor` of the page before.
    pub async fn list_patrons(
        &self,
        q: Option<&str>,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<PatronPage, CommandError> {
        self.authorize(Permission::ListPatrons)?;
        let q = match q {
            Some(q) if q.chars().count() > PATRON_QUERY_MAX || q.chars().any(char::is_control) => {
                return Err(Invalid::field(
                    "invalid_query",
                    "q",
                    format!("q takes up to {PATRON_QUERY_MAX} characters, no control characters"),
                )
                .into());
            }
            Some(q) if !q.trim().is_empty() => Some(q.trim()),
            _ => None,
        };
        let limit = limit.unwrap_or(PATRONS_DEFAULT_LIMIT);
        if !(1..=PATRONS_MAX_LIMIT).contains(&limit) {
            return Err(Invalid::field(
                "invalid_limit",
                "limit",
                format!("limit must be from 1 to {PATRONS_MAX_LIMIT}"),
            )
            .into());
        }
        let cursor = cursor
            .map(|c| {
                PatronId::parse(c).map_err(|_| {
                    Invalid::field(
                        "invalid_cursor",
                        "cursor",
                        "give the next_cursor of the page before",
                    )
                })
            })
            .transpose()?;
        let client = self.pool().get().await?;
        let (patrons, more) =
            store::list_patrons(&**client, q, cursor.as_ref().map(PatronId::as_str), limit).await?;
        let next_cursor = if more {
            patrons.last().map(|p| p.id.clone())
        } else {
            None
        };
        Ok(PatronPage {
            patrons,
            next_cursor,
        })
    }
}

/// Most rows in one import request.
pub const IMPORT_MAX_ROWS: usize = 1000;

/// A row an import refused, by its place in the request (from 0).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowRejected {
    pub row: usize,
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
    /// The column at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
}

/// What one import request did: rows created, updated, already so, and
/// refused (with why). Refused rows change nothing; the others are
/// written in one transaction.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: Vec<RowRejected>,
}

impl ImportReport {
    fn reject(&mut self, row: usize, e: Invalid) {
        self.rejected.push(RowRejected {
            row,
            code: e.code,
            message: e.message,
            field: e.field,
        });
    }

    fn count(&mut self, done: store::Upserted) {
        match done {
            store::Upserted::Created => self.created += 1,
            store::Upserted::Updated => self.updated += 1,
            store::Upserted::Unchanged => self.unchanged += 1,
        }
    }
}

/// Checks every row; keeps the first of rows with the same key.
fn checked<T, K: Eq + std::hash::Hash>(
    report: &mut ImportReport,
    rows: Vec<Result<T, Invalid>>,
    key: impl Fn(&T) -> K,
    what: &str,
) -> Result<Vec<T>, Invalid> {
    if rows.len() > IMPORT_MAX_ROWS {
        return Err(Invalid::field(
            "too_many_rows",
            "rows",
            format!("at most {IMPORT_MAX_ROWS} rows in one request"),
        ));
    }
    let mut seen = std::collections::HashMap::new();
    let mut good = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        match row {
            Err(e) => report.reject(i, e),
            Ok(t) => match seen.get(&key(&t)) {
                Some(first) => report.reject(
                    i,
                    Invalid::new(
                        "duplicate_row",
                        format!("the same {what} as row {first} of this request"),
                    ),
                ),
                None => {
                    seen.insert(key(&t), i);
                    good.push(t);
                }
            },
        }
    }
    Ok(good)
}

impl Commands {
    /// Adds or updates titles (by ISBN); copies are not touched.
    pub async fn import_titles(&self, rows: Vec<NewTitle>) -> Result<ImportReport, CommandError> {
        self.authorize(Permission::Import)?;
        let mut report = ImportReport::default();
        let rows = rows.iter().map(NewTitle::check).collect();
        let good = checked(&mut report, rows, |t: &TitleView| t.isbn.clone(), "ISBN")?;
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        for t in &good {
            let done = store::upsert_title(&*tx, t).await?;
            report.count(done);
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Adds or updates patrons (by id): name and e-mail; blocks are kept.
    pub async fn import_patrons(&self, rows: Vec<NewPatron>) -> Result<ImportReport, CommandError> {
        self.authorize(Permission::Import)?;
        let mut report = ImportReport::default();
        let rows = rows.iter().map(NewPatron::check).collect();
        let good = checked(
            &mut report,
            rows,
            |p: &PatronView| p.id.clone(),
            "patron id",
        )?;
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        for p in &good {
            let done = store::upsert_patron(&*tx, p).await?;
            report.count(done);
        }
        tx.commit().await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_trimmed_and_bounded_and_refuse_control_characters() {
        assert_eq!(label("  Olga ", "name", 10).unwrap(), "Olga");
        for bad in ["", "   ", "a\u{0}b", "tab\tinside", "elevenchars"] {
            let e = label(bad, "name", 10).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("name"), "{bad:?}");
        }
        assert_eq!(label("ñandúñandú", "name", 10).unwrap(), "ñandúñandú");
    }

    #[test]
    fn e_mail_addresses_and_barcodes_are_checked() {
        assert!(email("olga@example.org").is_ok());
        for bad in ["olga", "@x", "x@", "a@b@c", "o lga@x", "a@b\u{85}"] {
            assert_eq!(email(bad).unwrap_err().code, "invalid_email", "{bad:?}");
        }
        assert!(barcode("NORTE-C12").is_ok());
        for bad in ["", "-x", "a b", &"x".repeat(65)] {
            assert_eq!(barcode(bad).unwrap_err().code, "invalid_barcode", "{bad:?}");
        }
    }

    #[test]
    fn a_year_is_a_whole_number_in_range_even_written_with_a_fraction() {
        let n = |v: serde_json::Value| serde_json::from_value::<serde_json::Number>(v).unwrap();
        assert_eq!(year(&n(serde_json::json!(1866))).unwrap(), 1866);
        assert_eq!(year(&n(serde_json::json!(1866.0))).unwrap(), 1866);
        for bad in [
            serde_json::json!(1866.5),
            serde_json::json!(2101),
            serde_json::json!(-1),
        ] {
            assert_eq!(
                year(&n(bad.clone())).unwrap_err().code,
                "invalid_year",
                "{bad}"
            );
        }
    }

    #[test]
    fn an_import_refuses_bad_and_repeated_rows_by_their_place() {
        let rows = [
            NewTitle {
                isbn: "0-14-044913-2".into(),
                title: "A".into(),
                ..NewTitle::default()
            },
            NewTitle {
                isbn: "9780140449137".into(),
                title: "B".into(),
                ..NewTitle::default()
            },
            NewTitle {
                isbn: "9780140449136".into(),
                title: "C".into(),
                ..NewTitle::default()
            },
        ];
        let mut report = ImportReport::default();
        let checked_rows = rows.iter().map(NewTitle::check).collect();
        let good = checked(
            &mut report,
            checked_rows,
            |t: &TitleView| t.isbn.clone(),
            "ISBN",
        )
        .unwrap();
        assert_eq!(good.len(), 1);
        let refused: Vec<(usize, &str)> = report.rejected.iter().map(|r| (r.row, r.code)).collect();
        assert_eq!(refused, [(1, "invalid_isbn"), (2, "duplicate_row")]);
    }
}
