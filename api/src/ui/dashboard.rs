//! `/v1/dashboard/...`: what the dashboard shows besides the live feed.
//! Queue figures come from the RabbitMQ management API; tasks by state and
//! circulation per minute from the command layer. Each is its own route so that one
//! source being down leaves the others on screen.

use axum::{Json, http::StatusCode};
use bibliomq_core::commands::{Circulation, TaskCounts};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::management::{Management, ManagementError, VhostFigures};
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, QueryParams},
    routing::Routes,
};
use bibliomq_core::auth::Permission;

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(queues))
        .routes(routes!(tasks))
        .routes(routes!(circulation))
}

/// Depth, rates and consumers of every queue of our RabbitMQ vhost
///
/// Read from the RabbitMQ management API (BIBLIOMQ_RABBITMQ_MGMT_URL) with
/// the server's credentials, so a client needs none. Server-named queues
/// (live feeds, reply queues) are counted, not listed.
#[utoipa::path(
    get, path = "/dashboard/queues", tag = "web", operation_id = "dashboardQueues",
    responses(
        (status = 200, description = "The vhost's queues, by name, and its overall rates.", body = VhostFigures),
        (status = 502, description = "The management API refused the server's credentials or failed (`management_unavailable`).", body = ErrorAnswer),
        (status = 503, description = "The management API does not answer (`management_unavailable`).", body = ErrorAnswer),
    )
)]
async fn queues(Acting(state): Acting) -> Result<Json<VhostFigures>, ApiError> {
    state.commands.authorize(Permission::WatchTasks)?;
    let management = Management::new(&state.settings);
    let figures = management.figures().await.map_err(|e| {
        let status = match e {
            ManagementError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ManagementError::Refused | ManagementError::Failed(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, "management_unavailable", e.to_string())
    })?;
    Ok(Json(figures))
}

/// How many tasks are in each state
#[utoipa::path(
    get, path = "/dashboard/tasks", tag = "web", operation_id = "dashboardTasks",
    responses(
        (status = 200, description = "Every state, zeros included, and the total.", body = TaskCounts),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn tasks(Acting(state): Acting) -> Result<Json<TaskCounts>, ApiError> {
    Ok(Json(state.commands.task_counts().await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CirculationQuery {
    /// The window, ending now (1 to 1440, default 30).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
}

/// Loans, renewals and returns settled per minute and branch
///
/// From the circulation history: the configured branches in their order
/// (quiet ones too), then any other branch found there.
#[utoipa::path(
    get, path = "/dashboard/circulation", tag = "web", operation_id = "dashboardCirculation",
    params(CirculationQuery),
    responses(
        (status = 200, description = "One series per branch, oldest minute first, and totals per kind and outcome.", body = Circulation),
        (status = 400, description = "An unknown parameter or `minutes` not a whole number (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "`minutes` out of range (`invalid_minutes`).", body = ErrorAnswer),
        (status = 503, description = "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn circulation(
    Acting(state): Acting,
    QueryParams(q): QueryParams<CirculationQuery>,
) -> Result<Json<Circulation>, ApiError> {
    Ok(Json(state.commands.circulation(q.minutes).await?))
}
