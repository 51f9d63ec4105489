//! The task pipeline: submit over HTTP, run on a worker, follow and fetch.

use bibliomq_core::broker::topology;
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    rabbit, spawn_app,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const LOANS_CSV: &str =
    "branch,title,days\ncentral,Quijote,14\nnorte,Quijote,7\ncentral,\"Crimen y castigo\",21\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_runs_to_completion_with_its_expected_result() {
    let app = spawn_app().await;
    let cases = [
        ("echo", json!({"a": [1, "x"]}), json!({"a": [1, "x"]})),
        ("upper", json!("hola mundo"), json!("HOLA MUNDO")),
        ("sum", json!("1,2,3,4,5"), json!(15)),
        ("sum", json!([1, 2, 3, 4, 5]), json!(15)),
        ("fib", json!(100), json!("354224848179261915075")),
        ("sleep", json!(20), json!({"slept_ms": 20})),
        (
            "greet",
            json!({"name": "Ana", "language": "es"}),
            json!("¡Hola, Ana!"),
        ),
        (
            "primes",
            json!(30),
            json!({"limit": 30, "count": 10, "primes": [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]}),
        ),
        (
            "wordcount",
            json!("a b A"),
            json!({"words": 3, "unique": 2, "counts": [{"word": "a", "count": 2}, {"word": "b", "count": 1}]}),
        ),
        (
            "report",
            json!({"csv": LOANS_CSV, "group_by": "branch", "sum": "days"}),
            json!(
                "branch,rows,sum_days,min_days,max_days,mean_days\ncentral,2,35,14,21,17.5\nnorte,1,7,7,7,7\n"
            ),
        ),
    ];
    let mut ids = Vec::new();
    for (action, payload, _) in &cases {
        ids.push(app.submit(action, payload.clone()).await);
    }
    for ((action, _, expected), id) in cases.iter().zip(ids) {
        let task = app.wait_for_task(id).await;
        assert_eq!(task["state"], "succeeded", "{action}: {task}");
        assert_eq!(&task["result"], expected, "{action}");
        assert_eq!(task["attempts"], 1);
        assert!(task["finished_at"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fib_of_one_hundred_thousand_is_exact() {
    let app = spawn_app().await;
    let id = app.submit("fib", json!(100_000)).await;
    let task = app.wait_for_task(id).await;
    let digits = task["result"].as_str().unwrap();
    assert_eq!(digits.len(), 20_899);
    assert!(digits.starts_with("2597406934722172416615503402127591541488048538651769658472477"));
    assert!(
        digits.ends_with("3428746875"),
        "{}",
        &digits[digits.len() - 10..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_stored_in_s3_and_comes_back_byte_exact() {
    let app = spawn_app().await;
    let id = app.submit("primes", json!(2_000_000)).await;
    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(
        task["result"].is_null(),
        "large results are not kept inline"
    );
    let obj = &task["result_object"];
    let key = obj["key"].as_str().unwrap();
    let date = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert!(
        key.starts_with(&format!("{}results/", app.env.s3_prefix))
            && key.ends_with(&format!("/{id}.json")),
        "{key}"
    );
    assert!(key.contains(&date) || key.contains("results/20"), "{key}");
    let size = obj["size"].as_i64().unwrap();
    assert!(size > 64 * 1024, "{size}");

    // Through the API, streamed.
    let resp = app.get(&format!("/v1/tasks/{id}/result")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as i64, size);
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        obj["sha256"].as_str().unwrap()
    );
    let parsed: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed["count"], 148_933);

    // Straight from the object store.
    let store = app.env.store();
    let direct = bibliomq_core::storage::collect(
        store
            .get(obj["bucket"].as_str().unwrap(), key)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(direct, bytes);

    // Through a presigned link, with no credentials.
    let resp = app
        .get(&format!("/v1/tasks/{id}/result?redirect=true"))
        .await;
    assert_eq!(resp.status(), 307);
    let link = resp.headers()["location"].to_str().unwrap().to_owned();
    let presigned = reqwest::get(&link).await.unwrap();
    assert_eq!(presigned.status(), 200, "{link}");
    assert_eq!(presigned.bytes().await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_csv_report_is_stored_as_csv() {
    let app = spawn_app().await;
    let mut csv = String::from("patron,days\n");
    for i in 0..20_000 {
        csv.push_str(&format!("patron-{i:05},{}\n", i % 30));
    }
    let id = app
        .submit(
            "report",
            json!({"csv": csv, "group_by": "patron", "sum": "days"}),
        )
        .await;
    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(
        task["result_object"]["key"]
            .as_str()
            .unwrap()
            .ends_with(".csv")
    );
    let resp = app.get(&format!("/v1/tasks/{id}/result")).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = resp.text().await.unwrap();
    assert_eq!(text.lines().count(), 20_001);
    assert!(text.contains("\npatron-00031,1,1,1,1,1\n"));
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_is_queued() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let raw = |body: &'static str| {
        app.http
            .post(app.url("/v1/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, err) = error_of(raw("{\"action\": \"sum\", ").await.unwrap()).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("malformed_json")),
        "{err}"
    );

    let (status, err) = error_of(
        app.post_json("/v1/tasks", &json!({"action": "teleport"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("unknown_action"))
    );
    assert_eq!(err["field"], "action");
    assert!(err["message"].as_str().unwrap().contains("teleport"));

    let (status, err) = error_of(
        app.post_json("/v1/tasks", &json!({"action": "fib", "payload": "many"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("invalid_payload"))
    );
    assert_eq!(err["field"], "payload");

    let (status, err) = error_of(
        app.post_json("/v1/tasks", &json!({"action": "sum", "payload": [1, "x"]}))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("payload[1]")),
        "{err}"
    );

    let (status, err) = error_of(app.post_json("/v1/tasks", &json!({"action": 5})).await).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("action")),
        "{err}"
    );

    let (status, err) = error_of(app.post_json("/v1/tasks", &json!({"payload": 1})).await).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("action")),
        "{err}"
    );

    let (status, err) = error_of(
        app.post_json("/v1/tasks", &json!({"action": "echo", "paylaod": 1}))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("paylaod")),
        "{err}"
    );

    let (status, err) = error_of(
        app.http
            .post(app.url("/v1/tasks"))
            .body("{\"action\": \"echo\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let huge = json!({"action": "upper", "payload": "x".repeat(2 * 1024 * 1024)});
    let (status, err) = error_of(app.post_json("/v1/tasks", &huge).await).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Nothing was recorded and nothing was queued.
    let db = app.env.db().await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    assert_eq!(
        rabbit::ready_count(&app.env.amqp_url(), topology::TASKS_QUEUE).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_unknown_tasks_and_unready_results_say_what_is_wrong() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let (status, err) = error_of(app.get("/v1/tasks/not-a-uuid").await).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_task_id"))
    );
    let (status, err) = error_of(
        app.get(&format!("/v1/tasks/{}", uuid::Uuid::now_v7()))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("task_not_found"))
    );
    // No worker runs in this app, so the task stays queued.
    let id = app.submit("sum", json!("1,2")).await;
    let (status, err) = error_of(app.get(&format!("/v1/tasks/{id}/result")).await).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("result_not_ready"))
    );
    assert_eq!(err["state"], "queued");
    let (status, err) = error_of(app.get("/v1/tasks?state=lost").await).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("state")));
    let (status, _) = error_of(app.get("/v1/nowhere").await).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_newest_first_and_can_be_filtered() {
    let app = spawn_app().await;
    let a = app.submit("upper", json!("a")).await;
    let b = app.submit("sum", json!("1,2")).await;
    let c = app.submit("upper", json!("c")).await;
    for id in [a, b, c] {
        app.wait_for_task(id).await;
    }
    let all: Value = app.get("/v1/tasks").await.json().await.unwrap();
    let ids: Vec<&str> = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [c.to_string(), b.to_string(), a.to_string()]);

    let uppers: Value = app
        .get("/v1/tasks?action=upper&state=succeeded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(uppers["tasks"].as_array().unwrap().len(), 2);

    let page: Value = app.get("/v1/tasks?limit=2").await.json().await.unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 2);
    let next = page["next_before"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("/v1/tasks?limit=2&before={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["tasks"][0]["id"], a.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_id_travels_from_http_to_the_task_row() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/v1/tasks"))
        .header("x-correlation-id", "desk-42")
        .json(&json!({"action": "upper", "payload": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "desk-42");
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/tasks/")
    );
    let id: uuid::Uuid = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let task = app.wait_for_task(id).await;
    assert_eq!(task["correlation_id"], "desk-42");
}

/// `GET /v1/tasks/{id}?wait_ms=` answers once the task is finished, in one
/// request; a task still running after the wait comes back as it is; a bad
/// wait or an unknown id is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_wait_ms_answers_when_the_task_is_finished() {
    let app = spawn_app().await;
    // A short sleep: queued when asked, finished when answered.
    let id = app.submit("sleep", json!(300)).await;
    let (status, task) = app.get_json(&format!("/v1/tasks/{id}?wait_ms=20000")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "succeeded", "{task}");

    // A long one: the wait runs out and the task comes back unfinished.
    let long = app.submit("sleep", json!(60_000)).await;
    let (status, task) = app.get_json(&format!("/v1/tasks/{long}?wait_ms=100")).await;
    assert_eq!(status, 200, "{task}");
    assert!(
        matches!(task["state"].as_str(), Some("queued" | "running")),
        "{task}"
    );
    let (status, _) = app
        .post(&format!("/v1/tasks/{long}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "cancel answered {status}");

    for bad in ["abc", "-1", "30001", "1.5"] {
        let (status, body) = app.get_json(&format!("/v1/tasks/{id}?wait_ms={bad}")).await;
        assert_eq!(status, 422, "wait_ms={bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_wait", "{body}");
        assert_eq!(body["error"]["field"], "wait_ms", "{body}");
    }
    let started = std::time::Instant::now();
    let (status, body) = app
        .get_json(&format!("/v1/tasks/{}?wait_ms=20000", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "task_not_found", "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "an unknown task is not waited for"
    );
}

/// `POST /v1/tasks?wait_ms=N`: submit and result in one request. 200 with
/// the finished task when it ends within the wait, the usual 202 when it
/// does not; a bad wait is refused before anything is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_with_wait_ms_answers_with_the_finished_task() {
    let app = spawn_app().await;
    let body = json!({"action": "upper", "payload": "hola"});
    let resp = app.post_json("/v1/tasks?wait_ms=20000", &body).await;
    assert_eq!(resp.status(), 200);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let task: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["result"], "HOLA", "{task}");
    assert_eq!(
        location,
        format!("/v1/tasks/{}", task["id"].as_str().unwrap())
    );
    let (status, stored) = app.get_json(&location).await;
    assert_eq!(status, 200);
    assert_eq!(stored["state"], "succeeded");

    // A retry with the same key waits for the same task and says so.
    let keyed = || {
        app.http
            .post(app.url("/v1/tasks?wait_ms=20000"))
            .header("Idempotency-Key", "wait-once")
            .json(&body)
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = keyed().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["result"], "HOLA");

    // Unfinished when the wait ends: 202 as without a wait, and queued.
    let (status, accepted) = app
        .post(
            "/v1/tasks?wait_ms=100",
            &json!({"action": "sleep", "payload": 60_000}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let long = accepted["id"].as_str().unwrap().to_owned();
    assert!(
        matches!(accepted["state"].as_str(), Some("queued")),
        "{accepted}"
    );
    let (status, _) = app
        .post(&format!("/v1/tasks/{long}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "cancel answered {status}");

    // Refused before anything is queued.
    let before = app.count("SELECT count(*) FROM tasks").await;
    for bad in ["abc", "-1", "30001"] {
        let (status, answer) = app.post(&format!("/v1/tasks?wait_ms={bad}"), &body).await;
        assert_eq!(status, 422, "wait_ms={bad}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_wait", "{answer}");
        assert_eq!(answer["error"]["field"], "wait_ms", "{answer}");
    }
    let (status, answer) = app.post("/v1/tasks?wait=5", &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_query", "{answer}");
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, before);
}

/// The workers' outcome write names the task in a `NOTIFY` when it
/// commits, which is what waiters listen for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_task_notifies_the_waiters_channel_with_its_id() {
    use futures::StreamExt;
    use tokio_postgres::AsyncMessage;
    let app = spawn_app().await;
    let (client, mut connection) =
        tokio_postgres::connect(&app.env.settings().database.url, tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {}",
            bibliomq_core::tasks::wakeups::CHANNEL
        ))
        .await
        .unwrap();
    let id = app.submit("upper", json!("hola")).await;
    let heard = tokio::time::timeout(DEADLINE, async {
        while let Some((channel, payload)) = rx.recv().await {
            if payload.split(',').any(|p| p == id.to_string()) {
                return Some(channel);
            }
        }
        None
    })
    .await
    .expect("no notification named the task");
    assert_eq!(
        heard.as_deref(),
        Some(bibliomq_core::tasks::wakeups::CHANNEL)
    );
    let (_, task) = app.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(
        task["state"], "succeeded",
        "notified before the commit: {task}"
    );
}

/// The API's listening connection is opened by the first wait and opened
/// again after it breaks; waits answer all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_listener_comes_back_after_its_connection_is_killed() {
    let app = spawn_app().await;
    let body = json!({"action": "upper", "payload": "uno"});
    let (status, task) = app.post("/v1/tasks?wait_ms=20000", &body).await;
    assert_eq!(status, 200, "{task}");
    let db = app.env.db().await;
    let listeners = "SELECT pid FROM pg_stat_activity
                      WHERE application_name = 'bibliomq-wakeups' AND datname = current_database()";
    let first: i32 = wait_until(DEADLINE, || async {
        db.query_opt(listeners, &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await
    .expect("the first wait opened no listening connection");
    db.execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    let second: i32 = wait_until(DEADLINE, || async {
        db.query_opt(listeners, &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
            .filter(|pid: &i32| *pid != first)
    })
    .await
    .expect("the listening connection was not opened again");
    assert_ne!(first, second);
    let (status, task) = app
        .post(
            "/v1/tasks?wait_ms=20000",
            &json!({"action": "upper", "payload": "dos"}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["result"], "DOS");
}

/// A wait longer than the server's request time limit ends a second before
/// it: the answer is the task as it is then, not 504 `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_request_time_limit_answers_with_the_task_not_a_timeout() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.request_timeout = std::time::Duration::from_secs(2),
        1,
    )
    .await;
    let long = app.submit("sleep", json!(60_000)).await;
    let (status, task) = app
        .get_json(&format!("/v1/tasks/{long}?wait_ms=30000"))
        .await;
    assert_eq!(status, 200, "{task}");
    assert!(
        matches!(task["state"].as_str(), Some("queued" | "running")),
        "{task}"
    );
    let (status, _) = app
        .post(&format!("/v1/tasks/{long}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "cancel answered {status}");
}
