//! The API's one error type: a status and the error body every transport
//! shares ([`ErrorBody`]), answered as `{"error": {"code", "message",
//! "field"?, ...}}`.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bibliomq_core::error::{CommandError, ErrorBody, ErrorDetails, Invalid};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

/// What an error answer's body is. Some errors add details to `error`
/// ([`bibliomq_core::error::ErrorDetails`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.body = self.body.with_field(field);
        self
    }

    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.body = self.body.with_details(details);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error body alone, for an answer that is already under way (an
    /// event stream's last event).
    pub fn into_body(self) -> ErrorBody {
        self.body
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: i.into(),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match &e {
            // Only Idempotency-Keys held for other requests: a conflict, as
            // for a single submission.
            CommandError::InvalidItems(items)
                if items.iter().all(|i| i.code == "idempotency_key_reused") =>
            {
                StatusCode::CONFLICT
            }
            CommandError::Invalid(_) | CommandError::InvalidItems(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            CommandError::OutOfBounds(_) => StatusCode::BAD_REQUEST,
            CommandError::NotFound { .. } => StatusCode::NOT_FOUND,
            CommandError::Conflict { .. } => StatusCode::CONFLICT,
            CommandError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CommandError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            CommandError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CommandError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            CommandError::Forbidden(_) => StatusCode::FORBIDDEN,
            CommandError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        Self {
            status,
            body: e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::JsonSyntaxError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let text = text.strip_prefix(DATA_ERROR_PREFIX).unwrap_or(&text);
                let err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", text);
                match field_of(text) {
                    Some(f) => err.with_field(f),
                    None => err,
                }
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than this server accepts",
                )
            }
            other => Self::new(other.status(), "bad_request", other.body_text()),
        }
    }
}

const DATA_ERROR_PREFIX: &str = "Failed to deserialize the JSON body into the target type: ";

/// The field serde names in `path: message`, `missing field `x`` or `unknown field `x``.
fn field_of(text: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = text.split(marker).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    let (path, _) = text.split_once(": ")?;
    (!path.is_empty()
        && path
            .chars()
            .all(|c| c.is_alphanumeric() || "_.[]".contains(c)))
    .then(|| path.to_owned())
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.body.code, "request failed");
        }
        let retry_after = match self.body.details.as_deref() {
            Some(ErrorDetails::RateLimited { retry_after }) => Some(*retry_after),
            _ => None,
        };
        let mut response = (self.status, Json(ErrorAnswer { error: self.body })).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(retry_after) = retry_after
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}
