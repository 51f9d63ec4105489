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

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bibliomq_core::{
    batch::{Batcher, Gather},
    broker::{
        Publisher, headers,
        rpc::{REPLY_BUNDLE_KIND, ReplyBundle},
    },
    clock::Clock,
    db::DbFailure,
    library::{
        Rules,
        hold::{HoldEvent, HoldEventType},
        message::{
            CirculationBundle, CirculationEvent, CirculationEventType, CirculationMessage,
            LoanBundle, LoanRequestMessage, OperationKind, OperationState, is_circulation_bundle,
            is_loan_bundle,
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

    /// A bundle's body, or `None` once it is dead-lettered: unreadable,
    /// not `whole` (a member without its ids), or delivered again and
    /// again. `what` names the bundle in the log.
    async fn open_bundle<T: serde::de::DeserializeOwned>(
        &self,
        queue: &str,
        delivery: &Delivery,
        what: &str,
        whole: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let why = match serde_json::from_slice::<T>(&delivery.data) {
            Ok(bundle) if !whole(&bundle) => "without the ids of each member".to_owned(),
            Ok(_) if self.is_poison(delivery) => "delivered again and again".to_owned(),
            Ok(bundle) => return Some(bundle),
            Err(e) => format!("unreadable: {e}"),
        };
        tracing::error!("{what} bundle {why}; dead-lettering it");
        self.settle(queue, delivery, Settle::DeadLetter).await;
        None
    }
}

/// Opens up to `connections` of the pool's connections and rehearses
/// circulation on each ([`store::rehearse`]) before the consumers start, so
/// that a fresh worker's first batches under load do not pay for planning
/// the circulation functions' statements. Best effort: gives up after
/// `limit` or on `stop`, and a connection whose rehearsal did not finish
/// is closed rather than handed back (it may be inside its transaction).
pub async fn rehearse_connections(
    deps: &LibraryDeps,
    connections: usize,
    limit: Duration,
    stop: &CancellationToken,
) {
    let started = Instant::now();
    let now = deps.clock.now();
    let rehearse = async {
        let clients = futures::future::join_all((0..connections).map(|_| deps.pool.get())).await;
        let runs = clients
            .into_iter()
            .filter_map(Result::ok)
            .zip(0_i64..)
            .map(|(client, nth)| async move {
                let mut guard = Rehearsing(Some(client));
                let client = guard.0.as_ref()?;
                match store::rehearse(client, nth, now, &deps.rules).await {
                    Ok(ran) => {
                        // Finished: the connection goes back to the pool.
                        let _ = guard.0.take();
                        Some(ran.is_some())
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not rehearse circulation on a connection");
                        None
                    }
                }
            });
        futures::future::join_all(runs).await
    };
    let outcome = tokio::select! {
        done = tokio::time::timeout(limit, rehearse) => done.ok(),
        () = stop.cancelled() => None,
    };
    let rehearsed = outcome.map_or(0, |r| r.into_iter().filter(|r| *r == Some(true)).count());
    tracing::info!(
        connections = rehearsed,
        elapsed = ?started.elapsed(),
        "circulation rehearsed on the database connections"
    );
}

/// A connection under rehearsal: dropped before it finishes (an error, a
/// time-out), it is closed instead of going back to the pool.
struct Rehearsing(Option<deadpool_postgres::Client>);

impl Drop for Rehearsing {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
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
        if is_loan_bundle(&delivery.properties) {
            return self.process_bundle(delivery, started).await;
        }
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
        let reply = self.settle_loan(&request, &correlation_id).await;
        self.reply(&delivery, &reply).await;
        deps.settle(self.queue, &delivery, Settle::Ack).await;
        self.announce(request, reply, correlation_id, now, started);
    }

    /// Several loan requests in one message: each settled as if it had
    /// come alone (together they make one transaction, or a few), all
    /// answered in one reply bundle, then acked. A bundle delivered again
    /// is settled again, each request replaying its first answer by its
    /// idempotency key.
    async fn process_bundle(&self, delivery: Delivery, started: Instant) {
        let deps = &self.deps;
        let Some(bundle) = deps
            .open_bundle(self.queue, &delivery, "loan", LoanBundle::is_whole)
            .await
        else {
            return;
        };
        let now = deps.clock.now();
        let replies = futures::future::join_all(
            bundle
                .requests
                .iter()
                .zip(&bundle.correlation_ids)
                .map(|(request, correlation_id)| self.settle_loan(request, correlation_id)),
        )
        .await;
        let bodies: Vec<Vec<u8>> = replies
            .iter()
            .map(|reply| serde_json::to_vec(reply).unwrap_or_else(|_| b"null".to_vec()))
            .collect();
        let body = ReplyBundle::body(
            bundle
                .calls
                .iter()
                .map(String::as_str)
                .zip(bodies.iter().map(Vec::as_slice)),
        );
        self.send_reply(
            &delivery,
            body,
            BasicProperties::default().with_type(REPLY_BUNDLE_KIND.into()),
        )
        .await;
        deps.settle(self.queue, &delivery, Settle::Ack).await;
        for ((request, reply), correlation_id) in bundle
            .requests
            .into_iter()
            .zip(replies)
            .zip(bundle.correlation_ids)
        {
            self.announce(request, reply, correlation_id, now, started);
        }
    }

    /// Settles one loan request in the group commit; [`LoanOutcome::Error`]
    /// when the transaction failed.
    async fn settle_loan(&self, request: &LoanRequestMessage, correlation_id: &str) -> LoanOutcome {
        let outcome = self
            .loans
            .submit(LoanItem {
                op: request.operation_id,
                key: request.idempotency_key.clone(),
                fingerprint: request.fingerprint.clone(),
                isbn: request.isbn.clone(),
                patron: request.patron.clone(),
                branch: request.branch.clone(),
                correlation_id: correlation_id.to_owned(),
            })
            .await;
        outcome.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "loan transaction failed; answering unavailable");
            LoanOutcome::Error
        })
    }

    /// Counts a settled loan request and publishes its outcome event.
    fn announce(
        &self,
        request: LoanRequestMessage,
        reply: LoanOutcome,
        correlation_id: String,
        now: chrono::DateTime<chrono::Utc>,
        started: Instant,
    ) {
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
        self.deps.count("loan", &branch, counted, started);
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
        announce(&self.deps.publisher, event.routing_key(), &event);
    }

    /// Sends the answer to the caller's reply-to. A caller that gave up is
    /// gone; the answer stays stored under the idempotency key.
    async fn reply(&self, delivery: &Delivery, body: &LoanOutcome) {
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "could not serialise the loan reply");
                return;
            }
        };
        let mut props = BasicProperties::default();
        if let Some(id) = delivery.properties.correlation_id() {
            props = props.with_correlation_id(id.clone());
        }
        self.send_reply(delivery, body, props).await;
    }

    async fn send_reply(&self, delivery: &Delivery, body: Vec<u8>, props: BasicProperties) {
        let Some(reply_to) = delivery.properties.reply_to().as_ref() else {
            return;
        };
        let props = props.with_content_type("application/json".into());
        if let Err(e) = self
            .deps
            .publisher
            .publish("", reply_to.as_str(), &body, props, false)
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

/// How long a batch of renewals or returns waits for more to join it.
/// Nobody's answer waits on it (the request was answered `202` when it was
/// recorded), and a batch costs about as much for two operations as for
/// ten.
const SETTLE_GATHER: Duration = Duration::from_millis(10);

pub struct CirculationWorker {
    deps: Arc<LibraryDeps>,
    queue: &'static str,
    settle: SettleBatcher,
}

impl CirculationWorker {
    /// A worker for one kind of operation (renewals or returns) on `queue`.
    pub fn new(deps: Arc<LibraryDeps>, queue: &'static str, kind: OperationKind) -> Self {
        let d = deps.clone();
        let settle = Batcher::spawn_gathering(
            128,
            bibliomq_core::batch::IN_FLIGHT,
            Gather::Always(SETTLE_GATHER),
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
        if is_circulation_bundle(&delivery.properties) {
            return self.process_bundle(delivery, abandon, started).await;
        }
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
        let outcome = match self.settle.submit(message.operation_id).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "cannot settle the operation now; requeueing");
                self.give_back(&delivery, &abandon).await;
                return;
            }
        };
        deps.settle(self.queue, &delivery, Settle::Ack).await;
        let correlation_id = headers::correlation_id(&delivery.properties);
        self.announce(message, outcome, correlation_id, now, started);
    }

    /// Several operations of one kind at one branch in one message: each
    /// settled as if it had come alone (together, in one transaction or a
    /// few), the bundle acked once all are committed. If any cannot be
    /// settled now, the bundle goes back whole; when it comes again, those
    /// settled meanwhile are duplicates that change nothing.
    async fn process_bundle(
        &self,
        delivery: Delivery,
        abandon: CancellationToken,
        started: Instant,
    ) {
        let deps = &self.deps;
        let Some(bundle) = deps
            .open_bundle(
                self.queue,
                &delivery,
                "circulation",
                CirculationBundle::is_whole,
            )
            .await
        else {
            return;
        };
        let now = deps.clock.now();
        let settled = futures::future::join_all(
            bundle
                .operations
                .iter()
                .map(|m| self.settle.submit(m.operation_id)),
        )
        .await;
        let outcomes = match settled.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot settle the bundle's operations now; requeueing it");
                self.give_back(&delivery, &abandon).await;
                return;
            }
        };
        deps.settle(self.queue, &delivery, Settle::Ack).await;
        for ((message, outcome), correlation_id) in bundle
            .operations
            .into_iter()
            .zip(outcomes)
            .zip(bundle.correlation_ids)
        {
            self.announce(message, outcome, correlation_id, now, started);
        }
    }

    /// The database is away: holds the message a moment (no hot loop),
    /// then hands it back for another try.
    async fn give_back(&self, delivery: &Delivery, abandon: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = abandon.cancelled() => {}
        }
        self.deps
            .settle(self.queue, delivery, Settle::Requeue)
            .await;
    }

    /// Counts a settled operation and publishes its outcome event (and the
    /// hold shelf's, for a returned copy put aside for a hold); `None` is a
    /// duplicate, counted as such.
    fn announce(
        &self,
        message: CirculationMessage,
        outcome: Option<Settlement>,
        correlation_id: String,
        now: chrono::DateTime<chrono::Utc>,
        started: Instant,
    ) {
        let deps = &self.deps;
        let Some(outcome) = outcome else {
            tracing::info!(operation_id = %message.operation_id, "operation already settled; acked the duplicate");
            deps.metrics.message(self.queue, MessageOutcome::Duplicate);
            return;
        };
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
            correlation_id,
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
