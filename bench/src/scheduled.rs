//! `bibliomq-bench scheduled`: how close to its time each delayed task
//! starts. Submits `--count` tasks with a `run_at`, in two rounds: due times
//! spread evenly over `--spread-secs`, then a burst all due at one instant.
//! Waits for them all, then reads from PostgreSQL, per task, `started_at −
//! run_at` (the worker's claim minus the time asked for) and reports its
//! distribution. The scheduler's own view (`run_at` → published) is the
//! workers' `bibliomq_scheduler_lag_seconds` histogram.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{ms, percentile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Delayed tasks per round.
    #[arg(long, default_value_t = 1_000)]
    count: usize,
    /// The first round's due times are spread evenly over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    spread_secs: f64,
    /// From the first submission to the first due time: enough to submit
    /// every task of a round before any is due.
    #[arg(long, default_value_t = 10.0)]
    lead_secs: f64,
    /// Concurrent HTTP clients submitting.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Task action.
    #[arg(long, default_value = "sum")]
    action: String,
    /// Task payload, as JSON.
    #[arg(long, default_value = "\"1,2,3,4,5\"")]
    payload: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (db, conn) = tokio_postgres::connect(&args.target.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot reach the database")?;
    tokio::spawn(conn);

    let mut rounds = Vec::new();
    let mut over = 0usize;
    for (name, spread) in [("spread", args.spread_secs), ("burst", 0.0)] {
        eprintln!(
            "{name}: submitting {} `{}` tasks due from {}s to {}s from now",
            args.count,
            args.action,
            args.lead_secs,
            args.lead_secs + spread
        );
        let base = Utc::now()
            + chrono::Duration::milliseconds(
                #[allow(clippy::cast_possible_truncation)]
                {
                    (args.lead_secs * 1000.0) as i64
                },
            );
        let ids = submit_all(&http, &args, &payload, base, spread).await?;
        let late = Utc::now() > base;
        if late {
            eprintln!("warning: submitting took longer than --lead-secs; raise it");
        }
        wait_done(&db, &ids).await?;
        let rows = db
            .query(
                "SELECT state, extract(epoch FROM started_at - run_at)::float8
                   FROM tasks WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut lags: Vec<Duration> = Vec::with_capacity(rows.len());
        let (mut early, mut not_succeeded, mut slow) = (0usize, 0usize, 0usize);
        let mut earliest = f64::MAX;
        for r in &rows {
            let state: String = r.get(0);
            if state != "succeeded" {
                not_succeeded += 1;
            }
            if let Some(lag) = r.get::<_, Option<f64>>(1) {
                earliest = earliest.min(lag);
                if lag < 0.0 {
                    early += 1;
                }
                if lag > 1.0 {
                    slow += 1;
                }
                lags.push(Duration::from_secs_f64(lag.max(0.0)));
            }
        }
        lags.sort();
        over += slow + early + not_succeeded;
        rounds.push(json!({
            "round": name,
            "tasks": ids.len(),
            "spread_seconds": spread,
            "submitted_before_due": !late,
            "not_succeeded": not_succeeded,
            "started_early": early,
            "started_over_1s_late": slow,
            "start_lag_ms": {
                "min": earliest * 1000.0,
                "p50": ms(percentile(&lags, 50.0)),
                "p99": ms(percentile(&lags, 99.0)),
                "max": ms(percentile(&lags, 100.0)),
            },
        }));
    }
    if args.target.json {
        println!("{:#}", json!({ "action": args.action, "rounds": rounds }));
    } else {
        for r in &rounds {
            let lag = &r["start_lag_ms"];
            println!(
                "{:<7} {} tasks over {}s: started − run_at  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms); {} over 1 s late, {} early, {} not succeeded",
                r["round"].as_str().unwrap_or_default(),
                r["tasks"],
                r["spread_seconds"],
                lag["p50"].as_f64().unwrap_or_default(),
                lag["p99"].as_f64().unwrap_or_default(),
                lag["max"].as_f64().unwrap_or_default(),
                lag["min"].as_f64().unwrap_or_default(),
                r["started_over_1s_late"],
                r["started_early"],
                r["not_succeeded"],
            );
        }
    }
    if over > 0 {
        bail!("{over} tasks started more than 1 s late, early, or did not succeed");
    }
    Ok(())
}

/// Submits `args.count` tasks, the i-th due at `base + spread · i / count`.
async fn submit_all(
    http: &reqwest::Client,
    args: &Args,
    payload: &Value,
    base: DateTime<Utc>,
    spread: f64,
) -> anyhow::Result<Vec<Uuid>> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = Arc::new(format!(
        "{}/v1/tasks",
        args.target.url.trim_end_matches('/')
    ));
    let count = args.count;
    let mut clients = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, next, url) = (http.clone(), next.clone(), url.clone());
        let (action, payload) = (args.action.clone(), payload.clone());
        clients.push(tokio::spawn(async move {
            let mut ids: Vec<Uuid> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let offset = (spread * 1000.0 * i as f64 / count as f64) as i64;
                let run_at = (base + chrono::Duration::milliseconds(offset))
                    .to_rfc3339_opts(SecondsFormat::Millis, true);
                let body = json!({"action": action, "payload": payload, "run_at": run_at});
                let resp = http.post(url.as_str()).json(&body).send().await?;
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or_default();
                if status != 202 {
                    bail!("a submission was refused ({status}): {v}");
                }
                ids.push(
                    v["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .context("no task id in the answer")?,
                );
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for c in clients {
        ids.extend(c.await??);
    }
    Ok(ids)
}

/// Waits until every task is final, reading PostgreSQL.
async fn wait_done(db: &tokio_postgres::Client, ids: &[Uuid]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending: i64 = db
            .query_one(
                "SELECT count(*) FROM tasks WHERE id = ANY($1)
                    AND state NOT IN ('succeeded', 'failed', 'dead', 'cancelled')",
                &[&ids],
            )
            .await?
            .get(0);
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{pending} tasks still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
