//! bibliomq-testkit: what the end-to-end tests stand on.
//!
//! Every test gets its own RabbitMQ vhost, its own PostgreSQL database and its
//! own key prefix in the test bucket, so tests run in parallel against the
//! real services and leave nothing behind (the [`TestEnv`] drop removes all
//! three, even when the test panicked).
//!
//! # Layout
//! - [`env`]: the per-test vhost, database and bucket prefix.
//! - [`app`]: the API and workers spawned in-process on port 0.
//! - [`edge`]: the ZeroMQ edge and TCP gateways spawned in-process, and a
//!   line client for the gateways.
//! - [`process`]: the `bibliomq-workers` binary as a child process, for
//!   races and restarts across real processes.
//! - [`proxy`]: a TCP proxy whose connections a test can cut, to play a
//!   broker or database going away without disturbing other tests.
//! - [`rabbit`]: looking into queues (message counts, dead letters).
//! - [`browser`]: a headless Chromium over WebDriver, for the web pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod browser;
pub mod edge;
pub mod env;
pub mod process;
pub mod proxy;
pub mod rabbit;

pub use app::{TestApp, spawn_app, status_and_json};
pub use edge::{LineClient, TestEdge};
pub use env::TestEnv;
pub use process::WorkerProcess;
pub use proxy::TcpProxy;
