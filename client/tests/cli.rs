//! The `bibliomq` binary against a running system spawned by each test
//! (its own vhost, database and bucket prefix): output, `--json` shapes,
//! exit codes, and request-file replay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bibliomq_testkit::{TestApp, TestEnv, spawn_app};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const QUIJOTE: &str = "9788437604947";
const SOMBRA: &str = "9788497592208";
const CRIMEN: &str = "9780140449266";

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the client against `url` with `env` set (and no token unless given).
async fn run_with(url: &str, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Ran {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bibliomq"));
    cmd.args(args)
        .env("BIBLIOMQ_API_URL", url)
        .env_remove("BIBLIOMQ_API_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn bibliomq(app: &TestApp, args: &[&str]) -> Ran {
    run_with(&app.url(""), &[], args, None).await
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("bibliomq-cli-{}-{name}", uuid::Uuid::new_v4())))
    }

    fn with(name: &str, text: &str) -> Self {
        let f = Self::new(name);
        std::fs::write(&f.0, text).unwrap();
        f
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_submit_waits_for_the_result_and_json_shows_the_api_s_answers() {
    let app = spawn_app().await;

    let ran = bibliomq(&app, &["task", "submit", "sum", "1,2,3", "--wait"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("succeeded  "), "{ran}");
    assert!(ran.stdout.lines().any(|l| l == "6"), "{ran}");

    let ran = bibliomq(
        &app,
        &[
            "--json", "task", "submit", "upper", "hola", "mundo", "--wait",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let task = ran.json();
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["action"], "upper");
    assert_eq!(task["result"], "HOLA MUNDO");

    let ran = bibliomq(&app, &["--json", "task", "submit", "fib", "10"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let queued = ran.json();
    assert_eq!(queued["state"], "queued");
    let id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(queued["links"]["self"], format!("/v1/tasks/{id}"));
    app.wait_for_task(id.parse().unwrap()).await;

    let ran = bibliomq(&app, &["task", "get", &id]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with(&format!("task {id}")), "{ran}");
    assert!(ran.stdout.contains("succeeded"), "{ran}");
    assert!(
        ran.stdout.contains("  result    55\n"),
        "fib(10) is 55: {ran}"
    );
    let ran = bibliomq(&app, &["--json", "task", "get", &id]).await;
    assert_eq!(ran.json()["attempts"], 1);

    let ran = bibliomq(
        &app,
        &["--json", "task", "list", "--action", "sum", "--limit", "5"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let page = ran.json();
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{page}");
    assert_eq!(tasks[0]["action"], "sum");
    let ran = bibliomq(&app, &["task", "list"]).await;
    assert!(
        ran.stdout.starts_with("ID  ") && ran.stdout.contains("ACTION"),
        "{ran}"
    );
    assert_eq!(
        ran.stdout.lines().count(),
        4,
        "a header and three tasks: {ran}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_streamed_to_a_file_and_checked_against_its_sha256() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.tasks.inline_result_limit = 16,
        1,
    )
    .await;
    let text = "una frase bastante más larga que dieciséis bytes";
    let ran = bibliomq(&app, &["task", "submit", "upper", text, "--wait"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("stored in object storage"), "{ran}");
    let ran = bibliomq(&app, &["--json", "task", "list", "--limit", "1"]).await;
    let id = ran.json()["tasks"][0]["id"].as_str().unwrap().to_owned();

    let file = TempFile::new("result.json");
    let ran = bibliomq(&app, &["task", "result", &id, "-o", file.path()]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("SHA-256 verified"), "{ran}");
    let expected = serde_json::to_string(&text.to_uppercase()).unwrap();
    assert_eq!(std::fs::read_to_string(&file.0).unwrap(), expected);
    assert!(
        !std::path::Path::new(&format!("{}.part", file.path())).exists(),
        "the part file is renamed away"
    );

    let ran = bibliomq(&app, &["--json", "task", "result", &id, "-o", file.path()]).await;
    let report = ran.json();
    assert_eq!(report["bytes"], expected.len());
    assert_eq!(report["verified"], true);
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);

    let ran = bibliomq(&app, &["task", "result", &id]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(
        ran.stdout, expected,
        "without -o the result goes to stdout as is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_shown_from_the_error_body_with_exit_code_1() {
    let app = spawn_app().await;

    let ran = bibliomq(&app, &["task", "submit", "nope", "1"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stdout.is_empty(), "{ran}");
    assert!(
        ran.stderr.starts_with("error: unknown action `nope`"),
        "{ran}"
    );
    assert!(
        ran.stderr.contains("422 unknown_action, field `action`"),
        "{ran}"
    );

    let ran = bibliomq(&app, &["--json", "task", "submit", "sum", "1,x"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    let error = &ran.json()["error"];
    assert_eq!(error["code"], "invalid_payload");
    assert_eq!(error["field"], "payload[1]");
    assert_eq!(error["status"], 422);

    let ran = bibliomq(&app, &["task", "get", "not-a-task"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("invalid_task_id"), "{ran}");

    let ran = bibliomq(&app, &["--json", "task", "submit", "sleep", "60000"]).await;
    let id = ran.json()["id"].as_str().unwrap().to_owned();
    let ran = bibliomq(&app, &["task", "result", &id]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("result_not_ready"), "{ran}");
    let ran = bibliomq(&app, &["task", "get", &id, "--request-timeout", "0"]).await;
    assert_eq!(ran.code, 2, "a zero timeout is a usage error: {ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancel_stops_a_running_task_and_refuses_a_finished_one() {
    let app = spawn_app().await;
    let running = app.submit("sleep", serde_json::json!(60_000)).await;
    app.wait_for_task_state(running, &["running"]).await;
    let id = running.to_string();
    let ran = bibliomq(&app, &["task", "cancel", &id]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("its worker is stopping it"), "{ran}");
    app.wait_for_task_state(running, &["cancelled"]).await;
    let ran = bibliomq(&app, &["--json", "task", "cancel", &id]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["state"], "cancelled", "{ran}");
    let ran = bibliomq(&app, &["task", "cancel", &id]).await;
    assert_eq!(ran.stdout.trim(), format!("task {id} cancelled"), "{ran}");

    let done = app.submit("sum", serde_json::json!("1,2")).await;
    app.wait_for_task(done).await;
    let ran = bibliomq(&app, &["task", "cancel", &done.to_string()]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("409 task_finished"), "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_shows_the_dead_letters_and_replay_sends_them_back() {
    // No workers: the replayed message (not a task) stays in the task queue.
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    bibliomq_testkit::rabbit::dead_task_letters(&app.env.amqp_url(), ["dead-1".to_owned()]).await;
    let listed = bibliomq_testkit::app::wait_until(bibliomq_testkit::app::DEADLINE, || async {
        let ran = bibliomq(&app, &["dead", "list"]).await;
        ran.stdout.contains("dead-1").then_some(ran)
    })
    .await
    .expect("the dead letter was never listed");
    assert_eq!(listed.code, 0, "{listed}");
    assert!(listed.stdout.contains("task.upper"), "{listed}");

    let ran = bibliomq(&app, &["dead", "replay", "nope"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("404 dead_letter_not_found"), "{ran}");
    let ran = bibliomq(&app, &["dead", "replay", "dead-1"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("replayed 1"), "{ran}");
    let ran = bibliomq(&app, &["--json", "dead", "list"]).await;
    assert_eq!(ran.json()["total"], 0, "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replay_all_asks_again_while_letters_are_left() {
    // No replay budget: each answer replays one window and says how many
    // are left. No workers: the replayed messages stay in the task queue.
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.dead_replay_budget = std::time::Duration::ZERO,
        0,
    )
    .await;
    let url = app.env.amqp_url();
    let dead = bibliomq_core::broker::topology::TASKS_DEAD_QUEUE;
    let window = bibliomq_core::broker::PUBLISH_MANY_WINDOW;
    let count = 2 * window + 88;
    bibliomq_testkit::rabbit::dead_task_letters(&url, (0..count).map(|n| format!("m{n}"))).await;
    let (status, first) = app
        .post(
            "/v1/dead-letters/replay",
            &serde_json::json!({"queue": "tasks", "all": true}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"].as_array().unwrap().len(), window);
    assert_eq!(first["left"], count - window, "{}", first["left"]);

    // The client goes on until none are left, in the queue's order.
    let ran = bibliomq(&app, &["--json", "dead", "replay", "--all"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let answer = ran.json();
    let ids: Vec<&str> = answer["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let expected: Vec<String> = (window..count).map(|n| format!("m{n}")).collect();
    assert_eq!(ids, expected, "{ran}");
    assert_eq!(answer["left"], 0, "{ran}");
    let emptied = bibliomq_testkit::app::wait_until(bibliomq_testkit::app::DEADLINE, || async {
        (bibliomq_testkit::rabbit::ready_count(&url, dead).await == 0).then_some(())
    })
    .await;
    assert!(
        emptied.is_some(),
        "replayed dead letters stayed in the queue"
    );
    assert_eq!(
        bibliomq_testkit::rabbit::ready_count(&url, bibliomq_core::broker::topology::TASKS_QUEUE)
            .await,
        u32::try_from(count).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_cannot_be_reached_exits_3_and_says_how_to_start_it() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let ran = run_with(&url, &[], &["status"], None).await;
    assert_eq!(ran.code, 3, "{ran}");
    assert!(
        ran.stderr.contains(&format!(
            "cannot reach the API at {url} — is it running? start it with scripts/up"
        )),
        "{ran}"
    );
    let ran = run_with(&url, &[], &["--json", "task", "list"], None).await;
    assert_eq!(ran.code, 3, "{ran}");
    assert_eq!(ran.json()["error"]["code"], "unreachable");
    assert_eq!(ran.json()["error"]["url"], url);

    // A replay finds out once, before sending anything.
    let file = TempFile::with("one.txt", "TASK sum 1,2\n");
    let ran = run_with(&url, &[], &["run", file.path()], None).await;
    assert_eq!(ran.code, 3, "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let url = "http://127.0.0.1:9";
    for args in [
        vec![],
        vec!["loan", "--patron", "ana"],
        vec!["task", "submit"],
        vec!["renew", "--branch", "central"],
        vec!["run"],
        vec!["run", "/no/such/request-file.txt"],
        vec!["--api-url", "localhost:8080", "status"],
        vec!["run", "x.txt", "--concurrency", "0"],
    ] {
        let ran = run_with(url, &[], &args, None).await;
        assert_eq!(ran.code, 2, "{args:?}: {ran}");
        assert!(!ran.stderr.is_empty(), "{args:?}: {ran}");
    }
    let ran = run_with(url, &[], &["--help"], None).await;
    assert_eq!(ran.code, 0);
    assert!(ran.stdout.contains("Exit codes"), "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_its_renewals_and_its_return_through_the_cli() {
    let app = spawn_app().await;
    app.seed(5, 12).await;

    let ran = bibliomq(
        &app,
        &["loan", QUIJOTE, "--patron", "ana", "--branch", "central"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout
            .starts_with(&format!("lent  Don Quijote de la Mancha ({QUIJOTE})")),
        "{ran}"
    );
    let ran = bibliomq(&app, &["--json", "loans", "ana"]).await;
    let loans = ran.json();
    assert_eq!(loans["loans"].as_array().unwrap().len(), 1, "{loans}");
    let loan_id = loans["loans"][0]["id"].as_str().unwrap().to_owned();

    let ran = bibliomq(
        &app,
        &[
            "renew", QUIJOTE, "--patron", "ana", "--branch", "central", "--wait",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("renewed  operation "), "{ran}");

    let ran = bibliomq(
        &app,
        &[
            "--json",
            "renew",
            "--loan-id",
            &loan_id,
            "--branch",
            "norte",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let accepted = ran.json();
    assert_eq!(accepted["state"], "pending");
    assert_eq!(accepted["kind"], "renewal");
    let op = accepted["operation_id"].as_str().unwrap().to_owned();
    let ran = bibliomq(&app, &["--json", "operation", &op, "--wait"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["state"], "applied");
    assert_eq!(ran.json()["outcome"]["renewals"], 2);

    // A third renewal breaks the rule: rejected, exit 1, the reason shown.
    let ran = bibliomq(
        &app,
        &[
            "renew", QUIJOTE, "--patron", "ana", "--branch", "central", "--wait",
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("renewal rejected"), "{ran}");
    assert!(ran.stderr.contains("renewal_limit_reached"), "{ran}");

    let ran = bibliomq(
        &app,
        &[
            "return", QUIJOTE, "--patron", "ana", "--branch", "norte", "--wait",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("returned  operation "), "{ran}");
    let ran = bibliomq(
        &app,
        &["return", QUIJOTE, "--patron", "ana", "--branch", "norte"],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("404 loan_not_found"), "{ran}");
    let ran = bibliomq(&app, &["--json", "loans", "ana", "--all"]).await;
    assert!(!ran.json()["loans"][0]["returned_at"].is_null());

    let ran = bibliomq(
        &app,
        &[
            "--json",
            "loan",
            "--title",
            "la sombra del viento",
            "--patron",
            "luis",
            "--branch",
            "norte",
            "--idempotency-key",
            "cli-test-1",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["loan"]["isbn"], SOMBRA);
    assert_eq!(ran.json()["idempotency_key"], "cli-test-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_refused_by_a_rule_exits_1_and_says_why() {
    let app = spawn_app().await;
    app.seed(0, 12).await;
    for patron in ["marta", "jorge"] {
        let ran = bibliomq(
            &app,
            &["loan", CRIMEN, "--patron", patron, "--branch", "central"],
        )
        .await;
        assert_eq!(ran.code, 0, "{ran}");
    }
    let ran = bibliomq(
        &app,
        &["loan", CRIMEN, "--patron", "lucia", "--branch", "central"],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stderr
            .starts_with("error: no copy of Crimen y castigo is available"),
        "{ran}"
    );
    assert!(ran.stderr.contains("(409 not_available)"), "{ran}");
    let ran = bibliomq(
        &app,
        &[
            "--json", "loan", CRIMEN, "--patron", "lucia", "--branch", "central",
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    let error = &ran.json()["error"];
    assert_eq!(error["code"], "not_available");
    assert_eq!(error["status"], 409);
    assert!(error["earliest_due_at"].is_string(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_commands_show_books_searches_branches_and_readiness() {
    let app = spawn_app().await;
    app.seed(5, 12).await;
    let ran = bibliomq(&app, &["book", QUIJOTE]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with("Don Quijote de la Mancha\n"),
        "{ran}"
    );
    assert!(ran.stdout.contains("Miguel de Cervantes"), "{ran}");
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with("central") && l.contains(" 3 ")),
        "{ran}"
    );
    let ran = bibliomq(&app, &["--json", "search", "sombra", "viento"]).await;
    assert_eq!(ran.json()["books"][0]["isbn"], SOMBRA);
    let ran = bibliomq(&app, &["search", "ningún", "título", "así"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("no title matches"), "{ran}");
    let ran = bibliomq(&app, &["branches"]).await;
    assert!(ran.stdout.contains("norte    Biblioteca Norte"), "{ran}");
    let ran = bibliomq(&app, &["book", "123"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("invalid_isbn, field `isbn`"), "{ran}");
    let ran = bibliomq(&app, &["status"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("ready  "), "{ran}");
    let ran = bibliomq(&app, &["--json", "status"]).await;
    assert_eq!(ran.json()["checks"]["postgres"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_counts_each_kind_and_names_the_bad_line_with_its_number() {
    let app = spawn_app().await;
    app.seed(5, 12).await;
    let file = TempFile::with(
        "mixed.txt",
        &format!(
            "# three loans of a title with two copies: one is rejected\n\
             LOAN {CRIMEN} marta central\n\
             LOAN {CRIMEN} jorge central\n\
             PRESTAR {CRIMEN} lucia central\n\
             LOAN {CRIMEN} lucia central\n\
             \n\
             RENOVACION {CRIMEN} marta central\n\
             LOAN 9788437604948 ana central\n\
             TASK sum 1,2,3\n\
             DEVOLUCION {CRIMEN} marta norte\n"
        ),
    );
    let report = TempFile::new("report.html");
    let ran = bibliomq(
        &app,
        &[
            "run",
            file.path(),
            "--wait",
            "--concurrency",
            "3",
            "--report",
            report.path(),
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "a malformed line and a bad ISBN fail: {ran}");
    assert!(
        ran.stderr.contains(&format!(
            "line 4: failed: PRESTAR {CRIMEN} lucia central\n  unknown operation `PRESTAR`"
        )),
        "{ran}"
    );
    assert!(
        ran.stderr
            .contains("line 8: failed: LOAN 9788437604948 ana central"),
        "{ran}"
    );
    assert!(ran.stdout.contains("8 operations in"), "{ran}");
    // Lines of different patrons race, so which of the three borrowers is
    // turned away varies; that one is is certain.
    assert!(
        ran.stdout.contains("rejected: loan not_available ×1"),
        "{ran}"
    );
    let html = std::fs::read_to_string(&report.0).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert_eq!(html.matches("<svg").count(), 2, "two charts");
    assert!(!html.contains("<script"), "no script at all");

    // The same again as JSON (the state moved on: marta's loan is back).
    let ran = bibliomq(&app, &["--json", "run", file.path(), "--wait"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    let summary = ran.json();
    assert_eq!(summary["operations"], 8);
    assert_eq!(summary["malformed"], 1);
    assert_eq!(summary["kinds"]["task"]["ok"], 1);
    assert_eq!(summary["total"]["failed"], 2);
    let lines: Vec<i64> = summary["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, vec![4, 8]);
    assert!(summary["total"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(summary["throughput_per_s"].as_f64().unwrap() > 0.0);

    // Only checking the file sends nothing.
    let tasks = || async {
        let page: Value = app.get("/v1/tasks?limit=500").await.json().await.unwrap();
        page["tasks"].as_array().unwrap().len()
    };
    let before = tasks().await;
    let ran = bibliomq(&app, &["run", file.path(), "--dry-run"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stdout.contains("7 operations, 1 malformed lines"),
        "{ran}"
    );
    assert_eq!(tasks().await, before);

    // A file from standard input, paced.
    let ran = run_with(
        &app.url(""),
        &[],
        &["run", "-", "--rate", "50"],
        Some("TASK fib 20\nTAREA upper hola\nTASK sum 1,1\n"),
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("-: 3 operations in"), "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_request_files_replay_without_failures() {
    let app = spawn_app().await;
    app.seed(20, 20).await;
    for sample in ["central.txt", "norte.txt"] {
        let path = format!("{}/samples/{sample}", env!("CARGO_MANIFEST_DIR"));
        let ran = bibliomq(
            &app,
            &["--json", "run", &path, "--wait", "--concurrency", "4"],
        )
        .await;
        assert_eq!(ran.code, 0, "{sample}: {ran}");
        let summary = ran.json();
        assert_eq!(summary["total"]["failed"], 0, "{sample}: {summary}");
        for kind in ["loan", "renewal", "return", "task"] {
            assert!(
                summary["kinds"][kind]["ok"].as_u64().unwrap() >= 1,
                "{sample} {kind}: {summary}"
            );
        }
    }
    // Everything lent was returned.
    let open: i64 = app
        .env
        .db()
        .await
        .query_one("SELECT count(*) FROM loans WHERE returned_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_the_token_the_api_requires() {
    let token = "cli-test-token";
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.token = Some(bibliomq_core::config::ApiToken(token.into())),
        0,
    )
    .await;
    let ran = bibliomq(&app, &["branches"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("401 unauthorized"), "{ran}");
    assert!(
        ran.stderr
            .contains("hint: the API wants a token: set BIBLIOMQ_API_TOKEN or pass --token"),
        "{ran}"
    );
    let ran = run_with(
        &app.url(""),
        &[("BIBLIOMQ_API_TOKEN", token)],
        &["branches"],
        None,
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let ran = bibliomq(&app, &["--token", token, "--json", "branches"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["branches"][0]["code"], "central");
    let ran = bibliomq(&app, &["status"]).await;
    assert_eq!(ran.code, 0, "readiness stays open: {ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_add_titles_copies_and_patrons_withdraw_block_show_and_list() {
    let app = spawn_app().await;

    let ran = bibliomq(
        &app,
        &[
            "title",
            "add",
            "0-14-044913-2",
            "--title",
            "Crime and Punishment",
            "--author",
            "F. Author",
            "--year",
            "1866",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("9780140449136"), "{ran}");
    let ran = bibliomq(&app, &["title", "add", "9780140449137", "--title", "Bad"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stderr.contains("invalid_isbn") || ran.stderr.contains("check digit"),
        "{ran}"
    );

    let ran = bibliomq(
        &app,
        &[
            "--json",
            "copy",
            "add",
            "9780140449136",
            "--branch",
            "norte",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let barcode = ran.json()["barcode"].as_str().unwrap().to_owned();
    let ran = bibliomq(
        &app,
        &[
            "copy",
            "add",
            "9780140449136",
            "--branch",
            "central",
            "--barcode",
            "CEN-X1",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("CEN-X1"), "{ran}");
    let ran = bibliomq(&app, &["copy", "withdraw", &barcode]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("withdrawn copy"), "{ran}");

    let ran = bibliomq(
        &app,
        &[
            "patron",
            "add",
            "lucia",
            "--name",
            "Lucía Prieto",
            "--email",
            "lucia@example.org",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let ran = bibliomq(
        &app,
        &["patron", "block", "lucia", "--reason", "unpaid fines"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let ran = bibliomq(&app, &["--json", "patron", "show", "lucia"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["blocked"]["reason"], "unpaid fines");
    let ran = bibliomq(
        &app,
        &[
            "loan",
            "9780140449136",
            "--patron",
            "lucia",
            "--branch",
            "central",
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("blocked"), "{ran}");
    let ran = bibliomq(&app, &["patron", "unblock", "lucia"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("not blocked"), "{ran}");

    for id in ["luis", "luna"] {
        let ran = bibliomq(&app, &["patron", "add", id, "--name", id]).await;
        assert_eq!(ran.code, 0, "{ran}");
    }
    let ran = bibliomq(&app, &["patron", "list", "lu", "--limit", "2"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.contains("more: --cursor luis"), "{ran}");
    let ran = bibliomq(
        &app,
        &["--json", "patron", "list", "lu", "--limit", "2", "--all"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let ids: Vec<String> = ran.json()["patrons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["lucia", "luis", "luna"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_run_twice_changes_nothing_the_second_time_and_reports_rejects_by_line() {
    let app = spawn_app().await;
    let mut csv = String::from("isbn,title,authors,year\n");
    for i in 0..25u32 {
        let isbn = bibliomq_core::library::Isbn::from_prefix12(&format!("978000{i:06}")).unwrap();
        csv.push_str(&format!(
            "{isbn},Title {i},Author A; Author B,{}\n",
            1900 + i
        ));
    }
    // Lines 27, 28 and 29: a bad check digit, a year that is not one, no title.
    csv.push_str("9780140449137,Bad,,\n");
    csv.push_str("9780306406157,\"Quoted, with a comma\",,soon\n");
    csv.push_str("9781234567897,,,\n");
    let file = TempFile::with("titles.csv", &csv);

    let ran = bibliomq(
        &app,
        &["--json", "import", "titles", file.path(), "--batch", "10"],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    let first = ran.json();
    assert_eq!(first["created"], 25, "{first}");
    let lines: Vec<(u64, &str)> = first["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            (27, "invalid_isbn"),
            (28, "invalid_year"),
            (29, "missing_field")
        ]
    );

    let ran = bibliomq(&app, &["import", "titles", file.path(), "--batch", "7"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stdout
            .starts_with("titles: 0 created, 0 updated, 25 unchanged, 3 rejected"),
        "{ran}"
    );
    assert!(ran.stdout.contains("line 27: invalid_isbn (isbn)"), "{ran}");

    let patrons = TempFile::with(
        "patrons.csv",
        "id,name,email\nana2,Ana Two,ana2@example.org\nbeto,Beto,\nBad Id,X,\n",
    );
    let ran = bibliomq(&app, &["--json", "import", "patrons", patrons.path()]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert_eq!(ran.json()["created"], 2, "{ran}");
    assert_eq!(ran.json()["rejected"][0]["line"], 4, "{ran}");
    let ran = bibliomq(&app, &["--json", "import", "patrons", patrons.path()]).await;
    assert_eq!(ran.json()["unchanged"], 2, "{ran}");

    let ran = bibliomq(&app, &["import", "patrons", file.path()]).await;
    assert_eq!(ran.code, 2, "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_place_list_and_cancel_through_the_cli() {
    let app = spawn_app().await;
    app.seed(0, 12).await;
    for patron in ["marta", "jorge"] {
        let ran = bibliomq(
            &app,
            &["loan", CRIMEN, "--patron", patron, "--branch", "central"],
        )
        .await;
        assert_eq!(ran.code, 0, "{ran}");
    }
    let ran = bibliomq(
        &app,
        &[
            "hold", "place", CRIMEN, "--patron", "lucia", "--branch", "norte",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("placed hold "), "{ran}");
    assert!(ran.stdout.contains("number 1 in the queue"), "{ran}");
    let ran = bibliomq(&app, &["--json", "hold", "list", "--isbn", CRIMEN]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let hold = ran.json()["holds"][0].clone();
    assert_eq!(hold["patron"], "lucia", "{ran}");
    assert_eq!(hold["position"], 1, "{ran}");
    let id = hold["id"].as_str().unwrap().to_owned();
    let ran = bibliomq(&app, &["hold", "list", "--patron", "lucia"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.contains(&id) && ran.stdout.contains("waiting"),
        "{ran}"
    );

    // A rule's refusal exits 1 with the API's message and code.
    let ran = bibliomq(
        &app,
        &[
            "hold", "place", CRIMEN, "--patron", "marta", "--branch", "norte",
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stderr.contains("already has Crimen y castigo on loan"),
        "{ran}"
    );
    assert!(ran.stderr.contains("(409 already_on_loan)"), "{ran}");

    let ran = bibliomq(&app, &["hold", "cancel", &id, "--patron", "lucia"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(ran.stdout.starts_with("cancelled hold "), "{ran}");
    let ran = bibliomq(&app, &["--json", "hold", "cancel", &id]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert_eq!(ran.json()["already_cancelled"], true, "{ran}");
    let unknown = uuid::Uuid::new_v4().to_string();
    let ran = bibliomq(&app, &["hold", "cancel", &unknown]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("(404 hold_not_found)"), "{ran}");
    let ran = bibliomq(&app, &["hold", "list"]).await;
    assert_eq!(ran.code, 2, "give --patron or --isbn: {ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_submit_file_streams_batches_and_names_the_bad_line_of_a_refused_batch() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    // Batches of 3: lines 1-3 (good), 4-7 with a blank line skipped and
    // line 6 not JSON (refused whole, not sent), 8 (good, but a bad action
    // at the server refuses it).
    let file = TempFile::with(
        "tasks.ndjson",
        concat!(
            "{\"action\": \"sum\", \"payload\": \"1,2\"}\n",
            "{\"action\": \"upper\", \"payload\": \"hola\"}\n",
            "{\"action\": \"fib\", \"payload\": 10}\n",
            "{\"action\": \"sum\", \"payload\": \"3,4\"}\n",
            "\n",
            "{\"action\": \"sum\", \"payload\": \n",
            "{\"action\": \"sum\", \"payload\": \"5,6\"}\n",
            "{\"action\": \"teleport\", \"payload\": 1}\n",
        ),
    );
    let ran = bibliomq(
        &app,
        &["task", "submit", "--file", file.path(), "--batch-size", "3"],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stdout.starts_with("submitted 3 tasks in 1 batch"),
        "{ran}"
    );
    assert!(
        ran.stdout
            .contains("refused 2 batches (4 tasks, none of them queued)"),
        "{ran}"
    );
    assert!(ran.stdout.contains("  line 6: not a JSON object"), "{ran}");
    assert!(ran.stdout.contains("  line 8: unknown action"), "{ran}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 3);

    let ran = bibliomq(&app, &["--json", "task", "submit", "--file", file.path()]).await;
    assert_eq!(ran.code, 1, "{ran}");
    let summary = ran.json();
    assert_eq!(summary["submitted"], 0, "{summary}");
    assert_eq!(summary["refused_batches"], 1, "{summary}");
    assert_eq!(summary["refused"][0]["line"], 6, "{summary}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 3);

    let good = TempFile::with(
        "good.ndjson",
        &(0..25)
            .map(|i| format!("{{\"action\": \"sum\", \"payload\": \"{i},1\"}}\n"))
            .collect::<String>(),
    );
    let ran = bibliomq(
        &app,
        &[
            "--json",
            "task",
            "submit",
            "--file",
            good.path(),
            "--batch-size",
            "10",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let summary = ran.json();
    assert_eq!(
        (summary["submitted"].as_u64(), summary["batches"].as_u64()),
        (Some(25), Some(3))
    );
    assert_eq!(summary["ids"].as_array().unwrap().len(), 25);
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 28);
}

/// `bibliomq events` follows the live feed: it says on stderr once it is
/// following, then prints each event that matches as it comes (one JSON
/// object a line with `--json`), and stops after `--count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_the_live_outcomes_as_they_come() {
    use tokio::io::AsyncBufReadExt;

    let app = spawn_app().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bibliomq"))
        .args([
            "--json",
            "events",
            "--keys",
            "task.succeeded",
            "--count",
            "2",
        ])
        .env("BIBLIOMQ_API_URL", app.url(""))
        .env_remove("BIBLIOMQ_API_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(bibliomq_testkit::app::DEADLINE, stderr.next_line())
        .await
        .expect("the client never said it was following")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(first, "following task.succeeded (Ctrl-C to stop)");
    // Everything finished after that line is in the feed.
    let a = app
        .submit("sum", serde_json::json!([1, 2]))
        .await
        .to_string();
    let b = app
        .submit("upper", serde_json::json!("x"))
        .await
        .to_string();
    let out = tokio::time::timeout(bibliomq_testkit::app::DEADLINE, child.wait_with_output())
        .await
        .expect("the client did not stop after two events")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["routing_key"], "task.succeeded", "{l}");
            l["event"]["task_id"].as_str().unwrap()
        })
        .collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);

    let ran = bibliomq(&app, &["events", "--keys", "task..x"]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(ran.stderr.contains("is not a routing key pattern"), "{ran}");
}
