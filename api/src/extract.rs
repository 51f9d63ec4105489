//! Extractors whose rejections use the API's error body.

use axum::{
    extract::{FromRequest, FromRequestParts},
    http::request::Parts,
};
use bibliomq_core::auth::Caller;

use crate::{AppState, error::ApiError};

/// `axum::Json` whose rejections (malformed JSON, wrong content type, body
/// too large, wrong field types) become [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

/// The app's state with its commands acting for the request's caller (put
/// there by [`crate::middleware::authenticate`]). Without one the commands
/// act for nobody when keys are required, and refuse.
pub struct Acting(pub AppState);

impl FromRequestParts<AppState> for Acting {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut acting = state.clone();
        if let Some(caller) = parts.extensions.get::<Caller>() {
            acting.commands = state.commands.acting_as(caller.clone());
        }
        Ok(Self(acting))
    }
}
