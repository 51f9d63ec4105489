//! Real restarts of the machine's RabbitMQ and PostgreSQL while the system
//! is busy. They disturb every other test, so they are `#[ignore]`d in the
//! parallel run and `scripts/test` runs them afterwards, one at a time.
//!
//! Each test runs the API in this process and two `bibliomq-workers`
//! processes, keeps several clients submitting a steady mix of quick tasks
//! and `sleep`s of a few hundred milliseconds, restarts the service while
//! tasks are queued and running, and keeps submitting through the outage
//! and after it. Then it counts: every task answered 202 must end
//! `succeeded`, nothing else may have run, and the attempts show that the
//! restart hit work in flight.

use std::{
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use bibliomq_core::{broker::topology, config::Settings, metrics::MessageOutcome};
use bibliomq_testkit::{
    TestApp, TestEnv, WorkerProcess,
    app::{DEADLINE, wait_until},
    rabbit,
};
use futures::future::join_all;
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Clients submitting at once, and how often each submits.
const CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(40);
/// Accepted tasks before the restart, and after it, before the load stops.
const ACCEPTED_BEFORE: usize = 100;
const ACCEPTED_AFTER: usize = 100;
/// Tasks that must be running when the restart begins.
const RUNNING_AT_RESTART: i64 = 3;
/// Retries (with the test env's 200 ms base, doubling) can take a while.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap();
    assert!(status.success(), "{cmd} {args:?} failed");
}

fn postgres_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().unwrap()
}

fn restart_rabbitmq() {
    run("rabbitmqctl", &["-q", "stop_app"]);
    run("rabbitmqctl", &["-q", "start_app"]);
    run("rabbitmqctl", &["-q", "await_startup"]);
}

fn restart_postgresql() {
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &postgres_version(),
            "main",
            "restart",
            "-m",
            "fast",
        ],
    );
}

/// The `i`-th task of client `c`: every third one a `sleep` of 300 to
/// 800 ms, so that some are always running; the others quick.
fn task_mix(c: usize, i: usize) -> Value {
    match i % 3 {
        0 => json!({"action": "sleep", "payload": 300 + (i * 37 + c * 101) % 500}),
        1 => json!({"action": "upper", "payload": format!("client {c} task {i}")}),
        _ => json!({"action": "sum", "payload": [i, c, 1]}),
    }
}

/// What the clients were answered.
#[derive(Default)]
struct Tally {
    /// Answered 202, with when the answer came.
    accepted: Vec<(Uuid, Instant)>,
    /// Answered 503 (a dependency is down); not retried as the same task.
    refused: usize,
    /// Anything else: a failure of the test.
    unexpected: Vec<String>,
}

impl Tally {
    fn accepted_since(&self, since: Instant) -> usize {
        self.accepted.iter().filter(|(_, at)| *at >= since).count()
    }
}

/// One client: submits a task every [`PACE`] until `stop`, whatever the
/// answers, counting them.
async fn submit_steadily(app: &TestApp, c: usize, stop: &CancellationToken, tally: &Mutex<Tally>) {
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for i in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sent = app
            .http
            .post(app.url("/v1/tasks"))
            .json(&task_mix(c, i))
            .send()
            .await;
        let answer = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!(e.to_string())),
        };
        let mut tally = tally.lock().unwrap();
        match answer {
            (202, body) => {
                let id = body["id"].as_str().and_then(|id| id.parse().ok());
                match id {
                    Some(id) => tally.accepted.push((id, Instant::now())),
                    None => tally.unexpected.push(format!("202 without an id: {body}")),
                }
            }
            (503, _) => tally.refused += 1,
            (status, body) => tally.unexpected.push(format!("{status}: {body}")),
        }
    }
}

/// Tasks of the test database by state: (queued, running, final).
async fn states(env: &TestEnv) -> Option<(i64, i64, i64)> {
    let (db, conn) = tokio_postgres::connect(&env.settings().database.url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'queued'),
                    count(*) FILTER (WHERE state = 'running'),
                    count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'dead'))
               FROM tasks",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1), row.get(2)))
}

/// What one run under a restart came to.
struct Outcome {
    accepted: Vec<Uuid>,
    refused: usize,
    unexpected: Vec<String>,
    /// (queued, running) when the restart began.
    at_restart: (i64, i64),
    restart_took: Duration,
    /// From the end of the restart to the first 202 after it.
    accepting_again_after: Duration,
    /// Accepted tasks by final state.
    by_state: Vec<(String, i64)>,
    /// Rows in the tasks table, accepted or not.
    rows: i64,
    /// Accepted tasks by number of attempts (claims by a worker).
    by_attempts: Vec<(i32, i64)>,
    /// Redeliveries of finished tasks, acked without running them again.
    duplicates: u64,
    /// Task deliveries each worker process took.
    consumed: Vec<u64>,
}

impl Outcome {
    fn report(&self, service: &str) {
        eprintln!(
            "{service} restart: accepted {}, refused (503) {}, unexpected {}; \
             at the restart {} queued and {} running; the restart took {:?}, \
             202s again {:?} after it; final states {:?}; attempts {:?}; \
             duplicate deliveries {}; deliveries per worker process {:?}",
            self.accepted.len(),
            self.refused,
            self.unexpected.len(),
            self.at_restart.0,
            self.at_restart.1,
            self.restart_took,
            self.accepting_again_after,
            self.by_state,
            self.by_attempts,
            self.duplicates,
            self.consumed,
        );
    }

    fn retried(&self) -> i64 {
        self.by_attempts
            .iter()
            .filter(|(attempts, _)| *attempts > 1)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every accepted task succeeded, and nothing else ran.
    fn assert_nothing_lost(&self) {
        let accepted = i64::try_from(self.accepted.len()).unwrap();
        assert!(self.unexpected.is_empty(), "{:?}", self.unexpected);
        assert!(
            self.accepted.len() >= ACCEPTED_BEFORE + ACCEPTED_AFTER,
            "{}",
            self.accepted.len()
        );
        assert_eq!(
            self.by_state,
            vec![("succeeded".to_owned(), accepted)],
            "every accepted task ends succeeded"
        );
        assert_eq!(self.rows, accepted, "no refused task left a row or ran");
        assert_eq!(
            self.by_attempts.iter().map(|(_, n)| n).sum::<i64>(),
            accepted
        );
        assert!(
            self.consumed.iter().all(|&n| n > 0),
            "both worker processes took tasks: {:?}",
            self.consumed
        );
    }
}

/// Runs the API and two worker processes under a steady load, calls
/// `restart` once tasks are queued and running, keeps the load on until
/// [`ACCEPTED_AFTER`] more tasks were accepted after it, and waits for
/// every accepted task to finish.
async fn carry_on_through(restart: fn(), tweak: impl Fn(&mut Settings)) -> Outcome {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    tweak(&mut settings);
    let app = TestApp::start_api(env, settings.clone()).await;
    let workers = WorkerProcess::start_many(&settings, 2).await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::TASKS_QUEUE, 2).await;

    let tally = Mutex::new(Tally::default());
    let stop = CancellationToken::new();
    let clients = join_all((0..CLIENTS).map(|c| submit_steadily(&app, c, &stop, &tally)));
    let conductor = async {
        let busy = wait_until(DEADLINE, || async {
            let accepted = tally.lock().unwrap().accepted.len();
            let (queued, running, _) = states(&app.env).await?;
            (accepted >= ACCEPTED_BEFORE && running >= RUNNING_AT_RESTART)
                .then_some((queued, running))
        })
        .await;
        let Some(at_restart) = busy else {
            stop.cancel();
            panic!("the load never had {RUNNING_AT_RESTART} tasks running");
        };
        let began = Instant::now();
        tokio::task::spawn_blocking(restart).await.unwrap();
        let restarted = Instant::now();
        let resumed = wait_until(DEADLINE * 2, || async {
            (tally.lock().unwrap().accepted_since(restarted) >= ACCEPTED_AFTER).then_some(())
        })
        .await;
        stop.cancel();
        assert!(
            resumed.is_some(),
            "the API did not accept {ACCEPTED_AFTER} tasks after the restart"
        );
        (at_restart, restarted - began, restarted)
    };
    let ((at_restart, restart_took, restarted), _) = tokio::join!(conductor, clients);
    let Tally {
        accepted,
        refused,
        unexpected,
    } = tally.into_inner().unwrap();
    let accepting_again_after = accepted
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at >= restarted)
        .min()
        .map(|at| at - restarted)
        .unwrap_or_default();
    let accepted: Vec<Uuid> = accepted.into_iter().map(|(id, _)| id).collect();

    let db = app.env.db().await;
    let expected = i64::try_from(accepted.len()).unwrap();
    let finished = wait_until(SETTLE_DEADLINE, || async {
        let finished: i64 = db
            .query_one(
                "SELECT count(*) FROM tasks
                  WHERE id = ANY($1) AND state IN ('succeeded', 'failed', 'dead')",
                &[&accepted],
            )
            .await
            .unwrap()
            .get(0);
        (finished == expected).then_some(())
    })
    .await;
    assert!(
        finished.is_some(),
        "accepted tasks still unfinished after {SETTLE_DEADLINE:?}: {:?}",
        states(&app.env).await
    );
    let by_state = db
        .query(
            "SELECT state, count(*) FROM tasks WHERE id = ANY($1) GROUP BY state ORDER BY state",
            &[&accepted],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let by_attempts = db
        .query(
            "SELECT attempts, count(*) FROM tasks WHERE id = ANY($1)
              GROUP BY attempts ORDER BY attempts",
            &[&accepted],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rows = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    let mut duplicates = 0;
    let mut consumed = Vec::new();
    for w in &workers {
        duplicates += w
            .message_count(topology::TASKS_QUEUE, MessageOutcome::Duplicate)
            .await;
        consumed.push(
            w.message_count(topology::TASKS_QUEUE, MessageOutcome::Consumed)
                .await,
        );
    }
    Outcome {
        accepted,
        refused,
        unexpected,
        at_restart,
        restart_took,
        accepting_again_after,
        by_state,
        rows,
        by_attempts,
        duplicates,
        consumed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's RabbitMQ; run alone (scripts/test does)"]
async fn every_accepted_task_succeeds_when_rabbitmq_restarts_under_load() {
    let outcome = carry_on_through(restart_rabbitmq, |_| {}).await;
    outcome.report("RabbitMQ");
    outcome.assert_nothing_lost();
    // Deliveries in hand when the connections closed came back: either
    // already finished (acked as duplicates) or claimed again.
    assert!(
        outcome.duplicates + u64::try_from(outcome.retried()).unwrap() > 0,
        "the restart hit no delivery in flight: attempts {:?}, duplicates {}",
        outcome.by_attempts,
        outcome.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's PostgreSQL; run alone (scripts/test does)"]
async fn every_accepted_task_succeeds_when_postgresql_restarts_under_load() {
    let outcome = carry_on_through(restart_postgresql, |s| s.tasks.max_retries = 8).await;
    outcome.report("PostgreSQL");
    outcome.assert_nothing_lost();
    // Tasks running when the database went away could not record their end
    // and were claimed again once it was back.
    assert!(
        outcome.retried() > 0,
        "no task needed a second attempt: {:?}",
        outcome.by_attempts
    );
}
