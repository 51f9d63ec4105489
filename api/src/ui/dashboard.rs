//! `/v1/dashboard/...`: what the dashboard shows besides the live feed.
//! Queue figures come from the RabbitMQ management API; tasks by state and
//! circulation per minute from PostgreSQL. Each is its own route so that one
//! source being down leaves the others on screen.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode, routing::get};
use bibliomq_core::{error::CommandError, tasks::store as task_store};
use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::{self, GenericClient};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::management::{Management, ManagementError};
use crate::{AppState, error::ApiError, extract::QueryParams, routes::Routes};

/// The longest circulation window shown, in minutes (one day).
pub const MAX_MINUTES: u32 = 1_440;

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
async fn tasks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let client = state
        .commands
        .pool()
        .get()
        .await
        .map_err(CommandError::from)?;
    let counts = task_store::count_by_state(&**client)
        .await
        .map_err(CommandError::from)?;
    let mut by_state: BTreeMap<&str, i64> = task_store::STATES.iter().map(|s| (*s, 0)).collect();
    for (state, n) in &counts {
        if let Some(slot) = by_state.get_mut(state.as_str()) {
            *slot = *n;
        }
    }
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    Ok(Json(json!({ "by_state": by_state, "total": total })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CirculationQuery {
    minutes: Option<u32>,
}

/// One branch's operations, minute by minute, oldest first.
#[derive(Debug, Serialize)]
pub struct BranchSeries {
    pub branch: String,
    pub name: String,
    pub per_minute: Vec<i64>,
    pub applied: i64,
    pub rejected: i64,
}

/// Loans, renewals and returns settled per minute and branch over the last
/// `minutes` minutes (30 by default), from the circulation history.
async fn circulation(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<CirculationQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = q.minutes.unwrap_or(30);
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_minutes",
            format!("minutes must be from 1 to {MAX_MINUTES}"),
        )
        .with_field("minutes"));
    }
    let until = state.commands.clock().now();
    let client = state
        .commands
        .pool()
        .get()
        .await
        .map_err(CommandError::from)?;
    let rows = circulation_counts(&**client, until, minutes)
        .await
        .map_err(CommandError::from)?;

    let names: Vec<(String, String)> = state
        .commands
        .branches()
        .iter()
        .map(|b| (b.code.clone(), b.name.clone()))
        .collect();
    let (series, by_kind) = summarise(&rows, &names, minutes);
    Ok(Json(json!({
        "minutes": minutes,
        "until": until,
        "branches": series,
        "by_kind": by_kind,
    })))
}

/// A count of settled operations of one kind, outcome and branch, in the
/// minute `minutes_ago` minutes before the end of the window (0: the last).
#[derive(Debug, Clone)]
pub struct CirculationCount {
    pub branch: String,
    pub minutes_ago: i32,
    pub kind: String,
    pub outcome: String,
    pub count: i64,
}

async fn circulation_counts(
    db: &impl GenericClient,
    until: DateTime<Utc>,
    minutes: u32,
) -> Result<Vec<CirculationCount>, tokio_postgres::Error> {
    let minutes = i32::try_from(minutes).unwrap_or(i32::MAX);
    let rows = db
        .query(
            "SELECT branch,
                    floor(extract(epoch FROM ($1::timestamptz - at)) / 60)::int AS ago,
                    kind, outcome, count(*)
               FROM circulation_history
              WHERE at > $1::timestamptz - make_interval(mins => $2) AND at <= $1::timestamptz
              GROUP BY 1, 2, 3, 4",
            &[&until, &minutes],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CirculationCount {
            branch: r.get(0),
            minutes_ago: r.get(1),
            kind: r.get(2),
            outcome: r.get(3),
            count: r.get(4),
        })
        .collect())
}

/// Per-branch series (configured branches first, in their order, then any
/// other branch found in the history) and totals per kind and outcome.
fn summarise(
    rows: &[CirculationCount],
    branches: &[(String, String)],
    minutes: u32,
) -> (Vec<BranchSeries>, Vec<Value>) {
    let width = usize::try_from(minutes).unwrap_or(0);
    let mut series: Vec<BranchSeries> = branches
        .iter()
        .map(|(code, name)| BranchSeries {
            branch: code.clone(),
            name: name.clone(),
            per_minute: vec![0; width],
            applied: 0,
            rejected: 0,
        })
        .collect();
    let mut by_kind: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in rows {
        let index = match series.iter().position(|s| s.branch == row.branch) {
            Some(i) => i,
            None => {
                series.push(BranchSeries {
                    branch: row.branch.clone(),
                    name: row.branch.clone(),
                    per_minute: vec![0; width],
                    applied: 0,
                    rejected: 0,
                });
                series.len() - 1
            }
        };
        let s = &mut series[index];
        if let Ok(ago) = usize::try_from(row.minutes_ago)
            && ago < width
        {
            s.per_minute[width - 1 - ago] += row.count;
        }
        if row.outcome == "applied" {
            s.applied += row.count;
        } else {
            s.rejected += row.count;
        }
        *by_kind
            .entry((row.kind.clone(), row.outcome.clone()))
            .or_default() += row.count;
    }
    let by_kind = by_kind
        .into_iter()
        .map(|((kind, outcome), count)| json!({"kind": kind, "outcome": outcome, "count": count}))
        .collect();
    (series, by_kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(branch: &str, ago: i32, outcome: &str, n: i64) -> CirculationCount {
        CirculationCount {
            branch: branch.to_owned(),
            minutes_ago: ago,
            kind: "loan".to_owned(),
            outcome: outcome.to_owned(),
            count: n,
        }
    }

    #[test]
    fn counts_land_in_their_minute_with_the_newest_last() {
        let branches = vec![
            ("central".to_owned(), "Central".to_owned()),
            ("norte".to_owned(), "Norte".to_owned()),
        ];
        let rows = [
            count("central", 0, "applied", 2),
            count("central", 4, "rejected", 1),
            count("sur", 1, "applied", 5),
        ];
        let (series, by_kind) = summarise(&rows, &branches, 5);
        assert_eq!(series[0].per_minute, vec![1, 0, 0, 0, 2]);
        assert_eq!((series[0].applied, series[0].rejected), (2, 1));
        assert_eq!(series[1].per_minute, vec![0; 5], "a quiet branch is listed");
        assert_eq!(
            series[2].branch, "sur",
            "a branch no longer configured still shows"
        );
        assert_eq!(series[2].per_minute, vec![0, 0, 0, 5, 0]);
        assert_eq!(
            by_kind,
            vec![
                json!({"kind": "loan", "outcome": "applied", "count": 7}),
                json!({"kind": "loan", "outcome": "rejected", "count": 1}),
            ]
        );
    }
}
