//! Holds: place one on a title with no copy at the pickup branch, cancel
//! it, list a patron's or a title's. The rules are in the command layer
//! and its SQL functions.

use axum::{Json, extract::Path, response::Response};
use bibliomq_core::{
    commands::{HoldCancel, HoldCancelled, HoldRequest, PatronHolds, TitleHolds},
    library::store::HoldView,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{
    Routes,
    admin::created,
    library::{IsbnPath, PatronPath},
};
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
};

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(place_hold))
        .routes(routes!(show_hold, cancel_hold))
        .routes(routes!(patron_holds))
        .routes(routes!(title_holds))
}

/// A hold to place. Give `isbn` or `title`, not both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HoldRequest)]
struct HoldBody {
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::isbn)]
    isbn: Option<String>,
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::title)]
    title: Option<String>,
    /// The patron the hold is for.
    #[schema(schema_with = bibliomq_core::schema::patron)]
    patron: String,
    /// Where the patron will pick the copy up: a branch code, see /v1/branches.
    pickup_branch: String,
}

/// Place a hold on a title
///
/// For a title with no copy available at the pickup branch. Holds of a
/// title are served first come, first served: a returned copy (at any
/// branch) goes onto the hold shelf of the first waiting hold's pickup
/// branch, `hold.ready.<branch>` is announced, and the copy is kept for
/// that patron until `pickup_by` (BIBLIOMQ_HOLD_PICKUP after it was put
/// there). Their next loan of the title lends it and fulfils the hold.
#[utoipa::path(
    post, path = "/holds", tag = "holds", operation_id = "placeHold",
    request_body = HoldBody,
    responses(
        (status = 201, description = "Placed: the hold, `waiting`, with its `position` in the title's queue.", body = HoldView, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "No such patron (`patron_not_found`) or title (`title_not_found`).", body = ErrorAnswer),
        (status = 409, description = "Refused: a copy is available at the pickup branch (`available_at_branch`: lend it instead), the patron has the title on loan (`already_on_loan`) or holds it already (`already_held`), is blocked (`patron_blocked`), or the title words match several titles (`ambiguous_title`). Nothing changed.", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Invalid ISBN, title, patron id or pickup branch, or both or neither of isbn and title, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn place_hold(
    Acting(state): Acting,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Response, ApiError> {
    let hold = state
        .commands
        .place_hold(HoldRequest {
            isbn: body.isbn,
            title: body.title,
            patron: body.patron,
            pickup_branch: body.pickup_branch,
        })
        .await?;
    Ok(created(&format!("/v1/holds/{}", hold.id), hold))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct HoldPath {
    /// The hold's id.
    #[param(value_type = uuid::Uuid)]
    id: String,
}

/// A hold
#[utoipa::path(
    get, path = "/holds/{id}", tag = "holds", operation_id = "getHold",
    params(HoldPath),
    responses(
        (status = 200, description = "The hold.", body = HoldView),
        (status = 404, description = "No such hold (`hold_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a hold id (`invalid_hold_id`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn show_hold(
    Acting(state): Acting,
    Path(HoldPath { id }): Path<HoldPath>,
) -> Result<Json<HoldView>, ApiError> {
    Ok(Json(state.commands.hold_view(&id).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CancelQuery {
    /// The patron the request acts for: the hold must be theirs.
    #[param(value_type = Option<bibliomq_core::schema::Patron>, inline)]
    patron: Option<String>,
}

/// Cancel a hold
///
/// Cancelling a cancelled hold answers the same (`already_cancelled`) and
/// changes nothing. A copy on the hold shelf for it goes to the next
/// waiting hold (`passed_to`, and `hold.ready.<branch>`) or back to
/// available.
#[utoipa::path(
    delete, path = "/holds/{id}", tag = "holds", operation_id = "cancelHold",
    params(HoldPath, CancelQuery),
    responses(
        (status = 200, description = "Cancelled.", body = HoldCancelled),
        (status = 400, description = "An unknown or malformed parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 404, description = "No such hold (`hold_not_found`).", body = ErrorAnswer),
        (status = 409, description = "Fulfilled or expired already (`hold_closed`), or not a hold of the `patron` given (`not_patrons_hold`); nothing changed.", body = ErrorAnswer),
        (status = 422, description = "Not a hold id (`invalid_hold_id`) or not a patron id (`invalid_patron`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn cancel_hold(
    Acting(state): Acting,
    Path(HoldPath { id }): Path<HoldPath>,
    QueryParams(q): QueryParams<CancelQuery>,
) -> Result<Json<HoldCancelled>, ApiError> {
    Ok(Json(
        state
            .commands
            .cancel_hold(HoldCancel {
                hold_id: id,
                patron: q.patron,
            })
            .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PatronHoldsQuery {
    /// Closed holds (fulfilled, cancelled, expired) too.
    all: Option<bool>,
}

/// A patron's holds
///
/// Open ones first (copies waiting on the shelf, then the queue), oldest
/// first; with `all`, the closed ones after them.
#[utoipa::path(
    get, path = "/patrons/{id}/holds", tag = "holds", operation_id = "getPatronHolds",
    params(PatronPath, PatronHoldsQuery),
    responses(
        (status = 200, description = "The patron's holds.", body = PatronHolds),
        (status = 400, description = "An unknown or malformed parameter (`invalid_query`).", body = ErrorAnswer),
        (status = 404, description = "No such patron (`patron_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a valid patron id (`invalid_patron`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn patron_holds(
    Acting(state): Acting,
    Path(PatronPath { id }): Path<PatronPath>,
    QueryParams(q): QueryParams<PatronHoldsQuery>,
) -> Result<Json<PatronHolds>, ApiError> {
    Ok(Json(
        state
            .commands
            .patron_holds(&id, q.all.unwrap_or(false))
            .await?,
    ))
}

/// A title's open holds, in the order they are served
///
/// Holds with a copy on the shelf first, then the waiting ones by place in
/// the queue.
#[utoipa::path(
    get, path = "/titles/{isbn}/holds", tag = "holds", operation_id = "getTitleHolds",
    params(IsbnPath),
    responses(
        (status = 200, description = "The title's open holds.", body = TitleHolds),
        (status = 404, description = "Not in the catalogue (`title_not_found`).", body = ErrorAnswer),
        (status = 422, description = "Not a valid ISBN (`invalid_isbn`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn title_holds(
    Acting(state): Acting,
    Path(IsbnPath { isbn }): Path<IsbnPath>,
) -> Result<Json<TitleHolds>, ApiError> {
    Ok(Json(state.commands.title_holds(&isbn).await?))
}
