//! Contract fuzzing: schemathesis reads `/openapi.json` from a running app
//! (API and a worker, on this test's own vhost, database and bucket prefix),
//! generates requests for every operation from the document, sends them,
//! and fails on any 5xx, any request the document allows that the server
//! refuses, and any answer whose status, content type or body the document
//! does not describe. A bounded number of examples keeps it to minutes.
//!
//! Schemathesis lives in a virtual environment that `scripts/test` makes
//! (under `~/.cache/bibliomq`); `BIBLIOMQ_SCHEMATHESIS` may name another.

use std::path::PathBuf;

use bibliomq_testkit::{TestApp, TestEnv};

/// The schemathesis command: `BIBLIOMQ_SCHEMATHESIS`, or the one in the
/// virtual environment `scripts/test` makes.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("BIBLIOMQ_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/bibliomq/schemathesis-venv/bin/schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_holds_its_contract_under_generated_requests() {
    let command = schemathesis();
    assert!(
        command.exists(),
        "{} is missing: scripts/test makes its virtual environment (or set BIBLIOMQ_SCHEMATHESIS)",
        command.display()
    );
    // Schemathesis gives up on an answer after 10 s (`request-timeout` in
    // schemathesis.toml). `GET /v1/tasks/{id}?wait_ms=` may rightly take up
    // to 30 s on a task that does not finish (the fuzzer finds the ids of
    // the tasks it submitted); with the API's request limit at 9 s its wait
    // ends at 8 s, as documented, and every answer comes within the 10 s.
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.request_timeout = std::time::Duration::from_secs(9),
        1,
    )
    .await;
    // A catalogue and patrons, so that generated ISBNs and patron ids meet
    // real rows now and then, not only 404s.
    app.seed(40, 20).await;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/schemathesis.toml");
    let output = tokio::process::Command::new(&command)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .env(
            "BIBLIOMQ_SCHEMATHESIS_HOOKS",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/e2e/schemathesis_hooks.py"
            ),
        )
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", command.display()));
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found requests the server and its document disagree on:\n{report}"
    );
}
