//! Prometheus metrics. One [`Metrics`] per process (per app in tests, so
//! parallel tests never see each other's counts), served at `/metrics`.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub queue: String,
    pub outcome: MessageOutcome,
}

/// What happened to a consumed message.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MessageOutcome {
    Consumed,
    Acked,
    /// A redelivery of work already done, acked without doing it again.
    Duplicate,
    Requeued,
    Retried,
    DeadLettered,
    /// A bundle delivered again and sent on as one message per task.
    Split,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub exchange: String,
    pub outcome: PublishOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PublishOutcome {
    Confirmed,
    /// Handed to the connection without a confirm asked (outcome events).
    Sent,
    Failed,
    /// Not confirmed (connection lost, refused) and sent again.
    Resent,
}

impl MessageOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumed => "consumed",
            Self::Acked => "acked",
            Self::Duplicate => "duplicate",
            Self::Requeued => "requeued",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Split => "split",
        }
    }
}

impl PublishOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Resent => "resent",
        }
    }
}

impl EncodeLabelValue for MessageOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for PublishOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub action: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
    pub branch: String,
    pub outcome: String,
}

/// How a loan request ended, as the caller saw it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoanRequestLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    /// `zmq`, `ndjson` or `pipe`.
    pub protocol: String,
    /// The ZeroMQ action (canonical name), or the line gateway's task.
    pub action: String,
    /// `ok`, or the error code answered.
    pub outcome: String,
}

/// Why a request was refused by the key check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `no_key`, `invalid_key`, `forbidden` or `rate_limited`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

/// Every metric of a process. Cloned for each request and message, so a
/// clone is one reference count: the families live behind one `Arc`.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

/// The metric families, reached through [`Metrics`].
pub struct Families {
    registry: Mutex<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub messages: Family<MessageLabels, Counter>,
    pub published: Family<PublishLabels, Counter>,
    pub task_duration: Family<ActionLabels, Histogram>,
    pub tasks_finished: Family<TaskLabels, Counter>,
    pub operations: Family<OperationLabels, Counter>,
    pub operation_duration: Family<ActionLabels, Histogram>,
    pub loan_requests: Family<LoanRequestLabels, Counter>,
    pub edge_requests: Family<EdgeLabels, Counter>,
    pub edge_duration: Family<ProtocolLabels, Histogram>,
    /// Dead letters re-published and removed by a replay.
    pub dead_letters_replayed: Counter,
    /// Task rows deleted by retention.
    pub tasks_purged: Counter,
    /// Stored results deleted by retention.
    pub results_purged: Counter,
    /// Requests refused by the key check, by reason (never by key).
    pub auth_refused: Family<AuthLabels, Counter>,
    /// Seconds from a delayed task's `run_at` to its publication by the
    /// scheduler (confirmed and marked `queued`).
    pub scheduler_lag: Histogram,
    /// Circulation-history rows deleted by their retention.
    pub history_purged: Counter,
    /// Rows whose patron was replaced by the anonymous marker, by table.
    pub history_anonymised: Family<TableLabels, Counter>,
    /// Live event feeds this process serves now (event streams and the
    /// edge's `follow`), against BIBLIOMQ_LIVE_FEEDS_MAX.
    pub live_feeds: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bibliomq");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let messages = Family::<MessageLabels, Counter>::default();
        let published = Family::<PublishLabels, Counter>::default();
        let task_duration = Family::<ActionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let tasks_finished = Family::<TaskLabels, Counter>::default();
        let operations = Family::<OperationLabels, Counter>::default();
        let operation_duration = Family::<ActionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let loan_requests = Family::<LoanRequestLabels, Counter>::default();
        let edge_requests = Family::<EdgeLabels, Counter>::default();
        let edge_duration = Family::<ProtocolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let tasks_purged = Counter::default();
        let results_purged = Counter::default();
        registry.register(
            "tasks_purged",
            "Finished tasks deleted by retention (BIBLIOMQ_TASK_RETENTION)",
            tasks_purged.clone(),
        );
        registry.register(
            "results_purged",
            "Stored task results deleted from the bucket by retention",
            results_purged.clone(),
        );
        let auth_refused = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_refused",
            "Requests refused by the API key check, by reason (no_key, invalid_key, forbidden, rate_limited)",
            auth_refused.clone(),
        );
        let scheduler_lag = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 60.0,
        ]);
        registry.register(
            "scheduler_lag_seconds",
            "Delayed tasks: seconds from their run_at to their publication by the scheduler",
            scheduler_lag.clone(),
        );
        let history_purged = Counter::default();
        registry.register(
            "history_purged",
            "Circulation-history rows deleted by BIBLIOMQ_HISTORY_RETENTION",
            history_purged.clone(),
        );
        let history_anonymised = Family::<TableLabels, Counter>::default();
        registry.register(
            "history_anonymised",
            "Rows whose patron was anonymised by BIBLIOMQ_HISTORY_ANONYMISE_AFTER, by table (loans: returned loans deleted)",
            history_anonymised.clone(),
        );
        let live_feeds = Gauge::default();
        registry.register(
            "live_feeds",
            "Live event feeds served now (event streams and the edge's follow), at most BIBLIOMQ_LIVE_FEEDS_MAX",
            live_feeds.clone(),
        );
        let dead_letters_replayed = Counter::default();
        registry.register(
            "dead_letters_replayed",
            "Dead letters re-published (confirmed) and removed from their dead-letter queue",
            dead_letters_replayed.clone(),
        );
        registry.register(
            "edge_requests",
            "Requests the edge answered, by protocol, action and outcome",
            edge_requests.clone(),
        );
        registry.register(
            "edge_request_duration_seconds",
            "Time the edge took to answer a request, by protocol",
            edge_duration.clone(),
        );
        registry.register(
            "loan_requests",
            "Loan requests answered by the command layer, by outcome (loaned, replayed, \
             a refusal's code, invalid, timeout, unavailable, internal); timeouts show only here",
            loan_requests.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            http_duration.clone(),
        );
        registry.register(
            "messages",
            "Consumed messages by queue and what became of them",
            messages.clone(),
        );
        registry.register(
            "published",
            "Published messages by exchange and whether the broker confirmed them",
            published.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Time to run a task, by action",
            task_duration.clone(),
        );
        registry.register(
            "tasks_finished",
            "Tasks that reached a final state, by action and state",
            tasks_finished.clone(),
        );
        registry.register(
            "library_operations",
            "Library operations (loan, renewal, return) by branch and outcome",
            operations.clone(),
        );
        registry.register(
            "library_operation_duration_seconds",
            "Time to apply a library operation, by operation",
            operation_duration.clone(),
        );
        Self(Arc::new(Families {
            registry: Mutex::new(registry),
            http_requests,
            http_duration,
            messages,
            published,
            task_duration,
            tasks_finished,
            operations,
            operation_duration,
            loan_requests,
            edge_requests,
            edge_duration,
            dead_letters_replayed,
            tasks_purged,
            results_purged,
            auth_refused,
            scheduler_lag,
            history_purged,
            history_anonymised,
            live_feeds,
        }))
    }

    /// Counts a request refused by the key check.
    pub fn auth_refused(&self, reason: &str) {
        self.auth_refused
            .get_or_create(&AuthLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Refusals counted so far for `reason`.
    pub fn auth_refused_count(&self, reason: &str) -> u64 {
        self.auth_refused
            .get_or_create(&AuthLabels {
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Counts and times one request answered by the edge.
    pub fn edge_request(
        &self,
        protocol: &str,
        action: &str,
        outcome: &str,
        elapsed: std::time::Duration,
    ) {
        self.edge_requests
            .get_or_create(&EdgeLabels {
                protocol: protocol.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.edge_duration
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a loan request's outcome (see [`LoanRequestLabels`]).
    pub fn loan_request(&self, outcome: &str) {
        self.loan_requests
            .get_or_create(&LoanRequestLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a consumed message's fate.
    pub fn message(&self, queue: &str, outcome: MessageOutcome) {
        self.messages
            .get_or_create(&MessageLabels {
                queue: queue.to_owned(),
                outcome,
            })
            .inc();
    }

    /// How many messages of `queue` met `outcome` so far.
    pub fn message_count(&self, queue: &str, outcome: MessageOutcome) -> u64 {
        self.messages
            .get_or_create(&MessageLabels {
                queue: queue.to_owned(),
                outcome,
            })
            .get()
    }

    pub fn publish(&self, exchange: &str, outcome: PublishOutcome) {
        self.published
            .get_or_create(&PublishLabels {
                exchange: exchange.to_owned(),
                outcome,
            })
            .inc();
    }

    /// How many publishes to `exchange` met `outcome` so far.
    pub fn publish_count(&self, exchange: &str, outcome: PublishOutcome) -> u64 {
        self.published
            .get_or_create(&PublishLabels {
                exchange: exchange.to_owned(),
                outcome,
            })
            .get()
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            // A panic while encoding leaves the registry itself intact.
            Err(poisoned) => poisoned.into_inner(),
        };
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::new();
        m.message("bibliomq.tasks", MessageOutcome::Acked);
        m.message("bibliomq.tasks", MessageOutcome::Acked);
        assert_eq!(m.message_count("bibliomq.tasks", MessageOutcome::Acked), 2);
        let text = m.encode();
        assert!(
            text.contains(r#"bibliomq_messages_total{queue="bibliomq.tasks",outcome="acked"} 2"#),
            "{text}"
        );
    }
}
