//! The API and workers, spawned in-process against a test's own resources.

use std::{future::Future, net::SocketAddr, time::Duration};

use bibliomq_core::{clock::Clock, config::Settings, metrics::Metrics};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{TcpProxy, env::TestEnv, proxy::with_port};

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a graceful stop may take: the drain time (30 s by default),
/// then the bounded give-back of what is still in hand, then closing the
/// connections. Past it the test fails, naming what did not stop, instead
/// of hanging the run.
const STOP_DEADLINE: Duration = Duration::from_secs(90);

/// Waits for a stopping part (`what`: "the API", "the worker", ...) to end
/// well, failing the test after [`STOP_DEADLINE`].
pub(crate) async fn stopped(join: JoinHandle<anyhow::Result<()>>, what: &str) {
    tokio::time::timeout(STOP_DEADLINE, join)
        .await
        .unwrap_or_else(|_| panic!("{what} did not stop in time"))
        .unwrap()
        .unwrap();
}

/// A running API and its workers.
pub struct TestApp {
    pub env: TestEnv,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub api_metrics: Metrics,
    pub workers: Vec<Worker>,
    api_stop: CancellationToken,
    api: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The API and one worker, with the test's own vhost, database and prefix.
pub async fn spawn_app() -> TestApp {
    TestApp::spawn(TestEnv::new().await, |_| {}, 1).await
}

impl TestApp {
    /// The API and one worker whose results above 16 bytes go to a bucket
    /// that does not exist yet ([`TestEnv::missing_bucket`]), retrying
    /// `max_retries` times; answers the app and the bucket's name.
    pub async fn spawn_with_missing_bucket(max_retries: u32) -> (Self, String) {
        let env = TestEnv::new().await;
        let bucket = env.missing_bucket();
        let app = Self::spawn(
            env,
            |s| {
                s.s3.bucket = bucket.clone();
                s.tasks.inline_result_limit = 16;
                s.tasks.max_retries = max_retries;
            },
            1,
        )
        .await;
        (app, bucket)
    }

    /// Starts the API and `workers` workers with settings adjusted by `tweak`.
    pub async fn spawn(env: TestEnv, tweak: impl Fn(&mut Settings), workers: usize) -> Self {
        Self::spawn_with_clock(env, tweak, workers, Clock::system()).await
    }

    /// As [`TestApp::spawn`], with every app reading `clock`.
    pub async fn spawn_with_clock(
        env: TestEnv,
        tweak: impl Fn(&mut Settings),
        workers: usize,
        clock: Clock,
    ) -> Self {
        let mut settings = env.settings();
        tweak(&mut settings);
        let mut app = Self::start_api_with_clock(env, settings.clone(), clock.clone()).await;
        for _ in 0..workers {
            app.workers
                .push(Worker::start_with_clock(settings.clone(), clock.clone()).await);
        }
        app
    }

    /// Starts only the API, with the given settings.
    pub async fn start_api(env: TestEnv, settings: Settings) -> Self {
        Self::start_api_with_clock(env, settings, Clock::system()).await
    }

    pub async fn start_api_with_clock(env: TestEnv, settings: Settings, clock: Clock) -> Self {
        let app = bibliomq_api::Application::build_with_clock(settings, clock)
            .await
            .unwrap();
        let addr = app.local_addr().unwrap();
        let api_metrics = app.state().metrics.clone();
        let api_stop = CancellationToken::new();
        let api = tokio::spawn(app.run_until_stopped(api_stop.clone()));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            env,
            addr,
            http,
            api_metrics,
            workers: Vec::new(),
            api_stop,
            api: Some(api),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Loads a small catalogue: the well-known titles, `titles` generated
    /// ones with one or two copies per branch, and `patrons` patrons (the
    /// named ones first, then p0001, p0002, ...). Nothing starts on loan.
    pub async fn seed(&self, titles: usize, patrons: usize) {
        let options = bibliomq_core::library::seed::SeedOptions {
            titles,
            min_copies: 1,
            max_copies: 2,
            patrons,
            on_loan: 0.0,
        };
        bibliomq_core::library::seed::seed_database(
            &self.env.settings(),
            &options,
            chrono::Utc::now(),
        )
        .await
        .unwrap()
        .expect("the test database already had a catalogue");
    }

    /// Adds a title with `copies` copies per branch (in branch order).
    pub async fn add_title(&self, isbn: &str, title: &str, copies: &[u32]) {
        let db = self.env.db().await;
        db.execute(
            "INSERT INTO titles (isbn, title, authors) VALUES ($1, $2, '{}')",
            &[&isbn, &title],
        )
        .await
        .unwrap();
        let branches = self.env.settings().library.branches;
        for (branch, n) in branches.iter().zip(copies) {
            for k in 0..*n {
                let barcode = format!("{isbn}-{}-{k}", branch.code);
                db.execute(
                    "INSERT INTO copies (isbn, branch, barcode) VALUES ($1, $2, $3)",
                    &[&isbn, &branch.code, &barcode],
                )
                .await
                .unwrap();
            }
        }
    }

    /// With BIBLIOMQ_AUTH=on: the API and `workers` workers with keys
    /// required (tweak the rest with `tweak`). Make keys with [`TestApp::key`].
    pub async fn spawn_with_auth(
        env: TestEnv,
        tweak: impl Fn(&mut Settings),
        workers: usize,
    ) -> Self {
        Self::spawn(
            env,
            |s| {
                s.auth.enabled = true;
                tweak(s);
            },
            workers,
        )
        .await
    }

    /// A new API key with `role` (and a librarian's `branch`, a patron's
    /// `patron`), written straight to the test's database as
    /// `bibliomq-api keys create` would; returns the whole key.
    pub async fn key(&self, role: &str, branch: Option<&str>, patron: Option<&str>) -> String {
        let secret = bibliomq_core::auth::new_secret();
        self.env
            .db()
            .await
            .execute(
                "INSERT INTO api_keys (id, digest, role, branch, patron, name)
                 VALUES ($1, $2, $3, $4, $5, 'test')",
                &[&secret.id, &secret.digest, &role, &branch, &patron],
            )
            .await
            .unwrap();
        secret.text
    }

    /// Revokes `key` by hand in SQL, as an operator would (no process is
    /// told but through the database's announcement of the change).
    pub async fn revoke_in_sql(&self, key: &str) {
        let (id, _) = bibliomq_core::auth::split_key(key).expect("a whole key");
        let changed = self
            .env
            .db()
            .await
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1, "no key {id} to revoke");
    }

    /// Submits a `sum` task over HTTP with `key`; its id.
    pub async fn submit_sum_as(&self, key: &str, n: u64) -> String {
        let (status, _, body) = self
            .call_as(
                Some(key),
                reqwest::Method::POST,
                "/v1/tasks",
                Some(&serde_json::json!({"action": "sum", "payload": [n, 1]})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// `method path` with `Authorization: Bearer <key>` (none when `key` is
    /// `None`) and, when given, a JSON body: the status, the headers and
    /// the JSON answer (`null` when not JSON).
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let headers = resp.headers().clone();
        let (status, json) = status_and_json(resp).await;
        (status, headers, json)
    }

    /// Adds patrons `prefix1` .. `prefixN`.
    pub async fn add_patrons(&self, prefix: &str, n: usize) -> Vec<String> {
        let db = self.env.db().await;
        let ids: Vec<String> = (1..=n).map(|i| format!("{prefix}{i}")).collect();
        db.execute(
            "INSERT INTO patrons (id, name) SELECT id, 'Patron ' || id FROM unnest($1::text[]) id",
            &[&ids],
        )
        .await
        .unwrap();
        ids
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET path`: the status and the JSON body (`null` when the body is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        status_and_json(self.get(path).await).await
    }

    /// `POST path` with a JSON body: the status and the JSON answer (`null`
    /// when the answer is not JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        status_and_json(self.post_json(path, body).await).await
    }

    /// `PATCH path` with a JSON body: the status and the JSON answer.
    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        status_and_json(resp).await
    }

    /// `DELETE path`: the status and the JSON answer.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        status_and_json(self.http.delete(self.url(path)).send().await.unwrap()).await
    }

    /// A count from the test's database (`SELECT count(*) ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        self.env
            .db()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Polls `GET /v1/operations/{id}` until a worker has settled the
    /// operation (applied or rejected) and returns it.
    pub async fn wait_for_operation(&self, id: &str) -> Value {
        let path = format!("/v1/operations/{id}");
        wait_until(DEADLINE, || async {
            let (_, op) = self.get_json(&path).await;
            (op["state"] != "pending").then_some(op)
        })
        .await
        .unwrap_or_else(|| panic!("operation {id} stayed pending"))
    }

    /// Submits a task and returns its id; fails the test unless it was accepted.
    pub async fn submit(&self, action: &str, payload: Value) -> Uuid {
        let resp = self
            .post_json(
                "/v1/tasks",
                &serde_json::json!({ "action": action, "payload": payload }),
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 202, "submitting {action}: {body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// The task as the API shows it; a large payload is summarised so that
    /// failure messages stay readable.
    pub async fn task(&self, id: Uuid) -> Value {
        let resp = self.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(resp.status(), 200);
        let mut task: Value = resp.json().await.unwrap();
        let size = task["payload"].to_string().len();
        if size > 2_000 {
            task["payload"] = Value::String(format!("<{size} bytes>"));
        }
        task
    }

    /// Polls until the task reaches a final state (succeeded, failed, dead,
    /// cancelled).
    pub async fn wait_for_task(&self, id: Uuid) -> Value {
        self.wait_for_task_state(id, &["succeeded", "failed", "dead", "cancelled"])
            .await
    }

    /// Polls until the task is in one of `states`.
    pub async fn wait_for_task_state(&self, id: Uuid, states: &[&str]) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let task = self.task(id).await;
            if states.contains(&task["state"].as_str().unwrap_or_default()) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "task {id} never reached {states:?}; last seen: {task}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the API and the workers gracefully.
    pub async fn stop(&mut self) {
        self.api_stop.cancel();
        if let Some(api) = self.api.take() {
            stopped(api, "the API").await;
        }
        for worker in self.workers.drain(..) {
            worker.stop().await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.api_stop.cancel();
        for worker in &self.workers {
            worker.stop.cancel();
        }
    }
}

/// A worker running on the test's runtime.
pub struct Worker {
    pub metrics: Metrics,
    /// Its operations server (`/metrics`, `/healthz`, `/readyz`).
    pub ops_addr: SocketAddr,
    stop: CancellationToken,
    join: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub async fn start(settings: Settings) -> Self {
        Self::start_with_clock(settings, Clock::system()).await
    }

    pub async fn start_with_clock(settings: Settings, clock: Clock) -> Self {
        let app = bibliomq_workers::WorkerApp::build_with_clock(settings, clock)
            .await
            .unwrap();
        let metrics = app.metrics().clone();
        let ops_addr = app.ops_addr().unwrap();
        let stop = CancellationToken::new();
        let join = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            metrics,
            ops_addr,
            stop,
            join,
        }
    }

    /// Graceful stop: finishes in-flight work first.
    pub async fn stop(self) {
        self.stop.cancel();
        stopped(self.join, "the worker").await;
    }
}

/// A worker on a runtime of its own, reaching RabbitMQ through a proxy, so a
/// test can kill it as abruptly as `kill -9` would: its connection drops and
/// none of its code runs again.
pub struct KillableWorker {
    pub metrics: Metrics,
    proxy: TcpProxy,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableWorker {
    pub async fn start(settings: Settings) -> Self {
        let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
        let mut settings = settings;
        settings.amqp.url = with_port(&settings.amqp.url, proxy.port());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let app = bibliomq_workers::WorkerApp::build(settings).await.unwrap();
            let _ = tx.send(app.metrics().clone());
            let _ = app.run_until_stopped(CancellationToken::new()).await;
        });
        let metrics = rx.await.unwrap();
        Self {
            metrics,
            proxy,
            runtime: Some(runtime),
        }
    }

    /// Kills the worker mid-whatever-it-was-doing.
    pub fn kill(mut self) {
        self.proxy.cut();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for KillableWorker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The status of an answer and its JSON body (`null` when it is not JSON).
pub async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Calls `probe` until it returns `Some` or `deadline` passes. Polls quickly
/// at first, then backs off a little; never a fixed sleep-and-hope.
pub async fn wait_until<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
