//! Seeing the system work: `/metrics` counters of the API and of the
//! workers' operations server move when work flows, and `/readyz` of both
//! names each dependency that goes away and recovers when it returns.

use bibliomq_core::broker::topology;
use bibliomq_testkit::{
    TcpProxy, TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    proxy::with_port,
    spawn_app,
};
use serde_json::{Value, json};

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let resp = app.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_the_api_and_the_workers_move_when_work_flows() {
    let app = spawn_app().await;
    app.seed(5, 12).await;
    let worker = format!("http://{}", app.workers[0].ops_addr);
    let health: Value = app
        .http
        .get(format!("{worker}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let api_before = scrape(&app, &app.url("/metrics")).await;
    let tasks_202 = [
        ("method", "POST"),
        ("route", "/v1/tasks"),
        ("status", "202"),
    ];
    assert_eq!(
        sample(&api_before, "bibliomq_http_requests_total", &tasks_202),
        0.0
    );

    let id = app.submit("sum", json!("1,2,3")).await;
    app.wait_for_task(id).await;
    let resp = app
        .post_json(
            "/v1/loans",
            &json!({"isbn": "9788437604947", "patron": "ana", "branch": "central"}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let resp = app
        .post_json(
            "/v1/renewals",
            &json!({"isbn": "9788437604947", "patron": "ana", "branch": "central"}),
        )
        .await;
    assert_eq!(resp.status(), 202);

    let api = scrape(&app, &app.url("/metrics")).await;
    assert_eq!(
        sample(&api, "bibliomq_http_requests_total", &tasks_202),
        1.0
    );
    assert_eq!(
        sample(
            &api,
            "bibliomq_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/tasks")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &api,
            "bibliomq_published_total",
            &[
                ("exchange", topology::TASKS_EXCHANGE),
                ("outcome", "confirmed")
            ]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &api,
            "bibliomq_loan_requests_total",
            &[("outcome", "loaned")]
        ),
        1.0
    );

    // The worker settles the renewal after the API answered: poll its
    // metrics until every count has arrived.
    let expectations: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "bibliomq_messages_total",
            vec![("queue", topology::TASKS_QUEUE), ("outcome", "consumed")],
        ),
        (
            "bibliomq_messages_total",
            vec![("queue", topology::TASKS_QUEUE), ("outcome", "acked")],
        ),
        (
            "bibliomq_task_duration_seconds_count",
            vec![("action", "sum")],
        ),
        (
            "bibliomq_tasks_finished_total",
            vec![("action", "sum"), ("state", "succeeded")],
        ),
        (
            "bibliomq_library_operations_total",
            vec![("operation", "loan"), ("outcome", "loaned")],
        ),
        (
            "bibliomq_library_operations_total",
            vec![("operation", "renewal"), ("outcome", "applied")],
        ),
        (
            "bibliomq_messages_total",
            vec![("queue", topology::RENEWALS_QUEUE), ("outcome", "acked")],
        ),
    ];
    let seen = wait_until(DEADLINE, || async {
        let text = scrape(&app, &format!("{worker}/metrics")).await;
        expectations
            .iter()
            .all(|(name, labels)| sample(&text, name, labels) >= 1.0)
            .then_some(text)
    })
    .await;
    let text = match seen {
        Some(t) => t,
        None => scrape(&app, &format!("{worker}/metrics")).await,
    };
    for (name, labels) in &expectations {
        assert_eq!(
            sample(&text, name, labels),
            1.0,
            "{name} {labels:?}\n{text}"
        );
    }
    // Outcome events are sent without asking for a confirm (they go out
    // in the background, so a moment after the work they report).
    let events = |text: &str, outcome| {
        sample(
            text,
            "bibliomq_published_total",
            &[
                ("exchange", topology::EVENTS_EXCHANGE),
                ("outcome", outcome),
            ],
        )
    };
    let sent = wait_until(DEADLINE, || async {
        let text = scrape(&app, &format!("{worker}/metrics")).await;
        (events(&text, "sent") >= 1.0).then_some(text)
    })
    .await
    .expect("no outcome event was sent");
    assert_eq!(events(&sent, "confirmed"), 0.0, "{sent}");
}

async fn readiness(app: &TestApp, url: &str) -> (u16, Value) {
    let resp = app.http.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_each_dependency_that_is_cut_and_recovers_when_it_returns() {
    let rabbitmq = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let postgres = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let s3 = TcpProxy::start("127.0.0.1:3900".parse().unwrap()).await;
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.amqp.url = with_port(&s.amqp.url, rabbitmq.port());
            s.database.url = with_port(&s.database.url, postgres.port());
            s.s3.endpoint = format!("http://127.0.0.1:{}", s3.port());
        },
        1,
    )
    .await;
    let urls = [
        app.url("/readyz"),
        format!("http://{}/readyz", app.workers[0].ops_addr),
    ];
    // The worker connects to RabbitMQ in the background after it starts.
    for url in &urls {
        let ready = wait_until(DEADLINE, || async {
            let (status, body) = readiness(&app, url).await;
            (status == 200).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("{url} never became ready"));
        assert_eq!(ready["status"], "ready");
        assert_eq!(ready["unavailable"], json!([]));
    }

    for (name, proxy) in [
        ("rabbitmq", &rabbitmq),
        ("postgres", &postgres),
        ("s3", &s3),
    ] {
        proxy.cut();
        for url in &urls {
            let down = wait_until(DEADLINE, || async {
                let (status, body) = readiness(&app, url).await;
                (status == 503).then_some(body)
            })
            .await
            .unwrap_or_else(|| panic!("{url} stayed ready with {name} cut"));
            assert_eq!(down["status"], "unready");
            assert_eq!(down["checks"][name], "unavailable", "{down}");
            assert_eq!(down["unavailable"], json!([name]), "{down}");
        }
        proxy.restore();
        for url in &urls {
            wait_until(DEADLINE, || async {
                let (status, _) = readiness(&app, url).await;
                (status == 200).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{url} did not become ready again after {name} came back"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_its_metrics_health_and_readiness() {
    let app = spawn_app().await;
    let edge = bibliomq_testkit::TestEdge::start(app.env.settings()).await;
    let ops = format!("http://{}", edge.ops);
    let health: Value = app
        .http
        .get(format!("{ops}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app.http.get(format!("{ops}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // One answered task over the pipe gateway shows in the edge's counters.
    let mut client = bibliomq_testkit::LineClient::connect(edge.pipe_addr()).await;
    assert_eq!(client.ask("TASK|1|1,2,3").await, "RESULT|1|6");
    assert_eq!(
        client.ask("TASK|2|1,x").await.split('|').next(),
        Some("ERROR")
    );
    let text = scrape(&app, &format!("{ops}/metrics")).await;
    let ok = sample(
        &text,
        "bibliomq_edge_requests_total",
        &[("protocol", "pipe"), ("outcome", "ok")],
    );
    let failed = sample(
        &text,
        "bibliomq_edge_requests_total",
        &[("protocol", "pipe"), ("outcome", "error")],
    );
    assert_eq!((ok, failed), (1.0, 1.0), "{text}");
    assert!(
        sample(
            &text,
            "bibliomq_edge_request_duration_seconds_count",
            &[("protocol", "pipe")]
        ) >= 2.0
    );
}
