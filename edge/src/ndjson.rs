//! The newline-delimited JSON gateway. Each line is a task request,
//! `{"id": 1, "action": "upper", "payload": "hola"}`, run through the real
//! pipeline; the answer line carries the same `id`:
//!
//! ```text
//! {"id":1,"status":"done","result":{"ok":true,"data":"HOLA"}}
//! {"id":2,"status":"error","result":{"ok":false,"error":"...","code":"invalid_payload"}}
//! ```
//!
//! `id` is optional (any JSON value, echoed; `null` when absent or unreadable).
//! `idempotency_key` (a retry with the same key and request answers with the
//! first task) and `timeout_ms` (a time limit for the run) are optional too,
//! as are `run_at` (RFC 3339) or `delay_ms` (a delayed task).
//! Answers come in the order of the lines (see [`crate::lines`]).

use std::{future::Future, time::Duration};

use bibliomq_core::{
    auth::Caller,
    commands::{Commands, TaskSubmission},
    tasks::TaskState,
    telemetry,
};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::{
    lines::{BadLine, BadReason, LineProtocol},
    outcome::{self, Progress},
    wire::{WireError, to_text},
};

/// An answer line: `{"id", "status", "result"}`, in that order; the
/// status is `done` or `error` as the result is.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub id: Value,
    pub status: Status,
    pub result: AnswerResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Done,
    Error,
}

/// `{"ok": true, "data"}` or `{"ok": false, "error", "code"}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum AnswerResult {
    Done {
        ok: bool,
        data: Value,
    },
    /// The system's error body, in this protocol's older shape: its
    /// message as `error`, then its `code` (the field and details, which
    /// the shape has no place for, are left out).
    Error {
        ok: bool,
        #[serde(flatten, serialize_with = "legacy_error")]
        error: WireError,
    },
}

fn legacy_error<S: serde::Serializer>(e: &WireError, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("error", &e.message)?;
    map.serialize_entry("code", e.code)?;
    map.end()
}

fn done(id: Value, data: Value) -> Answer {
    Answer {
        id,
        status: Status::Done,
        result: AnswerResult::Done { ok: true, data },
    }
}

fn error(id: Value, error: WireError) -> Answer {
    Answer {
        id,
        status: Status::Error,
        result: AnswerResult::Error { ok: false, error },
    }
}

#[derive(Clone)]
pub struct Ndjson {
    commands: Commands,
}

impl Ndjson {
    pub fn new(commands: Commands) -> Self {
        Self { commands }
    }
}

impl LineProtocol for Ndjson {
    const NAME: &'static str = "ndjson";
    const ACTION: &'static str = "task";

    fn succeeded(answer: &str) -> bool {
        answer.contains("\"status\":\"done\"")
    }

    fn metrics(&self) -> &bibliomq_core::metrics::Metrics {
        self.commands.metrics()
    }

    fn commands(&self) -> &Commands {
        &self.commands
    }

    fn acting_as(&self, commands: Commands) -> Self {
        Self { commands }
    }

    /// `{"id":null,"status":"done","result":{"ok":true,"data":{"key",...}}}`,
    /// or the error in the usual shape.
    fn auth_answer(&self, outcome: Result<&Caller, WireError>) -> String {
        to_text(&match outcome {
            Ok(caller) => done(
                Value::Null,
                serde_json::to_value(caller).unwrap_or(Value::Null),
            ),
            Err(e) => error(Value::Null, e),
        })
    }

    fn answer(
        &self,
        line: Result<String, BadLine>,
    ) -> impl Future<Output = String> + Send + 'static {
        let commands = self.commands.clone();
        async move { to_text(&answer(commands, line).await) }
    }
}

async fn answer(commands: Commands, line: Result<String, BadLine>) -> Answer {
    let line = match line {
        Ok(line) => line,
        Err(bad) => {
            let code = match bad.reason {
                BadReason::TooLong => "line_too_long",
                BadReason::NotUtf8 => "malformed_json",
            };
            return error(Value::Null, WireError::new(code, bad.message()));
        }
    };
    let (id, submission) = match parse(&line) {
        Ok(request) => request,
        Err((id, e)) => return error(id, e),
    };
    if let Err(e) = commands.admit_current() {
        return error(id, e.into());
    }
    let correlation_id = telemetry::new_correlation_id();
    let span = tracing::info_span!("ndjson_request", action = %submission.action, %correlation_id);
    let limit = commands.settings().edge.request_timeout;
    let run = run(&commands, submission, &correlation_id, limit).instrument(span);
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(data)) => done(id, data),
        Ok(Err(e)) => error(id, e),
        Err(_) => error(id, crate::wire::timeout(limit)),
    }
}

/// Reads `id`, `action`, `payload`, `idempotency_key`, `timeout_ms`,
/// `run_at` and `delay_ms` from
/// a request line. The error keeps the id when it could be read, so the
/// client can tell which line failed.
fn parse(line: &str) -> Result<(Value, TaskSubmission), (Value, WireError)> {
    let request: Value = serde_json::from_str(line).map_err(|e| {
        (
            Value::Null,
            WireError::new("malformed_json", format!("the line is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(mut fields) = request else {
        return Err((
            Value::Null,
            WireError::new(
                "invalid_request",
                "each line must be a JSON object such as {\"id\": 1, \"action\": \"upper\", \"payload\": \"hola\"}",
            ),
        ));
    };
    let id = fields.remove("id").unwrap_or(Value::Null);
    let action = match fields.remove("action") {
        Some(Value::String(action)) => action,
        Some(_) => {
            return Err((
                id,
                WireError::new("invalid_field", "`action` must be a string").with_field("action"),
            ));
        }
        None => {
            return Err((
                id,
                WireError::new("missing_field", "the line has no `action`").with_field("action"),
            ));
        }
    };
    let payload = fields.remove("payload").unwrap_or(Value::Null);
    let idempotency_key = match fields.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key),
        Some(_) => {
            return Err((
                id,
                WireError::new("invalid_field", "`idempotency_key` must be a string")
                    .with_field("idempotency_key"),
            ));
        }
    };
    let timeout_ms = fields.remove("timeout_ms");
    let run_at = fields.remove("run_at");
    let delay_ms = fields.remove("delay_ms");
    Ok((
        id,
        TaskSubmission {
            action,
            payload,
            timeout_ms,
            idempotency_key,
            run_at,
            delay_ms,
        },
    ))
}

async fn run(
    commands: &Commands,
    submission: TaskSubmission,
    correlation_id: &str,
    limit: Duration,
) -> Result<Value, WireError> {
    // Stop waiting early enough to fetch a stored result and still answer in time.
    let wait = commands
        .settings()
        .edge
        .task_wait_timeout
        .min(limit.saturating_sub(Duration::from_millis(500)));
    match outcome::submit_and_wait(commands, submission, correlation_id, wait).await? {
        Progress::Finished(task) if task.state == TaskState::Succeeded => {
            outcome::result_value(commands, &task).await
        }
        Progress::Finished(task) => Err(outcome::failure(&task)),
        Progress::Unfinished(progress) => Err(outcome::still_going(&progress, wait)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_request_line_gives_its_id_action_and_payload() {
        let (id, s) = parse(
            r#"{"id": 1, "action": "upper", "payload": "hola", "idempotency_key": "k1", "timeout_ms": 500}"#,
        )
        .unwrap();
        assert_eq!(
            (id, s.action.as_str(), s.payload),
            (json!(1), "upper", json!("hola"))
        );
        assert_eq!(s.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(s.timeout_ms, Some(json!(500)));
    }

    #[test]
    fn a_line_without_action_keeps_its_id_in_the_error() {
        let (id, e) = parse(r#"{"id": "x7", "payload": 1}"#).unwrap_err();
        assert_eq!(id, json!("x7"));
        assert_eq!(e.code, "missing_field");
    }

    #[test]
    fn broken_json_is_an_error_without_id() {
        let (id, e) = parse(r#"{"id": 3, "action": "#).unwrap_err();
        assert_eq!((id, e.code), (Value::Null, "malformed_json"));
        let (_, e) = parse("[1]").unwrap_err();
        assert_eq!(e.code, "invalid_request");
    }

    #[test]
    fn answers_have_the_legacy_shape_and_order() {
        assert_eq!(
            to_text(&done(json!(1), json!("HOLA"))),
            r#"{"id":1,"status":"done","result":{"ok":true,"data":"HOLA"}}"#
        );
        assert_eq!(
            to_text(&error(
                json!(4),
                WireError::new("invalid_payload", "bad")
                    .with_field("payload")
                    .with_details(bibliomq_core::error::ErrorDetails::RefusedLoan {
                        idempotency_key: "k".into()
                    })
            )),
            r#"{"id":4,"status":"error","result":{"ok":false,"error":"bad","code":"invalid_payload"}}"#
        );
    }
}
