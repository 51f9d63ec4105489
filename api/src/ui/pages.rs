//! The pages: one shared layout around each page's body, and the scripts and
//! style sheet they load. Everything is compiled in with `include_str!`.
//!
//! Pages hold no data: their scripts fetch it from the JSON API, so a page
//! never shows something the API would not say. The only values put into the
//! HTML here come from the configuration (branches, actions, links), escaped.

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use bibliomq_core::tasks::Action;

use crate::AppState;

const LAYOUT: &str = include_str!("assets/layout.html");

/// Scripts and style sheets under `/ui/assets/`: name, content type, text.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", CSS, include_str!("assets/style.css")),
    ("common.js", JS, include_str!("assets/common.js")),
    ("forms.js", JS, include_str!("assets/forms.js")),
    ("desk.js", JS, include_str!("assets/desk.js")),
    ("book.js", JS, include_str!("assets/book.js")),
    ("patron.js", JS, include_str!("assets/patron.js")),
    ("tasks.js", JS, include_str!("assets/tasks.js")),
    ("dashboard.js", JS, include_str!("assets/dashboard.js")),
    ("objects.js", JS, include_str!("assets/objects.js")),
    ("plain.js", JS, include_str!("assets/plain.js")),
    ("admin.js", JS, include_str!("assets/admin.js")),
    ("titles.js", JS, include_str!("assets/titles.js")),
    ("patrons.js", JS, include_str!("assets/patrons.js")),
];
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Only our own scripts, styles and API: injected markup could not run or
/// send anything elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(to_desk))
        .route("/ui", get(to_desk))
        .route("/ui/", get(to_desk))
        .route("/ui/desk", get(desk))
        .route("/ui/books/{isbn}", get(book))
        .route("/ui/patrons/{id}", get(patron))
        .route("/ui/titles/new", get(new_title))
        .route("/ui/patrons", get(patrons))
        .route("/ui/tasks", get(tasks))
        .route("/ui/tasks/{id}", get(task))
        .route("/ui/dashboard", get(dashboard))
        .route("/ui/objects", get(objects))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*rest}", get(missing))
}

async fn to_desk() -> Redirect {
    Redirect::to("/ui/desk")
}

/// A page: its title, which navigation entry it belongs to, its script and body.
struct Page<'a> {
    title: &'a str,
    nav: &'a str,
    script: &'a str,
    body: String,
}

impl Page<'_> {
    fn render(self, state: &AppState, status: StatusCode) -> Response {
        let mut html = LAYOUT
            .replace("{{title}}", &escape(self.title))
            .replace("{{script}}", self.script)
            .replace(
                "{{auth}}",
                if state.settings.auth.enabled {
                    "on"
                } else {
                    "off"
                },
            )
            .replace("{{branch_names}}", &branch_options(state));
        for nav in ["desk", "titles", "patrons", "tasks", "dashboard", "objects"] {
            let current = if nav == self.nav {
                r#" aria-current="page""#
            } else {
                ""
            };
            html = html.replace(&format!("{{{{current_{nav}}}}}"), current);
        }
        let html = html.replace("{{body}}", &self.body);
        let mut response = (status, html).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        response
    }
}

/// `<option>`s of the configured branches.
fn branch_options(state: &AppState) -> String {
    state
        .commands
        .branches()
        .iter()
        .map(|b| {
            format!(
                r#"<option value="{}">{}</option>"#,
                escape(&b.code),
                escape(&b.name)
            )
        })
        .collect()
}

fn with_branches(state: &AppState, body: &str) -> String {
    body.replace("{{branch_options}}", &branch_options(state))
}

async fn desk(State(state): State<AppState>) -> Response {
    Page {
        title: "Front desk",
        nav: "desk",
        script: "desk.js",
        body: with_branches(&state, include_str!("assets/desk.html")),
    }
    .render(&state, StatusCode::OK)
}

async fn book(State(state): State<AppState>, Path(_isbn): Path<String>) -> Response {
    // The script reads the ISBN from the address and asks the API, which
    // says whether it is one.
    Page {
        title: "Book",
        nav: "desk",
        script: "book.js",
        body: with_branches(&state, include_str!("assets/book.html")),
    }
    .render(&state, StatusCode::OK)
}

async fn patron(State(state): State<AppState>, Path(_id): Path<String>) -> Response {
    Page {
        title: "Patron",
        nav: "desk",
        script: "patron.js",
        body: with_branches(&state, include_str!("assets/patron.html")),
    }
    .render(&state, StatusCode::OK)
}

/// Adding a title with its copies.
async fn new_title(State(state): State<AppState>) -> Response {
    Page {
        title: "Add a title",
        nav: "titles",
        script: "titles.js",
        body: with_branches(&state, include_str!("assets/titles.html")),
    }
    .render(&state, StatusCode::OK)
}

/// Finding, changing, blocking and adding patrons.
async fn patrons(State(state): State<AppState>) -> Response {
    Page {
        title: "Patrons",
        nav: "patrons",
        script: "patrons.js",
        body: include_str!("assets/patrons.html").to_owned(),
    }
    .render(&state, StatusCode::OK)
}

/// The actions as `<option>`s, each with its one-line description, straight
/// from the command layer, so the page offers exactly what the API accepts.
fn action_options() -> String {
    Action::ALL
        .iter()
        .map(|a| {
            format!(
                r#"<option value="{0}" data-hint="{1}">{0}</option>"#,
                a.as_str(),
                escape(a.describe())
            )
        })
        .collect()
}

async fn tasks(State(state): State<AppState>) -> Response {
    Page {
        title: "Tasks",
        nav: "tasks",
        script: "tasks.js",
        body: include_str!("assets/tasks.html").replace("{{action_options}}", &action_options()),
    }
    .render(&state, StatusCode::OK)
}

async fn task(State(state): State<AppState>, Path(_id): Path<String>) -> Response {
    Page {
        title: "Task",
        nav: "tasks",
        script: "tasks.js",
        body: include_str!("assets/task.html").to_owned(),
    }
    .render(&state, StatusCode::OK)
}

async fn dashboard(State(state): State<AppState>) -> Response {
    let settings = &state.settings.dashboard;
    let console = if settings.s3_console_url.is_empty() {
        r#"<a href="/ui/objects">Object browser</a> <span class="muted">(the S3 server has no console of its own)</span>"#.to_owned()
    } else {
        format!(
            r#"<a href="{0}" rel="noopener" target="_blank">Object-store console</a> · <a href="/ui/objects">object browser</a>"#,
            escape(&settings.s3_console_url)
        )
    };
    let body = include_str!("assets/dashboard.html")
        .replace("{{rabbitmq_ui}}", &escape(&settings.rabbitmq_mgmt_url))
        .replace("{{object_console}}", &console);
    Page {
        title: "Dashboard",
        nav: "dashboard",
        script: "dashboard.js",
        body,
    }
    .render(&state, StatusCode::OK)
}

async fn objects(State(state): State<AppState>) -> Response {
    let body = include_str!("assets/objects.html")
        .replace("{{bucket}}", &escape(state.commands.store().bucket()));
    Page {
        title: "Objects",
        nav: "objects",
        script: "objects.js",
        body,
    }
    .render(&state, StatusCode::OK)
}

/// An HTML page for unknown `/ui/...` addresses (people get pages, not JSON).
async fn missing(State(state): State<AppState>) -> Response {
    Page {
        title: "Not found",
        nav: "",
        script: "plain.js",
        body: r#"<h1>Page not found</h1><p>There is no such page. Try the <a href="/ui/desk">front desk</a>.</p>"#.to_owned(),
    }
    .render(&state, StatusCode::NOT_FOUND)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, text)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *text,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response(),
    }
}

/// Escapes text for HTML content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn every_action_is_offered_with_its_description() {
        let options = action_options();
        for action in Action::ALL {
            assert!(
                options.contains(&format!(r#"value="{action}""#)),
                "{options}"
            );
        }
        assert!(!options.contains("{\""), "descriptions are escaped");
    }
}
