//! `bibliomq-bench reads`: the read routes one after another, each at a
//! fixed rate, open loop, with p50 and p99 per route — to show whether they
//! stay flat as the database grows (`scripts/bench-scale`).
//!
//! Latency counts from when a request was due, not from when it was sent:
//! a slow answer that holds the next request back is counted against it too.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::stats::{ms, percentile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Requests measured per route.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests per second to each route, on schedule whether or not earlier ones answered.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests per route sent first and left out of the numbers.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The `--json` output of an earlier run, shown beside this one.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// This run's name in the table.
    #[arg(long, default_value = "this run")]
    label: String,
    /// A word few titles hold (the loaded catalogue's invented names).
    #[arg(long, default_value = "Surabe")]
    rare_word: String,
}

/// One route measured: its name and the paths it cycles through.
struct Route {
    name: &'static str,
    paths: Vec<String>,
}

/// Paths for every read route, with ids sampled from the database so that
/// look-ups hit real rows spread over the table.
async fn routes(db: &tokio_postgres::Client, rare: &str) -> anyhow::Result<Vec<Route>> {
    let sample = |sql: &'static str| async move {
        let rows = db.query(sql, &[]).await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        )
    };
    // TABLESAMPLE reads a few pages, not the table; small tables fall back
    // to every row.
    let tasks = sample(
        "(SELECT id::text FROM tasks TABLESAMPLE SYSTEM (0.1) LIMIT 500)
         UNION ALL (SELECT id::text FROM tasks ORDER BY random() LIMIT 500)
         LIMIT 500",
    );
    let tasks = tasks.await?;
    let isbns = sample(
        "(SELECT isbn FROM titles TABLESAMPLE SYSTEM (0.5) LIMIT 500)
         UNION ALL (SELECT isbn FROM titles LIMIT 500) LIMIT 500",
    )
    .await?;
    let loans = sample("SELECT id::text FROM loans ORDER BY random() LIMIT 500").await?;
    let patrons = sample("SELECT id FROM patrons ORDER BY random() LIMIT 500").await?;
    if tasks.is_empty() || isbns.is_empty() || patrons.is_empty() {
        bail!("no tasks, titles or patrons to read: run the task and library benchmarks first");
    }
    let each = |prefix: &str, ids: &[String], suffix: &str| -> Vec<String> {
        ids.iter()
            .map(|id| format!("{prefix}{id}{suffix}"))
            .collect()
    };
    let mut list = vec![
        Route {
            name: "search: most common word (de)",
            paths: vec!["/v1/books?title=de".into()],
        },
        Route {
            name: "search: common word (noche)",
            paths: vec!["/v1/books?title=noche".into()],
        },
        Route {
            name: "search: rare word",
            paths: vec![format!("/v1/books?title={rare}")],
        },
        Route {
            name: "search: part of a word (bibli)",
            paths: vec!["/v1/books?title=bibli".into()],
        },
        Route {
            name: "search: two words (sombra viento)",
            paths: vec!["/v1/books?title=sombra%20viento".into()],
        },
        Route {
            name: "search: no match (zzqx)",
            paths: vec!["/v1/books?title=zzqx".into()],
        },
        Route {
            name: "search: common words, limit 100",
            paths: vec!["/v1/books?title=la%20de&limit=100".into()],
        },
        Route {
            name: "book by ISBN",
            paths: each("/v1/books/", &isbns, ""),
        },
        Route {
            name: "dashboard: task counts",
            paths: vec!["/v1/dashboard/tasks".into()],
        },
        Route {
            name: "dashboard: circulation, 30 min",
            paths: vec!["/v1/dashboard/circulation".into()],
        },
        Route {
            name: "dashboard: circulation, 1 day",
            paths: vec!["/v1/dashboard/circulation?minutes=1440".into()],
        },
        Route {
            name: "tasks: newest 50",
            paths: vec!["/v1/tasks?limit=50".into()],
        },
        Route {
            name: "tasks: succeeded, page after a cursor",
            paths: each("/v1/tasks?state=succeeded&limit=50&before=", &tasks, ""),
        },
        Route {
            name: "tasks: failed, page after a cursor",
            paths: each("/v1/tasks?state=failed&limit=50&before=", &tasks, ""),
        },
        Route {
            name: "tasks: queued (few or none)",
            paths: vec!["/v1/tasks?state=queued&limit=50".into()],
        },
        Route {
            name: "tasks: action sum, cancelled",
            paths: vec!["/v1/tasks?action=sum&state=cancelled&limit=50".into()],
        },
        Route {
            name: "tasks: action sum, page after a cursor",
            paths: each("/v1/tasks?action=sum&limit=50&before=", &tasks, ""),
        },
        Route {
            name: "task by id",
            paths: each("/v1/tasks/", &tasks, ""),
        },
        Route {
            name: "patron search (name)",
            paths: vec!["/v1/patrons?q=medina".into()],
        },
        Route {
            name: "patron by id",
            paths: each("/v1/patrons/", &patrons, ""),
        },
    ];
    if !loans.is_empty() {
        list.push(Route {
            name: "loan by id",
            paths: each("/v1/loans/", &loans, ""),
        });
    }
    Ok(list)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let (db, conn) = tokio_postgres::connect(&args.target.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot reach the database")?;
    tokio::spawn(conn);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = args.target.url.trim_end_matches('/').to_owned();
    let mut results = Vec::new();
    for route in routes(&db, &args.rare_word).await? {
        eprintln!(
            "{}: {} requests at {}/s",
            route.name, args.requests, args.rate
        );
        measure(
            &http,
            &base,
            &route,
            args.warmup,
            1.0_f64.max(args.rate),
            &args,
        )
        .await?;
        let (mut latencies, errors) =
            measure(&http, &base, &route, args.requests, args.rate, &args).await?;
        latencies.sort();
        results.push(json!({
            "route": route.name,
            "example": route.paths.first(),
            "requests": latencies.len(),
            "errors": errors,
            "p50_ms": ms(percentile(&latencies, 50.0)),
            "p99_ms": ms(percentile(&latencies, 99.0)),
            "max_ms": ms(percentile(&latencies, 100.0)),
        }));
    }
    let report = json!({"label": args.label, "rate": args.rate, "routes": results});
    if args.target.json {
        println!("{report:#}");
        return Ok(());
    }
    let baseline: Option<Value> = match &args.baseline {
        Some(path) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a reads report", path.display()))?,
        ),
        None => None,
    };
    print_table(&report, baseline.as_ref());
    Ok(())
}

/// Sends `count` requests, cycling through the route's paths, the i-th due
/// at `i / rate` seconds; returns each latency from its due time, and how
/// many answers were not 2xx.
async fn measure(
    http: &reqwest::Client,
    base: &str,
    route: &Route,
    count: usize,
    rate: f64,
    args: &Args,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let tally: Arc<Mutex<(Vec<Duration>, usize)>> = Arc::new(Mutex::new((Vec::new(), 0)));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        #[allow(clippy::cast_precision_loss)]
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let url = format!("{base}{}", route.paths[i % route.paths.len()]);
        let (http, tally) = (http.clone(), tally.clone());
        handles.push(tokio::spawn(async move {
            let ok = match http.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let took = due.elapsed();
            drop(permit);
            if let Ok(mut t) = tally.lock() {
                t.0.push(took);
                if !ok {
                    t.1 += 1;
                }
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let t = tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((t.0.clone(), t.1))
}

fn print_table(report: &Value, baseline: Option<&Value>) {
    let empty = Vec::new();
    let rows = report["routes"].as_array().unwrap_or(&empty);
    let label = report["label"].as_str().unwrap_or("this run");
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    match baseline {
        Some(b) => {
            let base_label = b["label"].as_str().unwrap_or("baseline");
            println!(
                "{:<40} {:>22} {:>22}  errors",
                "route (ms)",
                format!("{base_label} p50/p99"),
                format!("{label} p50/p99")
            );
            for r in rows {
                let before = b["routes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["route"] == r["route"]));
                let (bp50, bp99) = before.map_or(("-".into(), "-".into()), |x| {
                    (f(&x["p50_ms"]), f(&x["p99_ms"]))
                });
                println!(
                    "{:<40} {:>22} {:>22}  {}",
                    r["route"].as_str().unwrap_or(""),
                    format!("{bp50} / {bp99}"),
                    format!("{} / {}", f(&r["p50_ms"]), f(&r["p99_ms"])),
                    r["errors"]
                );
            }
        }
        None => {
            println!(
                "{:<40} {:>10} {:>10} {:>10}  errors",
                "route (ms)", "p50", "p99", "max"
            );
            for r in rows {
                println!(
                    "{:<40} {:>10} {:>10} {:>10}  {}",
                    r["route"].as_str().unwrap_or(""),
                    f(&r["p50_ms"]),
                    f(&r["p99_ms"]),
                    f(&r["max_ms"]),
                    r["errors"]
                );
            }
        }
    }
}
