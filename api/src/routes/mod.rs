//! Routes, one module per resource, and the whole router: these and the
//! JSON routes of the web pages ([`crate::ui`]), each described by its own
//! `#[utoipa::path]`, split here into the axum router and the OpenAPI
//! document ([`crate::openapi`] finishes it), plus the web pages themselves.
//! Neither of those two modules looks back at this one.

mod admin;
mod dead_letters;
mod health;
mod holds;
mod keys;
mod library;
mod tasks;

use std::sync::Arc;

use axum::{Extension, Router, http::StatusCode, response::IntoResponse};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;

use crate::{AppState, error::ApiError, middleware, routing::Routes};

/// Open to anyone: health, readiness, metrics, the API description.
fn open_routes() -> Routes {
    health::routes()
}

/// Under `/v1`, behind the key check (or the shared token with
/// BIBLIOMQ_AUTH=off, when one is configured): the API
/// and the JSON routes of the web pages alike.
fn v1_routes() -> Routes {
    tasks::routes()
        .merge(dead_letters::routes())
        .merge(library::routes())
        .merge(admin::routes())
        .merge(holds::routes())
        .merge(keys::routes())
        .merge(crate::ui::api_routes())
}

fn described(v1: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    open_routes().into_inner().nest("/v1", v1)
}

/// The OpenAPI document as served, before the configured branches go in.
pub fn document() -> Value {
    crate::openapi::finish(described(v1_routes().into_inner()).into_openapi())
}

/// Every path of the HTTP API (`/v1` ones with their prefix), as the
/// OpenAPI document writes them. The pages themselves (`crate::ui::pages`)
/// are HTML for people, not part of the described API.
pub fn paths() -> Vec<String> {
    document()["paths"]
        .as_object()
        .map(|paths| paths.keys().cloned().collect())
        .unwrap_or_default()
}

/// The document served at `/openapi.json`.
#[derive(Clone)]
pub struct Document(pub Arc<Value>);

pub fn router(state: AppState) -> Router {
    let v1 = v1_routes()
        .into_inner()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));
    let (router, openapi) = described(v1).split_for_parts();
    let branches: Vec<&str> = state
        .settings
        .library
        .branches
        .iter()
        .map(|b| b.code.as_str())
        .collect();
    let document = crate::openapi::with_branches(crate::openapi::finish(openapi), &branches);
    let document = crate::openapi::with_timeout_max(document, state.settings.tasks.timeout_max);
    let document = crate::openapi::with_delay_max(document, state.settings.tasks.delay_max);
    router
        .merge(crate::ui::pages())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Document(Arc::new(document))))
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

#[cfg(test)]
mod tests;
