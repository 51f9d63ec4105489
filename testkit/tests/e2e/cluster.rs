//! The cluster test: `scripts/cluster up` (3 RabbitMQ nodes, PostgreSQL
//! with pg_auto_failover, 3 Garage nodes, the API, two worker processes and
//! the edge), load over HTTP, and `kill -9` of whole nodes while it runs:
//! the RabbitMQ node leading `bibliomq.tasks` (started again under load to
//! rejoin), then the one leading `bibliomq.loans`, then the PostgreSQL
//! primary, then a Garage node. The apps are never restarted:
//! every task answered 202 must end `succeeded`; the loans in PostgreSQL
//! must be exactly the loans answered 201; no copy may be lent twice.
//! Afterwards `scripts/cluster up` starts the killed nodes again and they
//! rejoin.
//!
//! It starts a dozen processes and takes a few minutes, so it is ignored in
//! the parallel run; `scripts/test` runs it alone, after the rest.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bibliomq_core::library::Isbn;
use bibliomq_testkit::app::wait_until;
use serde_json::{Value, json};
use uuid::Uuid;

const API: &str = "http://127.0.0.1:8080";
/// Tasks submitted per second (spread over the submitters).
const TASK_RATE: u64 = 120;
const TASK_SUBMITTERS: u64 = 8;
const LOAN_CLIENTS: usize = 4;
const TITLES: u64 = 300;
const PATRONS: usize = 1_000;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/cluster ARGS`, failing the test with its output if it fails.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/cluster"))
        .args(args)
        // The test binaries were just built in the dev profile: the apps
        // come from the same build instead of a release build of their own.
        .env("BIBLIOMQ_PROFILE", "dev")
        .output()
        .expect("scripts/cluster could not be started");
    assert!(
        out.status.success(),
        "scripts/cluster {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status() -> Value {
    serde_json::from_str(&cluster(&["status", "--json"])).expect("status --json is not JSON")
}

fn kill(pid: &Value) {
    let pid = pid.as_i64().expect("a pid to kill");
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 {pid} failed");
}

/// The cluster's variables, as `scripts/cluster env` prints them.
fn cluster_env() -> HashMap<String, String> {
    cluster(&["env"])
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['\'', '"']).to_owned()))
        .collect()
}

async fn database(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("cannot reach the cluster's primary");
    tokio::spawn(conn);
    client
}

/// What the load saw.
/// One request: when it was sent, when it was answered, and how.
#[derive(Clone, Copy)]
struct Answer {
    sent: Instant,
    answered: Instant,
    status: u16,
}

#[derive(Default)]
struct Record {
    /// Tasks answered 202.
    accepted: Vec<Uuid>,
    /// Every submission, to see outages and recoveries.
    answers: Vec<Answer>,
    /// Loan ids answered 201, and 409 refusals.
    loans: Vec<String>,
    /// Every loan request, first tries and retries.
    loan_answers: Vec<Answer>,
    /// The longest a request waited for its answer (the API never hangs).
    slowest_answer: Duration,
    /// Lines sent to the edge's NDJSON gateway: answered done / with an error.
    edge_done: u32,
    edge_errors: u32,
    /// The longest the edge took to answer a line.
    edge_slowest: Duration,
    loan_refusals: u32,
    /// Loan requests asked again with their key after a 503/504.
    loan_retries: u32,
    slowest: Duration,
}

/// How long after the fault at `at` requests were answered `ok` again for
/// good: the time to the first `ok` sent after the last refusal, counting
/// the requests sent after `at` and answered before `until` (the next
/// fault, which cannot have touched them); and how many were refused.
/// `None` if no `ok` came after the last refusal in that window.
fn recovery(
    answers: &[Answer],
    at: Instant,
    until: Instant,
    ok: impl Fn(u16) -> bool,
) -> (Option<Duration>, usize) {
    let mut after: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= at && a.answered < until)
        .collect();
    after.sort_by_key(|a| a.sent);
    let last_refusal = after.iter().rposition(|a| !ok(a.status));
    let refused = after.iter().filter(|a| !ok(a.status)).count();
    let resumed = after
        .iter()
        .skip(last_refusal.map_or(0, |i| i + 1))
        .find(|a| ok(a.status))
        .map(|a| a.sent - at);
    (resumed, refused)
}

/// Whether, since `at`, the last `streak` requests sent were all answered
/// `ok`: the service is back after a fault.
fn back_after(answers: &[Answer], at: Instant, streak: usize, ok: impl Fn(u16) -> bool) -> bool {
    let mut after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= at).collect();
    after.sort_by_key(|a| a.sent);
    after.len() >= streak && after.iter().rev().take(streak).all(|a| ok(a.status))
}

fn seconds(gap: Option<Duration>) -> String {
    gap.map_or_else(
        || "never (within the window)".to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// The RabbitMQ node that leads `queue`.
fn leader_of(queue: &str) -> Value {
    let s = status();
    s["rabbitmq"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["leads"].as_array().unwrap().iter().any(|q| q == queue))
        .unwrap_or_else(|| panic!("no node leads {queue}: {s}"))
        .clone()
}

/// GET a JSON answer; `None` on any failure (for polling).
async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// GET from the cluster's management API, asking each node in turn (the
/// one just restarted may not answer yet); `None` when none answers.
async fn management(http: &reqwest::Client, path: &str) -> Option<Value> {
    for port in [15701, 15702, 15703] {
        let request = http.get(format!("http://127.0.0.1:{port}/api/{path}"));
        let response = request.basic_auth("guest", Some("guest")).send().await;
        let Ok(response) = response.and_then(reqwest::Response::error_for_status) else {
            continue;
        };
        if let Ok(answer) = response.json().await {
            return Some(answer);
        }
    }
    None
}

/// The last lines of a cluster RabbitMQ node's own log (`bq1@localhost`),
/// for a failure's message.
fn node_log_tail(node: &str) -> String {
    let state = std::env::var("BIBLIOMQ_STATE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/bibliomq",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let short = node.split('@').next().unwrap_or(node);
    let path = format!("{state}/cluster/rabbitmq/{short}/log/{node}.log");
    match std::fs::read_to_string(&path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(60);
            format!("last lines of {path}:\n{}", lines[from..].join("\n"))
        }
        Err(e) => format!("{path}: {e}"),
    }
}

/// Waits until every member of each quorum queue on the cluster is online.
/// On failure, the last view of the queues that were not, or why none was had.
async fn every_member_online(http: &reqwest::Client) -> Result<(), String> {
    let last = std::sync::Mutex::new(String::from("no node's management API answered"));
    let done = wait_until(Duration::from_secs(120), || async {
        let queues = management(http, "queues/%2f?columns=name,type,members,online,leader").await;
        let Some(Value::Array(queues)) = queues else {
            return None;
        };
        let lagging: Vec<String> = queues
            .iter()
            .filter(|q| q["type"] == "quorum")
            .filter(|q| {
                let members = q["members"].as_array().map(Vec::len).unwrap_or(0);
                let online = q["online"].as_array().map(Vec::len).unwrap_or(0);
                members != 3 || online != 3
            })
            .map(|q| {
                format!(
                    "{} members {} online {} leader {}",
                    q["name"], q["members"], q["online"], q["leader"]
                )
            })
            .collect();
        *last.lock().unwrap() = if queues.is_empty() {
            "no queues listed".to_owned()
        } else {
            lagging.join("; ")
        };
        (lagging.is_empty() && !queues.is_empty()).then_some(())
    })
    .await;
    match done {
        Some(()) => Ok(()),
        None => Err(last.into_inner().unwrap()),
    }
}

/// Waits until RabbitMQ itself counts three running nodes.
async fn three_rabbitmq_nodes(http: &reqwest::Client) -> bool {
    wait_until(Duration::from_secs(120), || async {
        let nodes = management(http, "nodes").await?;
        let running = nodes.as_array()?.iter().filter(|n| n["running"] == true);
        (running.count() == 3).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "starts a 3-node cluster and kills its nodes; run alone (scripts/test does)"]
async fn the_cluster_loses_nothing_when_nodes_die_under_load() {
    let before = status();
    let was_running = before["apps"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| !p["pid"].is_null()));
    cluster(&["up"]);
    let env = cluster_env();
    let db_url = env["BIBLIOMQ_DATABASE_URL"].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ready = wait_until(Duration::from_secs(120), || async {
        let r = http.get(format!("{API}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the cluster's API never became ready");

    // A catalogue and patrons of this run's own.
    let run = format!("{:x}", chrono::Utc::now().timestamp() % 0xfffff);
    let db = database(&db_url).await;
    let mut isbns = Vec::new();
    let stamp = chrono::Utc::now().timestamp() % 1000;
    for i in 0..TITLES {
        let isbn = Isbn::from_prefix12(&format!("979{stamp:03}{i:06}")).unwrap();
        isbns.push(isbn.as_str().to_owned());
    }
    let names: Vec<String> = (0..TITLES).map(|i| format!("Cluster {run} {i}")).collect();
    db.execute(
        "INSERT INTO titles (isbn, title) SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT DO NOTHING",
        &[&isbns, &names],
    )
    .await
    .unwrap();
    // Four copies per branch: more than the load can lend in a run.
    db.execute(
        "INSERT INTO copies (isbn, branch, barcode)
         SELECT isbn, branch, 'c' || $2 || '-' || isbn || '-' || branch || '-' || k
           FROM unnest($1::text[]) isbn, unnest(ARRAY['central', 'norte']) branch,
                generate_series(1, 4) k",
        &[&isbns, &run],
    )
    .await
    .unwrap();
    let patrons: Vec<String> = (0..PATRONS).map(|i| format!("c{run}-{i}")).collect();
    db.execute(
        "INSERT INTO patrons (id, name) SELECT id, 'Cluster ' || id FROM unnest($1::text[]) id",
        &[&patrons],
    )
    .await
    .unwrap();
    drop(db);

    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    let started = Instant::now();
    for n in 0..TASK_SUBMITTERS {
        let (http, record, stop) = (http.clone(), record.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let every = Duration::from_micros(1_000_000 * TASK_SUBMITTERS / TASK_RATE);
            let mut due = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sent = Instant::now();
                let body = json!({"action": "sum", "payload": format!("{n},{i}")});
                let status = match http
                    .post(format!("{API}/v1/tasks"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        if status == 202 {
                            let body: Value = resp.json().await.unwrap();
                            let id = body["id"].as_str().unwrap().parse().unwrap();
                            record.lock().unwrap().accepted.push(id);
                        }
                        status
                    }
                    // No answer within the client's timeout: the API hung.
                    Err(e) => panic!("a submission got no answer: {e}"),
                };
                assert!(
                    status == 202 || status == 503,
                    "a submission was answered {status}"
                );
                {
                    let mut r = record.lock().unwrap();
                    r.answers.push(Answer {
                        sent,
                        answered: Instant::now(),
                        status,
                    });
                    r.slowest_answer = r.slowest_answer.max(sent.elapsed());
                    // Latency from when the request was due, not when it went.
                    r.slowest = r
                        .slowest
                        .max(sent.elapsed() + sent.saturating_duration_since(due));
                }
                due += every;
                tokio::time::sleep_until(due.into()).await;
            }
        }));
    }
    for c in 0..LOAN_CLIENTS {
        let (http, record, stop) = (http.clone(), record.clone(), stop.clone());
        let (isbns, patrons) = (isbns.clone(), patrons.clone());
        load.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                i += LOAN_CLIENTS;
                let body = json!({
                    "isbn": isbns[i % isbns.len()],
                    "patron": patrons[(i * 7) % patrons.len()],
                    "branch": if i % 2 == 0 { "central" } else { "norte" },
                });
                // One key per loan: asking again after a 503 or 504 (the
                // answer may have been lost with a node) cannot lend twice.
                let key = Uuid::new_v4().to_string();
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    let sent = Instant::now();
                    let resp = http
                        .post(format!("{API}/v1/loans"))
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await
                        .expect("a loan request got no answer");
                    let status = resp.status().as_u16();
                    let answer: Value = resp.json().await.unwrap_or(Value::Null);
                    {
                        let mut r = record.lock().unwrap();
                        r.loan_answers.push(Answer {
                            sent,
                            answered: Instant::now(),
                            status,
                        });
                        r.slowest_answer = r.slowest_answer.max(sent.elapsed());
                    }
                    match status {
                        201 => {
                            let id = answer["loan"]["id"]
                                .as_str()
                                .unwrap_or_else(|| panic!("{answer}"));
                            record.lock().unwrap().loans.push(id.to_owned());
                            break;
                        }
                        409 => {
                            record.lock().unwrap().loan_refusals += 1;
                            break;
                        }
                        503 | 504 => {
                            assert!(
                                Instant::now() < deadline,
                                "loan {key} never settled: {answer}"
                            );
                            record.lock().unwrap().loan_retries += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        other => panic!("a loan was answered {other}: {answer}"),
                    }
                }
            }
        }));
    }

    // The edge, a line at a time over its NDJSON gateway: every line must
    // get an answer (the outcome, or an error) within its request timeout,
    // whatever node is down.
    {
        let (record, stop) = (record.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let stream = tokio::net::TcpStream::connect("127.0.0.1:5557")
                .await
                .expect("the edge's NDJSON gateway is not listening");
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                let line = json!({"id": id, "action": "sum", "payload": "1,2"}).to_string() + "\n";
                write.write_all(line.as_bytes()).await.unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
                    .await
                    .expect("the edge did not answer a line within 15 s")
                    .unwrap()
                    .expect("the edge closed the connection");
                let answer: Value = serde_json::from_str(&answer).unwrap();
                assert_eq!(answer["id"], id, "{answer}");
                {
                    let mut r = record.lock().unwrap();
                    if answer["status"] == "done" {
                        r.edge_done += 1;
                    } else {
                        r.edge_errors += 1;
                    }
                    r.edge_slowest = r.edge_slowest.max(sent.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // 1. The RabbitMQ node that leads bibliomq.tasks.
    let accepted_by = |n: usize| {
        let record = record.clone();
        async move {
            wait_until(Duration::from_secs(60), || async {
                (record.lock().unwrap().accepted.len() >= n).then_some(())
            })
            .await
            .expect("the load stalled");
        }
    };
    // Loan requests settled: lent (201) or refused by a rule (409).
    let settled = |r: &Record| r.loans.len() + r.loan_refusals as usize;
    let loans_by = |n: usize| {
        let record = record.clone();
        async move {
            wait_until(Duration::from_secs(90), || async {
                (settled(&record.lock().unwrap()) >= n).then_some(())
            })
            .await
            .expect("the loans stalled");
        }
    };
    // After a fault: the load is answered `ok` again (so the next fault
    // does not land inside this one's outage, and its recovery is seen).
    let tasks_back = |at: Instant| {
        let record = record.clone();
        async move {
            wait_until(Duration::from_secs(90), || async {
                back_after(&record.lock().unwrap().answers, at, 50, |s| s == 202).then_some(())
            })
            .await
            .expect("task submissions were never answered 202 again");
        }
    };
    let loans_back = |at: Instant| {
        let record = record.clone();
        async move {
            wait_until(Duration::from_secs(90), || async {
                let r = record.lock().unwrap();
                back_after(&r.loan_answers, at, 20, |s| s == 201 || s == 409).then_some(())
            })
            .await
            .expect("loans were never answered again");
        }
    };
    accepted_by(300).await;
    let leader = leader_of("bibliomq.tasks");
    let rabbit_killed = Instant::now();
    kill(&leader["pid"]);
    eprintln!(
        "killed RabbitMQ node {} (leader of bibliomq.tasks)",
        leader["node"]
    );
    let rejoined = leader["node"].as_str().unwrap().to_owned();
    let n = record.lock().unwrap().accepted.len();
    accepted_by(n + 300).await;
    tasks_back(rabbit_killed).await;

    // 1b. The node comes back under load and rejoins; then the node that
    //     leads bibliomq.loans goes (two nodes must stay for a majority).
    cluster(&["up", "--services-only"]);
    assert!(
        three_rabbitmq_nodes(&http).await,
        "the killed RabbitMQ node did not rejoin"
    );
    // A node counted as running may still be bringing its queue members
    // back; losing another node before they are is losing two of three.
    if let Err(seen) = every_member_online(&http).await {
        panic!(
            "the rejoined node's queue members never came back online: {seen}\n{}",
            node_log_tail(&rejoined)
        );
    }
    let leader = leader_of("bibliomq.loans");
    let loans_killed = Instant::now();
    kill(&leader["pid"]);
    eprintln!(
        "killed RabbitMQ node {} (leader of bibliomq.loans)",
        leader["node"]
    );
    let n = settled(&record.lock().unwrap());
    loans_by(n + 100).await;
    loans_back(loans_killed).await;

    // 2. The PostgreSQL primary: its keeper and its postmaster, as a
    //    machine's loss would take both.
    let s = status();
    let primary = s["postgres"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "primary")
        .unwrap_or_else(|| panic!("no primary: {s}"))
        .clone();
    let pg_killed = Instant::now();
    if !primary["keeper_pid"].is_null() {
        kill(&primary["keeper_pid"]);
    }
    kill(&primary["pid"]);
    eprintln!("killed the PostgreSQL primary on port {}", primary["port"]);
    let n = record.lock().unwrap().accepted.len();
    accepted_by(n + 300).await;
    tasks_back(pg_killed).await;

    // 3. A Garage node: the first endpoint, where requests go first.
    let s = status();
    let garage = s["garage"][0].clone();
    let garage_killed = Instant::now();
    kill(&garage["pid"]);
    eprintln!("killed the Garage node on port {}", garage["s3_port"]);
    let big = http
        .post(format!("{API}/v1/tasks"))
        .json(&json!({"action": "primes", "payload": 2_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 202);
    let big: Value = big.json().await.unwrap();
    let big_id = big["id"].as_str().unwrap().to_owned();

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let record = Arc::try_unwrap(record).ok().unwrap().into_inner().unwrap();
    let elapsed = started.elapsed();

    // Every accepted task ends succeeded (retries after the failover may
    // take their backoff: a generous deadline, polled).
    let db = database(&db_url).await;
    let accepted: Vec<Uuid> = record.accepted.clone();
    let unfinished = wait_until(Duration::from_secs(240), || async {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'),
                        count(*) FILTER (WHERE state IN ('failed', 'dead'))
                   FROM tasks WHERE id = ANY($1)",
                &[&accepted],
            )
            .await
            .ok()?;
        let (ok, bad): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(bad, 0, "accepted tasks ended failed or dead");
        (ok as usize == accepted.len()).then_some(())
    })
    .await;
    let succeeded: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND state = 'succeeded'",
            &[&accepted],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        unfinished.is_some(),
        "{} tasks accepted, {succeeded} succeeded",
        accepted.len()
    );
    let retried: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND attempts > 1",
            &[&accepted],
        )
        .await
        .unwrap()
        .get(0);

    // Loans: exactly those answered 201, each once; no copy lent twice.
    let answered: HashSet<&str> = record.loans.iter().map(String::as_str).collect();
    assert_eq!(
        answered.len(),
        record.loans.len(),
        "a loan was answered twice"
    );
    let stored: Vec<String> = db
        .query(
            "SELECT id::text FROM loans WHERE patron_id LIKE $1",
            &[&format!("c{run}-%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stored: HashSet<&str> = stored.iter().map(String::as_str).collect();
    assert_eq!(
        stored, answered,
        "loans in PostgreSQL differ from the loans answered 201"
    );
    let doubled: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT copy_id FROM loans WHERE returned_at IS NULL
               GROUP BY copy_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0, "a copy has two open loans");

    // The large result was stored with a Garage node down, and comes back.
    let big_done = wait_until(Duration::from_secs(120), || async {
        let t = get_json(&http, &format!("{API}/v1/tasks/{big_id}")).await?;
        (t["state"] == "succeeded").then_some(t)
    })
    .await
    .expect("the large result was never stored");
    assert!(big_done["result_object"].is_object(), "{big_done}");
    let fetched = get_json(&http, &format!("{API}/v1/tasks/{big_id}/result"))
        .await
        .expect("the large result could not be fetched");
    assert_eq!(fetched["count"], 148_933);

    let (rabbit_gap, rabbit_refused) =
        recovery(&record.answers, rabbit_killed, loans_killed, |s| s == 202);
    let (loans_gap, loans_refused) = recovery(&record.loan_answers, loans_killed, pg_killed, |s| {
        s == 201 || s == 409
    });
    let (pg_gap, pg_refused) = recovery(&record.answers, pg_killed, garage_killed, |s| s == 202);
    eprintln!(
        "cluster run: {:.0} s; tasks accepted {}, refused {}, all succeeded ({} needed more than one attempt); \
         loans made {}, refused {}, asked again {}; slowest submission {:.2} s from when it was due, \
         slowest answer {:.2} s",
        elapsed.as_secs_f64(),
        record.accepted.len(),
        record.answers.iter().filter(|a| a.status != 202).count(),
        retried,
        record.loans.len(),
        record.loan_refusals,
        record.loan_retries,
        record.slowest.as_secs_f64(),
        record.slowest_answer.as_secs_f64(),
    );
    assert!(record.edge_done > 0, "the edge never answered a task");
    eprintln!(
        "edge: {} lines answered with the outcome, {} with an error, slowest {:.2} s",
        record.edge_done,
        record.edge_errors,
        record.edge_slowest.as_secs_f64()
    );
    eprintln!(
        "bibliomq.tasks leader killed: 202s for good after {} ({rabbit_refused} refused); \
         bibliomq.loans leader killed: answers for good after {} ({loans_refused} answered 503/504); \
         PostgreSQL primary killed: 202s for good after {} ({pg_refused} refused)",
        seconds(rabbit_gap),
        seconds(loans_gap),
        seconds(pg_gap)
    );

    // The killed nodes come back and rejoin.
    cluster(&["up", "--services-only"]);
    let rejoined = wait_until(Duration::from_secs(180), || async {
        let s = status();
        let rabbits = s["rabbitmq"]
            .as_array()?
            .iter()
            .filter(|n| !n["pid"].is_null())
            .count();
        let roles: Vec<&str> = s["postgres"]
            .as_array()?
            .iter()
            .filter(|n| !n["pid"].is_null())
            .filter_map(|n| n["role"].as_str())
            .collect();
        let garages = s["garage"]
            .as_array()?
            .iter()
            .filter(|n| !n["pid"].is_null())
            .count();
        let mut roles_sorted = roles.clone();
        roles_sorted.sort_unstable();
        (rabbits == 3 && garages == 3 && roles_sorted == ["monitor", "primary", "standby"])
            .then_some(s)
    })
    .await;
    assert!(
        rejoined.is_some(),
        "the killed nodes did not rejoin: {}",
        status()
    );
    // Rejoined, as the cluster itself sees it, not only restarted.
    assert!(
        three_rabbitmq_nodes(&http).await,
        "RabbitMQ does not count three running nodes"
    );

    if !was_running {
        cluster(&["down"]);
    }
}
