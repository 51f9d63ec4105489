//! Routes, one module per resource.

mod health;
mod library;
mod tasks;

use axum::{Router, http::StatusCode, response::IntoResponse};

use crate::{AppState, error::ApiError};

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(crate::ui::pages())
        .nest(
            "/v1",
            tasks::routes()
                .merge(library::routes())
                .merge(crate::ui::api_routes()),
        )
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
