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
use bibliomq_core::{
    auth::{Caller, same_secret},
    telemetry::{self, CORRELATION_HEADER},
};
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
        key = tracing::field::Empty,
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

/// Who is calling, for every `/v1` route: with BIBLIOMQ_AUTH=on, the
/// `Authorization: Bearer <key>` checked by the command layer
/// ([`bibliomq_core::commands::Commands::authenticate`]: 401 without a valid
/// key, 429 past the key's budget); the [`Caller`] goes into the request's
/// extensions for [`crate::extract::Acting`]. With it off, everyone is the
/// open caller, and `BIBLIOMQ_API_TOKEN`, when set, still guards `/v1` as a
/// shared token (401 without it), as before keys existed.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = bearer(&req);
    if !state.settings.auth.enabled {
        if let Some(expected) = state.settings.api.token.as_ref() {
            match given {
                Some(token) if same_secret(token.as_bytes(), expected.0.as_bytes()) => {}
                Some(_) => return unauthorized("the bearer token is not the one this API expects"),
                None => {
                    return unauthorized(
                        "this API requires a token: send `Authorization: Bearer <token>` \
                         (the bibliomq client reads BIBLIOMQ_API_TOKEN or --token)",
                    );
                }
            }
        }
        req.extensions_mut().insert(Caller::open());
        return next.run(req).await;
    }
    match state.commands.authenticate(given.as_deref()).await {
        Ok(caller) => {
            tracing::Span::current().record("key", caller.key.as_str());
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The bearer credential, when one is sent.
fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
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
