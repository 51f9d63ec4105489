//! The web front desk, task page, dashboard and object browser, served by the
//! API itself: HTML pages and small hand-written scripts embedded in the
//! binary, so there is no build step and no third-party code.
//!
//! The pages call the JSON API like any other client, so every rule and
//! validation stays in the command layer, and a refusal reaches the screen
//! with the API's own code and message. The JSON routes in this module exist
//! because only a person watching a screen needs them.
//!
//! # Layout
//! - [`pages`]: `/` and `/ui/...`: the pages, their layout and assets.
//! - [`events`]: `GET /v1/events/stream`: outcome events as server-sent events.
//! - [`dashboard`]: `GET /v1/dashboard/...`: queue figures, tasks by state,
//!   circulation per minute and branch.
//! - [`management`]: the RabbitMQ management API, read on the browser's behalf.
//! - [`objects`]: `GET /v1/objects[/{key}]`: the results bucket, listed and downloaded.

pub mod dashboard;
pub mod events;
pub mod management;
pub mod objects;
pub mod pages;

use axum::Router;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::{AppState, routing::Routes};

/// What a URL path segment may carry as it is: the unreserved characters of
/// RFC 3986; everything else (`/` included) is percent-encoded.
pub(crate) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path of segments: as [`SEGMENT`], but `/` stays.
pub(crate) const PATH: &AsciiSet = &SEGMENT.remove(b'/');

/// `/` and the pages under `/ui`.
pub fn pages() -> Router<AppState> {
    pages::routes()
}

/// The JSON routes the pages need beyond the rest of the API, for `/v1`.
/// They are described in the OpenAPI document like the rest of `/v1`: any
/// client may use them, not only the pages.
pub fn api_routes() -> Routes {
    events::routes()
        .merge(dashboard::routes())
        .merge(objects::routes())
}

#[cfg(test)]
pub(crate) mod tests;
