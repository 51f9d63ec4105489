//! Liveness and readiness.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus metrics of this API process.
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            bibliomq_core::metrics::CONTENT_TYPE,
        )],
        state.metrics.encode(),
    )
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when RabbitMQ, PostgreSQL and object storage can all be reached;
/// otherwise 503, saying which cannot.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    const LIMIT: Duration = Duration::from_secs(2);
    let rabbitmq = state.broker.current().is_some();
    let postgres = async {
        let client = state.commands.pool().get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    let s3 = state.commands.store().check();
    let (postgres, s3) = tokio::join!(
        tokio::time::timeout(LIMIT, postgres),
        tokio::time::timeout(LIMIT, s3)
    );
    let postgres = matches!(postgres, Ok(Some(_)));
    let s3 = matches!(s3, Ok(Ok(())));
    let check = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ready = rabbitmq && postgres && s3;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "unready" },
            "checks": {
                "rabbitmq": check(rabbitmq),
                "postgres": check(postgres),
                "s3": check(s3),
            }
        })),
    )
}
