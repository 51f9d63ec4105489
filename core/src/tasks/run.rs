//! Running a task. CPU-heavy actions run on the blocking pool so they never
//! stall the consumers and confirms sharing the async runtime; a panic inside
//! an action fails that task and nothing else.
//!
//! Every run takes a stop token (cancelled by a client's cancel or by the
//! time limit). Long actions check it between steps — a sleep wakes at once,
//! `primes`, `fib`, `report` and `wordcount` look at it every few thousand
//! iterations — and give up with [`TaskFailure::Stopped`], so a stopped task
//! frees its blocking thread within milliseconds.

use std::collections::HashMap;

use bytes::Bytes;
use num_bigint::BigUint;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Decimal, Language, TaskRequest, report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Csv,
}

impl ContentType {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
        }
    }

    pub fn from_mime(mime: &str) -> Self {
        if mime.starts_with("text/csv") {
            Self::Csv
        } else {
            Self::Json
        }
    }
}

/// A task's result, serialised: JSON text, or CSV text for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    pub bytes: Bytes,
    pub content_type: ContentType,
}

impl TaskOutput {
    fn json(value: &Value) -> Self {
        Self {
            bytes: Bytes::from(value.to_string()),
            content_type: ContentType::Json,
        }
    }

    /// A result of a type of its own, as JSON.
    fn typed(value: &impl Serialize) -> Self {
        Self {
            // Structs of numbers and strings always serialise.
            bytes: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            content_type: ContentType::Json,
        }
    }
}

/// Why a task failed for good (retrying would not help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    #[error("{0}")]
    Rejected(String),
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The stop token was cancelled before the action finished.
    #[error("the task was stopped before it finished")]
    Stopped,
}

/// Runs a task to completion, or until `stop` is cancelled.
pub async fn run(
    request: TaskRequest,
    stop: &CancellationToken,
) -> Result<TaskOutput, TaskFailure> {
    if stop.is_cancelled() {
        return Err(TaskFailure::Stopped);
    }
    match request {
        TaskRequest::Echo(v) => Ok(TaskOutput::json(&v)),
        TaskRequest::Upper(s) => Ok(TaskOutput::json(&Value::String(s.to_uppercase()))),
        TaskRequest::Greet { name, language } => {
            let text = match language {
                Language::En => format!("Hello, {name}!"),
                Language::Es => format!("¡Hola, {name}!"),
            };
            Ok(TaskOutput::json(&Value::String(text)))
        }
        TaskRequest::Sleep(d) => {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = stop.cancelled() => return Err(TaskFailure::Stopped),
            }
            Ok(TaskOutput::typed(&Slept {
                slept_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            }))
        }
        TaskRequest::Sum(numbers) if numbers.len() <= 1_000 => sum(&numbers),
        other => {
            let stop = stop.clone();
            blocking(move || run_heavy(other, &stop)).await
        }
    }
}

fn run_heavy(request: TaskRequest, stop: &CancellationToken) -> Result<TaskOutput, TaskFailure> {
    match request {
        TaskRequest::Sum(numbers) => sum(&numbers),
        TaskRequest::Fib(n) => {
            let f = fib(n, stop).ok_or(TaskFailure::Stopped)?;
            Ok(TaskOutput::json(&Value::String(f.to_string())))
        }
        TaskRequest::Primes(limit) => primes(limit, stop),
        TaskRequest::Wordcount(text) => wordcount(&text, stop),
        TaskRequest::Report(spec) => report::run(&spec, stop).map(|csv| TaskOutput {
            bytes: Bytes::from(csv),
            content_type: ContentType::Csv,
        }),
        // Light actions are answered in `run`; reaching here is still correct.
        TaskRequest::Echo(v) => Ok(TaskOutput::json(&v)),
        TaskRequest::Upper(s) => Ok(TaskOutput::json(&Value::String(s.to_uppercase()))),
        other => Err(TaskFailure::Rejected(format!(
            "{} cannot run on the blocking pool",
            other.action()
        ))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TaskFailure> + Send + 'static,
) -> Result<T, TaskFailure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(TaskFailure::Panicked(msg))
        }
        Err(e) => Err(TaskFailure::Panicked(e.to_string())),
    }
}

fn sum(numbers: &[Decimal]) -> Result<TaskOutput, TaskFailure> {
    numbers
        .iter()
        .try_fold(Decimal::from_int(0), |total, n| total.checked_add(*n))
        .map(|total| TaskOutput::json(&total.to_json()))
        .ok_or_else(|| TaskFailure::Rejected("the sum is too large to compute exactly".to_owned()))
}

/// The n-th Fibonacci number by fast doubling: O(log n) big multiplications,
/// checking `stop` between doublings; `None` when stopped.
fn fib(n: u32, stop: &CancellationToken) -> Option<BigUint> {
    // (F(k), F(k+1)) from the top bit of n down.
    let mut a = BigUint::from(0u32);
    let mut b = BigUint::from(1u32);
    for bit in (0..u32::BITS - n.leading_zeros()).rev() {
        if stop.is_cancelled() {
            return None;
        }
        // F(2k) = F(k) * (2F(k+1) - F(k)); F(2k+1) = F(k)^2 + F(k+1)^2
        let two_b = &b << 1u32;
        let c = &a * (&two_b - &a);
        let d = &a * &a + &b * &b;
        if (n >> bit) & 1 == 0 {
            a = c;
            b = d;
        } else {
            b = &c + &d;
            a = d;
        }
    }
    Some(a)
}

/// How many iterations pass between two looks at the stop token.
const STOP_CHECK_EVERY: usize = 4096;

fn primes(limit: u64, stop: &CancellationToken) -> Result<TaskOutput, TaskFailure> {
    let n = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut composite = vec![false; n + 1];
    let mut found: Vec<u64> = Vec::new();
    for i in 2..=n {
        if i.is_multiple_of(STOP_CHECK_EVERY) && stop.is_cancelled() {
            return Err(TaskFailure::Stopped);
        }
        if !composite[i] {
            found.push(i as u64);
            let mut j = i.saturating_mul(i);
            while j <= n {
                composite[j] = true;
                j += i;
            }
        }
    }
    // Written by hand: a Vec<Value> of millions of numbers costs far more memory.
    let mut out = String::with_capacity(found.len() * 8 + 64);
    out.push_str(&format!(
        "{{\"limit\":{limit},\"count\":{},\"primes\":[",
        found.len()
    ));
    for (i, p) in found.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if i.is_multiple_of(STOP_CHECK_EVERY) && stop.is_cancelled() {
            return Err(TaskFailure::Stopped);
        }
        out.push_str(&p.to_string());
    }
    out.push_str("]}");
    Ok(TaskOutput {
        bytes: Bytes::from(out),
        content_type: ContentType::Json,
    })
}

fn wordcount(text: &str, stop: &CancellationToken) -> Result<TaskOutput, TaskFailure> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
    {
        total += 1;
        if total.is_multiple_of(4096) && stop.is_cancelled() {
            return Err(TaskFailure::Stopped);
        }
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let unique = counts.len();
    let counts = counts
        .into_iter()
        .map(|(word, count)| WordFrequency { count, word })
        .collect();
    Ok(TaskOutput::typed(&WordCount {
        counts,
        unique,
        words: total,
    }))
}

// The results of `sleep` and `wordcount`. Members are declared in
// alphabetical order: the order these results have always had, from when
// they were JSON maps, so stored and new results read the same.

/// `sleep`: how long it slept.
#[derive(Debug, Serialize)]
struct Slept {
    slept_ms: u64,
}

/// `wordcount`: every word with its count, most frequent first.
#[derive(Debug, Serialize)]
struct WordCount {
    counts: Vec<WordFrequency>,
    unique: usize,
    words: u64,
}

#[derive(Debug, Serialize)]
struct WordFrequency {
    count: u64,
    word: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tasks::{Action, TaskRequest};

    async fn run_json(action: Action, payload: Value) -> Value {
        let req = TaskRequest::parse(action, &payload).unwrap();
        let out = run(req, &CancellationToken::new()).await.unwrap();
        assert_eq!(out.content_type, ContentType::Json);
        serde_json::from_slice(&out.bytes).unwrap()
    }

    #[tokio::test]
    async fn small_actions_give_the_expected_results() {
        assert_eq!(run_json(Action::Sum, json!("1,2,3,4,5")).await, json!(15));
        assert_eq!(run_json(Action::Sum, json!([1.5, 2])).await, json!(3.5));
        assert_eq!(run_json(Action::Sum, json!("0.1,0.2")).await, json!(0.3));
        assert_eq!(run_json(Action::Sum, json!([0.1, 0.2])).await, json!(0.3));
        assert_eq!(
            run_json(Action::Sum, json!([i64::MAX, i64::MAX])).await,
            json!("18446744073709551614")
        );
        assert_eq!(
            run_json(Action::Upper, json!("hola ñandú")).await,
            json!("HOLA ÑANDÚ")
        );
        assert_eq!(
            run_json(Action::Echo, json!({"a": [1]})).await,
            json!({"a": [1]})
        );
        assert_eq!(
            run_json(Action::Greet, json!({"name": "Ana", "language": "es"})).await,
            json!("¡Hola, Ana!")
        );
    }

    #[tokio::test]
    async fn a_panic_inside_a_task_fails_that_task_only() {
        let failed = blocking::<()>(|| panic!("boom")).await.unwrap_err();
        assert_eq!(failed, TaskFailure::Panicked("boom".to_owned()));
        // The runtime carries on.
        assert_eq!(run_json(Action::Sum, json!("2,2")).await, json!(4));
    }

    #[tokio::test]
    async fn a_stopped_token_stops_long_actions() {
        let stop = CancellationToken::new();
        stop.cancel();
        for (action, payload) in [
            (Action::Sleep, json!(60_000)),
            (Action::Primes, json!(10_000_000)),
            (Action::Fib, json!(1_000_000)),
        ] {
            let req = TaskRequest::parse(action, &payload).unwrap();
            assert_eq!(run(req, &stop).await, Err(TaskFailure::Stopped));
        }
        let req = TaskRequest::parse(Action::Primes, &json!(10_000_000)).unwrap();
        let late = CancellationToken::new();
        let cancel = late.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        assert_eq!(run(req, &late).await, Err(TaskFailure::Stopped));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn fib_is_exact() {
        assert_eq!(fib(0, &CancellationToken::new()).unwrap().to_string(), "0");
        assert_eq!(fib(1, &CancellationToken::new()).unwrap().to_string(), "1");
        assert_eq!(fib(2, &CancellationToken::new()).unwrap().to_string(), "1");
        assert_eq!(
            fib(30, &CancellationToken::new()).unwrap().to_string(),
            "832040"
        );
        assert_eq!(
            fib(100, &CancellationToken::new()).unwrap().to_string(),
            "354224848179261915075"
        );
        let big = fib(100_000, &CancellationToken::new()).unwrap().to_string();
        assert_eq!(big.len(), 20_899);
        assert!(big.starts_with("259740693472217241661550340212759154148804853865176965847247"));
    }

    #[tokio::test]
    async fn primes_and_wordcount_give_full_answers() {
        let p = run_json(Action::Primes, json!(30)).await;
        assert_eq!(
            p,
            json!({"limit": 30, "count": 10, "primes": [2,3,5,7,11,13,17,19,23,29]})
        );
        let w = run_json(Action::Wordcount, json!("El perro y el gato. ¡El perro!")).await;
        assert_eq!(w["words"], json!(7));
        assert_eq!(w["unique"], json!(4));
        assert_eq!(w["counts"][0], json!({"word": "el", "count": 3}));
        // Members in the order wordcount and sleep results have always had.
        let out = run(
            TaskRequest::parse(Action::Wordcount, &json!("el El")).unwrap(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            &out.bytes[..],
            br#"{"counts":[{"count":2,"word":"el"}],"unique":1,"words":2}"#
        );
        let out = run(
            TaskRequest::parse(Action::Sleep, &json!(1)).unwrap(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(&out.bytes[..], br#"{"slept_ms":1}"#);
    }
}
