//! The library workers.
//!
//! - [`LoanServer`] answers loan requests (RPC): one transaction decides,
//!   the reply goes to the caller's reply-to, then the request is acked.
//!   A request redelivered after a crash finds its idempotency key and gets
//!   the first answer again, never a second loan.
//! - [`CirculationWorker`] settles renewals and returns. The operation row
//!   is the guard: a delivery whose operation is no longer `pending` is a
//!   duplicate and changes nothing.
//!
//! After each committed change an outcome event goes to `bibliomq.events`:
//! `loaned.<branch>`, `renewed.<branch>`, `returned.<branch>`, `rejected.<op>.<branch>`.

use std::{sync::Arc, time::Instant};

use bibliomq_core::{
    broker::{Publisher, headers},
    clock::Clock,
    library::{
        Rules,
        message::{CirculationMessage, LoanRequestMessage, OperationKind},
        store,
    },
    metrics::{ActionLabels, MessageOutcome, Metrics, OperationLabels},
};
use deadpool_postgres::Pool;
use lapin::{BasicProperties, message::Delivery};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    consumer::{Handler, Settle, settle},
    events::announce,
};

/// What the library workers share.
pub struct LibraryDeps {
    pub pool: Pool,
    pub publisher: Publisher,
    pub rules: Rules,
    pub clock: Clock,
    pub metrics: Metrics,
    pub poison_delivery_limit: u32,
}

impl LibraryDeps {
    fn count(&self, operation: &str, branch: &str, outcome: &str, started: Instant) {
        self.metrics
            .operations
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
                branch: branch.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.metrics
            .operation_duration
            .get_or_create(&ActionLabels {
                action: operation.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    async fn settle(&self, queue: &str, delivery: &Delivery, how: Settle) {
        let outcome = match how {
            Settle::Ack => MessageOutcome::Acked,
            Settle::Requeue => MessageOutcome::Requeued,
            Settle::DeadLetter => MessageOutcome::DeadLettered,
        };
        settle(delivery, how).await;
        self.metrics.message(queue, outcome);
    }

    fn is_poison(&self, delivery: &Delivery) -> bool {
        headers::get_u64(&delivery.properties, headers::DELIVERY_COUNT).unwrap_or(0)
            >= u64::from(self.poison_delivery_limit)
    }
}

pub struct LoanServer {
    deps: Arc<LibraryDeps>,
    queue: &'static str,
}

impl LoanServer {
    pub fn new(deps: Arc<LibraryDeps>) -> Self {
        Self {
            deps,
            queue: bibliomq_core::broker::topology::LOANS_QUEUE,
        }
    }

    async fn process(&self, delivery: Delivery) {
        let deps = &self.deps;
        deps.metrics.message(self.queue, MessageOutcome::Consumed);
        let started = Instant::now();
        let request: LoanRequestMessage = match serde_json::from_slice(&delivery.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unreadable loan request; dead-lettering it");
                self.reply(
                    &delivery,
                    &json!({"outcome": "error", "code": "malformed_request"}),
                )
                .await;
                deps.settle(self.queue, &delivery, Settle::DeadLetter).await;
                return;
            }
        };
        if deps.is_poison(&delivery) {
            tracing::error!("loan request delivered again and again; dead-lettering it");
            deps.settle(self.queue, &delivery, Settle::DeadLetter).await;
            return;
        }
        let correlation_id = headers::correlation_id(&delivery.properties);
        let now = deps.clock.now();
        let due = deps.rules.due_for_loan(now);
        let mut outcome = self.apply(&request, now, due, &correlation_id).await;
        if outcome.is_err() {
            // Two requests with one key at the same instant: the loser's
            // insert fails on the unique key; the second try sees the winner.
            outcome = self.apply(&request, now, due, &correlation_id).await;
        }
        let reply = match outcome {
            Ok(mut v) => {
                bibliomq_core::library::normalize_times(&mut v);
                v
            }
            Err(e) => {
                tracing::warn!(error = %e, "loan transaction failed");
                json!({"outcome": "error", "code": "unavailable"})
            }
        };
        self.reply(&delivery, &reply).await;
        deps.settle(self.queue, &delivery, Settle::Ack).await;

        let replayed = reply["replayed"].as_bool().unwrap_or(false);
        let result = reply["outcome"].as_str().unwrap_or("error");
        if result == "error" || result == "not_found" || replayed {
            return;
        }
        let branch = reply["loan"]["branch"]
            .as_str()
            .unwrap_or(&request.branch)
            .to_owned();
        deps.count("loan", &branch, result, started);
        let (key, kind) = if result == "loaned" {
            (format!("loaned.{branch}"), "loaned")
        } else {
            (format!("rejected.loan.{}", request.branch), "rejected")
        };
        announce(
            &deps.publisher,
            key,
            json!({
                "type": kind,
                "operation": "loan",
                "operation_id": request.operation_id,
                "branch": branch,
                "isbn": request.isbn,
                "patron": request.patron,
                "loan": reply.get("loan"),
                "reason": reply.get("code"),
                "message": reply.get("message"),
                "correlation_id": correlation_id,
                "at": now,
            }),
        );
    }

    async fn apply(
        &self,
        r: &LoanRequestMessage,
        now: chrono::DateTime<chrono::Utc>,
        due: chrono::DateTime<chrono::Utc>,
        correlation_id: &str,
    ) -> anyhow::Result<Value> {
        let client = self.deps.pool.get().await?;
        Ok(store::apply_loan(
            &**client,
            r.operation_id,
            &r.idempotency_key,
            &r.fingerprint,
            &r.isbn,
            &r.patron,
            &r.branch,
            now,
            due,
            self.deps.rules.max_loans,
            correlation_id,
        )
        .await?)
    }

    /// Sends the answer to the caller's reply-to. A caller that gave up is
    /// gone; the answer stays stored under the idempotency key.
    async fn reply(&self, delivery: &Delivery, body: &Value) {
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().as_ref() else {
            return;
        };
        let mut reply = BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = props.correlation_id() {
            reply = reply.with_correlation_id(id.clone());
        }
        if let Err(e) = self
            .deps
            .publisher
            .publish(
                "",
                reply_to.as_str(),
                body.to_string().as_bytes(),
                reply,
                false,
            )
            .await
        {
            tracing::warn!(error = %e, "could not send the loan reply");
        }
    }
}

impl Handler for LoanServer {
    async fn handle(self: Arc<Self>, delivery: Delivery, _abandon: CancellationToken) {
        let correlation_id = headers::correlation_id(&delivery.properties);
        let span = tracing::info_span!("loan", %correlation_id);
        self.process(delivery).instrument(span).await;
    }
}

pub struct CirculationWorker {
    deps: Arc<LibraryDeps>,
    queue: &'static str,
}

impl CirculationWorker {
    pub fn new(deps: Arc<LibraryDeps>, queue: &'static str) -> Self {
        Self { deps, queue }
    }

    async fn process(&self, delivery: Delivery, abandon: CancellationToken) {
        let deps = &self.deps;
        deps.metrics.message(self.queue, MessageOutcome::Consumed);
        let started = Instant::now();
        let message: CirculationMessage = match serde_json::from_slice(&delivery.data) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "unreadable circulation message; dead-lettering it");
                deps.settle(self.queue, &delivery, Settle::DeadLetter).await;
                return;
            }
        };
        if deps.is_poison(&delivery) {
            tracing::error!("operation delivered again and again; dead-lettering it");
            deps.settle(self.queue, &delivery, Settle::DeadLetter).await;
            return;
        }
        let now = deps.clock.now();
        let applied = async {
            let client = deps.pool.get().await?;
            let outcome = match message.kind {
                OperationKind::Renewal => {
                    store::apply_renewal(&**client, message.operation_id, now, &deps.rules).await?
                }
                OperationKind::Return => {
                    store::apply_return(&**client, message.operation_id, now).await?
                }
                OperationKind::Loan => None,
            };
            anyhow::Ok(outcome)
        }
        .await;
        let outcome = match applied {
            Ok(Some(mut outcome)) => {
                bibliomq_core::library::normalize_times(&mut outcome);
                outcome
            }
            Ok(None) => {
                tracing::info!("operation already settled; acking the duplicate");
                deps.metrics.message(self.queue, MessageOutcome::Duplicate);
                deps.settle(self.queue, &delivery, Settle::Ack).await;
                return;
            }
            Err(e) => {
                // The database is away: hold the message a moment (no hot
                // loop), then hand it back for another try.
                tracing::warn!(error = %e, "cannot settle the operation now; requeueing");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = abandon.cancelled() => {}
                }
                deps.settle(self.queue, &delivery, Settle::Requeue).await;
                return;
            }
        };
        deps.settle(self.queue, &delivery, Settle::Ack).await;

        let op = message.kind.as_str();
        let rejected = outcome
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (key, kind) = match &rejected {
            None => (
                format!("{}.{}", message.kind.applied_event(), message.branch),
                message.kind.applied_event(),
            ),
            Some(_) => (format!("rejected.{op}.{}", message.branch), "rejected"),
        };
        deps.count(
            op,
            &message.branch,
            if rejected.is_some() {
                "rejected"
            } else {
                "applied"
            },
            started,
        );
        announce(
            &deps.publisher,
            key,
            json!({
                "type": kind,
                "operation": op,
                "operation_id": message.operation_id,
                "loan_id": message.loan_id,
                "branch": message.branch,
                "isbn": message.isbn,
                "patron": message.patron,
                "reason": rejected,
                "outcome": outcome,
                "correlation_id": headers::correlation_id(&delivery.properties),
                "at": now,
            }),
        );
    }
}

impl Handler for CirculationWorker {
    async fn handle(self: Arc<Self>, delivery: Delivery, abandon: CancellationToken) {
        let correlation_id = headers::correlation_id(&delivery.properties);
        let span = tracing::info_span!("circulation", queue = self.queue, %correlation_id);
        self.process(delivery, abandon).instrument(span).await;
    }
}
