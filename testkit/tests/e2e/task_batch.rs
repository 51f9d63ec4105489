//! Batch submission (`POST /v1/tasks/batch`): all queued or none, every
//! item checked as a single submission is, errors by index.

use std::time::Duration;

use bibliomq_core::{
    broker::{headers, topology},
    metrics::MessageOutcome,
    tasks::{BUNDLE_KIND, BUNDLE_ROUTING_KEY},
};
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, KillableWorker, Worker, wait_until},
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
    // The first batch in one bundle of three, the second's new task alone.
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        2
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
        2,
        "nothing more queued"
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

// ---- Bundles: a batch's tasks travel several to a message -------------

/// A batch of `n` `sum` tasks (item i sums i and 1) with a `sleep` of
/// `sleep_ms` at index `at`; answers the ids in order.
async fn batch_with_a_sleeper(
    app: &TestApp,
    n: usize,
    at: usize,
    sleep_ms: u64,
) -> Vec<uuid::Uuid> {
    let batch: Vec<Value> = (0..n)
        .map(|i| {
            if i == at {
                json!({"action": "sleep", "payload": sleep_ms})
            } else {
                json!({"action": "sum", "payload": format!("{i},1")})
            }
        })
        .collect();
    let (status, answer) = app.post("/v1/tasks/batch", &Value::Array(batch)).await;
    assert_eq!(status, 202, "{answer}");
    ids_of(&answer)
        .iter()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// Waits until `n` of the test's tasks are `succeeded`.
async fn wait_for_succeeded(app: &TestApp, n: i64) {
    let done = wait_until(DEADLINE * 2, || async {
        let got = app
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await;
        (got == n).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{} of {n} tasks succeeded",
        app.count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await
    );
}

/// Every task but the sleeper ran once, and summed what it was given.
async fn each_sum_ran_once(app: &TestApp, ids: &[uuid::Uuid], sleeper: usize) {
    for (i, id) in ids.iter().enumerate() {
        let task = app.task(*id).await;
        assert_eq!(task["state"], "succeeded", "item {i}: {task}");
        if i != sleeper {
            assert_eq!(task["attempts"], 1, "item {i} ran again: {task}");
            assert_eq!(task["result"], json!(i + 1), "item {i}: {task}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_travels_in_bundles_of_a_hundred_and_every_task_runs_once() {
    let mut app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let ids = batch_with_a_sleeper(&app, 250, usize::MAX, 0).await;
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        3,
        "250 tasks in three messages"
    );
    app.workers.push(Worker::start(app.env.settings()).await);
    wait_for_succeeded(&app, 250).await;
    each_sum_ran_once(&app, &ids, usize::MAX).await;
    let metrics = &app.workers[0].metrics;
    assert_eq!(
        metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Acked),
        250
    );
    // Stopping the worker hands back anything it had not acked.
    app.workers.pop().unwrap().stop().await;
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0,
        "every bundle was acked"
    );
}

/// The worker dies holding a bundle (one: 100 tasks) whose other tasks are
/// all committed:
/// the bundle comes again, is split, and only the unfinished task runs
/// again; the finished ones are acked as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_whose_worker_is_killed_is_split_and_only_its_unfinished_task_runs_again() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let doomed = KillableWorker::start(app.env.settings()).await;
    let ids = batch_with_a_sleeper(&app, 100, 7, 3_000).await;
    app.wait_for_task_state(ids[7], &["running"]).await;
    wait_for_succeeded(&app, 99).await;
    doomed.kill();

    let survivor = Worker::start(app.env.settings()).await;
    wait_for_succeeded(&app, 100).await;
    each_sum_ran_once(&app, &ids, 7).await;
    assert_eq!(app.task(ids[7]).await["attempts"], 2);
    let metrics = &survivor.metrics;
    assert_eq!(
        metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Split),
        1
    );
    assert_eq!(
        metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Duplicate),
        99,
        "the first bundle's finished tasks came again, and were not run"
    );
    survivor.stop().await;
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
}

/// Shutdown past the drain time: the unfinished task asks for its message
/// back, the bundle is requeued whole once its other tasks are done, and
/// the next worker splits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_bundle_gives_the_bundle_back_and_the_next_worker_finishes_it() {
    let env = TestEnv::new().await;
    let mut app = TestApp::spawn(
        env,
        |s| s.tasks.drain_timeout = Duration::from_millis(200),
        1,
    )
    .await;
    let ids = batch_with_a_sleeper(&app, 60, 30, 5_000).await;
    app.wait_for_task_state(ids[30], &["running"]).await;
    wait_for_succeeded(&app, 59).await;
    let stopped = app.workers.pop().unwrap();
    let metrics = stopped.metrics.clone();
    stopped.stop().await;
    assert_eq!(
        metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Requeued),
        1
    );
    assert_eq!(app.task(ids[30]).await["state"], "running");

    app.workers.push(Worker::start(app.env.settings()).await);
    wait_for_succeeded(&app, 60).await;
    each_sum_ran_once(&app, &ids, 30).await;
    assert_eq!(app.task(ids[30]).await["attempts"], 2);
}

/// A task cancelled while it runs in a bundle ends `cancelled`; the
/// bundle's other tasks succeed and the bundle is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_inside_a_bundle_ends_cancelled_and_the_bundle_is_acked() {
    let mut app = spawn_app().await;
    let ids = batch_with_a_sleeper(&app, 40, 3, 30_000).await;
    app.wait_for_task_state(ids[3], &["running"]).await;
    let (status, answer) = app
        .post(&format!("/v1/tasks/{}/cancel", ids[3]), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "{status} {answer}");
    let task = app.wait_for_task_state(ids[3], &["cancelled"]).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    wait_for_succeeded(&app, 39).await;
    app.workers.pop().unwrap().stop().await;
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0,
        "the bundle was acked"
    );
    assert_eq!(app.task(ids[3]).await["state"], "cancelled");
}

/// A passing failure of one task in a bundle (its large result cannot be
/// stored yet) sends that task alone to the retry queue; the bundle's
/// other tasks succeed at once, and the retried one once storage is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_failure_inside_a_bundle_retries_that_task_alone() {
    let (app, bucket) = TestApp::spawn_with_missing_bucket(6).await;
    let batch = json!([
        {"action": "upper", "payload": "a result longer than sixteen bytes"},
        {"action": "sum", "payload": "1,2"},
        {"action": "upper", "payload": "ab"},
    ]);
    let (status, answer) = app.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<uuid::Uuid> = ids_of(&answer).iter().map(|i| i.parse().unwrap()).collect();
    wait_for_succeeded(&app, 2).await;
    let metrics = &app.workers[0].metrics;
    wait_until(DEADLINE, || async {
        (metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Retried) >= 1).then_some(())
    })
    .await
    .expect("the storage failure was never retried");
    assert_eq!(app.task(ids[0]).await["state"], "queued");

    app.env.create_bucket(&bucket).await;
    let task = app.wait_for_task(ids[0]).await;
    app.env.delete_bucket(&bucket).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(task["attempts"].as_i64().unwrap() >= 2, "{task}");
    assert_eq!(task["result_object"]["bucket"], bucket);
    assert_eq!(app.task(ids[1]).await["attempts"], 1);
    assert_eq!(app.task(ids[2]).await["result"], "AB");
}

/// A bundle that dies whole (here: moved to the dead-letter exchange as
/// the broker's delivery limit would) is listed under its own id and
/// routing key, and its replay runs its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_bundle_is_listed_whole_and_its_replay_runs_its_tasks() {
    let mut app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let url = app.env.amqp_url();
    let ids = batch_with_a_sleeper(&app, 5, usize::MAX, 0).await;
    let bundle = rabbit::take_one(&url, topology::TASKS_QUEUE)
        .await
        .expect("the batch's bundle is queued");
    assert_eq!(bundle.delivery.routing_key.as_str(), BUNDLE_ROUTING_KEY);
    let bundle_id = bundle
        .delivery
        .properties
        .message_id()
        .clone()
        .unwrap()
        .to_string();
    rabbit::publish_raw(
        &url,
        topology::DEAD_LETTER_EXCHANGE,
        BUNDLE_ROUTING_KEY,
        &bundle.delivery.data,
        bundle.delivery.properties.clone(),
    )
    .await;

    let listed = wait_until(DEADLINE, || async {
        let (status, list) = app.get_json("/v1/dead-letters?queue=tasks").await;
        assert_eq!(status, 200, "{list}");
        (list["total"] == 1).then_some(list)
    })
    .await
    .expect("the dead bundle was never listed");
    assert_eq!(listed["dead_letters"][0]["id"], bundle_id, "{listed}");
    assert_eq!(
        listed["dead_letters"][0]["routing_key"], BUNDLE_ROUTING_KEY,
        "{listed}"
    );

    let (status, replayed) = app
        .post(
            "/v1/dead-letters/replay",
            &json!({"queue": "tasks", "ids": [bundle_id]}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    app.workers.push(Worker::start(app.env.settings()).await);
    wait_for_succeeded(&app, 5).await;
    each_sum_ran_once(&app, &ids, usize::MAX).await;
}

/// A bundle that cannot be read is dead-lettered whole, and the worker
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_bundle_is_dead_lettered_and_the_worker_carries_on() {
    let app = spawn_app().await;
    let url = app.env.amqp_url();
    rabbit::publish_raw(
        &url,
        topology::TASKS_EXCHANGE,
        BUNDLE_ROUTING_KEY,
        br#"{"tasks": 7}"#,
        headers::persistent_json("a-bad-bundle", "test").with_type(BUNDLE_KIND.into()),
    )
    .await;
    let dead = wait_until(DEADLINE, || async {
        rabbit::take_one(&url, topology::TASKS_DEAD_QUEUE).await
    })
    .await
    .expect("the unreadable bundle never reached the dead-letter queue");
    assert_eq!(dead.delivery.data, br#"{"tasks": 7}"#);
    let ids = batch_with_a_sleeper(&app, 3, usize::MAX, 0).await;
    wait_for_succeeded(&app, 3).await;
    each_sum_ran_once(&app, &ids, usize::MAX).await;
}

/// Single submissions that come while earlier ones wait for their confirms
/// are published together, in bundles; each task still runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_submissions_that_come_together_run_once_each_whatever_bundles_they_form() {
    let mut app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let submits = (0..200).map(|i| {
        let app = &app;
        async move { (i, app.submit("sum", json!(format!("{i},1"))).await) }
    });
    let ids = futures::future::join_all(submits).await;
    let messages = rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await;
    assert!(
        (1..=200).contains(&messages),
        "{messages} messages for 200 tasks"
    );
    app.workers.push(Worker::start(app.env.settings()).await);
    wait_for_succeeded(&app, 200).await;
    for (i, id) in ids {
        let task = app.task(id).await;
        assert_eq!(task["result"], json!(i + 1), "{task}");
        assert_eq!(task["attempts"], 1, "{task}");
    }
    assert_eq!(
        app.workers[0]
            .metrics
            .message_count(topology::TASKS_QUEUE, MessageOutcome::Acked),
        200
    );
}

/// The outcome events of tasks that finish together share messages on
/// `bibliomq.events` (AMQP `type` `bibliomq.event-bundle`, a JSON array),
/// and a follower of the exchange still gets each event once, on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_events_that_come_together_share_a_message_and_followers_get_each_once() {
    use bibliomq_core::broker::events::EVENT_BUNDLE_KIND;
    use lapin::{
        Connection, ConnectionProperties,
        options::{QueueBindOptions, QueueDeclareOptions},
        types::FieldTable,
    };
    const N: usize = 300;
    let app = spawn_app().await;
    // A queue of the test's own on the exchange, to read the messages as
    // they travel; and a follower, as the dashboard and the edge follow it.
    let raw = "test-raw-task-events";
    let conn = Connection::connect(&app.env.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        raw.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        raw.into(),
        topology::EVENTS_EXCHANGE.into(),
        "task.succeeded".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut follower =
        crate::library::watch(&app.env, topology::EVENTS_EXCHANGE, &["task.succeeded"]).await;

    let batch: Vec<Value> = (0..N)
        .map(|i| json!({"action": "sum", "payload": format!("{i},1")}))
        .collect();
    let (status, answer) = app.post("/v1/tasks/batch", &Value::Array(batch)).await;
    assert_eq!(status, 202, "{answer}");
    let ids: std::collections::HashSet<String> = ids_of(&answer).into_iter().collect();

    // The follower: every task's event, each once.
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + DEADLINE * 4;
    while seen.len() < N {
        let event = tokio::time::timeout_at(deadline, follower.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {N} events followed", seen.len()))
            .unwrap();
        assert_eq!(event.routing_key, "task.succeeded");
        let event: Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(event["type"], "task.succeeded", "{event}");
        *seen
            .entry(event["task_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(seen.keys().all(|id| ids.contains(id)));
    assert!(seen.values().all(|n| *n == 1), "an event followed twice");

    // The messages: as many events as tasks, in fewer messages, bundles
    // among them, each bundle an array of events.
    let (mut messages, mut bundles, mut events) = (0, 0, 0);
    while events < N {
        let Some(message) = rabbit::take_one(&app.env.amqp_url(), raw).await else {
            wait_until(DEADLINE, || async {
                (rabbit::ready_count(&app.env.amqp_url(), raw).await > 0).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{events} of {N} events in {messages} messages"));
            continue;
        };
        messages += 1;
        // Transient: the followers' queues are not durable either.
        assert_eq!(message.properties.delivery_mode(), &Some(1));
        if headers::has_type(&message.properties, EVENT_BUNDLE_KIND) {
            bundles += 1;
            let inside: Vec<Value> = serde_json::from_slice(&message.data).unwrap();
            assert!(inside.len() > 1);
            assert!(inside.iter().all(|e| e["type"] == "task.succeeded"));
            events += inside.len();
        } else {
            let event: Value = serde_json::from_slice(&message.data).unwrap();
            assert_eq!(event["type"], "task.succeeded");
            events += 1;
        }
    }
    assert_eq!(events, N);
    assert_eq!(rabbit::ready_count(&app.env.amqp_url(), raw).await, 0);
    assert!(
        bundles > 0 && messages < N,
        "{messages} messages, {bundles} bundles"
    );
    let _ = conn.close(200, "bye".into()).await;
}
