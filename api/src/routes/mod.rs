//! Routes, one module per resource, and the whole router: these, the
//! OpenAPI document's route ([`crate::openapi`]) and the web pages and their
//! JSON routes ([`crate::ui`]). Those two modules only build [`Routes`];
//! neither looks back at this one.

mod health;
mod library;
mod tasks;

use axum::{Router, http::StatusCode, response::IntoResponse};

use crate::{AppState, error::ApiError, middleware, routing::Routes};

/// Open to anyone: health, readiness, metrics, the API description.
fn open_routes() -> Routes {
    health::routes().merge(crate::openapi::routes())
}

/// Under `/v1`, behind the bearer token when one is configured: the API
/// and the JSON routes of the web pages alike.
fn v1_routes() -> Routes {
    tasks::routes()
        .merge(library::routes())
        .merge(crate::ui::api_routes())
}

/// Every path of the HTTP API (`/v1` ones with their prefix), written as the
/// OpenAPI document writes them. The pages themselves (`crate::ui::pages`)
/// are HTML for people, not part of the described API.
pub fn paths() -> Vec<String> {
    let mut paths = open_routes().paths;
    paths.extend(v1_routes().paths.into_iter().map(|p| format!("/v1{p}")));
    paths.iter().map(|p| openapi_template(p)).collect()
}

/// OpenAPI has no catch-all parameter: axum's `{*key}` (a value that may
/// hold `/`s) is a plain `{key}` there.
fn openapi_template(path: &str) -> String {
    path.replace("{*", "{")
}

pub fn router(state: AppState) -> Router {
    let v1 = v1_routes()
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_token,
        ));
    open_routes()
        .router
        .merge(crate::ui::pages())
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The header a client sends to make a request safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header on an answer given again for a retried request.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The `Idempotency-Key` header, when sent (the command layer checks its form).
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "the Idempotency-Key header must be visible ASCII",
                )
            })
        })
        .transpose()
}

/// The `limit` query parameter, when given: a whole number (the command
/// layer checks its range).
fn parse_limit(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|l| {
        l.parse::<i64>().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_limit",
                format!("limit must be a whole number, got `{l}`"),
            )
            .with_field("limit")
        })
    })
    .transpose()
}

/// An id from the path: `400` with `code` when it is not a UUID.
fn parse_uuid(raw: &str, what: &str, code: &'static str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("`{raw}` is not {what} (a UUID)"),
        )
        .with_field("id")
    })
}
