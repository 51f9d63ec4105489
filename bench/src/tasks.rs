//! `bibliomq-bench tasks`: N tasks from C concurrent HTTP clients, one task a
//! request or `--batch` tasks a request (`POST /v1/tasks/batch`); or, with
//! `--one-at-a-time`, one task at a time on a quiet system, measuring
//! submit → done as the client sees it over HTTP or the ZeroMQ `task`
//! request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{CpuSnapshot, cpu_json, memory_json, ms, percentile, print_resources};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) target: crate::Target,
    /// Tasks to submit.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) count: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Task action.
    #[arg(long, default_value = "sum")]
    pub(crate) action: String,
    /// Task payload, as JSON.
    #[arg(long, default_value = "\"1,2,3,4,5\"")]
    pub(crate) payload: String,
    /// Tasks run first and left out of the numbers.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) warmup: usize,
    /// Send this many tasks a request to `POST /v1/tasks/batch` (1 to 1000)
    /// instead of one a request to `POST /v1/tasks`.
    #[arg(long, value_name = "N", conflicts_with = "one_at_a_time")]
    pub(crate) batch: Option<usize>,
    /// One task at a time, each submitted when the one before is done:
    /// submit → done latency as the client sees it, p50 and p99.
    #[arg(long)]
    pub(crate) one_at_a_time: bool,
    /// With `--one-at-a-time`: over HTTP (`POST /v1/tasks?wait_ms=`, which
    /// answers with the task once it is done) or over the ZeroMQ edge's
    /// `task` request (which answers when the task is done).
    #[arg(long, value_enum, default_value = "http")]
    pub(crate) via: Via,
    /// The ZeroMQ edge's request socket (for `--via zmq`).
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    pub(crate) zmq_url: String,
    /// With `--one-at-a-time --via http`: submit (the 202), then one
    /// `GET /v1/tasks/{id}?wait_ms=` that answers once the task is done.
    /// Reports the 202 alone too.
    #[arg(long, conflicts_with = "poll_us")]
    pub(crate) two_requests: bool,
    /// With `--one-at-a-time --via http`: submit, then plain GETs this many
    /// microseconds apart until the task is done. Reports the 202 alone too.
    #[arg(long, value_name = "MICROSECONDS")]
    pub(crate) poll_us: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Http,
    Zmq,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.batch
        && !(1..=1000).contains(&n)
    {
        bail!("--batch must be from 1 to 1000");
    }
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (db, conn) = tokio_postgres::connect(&args.target.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot reach the database")?;
    tokio::spawn(conn);

    if args.warmup > 0 {
        eprintln!("warming up with {} tasks", args.warmup);
        let before = finished_count(&db).await?;
        let (ids, _, _) = submit_all(&http, &args, &payload, args.warmup).await?;
        wait_done(&db, &ids, before).await?;
    }

    eprintln!(
        "submitting {} `{}` tasks from {} concurrent clients, {} a request",
        args.count,
        args.action,
        args.concurrency,
        args.batch.unwrap_or(1)
    );
    let finished_before = finished_count(&db).await?;
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let (ids, mut submit_latencies, failures) =
        submit_all(&http, &args, &payload, args.count).await?;
    let submit_elapsed = started.elapsed();
    wait_done(&db, &ids, finished_before).await?;
    let done_elapsed = started.elapsed();
    let cpu = CpuSnapshot::take().per_op_ms(&cpu_before, ids.len());

    let rows = db
        .query(
            "SELECT state, extract(epoch FROM created_at)::float8, extract(epoch FROM finished_at)::float8
               FROM tasks WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut e2e: Vec<Duration> = Vec::with_capacity(rows.len());
    let (mut first_created, mut last_finished) = (f64::MAX, f64::MIN);
    let mut not_succeeded = 0;
    for r in &rows {
        let state: String = r.get(0);
        let created: f64 = r.get(1);
        let finished: Option<f64> = r.get(2);
        if state != "succeeded" {
            not_succeeded += 1;
        }
        if let Some(f) = finished {
            first_created = first_created.min(created);
            last_finished = last_finished.max(f);
            e2e.push(Duration::from_secs_f64((f - created).max(0.0)));
        }
    }
    e2e.sort();
    submit_latencies.sort();
    let window = (last_finished - first_created).max(f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let throughput = e2e.len() as f64 / window;
    #[allow(clippy::cast_precision_loss)]
    let submit_rate = ids.len() as f64 / submit_elapsed.as_secs_f64();

    let memory = memory_json(&args.target.processes);
    let report = json!({
        "action": args.action,
        "tasks": ids.len(),
        "tasks_per_request": args.batch.unwrap_or(1),
        "concurrency": args.concurrency,
        "submit_failures": failures,
        "not_succeeded": not_succeeded,
        "submit_per_sec": submit_rate,
        "end_to_end_tasks_per_sec": throughput,
        "wall_seconds": done_elapsed.as_secs_f64(),
        "submit_ms": {"p50": ms(percentile(&submit_latencies, 50.0)), "p99": ms(percentile(&submit_latencies, 99.0))},
        "submit_to_done_ms": {"p50": ms(percentile(&e2e, 50.0)), "p99": ms(percentile(&e2e, 99.0)), "max": ms(percentile(&e2e, 100.0))},
        "memory": memory,
        "cpu_ms_per_task": cpu_json(&cpu),
    });
    if args.target.json {
        println!("{report:#}");
    } else {
        println!(
            "tasks                 {} `{}` ({} clients, {} a request)",
            ids.len(),
            args.action,
            args.concurrency,
            args.batch.unwrap_or(1)
        );
        println!(
            "end to end            {throughput:.0} tasks/s (first submit → last result committed)"
        );
        println!(
            "submissions           {submit_rate:.0} /s, 202 latency p50 {:.1} ms, p99 {:.1} ms",
            ms(percentile(&submit_latencies, 50.0)),
            ms(percentile(&submit_latencies, 99.0))
        );
        println!(
            "submit → done         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(&e2e, 50.0)),
            ms(percentile(&e2e, 99.0)),
            ms(percentile(&e2e, 100.0))
        );
        println!(
            "failures              {failures} submissions refused, {not_succeeded} tasks not succeeded"
        );
        print_resources(&memory, &cpu, "task");
    }
    if failures > 0 || not_succeeded > 0 {
        bail!("{failures} submissions failed and {not_succeeded} tasks did not succeed");
    }
    Ok(())
}

async fn submit_all(
    http: &reqwest::Client,
    args: &Args,
    payload: &Value,
    count: usize,
) -> anyhow::Result<(Vec<Uuid>, Vec<Duration>, usize)> {
    let per_request = args.batch.unwrap_or(1);
    let one = json!({"action": args.action, "payload": payload});
    let (path, body) = match args.batch {
        None => ("tasks", one.to_string()),
        Some(n) => ("tasks/batch", Value::Array(vec![one; n]).to_string()),
    };
    let requests = count.div_ceil(per_request);
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let url = Arc::new(format!(
        "{}/v1/{path}",
        args.target.url.trim_end_matches('/')
    ));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, next, body, url) = (http.clone(), next.clone(), body.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut ids: Vec<Uuid> = Vec::new();
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                let resp = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await;
                latencies.push(t.elapsed());
                match resp {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap_or_default();
                        let answered: Vec<&Value> = match v["tasks"].as_array() {
                            Some(tasks) => tasks.iter().collect(),
                            None => vec![&v],
                        };
                        for t in answered {
                            match t["id"].as_str().and_then(|s| s.parse().ok()) {
                                Some(id) => ids.push(id),
                                None => failures += 1,
                            }
                        }
                    }
                    _ => failures += per_request,
                }
            }
            (ids, latencies, failures)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = 0;
    for c in clients {
        let (i, l, f) = c.await?;
        ids.extend(i);
        latencies.extend(l);
        failures += f;
    }
    Ok((ids, latencies, failures))
}

/// Waits until every task is final, reading PostgreSQL (not the API, so the
/// measurement does not load the API).
///
/// While tasks drain it reads only the per-state counters the triggers keep
/// (migration 0013): a few small rows, whatever the table holds. Polling
/// the tasks by id instead made PostgreSQL scan the whole table ten times a
/// second (a hashed `id = ANY(...)` filter over every row), which took
/// about a sixth of PostgreSQL's time during a batch run's drain, and was
/// counted as the system's. Once the counters have seen as many tasks
/// finish as were submitted (`finished_before` were final already), the
/// ids are checked once; the rare task still unfinished then (counters are
/// the whole database's) is polled by id until it is final.
async fn wait_done(
    db: &tokio_postgres::Client,
    ids: &[Uuid],
    finished_before: i64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let target = finished_before + i64::try_from(ids.len())?;
    while finished_count(db).await? < target {
        if Instant::now() > deadline {
            bail!("tasks still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pending: Vec<Uuid> = ids.to_vec();
    loop {
        pending = db
            .query(
                "SELECT id FROM tasks WHERE id = ANY($1)
                    AND state NOT IN ('succeeded', 'failed', 'dead', 'cancelled')",
                &[&pending],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} tasks still unfinished after 10 minutes", pending.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tasks in a final state in the whole database, from the counters.
async fn finished_count(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let row = db
        .query_one(
            "SELECT coalesce(sum(n), 0)::bigint FROM (
                    SELECT state, n FROM task_state_counts
                    UNION ALL
                    SELECT state, n FROM task_state_deltas
                ) c
              WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
