//! What can go wrong, how it is told to a person or a program, and the
//! exit code each case gets.

use serde_json::{Value, json};

/// Exit codes. Scripts switch on these, so they never change meaning.
pub mod exit {
    /// Done as asked.
    pub const OK: i32 = 0;
    /// The API refused the request (4xx), or the work it stands for did not
    /// succeed (a rejected renewal, a failed task, a replay line that failed).
    pub const FAILED: i32 = 1;
    /// The command line is wrong (clap uses 2 for its own errors too).
    pub const USAGE: i32 = 2;
    /// Nothing answered at the API URL.
    pub const UNREACHABLE: i32 = 3;
    /// The API answered with a server error (5xx) or something unreadable.
    pub const SERVER: i32 = 4;
}

/// A command that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    /// Connection refused, DNS failure, timeout: no HTTP answer at all.
    #[error("cannot reach the API at {url} — is it running? start it with scripts/up ({detail})")]
    Unreachable { url: String, detail: String },
    /// An HTTP answer with the API's error body (or a stand-in for one).
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        /// The whole `error` object, details included.
        error: Value,
    },
    /// The request went through but the work did not succeed (a renewal
    /// rejected by a rule, a task that failed, a wait that ran out).
    #[error("{message}")]
    Unsuccessful {
        code: String,
        message: String,
        /// What the API last said about it.
        body: Value,
    },
    /// A local problem: a file that cannot be read or written.
    #[error("{0}")]
    Local(String),
    /// Already reported on the output (a replay's summary, an unready
    /// status); only the exit code is left to give.
    #[error("see above")]
    Reported(i32),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Unreachable { .. } => exit::UNREACHABLE,
            Self::Api { status, .. } if *status >= 500 => exit::SERVER,
            Self::Api { .. } | Self::Unsuccessful { .. } | Self::Local(_) => exit::FAILED,
            Self::Reported(code) => *code,
        }
    }

    /// The stable code of the failure (`not_available`, `unreachable`, ...).
    pub fn code(&self) -> &str {
        match self {
            Self::Usage(_) => "usage",
            Self::Unreachable { .. } => "unreachable",
            Self::Api { code, .. } | Self::Unsuccessful { code, .. } => code,
            Self::Local(_) => "local_error",
            Self::Reported(_) => "reported",
        }
    }

    /// `{"error": {...}}`, the API's own error object when there is one.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Api { status, error, .. } => {
                let mut e = error.clone();
                e["status"] = json!(status);
                json!({ "error": e })
            }
            Self::Unsuccessful {
                code,
                message,
                body,
            } => {
                json!({ "error": { "code": code, "message": message, "last_seen": body } })
            }
            Self::Unreachable { url, detail } => json!({ "error": {
                "code": "unreachable",
                "message": self.to_string(),
                "url": url,
                "detail": detail,
            }}),
            other => json!({ "error": { "code": other.code(), "message": other.to_string() } }),
        }
    }

    /// For people: the message, the code and field, and what to do next.
    pub fn describe(&self) -> String {
        let mut text = match self {
            Self::Api {
                status,
                code,
                message,
                field,
                ..
            } => {
                let field = field
                    .as_deref()
                    .map(|f| format!(", field `{f}`"))
                    .unwrap_or_default();
                format!("{message} ({status} {code}{field})")
            }
            Self::Unsuccessful { code, message, .. } => format!("{message} ({code})"),
            other => other.to_string(),
        };
        let hint = match self.code() {
            "unauthorized" => Some("the API wants a token: set BIBLIOMQ_API_TOKEN or pass --token"),
            "unavailable" => Some(
                "the API is up but RabbitMQ, PostgreSQL or S3 is not: `bibliomq status` says which",
            ),
            _ => None,
        };
        if let Some(hint) = hint {
            text.push_str("\n  hint: ");
            text.push_str(hint);
        }
        text
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Local(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Failure {
        Failure::Api {
            status,
            code: code.into(),
            message: "m".into(),
            field: None,
            error: json!({"code": code, "message": "m"}),
        }
    }

    #[test]
    fn exit_codes_separate_refusals_outages_and_usage() {
        assert_eq!(api(409, "not_available").exit_code(), exit::FAILED);
        assert_eq!(api(422, "invalid_isbn").exit_code(), exit::FAILED);
        assert_eq!(api(503, "unavailable").exit_code(), exit::SERVER);
        assert_eq!(
            Failure::Unreachable {
                url: "u".into(),
                detail: "d".into()
            }
            .exit_code(),
            exit::UNREACHABLE
        );
        assert_eq!(Failure::Usage("x".into()).exit_code(), exit::USAGE);
    }

    #[test]
    fn api_errors_keep_their_details_in_json() {
        let e = Failure::Api {
            status: 409,
            code: "ambiguous_title".into(),
            message: "two".into(),
            field: None,
            error: json!({"code": "ambiguous_title", "message": "two", "candidates": [1, 2]}),
        };
        let j = e.to_json();
        assert_eq!(j["error"]["status"], 409);
        assert_eq!(j["error"]["candidates"], json!([1, 2]));
    }

    #[test]
    fn a_missing_token_comes_with_a_hint() {
        assert!(
            api(401, "unauthorized")
                .describe()
                .contains("BIBLIOMQ_API_TOKEN")
        );
    }
}
