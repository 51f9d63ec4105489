//! Middleware: a correlation id on every request and response, a request
//! span that carries it, a body size limit and a request timeout that answer
//! with the API's JSON error body.

use std::time::Duration;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bibliomq_core::telemetry::{self, CORRELATION_HEADER};
use tracing::Instrument;

use crate::{AppState, error::ApiError};

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

/// Counts requests by route template (not raw path, to keep label sets
/// small) and method and status, and times them.
pub async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let labels = bibliomq_core::metrics::RouteLabels {
        method: method.clone(),
        route: route.clone(),
    };
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .get_or_create(&bibliomq_core::metrics::HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// With `BIBLIOMQ_API_TOKEN` set, lets through only requests that carry
/// `Authorization: Bearer <that token>`; otherwise `401` with the JSON error
/// body. Without a token configured it does nothing.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.settings.api.token.as_ref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        Some(token) if same_secret(token.as_bytes(), expected.0.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized("the bearer token is not the one this API expects"),
        None => unauthorized(
            "this API requires a token: send `Authorization: Bearer <token>` \
             (the bibliomq client reads BIBLIOMQ_API_TOKEN or --token)",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell a guesser how much of the token they got right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).unwrap_or(&0) ^ e;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
