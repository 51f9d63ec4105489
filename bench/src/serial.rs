//! `bibliomq-bench tasks --one-at-a-time`: one task at a time on a quiet
//! system, each sent when the one before is done, so nothing queues and
//! the figure is the pipeline's own latency: submit → done as the client
//! sees it.
//!
//! - `--via http`: the clock starts before `POST /v1/tasks?wait_ms=10000`
//!   and stops when it answers with the task final (the API answers as
//!   soon as it sees it so). With `--two-requests`, the submit answers 202
//!   and `GET /v1/tasks/{id}?wait_ms=10000`, sent right after, waits; with
//!   `--poll-us N`, a plain `GET /v1/tasks/{id}` repeated every N µs first
//!   shows it final, which adds up to one poll interval and one GET.
//! - `--via zmq`: the clock starts before the edge's `task` request is sent
//!   and stops when its reply (sent once the task is done) arrives.
//!
//! Beside the client's figure it reports the server's own (the row's
//! `created_at` → `finished_at`) and the 202 alone (HTTP).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;
use zeromq::{Socket, SocketRecv, SocketSend};

use crate::{
    stats::{CpuSnapshot, cpu_json, memory_json, ms, percentile, print_resources},
    tasks::{Args, Via},
};

pub async fn run(args: Args) -> anyhow::Result<()> {
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let (db, conn) = tokio_postgres::connect(&args.target.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot reach the database")?;
    tokio::spawn(conn);
    let mut client = match args.via {
        Via::Http => Client::Http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        ),
        Via::Zmq => {
            let mut socket = zeromq::ReqSocket::new();
            socket
                .connect(&args.zmq_url)
                .await
                .with_context(|| format!("cannot connect to {}", args.zmq_url))?;
            Client::Zmq(Box::new(socket))
        }
    };
    let via = match args.via {
        Via::Http => "http",
        Via::Zmq => "zmq",
    };
    let warmup = args.warmup.min(200);
    eprintln!(
        "{} `{}` tasks one at a time over {via} (after {warmup} unmeasured)",
        args.count, args.action
    );
    for _ in 0..warmup {
        client.one(&args, &payload).await?;
    }
    let cpu_before = CpuSnapshot::take();
    let mut done = Vec::with_capacity(args.count);
    let mut accepted = Vec::with_capacity(args.count);
    let mut ids = Vec::with_capacity(args.count);
    let started = Instant::now();
    for _ in 0..args.count {
        let one = client.one(&args, &payload).await?;
        done.push(one.done);
        if let Some(a) = one.accepted {
            accepted.push(a);
        }
        ids.push(one.id);
    }
    let elapsed = started.elapsed();
    let cpu = CpuSnapshot::take().per_op_ms(&cpu_before, ids.len());
    let rows = db
        .query(
            "SELECT state, extract(epoch FROM finished_at - created_at)::float8
               FROM tasks WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut server: Vec<Duration> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<f64>>(1))
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
        .collect();
    let not_succeeded = rows
        .iter()
        .filter(|r| r.get::<_, String>(0) != "succeeded")
        .count()
        + ids.len().saturating_sub(rows.len());
    done.sort();
    accepted.sort();
    server.sort();
    let p = |v: &[Duration], q: f64| ms(percentile(v, q));
    let memory = memory_json(&args.target.processes);
    let report = json!({
        "mode": "one_at_a_time",
        "via": via,
        "action": args.action,
        "tasks": ids.len(),
        "seconds": elapsed.as_secs_f64(),
        "not_succeeded": not_succeeded,
        "submit_to_done_ms": {"p50": p(&done, 50.0), "p99": p(&done, 99.0), "max": p(&done, 100.0)},
        "server_created_to_finished_ms": {"p50": p(&server, 50.0), "p99": p(&server, 99.0)},
        "accepted_ms": (!accepted.is_empty()).then(|| json!({"p50": p(&accepted, 50.0), "p99": p(&accepted, 99.0)})),
        "memory": memory,
        "cpu_ms_per_task": cpu_json(&cpu),
    });
    if args.target.json {
        println!("{report:#}");
    } else {
        println!(
            "tasks                 {} `{}` one at a time over {via}",
            ids.len(),
            args.action
        );
        println!(
            "submit → done         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (client's clock)",
            p(&done, 50.0),
            p(&done, 99.0),
            p(&done, 100.0)
        );
        println!(
            "created → finished    p50 {:.2} ms, p99 {:.2} ms (the row's timestamps)",
            p(&server, 50.0),
            p(&server, 99.0)
        );
        if !accepted.is_empty() {
            println!(
                "the 202 alone         p50 {:.2} ms, p99 {:.2} ms",
                p(&accepted, 50.0),
                p(&accepted, 99.0)
            );
        }
        println!("failures              {not_succeeded} tasks not succeeded");
        print_resources(&memory, &cpu, "task");
    }
    if not_succeeded > 0 {
        bail!("{not_succeeded} tasks did not succeed");
    }
    Ok(())
}

enum Client {
    Http(reqwest::Client),
    Zmq(Box<zeromq::ReqSocket>),
}

/// One task's figures.
struct One {
    id: Uuid,
    /// Submit → done, the client's clock.
    done: Duration,
    /// Submit → 202 (HTTP only).
    accepted: Option<Duration>,
}

impl Client {
    async fn one(&mut self, args: &Args, payload: &Value) -> anyhow::Result<One> {
        match self {
            Self::Http(http) => {
                let base = args.target.url.trim_end_matches('/');
                let body = json!({"action": args.action, "payload": payload});
                let one_request = !args.two_requests && args.poll_us.is_none();
                let submit = match one_request {
                    true => format!("{base}/v1/tasks?wait_ms=10000"),
                    false => format!("{base}/v1/tasks"),
                };
                let t = Instant::now();
                let answer: Value = http
                    .post(submit)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let accepted = t.elapsed();
                let id: Uuid = answer["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("no task id in the answer")?;
                if one_request && is_final(&answer) {
                    return Ok(One {
                        id,
                        done: accepted,
                        accepted: None,
                    });
                }
                let url = match args.poll_us {
                    Some(_) => format!("{base}/v1/tasks/{id}"),
                    None => format!("{base}/v1/tasks/{id}?wait_ms=10000"),
                };
                let deadline = t + Duration::from_secs(30);
                loop {
                    let task: Value = http.get(&url).send().await?.json().await?;
                    if is_final(&task) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("task {id} not done after 30 s");
                    }
                    if let Some(us) = args.poll_us {
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                }
                Ok(One {
                    id,
                    done: t.elapsed(),
                    accepted: (!one_request).then_some(accepted),
                })
            }
            Self::Zmq(socket) => {
                let body = json!({"action": "task", "task": args.action, "payload": payload});
                let t = Instant::now();
                socket.send(body.to_string().into()).await?;
                let reply = tokio::time::timeout(Duration::from_secs(30), socket.recv())
                    .await
                    .context("no ZeroMQ reply within 30 s")??;
                let done = t.elapsed();
                let bytes: Vec<u8> = reply
                    .into_vec()
                    .into_iter()
                    .flat_map(|frame| frame.to_vec())
                    .collect();
                let answer: Value = serde_json::from_slice(&bytes)?;
                if answer["ok"] != json!(true) {
                    bail!("the edge refused the task: {answer}");
                }
                let id: Uuid = answer["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("no task id in the reply")?;
                Ok(One {
                    id,
                    done,
                    accepted: None,
                })
            }
        }
    }
}

/// Whether a task as the API shows it is finished (the client's rule).
fn is_final(task: &Value) -> bool {
    bibliomq_client::tasks::is_final(task["state"].as_str().unwrap_or_default())
}
