//! Library circulation: loans (answered at once), renewals and returns
//! (accepted, then applied), operations, books, patrons, branches.

use axum::{
    Extension, Json,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bibliomq_core::{
    answers::{BookSearch, BranchList, OperationAcceptedAnswer},
    commands::{CirculationRequest, LoanReceipt, LoanRequest, OperationAccepted},
    library::store::{BookView, LoanView, OperationView, PatronLoans},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::Routes;
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
    middleware::CorrelationId,
};

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(loan))
        .routes(routes!(show_loan))
        .routes(routes!(renew))
        .routes(routes!(return_loan))
        .routes(routes!(operation))
        .routes(routes!(search))
        .routes(routes!(book))
        .routes(routes!(patron_loans))
        .routes(routes!(branches))
}

/// A loan to make. Give `isbn` or `title`, not both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LoanRequest)]
struct LoanBody {
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::isbn)]
    isbn: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::title)]
    title: Option<String>,
    #[schema(schema_with = bibliomq_core::schema::patron)]
    patron: String,
    /// A branch code, see /v1/branches.
    branch: String,
}

use super::IDEMPOTENCY_KEY;

/// An id from the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct IdPath {
    /// The loan's or operation's id.
    #[param(value_type = uuid::Uuid)]
    id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PatronPath {
    /// The patron id.
    #[param(value_type = bibliomq_core::schema::Patron, inline)]
    pub(super) id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct IsbnPath {
    /// ISBN-13 (or ISBN-10; hyphens allowed).
    #[param(value_type = bibliomq_core::schema::Isbn, inline)]
    pub(super) isbn: String,
}

/// Lend a copy of a title (by ISBN or by title words)
///
/// Answered at once: the loan worker applies the rules and replies over
/// RabbitMQ. A copy at the requested branch is preferred; another branch's
/// otherwise. `504` when the loan service does not answer in time: retry
/// with the same `Idempotency-Key` to learn the outcome.
#[utoipa::path(
    post, path = "/loans", tag = "library", operation_id = "makeLoan",
    params((
        "Idempotency-Key" = Option<String>, Header,
        description = "Your key for safe retries: the same key answers with the same loan (`replayed`). One is made when absent and returned.",
        min_length = 1, max_length = 200, pattern = "^[!-~]+$", nullable = false
    )),
    request_body = LoanBody,
    responses(
        (status = 201, description = "Lent (or, with `replayed`, lent earlier for this key).", body = LoanReceipt,
            headers(
                ("Location" = String),
                ("Idempotency-Key" = String),
                ("Idempotent-Replayed" = String),
            )),
        (status = 400, description = "Malformed JSON or Idempotency-Key.", body = ErrorAnswer),
        (status = 404, description = "Unknown title or patron (`title_not_found`, `patron_not_found`).", body = ErrorAnswer),
        (status = 409, description = "Refused by a rule: `not_available` (with `earliest_due_at`), `loan_limit_reached`, `patron_blocked` (with `reason`), `ambiguous_title` (with `candidates`), `idempotency_key_reused`.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, patron, branch or title, with `field`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn loan(
    Acting(state): Acting,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoanBody>,
) -> Result<Response, ApiError> {
    let key = super::idempotency_key(&headers)?;
    let receipt = state
        .commands
        .loan(
            LoanRequest {
                isbn: body.isbn,
                title: body.title,
                patron: body.patron,
                branch: body.branch,
                idempotency_key: key,
            },
            &correlation_id,
        )
        .await?;
    let location = format!("/v1/loans/{}", receipt.loan.id);
    let key = receipt.idempotency_key.clone();
    let replayed = receipt.replayed;
    let mut response = (StatusCode::CREATED, Json(receipt)).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(IDEMPOTENCY_KEY, v);
    }
    if replayed {
        h.insert(super::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A loan
#[utoipa::path(
    get, path = "/loans/{id}", tag = "library", operation_id = "getLoan",
    params(IdPath),
    responses(
        (status = 200, description = "The loan.", body = LoanView),
        (status = 400, description = "The id is not a UUID (`invalid_loan_id`).", body = ErrorAnswer),
        (status = 404, description = "No such loan (`loan_not_found`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn show_loan(
    Acting(state): Acting,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Json<LoanView>, ApiError> {
    let id = super::parse_uuid(&id, "a loan id", "invalid_loan_id")?;
    Ok(Json(state.commands.loan_view(id).await?))
}

/// A renewal or return. Give `loan_id`, or `isbn` and `patron`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CirculationRequest)]
struct CirculationBody {
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::uuid)]
    loan_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::isbn)]
    isbn: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::patron)]
    patron: Option<String>,
    /// A branch code, see /v1/branches.
    branch: String,
}

impl From<CirculationBody> for CirculationRequest {
    fn from(b: CirculationBody) -> Self {
        Self {
            loan_id: b.loan_id,
            isbn: b.isbn,
            patron: b.patron,
            branch: b.branch,
        }
    }
}

fn accepted(op: OperationAccepted) -> Response {
    let body = OperationAcceptedAnswer::from(op);
    let location = body.links.this.clone();
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Renew a loan
///
/// Accepted at once and applied by a worker; follow `links.self`
/// (`/v1/operations/{id}`) until it is `applied` or `rejected`. Name the
/// loan by `loan_id`, or by `isbn` and `patron`. The tentative due date is what it becomes if applied.
#[utoipa::path(
    post, path = "/renewals", tag = "library", operation_id = "renewLoan",
    request_body = CirculationBody,
    responses(
        (status = 202, description = "Queued for the branch's worker.", body = OperationAcceptedAnswer,
            headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "No such patron, title or open loan (`patron_not_found`, `title_not_found`, `loan_not_found`).", body = ErrorAnswer),
        (status = 409, description = "The loan is already closed (`not_on_loan`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, patron, branch or loan id, or a missing field, with `field`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn renew(
    Acting(state): Acting,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    JsonBody(body): JsonBody<CirculationBody>,
) -> Result<Response, ApiError> {
    let op = state.commands.renew(body.into(), &correlation_id).await?;
    Ok(accepted(op))
}

/// Return a loan
///
/// Accepted at once and applied by a worker; follow `links.self`
/// (`/v1/operations/{id}`) until it is `applied` or `rejected`. Name the
/// loan by `loan_id`, or by `isbn` and `patron`.
#[utoipa::path(
    post, path = "/returns", tag = "library", operation_id = "returnLoan",
    request_body = CirculationBody,
    responses(
        (status = 202, description = "Queued for the branch's worker.", body = OperationAcceptedAnswer,
            headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "No such patron, title or open loan (`patron_not_found`, `title_not_found`, `loan_not_found`).", body = ErrorAnswer),
        (status = 409, description = "The loan is already closed (`not_on_loan`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, patron, branch or loan id, or a missing field, with `field`.", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn return_loan(
    Acting(state): Acting,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    JsonBody(body): JsonBody<CirculationBody>,
) -> Result<Response, ApiError> {
    let op = state
        .commands
        .return_loan(body.into(), &correlation_id)
        .await?;
    Ok(accepted(op))
}

/// A renewal's or return's state and outcome
#[utoipa::path(
    get, path = "/operations/{id}", tag = "library", operation_id = "getOperation",
    params(IdPath),
    responses(
        (status = 200, description = "`pending`, then `applied` (with `outcome`) or `rejected` (with `reason`).", body = OperationView),
        (status = 400, description = "The id is not a UUID (`invalid_operation_id`).", body = ErrorAnswer),
        (status = 404, description = "No such operation (`operation_not_found`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn operation(
    Acting(state): Acting,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Json<OperationView>, ApiError> {
    let id = super::parse_uuid(&id, "an operation id", "invalid_operation_id")?;
    Ok(Json(state.commands.operation(id).await?))
}

/// A title, its copies per branch and when the next one is due back
#[utoipa::path(
    get, path = "/books/{isbn}", tag = "library", operation_id = "getBook",
    params(IsbnPath),
    responses(
        (status = 200, description = "The title.", body = BookView),
        (status = 404, description = "Not in the catalogue (`title_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a valid ISBN (`invalid_isbn`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn book(
    Acting(state): Acting,
    Path(IsbnPath { isbn }): Path<IsbnPath>,
) -> Result<Json<BookView>, ApiError> {
    Ok(Json(state.commands.book(&isbn).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// 1 to 8 words of the title (up to 100 characters each).
    #[param(required = true, value_type = Option<SearchWords>, inline)]
    title: Option<String>,
    /// The same as `title`, which wins when both are given.
    #[param(value_type = Option<SearchWords>, inline)]
    #[deprecated]
    q: Option<String>,
    /// At most this many (1 to 100, default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// Words of a title search, as many as the command layer takes.
struct SearchWords;

impl utoipa::PartialSchema for SearchWords {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::RefOr::T(bibliomq_core::schema::search_words(
            bibliomq_core::commands::SEARCH_MAX_WORDS,
        ))
    }
}

impl ToSchema for SearchWords {}

/// Titles containing every word, ignoring case and accents
#[utoipa::path(
    get, path = "/books", tag = "library", operation_id = "searchBooks",
    params(SearchQuery),
    responses(
        (status = 200, description = "Matching titles with their availability.", body = BookSearch),
        (status = 400, description = "An unknown parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "No words, too many, or a bad limit (`invalid_query`, `invalid_limit`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn search(
    Acting(state): Acting,
    QueryParams(q): QueryParams<SearchQuery>,
) -> Result<Json<BookSearch>, ApiError> {
    #[allow(deprecated)]
    let query = q.title.or(q.q).unwrap_or_default();
    let limit = super::parse_limit(q.limit.as_deref())?;
    let books = state.commands.search_books(&query, limit).await?;
    Ok(Json(BookSearch { query, books }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PatronLoansQuery {
    /// Returned loans too.
    all: Option<bool>,
}

/// A patron's loans, soonest due first
#[utoipa::path(
    get, path = "/patrons/{id}/loans", tag = "library", operation_id = "getPatronLoans",
    params(PatronPath, PatronLoansQuery),
    responses(
        (status = 200, description = "The patron and their loans.", body = PatronLoans),
        (status = 400, description = "An unknown or malformed parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 404, description = "No such patron (`patron_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a valid patron id (`invalid_patron`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn patron_loans(
    Acting(state): Acting,
    Path(PatronPath { id }): Path<PatronPath>,
    QueryParams(q): QueryParams<PatronLoansQuery>,
) -> Result<Json<PatronLoans>, ApiError> {
    Ok(Json(
        state
            .commands
            .patron_loans(&id, q.all.unwrap_or(false))
            .await?,
    ))
}

/// The library's branches (BIBLIOMQ_BRANCHES)
#[utoipa::path(
    get, path = "/branches", tag = "library", operation_id = "listBranches",
    responses((status = 200, description = "Branches in display order.", body = BranchList))
)]
async fn branches(Acting(state): Acting) -> Json<BranchList> {
    Json(BranchList::from(state.commands.branches()))
}
