//! The edge's one error type, as every protocol shows it: a stable code and
//! a message, plus the field at fault when there is one. Command errors keep
//! the code and public message the command layer gives them; the edge adds
//! only errors of its own transport (unreadable request, unknown action).

use bibliomq_core::error::CommandError;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Extra members of the error object (a conflict's details).
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

    /// `{"code", "message", "field"?, ...details}`.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if let Some(field) = &self.field {
            error.insert("field".into(), json!(field));
        }
        if let Some(details) = &self.details {
            for (k, v) in details.iter() {
                error.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Value::Object(error)
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
                    Some(Value::Object(map)) => Some(Box::new(map)),
                    _ => None,
                },
                ..Self::new(code, message)
            },
            CommandError::Internal(err) => {
                // The cause goes to the log only; the client sees the generic message.
                tracing::error!(error = ?err, "internal error");
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

/// Makes `text` safe for a line protocol: one line, no separators eaten.
pub fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use bibliomq_core::error::Invalid;

    use super::*;

    #[test]
    fn invalid_input_keeps_its_code_and_field() {
        let e: WireError =
            CommandError::from(Invalid::field("invalid_payload", "payload", "bad")).into();
        assert_eq!(
            e.to_json(),
            json!({"code": "invalid_payload", "message": "bad", "field": "payload"})
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
            e.to_json(),
            json!({"code": "no_copy_available", "message": "none left", "branch": "norte"})
        );
    }
}
