//! `/v1/objects`: the results bucket as the object browser sees it, for S3
//! servers without a console of their own (Garage). Only keys under the
//! configured prefix are reachable, and they are shown without it.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use bibliomq_core::storage::{ObjectInfo, StorageError};
use chrono::{DateTime, Utc};
use percent_encoding::utf8_percent_encode;
use serde::{Deserialize, Serialize};

use super::PATH;
use crate::{AppState, error::ApiError, extract::QueryParams, routing::Routes};

/// Most objects one page lists.
pub const MAX_LIMIT: i32 = 1_000;
/// Most keys read to order a listing newest first; S3 lists by key only, so
/// this order costs a scan (narrow it with a prefix such as `results/2025/05/`).
pub const NEWEST_SCAN: usize = 10_000;

pub fn routes() -> Routes {
    Routes::new()
        .route("/objects", get(list))
        .route("/objects/{*key}", get(download))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    /// `key` (the default) or `newest`.
    order: Option<String>,
    limit: Option<i32>,
    /// From the previous page's `next_cursor`.
    cursor: Option<String>,
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
#[derive(Debug, Serialize)]
pub struct ObjectEntry {
    pub key: String,
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
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
#[derive(Debug, Serialize)]
pub struct ObjectPage {
    pub bucket: String,
    pub prefix: String,
    pub order: &'static str,
    pub objects: Vec<ObjectEntry>,
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_complete: Option<bool>,
}

/// A page of objects under `prefix`: by key (S3's own order, paged from the
/// last key shown) or newest first (from a scan of at most [`NEWEST_SCAN`]
/// keys, paged by position).
async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<ObjectPage>, ApiError> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    /// `true`: answer with a redirect to a presigned link instead.
    redirect: Option<bool>,
}

/// The object itself, streamed from the bucket as an attachment.
async fn download(
    State(state): State<AppState>,
    Path(key): Path<String>,
    QueryParams(q): QueryParams<DownloadQuery>,
) -> Result<Response, ApiError> {
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
