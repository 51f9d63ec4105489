//! Task control through the edge: ZeroMQ `task_cancel`, and the
//! Idempotency-Key as a field of the ZeroMQ `task` request and of NDJSON lines.

use std::time::Duration;

use bibliomq_testkit::{LineClient, app::wait_until};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ask, spawn_with_edge};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancel_stops_a_running_task_and_answers_like_http() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let id = app.submit("sleep", json!(60_000)).await;
    app.wait_for_task_state(id, &["running"]).await;

    let reply = ask(
        &endpoint,
        json!({"action": "task_cancel", "id": id.to_string()}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["state"], "running");
    assert_eq!(reply["stopping"], true);
    wait_until(Duration::from_secs(5), || async {
        (app.task(id).await["state"] == "cancelled").then_some(())
    })
    .await
    .expect("the task was not cancelled within 5 s");
    let again = ask(
        &endpoint,
        json!({"action": "task_cancel", "id": id.to_string()}),
    )
    .await;
    assert_eq!(
        again,
        json!({"ok": true, "id": id.to_string(), "state": "cancelled", "stopping": false})
    );
    let status = ask(
        &endpoint,
        json!({"action": "task_status", "id": id.to_string()}),
    )
    .await;
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["task_error_code"], "cancelled", "{status}");

    // A finished task, an unknown one, and an id that is none.
    let done = app.submit("sum", json!([1, 2])).await;
    app.wait_for_task(done).await;
    let refused = ask(
        &endpoint,
        json!({"action": "task_cancel", "id": done.to_string()}),
    )
    .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "task_finished");
    assert_eq!(refused["error"]["state"], "succeeded");
    let unknown = ask(
        &endpoint,
        json!({"action": "task_cancel", "id": Uuid::now_v7().to_string()}),
    )
    .await;
    assert_eq!(unknown["error"]["code"], "task_not_found", "{unknown}");
    let bad = ask(&endpoint, json!({"action": "task_cancel", "id": "x"})).await;
    assert_eq!(bad["error"]["code"], "invalid_task_id", "{bad}");
    assert_eq!(app.task(done).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeromq_task_with_an_idempotency_key_runs_once() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let request =
        json!({"action": "task", "task": "upper", "payload": "hola", "idempotency_key": "zmq-k1"});
    let first = ask(&endpoint, request.clone()).await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["result"], "HOLA");
    let second = ask(&endpoint, request).await;
    assert_eq!(second["id"], first["id"], "{second}");
    assert_eq!(second["result"], "HOLA");

    let other = ask(
        &endpoint,
        json!({"action": "task", "task": "upper", "payload": "adiós", "idempotency_key": "zmq-k1"}),
    )
    .await;
    assert_eq!(other["ok"], false, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);

    // A time limit through ZeroMQ too, over the maximum: refused, naming it.
    let over = ask(
        &endpoint,
        json!({"action": "task", "task": "sleep", "payload": 10, "timeout_ms": 10_000_000}),
    )
    .await;
    assert_eq!(over["error"]["code"], "invalid_timeout", "{over}");
    assert_eq!(over["error"]["field"], "timeout_ms");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lines_with_one_idempotency_key_make_one_task() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    let mut client = LineClient::connect(edge.ndjson_addr()).await;
    for n in 1..=2 {
        let line = json!({"id": n, "action": "sum", "payload": "1,2,3", "idempotency_key": "nd-1"});
        let answer: Value = serde_json::from_str(&client.ask(&line.to_string()).await).unwrap();
        assert_eq!(
            answer,
            json!({"id": n, "status": "done", "result": {"ok": true, "data": 6}})
        );
    }
    let reused = json!({"id": 3, "action": "sum", "payload": "1,2", "idempotency_key": "nd-1"});
    let answer: Value = serde_json::from_str(&client.ask(&reused.to_string()).await).unwrap();
    assert_eq!(
        answer["result"]["code"], "idempotency_key_reused",
        "{answer}"
    );
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);

    // A task stopped by its time limit is answered with the `timeout` code.
    let limited = json!({"id": 4, "action": "sleep", "payload": 5_000, "timeout_ms": 50});
    let answer: Value = serde_json::from_str(&client.ask(&limited.to_string()).await).unwrap();
    assert_eq!(answer["status"], "error", "{answer}");
    assert_eq!(answer["result"]["code"], "timeout", "{answer}");
}
