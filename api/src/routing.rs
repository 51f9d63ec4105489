//! [`Routes`]: an axum router that remembers its paths. Every module that
//! serves routes builds one; [`crate::routes`] puts them together.

use axum::{Router, routing::MethodRouter};

use crate::AppState;

/// Routes that remember the paths they serve, so a test can check that
/// every one of them is in the OpenAPI document (`paths()`).
#[derive(Default)]
pub struct Routes {
    pub(crate) router: Router<AppState>,
    pub(crate) paths: Vec<String>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(mut self, path: &str, method_router: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(path, method_router);
        self.paths.push(path.to_owned());
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }
}
