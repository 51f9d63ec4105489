//! The edge's one error type, as every protocol shows it: a stable code and
//! a message, plus the field at fault when there is one. Command errors keep
//! the code and public message the command layer gives them; the edge adds
//! only errors of its own transport (unreadable request, unknown action).

use bibliomq_core::error::CommandError;
use serde::Serialize;
use serde_json::{Map, Value};

/// Serialised as `{"code", "message", "field"?, ...details}`, in that order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireError {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Extra members of the error object (a conflict's details).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<Map<String, Value>>>,
}

impl WireError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The request did not arrive in time for an answer.
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self::new(
            "timeout",
            format!(
                "no answer within {} ms; the request may still take effect",
                limit.as_millis()
            ),
        )
    }
}

impl From<CommandError> for WireError {
    fn from(e: CommandError) -> Self {
        let code = e.code();
        let message = e.public_message();
        match e {
            CommandError::Invalid(invalid) => Self {
                code,
                message,
                field: invalid.field,
                details: None,
            },
            CommandError::Conflict { details, .. } => Self {
                details: match details {
                    Some(Value::Object(mut map)) => {
                        // The error's own members win over details of the same name.
                        for own in ["code", "message", "field"] {
                            map.remove(own);
                        }
                        Some(Box::new(map))
                    }
                    _ => None,
                },
                ..Self::new(code, message)
            },
            CommandError::Internal(err) => {
                // The cause goes to the log only; the client sees the generic message.
                tracing::error!(error = %format!("{err:#}"), "internal error");
                Self::new(code, message)
            }
            CommandError::Unavailable(_) => {
                tracing::warn!(%message, "a dependency is unavailable");
                Self::new(code, message)
            }
            CommandError::NotFound { .. } | CommandError::Timeout(_) => Self::new(code, message),
        }
    }
}

/// `value` as compact JSON text, keys in the order the types declare them.
pub fn to_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        // Only non-string map keys can fail, and no reply has any.
        tracing::error!(error = %e, "a reply could not be serialised");
        r#"{"ok":false,"error":{"code":"internal","message":"internal error; it has been logged"}}"#
            .to_owned()
    })
}

/// Makes `text` safe for a line protocol: one line, no separators eaten.
pub fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use bibliomq_core::error::Invalid;
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_input_keeps_its_code_and_field() {
        let e: WireError =
            CommandError::from(Invalid::field("invalid_payload", "payload", "bad")).into();
        assert_eq!(
            to_text(&e),
            r#"{"code":"invalid_payload","message":"bad","field":"payload"}"#
        );
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let e: WireError =
            CommandError::Internal(anyhow::anyhow!("password=hunter2 leaked")).into();
        assert_eq!(e.code, "internal");
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }

    #[test]
    fn conflict_details_join_the_error_object() {
        let e: WireError = CommandError::Conflict {
            code: "no_copy_available",
            message: "none left".into(),
            details: Some(json!({"branch": "norte", "code": "ignored"})),
        }
        .into();
        assert_eq!(
            to_text(&e),
            r#"{"code":"no_copy_available","message":"none left","branch":"norte"}"#
        );
    }
}
