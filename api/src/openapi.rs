//! The OpenAPI 3.1 description of the whole HTTP API, served at
//! `GET /openapi.json`.
//!
//! The document is generated: each handler's `#[utoipa::path]` gives its
//! operation (parameters, body, answers with their statuses and content
//! types), the request and answer types give the schemas (`ToSchema`,
//! `IntoParams`), and the routes are registered from the same annotations
//! ([`crate::routing::Routes`]), so a route cannot be served undocumented.
//! [`crate::routes`] collects them; this module only finishes the document:
//!
//! - what every operation under `/v1` shares (the bearer token, the
//!   correlation id, 401, 500 and 504 answers) and every 503 (`Retry-After`),
//!   written once here instead of on each handler;
//! - answers are closed (`additionalProperties: false`): the server sends
//!   exactly the fields their types have. A type that flattens another
//!   (`Task` flattens the task's row) is written out as one object, since
//!   `allOf` parts cannot each be closed;
//! - what a derive cannot say: the payload each task action takes (one
//!   `oneOf` branch per action, from the same limits the parser checks), and
//!   which fields of a loan, renewal or return go together.
//!
//! OpenAPI 3.1 schemas are JSON Schema 2020-12, so a stock validator reads
//! them as they are. What keeps the document true is the end-to-end test
//! (`testkit/tests/e2e/openapi.rs`), which calls every operation and
//! validates each answer against it, and the contract fuzzer
//! (`testkit/tests/e2e/contract.rs`).

use std::collections::BTreeSet;

use bibliomq_core::{
    schema::{NO_NUL, SPACE},
    tasks::{Action, FIB_MAX, PRIMES_MAX, SLEEP_MAX_MS, SUM_MAX_ITEMS},
};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bibliomq",
        description = "Tasks (submit, follow, fetch results) and library circulation (loans, renewals, returns, catalogue) over RabbitMQ, PostgreSQL and S3. Every error has the body `{\"error\": {\"code\", \"message\", \"field\"?}}`; every response carries `x-correlation-id`. With `BIBLIOMQ_AUTH=on`, `/v1/*` needs an API key, `Authorization: Bearer <key>`: 401 without a valid one, 403 when its role does not cover the request, 429 past its rate. With it off (the development default), when the server has `BIBLIOMQ_API_TOKEN` set, `/v1/*` needs `Authorization: Bearer <token>`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    servers((url = "/")),
    tags(
        (name = "tasks", description = "Jobs run by the workers"),
        (name = "library", description = "Loans, renewals, returns and the catalogue"),
        (name = "catalogue", description = "Adding and changing titles; adding and withdrawing copies"),
        (name = "patrons", description = "Adding, changing, blocking and finding patrons"),
        (name = "holds", description = "Holds on titles with no copy at hand: the queue, the hold shelf, pickups"),
        (name = "keys", description = "Who is calling; API keys and their roles (admins)"),
        (name = "web", description = "What the web pages show beyond the rest of the API: live events, dashboard figures, the results bucket"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct Description;

/// The document as served, from the operations and schemas the routes
/// collected.
pub fn finish(routes: utoipa::openapi::OpenApi) -> Value {
    let mut doc = Description::openapi().merge_from(routes);
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    catch_all_paths(&mut doc);
    shared_answers(&mut doc);
    close_answers(&mut doc);
    task_payloads(&mut doc);
    circulation_choices(&mut doc);
    replay_choices(&mut doc);
    doc
}

/// The document with `branch` in request bodies limited to the configured
/// branch codes, as the server limits it.
pub fn with_branches(mut doc: Value, branches: &[&str]) -> Value {
    for schema in ["LoanRequest", "CirculationRequest", "NewCopy"] {
        if let Some(branch) =
            doc.pointer_mut(&format!("/components/schemas/{schema}/properties/branch"))
        {
            branch["enum"] = json!(branches);
        }
    }
    if let Some(branch) =
        doc.pointer_mut("/components/schemas/HoldRequest/properties/pickup_branch")
    {
        branch["enum"] = json!(branches);
    }
    doc
}

/// The document with `timeout_ms` limited to the configured maximum, as the
/// server limits it.
pub fn with_timeout_max(mut doc: Value, max: std::time::Duration) -> Value {
    for name in ["TaskSubmission", "TaskBatchItem"] {
        if let Some(timeout) =
            doc.pointer_mut(&format!("/components/schemas/{name}/properties/timeout_ms"))
        {
            timeout["maximum"] = json!(u64::try_from(max.as_millis()).unwrap_or(u64::MAX));
        }
    }
    doc
}

/// The document with `delay_ms` limited to the configured maximum, as the
/// server limits it.
pub fn with_delay_max(mut doc: Value, max: std::time::Duration) -> Value {
    for name in ["TaskSubmission", "TaskBatchItem"] {
        if let Some(delay) =
            doc.pointer_mut(&format!("/components/schemas/{name}/properties/delay_ms"))
        {
            delay["maximum"] = json!(u64::try_from(max.as_millis()).unwrap_or(u64::MAX));
        }
    }
    doc
}

/// OpenAPI has no catch-all parameter: axum's `{*key}` (a value that may
/// hold `/`s) is a plain `{key}` there.
fn catch_all_paths(doc: &mut Value) {
    if let Some(paths) = doc["paths"].as_object_mut() {
        *paths = std::mem::take(paths)
            .into_iter()
            .map(|(path, item)| (path.replace("{*", "{"), item))
            .collect();
    }
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// What operations under `/v1` share: they may ask for the token, time out,
/// or fail on our side; they take a correlation id. Every 503 says when to
/// retry.
fn shared_answers(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let v1 = path.starts_with("/v1/");
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let responses = &mut op["responses"];
            if let Some(unavailable) = responses.get_mut("503") {
                unavailable["headers"] = json!({"Retry-After": {"schema": {"type": "string"}}});
            }
            if !v1 {
                continue;
            }
            responses["401"] = error(
                "BIBLIOMQ_AUTH=on and no valid key (`unauthorized`: none, unknown, revoked); or, with it off, a token is configured and the request has none or the wrong one.",
            );
            responses["403"] = error(
                "The key's role, branch or patron does not cover this (`forbidden`, with `required_roles` and `role`).",
            );
            responses["429"] = error(
                "The key made too many requests (`rate_limited`, with `retry_after`); try again after `Retry-After` seconds.",
            );
            responses["429"]["headers"] = json!({"Retry-After": {"schema": {"type": "string"}}});
            responses["500"] =
                error("Our failure (`internal`); the details are in the server's log.");
            responses["504"] = error(
                "The request took longer than BIBLIOMQ_API_REQUEST_TIMEOUT_MS (`request_timeout`), or the loan service did not answer in time (`timeout`).",
            );
            op["security"] = json!([{}, {"bearer": []}]);
            let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
            params.push(json!({"$ref": "#/components/parameters/CorrelationId"}));
            op["parameters"] = Value::Array(params);
        }
    }
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`bmq_<id>_<secret>`, from `bibliomq-api keys create`), required on /v1/* with BIBLIOMQ_AUTH=on; with it off, the shared BIBLIOMQ_API_TOKEN when the server sets one."
        }
    });
    components["parameters"] = json!({
        "CorrelationId": {
            "name": "x-correlation-id",
            "in": "header",
            "required": false,
            "description": "Your id for this request; it follows the work through the broker into logs and rows. One is made when absent.",
            "schema": {"type": "string"}
        }
    });
}

/// Answers have exactly the fields of their types: every component object
/// without a rule for other members gets `additionalProperties: false`
/// (request bodies already have it, from `deny_unknown_fields`), and a type
/// that flattens another is written out as one object. Schemas that only
/// served as flattened parts are dropped.
fn close_answers(doc: &mut Value) {
    let Some(schemas) = doc["components"]["schemas"].as_object().cloned() else {
        return;
    };
    let mut merged_away = BTreeSet::new();
    let mut out = Map::new();
    for (name, schema) in &schemas {
        let mut schema = schema.clone();
        if let Some(parts) = schema["allOf"].as_array().cloned() {
            schema = merge_parts(&parts, &schemas, &mut merged_away);
        }
        if name == "ErrorBody" {
            // The details (`ErrorBody::details`, flattened) are typed, so the
            // error object is closed like any answer: these are all the
            // members it may have.
            schema["description"] = json!(
                "Some errors add details: `candidates` (ambiguous_title), `earliest_due_at` (not_available), `open_loans` and `max_loans` (loan_limit_reached), `idempotency_key` (a refused loan), `state` (result_not_ready, task_failed), `required_roles` and `role` (forbidden), `retry_after` (rate_limited)."
            );
        }
        close(&mut schema);
        out.insert(name.clone(), schema);
    }
    for name in merged_away {
        let pointer = format!("\"#/components/schemas/{name}\"");
        let used = doc["paths"].to_string().contains(&pointer)
            || out
                .iter()
                .any(|(n, s)| n != &name && s.to_string().contains(&pointer));
        if !used {
            out.remove(&name);
        }
    }
    doc["components"]["schemas"] = Value::Object(out);
}

/// One object of `allOf` parts: each a `$ref` to a component object or an
/// object itself.
fn merge_parts(
    parts: &[Value],
    schemas: &Map<String, Value>,
    refs: &mut BTreeSet<String>,
) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut description = None;
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(target) => {
                let name = target.trim_start_matches("#/components/schemas/");
                refs.insert(name.to_owned());
                schemas.get(name).cloned().unwrap_or_default()
            }
            None => part.clone(),
        };
        // A flattened field with a description of its own is written as a
        // `oneOf` of one object (`ErrorBody`'s details): that object.
        let part = match part["oneOf"].as_array() {
            Some(only) if only.len() == 1 => only[0].clone(),
            _ => part,
        };
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        if let Some(r) = part["required"].as_array() {
            required.extend(r.iter().cloned());
        }
        if description.is_none() {
            description = part.get("description").cloned();
        }
    }
    let mut merged = json!({"type": "object", "required": required, "properties": properties});
    if let Some(d) = description {
        merged["description"] = d;
    }
    merged
}

/// Closes `schema` and the objects nested in its properties and items.
fn close(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties") && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(close);
    }
    if let Some(items) = object.get_mut("items") {
        close(items);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(choices)) = object.get_mut(key) {
            choices.iter_mut().for_each(close);
        }
    }
}

/// What `TaskRequest::parse` takes, action by action, as branches of the
/// submission's `oneOf`; and `JsonWithoutNul`, what `echo` takes.
fn task_payloads(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["JsonWithoutNul"] = json!({
        "description": "Any JSON value without the character U+0000 in a string or key (the database cannot store it).",
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": NO_NUL},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonWithoutNul"}},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}}
        ]
    });
    // A batch item takes what a single submission takes.
    for name in ["TaskSubmission", "TaskBatchItem"] {
        let submission = &mut schemas[name];
        if submission.is_object() {
            submission["oneOf"] =
                Value::Array(Action::ALL.iter().map(|a| payload_of(*a)).collect());
        }
    }
    // From 1 to BATCH_MAX items, which utoipa cannot say of a `Vec` body.
    if let Some(batch) = doc
        .pointer_mut("/paths/~1v1~1tasks~1batch/post/requestBody/content/application~1json/schema")
        && batch.is_object()
    {
        batch["minItems"] = json!(1);
        batch["maxItems"] = json!(bibliomq_core::commands::BATCH_MAX);
    }
}

/// What one action takes. Stricter than the parser where a schema cannot
/// say exactly what it takes (numbers in `sum`, the CSV of `report`).
fn payload_of(action: Action) -> Value {
    let number = "-?[0-9]{1,15}(\\.[0-9]{1,15})?";
    let text = json!({"type": "string", "pattern": NO_NUL});
    let schema = match action {
        Action::Echo => json!({"$ref": "#/components/schemas/JsonWithoutNul"}),
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

/// Which fields go together: a loan or a hold names its title by `isbn` or
/// by `title`; a renewal or return names its loan by `loan_id`, or by `isbn`
/// and `patron`.
fn circulation_choices(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    // A hold names its title the same way as a loan.
    for name in ["LoanRequest", "HoldRequest"] {
        if schemas[name].is_object() {
            schemas[name]["oneOf"] = json!([
                {"required": ["isbn"], "not": {"required": ["title"]}},
                {"required": ["title"], "not": {"required": ["isbn"]}}
            ]);
        }
    }
    if schemas["CirculationRequest"].is_object() {
        schemas["CirculationRequest"]["oneOf"] = json!([
            {"required": ["loan_id"], "not": {"anyOf": [{"required": ["isbn"]}, {"required": ["patron"]}]}},
            {"required": ["isbn", "patron"], "not": {"required": ["loan_id"]}}
        ]);
    }
}

/// A replay names its dead letters by `ids`, or takes them `all`.
fn replay_choices(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    if schemas["DeadLetterReplayRequest"].is_object() {
        schemas["DeadLetterReplayRequest"]["oneOf"] = json!([
            {"required": ["ids"], "not": {"required": ["all"]}},
            {"required": ["all"], "properties": {"all": {"const": true}}, "not": {"required": ["ids"]}}
        ]);
    }
}
