//! `/v1/dashboard/...`: what the dashboard shows besides the live feed.
//! Queue figures come from the RabbitMQ management API; tasks by state and
//! circulation per minute from the command layer. Each is its own route so that one
//! source being down leaves the others on screen.

use axum::{Json, extract::State, http::StatusCode, routing::get};
use bibliomq_core::commands::{Circulation, TaskCounts};
use serde::Deserialize;
use serde_json::{Value, json};

use super::management::{Management, ManagementError};
use crate::{AppState, error::ApiError, extract::QueryParams, routing::Routes};

pub fn routes() -> Routes {
    Routes::new()
        .route("/dashboard/queues", get(queues))
        .route("/dashboard/tasks", get(tasks))
        .route("/dashboard/circulation", get(circulation))
}

/// Depth, rates and consumers of every queue of our vhost.
async fn queues(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let management = Management::new(&state.settings);
    let figures = management.figures().await.map_err(|e| {
        let status = match e {
            ManagementError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ManagementError::Refused | ManagementError::Failed(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, "management_unavailable", e.to_string())
    })?;
    Ok(Json(json!(figures)))
}

/// How many tasks are in each state (every state listed, zeros included).
async fn tasks(State(state): State<AppState>) -> Result<Json<TaskCounts>, ApiError> {
    Ok(Json(state.commands.task_counts().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CirculationQuery {
    minutes: Option<u32>,
}

/// Loans, renewals and returns settled per minute and branch.
async fn circulation(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<CirculationQuery>,
) -> Result<Json<Circulation>, ApiError> {
    Ok(Json(state.commands.circulation(q.minutes).await?))
}
