//! API keys and roles, end to end: every role against every operation on
//! every transport that has it (HTTP, ZeroMQ, the NDJSON and pipe
//! gateways); branch librarians; missing, wrong and revoked keys; the rate
//! limit; keys kept out of logs, metrics and error bodies.

use std::{
    io::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bibliomq_core::config::{AddressList, Settings};
use bibliomq_testkit::{
    LineClient, TestApp, TestEdge, TestEnv,
    app::{DEADLINE, wait_until},
};
use reqwest::Method;
use serde_json::{Value, json};

/// The API (keys required), one worker and the edge; patrons `auth1` ..
/// `auth5`; an admin key.
struct Secured {
    app: TestApp,
    edge: TestEdge,
    admin: String,
}

async fn secured(tweak: impl Fn(&mut Settings)) -> Secured {
    let tweak = |s: &mut Settings| {
        s.auth.enabled = true;
        // The matrix makes many requests with each key; the limit has a test of its own.
        s.auth.rate_per_sec = 0.0;
        s.library.max_loans = 1_000;
        tweak(s);
    };
    let app = TestApp::spawn(TestEnv::new().await, &tweak, 1).await;
    let mut settings = app.env.settings();
    tweak(&mut settings);
    let edge = TestEdge::start(settings).await;
    app.add_patrons("auth", 5).await;
    let admin = app.key("admin", None, None).await;
    Secured { app, edge, admin }
}

/// A valid ISBN-13 no other call of this test process made.
fn fresh_isbn() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    let body = format!("979{:09}", (nanos * 7 + n * 1_000_003) % 1_000_000_000);
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

impl Secured {
    async fn http(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, body) = self
            .app
            .call_as(Some(key), method, path, body.as_ref())
            .await;
        (status, body)
    }

    /// A title with two copies at each branch; its ISBN.
    async fn title(&self) -> String {
        let isbn = fresh_isbn();
        self.app
            .add_title(&isbn, &format!("Auth {isbn}"), &[2, 2])
            .await;
        isbn
    }

    /// A loan made by the admin: its id.
    async fn loan(&self, patron: &str, branch: &str) -> String {
        let isbn = self.title().await;
        let (status, body) = self
            .http(
                &self.admin,
                Method::POST,
                "/v1/loans",
                Some(json!({"isbn": isbn, "patron": patron, "branch": branch})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["loan"]["id"].as_str().unwrap().to_owned()
    }

    /// A copy added by the admin: its barcode.
    async fn copy(&self, branch: &str) -> String {
        let isbn = self.title().await;
        let (status, body) = self
            .http(
                &self.admin,
                Method::POST,
                &format!("/v1/titles/{isbn}/copies"),
                Some(json!({"branch": branch})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["barcode"].as_str().unwrap().to_owned()
    }

    /// A title whose one copy (at `central`) is lent to `auth4`, so holds
    /// may be placed on it there: its ISBN.
    async fn held_title(&self) -> String {
        let isbn = fresh_isbn();
        self.app
            .add_title(&isbn, &format!("Auth held {isbn}"), &[1])
            .await;
        let (status, body) = self
            .http(
                &self.admin,
                Method::POST,
                "/v1/loans",
                Some(json!({"isbn": isbn, "patron": "auth4", "branch": "central"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        isbn
    }

    /// A hold placed by the admin for `patron` at `central`: its id.
    async fn hold(&self, patron: &str) -> String {
        let isbn = self.held_title().await;
        let (status, body) = self
            .http(
                &self.admin,
                Method::POST,
                "/v1/holds",
                Some(json!({"isbn": isbn, "patron": patron, "pickup_branch": "central"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// A task submitted by the admin: its id.
    async fn task(&self) -> String {
        let (status, body) = self
            .http(
                &self.admin,
                Method::POST,
                "/v1/tasks",
                Some(json!({"action": "echo", "payload": "x"})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

/// What a transport answered, as far as keys go.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    /// `forbidden`, with the roles the error names.
    Forbidden(Vec<String>),
    Other(String),
}

fn http_outcome(status: u16, body: &Value) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        403 => {
            assert_eq!(body["error"]["code"], "forbidden", "{body}");
            Outcome::Forbidden(roles_of(&body["error"]))
        }
        _ => Outcome::Other(format!("{status} {body}")),
    }
}

fn zmq_outcome(reply: &Value) -> Outcome {
    if reply["ok"] == true {
        Outcome::Done
    } else if reply["error"]["code"] == "forbidden" {
        Outcome::Forbidden(roles_of(&reply["error"]))
    } else {
        Outcome::Other(reply.to_string())
    }
}

fn roles_of(error: &Value) -> Vec<String> {
    let roles: Vec<String> = error["required_roles"]
        .as_array()
        .unwrap_or_else(|| panic!("no required_roles: {error}"))
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(" role"),
        "the message names the roles: {message}"
    );
    roles
}

/// One request from a fresh libzmq REQ socket.
async fn zmq(endpoint: &str, request: Value) -> Value {
    let endpoint = endpoint.to_owned();
    tokio::task::spawn_blocking(move || {
        let ctx = zmq_context();
        let socket = ctx.socket(zmq::REQ).unwrap();
        let millis = i32::try_from(DEADLINE.as_millis()).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_rcvtimeo(millis).unwrap();
        socket.connect(&endpoint).unwrap();
        socket.send(request.to_string().as_bytes(), 0).unwrap();
        let reply = socket.recv_bytes(0).expect("a ZeroMQ reply");
        serde_json::from_slice(&reply).unwrap()
    })
    .await
    .unwrap()
}

fn zmq_context() -> &'static zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

/// The operations of the table; each runs with fixtures of its own, so an
/// allowed attempt succeeds whatever ran before it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    SubmitTask,
    ReadTask,
    Loan,
    RenewOwn,
    Return,
    Search,
    AddTitle,
    AddCopy,
    WithdrawCopy,
    AddPatron,
    BlockPatron,
    ReadOwnLoans,
    ReadOtherLoans,
    DeadLetters,
    Keys,
    PlaceOwnHold,
    CancelOwnHold,
    ReadOwnHolds,
    ReadOtherHolds,
    TitleHolds,
}

const ALL_OPS: [Op; 20] = [
    Op::SubmitTask,
    Op::ReadTask,
    Op::Loan,
    Op::RenewOwn,
    Op::Return,
    Op::Search,
    Op::AddTitle,
    Op::AddCopy,
    Op::WithdrawCopy,
    Op::AddPatron,
    Op::BlockPatron,
    Op::ReadOwnLoans,
    Op::ReadOtherLoans,
    Op::DeadLetters,
    Op::Keys,
    Op::PlaceOwnHold,
    Op::CancelOwnHold,
    Op::ReadOwnHolds,
    Op::ReadOtherHolds,
    Op::TitleHolds,
];

/// Who may: the roles table of the README.
fn allowed(op: Op) -> &'static [&'static str] {
    match op {
        Op::SubmitTask | Op::ReadTask => &["admin", "service"],
        Op::RenewOwn
        | Op::Search
        | Op::ReadOwnLoans
        | Op::PlaceOwnHold
        | Op::CancelOwnHold
        | Op::ReadOwnHolds => &["admin", "librarian", "patron"],
        Op::Loan
        | Op::Return
        | Op::AddTitle
        | Op::AddCopy
        | Op::WithdrawCopy
        | Op::AddPatron
        | Op::BlockPatron
        | Op::ReadOtherLoans
        | Op::ReadOtherHolds
        | Op::TitleHolds => &["admin", "librarian"],
        Op::DeadLetters | Op::Keys => &["admin"],
    }
}

static PATRON_SEQ: AtomicU64 = AtomicU64::new(0);

/// `op` over HTTP with `key` (the patron key is `auth1`'s).
async fn over_http(s: &Secured, key: &str, op: Op) -> Outcome {
    let (method, path, body) = match op {
        Op::SubmitTask => (
            Method::POST,
            "/v1/tasks".to_owned(),
            Some(json!({"action": "echo", "payload": "hola"})),
        ),
        Op::ReadTask => (Method::GET, format!("/v1/tasks/{}", s.task().await), None),
        Op::Loan => (
            Method::POST,
            "/v1/loans".to_owned(),
            Some(json!({"isbn": s.title().await, "patron": "auth2", "branch": "central"})),
        ),
        Op::RenewOwn => (
            Method::POST,
            "/v1/renewals".to_owned(),
            Some(json!({"loan_id": s.loan("auth1", "central").await, "branch": "central"})),
        ),
        Op::Return => (
            Method::POST,
            "/v1/returns".to_owned(),
            Some(json!({"loan_id": s.loan("auth3", "central").await, "branch": "central"})),
        ),
        Op::Search => (Method::GET, "/v1/books?title=auth".to_owned(), None),
        Op::AddTitle => (
            Method::POST,
            "/v1/titles".to_owned(),
            Some(json!({"isbn": fresh_isbn(), "title": "Nuevo", "authors": ["A"]})),
        ),
        Op::AddCopy => (
            Method::POST,
            format!("/v1/titles/{}/copies", s.title().await),
            Some(json!({"branch": "central"})),
        ),
        Op::WithdrawCopy => (
            Method::DELETE,
            format!("/v1/copies/{}", s.copy("central").await),
            None,
        ),
        Op::AddPatron => (
            Method::POST,
            "/v1/patrons".to_owned(),
            Some(json!({
                "id": format!("new{}", PATRON_SEQ.fetch_add(1, Ordering::Relaxed)),
                "name": "Nueva"
            })),
        ),
        Op::BlockPatron => (
            Method::PATCH,
            "/v1/patrons/auth5".to_owned(),
            Some(json!({"blocked": {"reason": "test"}})),
        ),
        Op::ReadOwnLoans => (Method::GET, "/v1/patrons/auth1/loans".to_owned(), None),
        Op::ReadOtherLoans => (Method::GET, "/v1/patrons/auth2/loans".to_owned(), None),
        Op::DeadLetters => (Method::GET, "/v1/dead-letters".to_owned(), None),
        Op::Keys => (Method::GET, "/v1/keys".to_owned(), None),
        Op::PlaceOwnHold => (
            Method::POST,
            "/v1/holds".to_owned(),
            Some(json!({
                "isbn": s.held_title().await, "patron": "auth1", "pickup_branch": "central"
            })),
        ),
        Op::CancelOwnHold => (
            Method::DELETE,
            format!("/v1/holds/{}", s.hold("auth1").await),
            None,
        ),
        Op::ReadOwnHolds => (Method::GET, "/v1/patrons/auth1/holds".to_owned(), None),
        Op::ReadOtherHolds => (Method::GET, "/v1/patrons/auth2/holds".to_owned(), None),
        Op::TitleHolds => (
            Method::GET,
            format!("/v1/titles/{}/holds", s.held_title().await),
            None,
        ),
    };
    let (status, body) = s.http(key, method, &path, body).await;
    http_outcome(status, &body)
}

/// `op` over ZeroMQ with `key` in the request (`None`: the operation has
/// no ZeroMQ action). Spanish action names and `clave` half the time.
async fn over_zmq(s: &Secured, key: &str, op: Op, spanish: bool) -> Option<Outcome> {
    let mut request = match op {
        Op::SubmitTask => json!({"action": "task", "task": "echo", "payload": "hola"}),
        Op::ReadTask => json!({"action": "task_status", "id": s.task().await}),
        Op::Loan if spanish => json!({
            "action": "prestamo", "isbn": s.title().await, "usuario": "auth2", "sede": "central"
        }),
        Op::Loan => json!({
            "action": "loan", "isbn": s.title().await, "patron": "auth2", "branch": "central"
        }),
        Op::RenewOwn => json!({
            "action": if spanish { "renovacion" } else { "renew" },
            "loan_id": s.loan("auth1", "central").await, "branch": "central"
        }),
        Op::Return => json!({
            "action": if spanish { "devolucion" } else { "return" },
            "loan_id": s.loan("auth3", "central").await, "branch": "central"
        }),
        Op::Search if spanish => json!({"action": "consulta", "titulo": "auth"}),
        Op::Search => json!({"action": "query_title", "title": "auth"}),
        Op::AddTitle => json!({"action": "title_add", "isbn": fresh_isbn(), "title": "Nuevo"}),
        Op::AddCopy => json!({"action": "copy_add", "isbn": s.title().await, "branch": "central"}),
        Op::WithdrawCopy => json!({"action": "copy_withdraw", "barcode": s.copy("central").await}),
        Op::AddPatron => json!({
            "action": "patron_add",
            "id": format!("new{}", PATRON_SEQ.fetch_add(1, Ordering::Relaxed)),
            "name": "Nueva"
        }),
        Op::BlockPatron => json!({"action": "patron_block", "id": "auth5", "reason": "test"}),
        // A patron's record stands for their loans here: ZeroMQ has no loan list.
        Op::ReadOwnLoans => json!({"action": "patron_show", "id": "auth1"}),
        Op::ReadOtherLoans => json!({"action": "patron_show", "id": "auth2"}),
        Op::PlaceOwnHold => json!({
            "action": "hold_place", "isbn": s.held_title().await,
            "patron": "auth1", "pickup_branch": "central"
        }),
        Op::CancelOwnHold => json!({"action": "hold_cancel", "id": s.hold("auth1").await}),
        Op::ReadOwnHolds => json!({"action": "holds", "patron": "auth1"}),
        Op::ReadOtherHolds => json!({"action": "holds", "patron": "auth2"}),
        Op::TitleHolds => json!({"action": "holds", "isbn": s.held_title().await}),
        Op::DeadLetters | Op::Keys => return None,
    };
    request[if spanish { "clave" } else { "key" }] = json!(key);
    Some(zmq_outcome(&zmq(&s.edge.request_endpoint(), request).await))
}

/// A submitted task over the NDJSON gateway, after `AUTH <key>`.
async fn over_ndjson(s: &Secured, key: &str) -> Outcome {
    let mut client = LineClient::connect(s.edge.ndjson_addr()).await;
    let auth: Value = serde_json::from_str(&client.ask(&format!("AUTH {key}")).await).unwrap();
    assert_eq!(auth["status"], "done", "{auth}");
    let answer: Value = serde_json::from_str(
        &client
            .ask(r#"{"id": 7, "action": "upper", "payload": "hola"}"#)
            .await,
    )
    .unwrap();
    assert_eq!(answer["id"], 7, "{answer}");
    match (&answer["status"], &answer["result"]["code"]) {
        (s, _) if s == "done" => Outcome::Done,
        (_, c) if c == "forbidden" => Outcome::Forbidden(Vec::new()),
        _ => Outcome::Other(answer.to_string()),
    }
}

/// A sum over the pipe gateway, after `AUTH <key>`.
async fn over_pipe(s: &Secured, key: &str) -> Outcome {
    let mut client = LineClient::connect(s.edge.pipe_addr()).await;
    let auth = client.ask(&format!("AUTH {key}")).await;
    assert!(auth.starts_with("RESULT|AUTH|"), "{auth}");
    let answer = client.ask("TASK|9|1,2,3").await;
    if answer == "RESULT|9|6" {
        Outcome::Done
    } else if answer.starts_with("ERROR|9|") && answer.contains("needs the") {
        Outcome::Forbidden(Vec::new())
    } else {
        Outcome::Other(answer)
    }
}

fn check(transport: &str, role: &str, op: Op, outcome: Outcome) {
    let may = allowed(op).contains(&role);
    match outcome {
        Outcome::Done => assert!(may, "{transport}: {role} did {op:?}, which it may not"),
        Outcome::Forbidden(roles) => {
            assert!(
                !may,
                "{transport}: {role} was refused {op:?}, which it may do"
            );
            if !roles.is_empty() {
                // The roles that may, each within its scope: another
                // patron's loans are that patron's own.
                let mut expected: Vec<&str> = allowed(op).to_vec();
                if op == Op::ReadOtherLoans || op == Op::ReadOtherHolds {
                    expected.push("patron");
                }
                expected.sort_unstable();
                let mut roles = roles;
                roles.sort();
                assert_eq!(roles, expected, "{transport}: the roles named for {op:?}");
            }
        }
        Outcome::Other(answer) => {
            panic!("{transport}: {role} doing {op:?} got neither success nor forbidden: {answer}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_may_do_exactly_what_its_table_says_on_every_transport() {
    let s = secured(|_| {}).await;
    let keys = [
        ("admin", s.admin.clone()),
        (
            "librarian",
            s.app.key("librarian", Some("central"), None).await,
        ),
        ("patron", s.app.key("patron", None, Some("auth1")).await),
        ("service", s.app.key("service", None, None).await),
    ];
    for (role, key) in &keys {
        for op in ALL_OPS {
            check("HTTP", role, op, over_http(&s, key, op).await);
            for spanish in [false, true] {
                if let Some(outcome) = over_zmq(&s, key, op, spanish).await {
                    check("ZeroMQ", role, op, outcome);
                }
            }
        }
        check("NDJSON", role, Op::SubmitTask, over_ndjson(&s, key).await);
        check("pipe", role, Op::SubmitTask, over_pipe(&s, key).await);
        let (status, me) = s.http(key, Method::GET, "/v1/me", None).await;
        assert_eq!((status, me["role"].as_str()), (200, Some(*role)), "{me}");
        let me = zmq(
            &s.edge.request_endpoint(),
            json!({"action": "me", "key": key}),
        )
        .await;
        assert_eq!(me["caller"]["role"], *role, "{me}");
    }
    // Refusals are counted, under their reason only.
    assert!(s.app.api_metrics.auth_refused_count("forbidden") > 0);
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("bibliomq_auth_refused_total{reason=\"forbidden\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_librarian_is_refused_at_another_branch_and_served_at_their_own() {
    let s = secured(|_| {}).await;
    let norte = s.app.key("librarian", Some("norte"), None).await;
    let isbn = s.title().await;
    let lend = |branch: &str| json!({"isbn": isbn, "patron": "auth2", "branch": branch});

    let (status, body) = s
        .http(&norte, Method::POST, "/v1/loans", Some(lend("central")))
        .await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("norte") && message.contains("central"),
        "{message}"
    );
    assert_eq!(
        s.app
            .count("SELECT count(*) FROM loans WHERE patron_id = 'auth2'")
            .await,
        0
    );
    let (status, body) = s
        .http(&norte, Method::POST, "/v1/loans", Some(lend("norte")))
        .await;
    assert_eq!(status, 201, "{body}");

    let reply = zmq(
        &s.edge.request_endpoint(),
        json!({"action": "prestamo", "isbn": isbn, "usuario": "auth3", "sede": "central", "clave": norte}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");

    // Returns and copies follow the same rule.
    let central_loan = s.loan("auth4", "central").await;
    let (status, _) = s
        .http(
            &norte,
            Method::POST,
            "/v1/returns",
            Some(json!({"loan_id": central_loan, "branch": "central"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .http(
            &norte,
            Method::POST,
            &format!("/v1/titles/{isbn}/copies"),
            Some(json!({"branch": "central"})),
        )
        .await;
    assert_eq!(status, 403);
    let central_copy = s.copy("central").await;
    let (status, _) = s
        .http(
            &norte,
            Method::DELETE,
            &format!("/v1/copies/{central_copy}"),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let norte_copy = s.copy("norte").await;
    let (status, body) = s
        .http(
            &norte,
            Method::DELETE,
            &format!("/v1/copies/{norte_copy}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, me) = s.http(&norte, Method::GET, "/v1/me", None).await;
    assert_eq!(me["branch"], "norte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patron_key_reads_and_renews_its_own_loans_only() {
    let s = secured(|_| {}).await;
    let ana = s.app.key("patron", None, Some("auth1")).await;
    let own = s.loan("auth1", "central").await;
    let other = s.loan("auth2", "central").await;
    let (status, _) = s
        .http(&ana, Method::GET, &format!("/v1/loans/{own}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .http(&ana, Method::GET, &format!("/v1/loans/{other}"), None)
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = s
        .http(
            &ana,
            Method::POST,
            "/v1/renewals",
            Some(json!({"loan_id": other, "branch": "central"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = s
        .http(
            &ana,
            Method::POST,
            "/v1/renewals",
            Some(json!({"isbn": "9788437604947", "patron": "auth2", "branch": "central"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        s.app
            .count("SELECT count(*) FROM operations WHERE patron_id = 'auth2' AND kind = 'renewal'")
            .await,
        0,
        "a refused renewal leaves nothing behind"
    );
    let (status, body) = s
        .http(
            &ana,
            Method::POST,
            "/v1/renewals",
            Some(json!({"loan_id": own, "branch": "central"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = s
        .http(
            &ana,
            Method::GET,
            &format!("/v1/operations/{}", body["operation_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_a_wrong_key_and_a_revoked_key_are_refused_and_change_nothing() {
    let s = secured(|s| {
        s.auth.cache_ttl = Duration::from_millis(300);
        s.auth.gateway_allow = AddressList {
            loopback: false,
            addresses: Vec::new(),
        };
    })
    .await;
    let isbn = s.title().await;
    let loan = json!({"isbn": isbn, "patron": "auth2", "branch": "central"});
    let wellformed_unknown = format!("bmq_{}_{}", "0123456789ab", "f".repeat(64));
    let (mut admin_id_forged, _) = s.admin.split_at(16);
    admin_id_forged = admin_id_forged.trim_end_matches('_');
    let forged = format!("{admin_id_forged}_{}", "0".repeat(64));
    for key in [
        None,
        Some("nonsense"),
        Some(wellformed_unknown.as_str()),
        Some(forged.as_str()),
    ] {
        let (status, headers, body) = s
            .app
            .call_as(key, Method::POST, "/v1/loans", Some(&loan))
            .await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(headers["www-authenticate"], "Bearer");
        if let Some(key) = key {
            assert!(!body.to_string().contains(key), "the key is echoed: {body}");
        }
        let reply = zmq(
            &s.edge.request_endpoint(),
            json!({"action": "loan", "isbn": isbn, "patron": "auth2", "branch": "central", "key": key}),
        )
        .await;
        assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    }
    assert_eq!(
        s.app.count("SELECT count(*) FROM loans").await,
        0,
        "nothing was lent"
    );
    assert!(s.app.api_metrics.auth_refused_count("no_key") >= 1);
    assert!(s.app.api_metrics.auth_refused_count("invalid_key") >= 3);

    // The gateways: without AUTH (and loopback not allowed here) every line
    // is refused; a wrong AUTH is answered and refused too.
    let mut pipe = LineClient::connect(s.edge.pipe_addr()).await;
    let answer = pipe.ask("TASK|1|1,2").await;
    assert!(answer.starts_with("ERROR|1|a key is needed"), "{answer}");
    let answer = pipe.ask("AUTH nonsense").await;
    assert!(
        answer.starts_with("ERROR|AUTH|the key is not valid"),
        "{answer}"
    );
    let answer = pipe.ask("TASK|2|1,2").await;
    assert!(answer.starts_with("ERROR|2|"), "{answer}");
    let mut ndjson = LineClient::connect(s.edge.ndjson_addr()).await;
    let answer: Value = serde_json::from_str(
        &ndjson
            .ask(r#"{"id": 1, "action": "upper", "payload": "x"}"#)
            .await,
    )
    .unwrap();
    assert_eq!(answer["result"]["code"], "unauthorized", "{answer}");
    assert_eq!(
        s.app.count("SELECT count(*) FROM tasks").await,
        0,
        "nothing was queued"
    );

    // Revoked: refused at once by the API that revoked it, and by the edge
    // (another process's cache) once it hears of it.
    let (status, made) = s
        .http(
            &s.admin,
            Method::POST,
            "/v1/keys",
            Some(json!({"role": "librarian", "name": "temp"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let temp = made["key"].as_str().unwrap().to_owned();
    let ask_edge = || async {
        zmq(
            &s.edge.request_endpoint(),
            json!({"action": "query_title", "title": "auth", "key": temp}),
        )
        .await
    };
    assert_eq!(ask_edge().await["ok"], true);
    let (status, revoked) = s
        .http(
            &s.admin,
            Method::DELETE,
            &format!("/v1/keys/{}", made["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = s
        .http(&temp, Method::GET, "/v1/books?title=auth", None)
        .await;
    assert_eq!(
        status, 401,
        "revocation is at once in the process that revoked"
    );
    wait_until(DEADLINE, || async {
        (ask_edge().await["error"]["code"] == "unauthorized").then_some(())
    })
    .await
    .expect("the edge went on taking a revoked key");
    let (_, listed) = s
        .http(&s.admin, Method::GET, "/v1/keys?revoked=true", None)
        .await;
    let listed = listed.to_string();
    assert!(listed.contains(made["id"].as_str().unwrap()));
    assert!(!listed.contains(&temp), "lists never show a secret");
}

/// A key changed by another process (here by hand in SQL, as an operator
/// would) is forgotten by every process as soon as the change commits: the
/// API and the edge, each of which has the key cached for an hour, refuse
/// it well within the test's deadline. Without the announcement (migration
/// 0022) and the processes' listeners, both would take it for the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_elsewhere_is_refused_at_once_by_every_process_whatever_the_cache_time() {
    let s = secured(|s| s.auth.cache_ttl = Duration::from_secs(3600)).await;
    let temp = s.app.key("librarian", None, None).await;
    let ask_http = |key: String| {
        let s = &s;
        async move {
            s.http(&key, Method::GET, "/v1/books?title=auth", None)
                .await
                .0
        }
    };
    let ask_edge = |key: String| {
        let endpoint = s.edge.request_endpoint();
        async move {
            zmq(
                &endpoint,
                json!({"action": "query_title", "title": "auth", "key": key}),
            )
            .await
        }
    };
    // A process starts listening at its first key check, and forgets what
    // it cached before its listener was up: wait for both listeners, so
    // that what is cached next would stay for the hour.
    assert_eq!(ask_http(s.admin.clone()).await, 200);
    assert_eq!(ask_edge(s.admin.clone()).await["ok"], true);
    wait_until(DEADLINE, || async {
        let listening = s
            .app
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'bibliomq-keys'
                   AND state = 'idle' AND query LIKE 'LISTEN%'",
            )
            .await;
        (listening == 2).then_some(())
    })
    .await
    .expect("the API and the edge listen for key changes");
    // Both processes look the key up and keep it.
    assert_eq!(ask_http(temp.clone()).await, 200);
    assert_eq!(
        ask_edge(temp.clone()).await["ok"],
        true,
        "the edge took the key"
    );

    s.app.revoke_in_sql(&temp).await;
    wait_until(DEADLINE, || async {
        (ask_http(temp.clone()).await == 401).then_some(())
    })
    .await
    .expect("the API went on taking a key revoked in the database");
    wait_until(DEADLINE, || async {
        (ask_edge(temp.clone()).await["error"]["code"] == "unauthorized").then_some(())
    })
    .await
    .expect("the edge went on taking a key revoked in the database");
    assert!(s.app.api_metrics.auth_refused_count("invalid_key") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_gets_429_with_retry_after_on_every_transport() {
    let s = secured(|s| {
        s.auth.rate_per_sec = 0.2;
        s.auth.rate_burst = 3.0;
    })
    .await;
    let key = s.app.key("service", None, None).await;
    for _ in 0..3 {
        let (status, _) = s.http(&key, Method::GET, "/v1/me", None).await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) = s.app.call_as(Some(&key), Method::GET, "/v1/me", None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(body["error"]["retry_after"], retry);
    assert!(s.app.api_metrics.auth_refused_count("rate_limited") >= 1);
    // Another key has its own budget.
    let (status, _) = s.http(&s.admin, Method::GET, "/v1/me", None).await;
    assert_eq!(status, 200);

    // The edge keeps its own budget per key: ZeroMQ, then a gateway line.
    let mut last = Value::Null;
    for _ in 0..4 {
        last = zmq(
            &s.edge.request_endpoint(),
            json!({"action": "me", "key": key}),
        )
        .await;
    }
    assert_eq!(last["error"]["code"], "rate_limited", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again in")
    );
    let mut pipe = LineClient::connect(s.edge.pipe_addr()).await;
    let answer = pipe.ask(&format!("AUTH {key}")).await;
    assert!(
        answer.starts_with("ERROR|AUTH|this key has made too many requests"),
        "{answer}"
    );
}

/// Everything logged in this test process, from the moment it is first asked for.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let writer = move || Sink(sink.clone());
        tracing_subscriber::registry()
            .with(EnvFilter::new(
                "info,bibliomq_api=debug,bibliomq_core=debug,bibliomq_edge=debug",
            ))
            .with(fmt::layer().with_writer(writer).with_ansi(false))
            .try_init()
            .expect("another log subscriber is installed: run this test without RUST_LOG");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_logs_metrics_or_error_bodies() {
    let logs = captured_logs();
    let s = secured(|_| {}).await;
    let (status, made) = s
        .http(
            &s.admin,
            Method::POST,
            "/v1/keys",
            Some(json!({"role": "patron", "patron": "auth1", "name": "ana's phone"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = key.rsplit('_').next().unwrap().to_owned();
    // Used, refused for its role, mistyped, on each transport.
    let (status, refused) = s
        .http(&key, Method::GET, "/v1/patrons/auth2/loans", None)
        .await;
    assert_eq!(status, 403);
    let mistyped = format!("{key}x");
    let (_, wrong) = s.http(&mistyped, Method::GET, "/v1/me", None).await;
    let zmq_refused = zmq(
        &s.edge.request_endpoint(),
        json!({"action": "patron_show", "id": "auth2", "key": key}),
    )
    .await;
    let mut pipe = LineClient::connect(s.edge.pipe_addr()).await;
    let pipe_auth = pipe.ask(&format!("AUTH {key}")).await;
    let pipe_refused = pipe.ask("TASK|1|1,2").await;
    let (status, _) = s
        .http(&key, Method::GET, "/v1/books?title=auth", None)
        .await;
    assert_eq!(status, 200);
    for answer in [
        refused.to_string(),
        wrong.to_string(),
        zmq_refused.to_string(),
        pipe_auth,
        pipe_refused,
    ] {
        assert!(
            !answer.contains(&secret),
            "an answer holds the secret: {answer}"
        );
    }
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains(&secret) && !metrics.contains(&id));
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains(&id),
        "the logs name the key by its id (so this capture works)"
    );
    assert!(!logs.contains(&secret), "the logs hold a key's secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_the_api_and_the_edge_refuse_to_listen_beyond_loopback() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.api.host = "0.0.0.0".to_owned();
    settings.api.port = 0;
    let err = bibliomq_api::Application::build(settings.clone())
        .await
        .err()
        .expect("the API started without keys on 0.0.0.0");
    assert!(format!("{err:#}").contains("BIBLIOMQ_AUTH=on"), "{err:#}");
    settings.edge.host = "0.0.0.0".to_owned();
    let err = bibliomq_edge::EdgeApp::build(settings)
        .await
        .err()
        .expect("the edge started without keys on 0.0.0.0");
    assert!(format!("{err:#}").contains("BIBLIOMQ_AUTH=off"), "{err:#}");
}

/// Whether `css` is shown (present, and neither it nor a parent hidden).
async fn shown(browser: &bibliomq_testkit::browser::Browser, css: &str) -> bool {
    browser
        .eval(
            "const el = document.querySelector(arguments[0]); \
             return !!el && el.getClientRects().length > 0;",
            json!([css]),
        )
        .await
        == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_asks_for_a_key_and_offers_each_role_only_what_it_may_do() {
    let app =
        TestApp::spawn_with_auth(TestEnv::new().await, |s| s.auth.rate_per_sec = 0.0, 1).await;
    app.seed(0, 20).await;
    let admin = app.key("admin", None, None).await;
    let librarian = app.key("librarian", Some("central"), None).await;
    let patron = app.key("patron", None, Some("ana")).await;
    let (status, _, lent) = app
        .call_as(
            Some(&admin),
            Method::POST,
            "/v1/loans",
            Some(&json!({"isbn": "9788437604947", "patron": "ana", "branch": "central"})),
        )
        .await;
    assert_eq!(status, 201, "{lent}");

    let browser = bibliomq_testkit::browser::Browser::start("keys").await;
    browser.goto(&app.url("/ui/desk")).await;
    browser
        .wait_text("#api-token-form", "This desk needs an API key")
        .await;
    browser.fill("#api-token", &librarian).await;
    browser.click("#api-token-form button[type=submit]").await;
    browser.wait_text("#who", "librarian at central").await;
    assert!(shown(&browser, "#loan-form").await, "a librarian lends");
    assert!(
        shown(&browser, "#return-form").await,
        "a librarian takes returns"
    );
    for admin_only in [
        "a[href='/ui/tasks']",
        "a[href='/ui/dashboard']",
        "a[href='/ui/objects']",
    ] {
        assert!(
            !shown(&browser, admin_only).await,
            "{admin_only} shown to a librarian"
        );
    }
    browser.fill("#search-q", "quijote").await;
    browser.click("#search-form button").await;
    browser
        .wait_text("#search-results tbody", "Don Quijote de la Mancha")
        .await;
    browser.screenshot("keys-librarian").await;

    // Another key in this browser: a patron's.
    browser.click("#who button").await;
    browser
        .wait_text("#api-token-form", "This desk needs an API key")
        .await;
    browser.fill("#api-token", &patron).await;
    browser.click("#api-token-form button[type=submit]").await;
    browser.wait_text("#who", "patron ana").await;
    assert!(
        !shown(&browser, "#loan-form").await,
        "a patron does not lend"
    );
    assert!(!shown(&browser, "#return-form").await);
    assert!(
        shown(&browser, "#renew-form").await,
        "a patron renews their own"
    );
    let own = browser
        .eval(
            "const i = document.querySelector('#patron-id'); return [i.value, i.readOnly];",
            json!([]),
        )
        .await;
    assert_eq!(own, json!(["ana", true]));
    browser.click("#patron-form button").await;
    browser.wait_text("#who", "patron ana").await;
    browser
        .wait_text("#patron-loans tbody", "Don Quijote")
        .await;
    assert!(shown(&browser, "#patron-loans button[aria-label^='Renew']").await);
    assert!(
        !shown(&browser, "#patron-loans button[aria-label^='Return']").await,
        "a patron is not offered returns"
    );
    browser.screenshot("keys-patron").await;
    browser.goto(&app.url("/ui/patrons/luis")).await;
    browser.wait_text("#patron-out", "forbidden").await;
    browser.close().await;
}
