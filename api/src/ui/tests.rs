//! Router tests of the pages and of the checks the UI's JSON routes make
//! before they touch any service: no socket, no RabbitMQ, PostgreSQL or S3
//! (the state points at addresses where nothing listens).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use bibliomq_core::{
    broker::{Broker, Publisher, Topology},
    clock::Clock,
    commands::Commands,
    config::Settings,
    db,
    metrics::Metrics,
    storage::ObjectStore,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::AppState;

pub(crate) fn state() -> AppState {
    state_with(|_| {})
}

/// As [`state`], with the settings changed by `change` first.
pub(crate) fn state_with(change: impl FnOnce(&mut Settings)) -> AppState {
    let mut settings = Settings::from_lookup(|key| match key {
        // Port 9 (discard) on loopback: nothing answers, nothing is touched.
        "BIBLIOMQ_AMQP_URL" => Some("amqp://guest:guest@127.0.0.1:9/%2f".into()),
        "BIBLIOMQ_DATABASE_URL" => Some("postgres://postgres@127.0.0.1:9/none".into()),
        "BIBLIOMQ_S3_ENDPOINT" => Some("http://127.0.0.1:9".into()),
        "BIBLIOMQ_RABBITMQ_MGMT_URL" => Some("http://rabbit.example:15672/?a=<b>".into()),
        "BIBLIOMQ_BRANCHES" => Some("central=Biblioteca <Central>,norte=Norte".into()),
        _ => None,
    })
    .unwrap();
    change(&mut settings);
    let metrics = Metrics::new();
    let broker = Broker::start(
        &settings.amqp.url,
        "ui-test",
        Topology::new(&settings.tasks),
    );
    let publisher = Publisher::new(
        broker.clone(),
        settings.amqp.confirm_timeout,
        metrics.clone(),
    );
    let commands = Commands::new(
        db::pool(&settings.database).unwrap(),
        publisher,
        ObjectStore::new(&settings.s3),
        settings.clone(),
        metrics.clone(),
        Clock::system(),
    );
    AppState::new(
        commands,
        crate::Shared {
            metrics,
            broker,
            settings: Arc::new(settings),
            stopping: CancellationToken::new(),
        },
    )
}

async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = crate::router(state())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_root_sends_people_to_the_front_desk() {
    for path in ["/", "/ui", "/ui/"] {
        let (status, headers, _) = get(path).await;
        assert!(status.is_redirection(), "{path}: {status}");
        assert_eq!(headers[header::LOCATION], "/ui/desk", "{path}");
    }
}

#[tokio::test]
async fn every_page_is_html_with_its_script_the_navigation_and_a_strict_policy() {
    let pages = [
        ("/ui/desk", "desk.js", "Front desk"),
        ("/ui/books/9788437604947", "book.js", "Front desk"),
        ("/ui/patrons/ana", "patron.js", "Front desk"),
        ("/ui/tasks", "tasks.js", "Tasks"),
        (
            "/ui/tasks/0191e5a0-0000-7000-8000-000000000000",
            "tasks.js",
            "Tasks",
        ),
        ("/ui/dashboard", "dashboard.js", "Dashboard"),
        ("/ui/objects", "objects.js", "Objects"),
        ("/ui/titles/new", "titles.js", "Add a title"),
        ("/ui/patrons", "patrons.js", "Patrons"),
    ];
    for (path, script, current) in pages {
        let (status, headers, html) = get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            html.contains(&format!(r#"src="/ui/assets/{script}""#)),
            "{path}"
        );
        assert!(
            html.contains(&format!(r#"aria-current="page">{current}</a>"#)),
            "{path} marks {current} as the current page"
        );
        assert!(!html.contains("{{"), "{path} has an unfilled placeholder");
        assert!(
            html.contains(r#"id="banner""#),
            "{path} has the health banner"
        );
    }
}

#[tokio::test]
async fn forms_offer_the_configured_branches_and_every_input_has_a_label() {
    let (_, _, html) = get("/ui/desk").await;
    assert!(
        html.contains(r#"<option value="central">Biblioteca &lt;Central&gt;</option>"#),
        "branch names are escaped"
    );
    for id in html
        .split(r#"<input id=""#)
        .skip(1)
        .chain(html.split(r#"<select id=""#).skip(1))
        .filter_map(|rest| rest.split('"').next())
    {
        assert!(
            html.contains(&format!(r#"<label for="{id}">"#)),
            "`{id}` has no label"
        );
    }
}

#[tokio::test]
async fn the_task_form_offers_every_action_the_api_knows() {
    let (_, _, html) = get("/ui/tasks").await;
    for action in bibliomq_core::tasks::Action::ALL {
        assert!(
            html.contains(&format!(r#"<option value="{action}""#)),
            "{action}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_links_the_rabbitmq_ui_and_stands_in_for_a_missing_console() {
    let (_, _, html) = get("/ui/dashboard").await;
    assert!(
        html.contains(r#"href="http://rabbit.example:15672/?a=&lt;b&gt;""#),
        "the configured management URL, escaped"
    );
    assert!(html.contains(r#"href="/ui/objects">Object browser"#));
}

#[tokio::test]
async fn assets_are_served_with_their_type_and_unknown_ones_are_not() {
    let (status, headers, js) = get("/ui/assets/common.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(js.contains("export function h("));
    let (status, headers, _) = get("/ui/assets/style.css").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    let (status, _, _) = get("/ui/assets/../../Cargo.toml").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get("/ui/assets/nothing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_unknown_page_is_a_page_that_says_so() {
    let (status, headers, html) = get("/ui/nowhere/at/all").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(html.contains("Page not found"));
}

#[tokio::test]
async fn pages_load_only_scripts_that_exist() {
    for path in [
        "/ui/desk",
        "/ui/tasks",
        "/ui/dashboard",
        "/ui/objects",
        "/ui/titles/new",
        "/ui/patrons",
        "/ui/x",
    ] {
        let (_, _, html) = get(path).await;
        let script = html
            .split(r#"src="/ui/assets/"#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let (status, _, _) = get(&format!("/ui/assets/{script}")).await;
        assert_eq!(status, StatusCode::OK, "{path} loads {script}");
    }
}

async fn json_error(path: &str) -> (StatusCode, Value) {
    let (status, _, body) = get(path).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn the_ui_json_routes_refuse_bad_parameters_before_touching_any_service() {
    let cases = [
        ("/v1/events/stream?keys=task..x", "invalid_keys"),
        ("/v1/dashboard/circulation?minutes=0", "invalid_minutes"),
        ("/v1/dashboard/circulation?minutes=99999", "invalid_minutes"),
        ("/v1/objects?order=sideways", "invalid_order"),
        ("/v1/objects?limit=0", "invalid_limit"),
        ("/v1/objects?order=newest&cursor=abc", "invalid_cursor"),
    ];
    for (path, code) in cases {
        let (status, body) = json_error(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
    }
}

#[tokio::test]
async fn queue_figures_say_when_the_management_api_cannot_be_reached() {
    let (status, body) = json_error("/v1/dashboard/queues").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "management_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("management plugin"),
        "{body}"
    );
}
