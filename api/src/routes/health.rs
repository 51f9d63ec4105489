//! Liveness, readiness and metrics, answered by the same code as the
//! workers' operations server ([`bibliomq_core::ops`]).

use axum::{Json, extract::State, http::StatusCode, response::Response, routing::get};
use bibliomq_core::ops::{self, Probes};
use serde_json::Value;

use super::Routes;
use crate::AppState;

pub fn routes() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus metrics of this API process.
async fn metrics(State(state): State<AppState>) -> Response {
    ops::metrics_response(&state.metrics)
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<Value> {
    ops::health_response()
}

/// Ready when RabbitMQ, PostgreSQL and object storage can all be reached;
/// otherwise 503, saying which cannot.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let probes = Probes {
        broker: state.broker.clone(),
        pool: state.commands.pool().clone(),
        store: state.commands.store().clone(),
    };
    probes.check().await.into_response()
}
