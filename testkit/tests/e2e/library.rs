//! Library circulation: loans by RPC, renewals and returns as events, the
//! rules, the races, idempotency and the catalogue queries.

use std::time::{Duration, Instant};

use bibliomq_core::{
    broker::{
        Broker, Topology, headers,
        rpc::{RpcClient, new_call_id},
        topology,
    },
    clock::ManualClock,
    library::message::{LOAN_BUNDLE_KIND, LoanBundle, LoanRequestMessage},
    metrics::MessageOutcome,
};
use bibliomq_testkit::{
    TestApp, TestEnv, WorkerProcess,
    app::{DEADLINE, Worker, wait_until},
    rabbit, spawn_app, status_and_json,
};
use futures::future::join_all;
use serde_json::{Value, json};

const QUIJOTE: &str = "9788437604947";
const SOMBRA: &str = "9788497592208";
const CRIMEN: &str = "9780140449266";

/// The API in this process and two `bibliomq-workers` processes, returned
/// once both of them consume loan requests, so that a race among loans is
/// decided across processes and not only across tasks of one runtime.
async fn spawn_with_two_worker_processes() -> (TestApp, Vec<WorkerProcess>) {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let workers = WorkerProcess::start_many(&app.env.settings(), 2).await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::LOANS_QUEUE, 2).await;
    (app, workers)
}

/// A loan of `isbn` at `central` for each of `patrons`, all at once; the
/// answers in the order of `patrons`.
async fn lend_to_each(app: &TestApp, patrons: &[String], isbn: &str) -> Vec<(u16, Value)> {
    join_all(patrons.iter().map(|p| {
        let request = json!({"isbn": isbn, "patron": p, "branch": "central"});
        async move { app.post("/v1/loans", &request).await }
    }))
    .await
}

/// Loan requests each worker process has taken from the queue.
async fn loan_requests_per_process(workers: &[WorkerProcess]) -> Vec<u64> {
    let mut consumed = Vec::new();
    for w in workers {
        consumed.push(
            w.message_count(topology::LOANS_QUEUE, MessageOutcome::Consumed)
                .await,
        );
    }
    consumed
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_is_answered_at_once_with_the_copy_branch_and_due_date() {
    let app = spawn_app().await;
    app.seed(20, 20).await;
    let resp = app
        .post_json(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "norte"}),
        )
        .await;
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/loans/")
    );
    assert!(resp.headers().contains_key("idempotency-key"));
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 201, "{body}");
    let loan = &body["loan"];
    assert_eq!(loan["title"], "Don Quijote de la Mancha");
    assert_eq!(loan["branch"], "norte");
    assert_eq!(loan["patron"], "ana");
    assert_eq!(
        ts(&loan["due_at"]) - ts(&loan["loaned_at"]),
        chrono::Duration::days(14)
    );

    let book: Value = app
        .get(&format!("/v1/books/{QUIJOTE}"))
        .await
        .json()
        .await
        .unwrap();
    let lent: Vec<&Value> = book["copies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "on_loan")
        .collect();
    assert_eq!(lent.len(), 1, "{book}");
    assert_eq!(lent[0]["barcode"], loan["copy"]);
    assert_eq!(lent[0]["due_at"], loan["due_at"]);
    let norte = book["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["branch"] == "norte")
        .unwrap();
    assert_eq!(
        norte["available"].as_i64().unwrap(),
        norte["total"].as_i64().unwrap() - 1
    );

    let mine: Value = app.get("/v1/patrons/ana/loans").await.json().await.unwrap();
    assert_eq!(mine["loans"][0]["id"], loan["id"]);
    assert_eq!(mine["loans"][0]["overdue"], false);
    let shown: Value = app
        .get(&format!("/v1/loans/{}", loan["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["copy"], loan["copy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_prefers_the_requested_branch_and_falls_back_to_another() {
    let app = spawn_app().await;
    app.add_patrons("p", 2).await;
    app.add_title("9788450000016", "Un solo ejemplar en la central", &[1, 0])
        .await;
    app.add_title("9788450000023", "Uno en cada sucursal", &[1, 1])
        .await;
    let (_, first) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788450000023", "patron": "p1", "branch": "norte"}),
        )
        .await;
    assert_eq!(first["loan"]["branch"], "norte");
    let (status, elsewhere) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788450000016", "patron": "p2", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201, "{elsewhere}");
    assert_eq!(elsewhere["loan"]["branch"], "central");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_by_title_ignores_case_and_accents() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let (status, by_title) = app
        .post(
            "/v1/loans",
            &json!({"title": "QUIJOTE", "patron": "luis", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{by_title}");
    assert_eq!(by_title["loan"]["isbn"], QUIJOTE);
    let (status, accented) = app
        .post(
            "/v1/loans",
            &json!({"title": "sómbra del VIENTO", "patron": "luis", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{accented}");
    assert_eq!(accented["loan"]["isbn"], SOMBRA);

    app.add_title("9788450000030", "El camino del norte", &[1, 1])
        .await;
    app.add_title("9788450000047", "El camino del sur", &[1, 1])
        .await;
    let (status, ambiguous) = app
        .post(
            "/v1/loans",
            &json!({"title": "camino", "patron": "luis", "branch": "central"}),
        )
        .await;
    assert_eq!(
        (status, ambiguous["error"]["code"].as_str()),
        (409, Some("ambiguous_title")),
        "{ambiguous}"
    );
    assert_eq!(
        ambiguous["error"]["candidates"].as_array().unwrap().len(),
        2
    );
    let (status, missing) = app
        .post(
            "/v1/loans",
            &json!({"title": "libro que no existe", "patron": "luis", "branch": "central"}),
        )
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("title_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaning_a_title_with_no_copy_left_says_when_the_earliest_is_due() {
    let app = spawn_app().await;
    app.add_patrons("p", 2).await;
    app.add_title("9788450000016", "El último ejemplar", &[1, 0])
        .await;
    let (_, first) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788450000016", "patron": "p1", "branch": "central"}),
        )
        .await;
    let (status, refused) = app
        .post(
            "/v1/loans",
            &json!({"isbn": "9788450000016", "patron": "p2", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "not_available");
    assert_eq!(
        ts(&refused["error"]["earliest_due_at"]),
        ts(&first["loan"]["due_at"])
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("due back")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patron_cannot_hold_more_than_five_loans() {
    let app = spawn_app().await;
    app.add_patrons("p", 1).await;
    for i in 0..6u64 {
        let isbn = bibliomq_core::library::Isbn::from_prefix12(&format!("97884500001{i}")).unwrap();
        app.add_title(isbn.as_str(), &format!("Tomo {i}"), &[1, 1])
            .await;
        let (status, answer) = app
            .post(
                "/v1/loans",
                &json!({"isbn": isbn.as_str(), "patron": "p1", "branch": "central"}),
            )
            .await;
        if i < 5 {
            assert_eq!(status, 201, "{answer}");
        } else {
            assert_eq!(status, 409, "{answer}");
            assert_eq!(answer["error"]["code"], "loan_limit_reached");
            assert_eq!(answer["error"]["max_loans"], 5);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_loans_of_three_copies_make_exactly_three_loans() {
    let (app, workers) = spawn_with_two_worker_processes().await;
    let patrons = app.add_patrons("r", 100).await;
    app.add_title("9788450000016", "Tres ejemplares", &[2, 1])
        .await;
    let answers = lend_to_each(&app, &patrons, "9788450000016").await;
    let won = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "not_available")
        .count();
    assert_eq!((won, refused), (3, 97), "{answers:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE returned_at IS NULL")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM copies WHERE status = 'available'")
            .await,
        0
    );
    let copies: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|(_, b)| b["loan"]["copy"].as_str())
        .collect();
    assert_eq!(copies.len(), 3);
    // Requests that come together travel in bundles of at most 64, so a
    // hundred make at least two messages, and both processes race.
    let mut settled = Vec::new();
    for w in &workers {
        settled.push(w.operation_count("loan").await);
    }
    assert_eq!(settled.iter().sum::<u64>(), 100, "{settled:?}");
    assert!(
        settled.iter().all(|&n| n > 0),
        "both worker processes take part in the race: {settled:?}"
    );
    let messages: u64 = loan_requests_per_process(&workers).await.iter().sum();
    assert!(
        (2..100).contains(&messages),
        "requests that came together shared messages: {messages} for 100"
    );
}

/// A loan bundle answers each of its calls in one reply; delivered again
/// (as after its worker died before the ack), every request replays its
/// first outcome and no copy is lent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_bundle_delivered_again_answers_each_call_with_its_first_outcome() {
    let app = spawn_app().await;
    let patrons = app.add_patrons("b", 3).await;
    app.add_title("9788450000016", "Dos ejemplares", &[1, 1])
        .await;
    let requests: Vec<Vec<u8>> = patrons
        .iter()
        .map(|p| {
            serde_json::to_vec(&LoanRequestMessage {
                operation_id: uuid::Uuid::now_v7(),
                idempotency_key: format!("bundle-{p}"),
                fingerprint: format!("f-{p}"),
                isbn: "9788450000016".into(),
                patron: p.clone(),
                branch: "central".into(),
                requested_at: chrono::Utc::now(),
            })
            .unwrap()
        })
        .collect();
    let calls: Vec<String> = patrons.iter().map(|_| new_call_id()).collect();
    let body = LoanBundle::body(
        requests.iter().map(Vec::as_slice),
        &calls,
        patrons.iter().map(String::as_str),
    );
    let broker = Broker::start(
        &app.env.amqp_url(),
        "test-loan-bundle",
        Topology::new(&app.env.settings().tasks),
    );
    let rpc = RpcClient::new(broker, DEADLINE);
    let ask = || {
        let properties =
            headers::persistent_json("bundle", "bundle").with_type(LOAN_BUNDLE_KIND.into());
        let (rpc, body, calls) = (&rpc, &body, &calls);
        async move {
            rpc.call_many(
                topology::RPC_EXCHANGE,
                topology::LOAN_REQUEST_KEY,
                body,
                properties,
                calls,
                DEADLINE,
            )
            .await
            .into_iter()
            .map(|reply| serde_json::from_slice::<Value>(&reply.unwrap()).unwrap())
            .collect::<Vec<Value>>()
        }
    };
    let first = ask().await;
    let outcomes: Vec<&str> = first
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["loaned", "loaned", "rejected"], "{first:?}");
    assert_eq!(first[2]["code"], "not_available");

    let again = ask().await;
    for (before, after) in first.iter().zip(&again) {
        assert_eq!(after["outcome"], before["outcome"], "{after}");
    }
    // The loans come back as replays of the first answers; the refusal,
    // recorded under its key, as the same refusal.
    assert_eq!(
        (&again[0]["replayed"], &again[1]["replayed"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(again[2]["code"], "not_available");
    assert_eq!(again[0]["loan"]["id"], first[0]["loan"]["id"]);
    assert_eq!(again[1]["loan"]["id"], first[1]["loan"]["id"]);
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 3);
    let metrics = &app.workers[0].metrics;
    assert_eq!(
        metrics.message_count(topology::LOANS_QUEUE, MessageOutcome::Consumed),
        2,
        "six answers in two messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_retried_with_the_same_idempotency_key_makes_one_loan() {
    let (app, workers) = spawn_with_two_worker_processes().await;
    app.add_patrons("p", 2).await;
    app.add_title("9788450000016", "Reintentos", &[2, 2]).await;
    let send = |key: &'static str, patron: &'static str| {
        app.http
            .post(app.url("/v1/loans"))
            .header("idempotency-key", key)
            .json(&json!({"isbn": "9788450000016", "patron": patron, "branch": "central"}))
            .send()
    };
    let (s1, first) = status_and_json(send("key-1", "p1").await.unwrap()).await;
    let resp = send("key-1", "p1").await.unwrap();
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let (s2, again) = status_and_json(resp).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["loan"]["id"], again["loan"]["id"]);
    assert_eq!(again["replayed"], true);

    // Many at the same instant with one key: still one loan.
    let answers = join_all((0..10).map(|_| send("key-2", "p2"))).await;
    let mut ids = std::collections::HashSet::new();
    for a in answers {
        let (s, b) = status_and_json(a.unwrap()).await;
        assert_eq!(s, 201, "{b}");
        ids.insert(b["loan"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 2);
    let consumed = loan_requests_per_process(&workers).await;
    assert!(
        consumed.iter().sum::<u64>() >= 2,
        "the loans were made by the worker processes: {consumed:?}"
    );

    let (status, reused) = status_and_json(
        app.http
            .post(app.url("/v1/loans"))
            .header("idempotency-key", "key-1")
            .json(&json!({"isbn": "9788450000016", "patron": "p2", "branch": "central"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, reused["error"]["code"].as_str()),
        (409, Some("idempotency_key_reused"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_request_delivered_twice_makes_one_loan() {
    let app = spawn_app().await;
    app.add_patrons("p", 1).await;
    app.add_title("9788450000016", "Duplicados", &[2, 2]).await;
    let (_, first) = status_and_json(
        app.http
            .post(app.url("/v1/loans"))
            .header("idempotency-key", "dup-1")
            .json(&json!({"isbn": "9788450000016", "patron": "p1", "branch": "central"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The same request again, as a redelivery after a lost ack would be.
    let fingerprint = app
        .env
        .db()
        .await
        .query_one(
            "SELECT fingerprint FROM operations WHERE idempotency_key = 'dup-1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let again = LoanRequestMessage {
        operation_id: uuid::Uuid::now_v7(),
        idempotency_key: "dup-1".into(),
        fingerprint,
        isbn: "9788450000016".into(),
        patron: "p1".into(),
        branch: "central".into(),
        requested_at: chrono::Utc::now(),
    };
    rabbit::publish_raw(
        &app.env.amqp_url(),
        topology::RPC_EXCHANGE,
        topology::LOAN_REQUEST_KEY,
        &serde_json::to_vec(&again).unwrap(),
        headers::persistent_json("again", "again"),
    )
    .await;
    let metrics = &app.workers[0].metrics;
    wait_until(DEADLINE, || async {
        (metrics.message_count(topology::LOANS_QUEUE, MessageOutcome::Acked) >= 2).then_some(())
    })
    .await
    .expect("the second delivery was never settled");
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 1);
    assert!(first["loan"]["id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_loan_requests_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let cases = [
        (
            json!({"isbn": "9788437604948", "patron": "ana", "branch": "central"}),
            422,
            "invalid_isbn",
            "isbn",
        ),
        (
            json!({"isbn": QUIJOTE, "patron": "nadie", "branch": "central"}),
            404,
            "patron_not_found",
            "",
        ),
        (
            json!({"isbn": "9788450099997", "patron": "ana", "branch": "central"}),
            404,
            "title_not_found",
            "",
        ),
        (
            json!({"isbn": QUIJOTE, "patron": "ana", "branch": "sur"}),
            422,
            "unknown_branch",
            "branch",
        ),
        (
            json!({"isbn": QUIJOTE, "patron": "Ana María", "branch": "central"}),
            422,
            "invalid_patron",
            "patron",
        ),
        (
            json!({"patron": "ana", "branch": "central"}),
            422,
            "missing_field",
            "isbn",
        ),
        (
            json!({"isbn": QUIJOTE, "branch": "central"}),
            422,
            "invalid_field",
            "patron",
        ),
        (
            json!({"isbn": QUIJOTE, "title": "x", "patron": "ana", "branch": "central"}),
            422,
            "isbn_or_title",
            "",
        ),
    ];
    for (request, status, code, field) in cases {
        let (got, answer) = app.post("/v1/loans", &request).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{request} → {answer}"
        );
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{request} → {answer}");
        }
    }
    let (status, answer) = status_and_json(
        app.http
            .post(app.url("/v1/loans"))
            .header("content-type", "application/json")
            .body("{\"isbn\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (status, answer) = status_and_json(
        app.post_json(
            "/v1/renewals",
            &json!({"isbn": "123", "patron": "ana", "branch": "central"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_isbn"))
    );
    let (status, answer) = status_and_json(
        app.post_json(
            "/v1/returns",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "central"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("loan_not_found"))
    );
    let (status, answer) = status_and_json(
        app.post_json(
            "/v1/returns",
            &json!({"isbn": QUIJOTE, "patron": "nadie", "branch": "central"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("patron_not_found"))
    );

    assert_eq!(app.count("SELECT count(*) FROM loans").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM copies WHERE status = 'on_loan'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_accepted_at_once_and_applied_by_a_worker() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let (_, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": CRIMEN, "patron": "marta", "branch": "central"}),
        )
        .await;
    let resp = app
        .post_json(
            "/v1/renewals",
            &json!({"isbn": CRIMEN, "patron": "marta", "branch": "central"}),
        )
        .await;
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/operations/")
    );
    let (status, accepted) = status_and_json(resp).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["state"], "pending");
    assert_eq!(accepted["loan_id"], lent["loan"]["id"]);
    let tentative = ts(&accepted["tentative_due_at"]);
    assert_eq!(
        tentative - ts(&lent["loan"]["due_at"]),
        chrono::Duration::days(7)
    );

    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "applied", "{op}");
    assert_eq!(op["kind"], "renewal");
    assert_eq!(ts(&op["outcome"]["due_at"]), tentative);
    let mine: Value = app
        .get("/v1/patrons/marta/loans")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["loans"][0]["renewals"], 1);
    assert_eq!(ts(&mine["loans"][0]["due_at"]), tentative);

    // By loan id works the same.
    let (status, by_id) = status_and_json(
        app.post_json(
            "/v1/renewals",
            &json!({"loan_id": lent["loan"]["id"], "branch": "norte"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{by_id}");
    let op = app
        .wait_for_operation(by_id["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "applied");
    assert_eq!(op["branch"], "norte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_renewal_is_rejected_with_its_reason() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    app.post(
        "/v1/loans",
        &json!({"isbn": QUIJOTE, "patron": "jorge", "branch": "central"}),
    )
    .await;
    let renewal = json!({"isbn": QUIJOTE, "patron": "jorge", "branch": "central"});
    for expected in ["applied", "applied", "rejected"] {
        let (_, accepted) = app.post("/v1/renewals", &renewal).await;
        let op = app
            .wait_for_operation(accepted["operation_id"].as_str().unwrap())
            .await;
        assert_eq!(op["state"], expected, "{op}");
        if expected == "rejected" {
            assert_eq!(op["reason"], "renewal_limit_reached");
            assert!(
                op["outcome"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("renewed 2 times")
            );
        }
    }
    let history = app
        .count("SELECT count(*) FROM circulation_history WHERE kind = 'renewal'")
        .await;
    assert_eq!(history, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_loan_cannot_be_renewed() {
    let clock = ManualClock::starting_at(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(TestEnv::new().await, |_| {}, 1, clock.clock()).await;
    app.seed(0, 20).await;
    app.post(
        "/v1/loans",
        &json!({"isbn": SOMBRA, "patron": "lucia", "branch": "norte"}),
    )
    .await;
    clock.advance(chrono::Duration::days(15));
    let mine: Value = app
        .get("/v1/patrons/lucia/loans")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["loans"][0]["overdue"], true);
    let (_, accepted) = status_and_json(
        app.post_json(
            "/v1/renewals",
            &json!({"isbn": SOMBRA, "patron": "lucia", "branch": "norte"}),
        )
        .await,
    )
    .await;
    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "rejected", "{op}");
    assert_eq!(op["reason"], "overdue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_closes_the_loan_and_frees_the_copy() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let (_, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": CRIMEN, "patron": "pablo", "branch": "central"}),
        )
        .await;
    let (status, accepted) = status_and_json(
        app.post_json(
            "/v1/returns",
            &json!({"isbn": CRIMEN, "patron": "pablo", "branch": "norte"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert!(accepted.get("tentative_due_at").is_none());
    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "applied", "{op}");
    assert_eq!(op["outcome"]["overdue"], false);

    let book: Value = app
        .get(&format!("/v1/books/{CRIMEN}"))
        .await
        .json()
        .await
        .unwrap();
    let copy = book["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["barcode"] == lent["loan"]["copy"])
        .unwrap();
    assert_eq!(copy["status"], "available");
    let mine: Value = app
        .get("/v1/patrons/pablo/loans")
        .await
        .json()
        .await
        .unwrap();
    assert!(mine["loans"].as_array().unwrap().is_empty());
    let all: Value = app
        .get("/v1/patrons/pablo/loans?all=true")
        .await
        .json()
        .await
        .unwrap();
    assert!(all["loans"][0]["returned_at"].is_string());

    // Returning it again: nothing open to return.
    let (status, again) = status_and_json(
        app.post_json(
            "/v1/returns",
            &json!({"loan_id": lent["loan"]["id"], "branch": "central"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("not_on_loan"))
    );
}

/// A private queue on an exchange, to watch what flows through it.
pub(crate) async fn watch(
    env: &TestEnv,
    exchange: &str,
    keys: &[&str],
) -> tokio::sync::mpsc::Receiver<bibliomq_core::broker::events::EventMessage> {
    let broker = Broker::start(
        &env.amqp_url(),
        "test-watcher",
        Topology::new(&env.settings().tasks),
    );
    broker
        .subscribe_bound(exchange, keys, 1000, DEADLINE)
        .await
        .expect("the watch queue never got bound")
}

pub(crate) async fn next_event(
    rx: &mut tokio::sync::mpsc::Receiver<bibliomq_core::broker::events::EventMessage>,
    key: &str,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{key}` event"))
            .unwrap();
        if event.routing_key == key {
            return serde_json::from_slice(&event.body).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_returns_travel_by_operation_and_branch_and_outcomes_are_announced() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let mut circulation = watch(
        &app.env,
        topology::CIRCULATION_EXCHANGE,
        &["renewal.norte", "return.central"],
    )
    .await;
    let mut events = watch(&app.env, topology::EVENTS_EXCHANGE, &["#"]).await;

    let (_, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "sofia", "branch": "central"}),
        )
        .await;
    let loaned = next_event(&mut events, "loaned.central").await;
    assert_eq!(loaned["loan"]["id"], lent["loan"]["id"]);

    let (_, renewal) = status_and_json(
        app.post_json(
            "/v1/renewals",
            &json!({"isbn": QUIJOTE, "patron": "sofia", "branch": "norte"}),
        )
        .await,
    )
    .await;
    let sent = next_event(&mut circulation, "renewal.norte").await;
    assert_eq!(sent["operation_id"], renewal["operation_id"]);
    let renewed = next_event(&mut events, "renewed.norte").await;
    assert_eq!(renewed["operation_id"], renewal["operation_id"]);

    let (_, returned) = status_and_json(
        app.post_json(
            "/v1/returns",
            &json!({"isbn": QUIJOTE, "patron": "sofia", "branch": "central"}),
        )
        .await,
    )
    .await;
    let sent = next_event(&mut circulation, "return.central").await;
    assert_eq!(sent["kind"], "return");
    let done = next_event(&mut events, "returned.central").await;
    assert_eq!(done["operation_id"], returned["operation_id"]);

    // A rejection is announced too, with its reason.
    let (_, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "sofia", "branch": "central"}),
        )
        .await;
    for _ in 0..3 {
        app.post_json(
            "/v1/renewals",
            &json!({"loan_id": lent["loan"]["id"], "branch": "central"}),
        )
        .await;
    }
    let rejected = next_event(&mut events, "rejected.renewal.central").await;
    assert_eq!(rejected["reason"], "renewal_limit_reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_renewal_message_applies_once() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let mut circulation = watch(&app.env, topology::CIRCULATION_EXCHANGE, &["renewal.*"]).await;
    app.post(
        "/v1/loans",
        &json!({"isbn": QUIJOTE, "patron": "diego", "branch": "central"}),
    )
    .await;
    let (_, accepted) = status_and_json(
        app.post_json(
            "/v1/renewals",
            &json!({"isbn": QUIJOTE, "patron": "diego", "branch": "central"}),
        )
        .await,
    )
    .await;
    let copy = next_event(&mut circulation, "renewal.central").await;
    app.wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;

    // The same message again, as after a consumer died between its commit
    // and its ack.
    rabbit::publish_raw(
        &app.env.amqp_url(),
        topology::CIRCULATION_EXCHANGE,
        "renewal.central",
        copy.to_string().as_bytes(),
        headers::persistent_json("dup", "dup"),
    )
    .await;
    let metrics = &app.workers[0].metrics;
    wait_until(DEADLINE, || async {
        (metrics.message_count(topology::RENEWALS_QUEUE, MessageOutcome::Duplicate) == 1)
            .then_some(())
    })
    .await
    .expect("the duplicate was never settled");
    let mine: Value = app
        .get("/v1/patrons/diego/loans")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["loans"][0]["renewals"], 1, "applied twice: {mine}");
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history WHERE kind = 'renewal'")
            .await,
        1
    );
}

/// Returns that come together travel in bundles (one message for several
/// returns of one branch), settled across two worker processes: each
/// applies once, every copy is free again, and nothing is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_that_come_together_travel_in_bundles_and_each_applies_once() {
    let (app, workers) = spawn_with_two_worker_processes().await;
    rabbit::wait_for_consumers(&app.env.amqp_url(), topology::RETURNS_QUEUE, 2).await;
    let patrons = app.add_patrons("t", 40).await;
    app.add_title("9788450000016", "Cuarenta ejemplares", &[20, 20])
        .await;
    let loans = lend_to_each(&app, &patrons, "9788450000016").await;
    assert!(loans.iter().all(|(s, _)| *s == 201), "{loans:?}");
    let returns = join_all(loans.iter().map(|(_, loan)| {
        let request = json!({"loan_id": loan["loan"]["id"], "branch": "norte"});
        let app = &app;
        async move { app.post("/v1/returns", &request).await }
    }))
    .await;
    assert!(returns.iter().all(|(s, _)| *s == 202), "{returns:?}");
    wait_until(DEADLINE, || async {
        (app.count("SELECT count(*) FROM operations WHERE kind = 'return' AND state = 'applied'")
            .await
            == 40)
            .then_some(())
    })
    .await
    .expect("not every return was applied");
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE returned_at IS NULL")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM copies WHERE status = 'available'")
            .await,
        40
    );
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history WHERE kind = 'return'")
            .await,
        40
    );
    let mut settled = 0;
    let mut messages = 0;
    let mut duplicates = 0;
    for w in &workers {
        settled += w.operation_count("return").await;
        messages += w
            .message_count(topology::RETURNS_QUEUE, MessageOutcome::Consumed)
            .await;
        duplicates += w
            .message_count(topology::RETURNS_QUEUE, MessageOutcome::Duplicate)
            .await;
    }
    assert_eq!((settled, duplicates), (40, 0));
    assert!(
        (1..40).contains(&messages),
        "returns that came together shared messages: {messages} for 40"
    );
}

/// What the tests that settle operations through the store directly (no
/// workers) start from: an app with `titles` generated titles beside the
/// demo catalogue and 20 patrons, the library's rules, a pooled client,
/// and now with a loan's due date from now.
struct Settling {
    app: TestApp,
    rules: bibliomq_core::library::Rules,
    client: deadpool_postgres::Client,
    now: chrono::DateTime<chrono::Utc>,
    due: chrono::DateTime<chrono::Utc>,
}

impl Settling {
    async fn start(titles: usize) -> Self {
        let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
        app.seed(titles, 20).await;
        let settings = app.env.settings();
        let rules = bibliomq_core::library::Rules::from_settings(&settings.library);
        let pool = bibliomq_core::db::pool(&settings.database).unwrap();
        let client = pool.get().await.unwrap();
        let now = chrono::Utc::now();
        let due = rules.due_for_loan(now);
        Self {
            app,
            rules,
            client,
            now,
            due,
        }
    }
}

/// A loan request under `key` (its fingerprint is the ISBN and patron).
fn loan_item(key: &str, isbn: &str, patron: &str) -> bibliomq_core::library::store::LoanItem {
    bibliomq_core::library::store::LoanItem {
        op: uuid::Uuid::now_v7(),
        key: key.into(),
        fingerprint: format!("{isbn}|{patron}"),
        isbn: isbn.into(),
        patron: patron.into(),
        branch: "central".into(),
        correlation_id: "settled-directly".into(),
    }
}

/// What circulation has written: loans, operations, history, copies out,
/// and the counters kept as work flows.
async fn circulation_state(app: &TestApp) -> [i64; 5] {
    [
        app.count("SELECT count(*) FROM loans").await,
        app.count("SELECT count(*) FROM operations").await,
        app.count("SELECT count(*) FROM circulation_history").await,
        app.count("SELECT count(*) FROM copies WHERE status <> 'available'")
            .await,
        app.count(
            "SELECT coalesce(sum(loan_applied + loan_rejected + renewal_applied
                                 + renewal_rejected + return_applied + return_rejected), 0)
               FROM (SELECT * FROM circulation_minutes
                     UNION ALL SELECT * FROM circulation_minute_deltas) AS m",
        )
        .await,
    ]
}

/// A rehearsal lends a real copy, renews the loan and takes it back, then
/// rolls everything back: nothing it did stays, its connection is out of
/// the transaction, and with nothing to lend it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_runs_a_loan_a_renewal_and_a_return_and_leaves_nothing() {
    use bibliomq_core::library::{
        outcome::{LoanOutcome, Settlement},
        store,
    };
    let Settling {
        app,
        rules,
        client,
        now,
        ..
    } = Settling::start(3).await;
    let before = circulation_state(&app).await;
    let rehearsal = store::rehearse(&client, 0, now, &rules)
        .await
        .unwrap()
        .expect("a seeded catalogue has a copy to rehearse with");
    assert!(
        matches!(
            rehearsal.loan,
            LoanOutcome::Loaned {
                replayed: false,
                ..
            }
        ),
        "{rehearsal:?}"
    );
    assert!(
        matches!(rehearsal.renewal, Some(Settlement::Renewed(_))),
        "{rehearsal:?}"
    );
    assert!(
        matches!(rehearsal.giving_back, Some(Settlement::Returned(_))),
        "{rehearsal:?}"
    );
    assert_eq!(circulation_state(&app).await, before);
    // Out of the transaction: a savepoint has no transaction block to go in.
    assert!(
        client.batch_execute("SAVEPOINT probe").await.is_err(),
        "the rehearsal left its connection inside a transaction"
    );
    assert!(
        store::rehearse(&client, 1_000_000, now, &rules)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(circulation_state(&app).await, before);
}

/// A worker starting on a catalogue rehearses on each of its connections
/// before it consumes (each calls the loan, renewal and return functions
/// once), and leaves the catalogue as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_worker_rehearses_on_each_connection_and_changes_nothing() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    app.seed(10, 20).await;
    let before = circulation_state(&app).await;
    // Calls of PL/pgSQL functions counted on this database's new connections.
    app.env
        .db()
        .await
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET track_functions = ''pl''',
                                        current_database()); END $$",
        )
        .await
        .unwrap();
    let fewest_calls = "SELECT coalesce(min(s.calls), 0) FROM (VALUES ('library_loan_batch'),
                               ('library_renew_batch'), ('library_return_batch')) AS f(name)
                          LEFT JOIN pg_stat_user_functions s ON s.funcname = f.name";
    assert_eq!(app.count(fewest_calls).await, 0);
    let settings = app.env.settings();
    let connections = i64::try_from(settings.database.pool_size).unwrap();
    let worker = Worker::start(settings).await;
    // Statistics reach pg_stat_user_functions a little after the calls.
    let seen = wait_until(Duration::from_secs(30), || async {
        (app.count(fewest_calls).await >= connections).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "not every connection rehearsed: {} calls, {connections} connections",
        app.count(fewest_calls).await
    );
    assert_eq!(circulation_state(&app).await, before);
    worker.stop().await;
}

/// Each batch writes the history of exactly the operations it settled,
/// in one statement: a row per settled operation whose columns are the
/// operation's own (and its loan's copy), none for a request repeated in
/// the batch, a replay, a reused key, an unknown patron or title, or an
/// operation settled before; and the per-minute counters see each once.
/// Driven through the store directly (no workers), singles and batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_one_history_row_per_operation_it_settled() {
    use bibliomq_core::library::{
        message::OperationKind,
        store::{self, LoanItem, PendingRequest},
    };
    let Settling {
        app,
        rules,
        client,
        now,
        due,
    } = Settling::start(0).await;
    let item = loan_item;
    let lent = item("k-lent", QUIJOTE, "ana");
    let items = vec![
        lent.clone(),
        lent.clone(),
        LoanItem {
            op: uuid::Uuid::now_v7(),
            ..lent.clone()
        },
        LoanItem {
            op: uuid::Uuid::now_v7(),
            fingerprint: "another request".into(),
            ..lent.clone()
        },
        item("k-nobody", QUIJOTE, "nobody-at-all"),
        item("k-no-title", "9780000000002", "ana"),
        item("k-sombra", SOMBRA, "jorge"),
    ];
    let answers = store::apply_loans(&client, &items, now, due, rules.max_loans)
        .await
        .unwrap();
    let loaned = |i: usize| match &answers[i] {
        bibliomq_core::library::outcome::LoanOutcome::Loaned { loan, replayed } => {
            Some((loan.id, *replayed))
        }
        _ => None,
    };
    let (quijote_loan, false) = loaned(0).unwrap() else {
        panic!("{answers:?}")
    };
    assert_eq!(loaned(1), Some((quijote_loan, true)), "{answers:?}");
    assert_eq!(loaned(2), Some((quijote_loan, true)), "{answers:?}");
    assert!(loaned(3).is_none() && loaned(4).is_none() && loaned(5).is_none());
    let (sombra_loan, false) = loaned(6).unwrap() else {
        panic!("{answers:?}")
    };
    // A redelivered request (same operation, in a batch of its own): a
    // replay, no second row.
    store::apply_loan(&**client, &lent, now, due, rules.max_loans)
        .await
        .unwrap();

    // A renewal settled in a batch (named twice, and beside an unknown
    // operation), then asked again; a return settled alone.
    let pending = |kind, loan_id| PendingRequest {
        id: uuid::Uuid::now_v7(),
        kind,
        loan_id: Some(loan_id),
        isbn: None,
        patron: None,
        branch: "central".into(),
        requested_at: now,
        correlation_id: "history-test".into(),
    };
    let renewal = pending(OperationKind::Renewal, quijote_loan);
    let giving_back = pending(OperationKind::Return, sombra_loan);
    store::record_requests(&client, &[renewal.clone(), giving_back.clone()])
        .await
        .unwrap();
    let renewed = store::apply_renewals(
        &client,
        &[renewal.id, renewal.id, uuid::Uuid::now_v7()],
        now,
        &rules,
    )
    .await
    .unwrap();
    assert!(renewed[0].is_some(), "{renewed:?}");
    let again = store::apply_renewal(&**client, renewal.id, now, &rules)
        .await
        .unwrap();
    assert!(again.is_none(), "settled twice: {again:?}");
    let returned = store::apply_return(&**client, giving_back.id, now)
        .await
        .unwrap();
    assert!(returned.is_some());

    // Four settled operations (two loans, a renewal, a return), a row
    // each, and each row is its operation.
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history").await,
        4
    );
    let matching = app
        .count(
            "SELECT count(*) FROM circulation_history h
               JOIN operations o ON o.id = h.operation_id
               LEFT JOIN loans l ON l.id = o.loan_id
              WHERE (h.at, h.kind, h.outcome, h.reason, h.loan_id, h.copy_id, h.isbn,
                     h.patron_id, h.branch, h.details)
                    IS NOT DISTINCT FROM
                    (o.settled_at, o.kind, o.state, o.reason, o.loan_id, l.copy_id, o.isbn,
                     o.patron_id, o.branch, o.outcome)
                AND h.copy_id IS NOT NULL",
        )
        .await;
    assert_eq!(matching, 4);
    assert_eq!(
        app.count(
            "SELECT count(DISTINCT operation_id) FROM circulation_history
              WHERE kind = 'loan' AND operation_id = ANY(ARRAY[
                    (SELECT id FROM operations WHERE idempotency_key = 'k-lent'),
                    (SELECT id FROM operations WHERE idempotency_key = 'k-sombra')])"
        )
        .await,
        2
    );
    let counted = app
        .count(
            "SELECT coalesce(sum(loan_applied + renewal_applied + return_applied
                                 + loan_rejected + renewal_rejected + return_rejected), 0)
               FROM (SELECT * FROM circulation_minutes
                     UNION ALL SELECT * FROM circulation_minute_deltas) m",
        )
        .await;
    assert_eq!(counted, 4);
    // One history statement per batch that settled something: the loan
    // batch, the renewal batch and the return (a batch of one) each left
    // one delta row (no worker runs here to fold them); the replays none.
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_minute_deltas")
            .await,
        3
    );
}

/// One batch counts what it did before each request (migration 0019
/// writes its loans at the end): a patron's loans made earlier in the batch
/// count toward the limit, a title's last copy goes to one request and the
/// next is told the batch's due date, and a hold fulfilled by one loan is
/// not fulfilled again by the next. Driven through the store directly, in
/// one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_counts_its_own_loans_toward_the_limit_the_last_copy_and_a_hold() {
    use bibliomq_core::library::{
        outcome::LoanOutcome,
        store::{self, LoanItem},
    };
    let Settling {
        app,
        rules,
        client,
        now,
        due,
    } = Settling::start(12).await;
    let db = app.env.db().await;
    let max = usize::try_from(rules.max_loans).unwrap();

    // QUIJOTE keeps one copy; the held title gets a second one.
    db.execute(
        "UPDATE copies SET status = 'withdrawn'
          WHERE isbn = $1 AND id <> (SELECT min(id) FROM copies WHERE isbn = $1)",
        &[&QUIJOTE],
    )
    .await
    .unwrap();
    let pairs: Vec<String> = db
        .query(
            "SELECT DISTINCT isbn FROM copies WHERE status = 'available' AND isbn <> $1
              ORDER BY isbn LIMIT $2",
            &[&QUIJOTE, &i64::try_from(max + 3).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pairs.len(), max + 3, "too few titles seeded");
    let others: Vec<String> = db
        .query(
            "SELECT id FROM patrons WHERE id NOT IN ('ana', 'jorge') ORDER BY id LIMIT 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (holder, held) = (others[1].clone(), pairs[max + 2].clone());
    db.execute(
        "INSERT INTO copies (isbn, branch, barcode) VALUES ($1, 'central', 'ONE-BATCH-EXTRA')",
        &[&held],
    )
    .await
    .unwrap();
    let hold = uuid::Uuid::now_v7();
    db.execute(
        "INSERT INTO holds (id, isbn, patron_id, pickup_branch, state, placed_at, pickup_period)
         VALUES ($1, $2, $3, 'central', 'waiting', now(), interval '3 days')",
        &[&hold, &held, &holder],
    )
    .await
    .unwrap();

    let item = |key: String, isbn: &str, patron: &str| loan_item(&key, isbn, patron);
    // ana asks for two titles more than she may hold; two patrons ask for
    // the last QUIJOTE; the holder borrows the held title twice.
    let mut items: Vec<LoanItem> = pairs[..max + 2]
        .iter()
        .enumerate()
        .map(|(i, isbn)| item(format!("ana-{i}"), isbn, "ana"))
        .collect();
    items.push(item("q-jorge".into(), QUIJOTE, "jorge"));
    items.push(item("q-other".into(), QUIJOTE, &others[0]));
    items.push(item("held-1".into(), &held, &holder));
    items.push(item("held-2".into(), &held, &holder));
    let answers = store::apply_loans(&client, &items, now, due, rules.max_loans)
        .await
        .unwrap();
    let code = |o: &LoanOutcome| match o {
        LoanOutcome::Loaned {
            replayed: false, ..
        } => "loaned".to_owned(),
        LoanOutcome::Rejected(r) => r.code().to_owned(),
        other => format!("{other:?}"),
    };
    let codes: Vec<String> = answers.iter().map(code).collect();

    // The limit: the first `max` of ana's requests (in request order) are
    // lent, the rest refused with her open loans counted as `max`.
    let ana: Vec<&str> = codes[..max + 2].iter().map(String::as_str).collect();
    let mut expected = vec!["loaned"; max];
    expected.extend(["loan_limit_reached"; 2]);
    assert_eq!(ana, expected, "{answers:?}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM operations
              WHERE patron_id = 'ana' AND reason = 'loan_limit_reached'
                AND (outcome->>'open_loans')::int = {max}
                AND (outcome->>'max_loans')::int = {max}"
        ))
        .await,
        2
    );
    // The last copy: lent once (to the patron whose requests the batch
    // took first); the other request learns the due date of the loan made
    // a moment before in the same batch.
    let mut quijote: Vec<&str> = codes[max + 2..max + 4].iter().map(String::as_str).collect();
    quijote.sort_unstable();
    assert_eq!(quijote, ["loaned", "not_available"], "{answers:?}");
    let earliest: chrono::DateTime<chrono::Utc> = db
        .query_one(
            "SELECT (outcome->>'earliest_due_at')::timestamptz FROM operations
              WHERE idempotency_key IN ('q-jorge', 'q-other') AND reason = 'not_available'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(earliest.timestamp_millis(), due.timestamp_millis());
    // The hold: fulfilled by the first loan only.
    assert_eq!(&codes[max + 4..], ["loaned", "loaned"], "{answers:?}");
    let fulfilled: Vec<Option<String>> = db
        .query(
            "SELECT outcome->'loan'->>'fulfilled_hold' FROM operations
              WHERE idempotency_key IN ('held-1', 'held-2') ORDER BY idempotency_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(fulfilled, [Some(hold.to_string()), None]);
    let first = items[max + 4].op;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM holds
              WHERE id = '{hold}' AND state = 'fulfilled' AND loan_id = '{first}'"
        ))
        .await,
        1
    );

    // Every loan made has its row, its copy on loan and one history row
    // equal to its operation; no copy is lent twice.
    let made = max + 1 + 2;
    assert_eq!(
        app.count("SELECT count(*) FROM loans").await,
        i64::try_from(made).unwrap()
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM loans l JOIN copies c ON c.id = l.copy_id
              WHERE c.status = 'on_loan'"
        )
        .await,
        i64::try_from(made).unwrap()
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM circulation_history h
               JOIN operations o ON o.id = h.operation_id
               LEFT JOIN loans l ON l.id = o.loan_id
              WHERE (h.at, h.kind, h.outcome, h.reason, h.loan_id, h.copy_id, h.isbn,
                     h.patron_id, h.branch, h.details)
                    IS NOT DISTINCT FROM
                    (o.settled_at, o.kind, o.state, o.reason, o.loan_id, l.copy_id, o.isbn,
                     o.patron_id, o.branch, o.outcome)"
        )
        .await,
        i64::try_from(items.len()).unwrap()
    );
}

/// One batch of renewals, and one of returns, count what they did before
/// each operation (migration 0020): a loan renewed earlier in the batch is
/// renewed again from its new due date and count, up to the limit, and a
/// loan returned earlier in the batch is no longer on loan. Driven through
/// the store directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_renews_a_loan_from_its_own_renewals_and_returns_it_once() {
    use bibliomq_core::library::{
        message::OperationKind,
        outcome::{LoanOutcome, Settlement},
        store::{self, PendingRequest},
    };
    let Settling {
        app,
        rules,
        client,
        now,
        due,
    } = Settling::start(0).await;
    let max = usize::try_from(rules.max_renewals).unwrap();
    let loans = [
        loan_item("k-quijote", QUIJOTE, "ana"),
        loan_item("k-sombra", SOMBRA, "jorge"),
    ];
    let lent = store::apply_loans(&client, &loans, now, due, rules.max_loans)
        .await
        .unwrap();
    assert!(
        lent.iter().all(|l| matches!(
            l,
            LoanOutcome::Loaned {
                replayed: false,
                ..
            }
        )),
        "{lent:?}"
    );
    let pending = |kind, loan_id| PendingRequest {
        id: uuid::Uuid::now_v7(),
        kind,
        loan_id: Some(loan_id),
        isbn: None,
        patron: None,
        branch: "norte".into(),
        requested_at: now,
        correlation_id: "one-batch-test".into(),
    };

    // One more renewal than the limit allows, all in one batch.
    let renewals: Vec<PendingRequest> = (0..=max)
        .map(|_| pending(OperationKind::Renewal, loans[0].op))
        .collect();
    store::record_requests(&client, &renewals).await.unwrap();
    let ids: Vec<uuid::Uuid> = renewals.iter().map(|r| r.id).collect();
    let answers = store::apply_renewals(&client, &ids, now, &rules)
        .await
        .unwrap();
    let extension = rules.renewal_extension;
    for (i, answer) in answers[..max].iter().enumerate() {
        let Some(Settlement::Renewed(renewed)) = answer else {
            panic!("renewal {i}: {answers:?}")
        };
        let n = i32::try_from(i).unwrap();
        assert_eq!(renewed.renewals, n + 1, "{answers:?}");
        assert_eq!(
            renewed.previous_due_at.timestamp_millis(),
            (due + extension * n).timestamp_millis()
        );
        assert_eq!(
            renewed.due_at.timestamp_millis(),
            (due + extension * (n + 1)).timestamp_millis()
        );
    }
    let Some(Settlement::Refused(refusal)) = &answers[max] else {
        panic!("{answers:?}")
    };
    assert_eq!(refusal.code(), "renewal_limit_reached");
    let (renewed, due_now): (i32, chrono::DateTime<chrono::Utc>) = {
        let row = app
            .env
            .db()
            .await
            .query_one(
                "SELECT renewals, due_at FROM loans WHERE id = $1",
                &[&loans[0].op],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(renewed, rules.max_renewals);
    assert_eq!(
        due_now.timestamp_millis(),
        (due + extension * rules.max_renewals).timestamp_millis()
    );

    // Two returns of one loan in one batch: the first returns it, the
    // second finds it no longer on loan; the copy is available once.
    let returns = [
        pending(OperationKind::Return, loans[1].op),
        pending(OperationKind::Return, loans[1].op),
    ];
    store::record_requests(&client, &returns).await.unwrap();
    let answers = store::apply_returns(&client, &[returns[0].id, returns[1].id], now)
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Some(Settlement::Returned(_))),
        "{answers:?}"
    );
    let Some(Settlement::Refused(refusal)) = &answers[1] else {
        panic!("{answers:?}")
    };
    assert_eq!(refusal.code(), "not_on_loan");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM loans l JOIN copies c ON c.id = l.copy_id
              WHERE l.id = '{}' AND l.returned_at IS NOT NULL
                AND l.returned_branch = 'norte' AND c.status = 'available'",
            loans[1].op
        ))
        .await,
        1
    );
    // Every operation settled once, with a history row each.
    let settled = i64::try_from(2 + renewals.len() + returns.len()).unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE state <> 'pending'")
            .await,
        settled
    );
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history").await,
        settled
    );
}

/// Settling a renewal or a return changes its operation's `state`,
/// `reason`, `outcome` and `settled_at`; no index of `operations` may name
/// them (as a key, an expression or in its predicate), or no settle could
/// be a heap-only update (migration 0016).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_index_of_operations_names_a_column_the_settle_changes() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let db = app.env.db().await;
    let rows = db
        .query(
            "SELECT c.relname, a.attname
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_attribute a ON a.attrelid = i.indrelid
              WHERE i.indrelid = 'operations'::regclass
                AND a.attname IN ('state', 'reason', 'outcome', 'settled_at')
                AND (a.attnum = ANY(i.indkey)
                     OR coalesce(pg_get_expr(i.indpred, i.indrelid), '')
                        ~ ('\\m' || a.attname || '\\M')
                     OR coalesce(pg_get_expr(i.indexprs, i.indrelid), '')
                        ~ ('\\m' || a.attname || '\\M'))",
            &[],
        )
        .await
        .unwrap();
    let named: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        named.is_empty(),
        "indexes naming settled columns: {named:?}"
    );
    let indexes = app
        .count("SELECT count(*) FROM pg_index WHERE indrelid = 'operations'::regclass")
        .await;
    assert!(
        indexes >= 3,
        "the check saw the table's indexes ({indexes})"
    );
}

/// A session whose every plan, nested ones included, comes back as a
/// notice (`auto_explain`), collected in the returned list. Plans are
/// generic, as the functions keep them.
async fn explained_session(
    url: &str,
) -> (
    tokio_postgres::Client,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use futures::StreamExt;
    let (db, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let heard = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = message {
                heard.lock().unwrap().push(n.message().to_owned());
            }
        }
    });
    db.batch_execute(
        "LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_nested_statements = on;
         SET auto_explain.log_level = notice;
         SET plan_cache_mode = force_generic_plan;",
    )
    .await
    .unwrap();
    (db, notices)
}

/// The batch functions find operations through the primary key whatever
/// the statistics say: PL/pgSQL keeps a plan made while `operations` was
/// empty and never analyzed, and an `id = ANY(array)` form kept a scan of
/// the whole table for every batch as it grew. Here the plans are made on
/// an empty table (generic, as kept plans are), 20,000 rows arrive with no
/// ANALYZE, and `auto_explain` (as notices) shows every plan run then.
/// The functions force generic plans themselves (migration 0017), and so
/// does this test's session, for the calls it makes directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_functions_find_operations_by_key_with_plans_from_an_empty_table() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let url = app.env.settings().database.url;
    let admin = app.env.db().await;
    admin
        .batch_execute("ALTER TABLE operations SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let (db, notices) = explained_session(&url).await;
    let calls = "SELECT * FROM library_renew_batch(ARRAY[gen_random_uuid(), gen_random_uuid()],
                                                  now(), interval '7 days', 2);
                 SELECT * FROM library_return_batch(ARRAY[gen_random_uuid()], now());
                 SELECT * FROM library_loan_batch(ARRAY[gen_random_uuid()], ARRAY['k'],
                     ARRAY['f'], ARRAY['9788437604947'], ARRAY['nobody'], ARRAY['central'],
                     now(), now() + interval '14 days', 5, ARRAY['c']);
                 SELECT library_record_history(ARRAY[gen_random_uuid()]);
                 SELECT * FROM library_record_requests(ARRAY[gen_random_uuid()],
                     ARRAY['renewal'], ARRAY[gen_random_uuid()], ARRAY[NULL::text],
                     ARRAY[NULL::text], ARRAY['central'], ARRAY[now()], ARRAY['c']);";
    db.batch_execute(calls).await.unwrap();
    admin
        .batch_execute(
            "INSERT INTO operations (id, kind, state, branch, requested_at)
             SELECT gen_random_uuid(), 'renewal', 'pending', 'central', now()
               FROM generate_series(1, 20000)",
        )
        .await
        .unwrap();
    notices.lock().unwrap().clear();
    db.batch_execute(calls).await.unwrap();
    let plans = notices.lock().unwrap().clone();
    assert!(
        plans.iter().filter(|p| p.contains("operations")).count() >= 4,
        "auto_explain showed the plans: {plans:#?}"
    );
    assert!(
        plans
            .iter()
            .any(|p| p.contains("library_record_requests") || p.contains(" on loans")),
        "the plans of the recording of renewals and returns were seen: {plans:#?}"
    );
    for plan in &plans {
        assert!(
            !plan.contains("Seq Scan on operations"),
            "a scan of operations: {plan}"
        );
        // The open loan a renewal or return names is found by its key too.
        assert!(
            !plan.contains("Seq Scan on loans"),
            "a scan of loans: {plan}"
        );
    }
}

/// Plan lines that read a circulation table other than by a key: a scan
/// of the whole table, or an index read from end to end (no `Index Cond`).
fn off_their_keys(plan: &str) -> Vec<String> {
    const TABLES: [&str; 6] = [
        "loans",
        "operations",
        "copies",
        "holds",
        "patrons",
        "titles",
    ];
    let lines: Vec<&str> = plan.lines().collect();
    let mut off = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((_, on)) = line.split_once(" on ") else {
            continue;
        };
        let table = on.split_whitespace().next().unwrap_or("");
        if !TABLES.contains(&table) {
            continue;
        }
        let whole = line.contains("Seq Scan");
        let unbounded = line.contains("Index Scan using") || line.contains("Index Only Scan using");
        let bounded = lines
            .get(i + 1)
            .is_some_and(|next| next.trim_start().starts_with("Index Cond"));
        if whole || (unbounded && !bounded) {
            off.push((*line).trim().to_owned());
        }
    }
    off
}

/// The same with statistics that say the circulation tables are empty, as
/// after an ANALYZE (autovacuum's, or one after loading the catalogue) run
/// before the first loans. Every index then costs the planner the same, so
/// a plan made then read a whole index (or, with table scans allowed, the
/// whole table), and the connection kept it as the tables grew: under the
/// library benchmark, loans waited seconds. A loan batch, the recording of
/// a renewal by loan and of a return by book, their settling, two holds
/// asked, one cancelled and the expiry pass run here on plans made in that
/// state; each must reach every circulation row it reads through a key
/// (migration 0021).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circulation_functions_keep_to_their_keys_with_statistics_from_empty_tables() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    app.seed(0, 20).await;
    let admin = app.env.db().await;
    admin
        .batch_execute(
            "ALTER TABLE loans SET (autovacuum_enabled = false);
             ALTER TABLE operations SET (autovacuum_enabled = false);
             ALTER TABLE holds SET (autovacuum_enabled = false);
             ANALYZE loans, operations, holds, circulation_history;",
        )
        .await
        .unwrap();
    let (db, notices) = explained_session(&app.env.settings().database.url).await;
    let loans: Vec<uuid::Uuid> = vec![uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let lent = db
        .query(
            "SELECT op, outcome->>'outcome' FROM library_loan_batch($1,
                 ARRAY['k1', 'k2'], ARRAY['f', 'f'], ARRAY[$2, $2], ARRAY['ana', 'elena'],
                 ARRAY['central', 'central'], now(), now() + interval '14 days', 5,
                 ARRAY['c1', 'c2'])",
            &[&loans, &QUIJOTE],
        )
        .await
        .unwrap();
    assert!(
        lent.iter()
            .all(|r| r.get::<_, Option<String>>(1).as_deref() == Some("loaned")),
        "both loans made"
    );
    let (renewal, giving_back) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let recorded = db
        .query(
            "SELECT op FROM library_record_requests($1, ARRAY['renewal', 'return'],
                 ARRAY[$2, NULL::uuid], ARRAY[NULL, $3], ARRAY[NULL, 'elena'],
                 ARRAY['central', 'central'], ARRAY[now(), now()], ARRAY['c3', 'c4'])",
            &[&vec![renewal, giving_back], &loans[0], &QUIJOTE],
        )
        .await
        .unwrap();
    assert_eq!(
        recorded.len(),
        2,
        "the renewal by loan and the return by book recorded"
    );
    db.batch_execute(&format!(
        "SELECT * FROM library_renew_batch(ARRAY['{renewal}'::uuid], now(), interval '14 days', 2);
         SELECT * FROM library_return_batch(ARRAY['{giving_back}'::uuid], now());"
    ))
    .await
    .unwrap();
    let ask_hold = |patron: &'static str| {
        let db = &db;
        async move {
            let answer: serde_json::Value = db
                .query_one(
                    "SELECT library_hold_place(gen_random_uuid(), $1, $2, 'central', now(),
                         interval '3 days')",
                    &[&QUIJOTE, &patron],
                )
                .await
                .unwrap()
                .get(0);
            answer
        }
    };
    // A hold asked by a patron who has the title on loan: refused, after
    // the look-up of the patron's loans.
    assert_eq!(ask_hold("ana").await["code"], "already_on_loan");
    // And by one who has given it back: past the look-ups of holds and of
    // the copies on the shelf.
    let hold = ask_hold("elena").await;
    assert!(
        hold["outcome"] == "placed" || hold["outcome"] == "rejected",
        "{hold}"
    );
    // A hold withdrawn and one found past its pickup, with the hold shelf's
    // pass (none is due here, so nothing changes).
    let held: uuid::Uuid = admin
        .query_one(
            "INSERT INTO holds (id, isbn, patron_id, pickup_branch, state, placed_at,
                                pickup_period)
             VALUES (gen_random_uuid(), $1, 'diego', 'central', 'waiting', now(), '3 days')
             RETURNING id",
            &[&QUIJOTE],
        )
        .await
        .unwrap()
        .get(0);
    let cancelled: String = db
        .query_one(
            "SELECT library_hold_cancel($1, 'diego', now())->>'outcome'",
            &[&held],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancelled, "cancelled");
    db.batch_execute("SELECT * FROM library_hold_expire(now(), 10)")
        .await
        .unwrap();
    let states: Vec<String> = admin
        .query(
            "SELECT state FROM operations WHERE id = ANY($1) ORDER BY kind",
            &[&vec![renewal, giving_back]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        states,
        ["applied", "applied"],
        "the renewal and the return settled"
    );

    let plans = notices.lock().unwrap().clone();
    for function in [
        "library_hold_cancel",
        "library_hold_expire",
        "library_hold_place",
        "library_loan_batch",
        "library_record_requests",
        "library_renew_batch",
        "library_return_batch",
    ] {
        assert!(
            plans.iter().any(|p| p.contains(function)),
            "auto_explain showed the plans run by {function}: {plans:#?}"
        );
    }
    let off: Vec<String> = plans
        .iter()
        .filter(|p| !off_their_keys(p).is_empty())
        .map(|p| format!("{:?}\n{p}", off_their_keys(p)))
        .collect();
    assert!(
        off.is_empty(),
        "plans off their keys:\n{}",
        off.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_append_only() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    app.post(
        "/v1/loans",
        &json!({"isbn": QUIJOTE, "patron": "elena", "branch": "central"}),
    )
    .await;
    let db = app.env.db().await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM circulation_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let err = db
        .execute("UPDATE circulation_history SET outcome = 'x'", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
        "{err:?}"
    );
    assert!(
        db.execute("DELETE FROM circulation_history", &[])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_is_searched_without_case_or_accents() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    app.seed(50, 20).await;
    for (query, isbn) in [
        ("quijote", QUIJOTE),
        ("CRIMEN castigo", CRIMEN),
        ("sómbra del VIENTO", SOMBRA),
    ] {
        let found: Value = app
            .get(&format!("/v1/books?title={query}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(found["books"][0]["isbn"], isbn, "{query}: {found}");
        assert!(found["books"][0]["total_copies"].as_i64().unwrap() >= 2);
    }
    let sombra: Value = app
        .get("/v1/books?title=SOMBRA&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        sombra["books"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["isbn"] == SOMBRA),
        "{sombra}"
    );
    let none: Value = app.get("/v1/books?title=zzzz").await.json().await.unwrap();
    assert!(none["books"].as_array().unwrap().is_empty());
    let (status, err) = app.get_json("/v1/books?title=").await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("title"))
    );
    let (status, err) = app.get_json("/v1/books/12345").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_isbn"))
    );
    let (status, _) = app.get_json("/v1/patrons/nadie/loans").await;
    assert_eq!(status, 404);
    let branches: Value = app.get("/v1/branches").await.json().await.unwrap();
    assert_eq!(branches["branches"][0]["code"], "central");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_catalogue_is_large_and_the_same_every_time() {
    let a = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let b = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let mut reports = Vec::new();
    for app in [&a, &b] {
        let mut db = app.env.db().await;
        let tx = db.transaction().await.unwrap();
        let settings = app.env.settings();
        let rules = bibliomq_core::library::Rules::from_settings(&settings.library);
        let report = bibliomq_core::library::seed::seed(
            &tx,
            &settings.library.branches,
            &Default::default(),
            &rules,
            chrono::Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
        tx.commit().await.unwrap();
        let digest: String = db
            .query_one(
                "SELECT md5(string_agg(isbn || title, ',' ORDER BY isbn)) FROM titles",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        reports.push((report, digest));
    }
    assert_eq!(reports[0], reports[1]);
    let report = reports[0].0;
    assert!(report.titles >= 1_000 && report.loans > 0, "{report:?}");
    for isbn in [QUIJOTE, SOMBRA, CRIMEN] {
        let book: Value = a
            .get(&format!("/v1/books/{isbn}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(book["branches"].as_array().unwrap().len(), 2, "{book}");
    }
    let overdue = a
        .count("SELECT count(*) FROM loans WHERE due_at < now()")
        .await;
    assert!(overdue > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_nobody_answers_times_out_and_is_never_made_behind_the_callers_back() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(
        env,
        |s| s.library.loan_timeout = Duration::from_millis(500),
        0,
    )
    .await;
    app.seed(0, 20).await;
    let request = || {
        app.http
            .post(app.url("/v1/loans"))
            .header("idempotency-key", "slow-1")
            .json(&json!({"isbn": QUIJOTE, "patron": "carmen", "branch": "central"}))
            .send()
    };
    let (status, answer) = status_and_json(request().await.unwrap()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (504, Some("timeout")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slow-1")
    );

    // The request expired in the queue: a worker that comes later does not
    // lend the book to a caller who was told it timed out.
    let mut settings = app.env.settings();
    settings.library.loan_timeout = Duration::from_millis(500);
    let _worker = Worker::start(settings).await;
    let url = app.env.amqp_url();
    wait_until(DEADLINE, || async {
        (rabbit::ready_count(&url, topology::LOANS_QUEUE).await == 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 0);

    // Retrying with the same key now makes the loan, once: once the worker
    // consumes (its start is not its subscription), or the retry would
    // only time out again.
    rabbit::wait_for_consumers(&url, topology::LOANS_QUEUE, 1).await;
    let (status, answer) = status_and_json(request().await.unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 1);
}

/// A loan bundle holds its place among those under way for 100 ms at most
/// (`LOAN_PLACE_HOLD`): a worker that takes two bundles and hangs, its
/// connection open, does not hold back the loans behind them until the
/// loan timeout. Here a consumer of the test's own takes the first two
/// requests and never answers; the third is answered by a real worker
/// while the first two still wait for theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_hangs_with_two_bundles_does_not_hold_back_the_loans_behind_them() {
    use futures::StreamExt;
    use lapin::{
        Connection, ConnectionProperties,
        options::{BasicConsumeOptions, BasicQosOptions},
        types::FieldTable,
    };
    let timeout = Duration::from_secs(20);
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.library.loan_timeout = timeout,
        0,
    )
    .await;
    app.seed(0, 20).await;
    let url = app.env.amqp_url();

    // The hanging consumer: takes two messages, answers none, acks none.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut hung = ch
        .basic_consume(
            topology::LOANS_QUEUE.into(),
            "test-hangs".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let lend = |key: &'static str, isbn: &'static str, patron: &'static str| {
        let request = app
            .http
            .post(app.url("/v1/loans"))
            .header("idempotency-key", key)
            .json(&json!({"isbn": isbn, "patron": patron, "branch": "central"}));
        tokio::spawn(async move { status_and_json(request.send().await.unwrap()).await })
    };
    // Two requests, each sent once the one before is in the hanging
    // consumer's hands: two bundles under way, both places taken.
    let mut held = Vec::new();
    for (key, isbn, patron) in [("hung-1", QUIJOTE, "ana"), ("hung-2", SOMBRA, "jorge")] {
        held.push(lend(key, isbn, patron));
        let taken = tokio::time::timeout(DEADLINE, hung.next())
            .await
            .unwrap_or_else(|_| panic!("the hanging consumer never got {key}"));
        assert!(matches!(taken, Some(Ok(_))), "{key}: {taken:?}");
    }

    // A real worker; the third request goes out past the places held and
    // is answered while the first two still wait (for up to 20 s).
    let _worker = Worker::start(app.env.settings()).await;
    rabbit::wait_for_consumers(&url, topology::LOANS_QUEUE, 2).await;
    let (status, answer) = tokio::time::timeout(DEADLINE, lend("behind", CRIMEN, "carmen"))
        .await
        .expect("the loan behind the hung bundles was held back")
        .unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the hung requests were answered first"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE patron_id = 'carmen'")
            .await,
        1
    );
    for h in held {
        h.abort();
    }
    let _ = conn.close(200, "bye".into()).await;
}
