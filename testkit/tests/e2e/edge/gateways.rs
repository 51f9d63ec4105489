//! The legacy TCP gateways: newline-delimited JSON and the pipe text protocol.

use bibliomq_testkit::LineClient;
use futures::future::join_all;
use serde_json::{Value, json};

use super::spawn_with_edge;

fn parsed(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_line_runs_a_task_and_is_answered_with_its_result() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let mut client = LineClient::connect(edge.ndjson_addr()).await;
    let answer = client
        .ask(r#"{"id":1,"action":"upper","payload":"hola"}"#)
        .await;
    // Byte for byte what legacy clients expect.
    assert_eq!(
        answer,
        r#"{"id":1,"status":"done","result":{"ok":true,"data":"HOLA"}}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_answers_pipelined_lines_in_order_and_survives_malformed_ones() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let mut client = LineClient::connect(edge.ndjson_addr()).await;
    let mut burst = Vec::new();
    for line in [
        r#"{"id":1,"action":"upper","payload":"hola"}"#,
        r#"{"id":2,"action":"sum","#,
        r#"{"id":3,"action":"fib","payload":"many"}"#,
        r#"{"id":4,"action":"teleport"}"#,
        r#"{"id":5,"payload":1}"#,
        "",
        r#"[1,2]"#,
    ] {
        burst.extend_from_slice(line.as_bytes());
        burst.push(b'\n');
    }
    burst.extend_from_slice(b"{\"id\":8,\"payload\":\"");
    burst.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    burst.extend_from_slice(b"\"}\n");
    burst.extend_from_slice(b"\xff\xfe\n");
    // The slow one first: its answer still comes before the quick one's.
    burst.extend_from_slice(b"{\"id\":\"slow\",\"action\":\"sleep\",\"payload\":300}\r\n");
    burst.extend_from_slice(b"{\"id\":11,\"action\":\"sum\",\"payload\":[1,2]}\n");
    client.send_raw(&burst).await;

    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(parsed(&client.recv().await));
    }
    let expect_error = |answer: &Value, id: Value, code: &str| {
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["status"], "error", "{answer}");
        assert_eq!(answer["result"]["ok"], false, "{answer}");
        assert_eq!(answer["result"]["code"], code, "{answer}");
        assert!(
            answer["result"]["error"].as_str().unwrap().len() > 5,
            "{answer}"
        );
    };
    assert_eq!(answers[0]["result"]["data"], "HOLA", "{}", answers[0]);
    expect_error(&answers[1], Value::Null, "malformed_json");
    expect_error(&answers[2], json!(3), "invalid_payload");
    expect_error(&answers[3], json!(4), "unknown_action");
    expect_error(&answers[4], json!(5), "missing_field");
    expect_error(&answers[5], Value::Null, "invalid_request");
    expect_error(&answers[6], Value::Null, "line_too_long");
    expect_error(&answers[7], Value::Null, "malformed_json");
    assert_eq!(
        answers[8],
        json!({"id": "slow", "status": "done", "result": {"ok": true, "data": {"slept_ms": 300}}})
    );
    assert_eq!(answers[9]["id"], 11);
    assert_eq!(answers[9]["result"]["data"], 3);

    // The connection is still open and served.
    let answer = client
        .ask(r#"{"id":12,"action":"sum","payload":"4,5"}"#)
        .await;
    assert_eq!(parsed(&answer)["result"]["data"], 9, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_reaches_an_ndjson_client_whole() {
    let (_app, edge) = spawn_with_edge(|s| s.tasks.inline_result_limit = 16).await;
    let mut client = LineClient::connect(edge.ndjson_addr()).await;
    let text = "a result longer than sixteen bytes";
    let answer = client
        .ask(&json!({"id": "big", "action": "upper", "payload": text}).to_string())
        .await;
    assert_eq!(
        parsed(&answer),
        json!({"id": "big", "status": "done", "result": {"ok": true, "data": text.to_uppercase()}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ndjson_connections_at_once_are_all_answered() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let addr = edge.ndjson_addr();
    let results = join_all((0..30).map(|c| async move {
        let mut client = LineClient::connect(addr).await;
        let mut got = Vec::new();
        for n in 0..3 {
            let line = json!({"id": n, "action": "sum", "payload": [c, n]}).to_string();
            got.push((c, n, parsed(&client.ask(&line).await)));
        }
        got
    }))
    .await;
    for (c, n, answer) in results.into_iter().flatten() {
        assert_eq!(answer["id"], n, "{answer}");
        assert_eq!(answer["status"], "done", "{answer}");
        assert_eq!(answer["result"]["data"], c + n, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_line_sums_its_numbers() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let mut client = LineClient::connect(edge.pipe_addr()).await;
    assert_eq!(client.ask("TASK|7|1,2,3,4,5").await, "RESULT|7|15");
    assert_eq!(
        client.ask("TASK|big|9223372036854775807,1").await,
        "RESULT|big|9223372036854775808"
    );
    assert_eq!(client.ask("TASK|dec|1.5,2.25").await, "RESULT|dec|3.75");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_answers_malformed_lines_with_errors_and_keeps_serving() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let mut client = LineClient::connect(edge.pipe_addr()).await;
    let answer = client.ask("HELLO").await;
    assert!(answer.starts_with("ERROR|-|"), "{answer}");
    let answer = client.ask("PING|4|x").await;
    assert!(answer.starts_with("ERROR|4|unknown command"), "{answer}");
    let answer = client.ask("TASK||1,2").await;
    assert!(answer.starts_with("ERROR|-|missing id"), "{answer}");
    let answer = client.ask("TASK|5").await;
    assert!(answer.starts_with("ERROR|5|missing numbers"), "{answer}");
    let answer = client.ask("TASK|8|1,x").await;
    assert!(answer.starts_with("ERROR|8|"), "{answer}");
    assert!(answer.len() > "ERROR|8|".len() + 5, "{answer}");

    let mut long = b"TASK|10|".to_vec();
    long.extend(std::iter::repeat_n(b"1,".as_slice(), 600_000).flatten());
    long.extend_from_slice(b"1\n");
    client.send_raw(&long).await;
    let answer = client.recv().await;
    assert!(answer.starts_with("ERROR|10|line longer than"), "{answer}");
    client.send_raw(b"TASK|\xff|1\n").await;
    let answer = client.recv().await;
    assert!(answer.starts_with("ERROR|"), "{answer}");

    assert_eq!(client.ask("TASK|11|10,20").await, "RESULT|11|30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipe_connections_at_once_are_all_answered() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let addr = edge.pipe_addr();
    let answers = join_all((0..30).map(|c| async move {
        let mut client = LineClient::connect(addr).await;
        // Pipelined: both lines go out before either answer is read.
        client.send(&format!("TASK|{c}a|{c},1")).await;
        client.send(&format!("TASK|{c}b|{c},2")).await;
        (c, client.recv().await, client.recv().await)
    }))
    .await;
    for (c, first, second) in answers {
        assert_eq!(first, format!("RESULT|{c}a|{}", c + 1));
        assert_eq!(second, format!("RESULT|{c}b|{}", c + 2));
    }
}
