//! bibliomq-edge: lets ZeroMQ and plain-TCP clients in.
//!
//! A thin transport over the command layer ([`bibliomq_core::commands`]),
//! like the HTTP API: requests are turned into command calls and their
//! answers (or [`bibliomq_core::error::CommandError`]s, by `code()` and
//! `public_message()`) into each protocol's replies. No rule or validation
//! lives here. Four sockets:
//!
//! - ZeroMQ requests (ROUTER; REQ clients): JSON requests, one reply each.
//! - ZeroMQ event feed (PUB): the `bibliomq.events` exchange, topic = routing
//!   key. It cannot check keys, so with auth on it is off unless
//!   `BIBLIOMQ_EDGE_OPEN_FEED=on`; keyed clients send `follow` on the
//!   request socket instead (see [`follow`]).
//! - Newline-delimited JSON task gateway (TCP).
//! - Pipe text task gateway (TCP): `TASK|<id>|1,2,3` → `RESULT|<id>|6`.
//!
//! # Layout
//! - [`requests`]: the ROUTER socket: envelopes, one task per request, timeouts.
//! - [`follow`]: the keyed event feed, pushed to a DEALER after `follow`.
//! - [`request`]: one request read and checked, and what a handler returns.
//! - [`dispatch`]: the table from action name to handler, and the task actions.
//! - [`library`]: the library actions (look-ups, loans, renewals, returns).
//! - [`admin`]: catalogue and patron administration (titles, copies, patrons).
//! - [`holds`]: placing, cancelling and listing holds.
//! - [`events`]: the PUB socket fed from RabbitMQ.
//! - [`lines`]: the line-oriented TCP server both gateways share.
//! - [`ndjson`], [`pipe`]: the two gateway protocols.
//! - [`outcome`]: submitting a task and waiting for its outcome, and a
//!   finished task's result for the line gateways.
//! - [`reply`]: the ZeroMQ replies, one type each.
//! - [`wire`]: the one error type of every protocol.

pub mod admin;
pub mod dispatch;
pub mod events;
pub mod follow;
pub mod holds;
pub mod library;
pub mod lines;
pub mod ndjson;
pub mod outcome;
pub mod pipe;
pub mod reply;
pub mod request;
pub mod requests;
pub mod wire;

use std::time::Duration;

use anyhow::Context;
use bibliomq_core::{
    broker::Broker, clock::Clock, commands::Commands, config::Settings, infra::Infra,
    ops::OpsServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeromq::{Endpoint, PubSocket, RouterSocket, Socket};

/// The ports the edge listens on (useful when they were configured as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgePorts {
    pub zmq_request: u16,
    /// `None` when the keyless PUB feed is not served (auth on, and
    /// `BIBLIOMQ_EDGE_OPEN_FEED` not `on`).
    pub zmq_pub: Option<u16>,
    pub ndjson: u16,
    pub pipe: u16,
}

/// The edge, bound and ready to run.
pub struct EdgeApp {
    commands: Commands,
    broker: Broker,
    ops: OpsServer,
    router: RouterSocket,
    publisher: Option<PubSocket>,
    ndjson: TcpListener,
    pipe: TcpListener,
    ports: EdgePorts,
}

impl EdgeApp {
    /// Connects (lazily: starting while RabbitMQ or PostgreSQL is down is
    /// fine, requests answer `unavailable` until they are back) and binds all
    /// four sockets; port 0 picks a free port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.auth.check_bind(&settings.edge.host, "edge")?;
        let infra = Infra::connect(settings, "bibliomq-edge", Duration::from_secs(5)).await?;
        let settings = &infra.settings;
        let ops = OpsServer::bind(
            &settings.edge.host,
            settings.edge.ops_port,
            infra.metrics.clone(),
            infra.probes(),
        )
        .await?;
        let edge = &settings.edge;
        let mut router = RouterSocket::new();
        let zmq_request =
            bind_zmq(&mut router, &edge.host, edge.zmq_request_port, "requests").await?;
        let (pub_socket, zmq_pub) = if settings.serves_open_feed() {
            let mut socket = PubSocket::new();
            let port = bind_zmq(&mut socket, &edge.host, edge.zmq_pub_port, "events").await?;
            (Some(socket), Some(port))
        } else {
            (None, None)
        };
        let ndjson = bind_tcp(&edge.host, edge.ndjson_port, "NDJSON gateway").await?;
        let pipe = bind_tcp(&edge.host, edge.pipe_port, "pipe gateway").await?;
        let ports = EdgePorts {
            zmq_request,
            zmq_pub,
            ndjson: ndjson.local_addr()?.port(),
            pipe: pipe.local_addr()?.port(),
        };
        let commands = infra.commands(Clock::system()).for_transport();
        Ok(Self {
            commands,
            broker: infra.broker,
            ops,
            router,
            publisher: pub_socket,
            ndjson,
            pipe,
            ports,
        })
    }

    pub fn ports(&self) -> EdgePorts {
        self.ports
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.ops.local_addr()
    }

    /// Serves until `shutdown` is cancelled: then every socket stops taking
    /// requests, the requests in progress are answered (within the request
    /// timeout), the sockets close and the broker connection last.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let edge = self.commands.settings().edge.clone();
        tracing::info!(
            host = %edge.host,
            zmq_request = self.ports.zmq_request,
            zmq_pub = ?self.ports.zmq_pub,
            ndjson = self.ports.ndjson,
            pipe = self.ports.pipe,
            "edge listening"
        );
        if self.publisher.is_none() {
            tracing::info!(
                "the keyless ZeroMQ event feed (PUB) is off: with auth on, clients follow events \
                 with a key by the `follow` request (BIBLIOMQ_EDGE_OPEN_FEED=on serves it anyway)"
            );
        }
        // Each gateway line may take up to the request timeout, and a few
        // more moments to be written.
        let drain = edge.request_timeout + Duration::from_secs(2);
        // The operations server outlives the drain, so /metrics and /readyz
        // answer while requests finish; it stops after.
        let ops_stop = CancellationToken::new();
        let ops = tokio::spawn(self.ops.run_until_stopped(ops_stop.clone()));
        let (publisher, broker) = (self.publisher, self.broker.clone());
        let feed_stop = shutdown.clone();
        tokio::join!(
            requests::serve(
                self.router,
                self.commands.clone(),
                edge.request_timeout,
                shutdown.clone(),
            ),
            async move {
                if let Some(publisher) = publisher {
                    events::serve(publisher, broker, feed_stop).await;
                }
            },
            lines::serve(
                self.ndjson,
                ndjson::Ndjson::new(self.commands.clone()),
                shutdown.clone(),
                drain,
            ),
            lines::serve(
                self.pipe,
                pipe::Pipe::new(self.commands.clone()),
                shutdown.clone(),
                drain,
            ),
        );
        ops_stop.cancel();
        if let Ok(Err(e)) = ops.await {
            tracing::warn!(error = %e, "the operations server failed");
        }
        self.broker.close().await;
        tracing::info!("edge stopped");
        Ok(())
    }
}

async fn bind_zmq(
    socket: &mut impl Socket,
    host: &str,
    port: u16,
    what: &str,
) -> anyhow::Result<u16> {
    let endpoint = format!("tcp://{host}:{port}");
    match socket
        .bind(&endpoint)
        .await
        .with_context(|| format!("Failed to bind the ZeroMQ {what} socket to {endpoint}"))?
    {
        Endpoint::Tcp(_, port) => Ok(port),
        other => anyhow::bail!("the ZeroMQ {what} socket bound to {other}, not a TCP port"),
    }
}

async fn bind_tcp(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("Failed to bind the {what} to {host}:{port}"))
}
