//! Flat as data grows: the dashboard's task counts are kept by triggers as
//! tasks move (and must stay exact through every state, retries and the
//! retention purge), and title search ranks a bounded set of candidates.

use std::{collections::BTreeMap, time::Duration};

use bibliomq_core::library::store::SEARCH_CANDIDATES;
use bibliomq_testkit::{
    TestApp, TestEnv,
    app::{DEADLINE, wait_until},
};
use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

/// Every state with its count, as `SELECT count(*)` sees the table now.
async fn counted(app: &TestApp) -> BTreeMap<String, i64> {
    let db = app.env.db().await;
    let mut by_state: BTreeMap<String, i64> = [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
    ]
    .iter()
    .map(|s| ((*s).to_owned(), 0))
    .collect();
    for row in db
        .query("SELECT state, count(*) FROM tasks GROUP BY state", &[])
        .await
        .unwrap()
    {
        by_state.insert(row.get(0), row.get(1));
    }
    by_state
}

/// The dashboard's figures, as a map like [`counted`]'s.
async fn shown(app: &TestApp) -> (BTreeMap<String, i64>, i64) {
    let (status, body) = app.get_json("/v1/dashboard/tasks").await;
    assert_eq!(status, 200, "{body}");
    let by_state = body["by_state"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect();
    (by_state, body["total"].as_i64().unwrap())
}

/// Polls until the work has settled into `expected` (the states named in it;
/// others must be zero) and the dashboard shows exactly what a count of the
/// table shows.
async fn settles_to(app: &TestApp, expected: &[(&str, i64)]) {
    let agreed = wait_until(DEADLINE, || async {
        let counts = counted(app).await;
        let (figures, total) = shown(app).await;
        let again = counted(app).await;
        let settled = counts
            .iter()
            .all(|(s, n)| *n == expected.iter().find(|(e, _)| e == s).map_or(0, |(_, n)| *n));
        (settled && counts == again && figures == counts && total == counts.values().sum::<i64>())
            .then_some(())
    })
    .await;
    if agreed.is_none() {
        let (figures, total) = shown(app).await;
        panic!(
            "expected {expected:?}; the table holds {:?}, the dashboard shows {figures:?} (total {total})",
            counted(app).await
        );
    }
}

async fn submit_body(app: &TestApp, body: Value) -> Uuid {
    let (status, answer) = app.post("/v1/tasks", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_stay_exact_through_every_state_retries_and_the_retention_purge() {
    // Results above 16 bytes go to a bucket that does not exist, retried
    // once: such a task ends dead after a retry.
    let env = TestEnv::new().await;
    let bucket = env.missing_bucket();
    let app = TestApp::spawn(
        env,
        |s| {
            s.s3.bucket = bucket.clone();
            s.tasks.inline_result_limit = 16;
            s.tasks.max_retries = 1;
            s.tasks.retention = Duration::from_secs(3_600);
            s.tasks.janitor_interval = Duration::from_millis(200);
        },
        1,
    )
    .await;
    settles_to(&app, &[]).await;

    // Succeeded, failed (past its time limit), dead (after a retry),
    // running (a long sleep), scheduled (an hour ahead).
    let quick: Vec<Uuid> = join_all((0..5).map(|i| app.submit("sum", json!([i, 1])))).await;
    let failed = submit_body(
        &app,
        json!({"action": "sleep", "payload": 60_000, "timeout_ms": 50}),
    )
    .await;
    let dead = app
        .submit("upper", json!("a result longer than sixteen bytes"))
        .await;
    let running = app.submit("sleep", json!(60_000)).await;
    let scheduled = submit_body(
        &app,
        json!({"action": "sum", "payload": "1,2", "delay_ms": 3_600_000}),
    )
    .await;
    for id in &quick {
        app.wait_for_task(*id).await;
    }
    app.wait_for_task_state(dead, &["dead"]).await;
    app.wait_for_task_state(running, &["running"]).await;
    settles_to(
        &app,
        &[
            ("succeeded", 5),
            ("failed", 1),
            ("dead", 1),
            ("running", 1),
            ("scheduled", 1),
        ],
    )
    .await;
    assert_eq!(app.task(dead).await["attempts"], 2, "retried once");
    assert_eq!(app.task(failed).await["state"], "failed");

    // Cancelled: the running task and the scheduled one.
    for id in [running, scheduled] {
        let (status, body) = app
            .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
            .await;
        // 202 while the running one is being stopped, 200 when done at once.
        assert!(status == 200 || status == 202, "{status} {body}");
    }
    app.wait_for_task_state(running, &["cancelled"]).await;
    settles_to(
        &app,
        &[
            ("succeeded", 5),
            ("failed", 1),
            ("dead", 1),
            ("cancelled", 2),
        ],
    )
    .await;

    // The retention purge deletes finished tasks: three of the succeeded
    // ones and the failed one finished "two hours ago".
    let db = app.env.db().await;
    let old = vec![quick[0], quick[1], quick[2], failed];
    db.execute(
        "UPDATE tasks SET finished_at = now() - interval '2 hours' WHERE id = ANY($1)",
        &[&old],
    )
    .await
    .unwrap();
    settles_to(&app, &[("succeeded", 2), ("dead", 1), ("cancelled", 2)]).await;

    // Folding moves the deltas into the folded counts and changes nothing
    // the dashboard shows.
    let before = shown(&app).await;
    bibliomq_core::db::counters::fold(&db).await.unwrap();
    let deltas: i64 = db
        .query_one("SELECT count(*) FROM task_state_deltas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deltas, 0, "a fold leaves no delta behind");
    assert_eq!(shown(&app).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_stay_exact_when_many_tasks_move_at_once_in_two_workers() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 2).await;
    let ids: Vec<Uuid> = join_all((0..200).map(|i| app.submit("sum", json!([i, 2])))).await;
    let db = app.env.db().await;
    for id in &ids {
        app.wait_for_task(*id).await;
    }
    settles_to(&app, &[("succeeded", 200)]).await;
    // Rows deleted by any statement are counted out.
    let gone = db
        .execute(
            "DELETE FROM tasks WHERE id = ANY($1)",
            &[&ids[..50].to_vec()],
        )
        .await
        .unwrap();
    assert_eq!(gone, 50);
    settles_to(&app, &[("succeeded", 150)]).await;
    // Folded by the workers within a few seconds, the figures unchanged.
    let folded = wait_until(DEADLINE, || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM task_state_deltas", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert!(folded.is_some(), "the workers never folded the deltas");
    settles_to(&app, &[("succeeded", 150)]).await;
}

/// Titles found for `query` (as given in the URL), in order.
async fn titles_for(app: &TestApp, query: &str) -> Vec<String> {
    let (status, found) = app.get_json(&format!("/v1/books?{query}")).await;
    assert_eq!(status, 200, "{found}");
    found["books"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_puts_the_exact_title_first_then_the_closest_and_respects_the_limit() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    for (isbn, title) in [
        (
            "9790000000011",
            "Crónica de la noche lejana en la ciudad del río",
        ),
        ("9790000000028", "La noche oscura"),
        ("9790000000035", "Noche"),
        ("9790000000042", "La noche"),
        ("9790000000059", "Nochebuena en el faro"),
        ("9790000000066", "El faro del sur"),
    ] {
        app.add_title(isbn, title, &[1]).await;
    }
    assert_eq!(
        titles_for(&app, "title=NOCHE").await,
        [
            "Noche",
            "La noche",
            "La noche oscura",
            "Nochebuena en el faro",
            "Crónica de la noche lejana en la ciudad del río",
        ],
        "the exact title, then the closest"
    );
    assert_eq!(
        titles_for(&app, "title=noche&limit=2").await,
        ["Noche", "La noche"]
    );
    assert_eq!(
        titles_for(&app, "title=la%20n%C3%B3che").await[0],
        "La noche",
        "accents and case folded; the exact title first"
    );
    assert_eq!(
        titles_for(&app, "title=faro%20noche").await,
        ["Nochebuena en el faro"],
        "every word must match"
    );
    assert!(titles_for(&app, "title=zzqx").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_in_more_titles_than_the_candidates_returns_only_matching_titles_and_the_exact_one_first()
 {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let many = SEARCH_CANDIDATES * 3;
    let db = app.env.db().await;
    // Many titles with "de", then some without, then the exact title last
    // (so a scan that stops early never meets it).
    db.execute(
        "INSERT INTO titles (isbn, title)
         SELECT '97910' || lpad(i::text, 8, '0'), 'Diario de viaje número ' || i
           FROM generate_series(1, $1::bigint) i",
        &[&many],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO titles (isbn, title)
         SELECT '97920' || lpad(i::text, 8, '0'), 'El faro ' || i FROM generate_series(1, 300) i",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO titles (isbn, title) VALUES ('9793000000000', 'DÉ')",
        &[],
    )
    .await
    .unwrap();
    db.execute("ANALYZE titles", &[]).await.unwrap();

    let found = titles_for(&app, "title=de&limit=100").await;
    assert_eq!(found.len(), 100, "the limit, and no fewer: {found:?}");
    assert_eq!(found[0], "DÉ", "the exact title first");
    let mut seen = std::collections::BTreeSet::new();
    for title in &found {
        assert!(
            title.to_lowercase().contains("de") || title == "DÉ",
            "{title} does not hold the word"
        );
        assert!(seen.insert(title.clone()), "{title} twice");
    }
    let two = titles_for(&app, "title=viaje%20de&limit=7").await;
    assert_eq!(two.len(), 7);
    assert!(
        two.iter().all(|t| t.starts_with("Diario de viaje")),
        "{two:?}"
    );
    // A rare word is ranked among all its matches.
    assert_eq!(
        titles_for(&app, "title=faro%2012&limit=3").await,
        ["El faro 12", "El faro 112", "El faro 120"]
    );
}

/// The plans of every statement that addresses tasks by id and tests their
/// state, as PostgreSQL settles on for a prepared statement (its generic
/// plan): the names of those that do not go through the primary key, with
/// their plans.
async fn off_the_primary_key(db: &tokio_postgres::Client) -> Vec<String> {
    use bibliomq_core::tasks::store::BY_ID_WITH_STATE;
    db.batch_execute("DEALLOCATE ALL; SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let mut off = Vec::new();
    for (i, (name, sql)) in BY_ID_WITH_STATE.iter().enumerate() {
        let prepared = format!("by_id_{i}");
        db.batch_execute(&format!("PREPARE {prepared} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let params: i32 = db
            .query_one(
                "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = $1",
                &[&prepared],
            )
            .await
            .unwrap()
            .get(0);
        let nulls = vec!["NULL"; usize::try_from(params).unwrap()].join(", ");
        let plan: String = db
            .query(&format!("EXPLAIN EXECUTE {prepared}({nulls})"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0) + "\n")
            .collect();
        if !plan.contains("tasks_pkey")
            || plan.contains("Seq Scan on tasks")
            || plan.contains("tasks_by_action_state")
            || plan.contains("tasks_scheduled_run_at")
            || plan.contains("tasks_in_flight")
        {
            off.push(format!("{name}:\n{plan}"));
        }
    }
    off
}

/// A backlog the planner does not know of, twice: 20,000 tasks `queued`
/// (and some `running` and `scheduled`) in a table never analyzed, as in a
/// new database under its first load; then the same after an ANALYZE that
/// saw none of them waiting. Each time, every statement that addresses
/// tasks by id and tests their state must go through the primary key: a
/// plan that scans the table or walks an index on `state` reads the whole
/// backlog for each batch (150 to 300 ms for 100 outcomes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_by_id_go_through_the_primary_key_behind_a_backlog_the_statistics_miss() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let db = app.env.db().await;
    db.batch_execute(
        "INSERT INTO tasks (id, action, payload, state)
              SELECT gen_random_uuid(), 'sum', '\"1,2\"', 'queued'
                FROM generate_series(1, 20000);
         INSERT INTO tasks (id, action, payload, state, run_at)
              SELECT gen_random_uuid(), 'sum', '\"1,2\"', 'scheduled', now() + interval '1 day'
                FROM generate_series(1, 100);
         UPDATE tasks SET state = 'running'
          WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' LIMIT 100);",
    )
    .await
    .unwrap();
    let never_analyzed = off_the_primary_key(&db).await;
    assert!(
        never_analyzed.is_empty(),
        "never analyzed, these leave the primary key:\n{}",
        never_analyzed.join("\n")
    );

    db.batch_execute(
        "UPDATE tasks SET state = 'succeeded', finished_at = now() WHERE state = 'queued';
         ANALYZE tasks;
         UPDATE tasks SET state = 'queued', finished_at = NULL WHERE state = 'succeeded';",
    )
    .await
    .unwrap();
    let stale = off_the_primary_key(&db).await;
    assert!(
        stale.is_empty(),
        "with statistics that saw no backlog, these leave the primary key:\n{}",
        stale.join("\n")
    );
}

/// The plan PostgreSQL makes for `sql` with these parameters (a custom
/// plan, as for the API's unnamed statements).
async fn plan_of(db: &tokio_postgres::Client, sql: &str, params: &str) -> String {
    db.batch_execute(&format!("DEALLOCATE ALL; PREPARE listed AS {sql}"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    db.query(&format!("EXPLAIN EXECUTE listed({params})"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect()
}

/// Task lists and the reaper's look-up stay index reads in order with many
/// finished tasks (migration 0018): no filter reads `tasks_newest`; state
/// and action together, state alone and action alone read
/// `tasks_by_action_state` (one branch an action or a state, merged in
/// order), never a scan or a sort of the matching tasks; the reaper reads
/// the partial index of the tasks in flight. And the lists filtered one
/// way page through every action (or state) newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lists_and_the_reaper_read_indexes_in_order_behind_many_finished_tasks() {
    use bibliomq_core::tasks::store::{list_sql, stranded_sql};
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let db = app.env.db().await;
    db.batch_execute(
        "INSERT INTO tasks (id, action, payload, state, created_at, finished_at)
              SELECT gen_random_uuid(),
                     (ARRAY['echo', 'upper', 'sum', 'fib', 'primes'])[1 + i % 5], '1',
                     (ARRAY['succeeded', 'failed', 'succeeded', 'dead'])[1 + (i / 5) % 4],
                     now() - i * interval '1 second', now()
                FROM generate_series(1, 30000) AS i;
         INSERT INTO tasks (id, action, payload, state)
              SELECT gen_random_uuid(), 'sum', '1', 'queued' FROM generate_series(1, 10);
         ANALYZE tasks;",
    )
    .await
    .unwrap();
    let cases = [
        (false, false, "20, NULL", "tasks_newest"),
        (
            true,
            true,
            "'failed', 'sum', 20, NULL",
            "tasks_by_action_state",
        ),
        (true, false, "'failed', 20, NULL", "tasks_by_action_state"),
        (false, true, "'sum', 20, NULL", "tasks_by_action_state"),
    ];
    for (by_state, by_action, params, index) in cases {
        let plan = plan_of(&db, &list_sql(by_state, by_action), params).await;
        assert!(
            plan.contains(index)
                && !plan.contains("Seq Scan")
                && !plan.contains("Bitmap")
                && !plan.contains("->  Sort"),
            "state {by_state}, action {by_action}: not an index read in order:\n{plan}"
        );
    }
    let plan = plan_of(&db, &stranded_sql(), "30, 100").await;
    assert!(
        plan.contains("tasks_in_flight") && !plan.contains("Seq Scan"),
        "the reaper's look-up:\n{plan}"
    );

    // The newest `failed` tasks over every action, and the newest `sum`
    // tasks over every state, page by page, as the table orders them.
    for (query, filter) in [
        ("state=failed", "state = 'failed'"),
        ("action=sum", "action = 'sum'"),
    ] {
        let expected: Vec<String> = db
            .query(
                &format!(
                    "SELECT id::text FROM tasks WHERE {filter}
                      ORDER BY created_at DESC, id DESC LIMIT 30"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut listed = Vec::new();
        let mut path = format!("/v1/tasks?{query}&limit=10");
        while listed.len() < expected.len() {
            let (status, page) = app.get_json(&path).await;
            assert_eq!(status, 200, "{page}");
            listed.extend(
                page["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_owned()),
            );
            let next = page["next_before"].as_str().unwrap();
            path = format!("/v1/tasks?{query}&limit=10&before={next}");
        }
        assert_eq!(listed, expected, "{query}");
    }
}
