//! Catalogue and patron administration: titles, copies, patrons.

use axum::{
    Json,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bibliomq_core::{
    commands::{
        IMPORT_MAX_ROWS, ImportReport, NewPatron, NewTitle, PatronEdit, PatronPage, TitleChange,
    },
    library::store::{CopyRecord, PatronView, TitleView},
};
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{
    Routes,
    library::{IsbnPath, PatronPath},
};
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
};

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(add_title))
        .routes(routes!(change_title))
        .routes(routes!(add_copy))
        .routes(routes!(withdraw_copy))
        .routes(routes!(add_patron, list_patrons))
        .routes(routes!(show_patron, change_patron))
        .routes(routes!(import_titles))
        .routes(routes!(import_patrons))
}

/// Up to `IMPORT_MAX_ROWS` of the schema `name`.
fn rows_of(name: &str) -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name(name))
        .max_items(Some(IMPORT_MAX_ROWS))
        .build()
}

fn title_rows() -> utoipa::openapi::schema::Array {
    rows_of("NewTitle")
}

fn patron_rows() -> utoipa::openapi::schema::Array {
    rows_of("NewPatron")
}

/// Titles to add or update, by ISBN.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TitleImport)]
struct TitleImportBody {
    #[schema(schema_with = title_rows)]
    rows: Vec<TitleBody>,
}

/// Patrons to add or update, by id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PatronImport)]
struct PatronImportBody {
    #[schema(schema_with = patron_rows)]
    rows: Vec<PatronBody>,
}

/// Add or update titles in bulk (what `bibliomq import titles` sends)
///
/// Each row is checked as `POST /v1/titles` checks a title; refused rows
/// are listed by their place (from 0) and change nothing; the others are
/// written in one transaction. A row that is already so is counted
/// `unchanged` and not written, so sending the same rows twice changes
/// nothing. Copies are not touched.
#[utoipa::path(
    post, path = "/import/titles", tag = "catalogue", operation_id = "importTitles",
    request_body(content = TitleImportBody),
    responses(
        (status = 200, description = "What each row did.", body = ImportReport),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Too many rows, or a row of the wrong shape, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn import_titles(
    Acting(state): Acting,
    JsonBody(body): JsonBody<TitleImportBody>,
) -> Result<Json<ImportReport>, ApiError> {
    let rows = body
        .rows
        .into_iter()
        .map(|b| NewTitle {
            isbn: b.isbn,
            title: b.title,
            authors: b.authors,
            year: b.year,
        })
        .collect();
    Ok(Json(state.commands.import_titles(rows).await?))
}

/// Add or update patrons in bulk (what `bibliomq import patrons` sends)
///
/// Each row is checked as `POST /v1/patrons` checks a patron; refused rows
/// are listed by their place (from 0) and change nothing; the others are
/// written in one transaction. Name and e-mail are set as given; whether a
/// patron is blocked is kept. Sending the same rows twice changes nothing.
#[utoipa::path(
    post, path = "/import/patrons", tag = "patrons", operation_id = "importPatrons",
    request_body(content = PatronImportBody),
    responses(
        (status = 200, description = "What each row did.", body = ImportReport),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Too many rows, or a row of the wrong shape, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn import_patrons(
    Acting(state): Acting,
    JsonBody(body): JsonBody<PatronImportBody>,
) -> Result<Json<ImportReport>, ApiError> {
    let rows = body
        .rows
        .into_iter()
        .map(|b| NewPatron {
            id: b.id,
            name: b.name,
            email: b.email,
        })
        .collect();
    Ok(Json(state.commands.import_patrons(rows).await?))
}

pub(super) fn created<T: serde::Serialize>(location: &str, body: T) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A title to add to the catalogue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewTitle)]
struct TitleBody {
    #[schema(schema_with = bibliomq_core::schema::isbn)]
    isbn: String,
    #[schema(schema_with = bibliomq_core::schema::title_text)]
    title: String,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::authors)]
    authors: Vec<String>,
    /// The year of publication.
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::year)]
    year: Option<serde_json::Number>,
}

/// Add a title to the catalogue
///
/// An ISBN-10 is stored as its ISBN-13. The title has no copies yet: add
/// them with `POST /v1/titles/{isbn}/copies`.
#[utoipa::path(
    post, path = "/titles", tag = "catalogue", operation_id = "addTitle",
    request_body = TitleBody,
    responses(
        (status = 201, description = "Added.", body = TitleView, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 409, description = "A title with that ISBN exists (`title_exists`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, title, authors or year, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn add_title(
    Acting(state): Acting,
    JsonBody(body): JsonBody<TitleBody>,
) -> Result<Response, ApiError> {
    let title = state
        .commands
        .add_title(NewTitle {
            isbn: body.isbn,
            title: body.title,
            authors: body.authors,
            year: body.year,
        })
        .await?;
    Ok(created(&format!("/v1/books/{}", title.isbn), title))
}

/// What to change of a title; what is absent stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TitleChange)]
struct TitlePatch {
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::title_text)]
    title: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::authors)]
    authors: Option<Vec<String>>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::year)]
    year: Option<serde_json::Number>,
}

/// Change a title's title, authors or year
#[utoipa::path(
    patch, path = "/titles/{isbn}", tag = "catalogue", operation_id = "changeTitle",
    params(IsbnPath),
    request_body = TitlePatch,
    responses(
        (status = 200, description = "The title as it is now.", body = TitleView),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "Not in the catalogue (`title_not_found`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, title, authors or year, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn change_title(
    Acting(state): Acting,
    Path(IsbnPath { isbn }): Path<IsbnPath>,
    JsonBody(body): JsonBody<TitlePatch>,
) -> Result<Json<TitleView>, ApiError> {
    Ok(Json(
        state
            .commands
            .change_title(
                &isbn,
                TitleChange {
                    title: body.title,
                    authors: body.authors,
                    year: body.year,
                },
            )
            .await?,
    ))
}

/// A copy to add. Without a barcode, one is made (`<BRANCH>-C<n>`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewCopy)]
struct CopyBody {
    /// A branch code, see /v1/branches.
    branch: String,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::barcode)]
    barcode: Option<String>,
}

/// Add a copy of a title at a branch
#[utoipa::path(
    post, path = "/titles/{isbn}/copies", tag = "catalogue", operation_id = "addCopy",
    params(IsbnPath),
    request_body = CopyBody,
    responses(
        (status = 201, description = "Added, available.", body = CopyRecord, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "Not in the catalogue (`title_not_found`).", body = ErrorAnswer),
        (status = 409, description = "The barcode belongs to another copy (`barcode_taken`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, branch or barcode, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn add_copy(
    Acting(state): Acting,
    Path(IsbnPath { isbn }): Path<IsbnPath>,
    JsonBody(body): JsonBody<CopyBody>,
) -> Result<Response, ApiError> {
    let copy = state
        .commands
        .add_copy(&isbn, &body.branch, body.barcode.as_deref())
        .await?;
    Ok(created(&format!("/v1/books/{}", copy.isbn), copy))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct BarcodePath {
    /// The copy's barcode.
    #[param(value_type = bibliomq_core::schema::Barcode, inline)]
    barcode: String,
}

/// Withdraw a copy
///
/// A withdrawn copy is never lent again; its loans and history stay.
/// Withdrawing a withdrawn copy changes nothing.
#[utoipa::path(
    delete, path = "/copies/{barcode}", tag = "catalogue", operation_id = "withdrawCopy",
    params(BarcodePath),
    responses(
        (status = 200, description = "Withdrawn.", body = CopyRecord),
        (status = 404, description = "No such copy (`copy_not_found`).", body = ErrorAnswer),
        (status = 409, description = "On loan: withdraw it once returned (`copy_on_loan`); on the hold shelf for a hold (`copy_on_hold_shelf`).", body = ErrorAnswer),
        (status = 422, description = "Not a barcode (`invalid_barcode`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn withdraw_copy(
    Acting(state): Acting,
    Path(BarcodePath { barcode }): Path<BarcodePath>,
) -> Result<Json<CopyRecord>, ApiError> {
    Ok(Json(state.commands.withdraw_copy(&barcode).await?))
}

/// A patron to add.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewPatron)]
struct PatronBody {
    #[schema(schema_with = bibliomq_core::schema::patron)]
    id: String,
    #[schema(schema_with = bibliomq_core::schema::person_name)]
    name: String,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::email)]
    email: Option<String>,
}

/// Add a patron
///
/// The id is stored in lower case.
#[utoipa::path(
    post, path = "/patrons", tag = "patrons", operation_id = "addPatron",
    request_body = PatronBody,
    responses(
        (status = 201, description = "Added, not blocked.", body = PatronView, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 409, description = "A patron with that id exists (`patron_exists`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid id, name or e-mail, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn add_patron(
    Acting(state): Acting,
    JsonBody(body): JsonBody<PatronBody>,
) -> Result<Response, ApiError> {
    let patron = state
        .commands
        .add_patron(NewPatron {
            id: body.id,
            name: body.name,
            email: body.email,
        })
        .await?;
    Ok(created(&format!("/v1/patrons/{}", patron.id), patron))
}

/// Blocks a patron.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BlockRequest)]
struct BlockBody {
    /// Why: shown with every refused loan or renewal.
    #[schema(schema_with = bibliomq_core::schema::reason)]
    reason: String,
}

/// A member that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What to change of a patron; what is absent stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PatronChange)]
struct PatronPatch {
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::person_name)]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::email)]
    email: Option<String>,
    /// `{"reason": ...}` blocks the patron (no loans or renewals,
    /// `patron_blocked`); `null` unblocks.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BlockBody>)]
    blocked: Option<Option<BlockBody>>,
}

/// Change a patron's name or e-mail; block or unblock them
#[utoipa::path(
    patch, path = "/patrons/{id}", tag = "patrons", operation_id = "changePatron",
    params(PatronPath),
    request_body = PatronPatch,
    responses(
        (status = 200, description = "The patron as they are now.", body = PatronView),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "No such patron (`patron_not_found`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid id, name, e-mail or reason, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn change_patron(
    Acting(state): Acting,
    Path(PatronPath { id }): Path<PatronPath>,
    JsonBody(body): JsonBody<PatronPatch>,
) -> Result<Json<PatronView>, ApiError> {
    Ok(Json(
        state
            .commands
            .change_patron(
                &id,
                PatronEdit {
                    name: body.name,
                    email: body.email,
                    blocked: body.blocked.map(|b| b.map(|b| b.reason)),
                },
            )
            .await?,
    ))
}

/// A patron
#[utoipa::path(
    get, path = "/patrons/{id}", tag = "patrons", operation_id = "getPatron",
    params(PatronPath),
    responses(
        (status = 200, description = "The patron.", body = PatronView),
        (status = 404, description = "No such patron (`patron_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a valid patron id (`invalid_patron`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn show_patron(
    Acting(state): Acting,
    Path(PatronPath { id }): Path<PatronPath>,
) -> Result<Json<PatronView>, ApiError> {
    Ok(Json(state.commands.patron(&id).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PatronsQuery {
    /// The start of an id, or words of a name (case and accents ignored).
    #[param(value_type = Option<bibliomq_core::schema::PatronQuery>, inline)]
    q: Option<String>,
    /// At most this many (1 to 100, default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<bibliomq_core::schema::Patron>, inline)]
    cursor: Option<String>,
}

/// Patrons by id or name, a page at a time
///
/// In id order; follow `next_cursor` (as `cursor`) until it is `null`.
#[utoipa::path(
    get, path = "/patrons", tag = "patrons", operation_id = "listPatrons",
    params(PatronsQuery),
    responses(
        (status = 200, description = "One page of patrons.", body = PatronPage),
        (status = 400, description = "An unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "A bad `q`, `limit` or `cursor`, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn list_patrons(
    Acting(state): Acting,
    QueryParams(q): QueryParams<PatronsQuery>,
) -> Result<Json<PatronPage>, ApiError> {
    let limit = super::parse_limit(q.limit.as_deref())?;
    Ok(Json(
        state
            .commands
            .list_patrons(q.q.as_deref(), limit, q.cursor.as_deref())
            .await?,
    ))
}
