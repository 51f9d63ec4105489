//! bibliomq-core: what every bibliomq process shares.
//!
//! The HTTP API, the workers, the ZeroMQ edge and the client are thin shells
//! around this crate: it owns the message contracts, the RabbitMQ topology,
//! the connections to RabbitMQ, PostgreSQL and object storage, and the command
//! layer where every validation and rule lives once.
//!
//! # Layout
//! - [`config`]: typed settings from `BIBLIOMQ_*` environment variables.
//! - [`telemetry`]: tracing setup and correlation ids.
//! - [`shutdown`]: the process-wide cancellation token (ctrl-c, SIGTERM).
//! - [`db`]: the PostgreSQL pool and the migration runner.
//! - [`batch`]: group commit, so many small writes share one statement.
//! - [`broker`]: the supervised RabbitMQ connection, topology, confirmed publishing.
//! - [`storage`]: S3-compatible object storage for large results.
//! - [`tasks`]: task actions, their payload rules, how they run, their rows.
//! - [`library`]: circulation domain types (ISBN, patron, branch), rules, rows, seed data.
//! - [`clock`]: the time the rules see (a manual clock in tests).
//! - [`commands`]: the command layer called by every transport.
//! - [`infra`]: opening the connections every process needs, the same way in each.
//! - [`metrics`]: Prometheus counters and histograms, one set per process.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`, and the small server that
//!   serves them for processes without an HTTP API of their own.
//! - [`answers`]: the HTTP API's answers, one struct each.
//! - [`auth`]: API keys, roles, the caller of a command and what it may do.
//! - [`error`]: the command layer's errors (caller's mistake vs our failure).
//! - [`words`]: enums that travel as fixed words (states, outcomes).
//! - [`schema`]: JSON Schemas of request fields, for the OpenAPI document.

pub mod answers;
pub mod auth;
pub mod batch;
pub mod broker;
pub mod clock;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod infra;
pub mod library;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod schema;
pub mod shutdown;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod words;
