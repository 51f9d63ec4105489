//! The ZeroMQ event feed (a libzmq SUB client against the edge's PUB socket).

use std::{collections::HashSet, time::Duration};

use bibliomq_testkit::{TestEdge, app::DEADLINE, spawn_app};
use serde_json::json;

use super::Subscriber;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_client_receives_task_succeeded_events_of_tasks_submitted_over_http() {
    let app = spawn_app().await;
    let edge = TestEdge::start(app.env.settings()).await;
    let mut sub = Subscriber::connect(&edge.events_endpoint(), "task.succeeded");

    // Two subscriptions are set up in the background: the edge's queue on
    // RabbitMQ and this client's on the PUB socket. Until both are in place
    // events pass unseen, so tasks are submitted until one's event arrives.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "no event ever reached the SUB client"
        );
        let id = app.submit("echo", json!("warm-up")).await.to_string();
        let seen = sub
            .next_where(Duration::from_secs(1), |_, body| body["task_id"] == id)
            .await;
        if seen.is_some() {
            break;
        }
    }

    // From now on every outcome reaches the client.
    let mut ids = HashSet::new();
    for n in 0..5 {
        ids.insert(app.submit("sum", json!([n, 1])).await.to_string());
    }
    while !ids.is_empty() {
        let (topic, body) = sub
            .next_where(DEADLINE, |_, body| {
                ids.contains(body["task_id"].as_str().unwrap_or_default())
            })
            .await
            .unwrap_or_else(|| panic!("no event for tasks {ids:?}"));
        assert_eq!(topic, "task.succeeded");
        assert_eq!(body["type"], "task.succeeded", "{body}");
        assert_eq!(body["state"], "succeeded", "{body}");
        assert_eq!(body["action"], "sum", "{body}");
        ids.remove(body["task_id"].as_str().unwrap());
    }
}
