//! Task control: cancel (queued, running, racing the claim, finished,
//! unknown), time limits, and idempotent submissions, over HTTP on the real
//! services.

use std::time::Duration;

use bibliomq_core::{
    broker::topology,
    metrics::{MessageOutcome, PublishLabels, PublishOutcome},
};
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, Worker, status_and_json, wait_until},
    process::WorkerProcess,
    rabbit, spawn_app,
};
use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::web::EventStream;

/// How soon a running task must end after its cancel: the workers look for
/// cancel requests every 200 ms; the rest is slack for a busy machine.
const STOP_BOUND: Duration = Duration::from_secs(5);

async fn cancel(app: &TestApp, id: impl std::fmt::Display) -> (u16, Value) {
    app.post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await
}

/// Polls the task until `state`, failing the test after `within`.
async fn wait_for_state(app: &TestApp, id: Uuid, state: &str, within: Duration) -> Value {
    wait_until(within, || async {
        let task = app.task(id).await;
        (task["state"] == state).then_some(task)
    })
    .await
    .unwrap_or_else(|| {
        panic!("task {id} was not {state} within {within:?}");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_task_never_runs_and_its_message_is_acked_unrun() {
    // No worker yet: the task stays queued until it is cancelled.
    let mut app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let mut events = EventStream::open(&app, "task.*").await;
    let id = app.submit("sum", json!("1,2,3")).await;

    let (status, first) = cancel(&app, id).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["state"], "cancelled");
    assert_eq!(first["stopping"], false);
    // Idempotent: the same answer again.
    let (status, again) = cancel(&app, id).await;
    assert_eq!((status, &again), (200, &first));
    let event = events.until("task.cancelled").await;
    assert_eq!(event["task_id"], id.to_string(), "{event}");
    assert_eq!(event["state"], "cancelled");

    // The worker that gets its message acks it without running it.
    let worker = Worker::start(app.env.settings()).await;
    let metrics = worker.metrics.clone();
    app.workers.push(worker);
    wait_until(DEADLINE, || async {
        (metrics.message_count(topology::TASKS_QUEUE, MessageOutcome::Duplicate) == 1).then_some(())
    })
    .await
    .expect("the worker never settled the cancelled task's message");
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
    let task = app.task(id).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    assert_eq!(task["error_code"], "cancelled");
    assert_eq!(task["attempts"], 0, "it never ran: {task}");
    assert!(task["started_at"].is_null(), "{task}");
    assert!(task["result"].is_null(), "{task}");

    // `?state=cancelled` lists it.
    let (status, list) = app.get_json("/v1/tasks?state=cancelled").await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&Value> = list["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["id"], id.to_string());
    let (_, counts) = app.get_json("/v1/dashboard/tasks").await;
    assert_eq!(counts["by_state"]["cancelled"], 1, "{counts}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sleep_is_stopped_and_ends_cancelled_within_a_bound() {
    let app = spawn_app().await;
    let mut events = EventStream::open(&app, "task.*").await;
    let id = app.submit("sleep", json!(60_000)).await;
    app.wait_for_task_state(id, &["running"]).await;

    let asked = tokio::time::Instant::now();
    let (status, answer) = cancel(&app, id).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "running");
    assert_eq!(answer["stopping"], true);
    let task = wait_for_state(&app, id, "cancelled", STOP_BOUND).await;
    assert!(asked.elapsed() < STOP_BOUND);
    assert_eq!(task["error_code"], "cancelled", "{task}");
    assert_eq!(task["attempts"], 1);
    assert!(task["result"].is_null());
    assert!(task["cancel_requested_at"].is_string(), "{task}");
    let event = events.until("task.cancelled").await;
    assert_eq!(event["task_id"], id.to_string(), "{event}");
    assert_eq!(event["attempts"], 1, "{event}");

    // Cancelling a cancelled task answers as the first cancel of a queued one.
    let (status, again) = cancel(&app, id).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["state"], "cancelled");
    // Its result is refused like a failed task's.
    let (status, body) = app.get_json(&format!("/v1/tasks/{id}/result")).await;
    assert_eq!(status, 409, "{body}");
    // The worker is free again.
    let next = app.submit("sum", json!([1, 2])).await;
    assert_eq!(app.wait_for_task(next).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_blocking_action_is_stopped_by_a_cancel() {
    let app = spawn_app().await;
    // A sieve to ten million checks its stop token every few thousand numbers.
    let ids: Vec<Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(app.submit("primes", json!(10_000_000)).await);
        }
        ids
    };
    let running = ids[0];
    app.wait_for_task_state(running, &["running", "succeeded"])
        .await;
    for id in &ids {
        let (status, answer) = cancel(&app, id).await;
        assert!([200, 202, 409].contains(&status), "{answer}");
    }
    for id in ids {
        let task = app.wait_for_task(id).await;
        assert!(
            ["cancelled", "succeeded"].contains(&task["state"].as_str().unwrap()),
            "{task}"
        );
        if task["state"] == "cancelled" {
            assert!(task["result"].is_null() && task["result_object"].is_null());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_claim_of_two_worker_processes_never_both_runs_and_cancels() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let _workers = WorkerProcess::start_many(&app.env.settings(), 2).await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::TASKS_QUEUE, 2).await;

    let mut cancels = Vec::new();
    for round in 0..40 {
        // Alternate an async action and a short blocking one.
        let id = if round % 2 == 0 {
            app.submit("sleep", json!(5)).await
        } else {
            app.submit("fib", json!(2_000)).await
        };
        // Vary the moment of the cancel around the claim.
        if round % 4 == 3 {
            tokio::task::yield_now().await;
        }
        cancels.push((id, cancel(&app, id).await));
    }
    let mut cancelled_queued = 0;
    for (id, (status, answer)) in cancels {
        let task = app.wait_for_task(id).await;
        let state = task["state"].as_str().unwrap();
        match status {
            // Cancelled before any worker claimed it: it never ran.
            200 => {
                cancelled_queued += 1;
                assert_eq!(state, "cancelled", "{answer} then {task}");
                assert_eq!(task["attempts"], 0, "{task}");
                assert!(task["started_at"].is_null(), "{task}");
            }
            // Claimed first: stopped, or it finished before the stop came.
            202 => assert!(["cancelled", "succeeded"].contains(&state), "{task}"),
            // It had already succeeded.
            409 => {
                assert_eq!(answer["error"]["code"], "task_finished", "{answer}");
                assert_eq!(state, "succeeded", "{task}");
            }
            other => panic!("cancel answered {other}: {answer}"),
        }
        match state {
            "cancelled" => {
                assert!(task["result"].is_null(), "ran and cancelled: {task}");
                assert_eq!(task["error_code"], "cancelled", "{task}");
            }
            "succeeded" => assert!(!task["result"].is_null(), "{task}"),
            other => panic!("ended {other}: {task}"),
        }
    }
    eprintln!("{cancelled_queued} of 40 were cancelled before a claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_finished_task_is_409_and_of_an_unknown_one_404_and_neither_changes_anything() {
    let app = spawn_app().await;
    let id = app.submit("sum", json!("1,2,3")).await;
    let before = app.wait_for_task(id).await;
    assert_eq!(before["state"], "succeeded");

    for _ in 0..2 {
        let (status, body) = cancel(&app, id).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "task_finished");
        assert_eq!(body["error"]["state"], "succeeded");
    }
    assert_eq!(app.task(id).await, before);

    let missing = Uuid::now_v7();
    let (status, body) = cancel(&app, missing).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "task_not_found");
    let (status, body) = cancel(&app, "not-a-task").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_time_limit_fails_with_timeout_after_one_attempt() {
    let app = spawn_app().await;
    let app = &app;
    let submit = |action: &str, payload: Value, timeout_ms: u64| {
        let body = json!({"action": action, "payload": payload, "timeout_ms": timeout_ms});
        async move {
            let (status, answer) = app.post("/v1/tasks", &body).await;
            assert_eq!(status, 202, "{answer}");
            answer["id"].as_str().unwrap().parse::<Uuid>().unwrap()
        }
    };
    // Inside a blocking action (the sieve on the blocking pool) and inside
    // an async one.
    let blocking = submit("primes", json!(10_000_000), 20).await;
    let sleeping = submit("sleep", json!(60_000), 100).await;
    // A limit the task keeps within changes nothing.
    let quick = submit("sum", json!([1, 2]), 30_000).await;
    for id in [blocking, sleeping] {
        let task = app.wait_for_task(id).await;
        assert_eq!(task["state"], "failed", "{task}");
        assert_eq!(task["error_code"], "timeout", "{task}");
        assert_eq!(task["attempts"], 1, "not retried: {task}");
        assert!(
            task["error"].as_str().unwrap().contains("time limit"),
            "{task}"
        );
    }
    let task = app.wait_for_task(quick).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(task["error_code"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_over_the_maximum_is_refused_with_400_and_nothing_is_queued() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.tasks.timeout_max = Duration::from_secs(1),
        1,
    )
    .await;
    for timeout in [json!(1_001), json!(0), json!(-5), json!("soon")] {
        let (status, body) = app
            .post(
                "/v1/tasks",
                &json!({"action": "sum", "payload": "1,2", "timeout_ms": timeout}),
            )
            .await;
        assert_eq!(status, 400, "{timeout}: {body}");
        assert_eq!(body["error"]["code"], "invalid_timeout", "{body}");
        assert_eq!(body["error"]["field"], "timeout_ms", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("1000"));
    }
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
    // At the maximum it is accepted, also written with a fraction (JSON
    // Schema's `integer` allows `1000.0`).
    for timeout in [json!(1_000), json!(1_000.0)] {
        let (status, body) = app
            .post(
                "/v1/tasks",
                &json!({"action": "sum", "payload": "1,2", "timeout_ms": timeout}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

async fn submit_with_key(app: &TestApp, key: &str, body: &Value) -> (u16, bool, Value) {
    let resp = app
        .http
        .post(app.url("/v1/tasks"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let (status, body) = status_and_json(resp).await;
    (status, replayed, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_submissions_with_one_key_make_one_task() {
    let app = spawn_app().await;
    let body = json!({"action": "fib", "payload": 90});
    let answers = join_all((0..10).map(|_| submit_with_key(&app, "retry-me-7", &body))).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, _, answer)| {
            assert_eq!(*status, 202, "{answer}");
            answer["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let replays = answers.iter().filter(|(_, replayed, _)| *replayed).count();
    assert_eq!(replays, 9, "{answers:?}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
    // The same answer, status and body alike.
    let first = &answers[0].2;
    assert!(answers.iter().all(|(_, _, a)| a == first), "{answers:?}");

    let id: Uuid = first["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.wait_for_task(id).await["state"], "succeeded");
    // After the task finished, the key still answers with it.
    let (status, replayed, again) = submit_with_key(&app, "retry-me-7", &body).await;
    assert_eq!((status, replayed, &again), (202, true, first));

    // The same key for a different request is refused, and nothing is queued.
    let (status, replayed, refused) =
        submit_with_key(&app, "retry-me-7", &json!({"action": "fib", "payload": 91})).await;
    assert_eq!((status, replayed), (409, false), "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    let (status, _, refused) = submit_with_key(
        &app,
        "retry-me-7",
        &json!({"action": "fib", "payload": 90, "timeout_ms": 5_000}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );

    // A malformed key is refused before anything is queued.
    let (status, _, bad) = submit_with_key(&app, "a key with spaces", &body).await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_idempotency_key");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_task_is_listed_then_replayed_and_succeeds_once_its_cause_is_gone() {
    let (app, bucket) = TestApp::spawn_with_missing_bucket(1).await;
    let id = app
        .submit("upper", json!("a result longer than sixteen bytes"))
        .await;
    let task = wait_for_state(&app, id, "dead", DEADLINE).await;
    assert_eq!(task["attempts"], 2, "{task}");

    // Listed, with where it went and why; listing takes nothing away.
    let listed = wait_until(DEADLINE, || async {
        let (status, list) = app.get_json("/v1/dead-letters?queue=tasks").await;
        assert_eq!(status, 200, "{list}");
        (list["total"] == 1).then_some(list)
    })
    .await
    .expect("the dead task was never listed");
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["id"], id.to_string(), "{listed}");
    assert_eq!(letter["routing_key"], "task.upper", "{listed}");
    assert_eq!(letter["attempts"], 2, "{listed}");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("gave up"),
        "{listed}"
    );
    assert!(letter["dead_at"].is_string(), "{listed}");
    let (_, again) = app.get_json("/v1/dead-letters?queue=tasks").await;
    assert_eq!(again["total"], 1, "{again}");
    assert_eq!(again["dead_letters"][0]["id"], id.to_string());

    // The cause removed, the replay runs it again and it succeeds.
    app.env.create_bucket(&bucket).await;
    let (status, replayed) = app
        .post(
            "/v1/dead-letters/replay",
            &json!({"queue": "tasks", "ids": [id.to_string()]}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], json!([id.to_string()]));
    let task = wait_for_state(&app, id, "succeeded", DEADLINE).await;
    assert_eq!(task["result_object"]["bucket"], bucket, "{task}");
    let (_, after) = app.get_json("/v1/dead-letters?queue=tasks").await;
    assert_eq!(after["total"], 0, "{after}");
    assert_eq!(after["dead_letters"], json!([]), "{after}");

    app.env.delete_bucket(&bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_with_a_cursor_and_a_replay_of_an_unknown_id_changes_nothing() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let url = app.env.amqp_url();
    rabbit::dead_task_letters(&url, (0..3).map(|n| format!("m{n}"))).await;
    let first = wait_until(DEADLINE, || async {
        let (_, list) = app.get_json("/v1/dead-letters?queue=tasks&limit=2").await;
        (list["total"] == 3).then_some(list)
    })
    .await
    .expect("the dead letters were never listed");
    let ids: Vec<&str> = first["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m0", "m1"], "{first}");
    assert_eq!(first["dead_letters"][0]["reason"], "given_up");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .get_json(&format!(
            "/v1/dead-letters?queue=tasks&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(second["dead_letters"][0]["id"], "m2", "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");

    // An id not in the queue: 404, and nothing replayed, not even m0.
    let (status, err) = app
        .post(
            "/v1/dead-letters/replay",
            &json!({"queue": "tasks", "ids": ["m0", "nope"]}),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["code"], "dead_letter_not_found", "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("nope"),
        "{err}"
    );
    let (status, err) = app
        .post("/v1/dead-letters/replay", &json!({"queue": "tasks"}))
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = app.get_json("/v1/dead-letters?queue=elsewhere").await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "queue", "{err}");
    let (_, after) = app.get_json("/v1/dead-letters?queue=tasks").await;
    assert_eq!(after["total"], 3, "{after}");
    let (_, library) = app.get_json("/v1/dead-letters?queue=library").await;
    assert_eq!(library["total"], 0, "{library}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_all_goes_past_the_first_ten_thousand_dead_letters_in_their_order() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let url = app.env.amqp_url();
    let reach = bibliomq_core::commands::DEAD_REACH;
    let count = reach + 50;
    rabbit::dead_task_letters(&url, (0..count).map(|n| format!("m{n}"))).await;
    let total = u64::try_from(count).unwrap();
    let last = wait_until(DEADLINE, || async {
        let (_, list) = app
            .get_json(&format!(
                "/v1/dead-letters?queue=tasks&limit=500&cursor={}",
                reach - 500
            ))
            .await;
        (list["total"] == total).then_some(list)
    })
    .await
    .expect("the dead letters were never listed");
    // The listing reaches the first DEAD_REACH and says so by ending there.
    assert_eq!(last["dead_letters"][499]["id"], format!("m{}", reach - 1));
    assert!(last["next_cursor"].is_null(), "{}", last["next_cursor"]);

    // An id past the reach: refused, naming the reach, nothing replayed.
    let (status, err) = app
        .post(
            "/v1/dead-letters/replay",
            &json!({"queue": "tasks", "ids": ["m0", format!("m{}", count - 1)]}),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("first {reach} of {count}")),
        "{message}"
    );
    assert_eq!(
        rabbit::ready_count(&url, topology::TASKS_DEAD_QUEUE).await,
        u32::try_from(count).unwrap()
    );

    // `all` replays every one, past the reach, in the queue's order.
    let (status, answer) = app
        .post(
            "/v1/dead-letters/replay",
            &json!({"queue": "tasks", "all": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let replayed: Vec<&str> = answer["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(
        replayed.len(),
        count,
        "replayed {} of {count}",
        replayed.len()
    );
    let out_of_order = replayed
        .iter()
        .enumerate()
        .find(|(n, id)| **id != format!("m{n}"));
    assert_eq!(out_of_order, None, "replayed out of the queue's order");
    assert_eq!(answer["left"], 0, "{}", answer["left"]);
    // Acks have no answer: the queue counts the last of them a moment later.
    let emptied = wait_until(DEADLINE, || async {
        (rabbit::ready_count(&url, topology::TASKS_DEAD_QUEUE).await == 0).then_some(())
    })
    .await;
    if emptied.is_none() {
        let (_, list) = app.get_json("/v1/dead-letters?queue=tasks&limit=20").await;
        panic!("replayed dead letters stayed in the queue: {list}");
    }
    let queued = wait_until(DEADLINE, || async {
        let n = rabbit::ready_count(&url, topology::TASKS_QUEUE).await;
        (n == u32::try_from(count).unwrap()).then_some(n)
    })
    .await;
    assert!(
        queued.is_some(),
        "the replayed messages are not all in the task queue"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!("bibliomq_dead_letters_replayed_total {count}")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_removes_tasks_finished_before_the_retention_with_their_results_and_keeps_newer_ones()
 {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.tasks.inline_result_limit = 16;
            s.tasks.retention = Duration::from_secs(3_600);
            s.tasks.janitor_interval = Duration::from_millis(200);
        },
        1,
    )
    .await;
    let long = json!("a result longer than sixteen bytes");
    let old_stored = app.submit("upper", long.clone()).await;
    let old_inline = app.submit("sum", json!("1,2")).await;
    let new_stored = app.submit("upper", long).await;
    let mut objects = Vec::new();
    for id in [old_stored, old_inline, new_stored] {
        let task = app.wait_for_task(id).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        objects.push(task["result_object"].clone());
    }
    assert!(objects[0].is_object() && objects[2].is_object() && objects[1].is_null());
    let db = app.env.db().await;
    db.execute(
        "UPDATE tasks SET finished_at = now() - interval '2 hours' WHERE id = ANY($1)",
        &[&vec![old_stored, old_inline]],
    )
    .await
    .unwrap();

    let store = app.env.store();
    wait_until(DEADLINE, || async {
        (app.count("SELECT count(*) FROM tasks").await == 1).then_some(())
    })
    .await
    .expect("the janitor never removed the old tasks");
    let (status, _) = app.get_json(&format!("/v1/tasks/{old_stored}")).await;
    assert_eq!(status, 404);
    let gone = store
        .get(
            objects[0]["bucket"].as_str().unwrap(),
            objects[0]["key"].as_str().unwrap(),
        )
        .await;
    assert!(gone.is_err(), "the old result is still stored");
    let kept = app.wait_for_task(new_stored).await;
    assert_eq!(kept["state"], "succeeded", "{kept}");
    assert!(
        store
            .get(
                objects[2]["bucket"].as_str().unwrap(),
                objects[2]["key"].as_str().unwrap(),
            )
            .await
            .is_ok(),
        "the newer result was deleted"
    );
    let metrics = &app.workers[0].metrics;
    assert_eq!(metrics.tasks_purged.get(), 2);
    assert_eq!(metrics.results_purged.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_hand_reports_what_it_removed_and_a_second_finds_nothing() {
    let app = spawn_app().await;
    let id = app.submit("sum", json!("3,4")).await;
    app.wait_for_task(id).await;
    let settings = app.env.settings();
    let pool = bibliomq_core::db::pool(&settings.database).unwrap();
    let store = app.env.store();
    let metrics = bibliomq_core::metrics::Metrics::new();
    let purge = |cutoff| {
        let (pool, store, metrics) = (pool.clone(), store.clone(), metrics.clone());
        async move {
            bibliomq_core::tasks::retention::purge(&pool, &store, cutoff, &metrics)
                .await
                .unwrap()
        }
    };
    // Finished just now: an hour's retention keeps it.
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(purge(hour_ago).await.map(|p| p.tasks), Some(0));
    assert_eq!(app.task(id).await["state"], "succeeded");
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(purge(later).await.map(|p| p.tasks), Some(1));
    assert_eq!(purge(later).await.map(|p| p.tasks), Some(0));
    assert_eq!(metrics.tasks_purged.get(), 1);
}

/// A delayed task's `run_at`, as the API reports it.
fn run_at_of(task: &Value) -> chrono::DateTime<chrono::Utc> {
    task["run_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("no run_at: {task}"))
        .with_timezone(&chrono::Utc)
}

fn started_at_of(task: &Value) -> chrono::DateTime<chrono::Utc> {
    task["started_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("no started_at: {task}"))
        .with_timezone(&chrono::Utc)
}

async fn submit_delayed(app: &TestApp, body: &Value) -> Uuid {
    let (status, answer) = app.post("/v1/tasks", body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "scheduled", "{answer}");
    answer["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_is_scheduled_then_runs_after_its_time() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    let id = submit_delayed(
        &app,
        &json!({"action": "sum", "payload": "1,2", "delay_ms": 1_500}),
    )
    .await;
    let task = app.task(id).await;
    assert_eq!(task["state"], "scheduled", "{task}");
    let run_at = run_at_of(&task);
    // Not published: nothing waits in the queue meanwhile.
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
    let (status, list) = app.get_json("/v1/tasks?state=scheduled").await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["tasks"]
            .as_array()
            .is_some_and(|tasks| tasks.iter().any(|t| t["id"] == id.to_string())),
        "{list}"
    );

    let done = wait_for_state(&app, id, "succeeded", DEADLINE).await;
    assert_eq!(done["result"], json!(3), "{done}");
    assert!(
        started_at_of(&done) >= run_at,
        "it started before its time: {done}"
    );
}

/// Tasks due at the same instant are published in bundles: 150 of them
/// are two messages, and each runs once, not before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_due_together_are_published_in_bundles_and_each_runs_once() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    let run_at = (chrono::Utc::now() + chrono::TimeDelta::milliseconds(1_500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let batch: Vec<Value> = (0..150)
        .map(|i| json!({"action": "sum", "payload": format!("{i},1"), "run_at": run_at}))
        .collect();
    let (status, answer) = app.post("/v1/tasks/batch", &Value::Array(batch)).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<Uuid> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let done = wait_until(DEADLINE, || async {
        let n = app
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await;
        (n == 150).then_some(())
    })
    .await;
    assert!(done.is_some(), "not every delayed task succeeded");
    for (i, id) in ids.iter().enumerate() {
        let task = app.task(*id).await;
        assert_eq!(task["result"], json!(i + 1), "{task}");
        assert_eq!(task["attempts"], 1, "{task}");
        assert!(started_at_of(&task) >= run_at_of(&task), "early: {task}");
    }
    let published = app.workers[0]
        .metrics
        .published
        .get_or_create(&PublishLabels {
            exchange: topology::TASKS_EXCHANGE.to_owned(),
            outcome: PublishOutcome::Confirmed,
        })
        .get();
    assert_eq!(published, 2, "150 due tasks in two bundles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_task_survives_a_worker_restart() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let worker = WorkerProcess::start(&app.env.settings()).await;
    let run_at = chrono::Utc::now() + chrono::TimeDelta::seconds(3);
    let id = submit_delayed(
        &app,
        &json!({"action": "upper", "payload": "later", "run_at": run_at.to_rfc3339()}),
    )
    .await;
    // The worker process goes (killed) before the task is due.
    drop(worker);
    assert_eq!(app.task(id).await["state"], "scheduled");

    let _worker = WorkerProcess::start(&app.env.settings()).await;
    let done = wait_for_state(&app, id, "succeeded", DEADLINE).await;
    assert_eq!(done["result"], json!("LATER"), "{done}");
    assert!(started_at_of(&done) >= run_at_of(&done), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_scheduled_task_never_runs() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    let id = submit_delayed(
        &app,
        &json!({"action": "sum", "payload": "1,2", "delay_ms": 800}),
    )
    .await;
    let (status, answer) = cancel(&app, id).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "cancelled");
    assert_eq!(answer["stopping"], false);
    // Past its time and then some, it is still cancelled and never started.
    let due = run_at_of(&app.task(id).await) + chrono::TimeDelta::milliseconds(600);
    let (status, probe) = app
        .post(
            "/v1/tasks",
            &json!({"action": "sum", "payload": "5,5", "run_at": due.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 202, "{probe}");
    let probe_id: Uuid = probe["id"].as_str().and_then(|s| s.parse().ok()).unwrap();
    // The scheduler has passed the cancelled task's time once this later one ran.
    wait_for_state(&app, probe_id, "succeeded", DEADLINE).await;
    let task = app.task(id).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    assert_eq!(task["error_code"], "cancelled");
    assert_eq!(task["attempts"], 0, "{task}");
    assert!(task["started_at"].is_null(), "{task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_is_refused_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.tasks.delay_max = Duration::from_secs(3_600),
        0,
    )
    .await;
    let now = chrono::Utc::now();
    let cases = [
        (
            json!({"action": "sum", "payload": "1", "run_at": (now - chrono::TimeDelta::minutes(5)).to_rfc3339()}),
            "run_at",
        ),
        (
            json!({"action": "sum", "payload": "1", "run_at": (now + chrono::TimeDelta::hours(2)).to_rfc3339()}),
            "run_at",
        ),
        (
            json!({"action": "sum", "payload": "1", "run_at": "tomorrow"}),
            "run_at",
        ),
        (
            json!({"action": "sum", "payload": "1", "delay_ms": 3_600_001}),
            "delay_ms",
        ),
        (
            json!({"action": "sum", "payload": "1", "delay_ms": -1}),
            "delay_ms",
        ),
        (
            json!({"action": "sum", "payload": "1", "delay_ms": 10, "run_at": now.to_rfc3339()}),
            "delay_ms",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/v1/tasks", &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "invalid_schedule", "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 0);
}
