//! The desk's catalogue and patron pages in a real headless Chromium: a
//! title added with its copies and then found, and a patron found, changed,
//! blocked (a loan refused), unblocked and added, as a librarian does it.
//! Every refusal is the API's, shown in place with the field it names.

use bibliomq_testkit::{TestApp, TestEnv, browser::Browser, spawn_app};
use serde_json::json;

/// A valid ISBN-13 that no seed uses.
const ATLAS: &str = "9780306406157";
const QUIJOTE: &str = "9788437604947";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_added_with_two_copies_in_the_browser_is_found_by_search_with_its_copies() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    // A copy whose barcode the second new copy will first ask for.
    app.add_title("9780140449136", "Crime and Punishment", &[1])
        .await;
    let taken = "9780140449136-central-0";
    let browser = Browser::start("add-title").await;
    browser.goto(&app.url("/ui/desk")).await;
    browser.click("nav a[href='/ui/titles/new']").await;
    browser.wait_text("h1", "Add a title").await;

    // A wrong ISBN: the API's message, naming the field, which is marked.
    browser.fill("#title-isbn", "978-0-306-40615-8").await;
    browser
        .fill("#title-title", "Atlas de los ríos del norte")
        .await;
    browser.click("#title-submit").await;
    let refused = browser.wait_text("#title-out.err", "invalid_isbn").await;
    let (status, body) = app
        .post(
            "/v1/titles",
            &json!({"isbn": "978-0-306-40615-8", "title": "Atlas de los ríos del norte"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "isbn");
    assert!(
        refused.starts_with("Title not added: ISBN: ")
            && refused.contains(body["error"]["message"].as_str().unwrap()),
        "the page says `{refused}`, the API {body}"
    );
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('#title-isbn').getAttribute('aria-invalid')",
                json!([])
            )
            .await,
        "true"
    );
    browser.screenshot("title-refused").await;

    // The title, and two copies: the second one first with a barcode taken.
    browser.fill("#title-isbn", "978-0-306-40615-7").await;
    browser
        .fill("#title-authors", "Vidal, Marta; Roca, Pau")
        .await;
    browser.fill("#title-year", "2019").await;
    browser
        .choose("#copy-rows tbody tr:nth-child(1) select", "central")
        .await;
    browser
        .fill("#copy-rows tbody tr:nth-child(1) input", "ATLAS-0001")
        .await;
    browser.click("#add-copy-row").await;
    browser
        .choose("#copy-rows tbody tr:nth-child(2) select", "norte")
        .await;
    browser
        .fill("#copy-rows tbody tr:nth-child(2) input", taken)
        .await;
    browser.click("#title-submit").await;
    let refused = browser.wait_text("#title-out.err", "barcode_taken").await;
    assert!(
        refused.contains("not copy 2") && refused.contains("Barcode of copy 2: "),
        "{refused}"
    );
    browser.screenshot("title-copy-refused").await;
    let (_, copies) = app.get_json(&format!("/v1/books/{ATLAS}")).await;
    assert_eq!(copies["copies"].as_array().unwrap().len(), 1, "{copies}");

    // Without a barcode one is made; pressing again adds only what is missing.
    browser
        .fill("#copy-rows tbody tr:nth-child(2) input", "")
        .await;
    browser.click("#title-submit").await;
    let added = browser.wait_text("#title-out.ok", "Added").await;
    assert!(
        added.contains("with 2 copies") && added.contains("ATLAS-0001"),
        "{added}"
    );
    let (status, book) = app.get_json(&format!("/v1/books/{ATLAS}")).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["title"], "Atlas de los ríos del norte");
    assert_eq!(book["authors"], json!(["Vidal, Marta", "Roca, Pau"]));
    assert_eq!(book["published_year"], 2019);
    let mut copies: Vec<(String, String)> = book["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["branch"].as_str().unwrap().to_owned(),
                c["barcode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    copies.sort();
    assert_eq!(copies.len(), 2, "{book}");
    assert_eq!(copies[0], ("central".to_owned(), "ATLAS-0001".to_owned()));
    assert_eq!(copies[1].0, "norte");
    let made = copies[1].1.clone();
    assert!(
        added.contains(&made),
        "{added} names the made barcode {made}"
    );
    browser.screenshot("title-added").await;

    // Found by search on the desk, its two copies on its page.
    browser.goto(&app.url("/ui/desk")).await;
    browser.fill("#search-q", "atlas ríos").await;
    browser.click("#search-form button").await;
    let found = browser
        .wait_text("#search-results tbody", "Atlas de los ríos del norte")
        .await;
    assert!(found.contains("2 of 2"), "{found}");
    browser.click("#search-results tbody a").await;
    browser
        .wait_text("#book-title", "Atlas de los ríos del norte")
        .await;
    browser
        .wait_text("#book-copies tr[data-copy='ATLAS-0001']", "available")
        .await;
    browser
        .wait_text(&format!("#book-copies tr[data-copy='{made}']"), "available")
        .await;
    browser.screenshot("title-found").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patron_found_in_the_browser_is_changed_blocked_refused_a_loan_and_unblocked() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let browser = Browser::start("patrons").await;
    browser.goto(&app.url("/ui/desk")).await;
    browser.click("nav a[href='/ui/patrons']").await;

    // Find by name, open.
    browser.fill("#patron-q", "ferrer").await;
    browser.click("#patron-search button").await;
    browser
        .wait_text("#patron-results tr[data-patron='ana']", "Ana Ferrer")
        .await;
    browser
        .click("#patron-results tr[data-patron='ana'] button")
        .await;
    browser.wait_text("#patron-heading", "Ana Ferrer").await;
    browser.wait_text("#patron-status", "active").await;

    // A bad e-mail is refused, naming the field; a good one is saved.
    browser.fill("#edit-email", "ana at example").await;
    browser.click("#patron-edit button[type=submit]").await;
    let refused = browser.wait_text("#edit-out.err", "E-mail: ").await;
    let (status, body) = app
        .patch("/v1/patrons/ana", &json!({"email": "ana at example"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        refused.contains(body["error"]["message"].as_str().unwrap()),
        "{refused} / {body}"
    );
    browser.fill("#edit-email", "ana.ferrer@example.org").await;
    browser.click("#patron-edit button[type=submit]").await;
    browser.wait_text("#edit-out.ok", "Saved").await;
    let (_, patron) = app.get_json("/v1/patrons/ana").await;
    assert_eq!(patron["email"], "ana.ferrer@example.org", "{patron}");

    // Block without a reason: refused; with one: blocked.
    browser.click("#block-form button[type=submit]").await;
    browser
        .wait_text("#block-out.err", "Block, because: ")
        .await;
    assert!(app.get_json("/v1/patrons/ana").await.1["blocked"].is_null());
    browser.fill("#block-reason", "Unpaid fine").await;
    browser.click("#block-form button[type=submit]").await;
    browser.wait_text("#block-out.ok", "Blocked").await;
    browser.wait_text("#patron-status", "Unpaid fine").await;
    let (_, patron) = app.get_json("/v1/patrons/ana").await;
    assert_eq!(patron["blocked"]["reason"], "Unpaid fine", "{patron}");
    browser.screenshot("patron-blocked").await;

    // The desk's loan is refused as the API refuses it.
    browser.goto(&app.url("/ui/desk")).await;
    browser.fill("#loan-book", QUIJOTE).await;
    browser.fill("#loan-patron", "ana").await;
    browser.choose("#loan-branch", "central").await;
    browser.click("#loan-form button[type=submit]").await;
    let refused = browser.wait_text("#loan-out.err", "patron_blocked").await;
    assert!(refused.contains("Refused"), "{refused}");
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE patron_id = 'ana'")
            .await,
        0
    );
    browser.screenshot("patron-blocked-loan").await;

    // Back to the patron (kept in the address): unblock, and the loan goes through.
    browser.goto(&app.url("/ui/patrons?id=ana")).await;
    browser.wait_text("#patron-status", "blocked").await;
    browser.click("#unblock-form button[type=submit]").await;
    browser.wait_text("#block-out.ok", "Unblocked").await;
    browser.wait_text("#patron-status", "active").await;
    assert!(app.get_json("/v1/patrons/ana").await.1["blocked"].is_null());
    let (status, loan) = app
        .post(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{loan}");

    // Add a patron; the same id again is refused, naming the id.
    browser.fill("#add-id", "Marta.Vidal").await;
    browser.fill("#add-name", "Marta Vidal").await;
    browser.click("#patron-add button[type=submit]").await;
    browser.wait_text("#add-out.ok", "marta.vidal").await;
    browser.wait_text("#patron-heading", "Marta Vidal").await;
    let (status, patron) = app.get_json("/v1/patrons/marta.vidal").await;
    assert_eq!(status, 200, "{patron}");
    browser.fill("#add-id", "marta.vidal").await;
    browser.fill("#add-name", "Marta Vidal").await;
    browser.click("#patron-add button[type=submit]").await;
    let refused = browser.wait_text("#add-out.err", "patron_exists").await;
    assert!(refused.contains("Id: "), "{refused}");
    browser.screenshot("patron-added").await;
    browser.close().await;
}
