//! The operations endpoints of every long-running process: `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! The API serves them on its own port through its router; the workers (and
//! the edge) have no HTTP surface of their own, so they run an [`OpsServer`]
//! on a small port of their own (`BIBLIOMQ_WORKER_OPS_PORT` for the workers).
//! The readiness check is written once, here, so every process means the
//! same thing by "ready".

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{broker::Broker, metrics::Metrics, storage::ObjectStore};

/// How long one dependency may take to answer a readiness probe. A probe
/// that hangs (a black-holed connection) counts as unavailable rather than
/// holding the orchestrator's request.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// The dependencies a process needs to do its work, probed by `/readyz`.
#[derive(Clone)]
pub struct Probes {
    pub broker: Broker,
    pub pool: Pool,
    pub store: ObjectStore,
}

/// Which dependencies answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub rabbitmq: bool,
    pub postgres: bool,
    pub s3: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.rabbitmq && self.postgres && self.s3
    }

    /// The names of the dependencies that did not answer.
    pub fn unavailable(&self) -> Vec<&'static str> {
        [
            ("rabbitmq", self.rabbitmq),
            ("postgres", self.postgres),
            ("s3", self.s3),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect()
    }

    /// `200 {"status": "ready", ...}` or `503 {"status": "unready", ...}`,
    /// with each check named.
    pub fn into_response(self) -> (StatusCode, Json<Value>) {
        let check = |ok: bool| if ok { "ok" } else { "unavailable" };
        let ready = self.is_ready();
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
                    "rabbitmq": check(self.rabbitmq),
                    "postgres": check(self.postgres),
                    "s3": check(self.s3),
                },
                "unavailable": self.unavailable(),
            })),
        )
    }
}

impl Probes {
    /// Probes RabbitMQ (the supervised connection is up), PostgreSQL (a
    /// `SELECT 1` on a pooled connection) and object storage (the bucket
    /// answers), the last two at once and each within [`PROBE_LIMIT`].
    pub async fn check(&self) -> Readiness {
        let rabbitmq = self.broker.current().is_some();
        let postgres = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        let (postgres, s3) = tokio::join!(
            tokio::time::timeout(PROBE_LIMIT, postgres),
            tokio::time::timeout(PROBE_LIMIT, self.store.check())
        );
        Readiness {
            rabbitmq,
            postgres: matches!(postgres, Ok(Some(_))),
            s3: matches!(s3, Ok(Ok(()))),
        }
    }
}

/// `/metrics` in the Prometheus/OpenMetrics text format.
pub fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

/// `/healthz`: the process is up and answering.
pub fn health_response() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    probes: Probes,
}

/// The three operations routes, ready to serve or to merge into a bigger router.
pub fn router(metrics: Metrics, probes: Probes) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move { metrics_response(&s.metrics) }),
        )
        .route("/healthz", get(|| async { health_response() }))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move { s.probes.check().await.into_response() }),
        )
        .with_state(OpsState { metrics, probes })
}

/// A bound operations server. Binding happens first, so a process finds
/// out at start that its port is taken, and tests can bind port 0 and ask
/// which port they got.
pub struct OpsServer {
    listener: TcpListener,
    router: Router,
}

impl OpsServer {
    pub async fn bind(
        host: &str,
        port: u16,
        metrics: Metrics,
        probes: Probes,
    ) -> anyhow::Result<Self> {
        let addr = format!("{host}:{port}");
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("Failed to bind the operations server to {addr}"))?;
        Ok(Self {
            listener,
            router: router(metrics, probes),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "operations server listening (/metrics, /healthz, /readyz)");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("the operations server failed")
    }
}
