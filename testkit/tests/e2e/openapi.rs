//! The OpenAPI document stays true: every documented operation is called
//! against a running app and each answer's status and body are checked
//! against what the document says; every path the router serves is in it.

use std::collections::{BTreeMap, BTreeSet};

use bibliomq_testkit::{
    TcpProxy, TestApp, TestEnv, app::DEADLINE, app::wait_until, proxy::with_port,
};
use reqwest::{Method, header::CONTENT_TYPE};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::web::EventStream;

const QUIJOTE: &str = "9788437604947";
const CRIMEN: &str = "9780140449266";
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The document as the app serves it.
async fn document(app: &TestApp) -> Value {
    let resp = app.get("/openapi.json").await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// A path to call for a documented template.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", &Uuid::now_v7().to_string())
        .replace("{isbn}", QUIJOTE)
        .replace("{key}", "results%2Fnone.json")
}

/// The documented path template a concrete path falls under.
fn template_of<'d>(doc: &'d Value, path: &str) -> Option<&'d str> {
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
        })
}

/// Calls the API and checks the answer against the document; remembers
/// which operations were exercised.
struct Checker<'a> {
    app: &'a TestApp,
    doc: Value,
    token: Option<&'a str>,
    exercised: BTreeSet<(String, String)>,
    statuses: BTreeMap<(String, String), BTreeSet<u16>>,
}

struct Call {
    method: Method,
    path: String,
    body: Option<Body>,
    headers: Vec<(&'static str, String)>,
}

enum Body {
    Json(Value),
    Raw(&'static str, String),
}

fn call(method: Method, path: impl Into<String>) -> Call {
    Call {
        method,
        path: path.into(),
        body: None,
        headers: Vec::new(),
    }
}

impl Call {
    fn json(mut self, v: Value) -> Self {
        self.body = Some(Body::Json(v));
        self
    }

    fn raw(mut self, content_type: &'static str, text: impl Into<String>) -> Self {
        self.body = Some(Body::Raw(content_type, text.into()));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl<'a> Checker<'a> {
    async fn new(app: &'a TestApp, token: Option<&'a str>) -> Self {
        Self {
            doc: document(app).await,
            app,
            token,
            exercised: BTreeSet::new(),
            statuses: BTreeMap::new(),
        }
    }

    /// Sends `c`, asserts that `expect` came back, that the document lists
    /// that status for the operation, and that a JSON body matches the
    /// documented schema. Returns the body.
    async fn check(&mut self, c: Call, expect: u16) -> Value {
        let what = format!("{} {}", c.method, c.path);
        let (method, path) = (c.method.clone(), c.path.clone());
        let resp = self.send(c).await;
        let status = resp.status().as_u16();
        let content_type = content_type(&resp);
        let bytes = resp.bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, expect, "{what}: {body}");

        let documented = self.documented(&method, &path, status, &body);
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let content = &documented["content"];
        if !content.is_null() && status != 307 {
            assert!(
                media_range(content, media).is_some(),
                "{what}: answered {media}, documented {:?}",
                content.as_object().map(|c| c.keys().collect::<Vec<_>>())
            );
        }
        if media == "application/json"
            && let Some(schema) = content[media]["schema"].as_object()
        {
            self.assert_matches(
                &format!("{what} ({status})"),
                &Value::Object(schema.clone()),
                &body,
            );
        }
        body
    }

    /// Opens a server-sent event stream with `c` and checks its status and
    /// content type against the document, then reads its first event: it
    /// must be `ready`, with data as `EventStreamReady` describes. Returns
    /// the stream, to read on or drop.
    async fn check_event_stream(&mut self, c: Call) -> EventStream {
        let what = format!("{} {}", c.method, c.path);
        let (method, path) = (c.method.clone(), c.path.clone());
        let resp = self.send(c).await;
        let status = resp.status().as_u16();
        let content_type = content_type(&resp);
        assert_eq!(status, 200, "{what}: answered {content_type}");
        let documented = self.documented(&method, &path, status, &Value::Null);
        assert_eq!(content_type, "text/event-stream", "{what}");
        assert!(
            documented["content"]["text/event-stream"].is_object(),
            "{what}: text/event-stream is not documented"
        );
        let mut stream = EventStream::from_response(resp);
        let (name, data) = stream
            .next_event()
            .await
            .unwrap_or_else(|| panic!("{what}: the stream ended before its first event"));
        assert_eq!(name, "ready", "{what}: the first event");
        self.assert_matches(
            &format!("{what} (ready)"),
            &json!({"$ref": "#/components/schemas/EventStreamReady"}),
            &serde_json::from_str(&data).unwrap(),
        );
        stream
    }

    async fn send(&self, c: Call) -> reqwest::Response {
        let mut req = self
            .app
            .http
            .request(c.method.clone(), self.app.url(&c.path));
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        req = match c.body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Raw(ct, text)) => {
                let req = req.body(text);
                if ct.is_empty() {
                    req
                } else {
                    req.header(CONTENT_TYPE, ct)
                }
            }
            None => req,
        };
        req.send().await.unwrap()
    }

    /// The documented answer of `method path` with `status`, which must be
    /// there; notes the operation as exercised.
    fn documented(&mut self, method: &Method, path: &str, status: u16, body: &Value) -> Value {
        let what = format!("{method} {path}");
        let route = path.split('?').next().unwrap();
        let template = template_of(&self.doc, route)
            .unwrap_or_else(|| panic!("{what}: no documented path matches"))
            .to_owned();
        let method = method.as_str().to_lowercase();
        let op = &self.doc["paths"][&template][&method];
        assert!(
            op.is_object(),
            "{what}: {method} {template} is not documented"
        );
        let documented = op["responses"][status.to_string()].clone();
        assert!(
            documented.is_object(),
            "{what}: status {status} is not documented for {method} {template}: {body}"
        );
        self.exercised.insert((method.clone(), template.clone()));
        self.statuses
            .entry((method, template))
            .or_default()
            .insert(status);
        documented
    }

    /// Asserts that `value` matches `schema` (which may refer to the
    /// document's components).
    fn assert_matches(&self, what: &str, schema: &Value, value: &Value) {
        let mut schema = schema.clone();
        // Schemas refer to `#/components/...`: give them the document's.
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{what}: the documented schema is invalid: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not match the documented schema:\n  {}\nbody: {value}",
            errors.join("\n  ")
        );
    }

    fn documented_operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.clone(), path.clone()));
            }
        }
        ops
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The documented content a media type falls under, as OpenAPI reads it:
/// its own entry, else `type/*`, else `*/*`.
fn media_range<'d>(content: &'d Value, media: &str) -> Option<&'d Value> {
    let family = media.split('/').next().unwrap_or_default();
    [media.to_owned(), format!("{family}/*"), "*/*".to_owned()]
        .iter()
        .find_map(|m| content.get(m))
        .filter(|v| v.is_object())
}

async fn wait_task(app: &TestApp, id: &str) {
    let id: Uuid = id.parse().unwrap();
    app.wait_for_task(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.tasks.inline_result_limit = 64;
            s.api.body_limit = 4096;
        },
        1,
    )
    .await;
    app.seed(20, 20).await;
    let mut c = Checker::new(&app, None).await;
    let missing = Uuid::now_v7();

    // Operations.
    c.check(call(Method::GET, "/healthz"), 200).await;
    c.check(call(Method::GET, "/readyz"), 200).await;
    c.check(call(Method::GET, "/metrics"), 200).await;
    c.check(call(Method::GET, "/openapi.json"), 200).await;

    // Tasks: accepted, refused in each documented way, looked up, listed.
    let small = c
        .check(
            call(Method::POST, "/v1/tasks").json(json!({"action": "sum", "payload": "1,2,3"})),
            202,
        )
        .await;
    let large = c
        .check(
            call(Method::POST, "/v1/tasks")
                .json(json!({"action": "upper", "payload": "x".repeat(200)})),
            202,
        )
        .await;
    let slow = c
        .check(
            call(Method::POST, "/v1/tasks").json(json!({"action": "sleep", "payload": 60_000})),
            202,
        )
        .await;
    c.check(
        call(Method::POST, "/v1/tasks").raw("application/json", "{"),
        400,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/tasks").raw("", r#"{"action": "sum"}"#),
        415,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/tasks").json(json!({"action": "nope"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/tasks")
            .json(json!({"action": "upper", "payload": "x".repeat(10_000)})),
        413,
    )
    .await;
    // The batch route: accepted, and refused in each documented way.
    c.check(
        call(Method::POST, "/v1/tasks/batch").json(json!([
            {"action": "sum", "payload": "1,2"},
            {"action": "upper", "payload": "hola", "idempotency_key": "openapi-batch-1"},
        ])),
        202,
    )
    .await;
    c.check(call(Method::POST, "/v1/tasks/batch").json(json!([])), 400)
        .await;
    c.check(
        call(Method::POST, "/v1/tasks/batch").raw("application/json", "["),
        400,
    )
    .await;
    c.check(call(Method::POST, "/v1/tasks/batch").raw("", "[]"), 415)
        .await;
    c.check(
        call(Method::POST, "/v1/tasks/batch").json(json!([{"action": "nope"}])),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/tasks/batch")
            .json(json!([{"action": "upper", "payload": "x".repeat(10_000)}])),
        413,
    )
    .await;
    let (small, large, slow) = (
        small["id"].as_str().unwrap().to_owned(),
        large["id"].as_str().unwrap().to_owned(),
        slow["id"].as_str().unwrap().to_owned(),
    );
    wait_task(&app, &small).await;
    wait_task(&app, &large).await;
    c.check(call(Method::GET, format!("/v1/tasks/{small}")), 200)
        .await;
    let stored = c
        .check(call(Method::GET, format!("/v1/tasks/{large}")), 200)
        .await;
    c.check(call(Method::GET, "/v1/tasks/nope"), 400).await;
    c.check(call(Method::GET, format!("/v1/tasks/{missing}")), 404)
        .await;
    c.check(call(Method::GET, "/v1/tasks?limit=2"), 200).await;
    c.check(
        call(Method::GET, "/v1/tasks?state=succeeded&action=sum"),
        200,
    )
    .await;
    c.check(call(Method::GET, "/v1/tasks?state=bogus"), 422)
        .await;
    c.check(call(Method::GET, "/v1/tasks?before=xyz"), 400)
        .await;
    c.check(call(Method::GET, format!("/v1/tasks/{small}/result")), 200)
        .await;
    c.check(call(Method::GET, format!("/v1/tasks/{large}/result")), 200)
        .await;
    c.check(
        call(
            Method::GET,
            format!("/v1/tasks/{large}/result?redirect=true"),
        ),
        307,
    )
    .await;
    c.check(call(Method::GET, format!("/v1/tasks/{slow}/result")), 409)
        .await;

    // Cancel: running (202, stopping), then cancelled (200); a finished
    // task (409), an unknown one (404), an id that is none (400).
    let slow_id: Uuid = slow.parse().unwrap();
    app.wait_for_task_state(slow_id, &["running"]).await;
    c.check(call(Method::POST, format!("/v1/tasks/{slow}/cancel")), 202)
        .await;
    app.wait_for_task_state(slow_id, &["cancelled"]).await;
    c.check(call(Method::POST, format!("/v1/tasks/{slow}/cancel")), 200)
        .await;
    c.check(call(Method::POST, format!("/v1/tasks/{small}/cancel")), 409)
        .await;
    c.check(
        call(Method::POST, format!("/v1/tasks/{missing}/cancel")),
        404,
    )
    .await;
    c.check(call(Method::POST, "/v1/tasks/nope/cancel"), 400)
        .await;
    c.check(call(Method::GET, "/v1/tasks?state=cancelled"), 200)
        .await;

    // Dead letters: listed (also a bad queue, a bad cursor), replayed (an id
    // not there: 404; neither ids nor all: 422; all of none: 200).
    c.check(
        call(Method::GET, "/v1/dead-letters?queue=tasks&limit=5"),
        200,
    )
    .await;
    c.check(call(Method::GET, "/v1/dead-letters?queue=library"), 200)
        .await;
    c.check(call(Method::GET, "/v1/dead-letters?queue=nowhere"), 422)
        .await;
    c.check(call(Method::GET, "/v1/dead-letters?cursor=x"), 400)
        .await;
    c.check(
        call(Method::POST, "/v1/dead-letters/replay").json(json!({"ids": ["nope"]})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/dead-letters/replay").json(json!({"queue": "tasks"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/dead-letters/replay")
            .json(json!({"queue": "library", "all": true})),
        200,
    )
    .await;

    // Idempotent submissions and time limits.
    for _ in 0..2 {
        c.check(
            call(Method::POST, "/v1/tasks")
                .header("idempotency-key", "openapi-task-key")
                .json(json!({"action": "sum", "payload": "4,5"})),
            202,
        )
        .await;
    }
    c.check(
        call(Method::POST, "/v1/tasks")
            .header("idempotency-key", "openapi-task-key")
            .json(json!({"action": "sum", "payload": "4,6"})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/tasks")
            .json(json!({"action": "sum", "payload": "4,6", "timeout_ms": 300_001})),
        400,
    )
    .await;
    c.check(
        call(Method::GET, format!("/v1/tasks/{missing}/result")),
        404,
    )
    .await;
    c.check(call(Method::GET, "/v1/tasks/nope/result"), 400)
        .await;

    // Loans.
    let lent = c
        .check(
            call(Method::POST, "/v1/loans")
                .json(json!({"isbn": QUIJOTE, "patron": "ana", "branch": "central"})),
            201,
        )
        .await;
    let replay_key = "openapi-test-key";
    c.check(
        call(Method::POST, "/v1/loans")
            .header("idempotency-key", replay_key)
            .json(json!({"title": "la sombra del viento", "patron": "luis", "branch": "norte"})),
        201,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/loans")
            .header("idempotency-key", replay_key)
            .json(json!({"title": "la sombra del viento", "patron": "luis", "branch": "norte"})),
        201,
    )
    .await;
    for patron in ["marta", "jorge"] {
        c.check(
            call(Method::POST, "/v1/loans")
                .json(json!({"isbn": CRIMEN, "patron": patron, "branch": "central"})),
            201,
        )
        .await;
    }
    c.check(
        call(Method::POST, "/v1/loans")
            .json(json!({"isbn": CRIMEN, "patron": "lucia", "branch": "central"})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/loans")
            .json(json!({"isbn": QUIJOTE, "patron": "nadie", "branch": "central"})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/loans")
            .json(json!({"isbn": "123", "patron": "ana", "branch": "central"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/loans").raw("application/json", "{\"isbn\""),
        400,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/loans").raw("text/plain", "isbn"),
        415,
    )
    .await;
    let loan_id = lent["loan"]["id"].as_str().unwrap().to_owned();
    c.check(call(Method::GET, format!("/v1/loans/{loan_id}")), 200)
        .await;
    c.check(call(Method::GET, "/v1/loans/nope"), 400).await;
    c.check(call(Method::GET, format!("/v1/loans/{missing}")), 404)
        .await;

    // Renewals, returns and their operations.
    let renewal = c
        .check(
            call(Method::POST, "/v1/renewals")
                .json(json!({"isbn": QUIJOTE, "patron": "ana", "branch": "central"})),
            202,
        )
        .await;
    let renewal = renewal["operation_id"].as_str().unwrap().to_owned();
    c.check(call(Method::GET, format!("/v1/operations/{renewal}")), 200)
        .await;
    app.wait_for_operation(&renewal).await;
    c.check(call(Method::GET, format!("/v1/operations/{renewal}")), 200)
        .await;
    c.check(
        call(Method::POST, "/v1/renewals")
            .json(json!({"isbn": QUIJOTE, "patron": "luis", "branch": "central"})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/renewals")
            .json(json!({"isbn": QUIJOTE, "patron": "ana", "branch": "sur"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/renewals").raw("application/json", "{"),
        400,
    )
    .await;
    c.check(call(Method::POST, "/v1/renewals").raw("", "{}"), 415)
        .await;
    let returned = c
        .check(
            call(Method::POST, "/v1/returns").json(json!({"loan_id": loan_id, "branch": "norte"})),
            202,
        )
        .await;
    app.wait_for_operation(returned["operation_id"].as_str().unwrap())
        .await;
    c.check(
        call(
            Method::GET,
            format!(
                "/v1/operations/{}",
                returned["operation_id"].as_str().unwrap()
            ),
        ),
        200,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/returns").json(json!({"loan_id": loan_id, "branch": "norte"})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/returns")
            .json(json!({"isbn": QUIJOTE, "patron": "ana", "branch": "norte"})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/returns").json(json!({"isbn": QUIJOTE, "branch": "norte"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/returns").raw("application/json", "nope"),
        400,
    )
    .await;
    c.check(call(Method::POST, "/v1/returns").raw("", "{}"), 415)
        .await;
    c.check(call(Method::GET, "/v1/operations/nope"), 400).await;
    c.check(call(Method::GET, format!("/v1/operations/{missing}")), 404)
        .await;

    // The catalogue.
    c.check(call(Method::GET, "/v1/books?title=quijote"), 200)
        .await;
    c.check(call(Method::GET, "/v1/books?q=sombra&limit=5"), 200)
        .await;
    c.check(call(Method::GET, "/v1/books?title="), 422).await;
    c.check(call(Method::GET, "/v1/books?title=x&limit=1000"), 422)
        .await;
    c.check(call(Method::GET, "/v1/books?colour=red"), 400)
        .await;
    c.check(call(Method::GET, format!("/v1/books/{QUIJOTE}")), 200)
        .await;
    c.check(call(Method::GET, "/v1/books/9788450099997"), 404)
        .await;
    c.check(call(Method::GET, "/v1/books/123"), 422).await;
    c.check(call(Method::GET, "/v1/patrons/ana/loans"), 200)
        .await;
    c.check(call(Method::GET, "/v1/patrons/ana/loans?all=true"), 200)
        .await;
    c.check(call(Method::GET, "/v1/patrons/nadie/loans"), 404)
        .await;
    c.check(call(Method::GET, "/v1/patrons/NO%20WAY/loans"), 422)
        .await;
    c.check(call(Method::GET, "/v1/patrons/ana/loans?all=maybe"), 400)
        .await;
    c.check(call(Method::GET, "/v1/branches"), 200).await;

    // Catalogue and patron administration.
    let isbn = "978-0-14-044913-6";
    c.check(
        call(Method::POST, "/v1/titles").json(
            json!({"isbn": isbn, "title": "Crime and Punishment (notes)", "authors": ["F. D."], "year": 1866}),
        ),
        201,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/titles").json(json!({"isbn": isbn, "title": "Again"})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/titles").json(json!({"isbn": "9780140449137", "title": "Bad"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/titles").raw("application/json", "{"),
        400,
    )
    .await;
    c.check(
        call(Method::PATCH, "/v1/titles/9780140449136").json(json!({"year": 1867})),
        200,
    )
    .await;
    c.check(
        call(Method::PATCH, "/v1/titles/9780306406157").json(json!({"year": 1867})),
        404,
    )
    .await;
    let copy = c
        .check(
            call(Method::POST, "/v1/titles/9780140449136/copies").json(json!({"branch": "norte"})),
            201,
        )
        .await;
    c.check(
        call(Method::POST, "/v1/titles/9780140449136/copies")
            .json(json!({"branch": "norte", "barcode": copy["barcode"]})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/titles/9780306406157/copies").json(json!({"branch": "norte"})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/titles/9780140449136/copies").json(json!({"branch": "lejos"})),
        422,
    )
    .await;
    let barcode = copy["barcode"].as_str().unwrap();
    c.check(call(Method::DELETE, format!("/v1/copies/{barcode}")), 200)
        .await;
    c.check(call(Method::DELETE, "/v1/copies/NO-SUCH-COPY"), 404)
        .await;
    c.check(call(Method::DELETE, "/v1/copies/no%20way"), 422)
        .await;
    c.check(
        call(Method::POST, "/v1/patrons")
            .json(json!({"id": "zoe", "name": "Zoe", "email": "zoe@example.org"})),
        201,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/patrons").json(json!({"id": "zoe", "name": "Zoe"})),
        409,
    )
    .await;

    // Holds: the title above has no copy left, so a hold is taken.
    let hold = c
        .check(
            call(Method::POST, "/v1/holds").json(
                json!({"isbn": "9780140449136", "patron": "zoe", "pickup_branch": "central"}),
            ),
            201,
        )
        .await;
    let hold_id = hold["id"].as_str().unwrap().to_owned();
    c.check(
        call(Method::POST, "/v1/holds")
            .json(json!({"isbn": "9780140449136", "patron": "zoe", "pickup_branch": "central"})),
        409,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/holds")
            .json(json!({"isbn": "9780140449136", "patron": "nadie", "pickup_branch": "central"})),
        404,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/holds")
            .json(json!({"isbn": "9780140449136", "patron": "zoe", "pickup_branch": "lejos"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/holds").raw("application/json", "{"),
        400,
    )
    .await;
    c.check(call(Method::POST, "/v1/holds").raw("", "{}"), 415)
        .await;
    c.check(call(Method::GET, format!("/v1/holds/{hold_id}")), 200)
        .await;
    c.check(call(Method::GET, format!("/v1/holds/{missing}")), 404)
        .await;
    c.check(call(Method::GET, "/v1/holds/nope"), 422).await;
    c.check(call(Method::GET, "/v1/patrons/zoe/holds"), 200)
        .await;
    c.check(call(Method::GET, "/v1/patrons/zoe/holds?all=true"), 200)
        .await;
    c.check(call(Method::GET, "/v1/patrons/nadie/holds"), 404)
        .await;
    c.check(call(Method::GET, "/v1/patrons/NO%20WAY/holds"), 422)
        .await;
    c.check(call(Method::GET, "/v1/patrons/zoe/holds?all=maybe"), 400)
        .await;
    c.check(call(Method::GET, "/v1/titles/9780140449136/holds"), 200)
        .await;
    c.check(call(Method::GET, "/v1/titles/9780306406157/holds"), 404)
        .await;
    c.check(call(Method::GET, "/v1/titles/123/holds"), 422)
        .await;
    c.check(
        call(Method::DELETE, format!("/v1/holds/{hold_id}?patron=ana")),
        409,
    )
    .await;
    c.check(
        call(Method::DELETE, format!("/v1/holds/{hold_id}?colour=red")),
        400,
    )
    .await;
    c.check(call(Method::DELETE, format!("/v1/holds/{hold_id}")), 200)
        .await;
    c.check(call(Method::DELETE, format!("/v1/holds/{hold_id}")), 200)
        .await;
    c.check(call(Method::DELETE, format!("/v1/holds/{missing}")), 404)
        .await;
    c.check(call(Method::DELETE, "/v1/holds/nope"), 422).await;
    c.check(
        call(Method::POST, "/v1/patrons").json(json!({"id": "zoe2", "name": "Zoe", "email": "no"})),
        422,
    )
    .await;
    c.check(
        call(Method::PATCH, "/v1/patrons/zoe").json(json!({"blocked": {"reason": "lost books"}})),
        200,
    )
    .await;
    c.check(
        call(Method::PATCH, "/v1/patrons/zoe").json(json!({"blocked": null, "name": "Zoe Z"})),
        200,
    )
    .await;
    c.check(
        call(Method::PATCH, "/v1/patrons/nadie").json(json!({"name": "X"})),
        404,
    )
    .await;
    c.check(call(Method::GET, "/v1/patrons/zoe"), 200).await;
    c.check(call(Method::GET, "/v1/patrons/nadie"), 404).await;
    c.check(call(Method::GET, "/v1/patrons/NO%20WAY"), 422)
        .await;
    c.check(call(Method::GET, "/v1/patrons?q=an&limit=2"), 200)
        .await;
    c.check(call(Method::GET, "/v1/patrons?limit=0"), 422).await;
    c.check(call(Method::GET, "/v1/patrons?colour=red"), 400)
        .await;
    c.check(
        call(Method::POST, "/v1/import/titles").json(json!({"rows": [
            {"isbn": "9780306406157", "title": "Imported", "authors": ["A. B."], "year": 2001},
            {"isbn": "9780306406158", "title": "Bad check digit"}
        ]})),
        200,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/import/titles").json(json!({"rows": [{"isbn": 1}]})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/import/patrons").json(json!({"rows": [
            {"id": "imp1", "name": "Imported One"},
            {"id": "imp2", "name": "  "}
        ]})),
        200,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/import/patrons").raw("application/json", "{"),
        400,
    )
    .await;

    // The web pages' routes. The event stream: `ready`, then an outcome
    // event in the documented shape; then the connection is dropped.
    let mut stream = c
        .check_event_stream(call(Method::GET, "/v1/events/stream?keys=task.*"))
        .await;
    app.submit("sum", json!([4, 5])).await;
    let (_, data) = stream
        .next_event()
        .await
        .expect("the stream ended before the task's event");
    c.assert_matches(
        "an event of /v1/events/stream",
        &json!({"$ref": "#/components/schemas/EventStreamEvent"}),
        &serde_json::from_str(&data).unwrap(),
    );
    drop(stream);
    c.check(call(Method::GET, "/v1/events/stream?keys=task..x"), 422)
        .await;
    c.check(call(Method::GET, "/v1/events/stream?colour=red"), 400)
        .await;
    c.check(call(Method::GET, "/v1/dashboard/queues"), 200)
        .await;
    c.check(call(Method::GET, "/v1/dashboard/tasks"), 200).await;
    c.check(call(Method::GET, "/v1/dashboard/circulation"), 200)
        .await;
    c.check(
        call(Method::GET, "/v1/dashboard/circulation?minutes=5"),
        200,
    )
    .await;
    c.check(
        call(Method::GET, "/v1/dashboard/circulation?minutes=0"),
        422,
    )
    .await;
    c.check(
        call(Method::GET, "/v1/dashboard/circulation?minutes=soon"),
        400,
    )
    .await;

    // The large result is in the bucket: listed, downloaded, redirected to.
    let key = stored["result_object"]["key"]
        .as_str()
        .unwrap()
        .strip_prefix(&app.env.s3_prefix)
        .expect("stored under the test's prefix")
        .to_owned();
    let listed = c
        .check(call(Method::GET, "/v1/objects?prefix=results/"), 200)
        .await;
    assert_eq!(listed["objects"][0]["key"], key.as_str(), "{listed}");
    c.check(call(Method::GET, "/v1/objects?order=newest&limit=1"), 200)
        .await;
    c.check(call(Method::GET, "/v1/objects?order=oldest"), 422)
        .await;
    c.check(call(Method::GET, "/v1/objects?limit=0"), 422).await;
    c.check(call(Method::GET, "/v1/objects?order=newest&cursor=x"), 422)
        .await;
    c.check(call(Method::GET, "/v1/objects?limit=many"), 400)
        .await;
    // As an OpenAPI client sends a path parameter: its `/`s encoded.
    let object = format!("/v1/objects/{}", key.replace('/', "%2F"));
    c.check(call(Method::GET, &object), 200).await;
    c.check(call(Method::GET, format!("{object}?redirect=true")), 307)
        .await;
    c.check(call(Method::GET, format!("{object}?redirect=maybe")), 400)
        .await;
    c.check(
        call(Method::GET, "/v1/objects/results%2Fnot-there.json"),
        404,
    )
    .await;

    // Who is calling, and keys (auth off here: the open caller, an admin).
    let me = c.check(call(Method::GET, "/v1/me"), 200).await;
    assert_eq!(
        (me["role"].clone(), me["auth"].clone()),
        (json!("admin"), json!(false))
    );
    let made = c
        .check(
            call(Method::POST, "/v1/keys").json(json!({"role": "librarian", "branch": "norte"})),
            201,
        )
        .await;
    c.check(
        call(Method::POST, "/v1/keys").json(json!({"role": "wizard"})),
        422,
    )
    .await;
    c.check(
        call(Method::POST, "/v1/keys").json(json!({"role": "patron", "patron": "nadie"})),
        404,
    )
    .await;
    c.check(call(Method::GET, "/v1/keys"), 200).await;
    c.check(call(Method::GET, "/v1/keys?revoked=maybe"), 400)
        .await;
    let id = made["id"].as_str().unwrap();
    c.check(call(Method::DELETE, format!("/v1/keys/{id}")), 200)
        .await;
    c.check(call(Method::DELETE, "/v1/keys/0123456789ab"), 404)
        .await;

    // The same routes when what they read from fails: an app whose
    // RabbitMQ, PostgreSQL, object storage and management API are behind
    // proxies this test cuts, and whose management credentials are wrong.
    let rabbitmq = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let postgres = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let s3 = TcpProxy::start("127.0.0.1:3900".parse().unwrap()).await;
    let management = TcpProxy::start("127.0.0.1:15672".parse().unwrap()).await;
    let down = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.amqp.url = with_port(&s.amqp.url, rabbitmq.port());
            s.database.url = with_port(&s.database.url, postgres.port());
            s.s3.endpoint = format!("http://127.0.0.1:{}", s3.port());
            s.dashboard.rabbitmq_mgmt_url = format!("http://127.0.0.1:{}", management.port());
            s.dashboard.rabbitmq_mgmt_password = "not-the-password".to_owned();
        },
        0,
    )
    .await;
    let mut d = Checker::new(&down, None).await;
    d.check(call(Method::GET, "/v1/dashboard/queues"), 502)
        .await;
    management.cut();
    d.check(call(Method::GET, "/v1/dashboard/queues"), 503)
        .await;
    postgres.cut();
    answers(&down, "/v1/dashboard/tasks", 503).await;
    d.check(call(Method::GET, "/v1/dashboard/tasks"), 503).await;
    d.check(call(Method::GET, "/v1/dashboard/circulation"), 503)
        .await;
    s3.cut();
    d.check(call(Method::GET, "/v1/objects"), 503).await;
    d.check(call(Method::GET, "/v1/objects/results%2Fx.json"), 503)
        .await;
    rabbitmq.cut();
    d.check(call(Method::GET, "/v1/events/stream"), 503).await;

    let missed: Vec<_> = c
        .documented_operations()
        .difference(&c.exercised)
        .cloned()
        .collect();
    assert!(missed.is_empty(), "documented but never called: {missed:?}");
}

/// Waits until `path` answers `status`: a cut connection takes a moment to
/// be noticed by the pool that held it.
async fn answers(app: &TestApp, path: &str, status: u16) {
    wait_until(DEADLINE, || async {
        (app.get(path).await.status() == status).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{path} never answered {status}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_router_serves_is_documented() {
    let app = TestApp::spawn(TestEnv::new().await, |_| {}, 0).await;
    let doc = document(&app).await;
    let mut served = BTreeSet::new();
    for path in bibliomq_api::routes::paths() {
        let concrete = concrete(&path);
        for method in METHODS {
            let resp = app
                .http
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            // The router's own 405 means "not this method"; any other
            // answer (a 415 for a bodiless POST, a 404 for a made-up id)
            // comes from a handler, so the route is served.
            if resp.status() != 405 {
                served.insert((method.as_str().to_lowercase(), path.clone()));
            }
        }
    }
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_v1_answers_401_without_it_and_operations_stay_open() {
    let token = "tok-openapi-test";
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| s.api.token = Some(bibliomq_core::config::ApiToken(token.into())),
        0,
    )
    .await;
    let mut anonymous = Checker::new(&app, None).await;
    let doc = anonymous.doc.clone();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = concrete(path);
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let expect = if path.starts_with("/v1/") { 401 } else { 200 };
            let body = anonymous
                .check(call(m, concrete.clone()).json(json!({})), expect)
                .await;
            if expect == 401 {
                assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
            }
        }
    }
    let resp = app
        .http
        .get(app.url("/v1/branches"))
        .bearer_auth("not-it")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let mut authorised = Checker::new(&app, Some(token)).await;
    authorised
        .check(call(Method::GET, "/v1/branches"), 200)
        .await;
    let resp = app
        .http
        .get(app.url("/v1/branches"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the scheme is case-insensitive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_v1_answers_401_403_and_429_as_documented() {
    let app = TestApp::spawn(
        TestEnv::new().await,
        |s| {
            s.auth.enabled = true;
            s.auth.rate_per_sec = 0.01;
            s.auth.rate_burst = 2.0;
        },
        0,
    )
    .await;
    let mut anonymous = Checker::new(&app, None).await;
    let doc = anonymous.doc.clone();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = concrete(path);
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let expect = if path.starts_with("/v1/") { 401 } else { 200 };
            let body = anonymous
                .check(call(m, concrete.clone()).json(json!({})), expect)
                .await;
            if expect == 401 {
                assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
            }
        }
    }
    let service = app.key("service", None, None).await;
    let mut limited = Checker::new(&app, Some(service.as_str())).await;
    let refused = limited.check(call(Method::GET, "/v1/keys"), 403).await;
    assert_eq!(refused["error"]["required_roles"], json!(["admin"]));
    assert_eq!(refused["error"]["role"], "service");
    limited.check(call(Method::GET, "/v1/me"), 200).await;
    let late = limited.check(call(Method::GET, "/v1/me"), 429).await;
    assert_eq!(late["error"]["code"], "rate_limited");
}
