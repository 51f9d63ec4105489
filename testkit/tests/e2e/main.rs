//! End-to-end tests against the real RabbitMQ, PostgreSQL and S3 server.
//! Each test has its own vhost, database and bucket prefix (see bibliomq-testkit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod auth;
mod browser;
mod cluster;
mod contract;
mod desk_admin;
mod edge;
mod failover;
mod history_retention;
mod holds;
mod library;
mod openapi;
mod ops;
mod resilience;
mod restarts;
mod scale;
mod task_batch;
mod task_control;
mod tasks;
mod web;
