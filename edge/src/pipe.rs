//! The pipe text gateway: `TASK|<id>|1,2,3,4,5` sums the numbers through the
//! real pipeline and answers `RESULT|<id>|15`; anything wrong is answered
//! `ERROR|<id>|<message>`, with `-` as the id when none can be read.
//! The numbers are read by the `sum` task's own rules (command layer).
//! Answers come in the order of the lines (see [`crate::lines`]).

use std::{fmt, future::Future, time::Duration};

use bibliomq_core::{auth::Caller, commands::Commands, tasks::TaskState, telemetry};
use serde_json::Value;
use tracing::Instrument;

use crate::{
    lines::{BadLine, BadReason, LineProtocol},
    outcome::{self, Progress},
    wire::{WireError, one_line},
};

/// The task every `TASK` line runs.
const ACTION: &str = "sum";
/// The id of an answer to a line whose id cannot be read.
const NO_ID: &str = "-";

/// An answer line: `RESULT|<id>|<value>` or `ERROR|<id>|<message>` (the
/// message of the system's error body; this protocol has no place for its
/// code).
#[derive(Debug, PartialEq)]
pub enum Answer {
    Result { id: String, value: Value },
    Error { id: String, error: WireError },
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Result { id, value } => write!(f, "RESULT|{id}|{}", one_line(&text_of(value))),
            Self::Error { id, error } => write!(f, "ERROR|{id}|{}", one_line(&error.message)),
        }
    }
}

#[derive(Clone)]
pub struct Pipe {
    commands: Commands,
}

impl Pipe {
    pub fn new(commands: Commands) -> Self {
        Self { commands }
    }
}

impl LineProtocol for Pipe {
    const NAME: &'static str = "pipe";
    const ACTION: &'static str = "sum";

    fn succeeded(answer: &str) -> bool {
        answer.starts_with("RESULT|")
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

    /// `RESULT|AUTH|<role>` or `ERROR|AUTH|<message>`.
    fn auth_answer(&self, outcome: Result<&Caller, WireError>) -> String {
        let id = "AUTH".to_owned();
        match outcome {
            Ok(caller) => Answer::Result {
                id,
                value: Value::String(caller.role.to_string()),
            },
            Err(error) => Answer::Error { id, error },
        }
        .to_string()
    }

    fn answer(
        &self,
        line: Result<String, BadLine>,
    ) -> impl Future<Output = String> + Send + 'static {
        let commands = self.commands.clone();
        async move { answer(commands, line).await.to_string() }
    }
}

async fn answer(commands: Commands, line: Result<String, BadLine>) -> Answer {
    let line = match line {
        Ok(line) => line,
        Err(bad) => {
            let code = match bad.reason {
                BadReason::TooLong => "line_too_long",
                BadReason::NotUtf8 => "invalid_request",
            };
            return Answer::Error {
                id: id_of(&bad.head),
                error: WireError::new(code, bad.message()),
            };
        }
    };
    let (id, numbers) = match parse(&line) {
        Ok(request) => request,
        Err((id, message)) => return error(id, message),
    };
    if let Err(e) = commands.admit_current() {
        return Answer::Error {
            id,
            error: e.into(),
        };
    }
    let correlation_id = telemetry::new_correlation_id();
    let span = tracing::info_span!("pipe_request", %id, %correlation_id);
    let limit = commands.settings().edge.request_timeout;
    let run = run(&commands, numbers, &correlation_id, limit).instrument(span);
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(value)) => Answer::Result { id, value },
        Ok(Err(error)) => Answer::Error { id, error },
        Err(_) => Answer::Error {
            id,
            error: crate::wire::timeout(limit),
        },
    }
}

/// `TASK|<id>|<numbers>` → (id, numbers). The error carries the id when it
/// could be read, `-` otherwise.
fn parse(line: &str) -> Result<(String, String), (String, String)> {
    let mut parts = line.trim().splitn(3, '|');
    let command = parts.next().unwrap_or_default().trim();
    let id = parts
        .next()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let numbers = parts.next();
    if command != "TASK" {
        return Err((
            id.unwrap_or_else(|| NO_ID.to_owned()),
            format!("unknown command `{command}`; send TASK|<id>|<numbers>, e.g. TASK|1|1,2,3"),
        ));
    }
    let Some(id) = id else {
        return Err((
            NO_ID.to_owned(),
            "missing id; send TASK|<id>|<numbers>".to_owned(),
        ));
    };
    let Some(numbers) = numbers else {
        return Err((id, "missing numbers; send TASK|<id>|<numbers>".to_owned()));
    };
    Ok((id, numbers.trim().to_owned()))
}

/// The id of a line that could not be read whole: only when its start is a
/// complete `TASK|<id>|`.
fn id_of(head: &str) -> String {
    let mut parts = head.trim_start().splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("TASK"), Some(id), Some(_)) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => NO_ID.to_owned(),
    }
}

async fn run(
    commands: &Commands,
    numbers: String,
    correlation_id: &str,
    limit: Duration,
) -> Result<Value, WireError> {
    let wait = commands
        .settings()
        .edge
        .task_wait_timeout
        .min(limit.saturating_sub(Duration::from_millis(500)));
    let payload = Value::String(numbers);
    let submission = bibliomq_core::commands::TaskSubmission::new(ACTION, payload);
    match outcome::submit_and_wait(commands, submission, correlation_id, wait).await? {
        Progress::Finished(task) if task.state == TaskState::Succeeded => {
            outcome::result_value(commands, &task).await
        }
        Progress::Finished(task) => Err(outcome::failure(&task)),
        Progress::Unfinished(progress) => Err(outcome::still_going(&progress, wait)),
    }
}

/// Numbers as written, strings (sums beyond 64 bits) without quotes.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A line that is not a `TASK` line: the error body of an unreadable request.
fn error(id: String, message: String) -> Answer {
    Answer::Error {
        id,
        error: WireError::new("invalid_request", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_line_gives_its_id_and_numbers() {
        assert_eq!(
            parse("TASK|42|1,2,3,4,5\r"),
            Ok(("42".into(), "1,2,3,4,5".into()))
        );
        // The numbers are the sum task's business, even when empty or odd.
        assert_eq!(parse("TASK|a|"), Ok(("a".into(), String::new())));
        assert_eq!(parse("TASK|a|1|2"), Ok(("a".into(), "1|2".into())));
    }

    #[test]
    fn malformed_lines_name_the_id_when_there_is_one() {
        assert_eq!(parse("HELLO").unwrap_err().0, "-");
        assert_eq!(parse("PING|9|x").unwrap_err().0, "9");
        assert_eq!(parse("TASK||1,2").unwrap_err().0, "-");
        let (id, message) = parse("TASK|5").unwrap_err();
        assert_eq!(id, "5");
        assert!(message.contains("missing numbers"), "{message}");
    }

    #[test]
    fn a_refused_line_keeps_its_id_only_if_it_was_complete() {
        assert_eq!(id_of("TASK|77|1,2,3,4"), "77");
        assert_eq!(id_of("TASK|7"), "-");
        assert_eq!(id_of("xxxxxxx"), "-");
    }

    #[test]
    fn answers_are_the_result_or_the_error_body_s_message() {
        let result = Answer::Result {
            id: "7".into(),
            value: serde_json::json!(15),
        };
        assert_eq!(result.to_string(), "RESULT|7|15");
        let failed = Answer::Error {
            id: "8".into(),
            error: WireError::new("invalid_payload", "item 1 is not a number: \"x\"")
                .with_field("payload"),
        };
        assert_eq!(failed.to_string(), r#"ERROR|8|item 1 is not a number: "x""#);
    }

    #[test]
    fn results_and_errors_are_single_lines() {
        assert_eq!(text_of(&serde_json::json!(15)), "15");
        assert_eq!(
            text_of(&serde_json::json!("18446744073709551616")),
            "18446744073709551616"
        );
        assert_eq!(
            error("3".into(), "bad\nthing".into()).to_string(),
            "ERROR|3|bad thing"
        );
    }
}
