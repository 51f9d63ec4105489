//! Holds over ZeroMQ: `hold_place`, `holds`, `hold_cancel` answer as the
//! HTTP API does, bad input gets a clear error, and a copy put on the hold
//! shelf reaches the event feed as `hold.ready.<branch>`.

use std::time::Duration;

use bibliomq_testkit::app::DEADLINE;
use serde_json::json;

use super::{Subscriber, ask, spawn_with_edge};

const CRIMEN: &str = "9780140449266";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_placed_listed_and_cancelled_over_zeromq_and_announced_on_the_feed() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    app.seed(0, 12).await;
    let endpoint = edge.request_endpoint();
    let mut loans = Vec::new();
    for patron in ["marta", "jorge"] {
        let lent = ask(
            &endpoint,
            json!({"action": "loan", "isbn": CRIMEN, "patron": patron, "branch": "central"}),
        )
        .await;
        assert_eq!(lent["ok"], true, "{lent}");
        loans.push(lent["loan"]["id"].clone());
    }

    let placed = ask(
        &endpoint,
        json!({"action": "hold_place", "isbn": CRIMEN, "patron": "lucia", "pickup_branch": "norte"}),
    )
    .await;
    assert_eq!(placed["ok"], true, "{placed}");
    assert_eq!(placed["hold"]["position"], 1, "{placed}");
    assert_eq!(placed["hold"]["state"], "waiting", "{placed}");
    let id = placed["hold"]["id"].clone();
    let second = ask(
        &endpoint,
        json!({"action": "hold_place", "isbn": CRIMEN, "patron": "ana", "pickup_branch": "central"}),
    )
    .await;
    assert_eq!(second["hold"]["position"], 2, "{second}");

    let theirs = ask(&endpoint, json!({"action": "holds", "patron": "lucia"})).await;
    assert_eq!(theirs["holds"][0]["id"], id, "{theirs}");
    let queue = ask(&endpoint, json!({"action": "holds", "isbn": CRIMEN})).await;
    assert_eq!(queue["holds"].as_array().unwrap().len(), 2, "{queue}");
    let (_, http) = app.get_json(&format!("/v1/titles/{CRIMEN}/holds")).await;
    assert_eq!(queue["holds"], http["holds"], "the same answer as HTTP");

    // Bad input: a clear error, nothing changed.
    for (request, code) in [
        (
            json!({"action": "hold_place", "isbn": CRIMEN, "patron": "nadie", "pickup_branch": "norte"}),
            "patron_not_found",
        ),
        (
            json!({"action": "hold_place", "isbn": "978", "patron": "lucia", "pickup_branch": "norte"}),
            "invalid_isbn",
        ),
        (
            json!({"action": "hold_place", "isbn": CRIMEN, "patron": "lucia", "pickup_branch": "luna"}),
            "unknown_branch",
        ),
        (
            json!({"action": "hold_place", "isbn": CRIMEN, "patron": "lucia", "pickup_branch": "norte"}),
            "already_held",
        ),
        (
            json!({"action": "hold_cancel", "id": uuid::Uuid::now_v7()}),
            "hold_not_found",
        ),
        (
            json!({"action": "hold_cancel", "id": "x"}),
            "invalid_hold_id",
        ),
        (json!({"action": "holds"}), "missing_field"),
    ] {
        let reply = ask(&endpoint, request.clone()).await;
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{request}: {reply}");
    }
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 2);

    // A return puts the copy on the shelf for lucia: the feed says so. The
    // feed's subscriptions settle in the background, so a task's event is
    // awaited first.
    let mut sub = Subscriber::connect(&edge.events_endpoint(), "");
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "no event reached the SUB client"
        );
        let task = app.submit("echo", json!("warm-up")).await.to_string();
        if sub
            .next_where(Duration::from_secs(1), |_, body| body["task_id"] == task)
            .await
            .is_some()
        {
            break;
        }
    }
    let returned = ask(
        &endpoint,
        json!({"action": "return", "loan_id": loans[0], "branch": "central", "wait": true}),
    )
    .await;
    assert_eq!(returned["ok"], true, "{returned}");
    let (topic, event) = sub
        .next_where(DEADLINE, |topic, _| topic.starts_with("hold.ready."))
        .await
        .expect("no hold.ready event on the feed");
    assert_eq!(topic, "hold.ready.norte");
    assert_eq!(event["hold_id"], id, "{event}");
    assert_eq!(event["patron"], "lucia", "{event}");

    // Cancelled: the copy passes to ana; cancelling again changes nothing.
    let cancelled = ask(
        &endpoint,
        json!({"action": "hold_cancel", "id": id, "patron": "lucia"}),
    )
    .await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    assert_eq!(cancelled["already_cancelled"], false, "{cancelled}");
    assert_eq!(cancelled["passed_to"]["patron"], "ana", "{cancelled}");
    let again = ask(&endpoint, json!({"action": "hold_cancel", "id": id})).await;
    assert_eq!(again["already_cancelled"], true, "{again}");
}
