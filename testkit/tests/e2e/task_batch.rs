//! Batch submission (`POST /v1/tasks/batch`): all queued or none, every
//! item checked as a single submission is, errors by index.

use bibliomq_core::broker::topology;
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    rabbit, spawn_app,
};
use serde_json::{Value, json};

/// Nothing of the test's tasks is in PostgreSQL or in the task queue.
async fn nothing_queued(app: &TestApp) {
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
}

fn ids_of(answer: &Value) -> Vec<String> {
    answer["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {answer}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_thousand_tasks_is_answered_in_order_and_every_task_runs() {
    let app = spawn_app().await;
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"action": "sum", "payload": format!("{i},1000")}))
        .collect();
    let (status, answer) = app.post("/v1/tasks/batch", &Value::Array(batch)).await;
    assert_eq!(status, 202, "{answer}");
    let ids = ids_of(&answer);
    assert_eq!(ids.len(), 1000);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 1000, "every task has its own id");
    for t in answer["tasks"].as_array().unwrap() {
        assert_eq!(
            (t["action"].as_str(), t["state"].as_str()),
            (Some("sum"), Some("queued"))
        );
        assert_eq!(
            t["links"]["self"],
            format!("/v1/tasks/{}", t["id"].as_str().unwrap())
        );
    }

    let done = wait_until(DEADLINE * 4, || async {
        let n = app
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await;
        (n == 1000).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} of 1000 tasks succeeded",
        app.count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await
    );
    // In the order sent: item i summed i and 1000.
    for i in [0usize, 1, 499, 998, 999] {
        let task = app.task(ids[i].parse().unwrap()).await;
        assert_eq!(task["result"], json!(i + 1000), "item {i}: {task}");
        assert_eq!(task["attempts"], 1);
    }
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_refuses_the_batch_with_errors_by_index_and_queues_nothing() {
    // No worker: whatever were queued would stay visible in the queue.
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let mut batch: Vec<Value> = (0..10)
        .map(|i| json!({"action": "sum", "payload": format!("{i},1")}))
        .collect();
    batch[3] = json!({"action": "teleport", "payload": 1});
    batch[7] = json!({"action": "fib", "payload": "not a number"});
    batch[8] = json!({"action": "sum", "payload": "1", "timeout_ms": 0});
    batch[9] = json!({"action": "sum", "payload": "1", "colour": "blue"});
    let (status, answer) = app.post("/v1/tasks/batch", &Value::Array(batch)).await;
    assert_eq!(status, 422, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], "invalid_tasks", "{answer}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing was queued")
    );
    let errors = error["errors"].as_array().unwrap();
    let by_index: Vec<(u64, &str, Option<&str>)> = errors
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
                e["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        by_index,
        vec![
            (3, "unknown_action", Some("action")),
            (7, "invalid_payload", Some("payload")),
            (8, "invalid_timeout", Some("timeout_ms")),
            (9, "invalid_field", Some("colour")),
        ],
        "{answer}"
    );
    nothing_queued(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_tasks_an_empty_batch_or_no_array_are_refused_clearly() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let one = json!({"action": "sum", "payload": "1,2"});
    let (status, answer) = app
        .post("/v1/tasks/batch", &Value::Array(vec![one.clone(); 1001]))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_tasks");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1000") && message.contains("1001"),
        "{message}"
    );

    let (status, answer) = app.post("/v1/tasks/batch", &json!([])).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("empty_batch"))
    );

    let (status, answer) = app.post("/v1/tasks/batch", &one).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_field");

    let (status, answer) = app.post("/v1/tasks/batch", &json!([one, 7])).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["errors"][0]["index"], 1, "{answer}");
    nothing_queued(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_with_idempotency_keys_are_queued_once_and_a_reused_key_refuses_the_batch() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let batch = json!([
        {"action": "sum", "payload": "1,2", "idempotency_key": "batch-a"},
        {"action": "upper", "payload": "hola"},
        {"action": "sum", "payload": "3,4", "idempotency_key": "batch-b"},
    ]);
    let (status, first) = app.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 202, "{first}");
    let first_ids = ids_of(&first);
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 3);

    // Sent again: the keyed items answer with their first tasks; the
    // unkeyed one is a new task.
    let (status, again) = app.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 202, "{again}");
    let again_ids = ids_of(&again);
    assert_eq!(again_ids[0], first_ids[0]);
    assert_eq!(again_ids[2], first_ids[2]);
    assert_ne!(again_ids[1], first_ids[1]);
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 4);
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        4
    );

    // A key reused for another request (here within the batch too):
    // refused by index (409, as a single submission's reused key), and the
    // batch's new items are not kept.
    let reused = json!([
        {"action": "sum", "payload": "5,6", "idempotency_key": "batch-c"},
        {"action": "sum", "payload": "9,9", "idempotency_key": "batch-a"},
        {"action": "sum", "payload": "7,7", "idempotency_key": "batch-c"},
    ]);
    let (status, answer) = app.post("/v1/tasks/batch", &reused).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_tasks", "{answer}");
    let errors = answer["error"]["errors"].as_array().unwrap();
    let refused: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refused,
        vec![(1, "idempotency_key_reused"), (2, "idempotency_key_reused")],
        "{answer}"
    );
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 4);
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE idempotency_key = 'batch-c'")
            .await,
        0
    );
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        4
    );
}

async fn queued_batch(db: &tokio_postgres::Client, n: i64) -> Vec<uuid::Uuid> {
    db.query(
        "INSERT INTO tasks (id, action, payload, state)
         SELECT gen_random_uuid(), 'sum', '\"1,2\"', 'queued' FROM generate_series(1, $1::int8)
         RETURNING id",
        &[&n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn still_there(db: &tokio_postgres::Client, ids: &[uuid::Uuid]) -> i64 {
    db.query_one("SELECT count(*) FROM tasks WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0)
}

/// A batch whose publish failed is withdrawn whole while every task still
/// waits, and not at all once a worker took one of them (the broker had
/// its message after all): then the batch stands accepted and nothing of
/// it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_withdrawn_whole_unless_a_worker_already_took_part_of_it() {
    use bibliomq_core::tasks::store::withdraw;
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let db = app.env.db().await;
    let pool = bibliomq_core::db::pool(&app.env.settings().database).unwrap();
    let mut client = pool.get().await.unwrap();

    let waiting = queued_batch(&db, 5).await;
    assert!(withdraw(&mut client, &waiting).await.unwrap());
    assert_eq!(still_there(&db, &waiting).await, 0, "withdrawn whole");

    let taken = queued_batch(&db, 5).await;
    db.execute(
        "UPDATE tasks SET state = 'running' WHERE id = $1",
        &[&taken[2]],
    )
    .await
    .unwrap();
    assert!(!withdraw(&mut client, &taken).await.unwrap());
    assert_eq!(
        still_there(&db, &taken).await,
        5,
        "accepted whole: nothing deleted"
    );
}
