//! The generated document: it describes exactly what the router serves,
//! and it says the constraints the server enforces.

use std::collections::BTreeSet;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use bibliomq_core::{
    commands::{CIRCULATION_MAX_MINUTES, LIST_MAX, SEARCH_MAX_LIMIT, SEARCH_MAX_WORDS},
    config::ApiToken,
    schema::{ISBN_PATTERN, PATRON_PATTERN},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::document;
use crate::ui::objects::MAX_LIMIT as OBJECTS_MAX_LIMIT;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

fn operations(doc: &Value) -> BTreeSet<(String, Method)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((path.clone(), method.to_uppercase().parse().unwrap()));
        }
    }
    ops
}

/// A concrete path for a template.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "0190b3c4-0000-7000-8000-000000000000")
        .replace("{isbn}", "9788437604947")
        .replace("{key}", "results/none.json")
}

/// Every documented operation is served and every other method of its path
/// is refused by the router itself (405): routes and document come from the
/// same annotations, and this holds them to it. With a token configured,
/// `/v1` operations answer 401 before any handler runs, so nothing needs a
/// service; an unknown path would get the router's own 404 instead.
#[tokio::test]
async fn the_router_serves_exactly_the_documented_operations() {
    let state = crate::ui::tests::state_with(|s| s.api.token = Some(ApiToken("secret".into())));
    let router = crate::router(state);
    let doc = document();
    let documented = operations(&doc);
    assert!(documented.len() >= 23, "{documented:?}");
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in METHODS {
            // The open routes' handlers would probe services: their
            // documented methods are checked by the end-to-end test.
            if !path.starts_with("/v1/") && method == Method::GET {
                continue;
            }
            let response = router
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method.clone())
                        .uri(concrete(path))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let expected = if documented.contains(&(path.clone(), method.clone())) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::METHOD_NOT_ALLOWED
            };
            assert_eq!(response.status(), expected, "{method} {path}");
        }
    }
    assert_eq!(
        super::paths().len(),
        doc["paths"].as_object().unwrap().len()
    );
}

#[test]
fn the_document_is_openapi_3_1_with_the_same_operation_ids_and_tags() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "tasks",
        "library",
        "catalogue",
        "patrons",
        "web",
        "operations",
    ] {
        assert!(tags.contains(&expected), "{tags:?}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_owned()), "{method} {path}: {id} twice");
            let tag = op["tags"][0].as_str().unwrap_or_default();
            assert!(tags.contains(&tag), "{method} {path}: {tag}");
            let codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                codes.iter().any(|c| c.starts_with('2')),
                "{method} {path}: {codes:?}"
            );
        }
    }
    assert!(ids.contains("submitTask") && ids.contains("makeLoan") && ids.contains("openapi"));
}

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

fn schema<'d>(doc: &'d Value, name: &str) -> &'d Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

fn parameter<'d>(doc: &'d Value, path: &str, name: &str) -> &'d Value {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{path}: no parameter {name}"))
}

#[test]
fn the_document_says_the_constraints_the_server_enforces() {
    let doc = document();
    // ISBNs: pattern and format, in the path and in request bodies.
    let isbn = &parameter(&doc, "/v1/books/{isbn}", "isbn");
    assert_eq!(isbn["required"], true);
    assert_eq!(isbn["schema"]["pattern"], ISBN_PATTERN);
    assert_eq!(isbn["schema"]["format"], "isbn");
    for body in ["LoanRequest", "CirculationRequest"] {
        let s = schema(&doc, body);
        assert_eq!(s["properties"]["isbn"]["pattern"], ISBN_PATTERN, "{body}");
        assert_eq!(
            s["properties"]["patron"]["pattern"], PATRON_PATTERN,
            "{body}"
        );
        assert_eq!(s["additionalProperties"], false, "{body}");
        assert_eq!(s["oneOf"].as_array().map(Vec::len), Some(2), "{body}");
    }
    assert_eq!(
        schema(&doc, "LoanRequest")["required"],
        json!(["patron", "branch"])
    );
    assert_eq!(
        schema(&doc, "CirculationRequest")["required"],
        json!(["branch"])
    );
    // Ids that are UUIDs.
    for path in ["/v1/tasks/{id}", "/v1/loans/{id}", "/v1/operations/{id}"] {
        let id = parameter(&doc, path, "id");
        assert_eq!(id["required"], true, "{path}");
        assert_eq!(id["schema"]["format"], "uuid", "{path}");
    }
    assert_eq!(
        schema(&doc, "CirculationRequest")["properties"]["loan_id"]["format"],
        "uuid"
    );
    assert_eq!(
        parameter(&doc, "/v1/patrons/{id}/loans", "id")["schema"]["pattern"],
        PATRON_PATTERN
    );
    // Task submissions: the action from its list, a payload per action, nothing else.
    let submission = schema(&doc, "TaskSubmission");
    assert_eq!(submission["additionalProperties"], false);
    assert_eq!(submission["required"], json!(["action"]));
    assert_eq!(
        submission["oneOf"].as_array().map(Vec::len),
        Some(bibliomq_core::tasks::Action::ALL.len())
    );
    // Ranges, from the constants the server checks.
    let limit = |path: &str, name: &str| parameter(&doc, path, name)["schema"].clone();
    assert_eq!(limit("/v1/tasks", "limit")["maximum"], LIST_MAX);
    assert_eq!(limit("/v1/books", "limit")["maximum"], SEARCH_MAX_LIMIT);
    assert_eq!(
        limit("/v1/dashboard/circulation", "minutes")["maximum"],
        CIRCULATION_MAX_MINUTES
    );
    assert_eq!(limit("/v1/objects", "limit")["maximum"], OBJECTS_MAX_LIMIT);
    let title = parameter(&doc, "/v1/books", "title");
    assert_eq!(title["required"], true);
    let words = title["schema"]["pattern"].as_str().unwrap();
    assert!(
        words.contains(&format!("{{0,{}}}", SEARCH_MAX_WORDS - 1)),
        "{words}"
    );
    assert!(
        parameter(&doc, "/v1/events/stream", "keys")["schema"]["pattern"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "{{0,{}}}",
                bibliomq_core::commands::EVENT_PATTERNS_MAX - 1
            ))
    );
    // Enums from the code's own lists.
    assert_eq!(
        limit("/v1/tasks", "state")["enum"],
        json!(bibliomq_core::tasks::TaskState::ALL)
    );
    // Answers are closed and say their fields.
    for answer in ["Task", "Loan", "Book", "OperationAccepted", "Readiness"] {
        assert_eq!(
            schema(&doc, answer)["additionalProperties"],
            false,
            "{answer}"
        );
    }
    let task = schema(&doc, "Task");
    for field in ["id", "state", "links", "result", "result_object", "error"] {
        assert!(
            task["required"].as_array().unwrap().contains(&json!(field)),
            "Task.{field} is always sent"
        );
    }
    // Errors: a status and the error body on each.
    let submit = &doc["paths"]["/v1/tasks"]["post"]["responses"];
    for status in ["400", "401", "413", "415", "422", "500", "503", "504"] {
        assert_eq!(
            submit[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{status}"
        );
    }
    assert!(submit["503"]["headers"]["Retry-After"].is_object());
    // Content types other than JSON.
    let stream = &doc["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"];
    assert!(stream["text/event-stream"].is_object());
    let download = &doc["paths"]["/v1/objects/{key}"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        download["*/*"]["schema"]["contentMediaType"],
        "application/octet-stream"
    );
    let result = &doc["paths"]["/v1/tasks/{id}/result"]["get"]["responses"]["200"]["content"];
    assert!(result["application/json"].is_object() && result["text/csv"].is_object());
}

#[test]
fn branches_in_request_bodies_are_the_configured_ones() {
    let doc = crate::openapi::with_branches(document(), &["central", "norte"]);
    for body in ["LoanRequest", "CirculationRequest"] {
        assert_eq!(
            schema(&doc, body)["properties"]["branch"]["enum"],
            json!(["central", "norte"])
        );
    }
}
