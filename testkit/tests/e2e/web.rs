//! The JSON routes behind the web pages, over HTTP against the real
//! services: the live event stream, the dashboard's figures, the object
//! browser. (The pages themselves are driven in a browser in `browser.rs`.)

use std::time::Duration;

use bibliomq_core::broker::topology;
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    rabbit, spawn_app,
};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A server-sent event stream read a block at a time (`openapi.rs` reads
/// the stream's first event with it too).
pub(crate) struct EventStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    /// Reads the events of an answer whose headers have arrived.
    pub(crate) fn from_response(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    pub(crate) async fn open(app: &TestApp, keys: &str) -> Self {
        let response = app
            .http
            .get(app.url(&format!(
                "/v1/events/stream?keys={}",
                keys.replace('#', "%23")
            )))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = Self::from_response(response);
        let (name, _) = stream.next_event().await.expect("the stream ended at once");
        assert_eq!(name, "ready", "the first event says the feed is bound");
        stream
    }

    /// The next event's name and data (keep-alive comments skipped), or
    /// `None` when the stream ends. Fails the test after the deadline.
    pub(crate) async fn next_event(&mut self) -> Option<(String, String)> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut name = "message".to_owned();
                    let mut data = Vec::new();
                    for line in block.lines() {
                        if let Some(n) = line.strip_prefix("event:") {
                            name = n.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                        }
                    }
                    if !data.is_empty() || name != "message" {
                        return Some((name, data.join("\n")));
                    }
                    continue;
                }
                match self.body.next().await {
                    Some(Ok(chunk)) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("no event within the deadline")
    }

    /// Reads until an event with `routing_key`, and returns its body.
    pub(crate) async fn until(&mut self, routing_key: &str) -> Value {
        loop {
            let (_, data) = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("the stream ended before `{routing_key}`"));
            let event: Value = serde_json::from_str(&data).unwrap();
            if event["routing_key"] == routing_key {
                return event["event"].clone();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_an_outcome_caused_over_http() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "task.*").await;
    let id = app.submit("sum", json!([1, 2, 3])).await;
    let event = stream.until("task.succeeded").await;
    assert_eq!(event["task_id"], id.to_string());
    assert_eq!(event["action"], "sum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_only_the_keys_asked_for() {
    let app = spawn_app().await;
    app.seed(0, 10).await;
    let mut stream = EventStream::open(&app, "loaned.norte,rejected.#").await;
    app.submit("sum", json!([1])).await;
    let (status, _) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788437604947", "patron": "ana", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, data) = stream.next_event().await.unwrap();
    let first: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        first["routing_key"], "loaned.norte",
        "the task's event is not in this feed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_outlives_the_request_timeout() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.request_timeout = Duration::from_millis(300),
        0,
    )
    .await;
    let mut stream = EventStream::open(&app, "task.*").await;
    // Time has to pass here, not a result to arrive: the timeout bounds how
    // long a request takes to be answered, not how long an answer streams.
    tokio::time::sleep(Duration::from_millis(600)).await;
    rabbit::publish_raw(
        &app.env.amqp_url(),
        topology::EVENTS_EXCHANGE,
        "task.succeeded",
        br#"{"task_id": "late"}"#,
        lapin::BasicProperties::default(),
    )
    .await;
    let event = stream.until("task.succeeded").await;
    assert_eq!(event["task_id"], "late");
}

/// A stream whose key is revoked (by hand in SQL, keys cached for an hour)
/// ends at its next event with a last `error` event (`unauthorized`),
/// while a stream opened with another key goes on. Without the re-check at
/// each event the revoked stream would go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_when_its_key_is_revoked() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.auth.enabled = true;
            s.auth.rate_per_sec = 0.0;
            s.auth.cache_ttl = Duration::from_secs(3600);
        },
        1,
    )
    .await;
    let service = app.key("service", None, None).await;
    let other = app.key("service", None, None).await;
    let open = |key: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .get(app.url("/v1/events/stream?keys=task.*"))
                .bearer_auth(key)
                .timeout(Duration::from_secs(600))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut stream = EventStream::from_response(response);
            let (name, _) = stream.next_event().await.expect("the stream ended at once");
            assert_eq!(name, "ready");
            stream
        }
    };
    let mut kept = open(service.clone()).await;
    let mut lost = open(other.clone()).await;
    let submit = || app.submit_sum_as(&service, 1);
    let id = submit().await;
    assert_eq!(kept.until("task.succeeded").await["task_id"], id);
    assert_eq!(lost.until("task.succeeded").await["task_id"], id);

    app.revoke_in_sql(&other).await;
    // The announcement reaches the API soon, not at once: events may still
    // come until it has.
    let end = tokio::time::Instant::now() + DEADLINE;
    let error = loop {
        assert!(
            tokio::time::Instant::now() < end,
            "the revoked key's stream went on"
        );
        let id = submit().await;
        assert_eq!(kept.until("task.succeeded").await["task_id"], id);
        let (name, data) = lost
            .next_event()
            .await
            .expect("the stream ended without saying why");
        let data: Value = serde_json::from_str(&data).unwrap();
        if name == "error" {
            break data;
        }
        assert_eq!(data["event"]["task_id"], id, "{data}");
    };
    assert_eq!(error["error"]["code"], "unauthorized", "{error}");
    assert!(
        lost.next_event().await.is_none(),
        "the stream ends after its error"
    );
}

/// A process serves at most BIBLIOMQ_LIVE_FEEDS_MAX live feeds (each holds
/// a RabbitMQ queue): past it a new one is answered 503 naming the
/// setting, and once a feed ends its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_past_the_most_a_process_serves_are_refused_until_one_ends() {
    let app = TestApp::spawn(TestEnv::new().await, |s| s.dashboard.live_feeds_max = 1, 0).await;
    assert_eq!(app.api_metrics.live_feeds.get(), 0);
    let first = EventStream::open(&app, "task.*").await;
    assert_eq!(app.api_metrics.live_feeds.get(), 1, "bibliomq_live_feeds");
    let response = app.get("/v1/events/stream?keys=task.*").await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        app.api_metrics.live_feeds.get(),
        1,
        "a refused feed is not counted"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BIBLIOMQ_LIVE_FEEDS_MAX"),
        "{body}"
    );
    // The server notices a client gone at its next write (a keep-alive
    // every 15 s at the latest).
    drop(first);
    let reopened = wait_until(DEADLINE, || async {
        let response = app.get("/v1/events/stream?keys=task.*").await;
        (response.status() == 200).then_some(response)
    })
    .await
    .expect("the ended feed kept its place");
    assert_eq!(app.api_metrics.live_feeds.get(), 1);
    drop(reopened);
    wait_until(DEADLINE, || async {
        (app.api_metrics.live_feeds.get() == 0).then_some(())
    })
    .await
    .expect("bibliomq_live_feeds went back to 0 once the feeds ended");
    assert!(
        app.api_metrics.encode().contains("bibliomq_live_feeds 0"),
        "served at /metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_pattern_is_refused_with_the_reason() {
    let app = spawn_app().await;
    let response = app.get("/v1/events/stream?keys=task..succeeded").await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_keys");
    assert_eq!(body["error"]["field"], "keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_stream_does_not_keep_the_api_from_stopping() {
    let mut app = spawn_app().await;
    let mut stream = EventStream::open(&app, "#").await;
    tokio::time::timeout(DEADLINE, app.stop())
        .await
        .expect("the API waited for the event stream instead of ending it");
    assert!(
        stream.next_event().await.is_none(),
        "the stream ends with the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_our_vhosts_queues_with_their_consumers() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/v1/dashboard/queues").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vhost"], app.env.vhost);
    let tasks = body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "bibliomq.tasks")
        .unwrap_or_else(|| panic!("no tasks queue in {body}"));
    assert_eq!(tasks["type"], "quorum");
    // The worker's consumer shows once the management API has caught up.
    let consumers = wait_until(DEADLINE, || async {
        let (_, body) = app.get_json("/v1/dashboard/queues").await;
        let q = body["queues"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == "bibliomq.tasks")?
            .clone();
        (q["consumers"].as_u64()? >= 1).then_some(q["consumers"].clone())
    })
    .await;
    assert!(consumers.is_some(), "the worker's consumer never showed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_tasks_in_every_state() {
    let app = spawn_app().await;
    let first = app.submit("sum", json!([1, 2])).await;
    let second = app.submit("fib", json!(5)).await;
    app.wait_for_task(first).await;
    app.wait_for_task(second).await;
    let (status, body) = app.get_json("/v1/dashboard/tasks").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["by_state"],
        json!({"scheduled": 0, "queued": 0, "running": 0, "succeeded": 2, "failed": 0, "dead": 0, "cancelled": 0})
    );
    assert_eq!(body["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circulation_per_minute_counts_each_settled_operation_by_branch() {
    let app = spawn_app().await;
    app.seed(0, 10).await;
    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788437604947", "patron": "ana", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");
    let (status, refused) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788437604947", "patron": "nobody-here", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 404, "{refused}");
    let (status, accepted) = app
        .post(
            "/v1/returns",
            &json!({"loan_id": lent["loan"]["id"], "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let body = wait_until(DEADLINE, || async {
        let (_, body) = app.get_json("/v1/dashboard/circulation?minutes=5").await;
        let norte = body["branches"]
            .as_array()?
            .iter()
            .find(|b| b["branch"] == "norte")?
            .clone();
        (norte["applied"] == 1).then_some(body)
    })
    .await
    .expect("the return never showed in the circulation figures");
    let branches = body["branches"].as_array().unwrap();
    assert_eq!(branches[0]["branch"], "central", "configured order");
    assert_eq!(branches[0]["name"], "Biblioteca Central");
    assert_eq!(branches[0]["per_minute"].as_array().unwrap().len(), 5);
    assert_eq!(branches[0]["applied"], 1);
    let recent = &branches[0]["per_minute"];
    assert_eq!(
        recent[3].as_i64().unwrap() + recent[4].as_i64().unwrap(),
        1,
        "the newest minutes are last: {recent}"
    );
    assert_eq!(
        body["by_kind"],
        json!([
            {"kind": "loan", "outcome": "applied", "count": 1},
            {"kind": "return", "outcome": "applied", "count": 1},
        ]),
        "an unknown patron is not an operation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_browser_lists_a_stored_result_and_downloads_it_byte_exact() {
    let app = spawn_app().await;
    let id = app.submit("primes", json!(2_000_000)).await;
    let task = app.wait_for_task(id).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let object = &task["result_object"];
    let key = object["key"]
        .as_str()
        .unwrap()
        .strip_prefix(&app.env.s3_prefix)
        .expect("stored under the test's prefix")
        .to_owned();
    let small = app.submit("sum", json!([1])).await;
    app.wait_for_task(small).await;
    app.env
        .store()
        .put(
            "results/zz-later.json",
            bytes::Bytes::from_static(b"[]"),
            "application/json",
        )
        .await
        .unwrap();

    for order in ["key", "newest"] {
        let (status, listing) = app
            .get_json(&format!("/v1/objects?prefix=results/&order={order}"))
            .await;
        assert_eq!(status, 200, "{listing}");
        let keys: Vec<&str> = listing["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys.len(),
            2,
            "only our objects, without our prefix: {keys:?}"
        );
        assert!(keys.contains(&key.as_str()), "{keys:?}");
        if order == "newest" {
            assert_eq!(keys[0], "results/zz-later.json", "the newest first");
        }
    }
    let (_, first) = app
        .get_json("/v1/objects?prefix=results/&order=key&limit=1")
        .await;
    assert_eq!(first["objects"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, second) = app
        .get_json(&format!(
            "/v1/objects?prefix=results/&order=key&limit=1&cursor={cursor}"
        ))
        .await;
    assert_ne!(second["objects"][0]["key"], first["objects"][0]["key"]);
    assert!(second["next_cursor"].is_null(), "{second}");

    let listed = first["objects"][0]["key"] == key.as_str();
    let entry = if listed { &first } else { &second };
    let download = entry["objects"][0]["download"].as_str().unwrap().to_owned();
    let response = app.get(&download).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("{id}.json")),
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, object["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        object["sha256"].as_str().unwrap()
    );

    let missing = app.get("/v1/objects/results/not-there.json").await;
    assert_eq!(missing.status(), 404);
}
