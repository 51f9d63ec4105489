//! Holds end to end: placing one (its place in the queue, the refusals), a
//! returned copy going onto the hold shelf for the first hold (and the
//! `hold.ready` event), a shelf copy lent only to its patron, the loan
//! fulfilling the hold, pickups expiring to the next hold or back to
//! available (`hold.expired`), renewals refused `on_hold`, cancelling, bad
//! input, and the races of one title across two worker processes.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use bibliomq_core::{broker::topology, clock::ManualClock, metrics::MessageOutcome};
use bibliomq_testkit::{
    TestApp, TestEnv, WorkerProcess,
    app::{DEADLINE, wait_until},
    rabbit, spawn_app,
};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::library::{next_event, watch};

/// A title of the tests' own, with copies per branch (central, norte).
const BOOK: &str = "9788450000023";

async fn place(app: &TestApp, isbn: &str, patron: &str, branch: &str) -> (u16, Value) {
    app.post(
        "/v1/holds",
        &json!({"isbn": isbn, "patron": patron, "pickup_branch": branch}),
    )
    .await
}

async fn lend(app: &TestApp, isbn: &str, patron: &str, branch: &str) -> (u16, Value) {
    app.post(
        "/v1/loans",
        &json!({"isbn": isbn, "patron": patron, "branch": branch}),
    )
    .await
}

/// Returns a loan at `branch` and waits until a worker applied it.
async fn give_back(app: &TestApp, loan_id: &Value, branch: &str) -> Value {
    let (status, accepted) = app
        .post(
            "/v1/returns",
            &json!({"loan_id": loan_id, "branch": branch}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "applied", "{op}");
    op
}

/// The events with each of `keys` (in whatever order they come), by key.
async fn events_of(
    rx: &mut tokio::sync::mpsc::Receiver<bibliomq_core::broker::events::EventMessage>,
    keys: &[&str],
) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < keys.len() {
        let event = tokio::time::timeout_at(end, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("not all of {keys:?} came; seen {seen:?}"))
            .unwrap();
        if keys.contains(&event.routing_key.as_str()) {
            seen.insert(
                event.routing_key.clone(),
                serde_json::from_slice(&event.body).unwrap(),
            );
        }
    }
    seen
}

/// Renews a loan at central and waits until a worker settled it.
async fn renew(app: &TestApp, loan_id: &Value) -> Value {
    let (status, accepted) = app
        .post(
            "/v1/renewals",
            &json!({"loan_id": loan_id, "branch": "central"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    app.wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await
}

async fn copy_status(app: &TestApp, isbn: &str, barcode: &str) -> String {
    let (_, book) = app.get_json(&format!("/v1/books/{isbn}")).await;
    book["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["barcode"] == barcode)
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no copy {barcode} in {book}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_placed_with_its_place_in_the_queue_and_listed_for_patron_and_title() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Un solo ejemplar", &[1, 0]).await;
    let p = app.add_patrons("h", 3).await;
    assert_eq!(lend(&app, BOOK, &p[0], "central").await.0, 201);

    let (status, first) = place(&app, BOOK, &p[1], "norte").await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["state"], "waiting");
    assert_eq!(first["position"], 1);
    assert_eq!(first["title"], "Un solo ejemplar");
    assert_eq!(first["pickup_branch"], "norte");
    assert!(
        first["copy"].is_null() && first["pickup_by"].is_null(),
        "{first}"
    );
    // By title words too.
    let (status, second) = app
        .post(
            "/v1/holds",
            &json!({"title": "solo ejemplar", "patron": p[2], "pickup_branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["position"], 2);

    let (status, queue) = app.get_json(&format!("/v1/titles/{BOOK}/holds")).await;
    assert_eq!(status, 200, "{queue}");
    let order: Vec<(&str, i64)> = queue["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["patron"].as_str().unwrap(),
                h["position"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, vec![(p[1].as_str(), 1), (p[2].as_str(), 2)]);

    let (status, mine) = app.get_json(&format!("/v1/patrons/{}/holds", p[2])).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["holds"][0]["id"], second["id"], "{mine}");
    let (status, one) = app
        .get_json(&format!("/v1/holds/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!((status, &one["position"]), (200, &json!(1)), "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_refused_when_a_copy_is_at_hand_or_the_patron_has_holds_or_is_blocked() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Dos ejemplares", &[1, 1]).await;
    let p = app.add_patrons("r", 4).await;

    let (status, refused) = place(&app, BOOK, &p[0], "central").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("available_at_branch")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lend it instead"),
        "{refused}"
    );

    // The norte copy goes; now a hold at norte is taken, but not twice.
    let (status, lent) = lend(&app, BOOK, &p[0], "norte").await;
    assert_eq!((status, &lent["loan"]["branch"]), (201, &json!("norte")));
    let (status, _) = place(&app, BOOK, &p[1], "norte").await;
    assert_eq!(status, 201);
    let (status, again) = place(&app, BOOK, &p[1], "norte").await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("already_held")),
        "{again}"
    );
    let (status, has_it) = place(&app, BOOK, &p[0], "norte").await;
    assert_eq!(
        (status, has_it["error"]["code"].as_str()),
        (409, Some("already_on_loan")),
        "{has_it}"
    );
    let (status, _) = app
        .patch(
            &format!("/v1/patrons/{}", p[2]),
            &json!({"blocked": {"reason": "unpaid fines"}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, blocked) = place(&app, BOOK, &p[2], "norte").await;
    assert_eq!(
        (status, blocked["error"]["code"].as_str()),
        (409, Some("patron_blocked")),
        "{blocked}"
    );
    assert!(
        blocked["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unpaid fines"),
        "{blocked}"
    );
    // Refusals changed nothing: one hold, the one taken.
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_copy_goes_to_the_first_hold_and_is_lent_only_to_that_patron() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Uno para tres", &[1, 0]).await;
    let p = app.add_patrons("q", 3).await;
    let mut events = watch(&app.env, topology::EVENTS_EXCHANGE, &["hold.#"]).await;
    let (_, lent) = lend(&app, BOOK, &p[0], "central").await;
    let copy = lent["loan"]["copy"].as_str().unwrap().to_owned();
    let (_, first) = place(&app, BOOK, &p[1], "norte").await;
    let (_, second) = place(&app, BOOK, &p[2], "central").await;

    // Returned at central, it goes to the first hold: the shelf at norte.
    let op = give_back(&app, &lent["loan"]["id"], "central").await;
    assert_eq!(op["outcome"]["hold"]["hold_id"], first["id"], "{op}");
    assert_eq!(op["outcome"]["hold"]["pickup_branch"], "norte", "{op}");
    let ready = next_event(&mut events, "hold.ready.norte").await;
    assert_eq!(ready["type"], "hold.ready");
    assert_eq!(ready["patron"], p[1].as_str());
    assert_eq!(ready["copy"], copy.as_str());
    assert_eq!(ready["hold_id"], first["id"]);
    assert_eq!(copy_status(&app, BOOK, &copy).await, "on_hold_shelf");
    let (_, hold) = app
        .get_json(&format!("/v1/holds/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(hold["state"], "ready", "{hold}");
    assert_eq!(hold["copy"], copy.as_str(), "{hold}");
    let pickup_by: chrono::DateTime<chrono::Utc> =
        hold["pickup_by"].as_str().unwrap().parse().unwrap();
    let ready_at: chrono::DateTime<chrono::Utc> =
        hold["ready_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        pickup_by - ready_at,
        chrono::Duration::days(3),
        "the default pickup period"
    );
    // The second in the queue moves up.
    let (_, queue) = app.get_json(&format!("/v1/titles/{BOOK}/holds")).await;
    assert_eq!(queue["holds"][1]["id"], second["id"], "{queue}");
    assert_eq!(queue["holds"][1]["position"], 1, "{queue}");

    // Nobody else gets it, even at central with nothing else there.
    let (status, refused) = lend(&app, BOOK, &p[2], "central").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("not_available")),
        "{refused}"
    );
    let (status, withdraw) = app.delete(&format!("/v1/copies/{copy}")).await;
    assert_eq!(
        (status, withdraw["error"]["code"].as_str()),
        (409, Some("copy_on_hold_shelf")),
        "{withdraw}"
    );

    // Its patron does, whichever desk asks: the loan fulfils the hold.
    let (status, theirs) = lend(&app, BOOK, &p[1], "central").await;
    assert_eq!(status, 201, "{theirs}");
    assert_eq!(theirs["loan"]["copy"], copy.as_str());
    assert_eq!(
        theirs["loan"]["branch"], "norte",
        "lent from the hold shelf"
    );
    assert_eq!(theirs["loan"]["fulfilled_hold"], first["id"]);
    let (_, hold) = app
        .get_json(&format!("/v1/holds/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(hold["state"], "fulfilled", "{hold}");
    assert_eq!(hold["loan_id"], theirs["loan"]["id"], "{hold}");
    assert_eq!(copy_status(&app, BOOK, &copy).await, "on_loan");
    let (_, mine) = app.get_json(&format!("/v1/patrons/{}/holds", p[1])).await;
    assert_eq!(
        mine["holds"],
        json!([]),
        "a fulfilled hold is closed: {mine}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pickup_passes_the_copy_to_the_next_hold_then_back_to_available() {
    let clock = ManualClock::starting_at(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(
        TestEnv::new().await,
        |s| {
            s.library.hold_pickup = std::time::Duration::from_secs(3600);
            s.library.hold_expiry_interval = std::time::Duration::from_millis(50);
        },
        1,
        clock.clock(),
    )
    .await;
    app.add_title(BOOK, "Nadie lo recoge", &[1, 0]).await;
    let p = app.add_patrons("x", 3).await;
    let mut events = watch(&app.env, topology::EVENTS_EXCHANGE, &["hold.#"]).await;
    let (_, lent) = lend(&app, BOOK, &p[0], "central").await;
    let copy = lent["loan"]["copy"].as_str().unwrap().to_owned();
    let (_, first) = place(&app, BOOK, &p[1], "central").await;
    let (_, second) = place(&app, BOOK, &p[2], "norte").await;
    give_back(&app, &lent["loan"]["id"], "central").await;
    let ready = next_event(&mut events, "hold.ready.central").await;
    assert_eq!(ready["hold_id"], first["id"]);

    // Past the deadline (the configured hour), the worker's job expires it
    // and the copy goes to the next hold.
    clock.advance(chrono::Duration::minutes(61));
    let seen = events_of(&mut events, &["hold.expired.central", "hold.ready.norte"]).await;
    let expired = &seen["hold.expired.central"];
    assert_eq!(expired["hold_id"], first["id"], "{expired}");
    assert_eq!(expired["copy"], copy.as_str());
    let ready = &seen["hold.ready.norte"];
    assert_eq!(ready["hold_id"], second["id"], "{ready}");
    let (_, hold) = app
        .get_json(&format!("/v1/holds/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(hold["state"], "expired", "{hold}");
    assert_eq!(copy_status(&app, BOOK, &copy).await, "on_hold_shelf");

    // Expired again, with nobody left: back to available.
    clock.advance(chrono::Duration::minutes(61));
    let expired = next_event(&mut events, "hold.expired.norte").await;
    assert_eq!(expired["hold_id"], second["id"], "{expired}");
    wait_until(DEADLINE, || async {
        (copy_status(&app, BOOK, &copy).await == "available").then_some(())
    })
    .await
    .expect("the copy went back to available");
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'expired'")
            .await,
        2
    );
    // Running the job again changes nothing: each expired once.
    let db = app.env.db().await;
    let again = bibliomq_core::library::store::expire_pickups(&db, clock.clock().now(), 100)
        .await
        .unwrap();
    assert_eq!(again, vec![]);
    let (status, _) = lend(&app, BOOK, &p[0], "norte").await;
    assert_eq!(status, 201, "an available copy is lent to anyone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_refused_on_hold_while_others_wait_for_the_title() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Muy pedido", &[1, 0]).await;
    let p = app.add_patrons("w", 2).await;
    let (_, lent) = lend(&app, BOOK, &p[0], "central").await;
    let (_, hold) = place(&app, BOOK, &p[1], "central").await;

    let op = renew(&app, &lent["loan"]["id"]).await;
    assert_eq!(op["state"], "rejected", "{op}");
    assert_eq!(op["reason"], "on_hold", "{op}");
    assert_eq!(op["outcome"]["waiting"], 1, "{op}");
    assert!(
        op["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("a hold is waiting"),
        "{op}"
    );

    // Once nobody waits, it renews.
    let (status, _) = app
        .delete(&format!("/v1/holds/{}", hold["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    let op = renew(&app, &lent["loan"]["id"]).await;
    assert_eq!(op["state"], "applied", "{op}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_is_idempotent_and_a_shelf_copy_passes_to_the_next_hold() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Se cancela", &[1, 0]).await;
    let p = app.add_patrons("c", 4).await;
    let mut events = watch(&app.env, topology::EVENTS_EXCHANGE, &["hold.#"]).await;
    let (_, lent) = lend(&app, BOOK, &p[0], "central").await;
    let (_, first) = place(&app, BOOK, &p[1], "central").await;
    let (_, second) = place(&app, BOOK, &p[2], "norte").await;
    let (_, third) = place(&app, BOOK, &p[3], "central").await;
    let path = |hold: &Value| format!("/v1/holds/{}", hold["id"].as_str().unwrap());

    // A waiting hold: cancelled once, the same answer after.
    let (status, cancelled) = app.delete(&path(&third)).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["already_cancelled"], false);
    assert_eq!(cancelled["hold"]["state"], "cancelled");
    assert!(cancelled.get("passed_to").is_none(), "{cancelled}");
    let (status, again) = app.delete(&path(&third)).await;
    assert_eq!((status, &again["already_cancelled"]), (200, &json!(true)));
    assert_eq!(again["hold"], cancelled["hold"]);

    // Only for its own patron, when one is named.
    let (status, not_theirs) = app
        .delete(&format!("{}?patron={}", path(&first), p[2]))
        .await;
    assert_eq!(
        (status, not_theirs["error"]["code"].as_str()),
        (409, Some("not_patrons_hold")),
        "{not_theirs}"
    );

    // A ready hold: the copy goes on to the next one.
    give_back(&app, &lent["loan"]["id"], "central").await;
    next_event(&mut events, "hold.ready.central").await;
    let (status, cancelled) = app
        .delete(&format!("{}?patron={}", path(&first), p[1]))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        cancelled["passed_to"]["hold_id"], second["id"],
        "{cancelled}"
    );
    let ready = next_event(&mut events, "hold.ready.norte").await;
    assert_eq!(ready["patron"], p[2].as_str());

    // A fulfilled hold cannot be cancelled.
    assert_eq!(lend(&app, BOOK, &p[2], "norte").await.0, 201);
    let (status, closed) = app.delete(&path(&second)).await;
    assert_eq!(
        (status, closed["error"]["code"].as_str()),
        (409, Some("hold_closed")),
        "{closed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hold_requests_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Sin errores", &[0, 0]).await;
    let p = app.add_patrons("b", 1).await;
    let cases = [
        (
            json!({"isbn": "9788450000024", "patron": p[0], "pickup_branch": "central"}),
            422,
            "invalid_isbn",
        ),
        (
            json!({"isbn": "9788437604947", "patron": p[0], "pickup_branch": "central"}),
            404,
            "title_not_found",
        ),
        (
            json!({"isbn": BOOK, "patron": "nadie", "pickup_branch": "central"}),
            404,
            "patron_not_found",
        ),
        (
            json!({"isbn": BOOK, "patron": "No Valid!", "pickup_branch": "central"}),
            422,
            "invalid_patron",
        ),
        (
            json!({"isbn": BOOK, "patron": p[0], "pickup_branch": "luna"}),
            422,
            "unknown_branch",
        ),
        (
            json!({"isbn": BOOK, "title": "Sin errores", "patron": p[0], "pickup_branch": "central"}),
            422,
            "isbn_or_title",
        ),
        (json!({"isbn": BOOK, "patron": p[0]}), 422, "invalid_field"),
        (
            json!({"isbn": BOOK, "patron": p[0], "pickup_branch": "central", "x": 1}),
            422,
            "invalid_field",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, answer) = app.post("/v1/holds", &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{body}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (_, branch) = place(&app, BOOK, &p[0], "luna").await;
    assert_eq!(branch["error"]["field"], "pickup_branch", "{branch}");

    let unknown = uuid::Uuid::now_v7();
    let (status, answer) = app.delete(&format!("/v1/holds/{unknown}")).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("hold_not_found")),
        "{answer}"
    );
    let (status, answer) = app.delete("/v1/holds/not-a-hold").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_hold_id")),
        "{answer}"
    );
    let (status, answer) = app.get_json("/v1/patrons/nadie/holds").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("patron_not_found"))
    );
    let (status, answer) = app.get_json("/v1/titles/123/holds").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_isbn"))
    );
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 0);
}

/// The lock protocol itself, made deterministic: a placement held open in
/// a transaction of the test's own (as if it were slow) holds the title's
/// lock, so a return of that title's last copy waits for it, and then
/// serves the new hold instead of making the copy available under a hold
/// that would wait for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_racing_a_placement_waits_for_it_and_serves_the_new_hold() {
    let app = spawn_app().await;
    app.add_title(BOOK, "Carrera lenta", &[1, 0]).await;
    let p = app.add_patrons("s", 2).await;
    let (_, lent) = lend(&app, BOOK, &p[0], "central").await;
    let copy = lent["loan"]["copy"].as_str().unwrap().to_owned();

    let mut db = app.env.db().await;
    let tx = db.transaction().await.unwrap();
    let hold_id = uuid::Uuid::now_v7();
    let placed: String = tx
        .query_one(
            "SELECT library_hold_place($1, $2, $3, 'central', now(), interval '3 days')::text",
            &[&hold_id, &BOOK, &p[1]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(placed.contains(r#""outcome": "placed""#), "{placed}");

    let (status, accepted) = app
        .post(
            "/v1/returns",
            &json!({"loan_id": lent["loan"]["id"], "branch": "central"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    // The worker's return waits on the title's lock while the placement is open.
    let watcher = app.env.db().await;
    wait_until(DEADLINE, || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                  WHERE d.datname = current_database() AND l.locktype = 'advisory'
                    AND NOT l.granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await
    .expect("the return never waited for the placement's lock");
    let (_, op) = app
        .get_json(&format!(
            "/v1/operations/{}",
            accepted["operation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(op["state"], "pending", "{op}");

    tx.commit().await.unwrap();
    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(
        op["outcome"]["hold"]["hold_id"],
        hold_id.to_string(),
        "{op}"
    );
    assert_eq!(copy_status(&app, BOOK, &copy).await, "on_hold_shelf");
}

/// What a latecomer in the race ended with.
enum Late {
    Held(Value),
    Lent(Value),
}

/// Hold placements, cancellations, returns and loans of one title at once,
/// with loans and returns decided by two worker processes: every outcome is
/// one of those allowed, each copy is with exactly one patron or shelf or
/// available, nobody is passed over in the queue, and nothing waits while a
/// copy is available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_returns_holds_cancellations_and_loans_never_give_a_copy_twice_or_skip_the_queue()
 {
    const COPIES: usize = 10;
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let workers = WorkerProcess::start_many(&app.env.settings(), 2).await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::LOANS_QUEUE, 2).await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::RETURNS_QUEUE, 2).await;
    let isbn = BOOK;
    app.add_title(isbn, "Carrera", &[u32::try_from(COPIES).unwrap(), 0])
        .await;
    let readers = app.add_patrons("r", COPIES).await;
    let early = app.add_patrons("e", 6).await;
    let late = app.add_patrons("n", 10).await;
    let walk_ins = app.add_patrons("w", 10).await;

    // Every copy out; six holds waiting.
    let mut loans = Vec::new();
    for r in &readers {
        let (status, lent) = lend(&app, isbn, r, "central").await;
        assert_eq!(status, 201, "{lent}");
        loans.push(lent["loan"]["id"].clone());
    }
    let mut early_holds = Vec::new();
    for (i, e) in early.iter().enumerate() {
        let (status, hold) = place(&app, isbn, e, "central").await;
        assert_eq!((status, &hold["position"]), (201, &json!(i + 1)), "{hold}");
        early_holds.push(hold["id"].as_str().unwrap().to_owned());
    }

    // At once, while the returns are applied one by one by the two worker
    // processes: e1's hold is cancelled at once, e2's as soon as a copy waits
    // for it (so the copy passes on), e3's once any copy is on the shelf;
    // e4..e6 ask for a loan until their copy is there; ten walk-ins ask for a
    // loan until every return is applied; ten latecomers, one more after each
    // return, place a hold, or, when told a copy is available, lend it
    // instead.
    let settled = AtomicUsize::new(0);
    let settled = &settled;
    let returns = loans.len();
    let app_ref = &app;
    let hold_state = |id: String| async move {
        app_ref.get_json(&format!("/v1/holds/{id}")).await.1["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let returning = join_all(loans.iter().map(|loan| async move {
        let op = give_back(app_ref, loan, "central").await;
        settled.fetch_add(1, Ordering::SeqCst);
        op
    }));
    let cancelling = join_all(early_holds[..3].iter().enumerate().map(|(i, id)| {
        let hold_state = &hold_state;
        async move {
            match i {
                0 => {}
                1 => wait_until(DEADLINE, || async {
                    (hold_state(id.clone()).await == "ready").then_some(())
                })
                .await
                .expect("e2's copy never came"),
                _ => wait_until(DEADLINE, || async {
                    let (_, queue) = app_ref.get_json(&format!("/v1/titles/{isbn}/holds")).await;
                    queue["holds"]
                        .as_array()
                        .is_some_and(|q| q.iter().any(|h| h["state"] == "ready"))
                        .then_some(())
                })
                .await
                .expect("no copy ever reached the shelf"),
            }
            app_ref.delete(&format!("/v1/holds/{id}")).await
        }
    }));
    let holders_lending = join_all(early[3..].iter().map(|e| async move {
        wait_until(DEADLINE, || async {
            let (s, b) = lend(app_ref, isbn, e, "central").await;
            match (s, b["error"]["code"].as_str()) {
                (201, None) => Some(b),
                (409, Some("not_available")) => None,
                other => panic!("a holder's loan answered {other:?}: {b}"),
            }
        })
        .await
        .unwrap_or_else(|| panic!("{e}'s copy never reached the shelf"))
    }));
    let walking_in = join_all(walk_ins.iter().map(|w| async move {
        wait_until(DEADLINE, || async {
            let all_back = settled.load(Ordering::SeqCst) == returns;
            let (s, b) = lend(app_ref, isbn, w, "central").await;
            match (s, b["error"]["code"].as_str()) {
                (201, None) => {
                    assert!(b["loan"]["fulfilled_hold"].is_null(), "{b}");
                    Some(Some(b))
                }
                (409, Some("not_available")) => all_back.then_some(None),
                other => panic!("a walk-in loan answered {other:?}: {b}"),
            }
        })
        .await
        .expect("walk-ins stop once every copy is back")
    }));
    let arriving = join_all(late.iter().enumerate().map(|(i, n)| async move {
        // Latecomer i comes once i copies are back, so some find copies
        // left over and some find a queue.
        wait_until(DEADLINE, || async {
            (settled.load(Ordering::SeqCst) >= i).then_some(())
        })
        .await
        .expect("the returns are applied");
        let mut refused = 0;
        loop {
            let (s, b) = place(app_ref, isbn, n, "central").await;
            match (s, b["error"]["code"].as_str()) {
                (201, None) => return (n.clone(), Late::Held(b), refused),
                (409, Some("available_at_branch")) => refused += 1,
                other => panic!("placing a hold answered {other:?}: {b}"),
            }
            let (s, b) = lend(app_ref, isbn, n, "central").await;
            match (s, b["error"]["code"].as_str()) {
                (201, None) => return (n.clone(), Late::Lent(b), refused),
                // Someone else took it in between: try the hold again.
                (409, Some("not_available")) => {}
                other => panic!("lending instead answered {other:?}: {b}"),
            }
            assert!(refused < 50, "{n} went round {refused} times");
        }
    }));
    let (returned, cancelled, holder_loans, walked_in, arrived) =
        tokio::join!(returning, cancelling, holders_lending, walking_in, arriving);

    // Every answer is one the rules allow, and each is counted.
    assert!(returned.iter().all(|op| op["state"] == "applied"));
    for (status, body) in &cancelled {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["already_cancelled"], false, "{body}");
    }
    // e2's copy went to the next waiting hold, or, with none waiting, back
    // to available.
    let passed = &cancelled[1].1["passed_to"];
    assert!(
        passed.is_null() || (passed["isbn"] == isbn && passed["patron"] != "e2"),
        "{passed}"
    );
    for (loan, hold) in holder_loans.iter().zip(&early_holds[3..]) {
        assert_eq!(loan["loan"]["fulfilled_hold"], hold.as_str(), "{loan}");
    }
    for (n, late, _) in &arrived {
        match late {
            Late::Held(hold) => assert_eq!(hold["state"], "waiting", "{n}: {hold}"),
            Late::Lent(loan) => assert!(loan["loan"]["fulfilled_hold"].is_null(), "{n}: {loan}"),
        }
    }
    let walk_in_loans: Vec<&Value> = walked_in.iter().flatten().collect();
    let placed: Vec<&String> = arrived
        .iter()
        .filter_map(|(n, l, _)| matches!(l, Late::Held(_)).then_some(n))
        .collect();
    let late_loans = arrived.len() - placed.len();
    let lent_instead: usize = arrived.iter().map(|(_, _, r)| *r).sum();
    eprintln!(
        "race: {} walk-in loans, {} holds placed, {late_loans} latecomers lent instead \
         ({lent_instead} refusals to place), e2's copy passed to {}",
        walk_in_loans.len(),
        placed.len(),
        cancelled[1].1["passed_to"]["patron"]
    );

    let count = |sql: String| {
        let app = &app;
        async move { app.count(&sql).await }
    };
    let open_loans = count(format!(
        "SELECT count(*) FROM loans l JOIN copies c ON c.id = l.copy_id
          WHERE c.isbn = '{isbn}' AND l.returned_at IS NULL"
    ))
    .await;
    let on_loan = count(format!(
        "SELECT count(*) FROM copies WHERE isbn = '{isbn}' AND status = 'on_loan'"
    ))
    .await;
    let on_shelf = count(format!(
        "SELECT count(*) FROM copies WHERE isbn = '{isbn}' AND status = 'on_hold_shelf'"
    ))
    .await;
    let available = count(format!(
        "SELECT count(*) FROM copies WHERE isbn = '{isbn}' AND status = 'available'"
    ))
    .await;
    let ready = count(format!(
        "SELECT count(*) FROM holds WHERE isbn = '{isbn}' AND state = 'ready'"
    ))
    .await;
    let waiting = count(format!(
        "SELECT count(*) FROM holds WHERE isbn = '{isbn}' AND state = 'waiting'"
    ))
    .await;
    // Each copy is in exactly one place, and with exactly one patron.
    assert_eq!(
        on_loan + on_shelf + available,
        i64::try_from(COPIES).unwrap()
    );
    assert_eq!(open_loans, on_loan);
    assert_eq!(
        open_loans,
        i64::try_from(walk_in_loans.len() + holder_loans.len() + late_loans).unwrap()
    );
    assert_eq!(ready, on_shelf);
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT h.copy_id) FROM holds h JOIN copies c ON c.id = h.copy_id
              WHERE h.isbn = '{isbn}' AND h.state = 'ready' AND c.status = 'on_hold_shelf'"
        ))
        .await,
        ready,
        "every ready hold has a shelf copy of its own"
    );
    // Nobody passed over: no hold still waiting is older than one that got a copy.
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM holds w JOIN holds r ON r.isbn = w.isbn
              WHERE w.isbn = '{isbn}' AND w.state = 'waiting' AND r.ready_at IS NOT NULL
                AND w.queued < r.queued"
        ))
        .await,
        0,
        "a later hold got a copy before an earlier one still waiting"
    );
    // Nothing waits while a copy is available at its pickup branch.
    if available > 0 {
        assert_eq!(
            waiting, 0,
            "{available} copies available and {waiting} holds waiting"
        );
    }
    // Cancelled holds never got a copy after; no patron has both a loan and an open hold.
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM holds h JOIN loans l ON l.patron_id = h.patron_id
              JOIN copies c ON c.id = l.copy_id
              WHERE h.isbn = '{isbn}' AND c.isbn = '{isbn}' AND l.returned_at IS NULL
                AND h.state IN ('waiting', 'ready')"
        ))
        .await,
        0
    );
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM holds WHERE isbn = '{isbn}' AND state = 'cancelled'"
        ))
        .await,
        3
    );
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM holds WHERE isbn = '{isbn}' AND patron_id LIKE 'n%'"
        ))
        .await,
        i64::try_from(placed.len()).unwrap()
    );

    // Every copy on the shelf goes to its own patron, and fulfils the hold.
    let (_, queue) = app.get_json(&format!("/v1/titles/{isbn}/holds")).await;
    for hold in queue["holds"].as_array().unwrap() {
        if hold["state"] != "ready" {
            continue;
        }
        let (status, lent) = lend(&app, isbn, hold["patron"].as_str().unwrap(), "central").await;
        assert_eq!(status, 201, "{lent}");
        assert_eq!(lent["loan"]["copy"], hold["copy"]);
        assert_eq!(lent["loan"]["fulfilled_hold"], hold["id"]);
    }
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM copies WHERE isbn = '{isbn}' AND status = 'on_hold_shelf'"
        ))
        .await,
        0
    );

    // Both worker processes took part.
    let mut per_process = Vec::new();
    for w in &workers {
        per_process.push(
            w.message_count(topology::LOANS_QUEUE, MessageOutcome::Consumed)
                .await
                + w.message_count(topology::RETURNS_QUEUE, MessageOutcome::Consumed)
                    .await,
        );
    }
    assert!(
        per_process.iter().all(|&n| n > 0),
        "both worker processes take part: {per_process:?}"
    );
}
