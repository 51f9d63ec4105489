//! `bibliomq-bench library`: a circulation mix like the request files older
//! systems replayed — about half loans, a quarter renewals, a quarter
//! returns, over both branches and many patrons — sent over HTTP.
//!
//! With `--rate` the load is open-loop: each operation is due at its place
//! in the schedule and its latency is counted from then, also when every
//! `--concurrency` slot was busy and it had to wait for one, so latency
//! percentiles are not flattered by a slow server holding the clients back
//! (coordinated omission).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::stats::{CpuSnapshot, cpu_json, memory_json, ms, percentile, print_resources};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Operations to send (about half of them loans).
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Operations per second, open loop; without it, as fast as `--concurrency` allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Most operations in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Writes every operation to FILE as CSV (when it was due, in ms from
    /// the start; its kind; its latency in ms; its HTTP status), to find
    /// when in a run the slow ones were due.
    #[arg(long, value_name = "FILE")]
    timeline: Option<std::path::PathBuf>,
}

/// Loans due this long after the start are counted again on their own, as
/// the steady state. In the first second of a run on a fresh stack the
/// slowest loans are 2 to 3 times slower than later, for a cause not found
/// yet (not the first call of each circulation function on a connection:
/// calling them all at start did not change it, README item 26); the whole
/// run is reported too.
const WARM_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Op {
    Loan,
    Renew,
    Return,
}

impl Op {
    /// The operation's name in the report and the timeline.
    fn name(self) -> &'static str {
        match self {
            Op::Loan => "loan",
            Op::Renew => "renewal",
            Op::Return => "return",
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies: HashMap<Op, Vec<Duration>>,
    /// Loans due after the run's first second: the steady state, beside
    /// the whole run.
    warm_loan_latencies: Vec<Duration>,
    statuses: HashMap<(Op, u16), usize>,
    operations: Vec<Uuid>,
    /// With `--timeline`: each operation's due time from the start, kind,
    /// latency and status.
    timeline: Option<Vec<(Duration, Op, Duration, u16)>>,
}

/// Small, fast, deterministic: the mix is the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n.max(1) as u64).unwrap_or(0)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (db, conn) = tokio_postgres::connect(&args.target.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot reach the database")?;
    tokio::spawn(conn);
    let isbns: Vec<String> = db
        .query("SELECT isbn FROM titles ORDER BY isbn", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let patrons: Vec<String> = db
        .query("SELECT id FROM patrons ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let branches: Vec<String> = db
        .query("SELECT code FROM branches ORDER BY code", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if isbns.is_empty() || patrons.is_empty() || branches.is_empty() {
        bail!("the catalogue is empty; load one with `bibliomq-api seed`");
    }

    let http = reqwest::Client::builder()
        .default_headers(args.target.headers()?)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = args.target.url.trim_end_matches('/').to_owned();
    let open_loans: Arc<Mutex<Vec<Uuid>>> = Arc::new(Mutex::new(Vec::new()));
    let tally = Arc::new(Mutex::new(Tally {
        timeline: args.timeline.as_ref().map(|_| Vec::with_capacity(args.ops)),
        ..Tally::default()
    }));
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut rng = Rng(0x005e_edb1_b110);
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let mut handles = Vec::with_capacity(args.ops);
    eprintln!(
        "sending {} operations ({}), at most {} in flight",
        args.ops,
        args.rate
            .map_or("as fast as possible".to_owned(), |r| format!(
                "{r} per second"
            )),
        args.concurrency
    );
    for i in 0..args.ops {
        // With `--rate`, an operation's clock starts when it was due, not
        // when a slot frees: time spent waiting behind a slow server is
        // latency too (no coordinated omission).
        let due = match args.rate {
            Some(rate) => {
                #[allow(clippy::cast_precision_loss)]
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        let permit = permits.clone().acquire_owned().await?;
        let roll = rng.below(4);
        let loan_id = {
            let mut pool = open_loans.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            match roll {
                2 if !pool.is_empty() => Some((Op::Renew, pool[rng.below(pool.len())])),
                3 if !pool.is_empty() => {
                    let at = rng.below(pool.len());
                    Some((Op::Return, pool.swap_remove(at)))
                }
                _ => None,
            }
        };
        let branch = branches[rng.below(branches.len())].clone();
        let (op, url, body) = match loan_id {
            Some((op, id)) => (
                op,
                format!(
                    "{base}/v1/{}",
                    if op == Op::Renew {
                        "renewals"
                    } else {
                        "returns"
                    }
                ),
                json!({"loan_id": id, "branch": branch}),
            ),
            None => (
                Op::Loan,
                format!("{base}/v1/loans"),
                json!({
                    "isbn": isbns[rng.below(isbns.len())],
                    "patron": patrons[rng.below(patrons.len())],
                    "branch": branch,
                }),
            ),
        };
        let (http, tally, open_loans) = (http.clone(), tally.clone(), open_loans.clone());
        handles.push(tokio::spawn(async move {
            let resp = http.post(&url).json(&body).send().await;
            let elapsed = due.elapsed();
            let (status, answer) = match resp {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.json::<Value>().await.unwrap_or_default())
                }
                Err(_) => (0, Value::Null),
            };
            if op == Op::Loan
                && status == 201
                && let Some(id) = answer["loan"]["id"].as_str().and_then(|s| s.parse().ok())
                && let Ok(mut pool) = open_loans.lock()
            {
                pool.push(id);
            }
            if let Ok(mut t) = tally.lock() {
                if op == Op::Loan && due - started >= WARM_AFTER {
                    t.warm_loan_latencies.push(elapsed);
                }
                t.latencies.entry(op).or_default().push(elapsed);
                if let Some(timeline) = &mut t.timeline {
                    timeline.push((due - started, op, elapsed, status));
                }
                *t.statuses.entry((op, status)).or_default() += 1;
                if let Some(id) = answer["operation_id"].as_str().and_then(|s| s.parse().ok()) {
                    t.operations.push(id);
                }
            }
            drop(permit);
        }));
    }
    for h in handles {
        h.await?;
    }
    let sent_elapsed = started.elapsed();
    let mut tally = std::mem::take(&mut *tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    if let (Some(path), Some(timeline)) = (&args.timeline, tally.timeline.take()) {
        write_timeline(path, started_wall, timeline)?;
    }

    // Renewals and returns are applied by workers after the 202: wait for
    // them, then read when they were settled.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending: i64 = db
            .query_one(
                "SELECT count(*) FROM operations WHERE id = ANY($1) AND state = 'pending'",
                &[&tally.operations],
            )
            .await?
            .get(0);
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{pending} renewals or returns still pending after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = CpuSnapshot::take().per_op_ms(&cpu_before, args.ops);
    let settled = db
        .query(
            "SELECT kind, state, count(*),
                    extract(epoch FROM max(settled_at) - min(requested_at))::float8,
                    1000 * extract(epoch FROM percentile_cont(0.5)
                        WITHIN GROUP (ORDER BY settled_at - requested_at))::float8,
                    1000 * extract(epoch FROM percentile_cont(0.99)
                        WITHIN GROUP (ORDER BY settled_at - requested_at))::float8
               FROM operations WHERE id = ANY($1) GROUP BY kind, state",
            &[&tally.operations],
        )
        .await?;

    let count = |op: Op, status: u16| tally.statuses.get(&(op, status)).copied().unwrap_or(0);
    let loans_ok = count(Op::Loan, 201);
    let loans_refused = count(Op::Loan, 409);
    let loan_total: usize = tally
        .statuses
        .iter()
        .filter(|((o, _), _)| *o == Op::Loan)
        .map(|(_, n)| n)
        .sum();
    let failures: usize = tally
        .statuses
        .iter()
        .filter(|((_, s), _)| *s == 0 || *s >= 500)
        .map(|(_, n)| n)
        .sum();
    let secs = sent_elapsed.as_secs_f64();
    let mut loan_lat = tally.latencies.remove(&Op::Loan).unwrap_or_default();
    loan_lat.sort();
    let mut warm_lat = std::mem::take(&mut tally.warm_loan_latencies);
    warm_lat.sort();
    let mut settled_json = Vec::new();
    for r in &settled {
        let (kind, state, n, window): (String, String, i64, Option<f64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (p50, p99): (Option<f64>, Option<f64>) = (r.get(4), r.get(5));
        #[allow(clippy::cast_precision_loss)]
        let per_sec = window.filter(|w| *w > 0.0).map_or(0.0, |w| n as f64 / w);
        settled_json.push(json!({
            "kind": kind, "state": state, "count": n, "per_sec": per_sec,
            "requested_to_settled_ms": {"p50": p50, "p99": p99},
        }));
    }
    // Renewals and returns are answered 202 once recorded and published;
    // their latency is that answer's, from when each was due.
    let mut accepted_json = serde_json::Map::new();
    for op in [Op::Renew, Op::Return] {
        let mut lat = tally.latencies.remove(&op).unwrap_or_default();
        lat.sort();
        accepted_json.insert(op.name().to_owned(), summary(&lat));
    }
    let mut warm_json = summary(&warm_lat);
    warm_json["loans"] = json!(warm_lat.len());
    let memory = memory_json(&args.target.processes);
    #[allow(clippy::cast_precision_loss)]
    let report = json!({
        "operations": args.ops,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "seconds": secs,
        "loan_requests_per_sec": loan_total as f64 / secs,
        "loans_per_sec": loans_ok as f64 / secs,
        "loans": {"made": loans_ok, "refused_409": loans_refused, "requests": loan_total},
        "loan_latency_ms": summary(&loan_lat),
        "warm_loan_latency_ms": warm_json,
        "renewals_and_returns": settled_json,
        "accepted_latency_ms": accepted_json,
        "failures": failures,
        "memory": memory,
        "cpu_ms_per_operation": cpu_json(&cpu),
    });
    if args.target.json {
        println!("{report:#}");
    } else {
        println!(
            "operations            {} in {secs:.1} s ({})",
            args.ops,
            args.rate
                .map_or(format!("{} in flight", args.concurrency), |r| format!(
                    "{r}/s offered"
                ))
        );
        #[allow(clippy::cast_precision_loss)]
        {
            println!(
                "loans                 {:.0} loans/s made ({loans_ok} made, {loans_refused} refused by a rule, {loan_total} asked)",
                loans_ok as f64 / secs
            );
        }
        println!(
            "loan latency          {}",
            summary_line(&report["loan_latency_ms"])
        );
        println!(
            "  after the 1st s     {} ({} loans due after the first second)",
            summary_line(&warm_json),
            warm_lat.len()
        );
        for (name, l) in &accepted_json {
            println!(
                "{:<21} {} (the 202)",
                format!("{name} latency"),
                summary_line(l)
            );
        }
        for s in &settled_json {
            let after = &s["requested_to_settled_ms"];
            println!(
                "{:<8} {:<9}      {} ({:.0}/s from first request to last settled; settled p50 {:.1} ms, p99 {:.1} ms after the request)",
                s["kind"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["count"],
                s["per_sec"].as_f64().unwrap_or(0.0),
                after["p50"].as_f64().unwrap_or(0.0),
                after["p99"].as_f64().unwrap_or(0.0)
            );
        }
        println!("failures              {failures} (transport errors and 5xx)");
        print_resources(&memory, &cpu, "operation");
    }
    if failures > 0 {
        bail!("{failures} operations failed");
    }
    Ok(())
}

/// Writes `timeline` to `path` as CSV, in the order the operations were due.
fn write_timeline(
    path: &std::path::Path,
    started: std::time::SystemTime,
    mut timeline: Vec<(Duration, Op, Duration, u16)>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    timeline.sort_by_key(|(due, ..)| *due);
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot write the timeline to {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let since_epoch = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    writeln!(
        out,
        "# started at {:.3} s since the Unix epoch",
        since_epoch.as_secs_f64()
    )?;
    writeln!(out, "due_ms,operation,latency_ms,status")?;
    for (due, op, latency, status) in timeline {
        let op = op.name();
        writeln!(out, "{:.3},{op},{:.3},{status}", ms(due), ms(latency))?;
    }
    out.flush()?;
    Ok(())
}

/// p50, p95, p99 and max of sorted latencies, in milliseconds.
fn summary(sorted: &[Duration]) -> Value {
    json!({
        "p50": ms(percentile(sorted, 50.0)),
        "p95": ms(percentile(sorted, 95.0)),
        "p99": ms(percentile(sorted, 99.0)),
        "max": ms(percentile(sorted, 100.0)),
    })
}

/// A [`summary`] as the report prints it.
fn summary_line(l: &Value) -> String {
    let at = |k: &str| l[k].as_f64().unwrap_or(0.0);
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at("p50"),
        at("p95"),
        at("p99"),
        at("max")
    )
}
