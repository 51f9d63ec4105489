//! Real restarts of the machine's RabbitMQ and PostgreSQL while the system
//! runs. They disturb every other test, so they are `#[ignore]`d in the
//! parallel run and `scripts/test` runs them afterwards, one at a time.

use std::process::Command;

use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
};
use serde_json::{Value, json};

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

async fn submit_until_accepted(app: &TestApp, payload: &str) -> uuid::Uuid {
    wait_until(DEADLINE * 2, || async {
        let resp = app
            .post_json("/v1/tasks", &json!({"action": "upper", "payload": payload}))
            .await;
        if resp.status() == 202 {
            let v: Value = resp.json().await.unwrap();
            return v["id"].as_str().unwrap().parse().ok();
        }
        assert_eq!(
            resp.status(),
            503,
            "only 503 is acceptable while a dependency restarts"
        );
        None
    })
    .await
    .expect("the API never accepted work again")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's RabbitMQ; run alone (scripts/test does)"]
async fn the_system_carries_on_after_rabbitmq_restarts() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.submit("sleep", json!(50 + i)).await);
    }
    run("rabbitmqctl", &["-q", "stop_app"]);
    run("rabbitmqctl", &["-q", "start_app"]);
    run("rabbitmqctl", &["-q", "await_startup"]);
    ids.push(submit_until_accepted(&app, "after the restart").await);
    for id in ids {
        let task = app.wait_for_task(id).await;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's PostgreSQL; run alone (scripts/test does)"]
async fn the_system_carries_on_after_postgresql_restarts() {
    let app = TestApp::spawn(TestEnv::new().await, |s| s.tasks.max_retries = 8, 1).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.submit("sleep", json!(100 + i)).await);
    }
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
    ids.push(submit_until_accepted(&app, "after the restart").await);
    for id in ids {
        let task = app.wait_for_task(id).await;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
}
