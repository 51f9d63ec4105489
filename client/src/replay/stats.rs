//! What a replay measured: per operation its class and latency, and from
//! those the summary (per kind) and the timeline (per time bucket).

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};

use super::file::Kind;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// Refused by a library rule or the catalogue (404, 409, a rejected
    /// renewal or return): the system worked and said no.
    Rejected {
        code: String,
    },
    /// Not done: a line that does not parse, a transport error, a 4xx that
    /// means the line is wrong (400, 401, 422...), a 5xx, a failed task.
    Failed {
        message: String,
    },
}

/// One line's outcome.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: usize,
    pub text: String,
    /// `None` for lines that did not parse.
    pub kind: Option<Kind>,
    pub class: Class,
    /// From sending to the answer (to the outcome, with `--wait`).
    pub latency: Option<Duration>,
    /// When it ended, from the start of the replay.
    pub at: Duration,
}

/// Nearest-rank percentile of sorted values (`p` from 0 to 100); `None`
/// when there are none. The one percentile of the workspace: the replay's
/// summary and `bibliomq-bench` both call it.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Counts and latency percentiles (milliseconds) of a set of operations.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ok: usize,
    pub rejected: usize,
    pub failed: usize,
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        match r.class {
            Class::Ok => self.ok += 1,
            Class::Rejected { .. } => self.rejected += 1,
            Class::Failed { .. } => self.failed += 1,
        }
        if let Some(l) = r.latency {
            self.latencies_ms.push(l.as_secs_f64() * 1000.0);
        }
    }

    pub fn total(&self) -> usize {
        self.ok + self.rejected + self.failed
    }

    fn sort(&mut self) {
        self.latencies_ms.sort_by(f64::total_cmp);
    }

    pub fn p(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ms, p)
    }

    pub fn max(&self) -> Option<f64> {
        self.latencies_ms.last().copied()
    }

    fn to_json(&self) -> Value {
        let ms = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        json!({
            "ok": self.ok,
            "rejected": self.rejected,
            "failed": self.failed,
            "latency_ms": {
                "p50": ms(self.p(50.0)),
                "p95": ms(self.p(95.0)),
                "p99": ms(self.p(99.0)),
                "max": ms(self.max()),
            }
        })
    }
}

/// The whole replay, summed up.
#[derive(Debug, Clone)]
pub struct Summary {
    pub elapsed: Duration,
    pub by_kind: BTreeMap<Kind, Tally>,
    /// Lines that did not parse.
    pub malformed: usize,
    pub total: Tally,
    /// `kind code` → count.
    pub rejections: BTreeMap<String, usize>,
    /// Failed lines in line order.
    pub failures: Vec<(usize, String, String)>,
}

impl Summary {
    pub fn new(records: &[Record], elapsed: Duration) -> Self {
        let mut by_kind: BTreeMap<Kind, Tally> = BTreeMap::new();
        let mut total = Tally::default();
        let mut malformed = 0;
        let mut rejections = BTreeMap::new();
        let mut failures = Vec::new();
        for r in records {
            total.add(r);
            match r.kind {
                Some(k) => by_kind.entry(k).or_default().add(r),
                None => malformed += 1,
            }
            match &r.class {
                Class::Rejected { code } => {
                    let kind = r.kind.map_or("line", Kind::as_str);
                    *rejections.entry(format!("{kind} {code}")).or_insert(0) += 1;
                }
                Class::Failed { message } => {
                    failures.push((r.line, r.text.clone(), message.clone()));
                }
                Class::Ok => {}
            }
        }
        total.sort();
        by_kind.values_mut().for_each(Tally::sort);
        failures.sort_by_key(|f| f.0);
        Self {
            elapsed,
            by_kind,
            malformed,
            total,
            rejections,
            failures,
        }
    }

    /// Operations answered per second over the whole run.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.total.total() - self.malformed) as f64 / secs
        } else {
            0.0
        }
    }

    pub fn failed(&self) -> usize {
        self.total.failed
    }

    pub fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, t)| (k.as_str().to_owned(), t.to_json()))
            .collect();
        json!({
            "operations": self.total.total(),
            "malformed": self.malformed,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "throughput_per_s": (self.throughput() * 100.0).round() / 100.0,
            "kinds": kinds,
            "total": self.total.to_json(),
            "rejections": self.rejections,
            "failures": self.failures.iter().map(|(line, text, error)| json!({
                "line": line, "text": text, "error": error
            })).collect::<Vec<_>>(),
        })
    }

    /// The closing summary, for people.
    pub fn render(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} ms"));
        let mut rows: Vec<Vec<String>> = Vec::new();
        let row = |name: &str, t: &Tally| {
            vec![
                name.to_owned(),
                t.ok.to_string(),
                t.rejected.to_string(),
                t.failed.to_string(),
                ms(t.p(50.0)),
                ms(t.p(95.0)),
                ms(t.p(99.0)),
            ]
        };
        for (k, t) in &self.by_kind {
            rows.push(row(k.as_str(), t));
        }
        if self.malformed > 0 {
            rows.push(vec![
                "malformed".into(),
                "0".into(),
                "0".into(),
                self.malformed.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        rows.push(row("total", &self.total));
        let header = ["", "ok", "rejected", "failed", "p50", "p95", "p99"];
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let fmt = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut out = format!(
            "{} operations in {:.2} s: {:.1} ops/s\n",
            self.total.total(),
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
        out.push_str(&fmt(&header));
        out.push('\n');
        for r in &rows {
            out.push_str(&fmt(r));
            out.push('\n');
        }
        if !self.rejections.is_empty() {
            let list: Vec<String> = self
                .rejections
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            out.push_str(&format!("rejected: {}\n", list.join(", ")));
        }
        for (line, text, error) in self.failures.iter().take(20) {
            out.push_str(&format!("failed line {line}: {text}\n  {error}\n"));
        }
        if self.failures.len() > 20 {
            out.push_str(&format!(
                "... and {} more failed lines (--json lists them all)\n",
                self.failures.len() - 20
            ));
        }
        out
    }
}

/// One slice of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the slice, seconds from the start of the replay.
    pub start: f64,
    /// Operations that ended in the slice, per second.
    pub throughput: f64,
    pub failed: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// A slice width giving at most about sixty points, each with about fifty
/// operations when there are few (percentiles of a handful say little),
/// rounded to a readable step.
pub fn bucket_width(elapsed: Duration, operations: usize) -> f64 {
    let secs = elapsed.as_secs_f64();
    let ideal = (secs / 60.0).max(secs * 50.0 / operations.max(1) as f64);
    [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
        .into_iter()
        .find(|w| *w >= ideal)
        .unwrap_or(600.0)
}

/// Throughput and latency percentiles per slice of `width` seconds.
pub fn timeline(records: &[Record], elapsed: Duration, width: f64) -> Vec<Bucket> {
    let secs = elapsed.as_secs_f64();
    // Whole slices only: the tail joins the last one, whose rate is over its
    // real length, so a run that ends mid-slice does not seem to slow down.
    let n = ((secs / width).floor() as usize).max(1);
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut counts = vec![0usize; n];
    let mut failed = vec![0usize; n];
    for r in records.iter().filter(|r| r.kind.is_some()) {
        let i = ((r.at.as_secs_f64() / width) as usize).min(n - 1);
        counts[i] += 1;
        if matches!(r.class, Class::Failed { .. }) {
            failed[i] += 1;
        }
        if let Some(l) = r.latency {
            latencies[i].push(l.as_secs_f64() * 1000.0);
        }
    }
    (0..n)
        .map(|i| {
            let l = &mut latencies[i];
            l.sort_by(f64::total_cmp);
            let start = i as f64 * width;
            let length = if i + 1 == n { secs - start } else { width };
            Bucket {
                start,
                throughput: counts[i] as f64 / length.max(width / 10.0),
                failed: failed[i],
                p50: percentile(l, 50.0),
                p95: percentile(l, 95.0),
                p99: percentile(l, 99.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: usize, kind: Option<Kind>, class: Class, ms: u64, at_ms: u64) -> Record {
        Record {
            line,
            text: String::new(),
            kind,
            class,
            latency: kind.map(|_| Duration::from_millis(ms)),
            at: Duration::from_millis(at_ms),
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile::<f64>(&[], 50.0), None);
    }

    #[test]
    fn the_summary_counts_per_kind_and_keeps_failures_in_line_order() {
        let records = vec![
            rec(3, Some(Kind::Loan), Class::Ok, 10, 100),
            rec(
                1,
                Some(Kind::Loan),
                Class::Rejected {
                    code: "not_available".into(),
                },
                20,
                200,
            ),
            rec(
                5,
                Some(Kind::Task),
                Class::Failed {
                    message: "boom".into(),
                },
                30,
                300,
            ),
            rec(
                2,
                None,
                Class::Failed {
                    message: "bad line".into(),
                },
                0,
                0,
            ),
        ];
        let s = Summary::new(&records, Duration::from_secs(1));
        assert_eq!(s.by_kind[&Kind::Loan].ok, 1);
        assert_eq!(s.by_kind[&Kind::Loan].rejected, 1);
        assert_eq!(s.failed(), 2);
        assert_eq!(s.malformed, 1);
        assert_eq!(s.rejections["loan not_available"], 1);
        assert_eq!(s.failures[0].0, 2);
        assert_eq!(s.throughput(), 3.0);
        let j = s.to_json();
        assert_eq!(j["kinds"]["loan"]["latency_ms"]["p50"], 10.0);
        assert!(s.render().contains("failed line 2"));
    }

    #[test]
    fn the_timeline_slices_by_end_time() {
        let records = vec![
            rec(1, Some(Kind::Task), Class::Ok, 10, 50),
            rec(2, Some(Kind::Task), Class::Ok, 30, 150),
            rec(3, Some(Kind::Task), Class::Ok, 20, 160),
        ];
        let t = timeline(&records, Duration::from_millis(200), 0.1);
        assert_eq!(t.len(), 2);
        assert!((t[0].throughput - 10.0).abs() < 1e-9);
        assert!((t[1].throughput - 20.0).abs() < 1e-9);
        assert_eq!(t[1].p99, Some(30.0));
        // A tail shorter than a slice joins the last slice.
        let t = timeline(&records, Duration::from_millis(250), 0.1);
        assert_eq!(t.len(), 2);
        assert!((t[1].throughput - 2.0 / 0.15).abs() < 1e-9);
        assert_eq!(bucket_width(Duration::from_secs(120), 100_000), 2.0);
        assert_eq!(bucket_width(Duration::from_secs(6), 600), 0.5);
    }
}
