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

    /// The dependencies that did not answer.
    pub fn unavailable(&self) -> Vec<Dependency> {
        [
            (Dependency::Rabbitmq, self.rabbitmq),
            (Dependency::Postgres, self.postgres),
            (Dependency::S3, self.s3),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(dependency, _)| dependency)
        .collect()
    }

    /// `200 {"status": "ready", ...}` or `503 {"status": "unready", ...}`,
    /// with each check named.
    pub fn into_response(self) -> (StatusCode, Json<Value>) {
        let status = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(json!(ReadinessAnswer::from(self))))
    }
}

crate::words::word_enum!(
    "dependency",
    /// A dependency a process needs.
    pub enum Dependency {
        Rabbitmq = "rabbitmq",
        Postgres = "postgres",
        S3 = "s3",
    }
);

crate::words::word_enum!(
    "readiness",
    pub enum ReadyStatus {
        Ready = "ready",
        Unready = "unready",
    }
);

crate::words::word_enum!(
    "check result",
    pub enum CheckResult {
        Ok = "ok",
        Unavailable = "unavailable",
    }
);

impl CheckResult {
    fn of(ok: bool) -> Self {
        if ok { Self::Ok } else { Self::Unavailable }
    }
}

/// Each dependency's check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub rabbitmq: CheckResult,
    pub postgres: CheckResult,
    pub s3: CheckResult,
}

/// `/readyz`'s body: `ready` or `unready`, each check, and what is not reachable.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Readiness)]
pub struct ReadinessAnswer {
    pub status: ReadyStatus,
    pub checks: Checks,
    pub unavailable: Vec<Dependency>,
}

impl From<Readiness> for ReadinessAnswer {
    fn from(r: Readiness) -> Self {
        Self {
            status: if r.is_ready() {
                ReadyStatus::Ready
            } else {
                ReadyStatus::Unready
            },
            checks: Checks {
                rabbitmq: CheckResult::of(r.rabbitmq),
                postgres: CheckResult::of(r.postgres),
                s3: CheckResult::of(r.s3),
            },
            unavailable: r.unavailable(),
        }
    }
}

crate::words::word_enum!(
    "health",
    pub enum HealthStatus {
        Ok = "ok",
    }
);

/// `/healthz`'s body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Health)]
pub struct HealthAnswer {
    pub status: HealthStatus,
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
    Json(json!(HealthAnswer {
        status: HealthStatus::Ok
    }))
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

/// How long [`healthcheck`] waits for the whole answer: longer than one
/// dependency probe ([`PROBE_LIMIT`]), since `/readyz` answers only once
/// its slowest probe has.
pub const HEALTHCHECK_LIMIT: Duration = Duration::from_secs(5);

/// The `healthcheck` subcommand of the long-running binaries: asks this
/// machine's `/readyz` on `port` and succeeds only on `200`. Container
/// healthchecks run it, so the images need neither curl nor wget.
///
/// `host` is where the process listens; a wildcard (`0.0.0.0`, `::`) is
/// asked on the loopback address. The error names the status and carries
/// the answer's body (which says what is unavailable).
pub async fn healthcheck(host: &str, port: u16) -> anyhow::Result<()> {
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    };
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let (status, body) = tokio::time::timeout(HEALTHCHECK_LIMIT, get_readyz(host, port, &target))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "http://{target}/readyz did not answer within {} s",
                HEALTHCHECK_LIMIT.as_secs()
            )
        })??;
    if status == 200 {
        Ok(())
    } else {
        anyhow::bail!("http://{target}/readyz answered {status}: {}", body.trim())
    }
}

/// One `GET /readyz` over HTTP/1.1 with `Connection: close`: the status
/// code and the body (at most 64 KiB of it).
async fn get_readyz(host: &str, port: u16, target: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("could not connect to {target}"))?;
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {target}\r\nUser-Agent: bibliomq-healthcheck\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("could not send the request to {target}"))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("could not read the answer from {target}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .lines()
        .next()
        .and_then(|line| {
            let mut parts = line.split_whitespace();
            let version = parts.next()?;
            let code = parts.next()?;
            version.starts_with("HTTP/").then_some(())?;
            code.parse::<u16>().ok()
        })
        .with_context(|| format!("{target} did not answer with HTTP"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod healthcheck_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-request server that answers `answer` and records the request.
    async fn answering(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, served)
    }

    #[tokio::test]
    async fn ready_is_success_and_the_wildcard_host_is_asked_on_the_loopback() {
        let (port, served) = answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"status\":\"ready\"}",
        )
        .await;
        healthcheck("0.0.0.0", port).await.unwrap();
        let request = served.await.unwrap();
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn unready_is_a_failure_that_says_what_is_missing() {
        let (port, _served) = answering(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 28\r\n\r\n{\"unavailable\":[\"rabbitmq\"]}",
        )
        .await;
        let err = healthcheck("127.0.0.1", port).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("503"), "{message}");
        assert!(message.contains("rabbitmq"), "{message}");
    }

    #[tokio::test]
    async fn nothing_listening_and_not_http_are_failures() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = healthcheck("127.0.0.1", closed).await.unwrap_err();
        assert!(format!("{err:#}").contains("could not connect"), "{err:#}");

        let (port, _served) = answering("SSH-2.0-OpenSSH\r\n").await;
        let err = healthcheck("127.0.0.1", port).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("did not answer with HTTP"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_failure_within_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        });
        let started = std::time::Instant::now();
        let err = healthcheck("127.0.0.1", port).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("did not answer within"),
            "{err:#}"
        );
        assert!(started.elapsed() < HEALTHCHECK_LIMIT + Duration::from_secs(2));
    }
}
