//! Catalogue and patron administration: titles, copies and patrons added
//! and changed through the API, then lent, withdrawn and blocked through
//! the circulation rules.

use bibliomq_testkit::{TestApp, spawn_app};
use serde_json::{Value, json};

/// "Crime and Punishment" in another edition: not in the demo seed.
const ISBN10: &str = "0-14-044913-2";
const ISBN13: &str = "9780140449136";

async fn add_title_with_copies(app: &TestApp, isbn: &str, branches: &[&str]) -> Vec<String> {
    let (status, title) = app
        .post(
            "/v1/titles",
            &json!({"isbn": isbn, "title": "Crime and Punishment", "authors": ["F. Author"], "year": 1866}),
        )
        .await;
    assert_eq!(status, 201, "{title}");
    let isbn = title["isbn"].as_str().unwrap().to_owned();
    let mut barcodes = Vec::new();
    for branch in branches {
        let (status, copy) = app
            .post(
                &format!("/v1/titles/{isbn}/copies"),
                &json!({"branch": branch}),
            )
            .await;
        assert_eq!(status, 201, "{copy}");
        assert_eq!(copy["status"], "available");
        barcodes.push(copy["barcode"].as_str().unwrap().to_owned());
    }
    barcodes
}

async fn return_loan(app: &TestApp, loan_id: &Value) -> Value {
    let (status, accepted) = app
        .post(
            "/v1/returns",
            &json!({"loan_id": loan_id, "branch": "central"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    app.wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_added_with_copies_through_the_api_is_lent_and_its_isbn_10_is_stored_as_13() {
    let app = spawn_app().await;
    app.add_patrons("reader", 1).await;
    let barcodes = add_title_with_copies(&app, ISBN10, &["norte", "central"]).await;
    assert_eq!(barcodes.len(), 2);
    assert_ne!(barcodes[0], barcodes[1]);
    assert!(barcodes[0].starts_with("NORTE-"), "{barcodes:?}");

    let (status, book) = app.get_json(&format!("/v1/books/{ISBN13}")).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["published_year"], 1866);
    assert_eq!(book["copies"].as_array().unwrap().len(), 2);

    // A barcode given by hand, then the same one again.
    let (status, copy) = app
        .post(
            &format!("/v1/titles/{ISBN13}/copies"),
            &json!({"branch": "central", "barcode": "SUR-HAND-1"}),
        )
        .await;
    assert_eq!(
        (status, copy["barcode"].as_str()),
        (201, Some("SUR-HAND-1"))
    );
    let (status, taken) = app
        .post(
            &format!("/v1/titles/{ISBN13}/copies"),
            &json!({"branch": "norte", "barcode": "SUR-HAND-1"}),
        )
        .await;
    assert_eq!(
        (status, taken["error"]["code"].as_str()),
        (409, Some("barcode_taken"))
    );

    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "reader1", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");
    assert_eq!(lent["loan"]["copy"], barcodes[1].as_str());

    // Changed in place; what is not given stays.
    let (status, changed) = app
        .patch(
            &format!("/v1/titles/{ISBN10}"),
            &json!({"title": "Crime and Punishment (annotated)"}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["title"], "Crime and Punishment (annotated)");
    assert_eq!(changed["authors"], json!(["F. Author"]));
    assert_eq!(changed["year"], 1866);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_isbn_or_a_duplicate_title_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let before = app.count("SELECT count(*) FROM titles").await;
    for bad in ["9780140449137", "0-14-044913-3", "12345"] {
        let (status, err) = app
            .post("/v1/titles", &json!({"isbn": bad, "title": "Nope"}))
            .await;
        assert_eq!(status, 422, "{bad}: {err}");
        assert_eq!(err["error"]["code"], "invalid_isbn");
        assert_eq!(err["error"]["field"], "isbn");
    }
    for (body, field) in [
        (json!({"isbn": ISBN13, "title": "   "}), "title"),
        (json!({"isbn": ISBN13, "title": "T", "year": 2101}), "year"),
        (
            json!({"isbn": ISBN13, "title": "T", "authors": [""]}),
            "authors",
        ),
    ] {
        let (status, err) = app.post("/v1/titles", &body).await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{err}"
        );
    }
    let (status, err) = app
        .post(
            "/v1/titles",
            &json!({"isbn": ISBN13, "title": "T", "colour": "red"}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(app.count("SELECT count(*) FROM titles").await, before);

    let (status, _) = app
        .post("/v1/titles", &json!({"isbn": ISBN13, "title": "First"}))
        .await;
    assert_eq!(status, 201);
    let (status, dup) = app
        .post("/v1/titles", &json!({"isbn": ISBN10, "title": "Second"}))
        .await;
    assert_eq!(
        (status, dup["error"]["code"].as_str()),
        (409, Some("title_exists"))
    );
    let (_, book) = app.get_json(&format!("/v1/books/{ISBN13}")).await;
    assert_eq!(book["title"], "First");

    let (status, err) = app
        .post(
            "/v1/titles/9780306406157/copies",
            &json!({"branch": "norte"}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("title_not_found"))
    );
    let (status, err) = app
        .post(
            &format!("/v1/titles/{ISBN13}/copies"),
            &json!({"branch": "lejos"}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("branch"))
    );
    assert_eq!(app.count("SELECT count(*) FROM copies").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_loan_cannot_be_withdrawn_and_a_withdrawn_copy_is_never_lent_again() {
    let app = spawn_app().await;
    app.add_patrons("reader", 2).await;
    let barcodes = add_title_with_copies(&app, ISBN13, &["norte"]).await;
    let copy = &barcodes[0];

    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "reader1", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");
    let (status, err) = app.delete(&format!("/v1/copies/{copy}")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("copy_on_loan")),
        "{err}"
    );

    let returned = return_loan(&app, &lent["loan"]["id"]).await;
    assert_eq!(returned["state"], "applied", "{returned}");
    let (status, withdrawn) = app.delete(&format!("/v1/copies/{copy}")).await;
    assert_eq!(status, 200, "{withdrawn}");
    assert_eq!(withdrawn["status"], "withdrawn");
    // Twice changes nothing.
    let (status, again) = app.delete(&format!("/v1/copies/{copy}")).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("withdrawn")));
    let (status, _) = app.delete("/v1/copies/NO-SUCH-COPY").await;
    assert_eq!(status, 404);

    let (status, refused) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "reader2", "branch": "norte"}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("not_available")),
        "{refused}"
    );
    let (_, book) = app.get_json(&format!("/v1/books/{ISBN13}")).await;
    assert!(book["copies"].as_array().unwrap().is_empty(), "{book}");

    // The copy's loan and history stay.
    assert_eq!(app.count("SELECT count(*) FROM loans").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history WHERE outcome = 'applied'")
            .await,
        2
    );
    let (_, loans) = app.get_json("/v1/patrons/reader1/loans?all=true").await;
    assert_eq!(loans["loans"][0]["copy"], copy.as_str(), "{loans}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patrons_are_added_changed_shown_and_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    for (id, name) in [
        ("adm-e", "Elena Ruiz"),
        ("adm-a", "Álvaro Gómez"),
        ("adm-c", "Carmen Díaz"),
        ("adm-b", "Bruno Sáez"),
        ("adm-d", "Diego Alonso"),
        ("other", "Olga P."),
    ] {
        let (status, p) = app
            .post("/v1/patrons", &json!({"id": id, "name": name}))
            .await;
        assert_eq!(status, 201, "{p}");
        assert_eq!(p["blocked"], Value::Null);
    }
    let (status, dup) = app
        .post("/v1/patrons", &json!({"id": "ADM-A", "name": "Again"}))
        .await;
    assert_eq!(
        (status, dup["error"]["code"].as_str()),
        (409, Some("patron_exists"))
    );
    let (status, bad) = app
        .post(
            "/v1/patrons",
            &json!({"id": "x", "name": "X", "email": "not an address"}),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (422, Some("email"))
    );

    // Pages of two, by id, until next_cursor is null.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/patrons?q=adm&limit=2&cursor={c}"),
            None => "/v1/patrons?q=adm&limit=2".to_owned(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["patrons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2);
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["adm-a", "adm-b", "adm-c", "adm-d", "adm-e"]);
    // By name, ignoring case and accents.
    let (_, found) = app.get_json("/v1/patrons?q=alvaro").await;
    assert_eq!(found["patrons"][0]["id"], "adm-a", "{found}");
    assert_eq!(found["patrons"].as_array().unwrap().len(), 1);

    let (status, changed) = app
        .patch(
            "/v1/patrons/adm-a",
            &json!({"name": "Álvaro Gómez Ruiz", "email": "alvaro@example.org"}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    let (status, shown) = app.get_json("/v1/patrons/adm-a").await;
    assert_eq!(status, 200);
    assert_eq!(shown, changed);
    assert_eq!(shown["email"], "alvaro@example.org");
    let (status, _) = app.get_json("/v1/patrons/nobody").await;
    assert_eq!(status, 404);
    let (status, _) = app.patch("/v1/patrons/nobody", &json!({"name": "N"})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_patron_can_neither_borrow_nor_renew_until_unblocked() {
    let app = spawn_app().await;
    add_title_with_copies(&app, ISBN13, &["norte", "norte", "norte"]).await;
    let (status, _) = app
        .post("/v1/patrons", &json!({"id": "marta", "name": "Marta"}))
        .await;
    assert_eq!(status, 201);
    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "marta", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");

    let (status, blocked) = app
        .patch(
            "/v1/patrons/marta",
            &json!({"blocked": {"reason": "unpaid fines"}}),
        )
        .await;
    assert_eq!(status, 200, "{blocked}");
    assert_eq!(blocked["blocked"]["reason"], "unpaid fines");

    let (status, refused) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "marta", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "patron_blocked");
    assert_eq!(refused["error"]["reason"], "unpaid fines");
    assert_eq!(refused["error"]["patron"], "marta");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unpaid fines"),
        "{refused}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE patron_id = 'marta'")
            .await,
        1
    );

    let (status, accepted) = app
        .post(
            "/v1/renewals",
            &json!({"loan_id": lent["loan"]["id"], "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = app
        .wait_for_operation(accepted["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "rejected", "{op}");
    assert_eq!(op["reason"], "patron_blocked", "{op}");

    // Unblocked: lending works again.
    let (status, open) = app
        .patch("/v1/patrons/marta", &json!({"blocked": null}))
        .await;
    assert_eq!((status, &open["blocked"]), (200, &Value::Null));
    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN13, "patron": "marta", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_sent_twice_changes_nothing_the_second_time_and_names_each_refused_row() {
    let app = spawn_app().await;
    let rows = json!({"rows": [
        {"isbn": ISBN10, "title": "Crime and Punishment", "authors": ["F. Author"], "year": 1866},
        {"isbn": "9780140449137", "title": "Bad check digit"},
        {"isbn": "9780306406157", "title": "Another"},
        {"isbn": ISBN13, "title": "The same ISBN again"},
    ]});
    let (status, first) = app.post("/v1/import/titles", &rows).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["created"].as_u64(), first["updated"].as_u64()),
        (Some(2), Some(0))
    );
    let rejected: Vec<(u64, &str)> = first["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["row"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, [(1, "invalid_isbn"), (3, "duplicate_row")]);

    let before = app.count("SELECT count(*) FROM titles").await;
    let (_, second) = app.post("/v1/import/titles", &rows).await;
    assert_eq!(
        (
            second["created"].as_u64(),
            second["updated"].as_u64(),
            second["unchanged"].as_u64()
        ),
        (Some(0), Some(0), Some(2)),
        "{second}"
    );
    assert_eq!(app.count("SELECT count(*) FROM titles").await, before);

    // A changed row is updated; a blocked patron stays blocked.
    let (_, third) = app
        .post(
            "/v1/import/titles",
            &json!({"rows": [{"isbn": ISBN13, "title": "Crime and Punishment", "year": 1867}]}),
        )
        .await;
    assert_eq!(third["updated"], 1, "{third}");
    app.post(
        "/v1/import/patrons",
        &json!({"rows": [{"id": "ivan", "name": "Ivan"}]}),
    )
    .await;
    app.patch(
        "/v1/patrons/ivan",
        &json!({"blocked": {"reason": "lost a book"}}),
    )
    .await;
    let (_, again) = app
        .post(
            "/v1/import/patrons",
            &json!({"rows": [{"id": "ivan", "name": "Ivan K.", "email": "ivan@example.org"}]}),
        )
        .await;
    assert_eq!(again["updated"], 1, "{again}");
    let (_, ivan) = app.get_json("/v1/patrons/ivan").await;
    assert_eq!(ivan["name"], "Ivan K.");
    assert_eq!(ivan["blocked"]["reason"], "lost a book");
}
