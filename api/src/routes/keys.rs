//! `/v1/me` (who the key is: the desk offers only what its role may do) and
//! `/v1/keys` (admins: make, list, revoke API keys). The rules are in the
//! command layer (`bibliomq_core::commands::Commands::create_key` and
//! the others); `bibliomq-api keys ...` calls the same commands.

use axum::{
    Json,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bibliomq_core::{
    auth::Caller,
    commands::{KeyCreated, KeyInfo, NewKey},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::Routes;
use crate::{
    error::{ApiError, ErrorAnswer},
    extract::{Acting, JsonBody, QueryParams},
};

pub fn routes() -> Routes {
    Routes::new()
        .routes(routes!(me))
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// Who is calling
///
/// The key's id, role, and branch or patron. With BIBLIOMQ_AUTH=off, the
/// `open` caller with the admin role.
#[utoipa::path(
    get, path = "/me", tag = "keys", operation_id = "whoAmI",
    responses(
        (status = 200, description = "The caller.", body = Caller),
    )
)]
async fn me(Acting(state): Acting) -> Result<Json<Caller>, ApiError> {
    Ok(Json(state.commands.me()?))
}

/// A key to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewKey)]
struct KeyBody {
    /// `admin`, `librarian`, `patron` or `service`.
    #[schema(value_type = bibliomq_core::auth::Role)]
    role: String,
    /// A librarian key's branch (see /v1/branches); absent: every branch.
    #[serde(default)]
    #[schema(nullable = false)]
    branch: Option<String>,
    /// A patron key's patron (required for that role, refused for others).
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::patron)]
    patron: Option<String>,
    /// A note for people: whose key it is, what for.
    #[serde(default)]
    #[schema(schema_with = bibliomq_core::schema::person_name)]
    name: Option<String>,
}

/// Make an API key (admins)
///
/// The answer holds the whole key, once: only a digest of it is stored.
#[utoipa::path(
    post, path = "/keys", tag = "keys", operation_id = "createKey",
    request_body = KeyBody,
    responses(
        (status = 201, description = "The key, shown this once, and what it may do.", body = KeyCreated),
        (status = 400, description = "Malformed JSON.", body = ErrorAnswer),
        (status = 404, description = "No such patron (`patron_not_found`).", body = ErrorAnswer),
        (status = 413, description = "The body is larger than BIBLIOMQ_API_BODY_LIMIT (`payload_too_large`).", body = ErrorAnswer),
        (status = 415, description = "No `Content-Type: application/json`.", body = ErrorAnswer),
        (status = 422, description = "Unknown role, branch, or a branch or patron the role does not take, with `field`.", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn create(
    Acting(state): Acting,
    JsonBody(body): JsonBody<KeyBody>,
) -> Result<Response, ApiError> {
    let created = state
        .commands
        .create_key(NewKey {
            role: body.role,
            branch: body.branch,
            patron: body.patron,
            name: body.name,
        })
        .await?;
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    // The answer holds a secret: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Revoked keys too (`true`); default `false`.
    #[param(value_type = Option<bool>)]
    revoked: Option<String>,
}

/// API keys, newest first (admins)
#[utoipa::path(
    get, path = "/keys", tag = "keys", operation_id = "listKeys",
    params(ListQuery),
    responses(
        (status = 200, description = "The keys, without their secrets.", body = Vec<KeyInfo>),
        (status = 400, description = "An unknown parameter, or `revoked` not `true` or `false` (`invalid_query`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`).", body = ErrorAnswer),
    )
)]
async fn list(
    Acting(state): Acting,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    let revoked = match q.revoked.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("revoked is `true` or `false`, not `{other}`"),
            ));
        }
    };
    Ok(Json(state.commands.list_keys(revoked).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyPath {
    /// The key's id (the part after `bmq_`, before the next `_`).
    #[param(pattern = "^[0-9a-f]{12}$")]
    id: String,
}

/// Revoke an API key (admins)
///
/// Refused from then on, by every process at once (the change is announced
/// to them; one that misses the announcement refuses the key within
/// BIBLIOMQ_AUTH_CACHE_MS). Revoking twice changes nothing.
#[utoipa::path(
    delete, path = "/keys/{id}", tag = "keys", operation_id = "revokeKey",
    params(KeyPath),
    responses(
        (status = 200, description = "The key, revoked.", body = KeyInfo),
        (status = 404, description = "No such key (`key_not_found`).", body = ErrorAnswer),
        (status = 503, description = "PostgreSQL unreachable (`unavailable`); nothing changed.", body = ErrorAnswer),
    )
)]
async fn revoke(
    Acting(state): Acting,
    Path(KeyPath { id }): Path<KeyPath>,
) -> Result<Json<KeyInfo>, ApiError> {
    Ok(Json(state.commands.revoke_key(&id).await?))
}
