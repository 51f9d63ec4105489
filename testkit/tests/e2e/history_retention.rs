//! Circulation-history retention and patron anonymisation: old rows
//! deleted, older-than-N rows and settled operations stripped of their
//! patron, newer ones kept; the table still append-only for everything but
//! that pass; and by default nothing touched at all.

use std::time::Duration;

use bibliomq_core::{
    library::retention::{HistoryCutoffs, HistoryPurged, purge_history},
    metrics::{Metrics, TableLabels},
};
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, Worker, wait_until},
    spawn_app,
};
use chrono::Utc;
use serde_json::{Value, json};

const QUIJOTE: &str = "9788437604947";
const DAY: Duration = Duration::from_secs(86_400);

/// Writes a history row `days` days old for `patron`, as `library_settle`
/// writes one: a loan, with the patron inside `details` too.
async fn history_row(app: &TestApp, days: i32, patron: &str) -> i64 {
    let details = json!({
        "outcome": "loaned",
        "loan": {"id": uuid::Uuid::new_v4(), "isbn": QUIJOTE, "patron": patron, "copy": "C-1"},
    });
    app.env
        .db()
        .await
        .query_one(
            "INSERT INTO circulation_history
                    (at, operation_id, kind, outcome, isbn, patron_id, branch, details)
             VALUES (now() - make_interval(days => $1), gen_random_uuid(), 'loan', 'applied',
                     $2, $3, 'central', $4)
             RETURNING id",
            &[&days, &QUIJOTE, &patron, &details],
        )
        .await
        .unwrap()
        .get(0)
}

/// A loan of a copy of its own made `days` ago for `patron`, returned
/// `returned` days ago or still out; its id is a UUIDv7 of when it was
/// made, as every loan's is.
async fn past_loan(app: &TestApp, days: i64, returned: Option<i64>, patron: &str) -> uuid::Uuid {
    let made = Utc::now() - chrono::Duration::days(days);
    let ms = u64::try_from(made.timestamp_millis()).unwrap();
    let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1_000,
        u32::try_from(ms % 1_000).unwrap() * 1_000_000,
    ));
    let returned_at = returned.map(|d| Utc::now() - chrono::Duration::days(d));
    let db = app.env.db().await;
    db.execute(
        "WITH c AS (INSERT INTO copies (isbn, branch, barcode, status)
                    VALUES ($1, 'central', $2, CASE WHEN $5::timestamptz IS NULL
                                                    THEN 'on_loan' ELSE 'available' END)
                    RETURNING id)
         INSERT INTO loans (id, copy_id, patron_id, branch, loaned_at, due_at,
                            returned_at, returned_branch)
         SELECT $3, c.id, $4, 'central', $6::timestamptz, $6::timestamptz + interval '14 days', $5,
                CASE WHEN $5::timestamptz IS NULL THEN NULL ELSE 'central' END
           FROM c",
        &[
            &QUIJOTE,
            &format!("PAST-{id}"),
            &id,
            &patron,
            &returned_at,
            &made,
        ],
    )
    .await
    .unwrap();
    id
}

/// A history row's patron and details, or `None` once it is deleted.
async fn history(app: &TestApp, id: i64) -> Option<(Option<String>, Value)> {
    app.env
        .db()
        .await
        .query_opt(
            "SELECT patron_id, details FROM circulation_history WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

fn anonymised(metrics: &Metrics, table: &str) -> u64 {
    metrics
        .history_anonymised
        .get_or_create(&TableLabels {
            table: table.to_owned(),
        })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_pass_deletes_old_rows_anonymises_older_than_n_days_and_keeps_newer_ones() {
    let app = spawn_app().await;
    app.seed(0, 5).await;
    // Two real loans (an operation has its loan's id): the first settled,
    // as if, forty days ago.
    let (status, old_loan) = app
        .post(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "central"}),
        )
        .await;
    assert_eq!(status, 201, "{old_loan}");
    let old_op = old_loan["loan"]["id"].as_str().unwrap().to_owned();
    let (status, new_loan) = app
        .post(
            "/v1/loans",
            &json!({"isbn": QUIJOTE, "patron": "ana", "branch": "norte"}),
        )
        .await;
    assert_eq!(status, 201, "{new_loan}");
    let new_op = new_loan["loan"]["id"].as_str().unwrap().to_owned();
    let db = app.env.db().await;
    // A loan is requested and settled at once: both times move back.
    db.execute(
        "UPDATE operations SET requested_at = now() - interval '40 days',
                               settled_at = now() - interval '40 days'
          WHERE id = $1::text::uuid",
        &[&old_op],
    )
    .await
    .unwrap();
    // Loans made, as if, long ago: one returned forty days ago (forgotten),
    // one still out after forty-five days (kept); and one returned today
    // (kept). Their ids are made at their times, as a loan's always is.
    let returned_long_ago = past_loan(&app, 45, Some(40), "luis").await;
    let still_out = past_loan(&app, 45, None, "luis").await;
    let returned_today = past_loan(&app, 3, Some(0), "luis").await;
    let ancient = history_row(&app, 400, "ana").await;
    let old = history_row(&app, 40, "ana").await;
    let recent = history_row(&app, 1, "ana").await;
    let history_before = app.count("SELECT count(*) FROM circulation_history").await;

    let pool = bibliomq_core::db::pool(&app.env.settings().database).unwrap();
    let metrics = Metrics::new();
    let cutoffs = HistoryCutoffs::at(Utc::now(), Some(365 * DAY), Some(30 * DAY));
    let pass = purge_history(&pool, cutoffs, &metrics).await.unwrap();
    assert_eq!(
        pass,
        Some(HistoryPurged {
            deleted: 1,
            anonymised: 1,
            operations_anonymised: 1,
            loans_forgotten: 1,
        })
    );

    assert_eq!(history(&app, ancient).await, None, "past the retention");
    let (patron, details) = history(&app, old).await.expect("kept");
    assert_eq!(patron, None, "anonymised");
    assert_eq!(details["loan"]["patron"], "~anonymised", "{details}");
    assert!(
        !details.to_string().contains("\"ana\""),
        "no trace of the patron: {details}"
    );
    let (patron, details) = history(&app, recent).await.expect("kept");
    assert_eq!(patron.as_deref(), Some("ana"));
    assert_eq!(details["loan"]["patron"], "ana");
    assert_eq!(
        app.count("SELECT count(*) FROM circulation_history").await,
        history_before - 1
    );

    // The old operation still reads, without its patron; today's keeps it.
    let (status, op) = app.get_json(&format!("/v1/operations/{old_op}")).await;
    assert_eq!(status, 200, "{op}");
    assert!(op["patron"].is_null(), "{op}");
    assert_eq!(op["outcome"]["loan"]["patron"], "~anonymised", "{op}");
    let (_, op) = app.get_json(&format!("/v1/operations/{new_op}")).await;
    assert_eq!(op["patron"], "ana", "{op}");
    // Open loans stay whatever their age, and so do loans returned since
    // the cutoff; a loan returned before it is gone.
    assert_eq!(
        app.count("SELECT count(*) FROM loans WHERE patron_id = 'ana'")
            .await,
        2
    );
    let loan_left = |id: uuid::Uuid| {
        let app = &app;
        async move {
            app.count(&format!("SELECT count(*) FROM loans WHERE id = '{id}'"))
                .await
                == 1
        }
    };
    assert!(!loan_left(returned_long_ago).await, "returned 40 days ago");
    assert!(loan_left(still_out).await, "still out");
    assert!(loan_left(returned_today).await, "returned today");
    let (status, listed) = app.get_json("/v1/patrons/luis/loans?all=true").await;
    assert_eq!(status, 200, "{listed}");
    assert!(
        !listed.to_string().contains(&returned_long_ago.to_string()),
        "{listed}"
    );

    assert_eq!(metrics.history_purged.get(), 1);
    assert_eq!(anonymised(&metrics, "circulation_history"), 1);
    assert_eq!(anonymised(&metrics, "operations"), 1);
    assert_eq!(anonymised(&metrics, "loans"), 1);
    // A second pass finds nothing more to do.
    assert_eq!(
        purge_history(&pool, cutoffs, &metrics).await.unwrap(),
        Some(HistoryPurged::default())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_still_refuses_an_ordinary_update_or_delete() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let row = history_row(&app, 400, "ana").await;
    let db = app.env.db().await;
    let refused = |r: Result<u64, tokio_postgres::Error>| {
        let e = r.expect_err("the change went through");
        let text = format!("{e:?}");
        assert!(text.contains("append-only"), "{text}");
    };
    refused(
        db.execute("DELETE FROM circulation_history WHERE id = $1", &[&row])
            .await,
    );
    refused(
        db.execute(
            "UPDATE circulation_history
                SET patron_id = NULL, details = library_without_patron(details)
              WHERE id = $1",
            &[&row],
        )
        .await,
    );
    // With the maintenance flag, still nothing but the patron may change.
    let mut db = db;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('bibliomq.history_maintenance', 'on', true)",
        &[],
    )
    .await
    .unwrap();
    refused(
        tx.execute(
            "UPDATE circulation_history SET patron_id = NULL, branch = 'norte' WHERE id = $1",
            &[&row],
        )
        .await,
    );
    tx.rollback().await.unwrap();
    // The flag is the transaction's own: gone after it.
    refused(
        db.execute("DELETE FROM circulation_history WHERE id = $1", &[&row])
            .await,
    );
    assert_eq!(
        history(&app, row).await.map(|(p, _)| p),
        Some(Some("ana".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_whole_history_is_kept() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let settings = app.env.settings();
    assert_eq!(settings.library.history_retention, None);
    assert_eq!(settings.library.history_anonymise_after, None);
    let row = history_row(&app, 3650, "ana").await;
    let cutoffs = HistoryCutoffs::at(
        Utc::now(),
        settings.library.history_retention,
        settings.library.history_anonymise_after,
    );
    assert!(cutoffs.is_nothing());
    let pool = bibliomq_core::db::pool(&settings.database).unwrap();
    let metrics = Metrics::new();
    assert_eq!(
        purge_history(&pool, cutoffs, &metrics).await.unwrap(),
        Some(HistoryPurged::default())
    );
    assert_eq!(
        history(&app, row).await.map(|(p, _)| p),
        Some(Some("ana".to_owned())),
        "ten years old and kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_janitor_applies_the_history_retention_it_is_given() {
    let tweak = |s: &mut bibliomq_core::config::Settings| {
        s.library.history_retention = Some(365 * DAY);
        s.library.history_anonymise_after = Some(30 * DAY);
        s.tasks.janitor_interval = Duration::from_millis(200);
    };
    let mut app = TestApp::spawn(TestEnv::new().await, tweak, 0).await;
    // The rows are all there before the worker starts: a pass that ran
    // between two inserts could anonymise the ancient row before a later
    // pass deletes it, and count it twice.
    let ancient = history_row(&app, 400, "ana").await;
    let old = history_row(&app, 40, "ana").await;
    let recent = history_row(&app, 1, "ana").await;
    let mut settings = app.env.settings();
    tweak(&mut settings);
    app.workers.push(Worker::start(settings).await);
    wait_until(DEADLINE, || async {
        let done = history(&app, ancient).await.is_none()
            && history(&app, old).await.is_some_and(|(p, _)| p.is_none());
        done.then_some(())
    })
    .await
    .expect("the janitor never applied the history's retention");
    assert_eq!(
        history(&app, recent).await.map(|(p, _)| p),
        Some(Some("ana".to_owned()))
    );
    let metrics = &app.workers[0].metrics;
    assert_eq!(metrics.history_purged.get(), 1);
    assert_eq!(anonymised(metrics, "circulation_history"), 1);
}
