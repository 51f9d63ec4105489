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
//! `loaned.<branch>`, `renewed.<branch>`, `returned.<branch>`, `rejected.<op>.<branch>`;
//! and `hold.ready.<pickup branch>` when a returned copy goes onto the hold
//! shelf for the first waiting hold of its title.

use std::{sync::Arc, time::Instant};

use bibliomq_core::{
    batch::Batcher,
    broker::{Publisher, headers},
    clock::Clock,
    db::DbFailure,
    library::{
        Rules,
        hold::{HoldEvent, HoldEventType},
        message::{
            CirculationEvent, CirculationEventType, CirculationMessage, LoanRequestMessage,
            OperationKind, OperationState,
        },
        outcome::{LoanOutcome, Refusal, Settlement},
        store::{self, LoanItem},
    },
    metrics::{ActionLabels, MessageOutcome, Metrics, OperationLabels},
};
use deadpool_postgres::Pool;
use lapin::{BasicProperties, message::Delivery};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use bibliomq_core::broker::events::announce;

use crate::consumer::{Handler, Settle, settle};

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

use bibliomq_core::db::is_contention;

type LoanBatcher = Batcher<LoanItem, LoanOutcome, DbFailure>;
type SettleBatcher = Batcher<Uuid, Option<Settlement>, DbFailure>;

pub struct LoanServer {
    deps: Arc<LibraryDeps>,
    queue: &'static str,
    loans: LoanBatcher,
}

impl LoanServer {
    pub fn new(deps: Arc<LibraryDeps>) -> Self {
        let d = deps.clone();
        // Group commit: the loans that arrive together share a transaction.
        let loans = Batcher::spawn(
            64,
            bibliomq_core::batch::IN_FLIGHT,
            move |items: Vec<LoanItem>| {
                let d = d.clone();
                async move {
                    let client = d.pool.get().await?;
                    let now = d.clock.now();
                    let due = d.rules.due_for_loan(now);
                    let max = d.rules.max_loans;
                    match store::apply_loans(&client, &items, now, due, max).await {
                        Ok(answers) => Ok(answers),
                        Err(e) if is_contention(&e) => {
                            tracing::debug!(error = %e, "loan batch met another; one by one");
                            let mut answers = Vec::with_capacity(items.len());
                            for it in &items {
                                let one = || store::apply_loan(&**client, it, now, due, max);
                                // The twin with the same key may have just
                                // committed; the second try then replays it.
                                let answer = match one().await {
                                    Err(e) if is_contention(&e) => one().await?,
                                    other => other?,
                                };
                                answers.push(answer);
                            }
                            Ok(answers)
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            },
        );
        Self {
            deps,
            queue: bibliomq_core::broker::topology::LOANS_QUEUE,
            loans,
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
                self.reply(&delivery, &LoanOutcome::Error).await;
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
        let outcome = self
            .loans
            .submit(LoanItem {
                op: request.operation_id,
                key: request.idempotency_key.clone(),
                fingerprint: request.fingerprint.clone(),
                isbn: request.isbn.clone(),
                patron: request.patron.clone(),
                branch: request.branch.clone(),
                correlation_id: correlation_id.clone(),
            })
            .await;
        let reply = outcome.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "loan transaction failed; answering unavailable");
            LoanOutcome::Error
        });
        self.reply(&delivery, &reply).await;
        deps.settle(self.queue, &delivery, Settle::Ack).await;

        // Replays, bad input and failures changed nothing: no event, no count.
        let (event, branch, loan, refusal) = match reply {
            LoanOutcome::Loaned {
                replayed: false,
                loan,
            } => (
                CirculationEventType::Loaned,
                loan.branch.clone(),
                Some(loan),
                None,
            ),
            LoanOutcome::Rejected(refusal) => (
                CirculationEventType::Rejected,
                request.branch.clone(),
                None,
                Some(refusal),
            ),
            LoanOutcome::Loaned { replayed: true, .. }
            | LoanOutcome::NotFound(_)
            | LoanOutcome::Error => return,
        };
        let counted = match &refusal {
            Some(_) => OperationState::Rejected.as_str(),
            None => "loaned",
        };
        deps.count("loan", &branch, counted, started);
        let event = CirculationEvent {
            event,
            operation: OperationKind::Loan,
            operation_id: request.operation_id,
            loan_id: loan.as_ref().map(|l| l.id),
            branch,
            isbn: request.isbn,
            patron: request.patron,
            loan,
            outcome: None,
            reason: refusal.as_ref().map(Refusal::reason),
            message: refusal.as_ref().map(|r| r.message()),
            correlation_id,
            at: now,
        };
        announce(&deps.publisher, event.routing_key(), &event);
    }

    /// Sends the answer to the caller's reply-to. A caller that gave up is
    /// gone; the answer stays stored under the idempotency key.
    async fn reply(&self, delivery: &Delivery, body: &LoanOutcome) {
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().as_ref() else {
            return;
        };
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "could not serialise the loan reply");
                return;
            }
        };
        let mut reply = BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = props.correlation_id() {
            reply = reply.with_correlation_id(id.clone());
        }
        if let Err(e) = self
            .deps
            .publisher
            .publish("", reply_to.as_str(), &body, reply, false)
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
    settle: SettleBatcher,
}

impl CirculationWorker {
    /// A worker for one kind of operation (renewals or returns) on `queue`.
    pub fn new(deps: Arc<LibraryDeps>, queue: &'static str, kind: OperationKind) -> Self {
        let d = deps.clone();
        let settle = Batcher::spawn(
            128,
            bibliomq_core::batch::IN_FLIGHT,
            move |ops: Vec<Uuid>| {
                let d = d.clone();
                async move {
                    let client = d.pool.get().await?;
                    let now = d.clock.now();
                    let batch = match kind {
                        OperationKind::Renewal => {
                            store::apply_renewals(&client, &ops, now, &d.rules).await
                        }
                        _ => store::apply_returns(&client, &ops, now).await,
                    };
                    match batch {
                        Ok(outcomes) => Ok(outcomes),
                        Err(e) if is_contention(&e) => {
                            tracing::debug!(error = %e, "settle batch met another; one by one");
                            let mut outcomes = Vec::with_capacity(ops.len());
                            for op in &ops {
                                outcomes.push(match kind {
                                    OperationKind::Renewal => {
                                        store::apply_renewal(&**client, *op, now, &d.rules).await?
                                    }
                                    _ => store::apply_return(&**client, *op, now).await?,
                                });
                            }
                            Ok(outcomes)
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            },
        );
        Self {
            deps,
            queue,
            settle,
        }
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
        let applied = self.settle.submit(message.operation_id).await;
        let outcome = match applied {
            Ok(Some(outcome)) => outcome,
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

        // A returned copy that went onto the hold shelf for a hold.
        let shelved = match &outcome {
            Settlement::Returned(r) => r.hold.clone(),
            _ => None,
        };
        let refusal = outcome.refusal().cloned();
        let (event, state) = match &refusal {
            None => (message.kind.applied_event(), OperationState::Applied),
            Some(_) => (CirculationEventType::Rejected, OperationState::Rejected),
        };
        deps.count(
            message.kind.as_str(),
            &message.branch,
            state.as_str(),
            started,
        );
        let event = CirculationEvent {
            event,
            operation: message.kind,
            operation_id: message.operation_id,
            loan_id: Some(message.loan_id),
            branch: message.branch,
            isbn: message.isbn,
            patron: message.patron,
            loan: None,
            outcome: Some(outcome),
            reason: refusal.as_ref().map(Refusal::reason),
            message: refusal.as_ref().map(|r| r.message()),
            correlation_id: headers::correlation_id(&delivery.properties),
            at: now,
        };
        announce(&deps.publisher, event.routing_key(), &event);
        if let Some(pickup) = shelved {
            let event = HoldEvent::new(HoldEventType::Ready, &pickup, now);
            announce(&deps.publisher, event.routing_key(), &event);
        }
    }
}

impl Handler for CirculationWorker {
    async fn handle(self: Arc<Self>, delivery: Delivery, abandon: CancellationToken) {
        let correlation_id = headers::correlation_id(&delivery.properties);
        let span = tracing::info_span!("circulation", queue = self.queue, %correlation_id);
        self.process(delivery, abandon).instrument(span).await;
    }
}
