//! Liveness, readiness and metrics, answered by the same code as the
//! workers' operations server ([`bibliomq_core::ops`]), and this API's
//! description.

use axum::{Extension, Json, extract::State, http::StatusCode, response::Response};
use bibliomq_core::ops::{self, HealthAnswer, Probes, ReadinessAnswer};
use serde_json::Value;
use utoipa_axum::routes;

use super::{Document, Routes};
use crate::AppState;

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// Prometheus metrics of this process (OpenMetrics text)
#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((
        status = 200,
        description = "Counters and histograms: HTTP requests, published and consumed messages, task durations, loan outcomes.",
        content_type = "application/openmetrics-text", body = String
    ))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    ops::metrics_response(&state.metrics)
}

/// The process is up
#[utoipa::path(
    get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "Alive.", body = HealthAnswer))
)]
async fn healthz() -> Json<Value> {
    ops::health_response()
}

/// RabbitMQ, PostgreSQL and object storage are reachable
///
/// Otherwise 503, saying which cannot be reached.
#[utoipa::path(
    get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: every dependency answered.", body = ReadinessAnswer),
        (status = 503, description = "Not ready; `checks` and `unavailable` name what is not reachable.", body = ReadinessAnswer),
    )
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let probes = Probes {
        broker: state.broker.clone(),
        pool: state.commands.pool().clone(),
        store: state.commands.store().clone(),
    };
    probes.check().await.into_response()
}

/// What `/openapi.json` answers: an OpenAPI document, whose own schema is
/// the OpenAPI specification's.
struct OpenApiDocument;

impl utoipa::PartialSchema for OpenApiDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Object)
            .required("openapi")
            .required("paths")
            .into()
    }
}

impl utoipa::ToSchema for OpenApiDocument {}

/// This document
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", body = inline(OpenApiDocument)))
)]
async fn openapi(Extension(Document(document)): Extension<Document>) -> Json<Value> {
    Json(Value::clone(&document))
}
