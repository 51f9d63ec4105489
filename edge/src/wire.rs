//! The edge's errors, as every protocol shows them: the error body of the
//! whole system ([`ErrorBody`]: a stable code and a message, plus the field
//! at fault when there is one), the same type the HTTP API answers with.
//! Command errors keep the code and public message the command layer gives
//! them; the edge adds only errors of its own transport (unreadable request,
//! unknown action, no answer in time).

pub use bibliomq_core::error::ErrorBody;
use serde::Serialize;

/// The edge's name for the error body, kept for the protocol modules.
pub type WireError = ErrorBody;

/// The request did not get its answer in time.
pub fn timeout(limit: std::time::Duration) -> WireError {
    WireError::new(
        "timeout",
        format!(
            "no answer within {} ms; the request may still take effect",
            limit.as_millis()
        ),
    )
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
    use bibliomq_core::error::{CommandError, ErrorDetails, Invalid};

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
            code: "not_available",
            message: "none left".into(),
            details: Some(ErrorDetails::NotAvailable {
                earliest_due_at: None,
                idempotency_key: "k-1".into(),
            }),
        }
        .into();
        assert_eq!(
            to_text(&e),
            r#"{"code":"not_available","message":"none left","earliest_due_at":null,"idempotency_key":"k-1"}"#
        );
    }
}
