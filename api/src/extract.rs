//! Extractors whose rejections use the API's error body.

use axum::extract::{FromRequest, FromRequestParts};

use crate::error::ApiError;

/// `axum::Json` whose rejections (malformed JSON, wrong content type, body
/// too large, wrong field types) become [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);
