//! ZeroMQ requests (REQ clients against the edge's ROUTER socket).

use std::time::Duration;

use bibliomq_testkit::{
    LineClient, TcpProxy, TestApp, TestEdge, TestEnv,
    app::{DEADLINE, wait_until},
    proxy::with_port,
};
use futures::future::join_all;
use serde_json::{Value, json};

use super::{ask, ask_raw, ask_within, spawn_with_edge};

const RABBITMQ: &str = "127.0.0.1:5672";
const POSTGRES: &str = "127.0.0.1:5432";

/// Sends `request` from ten clients at once and checks that each gets an
/// error reply (`unavailable` or `timeout`) within `bound`.
async fn all_refused_in_time(endpoint: &str, request: &Value, bound: Duration) {
    let replies =
        join_all((0..10).map(|_| ask_within(endpoint, request.to_string().into(), bound))).await;
    for reply in replies {
        let (reply, took) = reply.unwrap_or_else(|e| panic!("a request went unanswered: {e}"));
        assert_eq!(reply["ok"], false, "{reply}");
        let code = reply["error"]["code"].as_str().unwrap();
        assert!(["unavailable", "timeout"].contains(&code), "{reply}");
        assert!(took < bound, "answered after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_request_is_answered_with_its_result_and_can_be_looked_up() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let reply = ask(
        &endpoint,
        json!({"action": "task", "task": "fib", "payload": 30, "correlation_id": "edge-fib-30"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["state"], "succeeded", "{reply}");
    assert_eq!(reply["action"], "fib");
    assert_eq!(reply["result"], "832040");
    let id = reply["id"].as_str().unwrap();

    let status = ask(&endpoint, json!({"action": "TASK_STATUS", "id": id})).await;
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["result"], "832040");

    // The same task, seen over HTTP, carries the client's correlation id.
    let task = app.task(id.parse().unwrap()).await;
    assert_eq!(task["correlation_id"], "edge-fib-30", "{task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_answered_with_where_it_is_stored_and_its_http_path() {
    let (app, edge) = spawn_with_edge(|s| s.tasks.inline_result_limit = 16).await;
    let text = "a result longer than sixteen bytes";
    let reply = ask(
        &edge.request_endpoint(),
        json!({"action": "task", "task": "upper", "payload": text}),
    )
    .await;
    assert_eq!(reply["state"], "succeeded", "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    let id = reply["id"].as_str().unwrap();
    let object = &reply["result_object"];
    assert!(
        object["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{id}.json")),
        "{object}"
    );
    let path = reply["result_path"].as_str().unwrap();
    assert_eq!(path, format!("/v1/tasks/{id}/result"));

    let download = app.get(path).await;
    assert_eq!(download.status(), 200);
    let bytes = download.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, object["size"].as_u64().unwrap());
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value, json!(text.to_uppercase()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_task_is_refused_with_the_command_layers_error() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();

    let reply = ask(
        &endpoint,
        json!({"action": "task", "task": "fib", "payload": "many"}),
    )
    .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_payload", "{reply}");
    assert_eq!(reply["error"]["field"], "payload");
    assert!(reply["error"]["message"].as_str().unwrap().len() > 5);

    let reply = ask(&endpoint, json!({"action": "task", "task": "teleport"})).await;
    assert_eq!(reply["error"]["code"], "unknown_action", "{reply}");
    assert_eq!(reply["error"]["field"], "task");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("teleport")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_unknown_actions_get_error_replies() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{\"action\": \"task\", ".to_vec(), "malformed_json", None),
        (b"\xff\xfe".to_vec(), "malformed_json", None),
        (Vec::new(), "malformed_json", None),
        (b"[1, 2, 3]".to_vec(), "invalid_request", None),
        (
            br#"{"task": "fib", "payload": 3}"#.to_vec(),
            "missing_field",
            Some("action"),
        ),
        (
            br#"{"action": 42}"#.to_vec(),
            "invalid_field",
            Some("action"),
        ),
        (
            br#"{"action": "teleport"}"#.to_vec(),
            "unknown_action",
            Some("action"),
        ),
        (
            br#"{"action": "task", "payload": 3}"#.to_vec(),
            "missing_field",
            Some("task"),
        ),
        (
            br#"{"action": "task_status", "id": "nope"}"#.to_vec(),
            "invalid_task_id",
            Some("id"),
        ),
        (
            br#"{"action": "task_status", "id": "01900000-0000-7000-8000-000000000000"}"#.to_vec(),
            "task_not_found",
            None,
        ),
        (vec![b'x'; 1024 * 1024 + 1], "payload_too_large", None),
    ];
    for (body, code, field) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let reply = ask_raw(&endpoint, body).await;
        assert_eq!(reply["ok"], false, "{shown}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{shown}: {reply}");
        if let Some(field) = field {
            assert_eq!(reply["error"]["field"], field, "{shown}: {reply}");
        }
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    // And the edge goes on serving.
    let reply = ask(
        &endpoint,
        json!({"action": "task", "task": "sum", "payload": "1,2,3"}),
    )
    .await;
    assert_eq!(reply["result"], 6, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_still_running_after_the_wait_is_answered_with_its_state() {
    let (_app, edge) =
        spawn_with_edge(|s| s.edge.task_wait_timeout = Duration::from_millis(200)).await;
    let endpoint = edge.request_endpoint();
    let reply = ask(
        &endpoint,
        json!({"action": "task", "task": "sleep", "payload": 1500}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        ["queued", "running"].contains(&reply["state"].as_str().unwrap()),
        "{reply}"
    );
    let id = reply["id"].as_str().unwrap().to_owned();
    let done = wait_until(DEADLINE, || async {
        let status = ask(&endpoint, json!({"action": "task_status", "id": id})).await;
        (status["state"] == "succeeded").then_some(status)
    })
    .await
    .expect("the task never finished");
    assert_eq!(done["result"], json!({"slept_ms": 1500}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_req_clients_at_once_are_all_answered() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let replies = join_all((0..50).map(|i| {
        let endpoint = endpoint.clone();
        async move {
            let reply = ask(
                &endpoint,
                json!({"action": "task", "task": "sum", "payload": [i, i, 1]}),
            )
            .await;
            (i, reply)
        }
    }))
    .await;
    for (i, reply) in replies {
        assert_eq!(reply["ok"], true, "client {i}: {reply}");
        assert_eq!(reply["state"], "succeeded", "client {i}: {reply}");
        assert_eq!(reply["result"], json!(2 * i + 1), "client {i}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_unreachable_every_request_is_answered_in_time_and_service_resumes() {
    let request_timeout = Duration::from_secs(3);
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    // The edge alone reaches RabbitMQ through a proxy the test can cut.
    let proxy = TcpProxy::start(RABBITMQ.parse().unwrap()).await;
    let mut settings = app.env.settings();
    settings.amqp.url = with_port(&settings.amqp.url, proxy.port());
    settings.edge.request_timeout = request_timeout;
    settings.edge.task_wait_timeout = Duration::from_secs(1);
    let edge = TestEdge::start(settings).await;
    let endpoint = edge.request_endpoint();
    let sum = json!({"action": "task", "task": "sum", "payload": "2,2"});
    assert_eq!(ask(&endpoint, sum.clone()).await["result"], 4);

    proxy.cut();
    all_refused_in_time(&endpoint, &sum, request_timeout + Duration::from_secs(2)).await;
    // The TCP gateways answer errors too, and keep the connection.
    let mut ndjson = LineClient::connect(edge.ndjson_addr()).await;
    let answer: Value = serde_json::from_str(
        &ndjson
            .ask(r#"{"id": 1, "action": "sum", "payload": "1,1"}"#)
            .await,
    )
    .unwrap();
    assert_eq!(answer["status"], "error", "{answer}");
    assert_eq!(answer["id"], 1);
    let mut pipe = LineClient::connect(edge.pipe_addr()).await;
    let answer = pipe.ask("TASK|p1|1,1").await;
    assert!(answer.starts_with("ERROR|p1|"), "{answer}");

    proxy.restore();
    let resumed = wait_until(DEADLINE, || async {
        let reply = ask(&endpoint, sum.clone()).await;
        (reply["ok"] == true).then_some(reply)
    })
    .await
    .expect("the edge never recovered");
    assert_eq!(resumed["result"], 4, "{resumed}");
    // The gateways share the edge's connection, so they are back as well.
    assert_eq!(pipe.ask("TASK|p2|1,1").await, "RESULT|p2|2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_every_request_is_answered_in_time_and_service_resumes() {
    let request_timeout = Duration::from_secs(3);
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 1).await;
    // The edge alone reaches PostgreSQL through a proxy the test can cut.
    let proxy = TcpProxy::start(POSTGRES.parse().unwrap()).await;
    let mut settings = app.env.settings();
    settings.database.url = with_port(&settings.database.url, proxy.port());
    settings.edge.request_timeout = request_timeout;
    let edge = TestEdge::start(settings).await;
    let endpoint = edge.request_endpoint();
    let sum = json!({"action": "task", "task": "sum", "payload": "3,3"});
    assert_eq!(ask(&endpoint, sum.clone()).await["result"], 6);

    proxy.cut();
    all_refused_in_time(&endpoint, &sum, request_timeout + Duration::from_secs(2)).await;
    let status = ask(
        &endpoint,
        json!({"action": "task_status", "id": "01900000-0000-7000-8000-000000000000"}),
    )
    .await;
    assert_eq!(status["error"]["code"], "unavailable", "{status}");

    proxy.restore();
    let resumed = wait_until(DEADLINE, || async {
        let reply = ask(&endpoint, sum.clone()).await;
        (reply["ok"] == true).then_some(reply)
    })
    .await
    .expect("the edge never recovered");
    assert_eq!(resumed["result"], 6, "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_in_flight_then_closes_every_socket() {
    let (app, mut edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let in_flight = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            ask(
                &endpoint,
                json!({"action": "task", "task": "sleep", "payload": 1000}),
            )
            .await
        }
    });
    // Once the task is running, the request is surely inside the edge.
    wait_until(DEADLINE, || async {
        let list: Value = app
            .get("/v1/tasks?action=sleep&state=running")
            .await
            .json()
            .await
            .unwrap();
        (!list["tasks"].as_array().unwrap().is_empty()).then_some(())
    })
    .await
    .expect("the sleep task never started");
    let ndjson = edge.ndjson_addr();
    edge.stop().await;

    let reply = in_flight.await.unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["state"], "succeeded", "{reply}");
    assert!(
        tokio::net::TcpStream::connect(ndjson).await.is_err(),
        "the gateway still accepts connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_batch_request_queues_every_task_or_none_with_errors_by_index() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();
    let tasks: Vec<Value> = (0..50)
        .map(|i| json!({"task": "sum", "payload": format!("{i},1")}))
        .collect();
    let reply = ask(&endpoint, json!({"action": "task_batch", "tasks": tasks})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let answered = reply["tasks"].as_array().unwrap();
    assert_eq!(answered.len(), 50);
    for (i, t) in answered.iter().enumerate() {
        assert_eq!(t["action"], "sum");
        let task = app
            .wait_for_task(t["id"].as_str().unwrap().parse().unwrap())
            .await;
        assert_eq!(task["result"], json!(i + 1), "item {i}: {task}");
    }

    // One bad item: the batch is refused, by index, and nothing is added.
    let before = app.count("SELECT count(*) FROM tasks").await;
    let reply = ask(
        &endpoint,
        json!({"action": "tasks", "tasks": [
            {"task": "sum", "payload": "1,2"},
            {"task": "teleport", "payload": 1},
            {"payload": 1},
        ]}),
    )
    .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_tasks", "{reply}");
    let errors: Vec<(u64, &str, &str)> = reply["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
                e["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![(1, "unknown_action", "task"), (2, "missing_field", "task")],
        "{reply}"
    );
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, before);

    let reply = ask(&endpoint, json!({"action": "task_batch", "tasks": "sum"})).await;
    assert_eq!(
        (
            reply["error"]["code"].as_str(),
            reply["error"]["field"].as_str()
        ),
        (Some("invalid_field"), Some("tasks")),
        "{reply}"
    );
}
