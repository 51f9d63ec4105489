//! Tasks: the actions a client can ask for, parsed into typed requests.
//!
//! Parsing happens once, here, for every transport; the worker parses the
//! message again with the same code, so a request that was accepted is a
//! request the worker understands.

mod decimal;
mod message;
mod report;
pub mod retention;
mod run;
pub mod state;
pub mod store;
pub mod wakeups;

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use message::{
    BUNDLE_KIND, BUNDLE_MAX, BUNDLE_ROUTING_KEY, Outgoing, TaskBundle, TaskEvent, TaskMessage,
    is_bundle, publish_first,
};

pub use run::{ContentType, TaskFailure, TaskOutput, run};
pub use state::TaskState;

/// Error code of a task stopped by its time limit.
pub const TIMEOUT_CODE: &str = "timeout";
/// Error code of a task cancelled by a client.
pub const CANCELLED_CODE: &str = "cancelled";
/// How often a worker process looks for cancel requests of the tasks it is
/// running (one query for all of them): a running task stops within about
/// this long of its cancel.
pub const CANCEL_POLL: Duration = Duration::from_millis(200);

use crate::error::Invalid;

/// Largest `n` accepted by `fib` (its result has about 209,000 digits).
pub const FIB_MAX: u32 = 1_000_000;
/// Longest `sleep`, in milliseconds.
pub const SLEEP_MAX_MS: u64 = 60_000;
/// Largest limit accepted by `primes`.
pub const PRIMES_MAX: u64 = 10_000_000;
/// Most numbers accepted by `sum`.
pub const SUM_MAX_ITEMS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Echo,
    Upper,
    Sum,
    Fib,
    Sleep,
    Greet,
    Primes,
    Wordcount,
    Report,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Self::Echo,
        Self::Upper,
        Self::Sum,
        Self::Fib,
        Self::Sleep,
        Self::Greet,
        Self::Primes,
        Self::Wordcount,
        Self::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Upper => "upper",
            Self::Sum => "sum",
            Self::Fib => "fib",
            Self::Sleep => "sleep",
            Self::Greet => "greet",
            Self::Primes => "primes",
            Self::Wordcount => "wordcount",
            Self::Report => "report",
        }
    }

    /// One line per action, for error messages and help texts.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Echo => "any JSON value, returned as is",
            Self::Upper => "a string, returned in upper case",
            Self::Sum => "numbers as an array or a comma-separated string",
            Self::Fib => "n (0..=1000000); the exact n-th Fibonacci number as a decimal string",
            Self::Sleep => "milliseconds to wait (0..=60000)",
            Self::Greet => "a name, or {\"name\": ..., \"language\": \"en\"|\"es\"}",
            Self::Primes => "a limit (2..=10000000); every prime up to it",
            Self::Wordcount => "a text; how often each word occurs",
            Self::Report => {
                "{\"csv\": text, \"group_by\": column, \"sum\": column?}; a CSV summary per group"
            }
        }
    }
}

impl Action {
    /// The action's own time limit: a run past it is stopped and fails with
    /// code `timeout`. A request may ask for less (`timeout_ms`).
    pub fn default_timeout(self) -> Duration {
        let secs = match self {
            Self::Echo | Self::Upper | Self::Greet => 10,
            // The longest sleep accepted, and room to spare.
            Self::Sleep => SLEEP_MAX_MS / 1000 + 10,
            Self::Sum | Self::Wordcount => 60,
            Self::Fib | Self::Primes | Self::Report => 120,
        };
        Duration::from_secs(secs)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == wanted)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|a| a.as_str()).collect();
                Invalid::field(
                    "unknown_action",
                    "action",
                    format!("unknown action `{s}`; known actions: {}", known.join(", ")),
                )
            })
    }
}

pub use decimal::Decimal;

/// How `greet` greets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Es,
}

/// The `report` request: group the rows of a CSV text by one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSpec {
    pub csv: String,
    pub group_by: String,
    pub sum: Option<String>,
}

/// A task request whose payload has been checked.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRequest {
    Echo(Value),
    Upper(String),
    Sum(Vec<Decimal>),
    Fib(u32),
    Sleep(Duration),
    Greet { name: String, language: Language },
    Primes(u64),
    Wordcount(String),
    Report(ReportSpec),
}

impl TaskRequest {
    /// Checks `payload` for `action`. The error names the offending field.
    pub fn parse(action: Action, payload: &Value) -> Result<Self, Invalid> {
        Ok(match action {
            Action::Echo => Self::Echo(payload.clone()),
            Action::Upper => Self::Upper(string(payload, "payload")?.to_owned()),
            Action::Sum => Self::Sum(parse_numbers(payload)?),
            Action::Fib => {
                let n = integer(payload, "payload", 0, u64::from(FIB_MAX))?;
                Self::Fib(u32::try_from(n).map_err(|_| bad("payload", "n is too large"))?)
            }
            Action::Sleep => Self::Sleep(Duration::from_millis(integer(
                payload,
                "payload",
                0,
                SLEEP_MAX_MS,
            )?)),
            Action::Greet => parse_greet(payload)?,
            Action::Primes => Self::Primes(integer(payload, "payload", 2, PRIMES_MAX)?),
            Action::Wordcount => {
                let text = string(payload, "payload")?;
                if text.trim().is_empty() {
                    return Err(bad("payload", "the text to count is empty"));
                }
                Self::Wordcount(text.to_owned())
            }
            Action::Report => Self::Report(report::parse_spec(payload)?),
        })
    }

    pub fn action(&self) -> Action {
        match self {
            Self::Echo(_) => Action::Echo,
            Self::Upper(_) => Action::Upper,
            Self::Sum(_) => Action::Sum,
            Self::Fib(_) => Action::Fib,
            Self::Sleep(_) => Action::Sleep,
            Self::Greet { .. } => Action::Greet,
            Self::Primes(_) => Action::Primes,
            Self::Wordcount(_) => Action::Wordcount,
            Self::Report(_) => Action::Report,
        }
    }
}

fn bad(field: &str, message: impl Into<String>) -> Invalid {
    Invalid::field("invalid_payload", field, message)
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, Invalid> {
    v.as_str()
        .ok_or_else(|| bad(field, format!("expected a string, got {}", kind(v))))
}

/// An integer in `min..=max`, given as a JSON number or a numeric string.
fn integer(v: &Value, field: &str, min: u64, max: u64) -> Result<u64, Invalid> {
    let n = match v {
        Value::Number(_) => whole_number(v),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        bad(
            field,
            format!(
                "expected a whole number from {min} to {max}, got {}",
                kind(v)
            ),
        )
    })?;
    if !(min..=max).contains(&n) {
        return Err(bad(
            field,
            format!("{n} is out of range; expected {min} to {max}"),
        ));
    }
    Ok(n)
}

/// A JSON number that is a whole number from 0 up: `30.0` is the whole
/// number 30, as JSON Schema's `integer` says.
pub(crate) fn whole_number(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f))
            .map(|f| f as u64)
    })
}

fn parse_numbers(v: &Value) -> Result<Vec<Decimal>, Invalid> {
    let items: Vec<Decimal> = match v {
        Value::String(s) => s
            .split([',', ';'])
            .map(str::trim)
            .enumerate()
            .map(|(i, t)| Decimal::parse(t).ok_or_else(|| not_a_number(i, &format!("{t:?}"))))
            .collect::<Result<_, _>>()?,
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Number(n) => {
                    Decimal::from_json(n).ok_or_else(|| not_a_number(i, &n.to_string()))
                }
                Value::String(s) => {
                    Decimal::parse(s).ok_or_else(|| not_a_number(i, &format!("{s:?}")))
                }
                other => Err(not_a_number(i, kind(other))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(
                "payload",
                format!(
                    "expected numbers as an array or a comma-separated string, got {}",
                    kind(other)
                ),
            ));
        }
    };
    if items.is_empty() {
        return Err(bad("payload", "no numbers to sum"));
    }
    if items.len() > SUM_MAX_ITEMS {
        return Err(bad(
            "payload",
            format!("at most {SUM_MAX_ITEMS} numbers, got {}", items.len()),
        ));
    }
    Ok(items)
}

fn not_a_number(index: usize, what: &str) -> Invalid {
    bad(
        &format!("payload[{index}]"),
        format!("item {index} is not a number: {what}"),
    )
}

fn parse_greet(v: &Value) -> Result<TaskRequest, Invalid> {
    let (name, language) = match v {
        Value::String(s) => (s.as_str(), Language::En),
        Value::Object(o) => {
            let name = o
                .get("name")
                .ok_or_else(|| bad("payload.name", "missing the name to greet"))?;
            let name = string(name, "payload.name")?;
            let language = match o.get("language").map(|l| string(l, "payload.language")) {
                None => Language::En,
                Some(Ok("en")) => Language::En,
                Some(Ok("es")) => Language::Es,
                Some(Ok(other)) => {
                    return Err(bad(
                        "payload.language",
                        format!("unknown language `{other}`; use `en` or `es`"),
                    ));
                }
                Some(Err(e)) => return Err(e),
            };
            (name, language)
        }
        other => {
            return Err(bad(
                "payload",
                format!(
                    "expected a name or an object with `name`, got {}",
                    kind(other)
                ),
            ));
        }
    };
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(bad("payload", "the name must have 1 to 100 characters"));
    }
    Ok(TaskRequest::Greet {
        name: name.to_owned(),
        language,
    })
}

/// A JSON value's kind, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(action: &str, payload: Value) -> Result<TaskRequest, Invalid> {
        TaskRequest::parse(action.parse()?, &payload)
    }

    #[test]
    fn actions_parse_case_insensitively_and_unknown_ones_are_named() {
        assert_eq!("FIB".parse::<Action>().unwrap(), Action::Fib);
        let err = "teleport".parse::<Action>().unwrap_err();
        assert_eq!(err.code, "unknown_action");
        assert_eq!(err.field.as_deref(), Some("action"));
        assert!(err.message.contains("teleport") && err.message.contains("fib"));
    }

    #[test]
    fn sum_accepts_a_string_or_an_array() {
        let expected = TaskRequest::Sum((1..=5).map(Decimal::from_int).collect());
        assert_eq!(parse("sum", json!("1,2,3,4,5")).unwrap(), expected);
        assert_eq!(parse("sum", json!([1, 2, 3, 4, 5])).unwrap(), expected);
        assert_eq!(parse("sum", json!(" 1 , 2,3 ,4,5 ")).unwrap(), expected);
    }

    #[test]
    fn sum_names_the_item_that_is_not_a_number() {
        let err = parse("sum", json!([1, "two", 3])).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("payload[1]"));
        let err = parse("sum", json!({"a": 1})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("payload"));
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert!(parse("fib", json!(1_000_001)).is_err());
        assert!(parse("fib", json!(-1)).is_err());
        assert!(parse("fib", json!("30")).is_ok());
        assert!(parse("sleep", json!(60_001)).is_err());
        assert!(parse("primes", json!(1)).is_err());
    }

    #[test]
    fn a_whole_number_written_with_a_fraction_is_that_number() {
        assert_eq!(parse("fib", json!(30.0)).unwrap(), TaskRequest::Fib(30));
        assert!(parse("fib", json!(30.5)).is_err());
        assert!(parse("fib", json!(-0.5)).is_err());
        assert!(parse("sleep", json!(1e300)).is_err());
    }

    #[test]
    fn wrong_payload_types_are_refused() {
        assert!(parse("upper", json!(5)).is_err());
        assert!(parse("fib", json!("many")).is_err());
        assert!(parse("wordcount", json!("   ")).is_err());
        assert!(parse("greet", json!({"name": "Ana", "language": "fr"})).is_err());
    }
}
