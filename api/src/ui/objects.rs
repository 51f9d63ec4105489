//! `/v1/objects`: the results bucket as the object browser sees it, for S3
//! servers without a console of their own (Garage). Only keys under the
//! configured prefix are reachable, and they are shown without it.

use axum::{
    Json,
    body::Body,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use bibliomq_core::storage::{ObjectInfo, StorageError};
use chrono::{DateTime, Utc};
use percent_encoding::utf8_percent_encode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::PATH;
use crate::{
    AppState,
    error::{ApiError, ErrorAnswer},
    extract::{Acting, QueryParams},
    routing::Routes,
};
use bibliomq_core::auth::Permission;

/// Most objects one page lists.
pub const MAX_LIMIT: i32 = 1_000;
/// Most keys read to order a listing newest first; S3 lists by key only, so
/// this order costs a scan (narrow it with a prefix such as `results/2025/05/`).
pub const NEWEST_SCAN: usize = 10_000;

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(list))
        .routes(routes!(download))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only keys starting with this (after the server's own prefix), such as
    /// `results/2025/05/`; no control characters.
    #[param(value_type = Option<bibliomq_core::schema::PlainText>, inline)]
    prefix: Option<String>,
    /// `key` (the default: S3's own order) or `newest` (last modified first,
    /// from a scan of at most 10000 keys: narrow it with `prefix`).
    #[param(value_type = Option<ObjectOrder>, inline)]
    order: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i32>,
    /// Page on: `next_cursor` of the previous page, with the same `prefix`
    /// and `order` (empty: the first page).
    #[param(value_type = Option<bibliomq_core::schema::PlainText>, inline)]
    cursor: Option<String>,
}

/// The order of a listing: `key` or `newest`.
struct ObjectOrder;

impl utoipa::PartialSchema for ObjectOrder {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(["key", "newest"]))
            .into()
    }
}

impl ToSchema for ObjectOrder {}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyPath {
    /// The key as listed (without the server's prefix), `/`s and all:
    /// written as they are or as `%2F`.
    key: String,
}

/// Keys have no control characters; object storage refuses listings that
/// ask for them, so they are refused here, as the caller's mistake.
fn plain_text(text: &str, field: &'static str) -> Result<(), ApiError> {
    if text.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            if field == "cursor" {
                "invalid_cursor"
            } else {
                "invalid_prefix"
            },
            format!("`{field}` cannot hold control characters"),
        )
        .with_field(field));
    }
    Ok(())
}

fn unavailable(e: StorageError) -> ApiError {
    match e {
        StorageError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "object_not_found",
            "no such object in the bucket",
        ),
        StorageError::Unavailable(detail) => {
            tracing::warn!(%detail, "object storage unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "object storage cannot be reached",
            )
        }
    }
}

/// One object of a listing, with where to download it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectEntry {
    /// Without the server's prefix.
    pub key: String,
    #[schema(minimum = 0)]
    pub size: i64,
    #[schema(required = true)]
    pub last_modified: Option<DateTime<Utc>>,
    /// Its path under /v1/objects.
    pub download: String,
}

impl From<&ObjectInfo> for ObjectEntry {
    fn from(o: &ObjectInfo) -> Self {
        Self {
            key: o.key.clone(),
            size: o.size,
            last_modified: o.last_modified,
            download: format!("/v1/objects/{}", utf8_percent_encode(&o.key, PATH)),
        }
    }
}

/// A page of `GET /v1/objects`. Newest-first pages also say how many keys
/// were scanned and whether that was all of them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ObjectList)]
pub struct ObjectPage {
    pub bucket: String,
    pub prefix: String,
    #[schema(value_type = ObjectOrder, inline)]
    pub order: &'static str,
    pub objects: Vec<ObjectEntry>,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// `newest` only: how many keys were read to order them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub scanned: Option<usize>,
    /// `newest` only: false when more keys exist than were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub scan_complete: Option<bool>,
}

/// A page of objects under `prefix`: by key (S3's own order, paged from the
/// last key shown) or newest first (from a scan of at most [`NEWEST_SCAN`]
/// keys, paged by position).
/// Objects in the results bucket, a page at a time
///
/// Only keys under the server's BIBLIOMQ_S3_KEY_PREFIX are listed, and they
/// are shown without it.
#[utoipa::path(
    get, path = "/objects", tag = "web", operation_id = "listObjects",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of objects.", body = ObjectPage),
        (status = 400, description = "An unknown parameter, or `limit` not a whole number (`invalid_query`).", body = ErrorAnswer),
        (status = 422, description = "A bad `limit`, `order`, `prefix` or `cursor` (`invalid_limit`, `invalid_order`, `invalid_prefix`, `invalid_cursor`), with `field`.", body = ErrorAnswer),
        (status = 503, description = "Object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn list(
    Acting(state): Acting,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<ObjectPage>, ApiError> {
    state.commands.authorize(Permission::WatchTasks)?;
    let prefix = q.prefix.unwrap_or_default();
    plain_text(&prefix, "prefix")?;
    // An empty cursor is the first page, as no cursor is.
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if let Some(c) = &cursor {
        plain_text(c, "cursor")?;
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!("limit must be from 1 to {MAX_LIMIT}"),
        )
        .with_field("limit"));
    }
    let store = state.commands.store();
    match q.order.as_deref().unwrap_or("key") {
        "key" => {
            let page = store
                .list(&prefix, cursor.as_deref(), limit)
                .await
                .map_err(unavailable)?;
            let next = page
                .truncated
                .then(|| page.objects.last().map(|o| o.key.clone()))
                .flatten();
            Ok(Json(ObjectPage {
                bucket: store.bucket().to_owned(),
                prefix,
                order: "key",
                objects: page.objects.iter().map(ObjectEntry::from).collect(),
                next_cursor: next,
                scanned: None,
                scan_complete: None,
            }))
        }
        "newest" => {
            let offset = match cursor.as_deref() {
                None => 0,
                Some(c) => c.parse::<usize>().map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_cursor",
                        "pass back the next_cursor of the previous page",
                    )
                    .with_field("cursor")
                })?,
            };
            let (mut all, complete) = scan(&state, &prefix).await?;
            all.sort_by(|a, b| {
                b.last_modified
                    .cmp(&a.last_modified)
                    .then_with(|| b.key.cmp(&a.key))
            });
            let limit = usize::try_from(limit).unwrap_or(50);
            let page: Vec<ObjectEntry> = all
                .iter()
                .skip(offset)
                .take(limit)
                .map(ObjectEntry::from)
                .collect();
            let next = (offset + limit < all.len()).then(|| (offset + limit).to_string());
            Ok(Json(ObjectPage {
                bucket: store.bucket().to_owned(),
                prefix,
                order: "newest",
                objects: page,
                next_cursor: next,
                scanned: Some(all.len()),
                scan_complete: Some(complete),
            }))
        }
        other => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
            format!("order is `key` or `newest`, not `{other}`"),
        )
        .with_field("order")),
    }
}

/// Up to [`NEWEST_SCAN`] objects under `prefix`; `true` when that is all of them.
async fn scan(state: &AppState, prefix: &str) -> Result<(Vec<ObjectInfo>, bool), ApiError> {
    let store = state.commands.store();
    let mut all: Vec<ObjectInfo> = Vec::new();
    loop {
        let after = all.last().map(|o| o.key.clone());
        let page = store
            .list(prefix, after.as_deref(), MAX_LIMIT)
            .await
            .map_err(unavailable)?;
        all.extend(page.objects);
        if !page.truncated {
            return Ok((all, true));
        }
        if all.len() >= NEWEST_SCAN {
            return Ok((all, false));
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    /// Answer with a redirect to a presigned object-storage link.
    redirect: Option<bool>,
}

/// An object of the results bucket, as a download
///
/// Streamed from object storage as an attachment, in its stored content
/// type; with `?redirect=true` answered instead by a redirect to a presigned
/// link (valid BIBLIOMQ_S3_PRESIGN_TTL_SECS), which is made without looking
/// the object up.
#[utoipa::path(
    get, path = "/objects/{*key}", tag = "web", operation_id = "getObject",
    params(KeyPath, DownloadQuery),
    responses(
        (status = 200, description = "The object's bytes, with the content type it was stored with (`application/octet-stream` when it has none).",
            content_type = "*/*", body = inline(bibliomq_core::schema::Bytes),
            headers(
                ("Content-Disposition" = String, description = "`attachment` with the key's last segment as the file name."),
                ("Content-Length" = i64),
            )),
        (status = 307, description = "Redirect to a presigned link (`?redirect=true`).", headers(("Location" = String))),
        (status = 400, description = "A bad `redirect` or an unknown parameter (`invalid_query`), or a key that is not UTF-8 (`invalid_path`).", body = ErrorAnswer),
        (status = 404, description = "No such object (`object_not_found`).", body = ErrorAnswer),
        (status = 503, description = "Object storage unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn download(
    Acting(state): Acting,
    Path(KeyPath { key }): Path<KeyPath>,
    QueryParams(q): QueryParams<DownloadQuery>,
) -> Result<Response, ApiError> {
    state.commands.authorize(Permission::WatchTasks)?;
    let store = state.commands.store();
    let full = format!("{}{key}", store.prefix());
    if q.redirect.unwrap_or(false) {
        let url = store
            .presigned_get(store.bucket(), &full)
            .await
            .map_err(unavailable)?;
        return Ok(Redirect::temporary(&url).into_response());
    }
    let object = store
        .get(store.bucket(), &full)
        .await
        .map_err(unavailable)?;
    let mut headers = HeaderMap::new();
    let content_type = object
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(size) = object.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file_name(&key))) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    let stream = tokio_util::io::ReaderStream::new(object.body.into_async_read());
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// The last segment of a key, kept to characters safe in a header.
fn file_name(key: &str) -> String {
    let name: String = key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "object".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_in_a_header() {
        assert_eq!(file_name("results/2025/05/17/abc.json"), "abc.json");
        assert_eq!(file_name("a/\"weird\" name;.csv"), "_weird__name_.csv");
        assert_eq!(file_name("folder/"), "object");
    }

    #[test]
    fn keys_are_encoded_but_keep_their_slashes() {
        assert_eq!(
            utf8_percent_encode("results/a b+c.json", PATH).to_string(),
            "results/a%20b%2Bc.json"
        );
    }
}
