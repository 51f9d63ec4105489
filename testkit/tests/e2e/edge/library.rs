//! Library circulation over ZeroMQ: every action and its Spanish alias, and
//! the event feed showing operations made over HTTP.

use std::time::Duration;

use bibliomq_testkit::app::DEADLINE;
use serde_json::json;

use super::{Subscriber, ask, spawn_with_edge};

const QUIJOTE: &str = "9788437604947";
const SOMBRA: &str = "9788497592208";
const CRIMEN: &str = "9780140449266";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_library_action_answers_under_its_english_and_spanish_names() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    app.seed(0, 20).await;
    let endpoint = edge.request_endpoint();

    for request in [
        json!({"action": "CONSULTA", "isbn": QUIJOTE}),
        json!({"action": "query_isbn", "isbn": QUIJOTE}),
    ] {
        let reply = ask(&endpoint, request.clone()).await;
        assert_eq!(reply["ok"], true, "{request}: {reply}");
        assert_eq!(
            reply["book"]["title"], "Don Quijote de la Mancha",
            "{reply}"
        );
        assert!(reply["book"]["copies"].as_array().unwrap().len() >= 2);
    }
    for request in [
        json!({"action": "consulta", "titulo": "QUIJOTE"}),
        json!({"action": "query_title", "title": "quijote"}),
    ] {
        let reply = ask(&endpoint, request.clone()).await;
        assert_eq!(reply["books"][0]["isbn"], QUIJOTE, "{request}: {reply}");
    }

    let lent = ask(
        &endpoint,
        json!({"action": "PRESTAMO", "isbn": CRIMEN, "usuario": "ana", "sede": "central"}),
    )
    .await;
    assert_eq!(lent["ok"], true, "{lent}");
    assert_eq!(lent["loan"]["patron"], "ana");
    let by_title = ask(
        &endpoint,
        json!({"action": "loan", "title": "sombra del viento", "patron": "luis", "branch": "norte"}),
    )
    .await;
    assert_eq!(by_title["loan"]["isbn"], SOMBRA, "{by_title}");

    let renewed = ask(
        &endpoint,
        json!({"action": "RENOVACION", "isbn": CRIMEN, "patron": "ana", "branch": "central", "wait": true}),
    )
    .await;
    assert_eq!(
        (renewed["ok"].clone(), renewed["state"].clone()),
        (json!(true), json!("applied")),
        "{renewed}"
    );
    assert_eq!(renewed["kind"], "renewal");
    let pending = ask(
        &endpoint,
        json!({"action": "renew", "loan_id": lent["loan"]["id"], "branch": "norte"}),
    )
    .await;
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(pending["operation_id"].is_string() && pending["tentative_due_at"].is_string());

    let returned = ask(
        &endpoint,
        json!({"action": "devolución", "isbn": SOMBRA, "socio": "luis", "sucursal": "central", "wait": true}),
    )
    .await;
    assert_eq!(returned["state"], "applied", "{returned}");
    let returned = ask(
        &endpoint,
        json!({"action": "return", "loan_id": lent["loan"]["id"], "branch": "central", "wait": true}),
    )
    .await;
    assert_eq!(returned["state"], "applied", "{returned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_mistakes_and_refusals_get_an_error_reply() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    app.seed(0, 20).await;
    let endpoint = edge.request_endpoint();
    for (request, code, field) in [
        (
            json!({"action": "prestamo", "isbn": "9788437604948", "patron": "ana", "branch": "central"}),
            "invalid_isbn",
            Some("isbn"),
        ),
        (
            json!({"action": "prestamo", "isbn": QUIJOTE, "patron": "nadie", "branch": "central"}),
            "patron_not_found",
            None,
        ),
        (
            json!({"action": "prestamo", "isbn": QUIJOTE, "patron": "ana", "branch": "sur"}),
            "unknown_branch",
            Some("branch"),
        ),
        (
            json!({"action": "prestamo", "isbn": QUIJOTE, "patron": "ana"}),
            "missing_field",
            Some("branch"),
        ),
        (json!({"action": "consulta"}), "missing_field", Some("isbn")),
        (
            json!({"action": "devolucion", "isbn": QUIJOTE, "patron": "ana", "branch": "central"}),
            "loan_not_found",
            None,
        ),
    ] {
        let reply = ask(&endpoint, request.clone()).await;
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{request}: {reply}");
        if let Some(field) = field {
            assert_eq!(reply["error"]["field"], field, "{request}: {reply}");
        }
    }
    // A rule's refusal carries its details.
    app.add_patrons("p", 2).await;
    app.add_title("9788450000016", "Un solo ejemplar", &[1, 0])
        .await;
    let first = ask(
        &endpoint,
        json!({"action": "loan", "isbn": "9788450000016", "patron": "p1", "branch": "central"}),
    )
    .await;
    assert_eq!(first["ok"], true, "{first}");
    let refused = ask(
        &endpoint,
        json!({"action": "loan", "isbn": "9788450000016", "patron": "p2", "branch": "central"}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "not_available", "{refused}");
    assert_eq!(refused["error"]["earliest_due_at"], first["loan"]["due_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_client_sees_the_outcomes_of_library_operations_made_over_http() {
    let (app, edge) = spawn_with_edge(|_| {}).await;
    app.seed(0, 40).await;
    let mut loaned = Subscriber::connect(&edge.events_endpoint(), "loaned");
    let mut returned = Subscriber::connect(&edge.events_endpoint(), "returned.central");

    // Both subscriptions come up in the background: lend and return until
    // both clients see the same round trip.
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut n = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "the SUB clients never saw a round trip"
        );
        n += 1;
        let patron = format!("p{n:04}");
        let resp = app
            .post_json(
                "/v1/loans",
                &json!({"isbn": QUIJOTE, "patron": patron, "branch": "central"}),
            )
            .await;
        let body: serde_json::Value = resp.json().await.unwrap();
        let id = body["loan"]["id"].clone();
        assert!(id.is_string(), "{body}");
        app.post_json("/v1/returns", &json!({"loan_id": id, "branch": "central"}))
            .await;
        let lent = loaned
            .next_where(Duration::from_secs(1), |_, e| e["loan"]["id"] == id)
            .await;
        let back = returned
            .next_where(Duration::from_secs(1), |_, e| e["loan_id"] == id)
            .await;
        if let (Some((lent_topic, _)), Some((topic, event))) = (lent, back) {
            assert_eq!(lent_topic, "loaned.central");
            assert_eq!(topic, "returned.central");
            assert_eq!(event["type"], "returned");
            assert_eq!(event["patron"], patron);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_copies_and_patrons_are_administered_over_zeromq_as_over_http() {
    let (_app, edge) = spawn_with_edge(|_| {}).await;
    let endpoint = edge.request_endpoint();

    let added = ask(
        &endpoint,
        json!({"action": "title_add", "isbn": "0-14-044913-2", "title": "Crime and Punishment", "authors": ["F. Author"], "year": 1866}),
    )
    .await;
    assert_eq!(added["ok"], true, "{added}");
    assert_eq!(added["title"]["isbn"], "9780140449136");
    let bad = ask(
        &endpoint,
        json!({"action": "title_add", "isbn": "9780140449137", "title": "Bad"}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "invalid_isbn", "{bad}");
    assert_eq!(bad["error"]["field"], "isbn");

    let copy = ask(
        &endpoint,
        json!({"action": "copy_add", "isbn": "9780140449136", "branch": "norte"}),
    )
    .await;
    assert_eq!(copy["copy"]["status"], "available", "{copy}");
    let withdrawn = ask(
        &endpoint,
        json!({"action": "copy_withdraw", "barcode": copy["copy"]["barcode"]}),
    )
    .await;
    assert_eq!(withdrawn["copy"]["status"], "withdrawn", "{withdrawn}");

    let patron = ask(
        &endpoint,
        json!({"action": "patron_add", "id": "olga", "name": "Olga"}),
    )
    .await;
    assert_eq!(patron["patron"]["id"], "olga", "{patron}");
    let blocked = ask(
        &endpoint,
        json!({"action": "patron_block", "id": "olga", "reason": "lost books"}),
    )
    .await;
    assert_eq!(
        blocked["patron"]["blocked"]["reason"], "lost books",
        "{blocked}"
    );
    let refused = ask(
        &endpoint,
        json!({"action": "prestamo", "isbn": "9780140449136", "usuario": "olga", "sede": "norte"}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "patron_blocked", "{refused}");
    let open = ask(&endpoint, json!({"action": "patron_unblock", "id": "olga"})).await;
    assert!(open["patron"]["blocked"].is_null(), "{open}");
    let shown = ask(&endpoint, json!({"action": "patron_show", "id": "olga"})).await;
    assert_eq!(shown["patron"]["name"], "Olga", "{shown}");
    let listed = ask(
        &endpoint,
        json!({"action": "patron_list", "q": "ol", "limit": 5}),
    )
    .await;
    assert_eq!(listed["patrons"][0]["id"], "olga", "{listed}");
    assert!(listed["next_cursor"].is_null(), "{listed}");
}
