//! Library circulation: loans (answered at once), renewals and returns
//! (accepted, then applied), operations, books, patrons, branches.

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bibliomq_core::{
    answers::{BookSearch, BranchList, OperationAcceptedAnswer},
    commands::{CirculationRequest, LoanRequest, OperationAccepted},
    library::store::{BookView, LoanView, OperationView, PatronLoans},
};
use serde::Deserialize;

use super::Routes;
use crate::{
    AppState,
    error::ApiError,
    extract::{JsonBody, QueryParams},
    middleware::CorrelationId,
};

pub fn routes() -> Routes {
    Routes::new()
        .route("/loans", post(loan))
        .route("/loans/{id}", get(show_loan))
        .route("/renewals", post(renew))
        .route("/returns", post(return_loan))
        .route("/operations/{id}", get(operation))
        .route("/books", get(search))
        .route("/books/{isbn}", get(book))
        .route("/patrons/{id}/loans", get(patron_loans))
        .route("/branches", get(branches))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoanBody {
    isbn: Option<String>,
    title: Option<String>,
    patron: String,
    branch: String,
}

use super::IDEMPOTENCY_KEY;

/// `201 Created` with the loan; `409` when no copy is available or the
/// patron is at the limit; `404` for unknown titles or patrons; `504` when
/// the loan service does not answer in time (retry with the same
/// `Idempotency-Key` to learn the outcome).
async fn loan(
    State(state): State<AppState>,
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

async fn show_loan(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LoanView>, ApiError> {
    let id = super::parse_uuid(&id, "a loan id", "invalid_loan_id")?;
    Ok(Json(state.commands.loan_view(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CirculationBody {
    loan_id: Option<String>,
    isbn: Option<String>,
    patron: Option<String>,
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

/// `202 Accepted`: the renewal is queued (`renewal.<branch>`); follow it at
/// `/v1/operations/{id}`. The tentative due date is what it becomes if applied.
async fn renew(
    State(state): State<AppState>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    JsonBody(body): JsonBody<CirculationBody>,
) -> Result<Response, ApiError> {
    let op = state.commands.renew(body.into(), &correlation_id).await?;
    Ok(accepted(op))
}

/// `202 Accepted`: the return is queued (`return.<branch>`).
async fn return_loan(
    State(state): State<AppState>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    JsonBody(body): JsonBody<CirculationBody>,
) -> Result<Response, ApiError> {
    let op = state
        .commands
        .return_loan(body.into(), &correlation_id)
        .await?;
    Ok(accepted(op))
}

async fn operation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OperationView>, ApiError> {
    let id = super::parse_uuid(&id, "an operation id", "invalid_operation_id")?;
    Ok(Json(state.commands.operation(id).await?))
}

async fn book(
    State(state): State<AppState>,
    Path(isbn): Path<String>,
) -> Result<Json<BookView>, ApiError> {
    Ok(Json(state.commands.book(&isbn).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    title: Option<String>,
    q: Option<String>,
    limit: Option<String>,
}

/// `?title=quijote`: case- and accent-insensitive, every word must appear.
async fn search(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<SearchQuery>,
) -> Result<Json<BookSearch>, ApiError> {
    let query = q.title.or(q.q).unwrap_or_default();
    let limit = super::parse_limit(q.limit.as_deref())?;
    let books = state.commands.search_books(&query, limit).await?;
    Ok(Json(BookSearch { query, books }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatronLoansQuery {
    /// `true`: returned loans too.
    all: Option<bool>,
}

async fn patron_loans(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PatronLoansQuery>,
) -> Result<Json<PatronLoans>, ApiError> {
    Ok(Json(
        state
            .commands
            .patron_loans(&id, q.all.unwrap_or(false))
            .await?,
    ))
}

async fn branches(State(state): State<AppState>) -> Json<BranchList> {
    Json(BranchList::from(state.commands.branches()))
}
