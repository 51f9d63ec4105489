//! Middleware: a correlation id on every request and response, a request
//! span that carries it, a body size limit and a request timeout that answer
//! with the API's JSON error body.

use std::time::Duration;

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bibliomq_core::telemetry::{self, CORRELATION_HEADER};
use tracing::Instrument;

use crate::error::ApiError;

/// The correlation id of the current request, as a request extension.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// Takes the caller's `X-Correlation-Id` (or `X-Request-Id`) when it is
/// sensible, or makes one; logs the request inside a span that carries it.
pub async fn correlate(mut req: Request, next: Next) -> Response {
    let incoming = [CORRELATION_HEADER, "x-request-id"]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .and_then(telemetry::sanitize_correlation_id);
    let id = incoming.unwrap_or_else(telemetry::new_correlation_id);
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        correlation_id = %id,
        status = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    async move {
        let mut response = next.run(req).await;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::warn!(elapsed_ms, "request failed");
        } else {
            tracing::debug!(elapsed_ms, "request done");
        }
        if let Ok(v) = HeaderValue::from_str(&id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(CORRELATION_HEADER), v);
        }
        response
    }
    .instrument(span)
    .await
}

pub async fn with_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}
