//! The web pages in a real headless Chromium: the front desk, the task page,
//! the dashboard, the object browser, the banners and the token prompt, as a
//! person uses them.
//! Each page checked leaves a screenshot under `<target>/ui-screenshots/`,
//! checked to show something (not one flat colour).

use bibliomq_core::{config::ApiToken, metrics::HttpLabels};
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
    browser::Browser,
    spawn_app,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const QUIJOTE: &str = "9788437604947";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librarian_finds_a_book_then_lends_renews_and_returns_it_in_the_browser() {
    let app = spawn_app().await;
    app.seed(0, 20).await;
    let browser = Browser::start("front-desk").await;

    browser.goto(&app.url("/")).await;
    browser.wait_text("#health", "all services up").await;
    browser.fill("#search-q", "quijote").await;
    browser.click("#search-form button").await;
    browser
        .wait_text("#search-results tbody", "Don Quijote de la Mancha")
        .await;
    browser.screenshot("desk-search").await;

    // A refusal shows the API's own message, in place.
    browser.click("#search-results tbody button").await;
    browser.fill("#loan-patron", "nadie").await;
    browser.click("#loan-form button[type=submit]").await;
    let refused = browser.wait_text("#loan-out.err", "patron_not_found").await;
    let (status, body) = {
        let r = app
            .post_json(
                "/v1/loans",
                &json!({"isbn": QUIJOTE, "patron": "nadie", "branch": "central"}),
            )
            .await;
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 404);
    assert!(
        refused.contains(body["error"]["message"].as_str().unwrap()),
        "the page shows `{refused}`, the API said {body}"
    );

    // Lend it.
    browser.fill("#loan-patron", "ana").await;
    browser.choose("#loan-branch", "central").await;
    browser.click("#loan-form button[type=submit]").await;
    let lent = browser.wait_text("#loan-out.ok", "Lent").await;
    let loans = app.get_json("/v1/patrons/ana/loans").await.1;
    let loan = loans["loans"][0].clone();
    assert_eq!(loan["isbn"], QUIJOTE, "{loans}");
    let copy = loan["copy"].as_str().unwrap().to_owned();
    assert!(lent.contains(&copy), "{lent}");
    let due = browser
        .text("#loan-out .due")
        .await
        .trim_start_matches("due ")
        .to_owned();
    browser.screenshot("desk-lent").await;

    // The patron's page lists the loan with the same due date.
    browser.click("#loan-out a[href^='/ui/patrons/']").await;
    let row = browser
        .wait_text("#patron-loans tbody", "Don Quijote")
        .await;
    assert!(row.contains(&due), "due {due} on the patron page: {row}");
    browser.wait_text("#patron-name", "Ana Ferrer").await;
    browser.screenshot("patron").await;

    // The book's page shows that copy on loan, due then.
    browser.click("#patron-loans tbody a").await;
    let copy_row = format!("#book-copies tr[data-copy='{copy}']");
    let shown = browser.wait_text(&copy_row, "on loan").await;
    assert!(shown.contains(&due), "{shown}");
    browser.screenshot("book-on-loan").await;

    // Renew: accepted, then applied; the page says the new due date.
    browser
        .click(&format!("{copy_row} button[aria-label^='Renew']"))
        .await;
    let renewed = browser.wait_text("#copy-out.ok", "Renewed").await;
    let after = app
        .get_json(&format!("/v1/loans/{}", loan["id"].as_str().unwrap()))
        .await
        .1;
    assert_eq!(after["renewals"], 1, "{after}");
    assert_ne!(after["due_at"], loan["due_at"]);
    let new_due = browser
        .text("#copy-out .due")
        .await
        .trim_start_matches("due ")
        .to_owned();
    assert!(renewed.contains(&new_due) && new_due != due, "{renewed}");
    browser.wait_text(&copy_row, &new_due).await;

    // Return: the copy is available again.
    browser
        .click(&format!("{copy_row} button[aria-label^='Return']"))
        .await;
    browser.wait_text("#copy-out.ok", "Returned").await;
    browser.wait_text(&copy_row, "available").await;
    let after = app
        .get_json(&format!("/v1/loans/{}", loan["id"].as_str().unwrap()))
        .await
        .1;
    assert!(after["returned_at"].is_string(), "{after}");
    browser.screenshot("book-returned").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_in_the_browser_is_watched_to_success_and_its_result_downloaded() {
    let app = spawn_app().await;
    let browser = Browser::start("tasks").await;
    browser.goto(&app.url("/ui/tasks")).await;

    // The API's refusal, in place.
    browser.choose("#task-action", "fib").await;
    browser.fill("#task-payload", "\"many\"").await;
    browser.click("#task-form button[type=submit]").await;
    let refused = browser.wait_text("#task-out.err", "invalid_payload").await;
    let response = app
        .post_json("/v1/tasks", &json!({"action": "fib", "payload": "many"}))
        .await;
    let body: Value = response.json().await.unwrap();
    assert!(
        refused.contains(body["error"]["message"].as_str().unwrap()),
        "{refused} / {body}"
    );

    // A large result, kept in object storage.
    browser.choose("#task-action", "primes").await;
    browser.fill("#task-payload", "2000000").await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("#task-out.ok", "queued").await;
    browser
        .wait_for(
            "the task to succeed on the page",
            "return document.querySelector('#task-state')?.dataset.state === 'succeeded'",
            json!([]),
        )
        .await;
    let id = browser.text("#task-card dd.mono a").await;
    let task = app.get_json(&format!("/v1/tasks/{id}")).await.1;
    assert_eq!(task["state"], "succeeded", "{task}");
    browser.wait_text("#recent-tasks tbody", &id[..8]).await;
    browser.screenshot("task-succeeded").await;

    browser.click("#task-card a.button").await;
    let file = browser.downloaded(&format!("{id}.json")).await;
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        task["result_object"]["sha256"].as_str().unwrap(),
        "the downloaded file is the stored result"
    );

    // The object browser lists it, newest first.
    browser.goto(&app.url("/ui/objects")).await;
    browser.wait_text("#objects tbody", &id).await;
    browser.screenshot("objects").await;

    // The task's own page.
    browser.goto(&app.url(&format!("/ui/tasks/{id}"))).await;
    browser
        .wait_text("#task-card", "kept in object storage")
        .await;
    browser.screenshot("task-page").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_dead_letters_and_replays_them_with_its_button() {
    // No workers: a replayed message stays in the task queue. No replay
    // budget: each replay of all takes one window, so one more than a
    // window needs two clicks, and the first says what is left.
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.dead_replay_budget = std::time::Duration::ZERO,
        0,
    )
    .await;
    let window = bibliomq_core::broker::PUBLISH_MANY_WINDOW;
    let count = window + 2;
    bibliomq_testkit::rabbit::dead_task_letters(
        &app.env.amqp_url(),
        (0..count).map(|n| format!("d{n}")),
    )
    .await;
    let browser = Browser::start("dashboard_dead").await;
    browser.goto(&app.url("/ui/dashboard")).await;
    browser
        .wait_text(
            "#dead-letters li[data-queue='tasks'] .count",
            &count.to_string(),
        )
        .await;
    browser
        .click("#dead-letters button[data-replay='tasks']")
        .await;
    browser
        .wait_text(
            "#dead-out",
            &format!("Replayed {window} dead letter(s) from tasks. 2 left"),
        )
        .await;
    let two_left = wait_until(DEADLINE, || async {
        let (_, list) = app.get_json("/v1/dead-letters?queue=tasks").await;
        (list["total"] == 2).then_some(list)
    })
    .await;
    assert!(two_left.is_some(), "the first window's letters stayed");
    browser
        .click("#dead-letters button[data-replay='tasks']")
        .await;
    browser
        .wait_text("#dead-out", "Replayed 2 dead letter(s) from tasks.")
        .await;
    browser
        .wait_text("#dead-letters li[data-queue='tasks'] .count", "0")
        .await;
    let (_, list) = app.get_json("/v1/dead-letters?queue=tasks").await;
    assert_eq!(list["total"], 0, "{list}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_queues_the_task_counts_and_a_live_event() {
    let app = spawn_app().await;
    app.seed(0, 10).await;
    let browser = Browser::start("dashboard").await;
    browser.goto(&app.url("/ui/dashboard")).await;
    browser
        .wait_element("#queues tr[data-queue='bibliomq.tasks']")
        .await;
    browser.wait_text("#feed-state", "live").await;

    let id = app.submit("sum", json!([1, 2, 3])).await;
    let event = browser
        .wait_text("#feed li[data-key='task.succeeded']", "succeeded")
        .await;
    assert!(event.contains(&id.to_string()[..8]), "{event}");
    let response = app
        .post_json(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "norte"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    browser
        .wait_text("#feed li[data-key='loaned.norte']", "Don Quijote")
        .await;
    browser.wait_text("#task-states li.succeeded", "1").await;
    browser.wait_text("#circulation", "loan applied: 1").await;
    browser.screenshot("dashboard").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banners_say_which_service_is_down_and_when_the_api_itself_is() {
    // Object storage unreachable: the API answers, but is not ready.
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.s3.endpoint = "http://127.0.0.1:9".to_owned(),
        0,
    )
    .await;
    let browser = Browser::start("banners").await;
    browser.goto(&app.url("/ui/desk")).await;
    browser.wait_text("#banner", "object storage").await;
    browser.wait_text("#health", "degraded").await;
    browser.screenshot("storage-down").await;

    let mut app = app;
    app.stop().await;
    browser
        .wait_text("#banner", "The API cannot be reached")
        .await;
    browser.screenshot("api-down").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_token_the_desk_asks_for_it_once_then_searches_and_remembers_it() {
    let token = "tok-browser-test";
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.token = Some(ApiToken(token.into())),
        0,
    )
    .await;
    app.seed(0, 10).await;
    let browser = Browser::start("token").await;
    browser.goto(&app.url("/ui/desk")).await;
    browser.wait_text("#health", "all services up").await;
    assert_eq!(
        browser.text("#api-token-form").await,
        "",
        "no prompt before the API refuses something"
    );

    // The search is refused with 401: the prompt comes, once, however many
    // requests were refused, and the search waits for it.
    browser.fill("#search-q", "quijote").await;
    browser.click("#search-form button").await;
    browser
        .wait_text("#api-token-form", "This API asks for a token")
        .await;
    assert_eq!(
        browser
            .eval("return document.activeElement.id", json!([]))
            .await,
        "api-token",
        "the prompt has the focus"
    );
    browser.click("#search-form button").await;
    let refused = HttpLabels {
        method: "GET".into(),
        route: "/v1/books".into(),
        status: 401,
    };
    wait_until(DEADLINE, || async {
        let n = app.api_metrics.http_requests.get_or_create(&refused).get();
        (n >= 2).then_some(())
    })
    .await
    .expect("the second search was never refused");
    browser.wait_text("#search-out", "Searching").await;
    let prompts = browser
        .eval(
            "return document.querySelectorAll('#api-token-form').length",
            json!([]),
        )
        .await;
    assert_eq!(prompts, 1, "one prompt for two refused searches");
    browser.screenshot("token-prompt").await;

    // A wrong token is refused in turn, and asked for again.
    browser.fill("#api-token", "not-it").await;
    browser.click("#api-token-form button[type=submit]").await;
    browser
        .wait_text("#api-token-form", "refused the token this browser had")
        .await;

    // The right one: the search is sent again and its results shown.
    browser.fill("#api-token", token).await;
    browser.click("#api-token-form button[type=submit]").await;
    browser
        .wait_text("#search-results tbody", "Don Quijote de la Mancha")
        .await;
    browser
        .wait_for(
            "the prompt to go",
            "return !document.querySelector('#api-token-form')",
            json!([]),
        )
        .await;
    let kept = browser
        .eval("return localStorage.getItem('bibliomq.token')", json!([]))
        .await;
    assert_eq!(kept, token, "the token is kept in this browser");

    // Remembered: after a reload the desk searches without asking.
    browser.reload().await;
    browser.wait_text("#health", "all services up").await;
    browser.fill("#search-q", "sombra").await;
    browser.click("#search-form button").await;
    browser
        .wait_text("#search-results tbody", "La sombra del viento")
        .await;
    assert_eq!(
        browser.text("#api-token-form").await,
        "",
        "no prompt with the token remembered"
    );
    browser.screenshot("token-remembered").await;

    // Other pages use it too, the live feed (read with fetch) included.
    browser.goto(&app.url("/ui/dashboard")).await;
    browser
        .wait_element("#queues tr[data-queue='bibliomq.tasks']")
        .await;
    browser.wait_text("#feed-state", "live").await;
    assert_eq!(browser.text("#api-token-form").await, "");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_from_its_page() {
    let app = spawn_app().await;
    let id = app.submit("sleep", json!(60_000)).await;
    app.wait_for_task_state(id, &["running"]).await;
    let browser = Browser::start("task-cancel").await;
    browser.goto(&app.url(&format!("/ui/tasks/{id}"))).await;
    browser.wait_element("#task-cancel").await;
    browser.click("#task-cancel").await;
    browser
        .wait_for(
            "the page to show the task cancelled",
            "return document.querySelector('#task-state')?.dataset.state === 'cancelled'",
            json!([]),
        )
        .await;
    assert_eq!(app.task(id).await["state"], "cancelled");
    browser.screenshot("task-cancelled").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_places_a_hold_and_after_a_return_lends_the_copy_from_the_hold_shelf() {
    const ISBN: &str = "9788450000030";
    let app = spawn_app().await;
    app.add_title(ISBN, "Solo en la central", &[1, 0]).await;
    let patrons = app.add_patrons("d", 2).await;
    let (status, lent) = app
        .post(
            "/v1/loans",
            &json!({"isbn": ISBN, "patron": patrons[0], "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{lent}");
    let copy = lent["loan"]["copy"].as_str().unwrap().to_owned();
    let browser = Browser::start("holds").await;

    // No copy at hand: the book page places a hold for d2, at norte.
    browser.goto(&app.url(&format!("/ui/books/{ISBN}"))).await;
    browser.wait_text("#book-title", "Solo en la central").await;
    browser.fill("#hold-patron", &patrons[1]).await;
    browser.choose("#hold-branch", "norte").await;
    browser.click("#hold-form button[type=submit]").await;
    let placed = browser.wait_text("#hold-out.ok", "Hold placed").await;
    assert!(placed.contains("number 1 in the queue"), "{placed}");
    browser.wait_text("#book-holds tbody", &patrons[1]).await;
    let (_, holds) = app
        .get_json(&format!("/v1/patrons/{}/holds", patrons[1]))
        .await;
    assert_eq!(holds["holds"][0]["state"], "waiting", "{holds}");
    browser.screenshot("hold-placed").await;

    // The copy comes back: the page says it goes onto norte's hold shelf.
    let copy_row = format!("#book-copies tr[data-copy='{copy}']");
    browser
        .click(&format!("{copy_row} button[aria-label^='Return']"))
        .await;
    let returned = browser.wait_text("#copy-out.ok", "hold shelf").await;
    assert!(returned.contains(&patrons[1]), "{returned}");
    browser.wait_text(&copy_row, "on hold shelf").await;
    browser.wait_text("#book-holds tbody", "ready").await;

    // Someone else is refused; the patron it waits for gets it.
    browser.fill("#loan-patron", &patrons[0]).await;
    browser.click("#loan-form button[type=submit]").await;
    browser.wait_text("#loan-out.err", "not_available").await;
    browser.fill("#loan-patron", &patrons[1]).await;
    browser.choose("#loan-branch", "norte").await;
    browser.click("#loan-form button[type=submit]").await;
    let lent = browser.wait_text("#loan-out.ok", "their hold").await;
    assert!(lent.contains(&copy), "{lent}");
    browser.wait_text(&copy_row, "on loan").await;
    let (_, holds) = app
        .get_json(&format!("/v1/patrons/{}/holds?all=true", patrons[1]))
        .await;
    assert_eq!(holds["holds"][0]["state"], "fulfilled", "{holds}");
    browser.screenshot("hold-lent").await;

    // After a return and a loan on this page, one press of the hold form
    // still sends one request: the page counts the POSTs it makes.
    browser
        .eval(
            "window.holdPosts = 0;
             const send = window.fetch;
             window.fetch = (url, init) => {
               if (init?.method === 'POST' && String(url).endsWith('/v1/holds')) window.holdPosts += 1;
               return send(url, init);
             };",
            json!([]),
        )
        .await;
    browser.fill("#hold-patron", &patrons[0]).await;
    browser.choose("#hold-branch", "central").await;
    browser.click("#hold-form button[type=submit]").await;
    let placed = browser.wait_text("#hold-out.ok", "Hold placed").await;
    browser.wait_text("#book-holds tbody", &patrons[0]).await;
    let posts = browser.eval("return window.holdPosts", json!([])).await;
    assert_eq!(posts, 1, "one press, one request; the page says {placed}");
    let (_, holds) = app
        .get_json(&format!("/v1/patrons/{}/holds", patrons[0]))
        .await;
    assert_eq!(holds["holds"].as_array().map(Vec::len), Some(1), "{holds}");

    // The patron page lists open holds with a cancel button.
    browser
        .goto(&app.url(&format!("/ui/patrons/{}", patrons[0])))
        .await;
    browser
        .wait_text("#patron-holds tbody", "Solo en la central")
        .await;
    browser
        .click("#patron-holds tbody button[aria-label^='Cancel']")
        .await;
    browser.wait_text("#hold-action-out.ok", "Cancelled").await;
    browser.wait_text("#patron-holds tbody", "No holds").await;
    browser.close().await;
}
