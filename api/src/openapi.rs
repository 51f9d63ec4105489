//! `GET /openapi.json`: an OpenAPI 3.1 description of the whole HTTP API.
//!
//! Written by hand, as data, rather than derived from annotations: the
//! handlers build their answers with `json!` from the command layer's types,
//! so there is no response type an annotation could point at, and a derived
//! document would only describe what we remembered to annotate. What keeps
//! this one true is a test (`testkit/tests/e2e/openapi.rs`) that calls every
//! operation described here against a running app, validates each answer's
//! status and body against the schemas below, and checks that every path the
//! router serves is described. OpenAPI 3.1 schemas are JSON Schema 2020-12,
//! so a stock validator reads them as they are.
//!
//! Lists that the code owns (task actions and states, branch rules, limits)
//! come from the code, so they cannot drift.
//!
//! The JSON routes behind the web pages (`crate::ui`: live events, dashboard
//! figures, the object browser) are described here too: they sit under
//! `/v1` behind the same token, and any client may call them.

use std::sync::LazyLock;

use axum::{Json, extract::State, routing::get};
use bibliomq_core::{
    broker::topology::EVENTS_EXCHANGE,
    commands::{CIRCULATION_MAX_MINUTES, SEARCH_MAX_LIMIT, SEARCH_MAX_WORDS},
    tasks::{Action, FIB_MAX, PRIMES_MAX, SLEEP_MAX_MS, SUM_MAX_ITEMS, TaskState},
};
use serde_json::{Map, Value, json};

use crate::ui::{events, objects};
use crate::{AppState, routing::Routes};

pub fn routes() -> Routes {
    Routes::new().route("/openapi.json", get(serve))
}

async fn serve(State(state): State<AppState>) -> Json<Value> {
    // The fixed part is built once; the configured branches go in per answer.
    static DOCUMENT: LazyLock<Value> = LazyLock::new(document);
    let branches: Vec<&str> = state
        .settings
        .library
        .branches
        .iter()
        .map(|b| b.code.as_str())
        .collect();
    let doc = with_branches(DOCUMENT.clone(), &branches);
    Json(with_timeout_max(doc, state.settings.tasks.timeout_max))
}

/// The document with `timeout_ms` limited to the configured maximum, as the
/// server limits it.
pub fn with_timeout_max(mut doc: Value, max: std::time::Duration) -> Value {
    if let Some(timeout) =
        doc.pointer_mut("/components/schemas/TaskSubmission/properties/timeout_ms")
    {
        timeout["maximum"] = json!(u64::try_from(max.as_millis()).unwrap_or(u64::MAX));
    }
    doc
}

/// The document with `branch` in request bodies limited to the configured
/// branch codes, as the server limits it.
pub fn with_branches(mut doc: Value, branches: &[&str]) -> Value {
    for schema in ["LoanRequest", "CirculationRequest"] {
        if let Some(branch) =
            doc.pointer_mut(&format!("/components/schemas/{schema}/properties/branch"))
        {
            branch["enum"] = json!(branches);
        }
    }
    doc
}

/// What `Isbn::parse` takes, short of the check digit (which a pattern
/// cannot say): an ISBN-13 starting 978 or 979, or an ISBN-10, hyphens
/// allowed between digits.
const ISBN_PATTERN: &str = "^(97[89](-?[0-9]){10}|[0-9](-?[0-9]){8}-?[0-9Xx])$";

/// White space as Rust's `trim` and `split_whitespace` read it, for a
/// regex character class (a regex's `\s` differs from it in two characters).
const SPACE: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Text PostgreSQL can store: no U+0000.
const NO_NUL: &str = "^[^\\u0000]*$";

/// What `PatronId::parse` takes.
const PATRON_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// An ISBN: the pattern says its digits; the format `isbn` says its check
/// digit is right too (a format JSON Schema validators pass over, which the
/// contract fuzzer is taught in `testkit/tests/e2e/schemathesis_hooks.py`).
fn isbn() -> Value {
    json!({"type": "string", "format": "isbn", "pattern": ISBN_PATTERN})
}

fn patron() -> Value {
    json!({"type": "string", "pattern": PATRON_PATTERN})
}

/// The document, as served.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bibliomq",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Tasks (submit, follow, fetch results) and library circulation (loans, renewals, returns, catalogue) over RabbitMQ, PostgreSQL and S3. Every error has the body `{\"error\": {\"code\", \"message\", \"field\"?}}`; every response carries `x-correlation-id`. When the server has `BIBLIOMQ_API_TOKEN` set, `/v1/*` needs `Authorization: Bearer <token>`.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "tasks", "description": "Jobs run by the workers"},
            {"name": "library", "description": "Loans, renewals, returns and the catalogue"},
            {"name": "web", "description": "What the web pages show beyond the rest of the API: live events, dashboard figures, the results bucket"},
            {"name": "operations", "description": "Health, readiness, metrics, this document"}
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required on /v1/* only when the server sets BIBLIOMQ_API_TOKEN."
                }
            },
            "parameters": {
                "CorrelationId": {
                    "name": "x-correlation-id",
                    "in": "header",
                    "required": false,
                    "description": "Your id for this request; it follows the work through the broker into logs and rows. One is made when absent.",
                    "schema": {"type": "string"}
                }
            }
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": json_content(schema_ref(schema)) })
}

fn error(description: &str) -> Value {
    json!({ "description": description, "content": json_content(schema_ref("Error")) })
}

fn unavailable() -> Value {
    retry_later(
        "RabbitMQ, PostgreSQL or object storage unreachable (`unavailable`); nothing changed. Retry after `Retry-After` seconds.",
    )
}

/// A 503: every one carries `Retry-After`.
fn retry_later(description: &str) -> Value {
    let mut e = error(description);
    e["headers"] = json!({ "Retry-After": { "schema": { "type": "string" } } });
    e
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name, "in": "path", "required": true,
        "description": description, "schema": schema
    })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name, "in": "query", "required": false,
        "description": description, "schema": schema
    })
}

/// An operation under `/v1`: it may ask for the token, time out, or fail on our side.
fn v1(mut op: Value) -> Value {
    let responses = op["responses"].as_object_mut().map(std::mem::take);
    let mut responses = responses.unwrap_or_default();
    responses.insert(
        "401".into(),
        error("A token is configured and the request has none, or the wrong one (`unauthorized`)."),
    );
    responses.insert(
        "500".into(),
        error("Our failure (`internal`); the details are in the server's log."),
    );
    responses.insert(
        "504".into(),
        error("The request took longer than BIBLIOMQ_API_REQUEST_TIMEOUT_MS (`request_timeout`), or the loan service did not answer in time (`timeout`)."),
    );
    op["responses"] = Value::Object(responses);
    op["security"] = json!([{}, {"bearer": []}]);
    let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
    params.push(json!({"$ref": "#/components/parameters/CorrelationId"}));
    op["parameters"] = Value::Array(params);
    op
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": json_content(schema_ref(schema)) })
}

fn location() -> Value {
    json!({ "Location": { "schema": { "type": "string" } } })
}

fn paths() -> Value {
    let (healthz, readyz, metrics, openapi) = health_paths();
    let (tasks, task, result, cancel) = task_paths();
    let (loans, loan) = loan_paths();
    let (renewals, returns, operation) = circulation_paths();
    let (books, book, patron_loans, branches) = catalogue_paths();
    let (event_stream, queues, task_counts, circulation) = web_feed_paths();
    let (object_list, object) = object_paths();
    let mut paths = Map::new();
    for (path, item) in [
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics),
        ("/openapi.json", openapi),
        ("/v1/tasks", tasks),
        ("/v1/tasks/{id}", task),
        ("/v1/tasks/{id}/result", result),
        ("/v1/tasks/{id}/cancel", cancel),
        ("/v1/loans", loans),
        ("/v1/loans/{id}", loan),
        ("/v1/renewals", renewals),
        ("/v1/returns", returns),
        ("/v1/operations/{id}", operation),
        ("/v1/books", books),
        ("/v1/books/{isbn}", book),
        ("/v1/patrons/{id}/loans", patron_loans),
        ("/v1/branches", branches),
        ("/v1/events/stream", event_stream),
        ("/v1/dashboard/queues", queues),
        ("/v1/dashboard/tasks", task_counts),
        ("/v1/dashboard/circulation", circulation),
        ("/v1/objects", object_list),
        ("/v1/objects/{key}", object),
    ] {
        paths.insert(path.to_owned(), item);
    }
    Value::Object(paths)
}

fn health_paths() -> (Value, Value, Value, Value) {
    (
        json!({"get": {
            "tags": ["operations"], "operationId": "healthz",
            "summary": "The process is up",
            "responses": {"200": ok("Alive.", "Health")}
        }}),
        json!({"get": {
            "tags": ["operations"], "operationId": "readyz",
            "summary": "RabbitMQ, PostgreSQL and object storage are reachable",
            "responses": {
                "200": ok("Ready: every dependency answered.", "Readiness"),
                "503": ok("Not ready; `checks` and `unavailable` name what is not reachable.", "Readiness")
            }
        }}),
        json!({"get": {
            "tags": ["operations"], "operationId": "metrics",
            "summary": "Prometheus metrics of this process (OpenMetrics text)",
            "responses": {"200": {
                "description": "Counters and histograms: HTTP requests, published and consumed messages, task durations, loan outcomes.",
                "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}
            }}
        }}),
        json!({"get": {
            "tags": ["operations"], "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": {
                "description": "The OpenAPI 3.1 description of this API.",
                "content": json_content(json!({"type": "object", "required": ["openapi", "paths"]}))
            }}
        }}),
    )
}

fn task_paths() -> (Value, Value, Value, Value) {
    let id = path_param("id", "The task id.", uuid());
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    let collection = json!({
        "post": v1(json!({
            "tags": ["tasks"], "operationId": "submitTask",
            "summary": "Submit a task",
            "description": format!("Answered once RabbitMQ has confirmed the message. Actions: {}.", actions.join(", ")),
            "parameters": [{
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Your key for safe retries: the same key with the same request answers with the first task (header `idempotent-replayed: true`) and queues nothing; with a different request, 409 `idempotency_key_reused`. A key lives as long as its task.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}
            }],
            "requestBody": body("TaskSubmission"),
            "responses": {
                "202": {
                    "description": "Queued (or, for a retried Idempotency-Key, the first answer again); follow it at `Location`.",
                    "headers": {
                        "Location": { "schema": { "type": "string" } },
                        "idempotent-replayed": {"description": "`true` when this is the answer to an earlier request with the same Idempotency-Key.", "schema": {"type": "string"}}
                    },
                    "content": json_content(schema_ref("TaskAccepted"))
                },
                "400": error("The body is not JSON (`malformed_json`), `timeout_ms` is not from 1 to BIBLIOMQ_TASK_TIMEOUT_MAX_MS (`invalid_timeout`, with `field`), or the Idempotency-Key is not visible ASCII (`invalid_idempotency_key`); nothing was queued."),
                "409": error("The Idempotency-Key was already used for a different request (`idempotency_key_reused`)."),
                "413": error("The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`)."),
                "415": error("No `Content-Type: application/json` (`unsupported_media_type`)."),
                "422": error("Unknown action or a payload the action cannot take (`unknown_action`, `invalid_payload`, `invalid_field`), or a malformed Idempotency-Key (`invalid_idempotency_key`), with `field`."),
                "503": unavailable()
            }
        })),
        "get": v1(json!({
            "tags": ["tasks"], "operationId": "listTasks",
            "summary": "Tasks, newest first",
            "parameters": [
                query_param("state", "Only tasks in this state.", json!({"type": "string", "enum": TaskState::ALL})),
                query_param("action", "Only tasks of this action.", json!({"type": "string", "enum": actions})),
                query_param("limit", "At most this many (1 to 500, default 50).", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                query_param("before", "Page on: tasks older than this id (`next_before` of the previous page).", json!({"type": "string", "format": "uuid"}))
            ],
            "responses": {
                "200": ok("A page of tasks.", "TaskList"),
                "400": error("`before` is not a task id (`invalid_task_id`), or an unknown parameter (`invalid_query`)."),
                "422": error("Bad `state`, `action` or `limit`."),
                "503": unavailable()
            }
        }))
    });
    let one = json!({"get": v1(json!({
        "tags": ["tasks"], "operationId": "getTask",
        "summary": "A task's state, attempts, timestamps, error and result",
        "parameters": [id.clone()],
        "responses": {
            "200": ok("The task; `result` inline when small, `result_object` when stored in the bucket.", "Task"),
            "400": error("The id is not a UUID (`invalid_task_id`)."),
            "404": error("No such task (`task_not_found`)."),
            "503": unavailable()
        }
    }))});
    let result = json!({"get": v1(json!({
        "tags": ["tasks"], "operationId": "getTaskResult",
        "summary": "The result itself",
        "description": "Inline results come from PostgreSQL; large ones are streamed from object storage with `x-content-sha256`, or with `?redirect=true` answered by a redirect to a presigned link.",
        "parameters": [id, query_param("redirect", "Answer with a redirect to a presigned object-storage link (large results only).", json!({"type": "boolean"}))],
        "responses": {
            "200": {
                "description": "The result: JSON, or CSV for `report`.",
                "headers": {"x-content-sha256": {"description": "SHA-256 of a stored result.", "schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {}}, "text/csv": {"schema": {"type": "string"}}}
            },
            "307": {"description": "Redirect to a presigned link (`?redirect=true`, stored results).", "headers": location()},
            "400": error("The id is not a UUID (`invalid_task_id`)."),
            "404": error("No such task (`task_not_found`), or the stored result is missing (`result_missing`)."),
            "409": error("Not finished (`result_not_ready`) or finished without a result (`task_failed`); `state` says which."),
            "503": unavailable()
        }
    }))});
    let cancel = json!({"post": v1(json!({
        "tags": ["tasks"], "operationId": "cancelTask",
        "summary": "Cancel a task",
        "description": "A queued task is cancelled at once and never runs. A running one is stopped by its worker within about a second and ends `cancelled`. Cancelling again gives the same answer.",
        "parameters": [path_param("id", "The task id.", uuid())],
        "responses": {
            "200": ok("Cancelled (now, or earlier).", "TaskCancel"),
            "202": ok("Running: its worker has been told to stop it (`stopping`); follow the task until it is `cancelled`.", "TaskCancel"),
            "400": error("The id is not a UUID (`invalid_task_id`)."),
            "404": error("No such task (`task_not_found`)."),
            "409": error("The task already ended otherwise (`task_finished`); `state` says how. Nothing changed."),
            "503": unavailable()
        }
    }))});
    (collection, one, result, cancel)
}

fn loan_paths() -> (Value, Value) {
    let make = json!({"post": v1(json!({
        "tags": ["library"], "operationId": "makeLoan",
        "summary": "Lend a copy of a title (by ISBN or by title words)",
        "description": "Answered at once: the loan worker applies the rules and replies over RabbitMQ. A copy at the requested branch is preferred; another branch's otherwise.",
        "parameters": [{
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Your key for safe retries: the same key answers with the same loan (`replayed`). One is made when absent and returned.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}
        }],
        "requestBody": body("LoanRequest"),
        "responses": {
            "201": {
                "description": "Lent (or, with `replayed`, lent earlier for this key).",
                "headers": {
                    "Location": {"schema": {"type": "string"}},
                    "Idempotency-Key": {"schema": {"type": "string"}},
                    "Idempotent-Replayed": {"schema": {"type": "string"}}
                },
                "content": json_content(schema_ref("LoanReceipt"))
            },
            "400": error("Malformed JSON or Idempotency-Key."),
            "404": error("Unknown title or patron (`title_not_found`, `patron_not_found`)."),
            "409": error("Refused by a rule: `not_available` (with `earliest_due_at`), `loan_limit_reached`, `ambiguous_title` (with `candidates`), `idempotency_key_reused`."),
            "415": error("No `Content-Type: application/json`."),
            "422": error("Invalid ISBN, patron, branch or title, with `field`."),
            "503": unavailable()
        }
    }))});
    let one = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "getLoan",
        "summary": "A loan",
        "parameters": [path_param("id", "The loan id.", uuid())],
        "responses": {
            "200": ok("The loan.", "Loan"),
            "400": error("The id is not a UUID (`invalid_loan_id`)."),
            "404": error("No such loan (`loan_not_found`)."),
            "503": unavailable()
        }
    }))});
    (make, one)
}

fn circulation_paths() -> (Value, Value, Value) {
    let accept = |id: &str, summary: &str| {
        json!({"post": v1(json!({
            "tags": ["library"], "operationId": id,
            "summary": summary,
            "description": "Accepted at once and applied by a worker; follow `links.self` (`/v1/operations/{id}`) until it is `applied` or `rejected`. Name the loan by `loan_id`, or by `isbn` and `patron`.",
            "requestBody": body("CirculationRequest"),
            "responses": {
                "202": {
                    "description": "Queued for the branch's worker.",
                    "headers": location(),
                    "content": json_content(schema_ref("OperationAccepted"))
                },
                "400": error("Malformed JSON."),
                "404": error("No such patron, title or open loan (`patron_not_found`, `title_not_found`, `loan_not_found`)."),
                "409": error("The loan is already closed (`not_on_loan`)."),
                "415": error("No `Content-Type: application/json`."),
                "422": error("Invalid ISBN, patron, branch or loan id, or a missing field, with `field`."),
                "503": unavailable()
            }
        }))})
    };
    let operation = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "getOperation",
        "summary": "A renewal's or return's state and outcome",
        "parameters": [path_param("id", "The operation id.", uuid())],
        "responses": {
            "200": ok("`pending`, then `applied` (with `outcome`) or `rejected` (with `reason`).", "Operation"),
            "400": error("The id is not a UUID (`invalid_operation_id`)."),
            "404": error("No such operation (`operation_not_found`)."),
            "503": unavailable()
        }
    }))});
    (
        accept("renewLoan", "Renew a loan"),
        accept("returnLoan", "Return a loan"),
        operation,
    )
}

fn catalogue_paths() -> (Value, Value, Value, Value) {
    let search = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "searchBooks",
        "summary": "Titles containing every word, ignoring case and accents",
        "parameters": [
            {
                "name": "title", "in": "query", "required": true,
                "description": format!("1 to {SEARCH_MAX_WORDS} words of the title (up to 100 characters each)."),
                "schema": search_words()
            },
            {
                "name": "q", "in": "query", "required": false, "deprecated": true,
                "description": "The same as `title`, which wins when both are given.",
                "schema": search_words()
            },
            query_param("limit", &format!("At most this many (1 to {SEARCH_MAX_LIMIT}, default 20)."), json!({"type": "integer", "minimum": 1, "maximum": SEARCH_MAX_LIMIT}))
        ],
        "responses": {
            "200": ok("Matching titles with their availability.", "BookSearch"),
            "400": error("An unknown parameter (`invalid_query`)."),
            "422": error("No words, too many, or a bad limit (`invalid_query`, `invalid_limit`)."),
            "503": unavailable()
        }
    }))});
    let book = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "getBook",
        "summary": "A title, its copies per branch and when the next one is due back",
        "parameters": [path_param("isbn", "ISBN-13 (or ISBN-10; hyphens allowed).", isbn())],
        "responses": {
            "200": ok("The title.", "Book"),
            "404": error("Not in the catalogue (`title_not_found`)."),
            "422": error("Not a valid ISBN (`invalid_isbn`)."),
            "503": unavailable()
        }
    }))});
    let patron = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "getPatronLoans",
        "summary": "A patron's loans, soonest due first",
        "parameters": [
            path_param("id", "The patron id.", patron()),
            query_param("all", "Returned loans too.", json!({"type": "boolean"}))
        ],
        "responses": {
            "200": ok("The patron and their loans.", "PatronLoans"),
            "400": error("An unknown or malformed parameter (`invalid_query`)."),
            "404": error("No such patron (`patron_not_found`)."),
            "422": error("Not a valid patron id (`invalid_patron`)."),
            "503": unavailable()
        }
    }))});
    let branches = json!({"get": v1(json!({
        "tags": ["library"], "operationId": "listBranches",
        "summary": "The library's branches (BIBLIOMQ_BRANCHES)",
        "responses": {"200": ok("Branches in display order.", "Branches")}
    }))});
    (search, book, patron, branches)
}

fn web_feed_paths() -> (Value, Value, Value, Value) {
    let stream = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "streamEvents",
        "summary": format!("Outcome events of `{EVENTS_EXCHANGE}`, live, as server-sent events"),
        "description": format!(concat!(
            "A `text/event-stream` that stays open. Its first event is named `ready` and comes once ",
            "the stream's own queue is bound, so every outcome published after it is delivered; its ",
            "`data` is one line of JSON, `EventStreamReady`. Then one unnamed event per outcome ",
            "event whose routing key matches `keys`, its `data` one line of JSON, `EventStreamEvent`. ",
            "Comment lines (`:`) keep the connection alive every 15 s. Events published while the ",
            "API is cut off from RabbitMQ are missed (PostgreSQL has the record); the stream ends ",
            "when the server stops. The request timeout bounds only the wait for the answer to ",
            "start, not how long it streams. Routing keys: `task.<state>`, `loaned.<branch>`, ",
            "`renewed.<branch>`, `returned.<branch>`, `rejected.<kind>.<branch>`; at most {} patterns."
        ), events::MAX_KEYS),
        "parameters": [query_param(
            "keys",
            "Comma-separated topic patterns: dot-separated words, `*` for one word, `#` for any number (`task.*,loaned.#`). Every event when absent.",
            keys_pattern()
        )],
        "responses": {
            "200": {
                "description": "The stream: `event: ready`, then `data:` lines, one event per outcome.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}
            },
            "400": error("An unknown parameter (`invalid_query`)."),
            "422": error("A malformed pattern, none, or too many (`invalid_keys`, field `keys`)."),
            "503": retry_later("RabbitMQ cannot be reached, so there is no live feed (`unavailable`).")
        }
    }))});
    let queues = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "dashboardQueues",
        "summary": "Depth, rates and consumers of every queue of our RabbitMQ vhost",
        "description": "Read from the RabbitMQ management API (BIBLIOMQ_RABBITMQ_MGMT_URL) with the server's credentials, so a client needs none. Server-named queues (live feeds, reply queues) are counted, not listed.",
        "responses": {
            "200": ok("The vhost's queues, by name, and its overall rates.", "DashboardQueues"),
            "502": error("The management API refused the server's credentials or failed (`management_unavailable`)."),
            "503": retry_later("The management API does not answer (`management_unavailable`).")
        }
    }))});
    let tasks = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "dashboardTasks",
        "summary": "How many tasks are in each state",
        "responses": {
            "200": ok("Every state, zeros included, and the total.", "DashboardTasks"),
            "503": unavailable()
        }
    }))});
    let circulation = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "dashboardCirculation",
        "summary": "Loans, renewals and returns settled per minute and branch",
        "description": "From the circulation history: the configured branches in their order (quiet ones too), then any other branch found there.",
        "parameters": [query_param(
            "minutes",
            &format!("The window, ending now (1 to {}, default 30).", CIRCULATION_MAX_MINUTES),
            json!({"type": "integer", "minimum": 1, "maximum": CIRCULATION_MAX_MINUTES})
        )],
        "responses": {
            "200": ok("One series per branch, oldest minute first, and totals per kind and outcome.", "DashboardCirculation"),
            "400": error("An unknown parameter or `minutes` not a whole number (`invalid_query`)."),
            "422": error("`minutes` out of range (`invalid_minutes`)."),
            "503": unavailable()
        }
    }))});
    (stream, queues, tasks, circulation)
}

fn object_paths() -> (Value, Value) {
    let list = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "listObjects",
        "summary": "Objects in the results bucket, a page at a time",
        "description": "Only keys under the server's BIBLIOMQ_S3_KEY_PREFIX are listed, and they are shown without it.",
        "parameters": [
            query_param("prefix", "Only keys starting with this (after the server's own prefix), such as `results/2025/05/`; no control characters.", plain_text()),
            query_param(
                "order",
                &format!("`key` (the default: S3's own order) or `newest` (last modified first, from a scan of at most {} keys: narrow it with `prefix`).", objects::NEWEST_SCAN),
                json!({"type": "string", "enum": ["key", "newest"]})
            ),
            query_param("limit", &format!("At most this many (1 to {}, default 50).", objects::MAX_LIMIT), json!({"type": "integer", "minimum": 1, "maximum": objects::MAX_LIMIT})),
            query_param("cursor", "Page on: `next_cursor` of the previous page, with the same `prefix` and `order` (empty: the first page).", plain_text())
        ],
        "responses": {
            "200": ok("A page of objects.", "ObjectList"),
            "400": error("An unknown parameter, or `limit` not a whole number (`invalid_query`)."),
            "422": error("A bad `limit`, `order`, `prefix` or `cursor` (`invalid_limit`, `invalid_order`, `invalid_prefix`, `invalid_cursor`), with `field`."),
            "503": unavailable()
        }
    }))});
    let one = json!({"get": v1(json!({
        "tags": ["web"], "operationId": "getObject",
        "summary": "An object of the results bucket, as a download",
        "description": "Streamed from object storage as an attachment, in its stored content type; with `?redirect=true` answered instead by a redirect to a presigned link (valid BIBLIOMQ_S3_PRESIGN_TTL_SECS), which is made without looking the object up.",
        "parameters": [
            path_param("key", "The key as listed (without the server's prefix), `/`s and all: written as they are or as `%2F`.", json!({"type": "string"})),
            query_param("redirect", "Answer with a redirect to a presigned object-storage link.", json!({"type": "boolean"}))
        ],
        "responses": {
            "200": {
                "description": "The object's bytes, with the content type it was stored with (`application/octet-stream` when it has none).",
                "headers": {
                    "Content-Disposition": {"description": "`attachment` with the key's last segment as the file name.", "schema": {"type": "string"}},
                    "Content-Length": {"schema": {"type": "integer"}}
                },
                "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}
            },
            "307": {"description": "Redirect to a presigned link (`?redirect=true`).", "headers": location()},
            "400": error("A bad `redirect` or an unknown parameter (`invalid_query`), or a key that is not UTF-8 (`invalid_path`)."),
            "404": error("No such object (`object_not_found`)."),
            "503": unavailable()
        }
    }))});
    (list, one)
}

fn nullable(schema: Value) -> Value {
    let mut s = schema;
    if let Some(t) = s["type"].as_str() {
        s["type"] = json!([t, "null"]);
    }
    s
}

/// What a title search takes: 1 to `SEARCH_MAX_WORDS` words of up to 100
/// characters, split on white space as Rust's `split_whitespace` reads it
/// (spelled out: a regex's `\s` differs from it in two characters).
fn search_words() -> Value {
    let space = SPACE;
    let word = format!("[^{space}\\u0000-\\u001f\\u007f-\\u009f]{{1,100}}");
    json!({
        "type": "string",
        "pattern": format!("^[{space}]*{word}([{space}]+{word}){{0,{}}}[{space}]*$", SEARCH_MAX_WORDS - 1)
    })
}

/// What `TaskRequest::parse` takes for one action, as a branch of the
/// submission's `oneOf`. Stricter than the parser where a schema cannot say
/// exactly what it takes (numbers in `sum`, the CSV of `report`).
fn payload_of(action: Action) -> Value {
    let number = "-?[0-9]{1,15}(\\.[0-9]{1,15})?";
    let text = json!({"type": "string", "pattern": NO_NUL});
    let schema = match action {
        Action::Echo => schema_ref("JsonWithoutNul"),
        Action::Upper => text.clone(),
        Action::Sum => json!({"anyOf": [
            {"type": "string", "pattern": format!("^\\s*{number}(\\s*[,;]\\s*{number})*\\s*$")},
            {"type": "array", "minItems": 1, "maxItems": SUM_MAX_ITEMS, "items": {"anyOf": [
                {"type": "integer", "minimum": -999_999_999_999_999_i64, "maximum": 999_999_999_999_999_i64},
                {"type": "string", "pattern": format!("^{number}$")}
            ]}}
        ]}),
        Action::Fib => json!({"type": "integer", "minimum": 0, "maximum": FIB_MAX}),
        Action::Sleep => json!({"type": "integer", "minimum": 0, "maximum": SLEEP_MAX_MS}),
        Action::Greet => {
            let name = json!({"type": "string", "maxLength": 100,
                "pattern": format!("^[{SPACE}]*[^{SPACE}\\u0000][^\\u0000]{{0,99}}$")});
            json!({"anyOf": [
                name,
                {"type": "object", "required": ["name"], "additionalProperties": false,
                 "properties": {"name": name, "language": {"type": "string", "enum": ["en", "es"]}}}
            ]})
        }
        Action::Primes => json!({"type": "integer", "minimum": 2, "maximum": PRIMES_MAX}),
        Action::Wordcount => {
            json!({"type": "string", "allOf": [{"pattern": format!("[^{SPACE}]")}, {"pattern": NO_NUL}]})
        }
        Action::Report => json!({
            "type": "object", "required": ["csv", "group_by"], "additionalProperties": false,
            "properties": {
                "csv": {"type": "string", "pattern": NO_NUL, "description": "A header line naming `group_by` (and `sum`), then rows; `sum`'s column holds numbers."},
                "group_by": {"type": "string", "minLength": 1, "pattern": NO_NUL},
                "sum": {"type": "string", "minLength": 1, "pattern": NO_NUL}
            }
        }),
    };
    let mut required = vec!["action"];
    if action != Action::Echo {
        required.push("payload");
    }
    json!({
        "required": required,
        "properties": {"action": {"const": action.as_str()}, "payload": schema}
    })
}

/// What `?keys=` of the event stream takes: 1 to `events::MAX_KEYS`
/// comma-separated patterns of dot-separated words (letters, digits, `-`,
/// `_`), `*` or `#`. Stricter than the server on lengths (up to 8 words of
/// 16 characters, where the server takes 255 bytes), which a regex can
/// bound only word by word.
fn keys_pattern() -> Value {
    let word = "(\\*|#|[A-Za-z0-9_-]{1,16})";
    let key = format!("{word}(\\.{word}){{0,7}}");
    json!({
        "type": "string",
        "pattern": format!("^ *{key}( *, *{key}){{0,{}}} *$", events::MAX_KEYS - 1)
    })
}

/// Text without control characters.
fn plain_text() -> Value {
    json!({"type": "string", "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn uuid() -> Value {
    json!({"type": "string", "format": "uuid"})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn integer() -> Value {
    json!({"type": "integer"})
}

/// An object with exactly these properties, all required unless listed in `optional`.
fn object(properties: Value, optional: &[&str]) -> Value {
    let required: Vec<&String> = properties
        .as_object()
        .map(|p| {
            p.keys()
                .filter(|k| !optional.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties
    })
}

fn schemas() -> Value {
    let mut s = Map::new();
    let mut add = |name: &str, schema: Value| {
        s.insert(name.to_owned(), schema);
    };
    add(
        "Error",
        json!({
            "type": "object",
            "required": ["error"],
            "additionalProperties": false,
            "properties": {"error": {
                "type": "object",
                "description": "Some errors add details: `candidates` (ambiguous_title), `earliest_due_at` (not_available), `idempotency_key`, `state` (result_not_ready, task_failed), ...",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable, for programs to switch on."},
                    "message": {"type": "string", "description": "What went wrong and what to do, for people."},
                    "field": {"type": "string", "description": "The request field at fault."}
                }
            }}
        }),
    );
    add("Health", object(json!({"status": {"const": "ok"}}), &[]));
    let check = json!({"type": "string", "enum": ["ok", "unavailable"]});
    add(
        "Readiness",
        object(
            json!({
                "status": {"type": "string", "enum": ["ready", "unready"]},
                "checks": object(json!({"rabbitmq": check, "postgres": check, "s3": check}), &[]),
                "unavailable": {"type": "array", "items": {"type": "string", "enum": ["rabbitmq", "postgres", "s3"]}}
            }),
            &[],
        ),
    );
    add(
        "JsonWithoutNul",
        json!({
            "description": "Any JSON value without the character U+0000 in a string or key (the database cannot store it).",
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                {"type": "string", "pattern": NO_NUL},
                {"type": "array", "items": schema_ref("JsonWithoutNul")},
                {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": schema_ref("JsonWithoutNul")}
            ]
        }),
    );
    task_schemas(&mut add);
    library_schemas(&mut add);
    web_schemas(&mut add);
    Value::Object(s)
}

fn task_schemas(add: &mut impl FnMut(&str, Value)) {
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    let action = json!({"type": "string", "enum": actions});
    let links = object(json!({"self": string(), "result": string()}), &[]);
    add(
        "TaskSubmission",
        json!({
            "type": "object",
            "required": ["action"],
            "additionalProperties": false,
            "properties": {
                "action": action,
                "payload": {"description": "What the action works on, e.g. `\"1,2,3\"` for sum, `30` for fib, a string for upper."},
                "timeout_ms": {"type": "integer", "minimum": 1, "description": "A time limit for this run, in milliseconds, up to BIBLIOMQ_TASK_TIMEOUT_MAX_MS (the `maximum` here). The action's own limit still applies when lower. Past it the task is stopped and fails with `error_code` `timeout`, not retried."}
            },
            "oneOf": Action::ALL.iter().map(|a| payload_of(*a)).collect::<Vec<_>>()
        }),
    );
    add(
        "TaskAccepted",
        object(
            json!({
                "id": uuid(), "action": action, "state": {"const": "queued"}, "links": links
            }),
            &[],
        ),
    );
    add(
        "ResultObject",
        object(
            json!({
                "bucket": string(), "key": string(), "size": integer(),
                "content_type": string(), "sha256": string()
            }),
            &[],
        ),
    );
    add(
        "Task",
        object(
            json!({
                "id": uuid(),
                "action": action,
                "state": {"type": "string", "enum": TaskState::ALL},
                "attempts": integer(),
                "correlation_id": nullable(string()),
                "created_at": time(),
                "started_at": nullable(time()),
                "finished_at": nullable(time()),
                "updated_at": time(),
                "error": nullable(string()),
                "error_code": {"type": ["string", "null"], "description": "Why it did not succeed, as a stable code: `timeout` (stopped at its time limit), `cancelled`; null otherwise."},
                "cancel_requested_at": {"oneOf": [time(), {"type": "null"}], "description": "When a client asked to cancel it."},
                "payload": {"description": "As submitted."},
                "result": {"description": "The result when small enough to keep inline; null otherwise."},
                "result_object": {"oneOf": [schema_ref("ResultObject"), {"type": "null"}]},
                "result_content_type": nullable(string()),
                "result_size": nullable(integer()),
                "links": links
            }),
            &["payload"],
        ),
    );
    add(
        "TaskCancel",
        object(
            json!({
                "id": uuid(),
                "state": {"type": "string", "enum": ["cancelled", "running"]},
                "stopping": {"type": "boolean", "description": "True while the task still runs and its worker is stopping it."},
                "links": links
            }),
            &[],
        ),
    );
    add(
        "TaskList",
        object(
            json!({
                "tasks": {"type": "array", "items": schema_ref("Task")},
                "next_before": {"oneOf": [uuid(), {"type": "null"}], "description": "Pass as `before` for the next page; null on the last."}
            }),
            &[],
        ),
    );
}

fn library_schemas(add: &mut impl FnMut(&str, Value)) {
    add(
        "LoanRequest",
        json!({
            "type": "object",
            "required": ["patron", "branch"],
            "additionalProperties": false,
            "description": "Give `isbn` or `title`, not both.",
            "oneOf": [
                {"required": ["isbn"], "not": {"required": ["title"]}},
                {"required": ["title"], "not": {"required": ["isbn"]}}
            ],
            "properties": {
                "isbn": isbn(),
                "title": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": format!("^[^\\u0000-\\u001f\\u007f-\\u009f]*[^{SPACE}\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$")},
                "patron": patron(),
                "branch": {"type": "string", "description": "A branch code, see /v1/branches."}
            }
        }),
    );
    add(
        "NewLoan",
        object(
            json!({
                "id": uuid(), "isbn": string(), "title": string(), "patron": string(),
                "copy": {"type": "string", "description": "The copy's barcode."},
                "branch": string(), "loaned_at": time(), "due_at": time(), "renewals": integer()
            }),
            &[],
        ),
    );
    add(
        "LoanReceipt",
        object(
            json!({
                "loan": schema_ref("NewLoan"),
                "replayed": {"type": "boolean"},
                "idempotency_key": string()
            }),
            &[],
        ),
    );
    add(
        "Loan",
        object(
            json!({
                "id": uuid(), "isbn": string(), "title": string(), "patron": string(),
                "copy": string(), "branch": string(), "loaned_at": time(), "due_at": time(),
                "renewals": integer(), "returned_at": nullable(time()), "overdue": {"type": "boolean"}
            }),
            &[],
        ),
    );
    add(
        "CirculationRequest",
        json!({
            "type": "object",
            "required": ["branch"],
            "additionalProperties": false,
            "description": "Give `loan_id`, or `isbn` and `patron`.",
            "oneOf": [
                {"required": ["loan_id"], "not": {"anyOf": [{"required": ["isbn"]}, {"required": ["patron"]}]}},
                {"required": ["isbn", "patron"], "not": {"required": ["loan_id"]}}
            ],
            "properties": {
                "loan_id": uuid(), "isbn": isbn(), "patron": patron(),
                "branch": {"type": "string", "description": "A branch code, see /v1/branches."}
            }
        }),
    );
    add(
        "OperationAccepted",
        object(
            json!({
                "operation_id": uuid(),
                "kind": {"type": "string", "enum": ["renewal", "return"]},
                "state": {"const": "pending"},
                "loan_id": uuid(),
                "branch": string(),
                "tentative_due_at": {"type": "string", "format": "date-time", "description": "Renewals: the due date if it is applied."},
                "links": object(json!({"self": string()}), &[])
            }),
            &["tentative_due_at"],
        ),
    );
    add(
        "Operation",
        object(
            json!({
                "id": uuid(),
                "kind": {"type": "string", "enum": ["loan", "renewal", "return"]},
                "state": {"type": "string", "enum": ["pending", "applied", "rejected"]},
                "reason": nullable(string()),
                "loan_id": {"oneOf": [uuid(), {"type": "null"}]},
                "isbn": nullable(string()),
                "patron": nullable(string()),
                "branch": string(),
                "requested_at": time(),
                "settled_at": nullable(time()),
                "outcome": {"type": ["object", "null"], "description": "Applied: what changed (new due date, ...). Rejected: `code` and `message`."}
            }),
            &[],
        ),
    );
    add(
        "Book",
        object(
            json!({
                "isbn": string(), "title": string(),
                "authors": {"type": "array", "items": string()},
                "published_year": nullable(integer()),
                "branches": {"type": "array", "items": object(json!({
                    "branch": string(), "total": integer(), "available": integer(),
                    "next_due_at": nullable(time())
                }), &[])},
                "copies": {"type": "array", "items": object(json!({
                    "barcode": string(), "branch": string(),
                    "status": {"type": "string", "enum": ["available", "on_loan"]},
                    "due_at": nullable(time()),
                    "loan_id": {"oneOf": [uuid(), {"type": "null"}]}
                }), &[])}
            }),
            &[],
        ),
    );
    add(
        "BookSearch",
        object(
            json!({
                "query": string(),
                "books": {"type": "array", "items": object(json!({
                    "isbn": string(), "title": string(),
                    "authors": {"type": "array", "items": string()},
                    "published_year": nullable(integer()),
                    "total_copies": integer(), "available_copies": integer(),
                    "available_by_branch": {"type": "object", "additionalProperties": integer()}
                }), &[])}
            }),
            &[],
        ),
    );
    add(
        "PatronLoans",
        object(
            json!({
                "patron": string(), "name": string(), "max_loans": integer(),
                "loans": {"type": "array", "items": schema_ref("Loan")}
            }),
            &[],
        ),
    );
    add(
        "Branches",
        object(
            json!({
                "branches": {"type": "array", "items": object(json!({"code": string(), "name": string()}), &[])}
            }),
            &[],
        ),
    );
}

fn web_schemas(add: &mut impl FnMut(&str, Value)) {
    let number =
        json!({"type": "number", "description": "Messages per second, as RabbitMQ averages it."});
    let count = json!({"type": "integer", "minimum": 0});
    add(
        "EventStreamReady",
        json!({
            "description": "The data of the `ready` event of /v1/events/stream.",
            "type": "object",
            "additionalProperties": false,
            "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": string(), "description": "The patterns followed."}}
        }),
    );
    add(
        "EventStreamEvent",
        json!({
            "description": "The data of each other event of /v1/events/stream.",
            "type": "object",
            "additionalProperties": false,
            "required": ["routing_key", "event"],
            "properties": {
                "routing_key": string(),
                "event": {"description": "The outcome event as published: its JSON, or its text when it is not JSON."}
            }
        }),
    );
    add(
        "DashboardQueues",
        object(
            json!({
                "vhost": string(),
                "queues": {"type": "array", "items": object(json!({
                    "name": string(),
                    "type": {"type": "string", "description": "`quorum`, `classic` or `stream`."},
                    "messages_ready": count, "messages_unacknowledged": count, "consumers": count,
                    "publish_rate": number, "deliver_rate": number, "ack_rate": number
                }), &[])},
                "temporary_queues": count,
                "publish_rate": number, "deliver_rate": number
            }),
            &[],
        ),
    );
    let by_state: Map<String, Value> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), count.clone()))
        .collect();
    add(
        "DashboardTasks",
        object(
            json!({"by_state": object(Value::Object(by_state), &[]), "total": count}),
            &[],
        ),
    );
    add(
        "DashboardCirculation",
        object(
            json!({
                "minutes": integer(),
                "until": {"type": "string", "format": "date-time", "description": "The end of the window: now."},
                "branches": {"type": "array", "items": object(json!({
                    "branch": string(),
                    "name": string(),
                    "per_minute": {"type": "array", "items": count, "description": "Settled operations per minute, oldest first: `minutes` of them."},
                    "applied": count,
                    "rejected": count
                }), &[])},
                "by_kind": {"type": "array", "items": object(json!({
                    "kind": {"type": "string", "enum": ["loan", "renewal", "return"]},
                    "outcome": {"type": "string", "enum": ["applied", "rejected"]},
                    "count": count
                }), &[])}
            }),
            &[],
        ),
    );
    add(
        "ObjectList",
        object(
            json!({
                "bucket": string(),
                "prefix": string(),
                "order": {"type": "string", "enum": ["key", "newest"]},
                "objects": {"type": "array", "items": object(json!({
                    "key": {"type": "string", "description": "Without the server's prefix."},
                    "size": count,
                    "last_modified": nullable(time()),
                    "download": {"type": "string", "description": "Its path under /v1/objects."}
                }), &[])},
                "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last."},
                "scanned": {"type": "integer", "description": "`newest` only: how many keys were read to order them."},
                "scan_complete": {"type": "boolean", "description": "`newest` only: false when more keys exist than were read."}
            }),
            &["scanned", "scan_complete"],
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_points_at_a_described_schema() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"").skip(1) {
            let target = piece.split('"').next().unwrap_or_default();
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn every_operation_has_an_id_and_a_success_answer() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["operationId"].is_string(), "{method} {path}");
                let codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
                assert!(
                    codes.iter().any(|c| c.starts_with('2')),
                    "{method} {path}: {codes:?}"
                );
            }
        }
    }
}
