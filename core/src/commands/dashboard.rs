//! What the dashboard shows besides the live feed and the queues: tasks by
//! state, and circulation per minute and branch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Commands;
use crate::{
    error::{CommandError, Invalid},
    library::{
        message::{OperationKind, OperationState},
        store::{self as library_store, CirculationCount},
    },
    tasks::{TaskState, store as task_store},
};

/// The longest circulation window shown, in minutes (one day).
pub const CIRCULATION_MAX_MINUTES: u32 = 1_440;

/// The window shown when none is asked for, in minutes.
pub const CIRCULATION_DEFAULT_MINUTES: u32 = 30;

/// How many tasks are in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = DashboardTasks)]
pub struct TaskCounts {
    /// Every state, zeros included.
    #[schema(schema_with = crate::schema::count_by_task_state)]
    pub by_state: BTreeMap<TaskState, i64>,
    #[schema(minimum = 0)]
    pub total: i64,
}

/// One branch's settled operations, minute by minute, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BranchSeries {
    pub branch: String,
    pub name: String,
    /// Settled operations per minute, oldest first: `minutes` of them.
    #[schema(schema_with = crate::schema::counts)]
    pub per_minute: Vec<i64>,
    #[schema(minimum = 0)]
    pub applied: i64,
    #[schema(minimum = 0)]
    pub rejected: i64,
}

/// Settled operations of one kind and outcome over the whole window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KindCount {
    pub kind: OperationKind,
    /// `applied` or `rejected`.
    #[schema(schema_with = crate::library::message::settled)]
    pub outcome: OperationState,
    #[schema(minimum = 0)]
    pub count: i64,
}

/// Circulation over the last `minutes` minutes up to `until`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DashboardCirculation)]
pub struct Circulation {
    pub minutes: u32,
    /// The end of the window: now.
    pub until: DateTime<Utc>,
    pub branches: Vec<BranchSeries>,
    pub by_kind: Vec<KindCount>,
}

impl Commands {
    /// How many tasks are in each state (every state listed).
    pub async fn task_counts(&self) -> Result<TaskCounts, CommandError> {
        self.authorize(crate::auth::Permission::WatchTasks)?;
        let client = self.pool().get().await?;
        let counts = task_store::count_by_state(&**client).await?;
        let mut by_state: BTreeMap<TaskState, i64> =
            TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        for (state, n) in &counts {
            by_state.insert(*state, *n);
        }
        let total = counts.iter().map(|(_, n)| n).sum();
        Ok(TaskCounts { by_state, total })
    }

    /// Loans, renewals and returns settled per minute and branch over the
    /// last `minutes` minutes (30 by default, at most a day), from the
    /// circulation history.
    pub async fn circulation(&self, minutes: Option<u32>) -> Result<Circulation, CommandError> {
        self.authorize(crate::auth::Permission::WatchCirculation)?;
        let minutes = minutes.unwrap_or(CIRCULATION_DEFAULT_MINUTES);
        if !(1..=CIRCULATION_MAX_MINUTES).contains(&minutes) {
            return Err(Invalid::field(
                "invalid_minutes",
                "minutes",
                format!("minutes must be from 1 to {CIRCULATION_MAX_MINUTES}"),
            )
            .into());
        }
        let until = self.clock().now();
        let client = self.pool().get().await?;
        let rows = library_store::circulation_counts(&**client, until, minutes).await?;
        let names: Vec<(String, String)> = self
            .branches()
            .iter()
            .map(|b| (b.code.clone(), b.name.clone()))
            .collect();
        let (branches, by_kind) = summarise(&rows, &names, minutes);
        Ok(Circulation {
            minutes,
            until,
            branches,
            by_kind,
        })
    }
}

/// Per-branch series (configured branches first, in their order, then any
/// other branch found in the history) and totals per kind and outcome.
fn summarise(
    rows: &[CirculationCount],
    branches: &[(String, String)],
    minutes: u32,
) -> (Vec<BranchSeries>, Vec<KindCount>) {
    let width = usize::try_from(minutes).unwrap_or(0);
    let series_of = |code: &str, name: &str| BranchSeries {
        branch: code.to_owned(),
        name: name.to_owned(),
        per_minute: vec![0; width],
        applied: 0,
        rejected: 0,
    };
    let mut series: Vec<BranchSeries> = branches
        .iter()
        .map(|(code, name)| series_of(code, name))
        .collect();
    let mut by_kind: BTreeMap<(OperationKind, OperationState), i64> = BTreeMap::new();
    for row in rows {
        let index = match series.iter().position(|s| s.branch == row.branch) {
            Some(i) => i,
            None => {
                series.push(series_of(&row.branch, &row.branch));
                series.len() - 1
            }
        };
        let s = &mut series[index];
        if let Ok(ago) = usize::try_from(row.minutes_ago)
            && ago < width
        {
            s.per_minute[width - 1 - ago] += row.count;
        }
        if row.outcome == OperationState::Applied {
            s.applied += row.count;
        } else {
            s.rejected += row.count;
        }
        *by_kind.entry((row.kind, row.outcome)).or_default() += row.count;
    }
    let by_kind = by_kind
        .into_iter()
        .map(|((kind, outcome), count)| KindCount {
            kind,
            outcome,
            count,
        })
        .collect();
    (series, by_kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(branch: &str, ago: i32, outcome: OperationState, n: i64) -> CirculationCount {
        CirculationCount {
            branch: branch.to_owned(),
            minutes_ago: ago,
            kind: OperationKind::Loan,
            outcome,
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
            count("central", 0, OperationState::Applied, 2),
            count("central", 4, OperationState::Rejected, 1),
            count("sur", 1, OperationState::Applied, 5),
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
            serde_json::to_value(&by_kind).unwrap(),
            serde_json::json!([
                {"kind": "loan", "outcome": "applied", "count": 7},
                {"kind": "loan", "outcome": "rejected", "count": 1},
            ])
        );
    }

    #[test]
    fn task_counts_are_keyed_by_the_state_words() {
        let counts = TaskCounts {
            by_state: TaskState::ALL.iter().map(|s| (*s, 1)).collect(),
            total: 5,
        };
        let json = serde_json::to_value(&counts).unwrap();
        assert_eq!(json["by_state"]["succeeded"], 1);
        assert_eq!(json["total"], 5);
    }
}
