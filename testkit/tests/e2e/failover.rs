//! What a cluster asks of every process, checked on the machine's single
//! services: several broker URLs and S3 endpoints tried in turn, publishes
//! sent again when a connection goes, at-least-once dead-lettering, and the
//! reaper that publishes a stranded task again. The cluster itself is
//! exercised by `cluster.rs`.

use std::time::Duration;

use bibliomq_core::{broker::topology, metrics::PublishOutcome};
use bibliomq_testkit::{
    TcpProxy, TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    proxy::with_port,
};
use serde_json::{Value, json};
use uuid::Uuid;

const RABBITMQ: &str = "127.0.0.1:5672";

/// A port nothing listens on (the discard service is not run here).
const DEAD_PORT: u16 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_given_several_broker_urls_connects_to_one_that_answers() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(
        env,
        |s| {
            let live = s.amqp.url.clone();
            s.amqp.url = format!("{},{live}", with_port(&live, DEAD_PORT));
        },
        1,
    )
    .await;
    let id = app.submit("sum", json!("1,2,3")).await;
    assert_eq!(app.wait_for_task(id).await["result"], json!(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_are_stored_and_fetched_through_the_next_s3_endpoint_when_one_is_down() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(
        env,
        |s| s.s3.endpoint = format!("http://127.0.0.1:{DEAD_PORT},{}", s.s3.endpoint),
        1,
    )
    .await;
    let id = app.submit("primes", json!(2_000_000)).await;
    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(task["result_object"].is_object(), "{task}");
    let resp = app.get(&format!("/v1/tasks/{id}/result")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["count"], 148_933, "the stored result came back whole");
}

/// The API publishes through a proxy that the test cuts while submissions
/// are in flight; its other URL reaches the broker directly. Publishes that
/// were waiting for their confirm when the connection went are sent again
/// on the new connection, so every submission is answered, the accepted
/// ones all run, and the API keeps accepting without the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_in_flight_when_the_broker_connection_goes_are_sent_again_on_another() {
    let env = TestEnv::new().await;
    let proxy = TcpProxy::start(RABBITMQ.parse().unwrap()).await;
    let mut settings = env.settings();
    let direct = settings.amqp.url.clone();
    settings.amqp.url = format!("{},{direct}", with_port(&direct, proxy.port()));
    let mut app = TestApp::start_api(env, settings.clone()).await;
    settings.amqp.url = direct;
    app.workers
        .push(bibliomq_testkit::app::Worker::start(settings).await);

    let app = std::sync::Arc::new(app);
    let submitters: Vec<_> = (0..16)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut refused = 0u32;
                for i in 0..40 {
                    let resp = app
                        .post_json(
                            "/v1/tasks",
                            &json!({"action": "sum", "payload": format!("{n},{i}")}),
                        )
                        .await;
                    match resp.status().as_u16() {
                        202 => {
                            let body: Value = resp.json().await.unwrap();
                            accepted.push(body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        }
                        503 => refused += 1,
                        other => panic!("unexpected status {other}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    // Cut once the submissions are well under way.
    let metrics = app.api_metrics.clone();
    wait_until(DEADLINE, || async {
        (metrics.publish_count(topology::TASKS_EXCHANGE, PublishOutcome::Confirmed) >= 100)
            .then_some(())
    })
    .await
    .expect("the submissions never got going");
    proxy.cut();

    let mut accepted = Vec::new();
    let mut refused = 0;
    for s in submitters {
        let (a, r) = s.await.unwrap();
        accepted.extend(a);
        refused += r;
    }
    assert_eq!(accepted.len() + refused as usize, 16 * 40);
    assert!(
        refused <= 16,
        "{refused} submissions refused: the API did not move to the other URL"
    );
    for id in &accepted {
        let task = app.wait_for_task(*id).await;
        assert_eq!(task["state"], "succeeded", "accepted task {id}: {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dead_lettering_queue_dead_letters_at_least_once() {
    let app = bibliomq_testkit::spawn_app().await;
    let queues: Vec<Value> = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:15672/api/queues/{}",
            app.env.vhost
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for q in &queues {
        let args = &q["arguments"];
        assert_eq!(args["x-queue-type"], "quorum", "{}", q["name"]);
        if args.get("x-dead-letter-exchange").is_some() {
            assert_eq!(
                args["x-dead-letter-strategy"], "at-least-once",
                "{}",
                q["name"]
            );
            assert_eq!(args["x-overflow"], "reject-publish", "{}", q["name"]);
            checked += 1;
        }
    }
    // tasks, loans, renewals, returns and one retry queue per retry
    let expected = 4 + app.env.settings().tasks.max_retries as usize;
    assert_eq!(checked, expected, "{queues:?}");
}

/// Brokers that already hold bibliomq's queues with the arguments of an
/// older version cannot have them changed by a declaration: the app keeps
/// them and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_declared_by_an_older_version_are_kept_and_the_app_still_works() {
    let env = TestEnv::new().await;
    let resp = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:15672/api/queues/{}/{}",
            env.vhost,
            topology::TASKS_QUEUE
        ))
        .basic_auth("guest", Some("guest"))
        .json(&json!({"durable": true, "arguments": {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topology::DEAD_LETTER_EXCHANGE,
            "x-delivery-limit": 10,
        }}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let app = TestApp::spawn(env, |_| {}, 1).await;
    let id = app.submit("sum", json!("2,2")).await;
    assert_eq!(app.wait_for_task(id).await["result"], json!(4));
}

/// Short retries, so the reaper may act on rows two seconds old. (Not
/// less: a task that waits in its queue longer than that, as on a machine
/// busy with the parallel suite, is taken for a lost one and sent twice.)
fn quick_reaper(s: &mut bibliomq_core::config::Settings) {
    s.tasks.retry_base = Duration::from_millis(10);
    s.tasks.retry_factor = 1;
    s.tasks.reap_after = Duration::from_secs(2);
    s.tasks.reap_interval = Duration::from_millis(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_message_was_lost_is_published_again_once_and_runs() {
    let app = TestApp::spawn(TestEnv::new().await, quick_reaper, 2).await;
    // A row the API recorded, whose message never reached a queue.
    let id = Uuid::now_v7();
    let db = app.env.db().await;
    db.execute(
        "INSERT INTO tasks (id, action, payload, correlation_id, updated_at)
         VALUES ($1, 'sum', '\"5,5\"', 'lost', now() - interval '1 hour')",
        &[&id],
    )
    .await
    .unwrap();

    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["result"], json!(10));
    assert_eq!(task["attempts"], 1, "{task}");
    assert!(was_reaped(&app, id).await);
}

/// More lost messages than one reaper pass takes (500): every task is
/// published again, once, in two passes whose publishes wait for their
/// confirms side by side, and each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_lost_messages_are_each_published_again_once_and_every_task_runs() {
    let app = TestApp::spawn(TestEnv::new().await, quick_reaper, 2).await;
    let db = app.env.db().await;
    db.execute(
        "INSERT INTO tasks (id, action, payload, correlation_id, updated_at)
         SELECT gen_random_uuid(), 'sum', to_jsonb(i || ',1'), 'lost', now() - interval '1 hour'
           FROM generate_series(1, 600) AS i",
        &[],
    )
    .await
    .unwrap();
    wait_until(DEADLINE, || async {
        (app.count("SELECT count(*) FROM tasks WHERE state = 'succeeded'")
            .await
            == 600)
            .then_some(())
    })
    .await
    .expect("not every lost task ran");
    assert_eq!(
        app.count(
            "SELECT count(*) FROM tasks
              WHERE reaped_at IS NOT NULL AND attempts = 1
                AND result = to_jsonb(split_part(payload #>> '{}', ',', 1)::int + 1)"
        )
        .await,
        600,
        "every task reaped once, run once, with its own result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_in_a_workers_hands_is_not_reaped() {
    let app = TestApp::spawn(TestEnv::new().await, quick_reaper, 1).await;
    // Runs for three times the reaper's age; heartbeats keep its row fresh.
    let id = app.submit("sleep", json!(6_000)).await;
    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 1, "the task ran twice: {task}");
    assert!(
        !was_reaped(&app, id).await,
        "a task in hand was published again"
    );
}

async fn was_reaped(app: &TestApp, id: Uuid) -> bool {
    app.env
        .db()
        .await
        .query_one(
            "SELECT reaped_at IS NOT NULL FROM tasks WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}
