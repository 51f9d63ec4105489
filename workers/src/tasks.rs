//! The task worker: claims a delivered task in PostgreSQL, runs it, stores a
//! large result in object storage, commits the outcome, and only then acks.
//!
//! - A redelivered task that already finished is acked without running again
//!   (the claim only takes `queued` or `running` rows).
//! - Passing failures (object storage or PostgreSQL unavailable) go to a
//!   retry queue whose TTL sends them back after a growing delay; when the
//!   retries are spent the task is marked `dead` and dead-lettered.
//! - A task that keeps killing its worker (delivered again and again without
//!   being settled) is poison: marked `dead` and dead-lettered.
//! - Claims and outcomes are written in batches (group commit).
//! - Every run has a time limit (the action's own, or less when the request
//!   asked for less); past it the run is stopped and the task fails with
//!   code `timeout`, without retries.
//! - A task a client cancelled is stopped (see [`crate::cancels`]) and
//!   recorded `cancelled`; a cancelled task delivered later is acked unrun.
//! - A bundle (several tasks in one message, see [`TaskBundle`]) runs each
//!   of its tasks as above and is acked once all their outcomes are
//!   committed; a bundle delivered again is split into one message per
//!   task, so the checks above stay per task.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bibliomq_core::{
    batch::Batcher,
    broker::{Publisher, headers, topology},
    config::TaskSettings,
    db::DbFailure,
    metrics::{ActionLabels, MessageOutcome, Metrics, TaskLabels},
    storage::{ObjectStore, StorageError},
    tasks::{
        Action, TIMEOUT_CODE, TaskBundle, TaskEvent, TaskMessage, TaskOutput, TaskRequest,
        TaskState, is_bundle,
        store::{self, Claim, Finish, FinishedResult},
    },
};
use deadpool_postgres::Pool;
use lapin::{BasicProperties, message::Delivery, types::AMQPValue};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    consumer::{Handler, Settle, settle},
    reaper::InFlight,
};

type Claims = Batcher<Uuid, Option<Claim>, DbFailure>;

/// How a run ended short of a result.
enum Ended {
    Failed(String),
    TimedOut(std::time::Duration),
    Cancelled,
}
type Finishes = Batcher<Finish, bool, DbFailure>;
type QuickFinishes = Batcher<Finish, Option<i32>, DbFailure>;

/// A run that ends within this is recorded without a `running` write
/// first: claim and outcome in one statement. Long enough for the quick
/// actions (sum, upper, echo, greet, small fib and wordcount) to fit
/// with room for a busy machine; short enough that a long task shows as
/// `running` (and can be cancelled, and is kept off the reaper by
/// heartbeats) almost from its start.
const QUICK_RUN: std::time::Duration = std::time::Duration::from_millis(50);

pub struct TaskWorker {
    publisher: Publisher,
    store: ObjectStore,
    settings: TaskSettings,
    topology: topology::Topology,
    claims: Claims,
    finishes: Finishes,
    quick_finishes: QuickFinishes,
    metrics: Metrics,
    in_flight: InFlight,
    /// Tasks of bundles running at once in this process.
    bundled_runs: tokio::sync::Semaphore,
}

impl TaskWorker {
    pub fn new(
        pool: Pool,
        publisher: Publisher,
        store: ObjectStore,
        settings: TaskSettings,
        metrics: Metrics,
        in_flight: InFlight,
        bundled_runs: usize,
    ) -> Self {
        let claim_pool = pool.clone();
        let claims = Batcher::spawn(
            512,
            bibliomq_core::batch::IN_FLIGHT,
            move |ids: Vec<Uuid>| {
                let pool = claim_pool.clone();
                async move {
                    let client = pool.get().await?;
                    let claimed: std::collections::HashMap<Uuid, Claim> =
                        store::claim(&client, &ids).await?.into_iter().collect();
                    Ok(ids.iter().map(|id| claimed.get(id).copied()).collect())
                }
            },
        );
        let finish_pool = pool.clone();
        let finishes = Batcher::spawn(
            512,
            bibliomq_core::batch::IN_FLIGHT,
            move |outcomes: Vec<Finish>| {
                let pool = finish_pool.clone();
                async move {
                    let client = pool.get().await?;
                    Ok(store::finish(&client, &outcomes).await?)
                }
            },
        );
        let quick_finishes = Batcher::spawn(
            512,
            bibliomq_core::batch::IN_FLIGHT,
            move |outcomes: Vec<Finish>| {
                let pool = pool.clone();
                async move {
                    let client = pool.get().await?;
                    Ok(store::claim_and_finish(&client, &outcomes).await?)
                }
            },
        );
        Self {
            publisher,
            store,
            topology: topology::Topology::new(&settings),
            settings,
            claims,
            finishes,
            quick_finishes,
            metrics,
            in_flight,
            bundled_runs: tokio::sync::Semaphore::new(bundled_runs),
        }
    }

    /// A task that came in its own message.
    async fn process(&self, delivery: Delivery, abandon: CancellationToken) {
        let attempt = headers::get_u64(&delivery.properties, headers::ATTEMPT).unwrap_or(1);
        let redeliveries =
            headers::get_u64(&delivery.properties, headers::DELIVERY_COUNT).unwrap_or(0);
        let carrier = Carrier::Own(&delivery);
        let message: TaskMessage = match serde_json::from_slice(&delivery.data) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .message(topology::TASKS_QUEUE, MessageOutcome::Consumed);
                tracing::error!(error = %e, "unreadable task message; dead-lettering it");
                self.settle(&carrier, Settle::DeadLetter).await;
                return;
            }
        };
        self.run_task(&carrier, &message, attempt, redeliveries, &abandon)
            .await;
    }

    /// A bundle: each of its tasks runs as if it had come alone, and the
    /// bundle is acked once every outcome is committed, or given back
    /// whole when a task asked for its message back. Delivered again, it
    /// is split into one message per task instead (see [`TaskBundle`]).
    async fn process_bundle(&self, delivery: Delivery, abandon: CancellationToken) {
        let bundle: TaskBundle = match serde_json::from_slice(&delivery.data) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "unreadable task bundle; dead-lettering it");
                settle(&delivery, Settle::DeadLetter).await;
                self.metrics
                    .message(topology::TASKS_QUEUE, MessageOutcome::DeadLettered);
                return;
            }
        };
        let redeliveries =
            headers::get_u64(&delivery.properties, headers::DELIVERY_COUNT).unwrap_or(0);
        if delivery.redelivered || redeliveries > 0 {
            self.split(&delivery, &bundle).await;
            return;
        }
        let give_back = GiveBack::default();
        let runs = bundle.tasks.iter().enumerate().map(|(i, message)| {
            let correlation_id = bundle.correlation_id(i);
            let carrier = Carrier::Part {
                properties: &delivery.properties,
                correlation_id,
                give_back: &give_back,
            };
            let span = match correlation_id {
                Some(correlation_id) => {
                    tracing::info_span!("task", task_id = %message.id, %correlation_id)
                }
                None => tracing::info_span!("task", task_id = %message.id),
            };
            let abandon = &abandon;
            async move {
                // As many bundled tasks run at once as single ones may.
                let _permit = tokio::select! {
                    permit = self.bundled_runs.acquire() => permit,
                    () = abandon.cancelled() => {
                        self.settle(&carrier, Settle::Requeue).await;
                        return;
                    }
                };
                // Boxed: a bundle's tasks waiting their turn stay small.
                Box::pin(self.run_task(&carrier, message, 1, 0, abandon)).await;
            }
            .instrument(span)
        });
        futures::future::join_all(runs).await;
        if give_back.0.load(Ordering::Relaxed) {
            tracing::warn!(tasks = bundle.tasks.len(), "giving the bundle back");
            settle(&delivery, Settle::Requeue).await;
        } else {
            settle(&delivery, Settle::Ack).await;
        }
    }

    /// Sends a bundle's tasks on as one message each, then acks the bundle.
    /// Tasks already finished are acked unrun when they come; a task sent
    /// twice (the split itself interrupted) runs once, as any duplicate.
    async fn split(&self, delivery: &Delivery, bundle: &TaskBundle) {
        let mut messages = Vec::with_capacity(bundle.tasks.len());
        for (i, message) in bundle.tasks.iter().enumerate() {
            match serde_json::to_vec(message) {
                Ok(body) => messages.push((
                    message.routing_key(),
                    body,
                    part_properties(&delivery.properties, message.id, bundle.correlation_id(i)),
                )),
                Err(e) => {
                    tracing::error!(error = %e, task_id = %message.id, "cannot write a task's message; the reaper will send it");
                }
            }
        }
        let published = self
            .publisher
            .publish_many(topology::TASKS_EXCHANGE, &messages, true)
            .await;
        if let Some(Err(e)) = published.iter().find(|p| p.is_err()) {
            tracing::error!(error = %e, "cannot split the bundle delivered again; requeueing it");
            // Not straight away, or a broken broker turns into a hot loop.
            tokio::time::sleep(self.settings.retry_base).await;
            settle(delivery, Settle::Requeue).await;
            return;
        }
        tracing::info!(
            tasks = messages.len(),
            "a bundle came again: sent on as one message per task"
        );
        settle(delivery, Settle::Ack).await;
        self.metrics
            .message(topology::TASKS_QUEUE, MessageOutcome::Split);
    }

    /// Runs one task and settles its carrier.
    async fn run_task(
        &self,
        delivery: &Carrier<'_>,
        message: &TaskMessage,
        attempt: u64,
        redeliveries: u64,
        abandon: &CancellationToken,
    ) {
        self.metrics
            .message(topology::TASKS_QUEUE, MessageOutcome::Consumed);
        if redeliveries >= u64::from(self.settings.poison_delivery_limit) {
            let error = format!(
                "delivered {} times without finishing (did it crash its worker?)",
                redeliveries + 1
            );
            tracing::error!(%error, "poison task");
            self.give_up(delivery, message, error).await;
            return;
        }

        let parsed = message
            .action
            .parse::<Action>()
            .and_then(|a| TaskRequest::parse(a, &message.payload));
        // Cancelled when the run must end early (time limit, a client's
        // cancel, or this function returning), so a blocking action stops
        // too, not only the future awaiting it.
        let stop = CancellationToken::new();
        let _stop_on_exit = stop.clone().drop_guard();
        let run = async {
            match parsed {
                Err(invalid) => Err(Ended::Failed(invalid.to_string())),
                Ok(request) => {
                    let limit = message.time_limit(request.action(), self.settings.timeout_max);
                    tokio::select! {
                        out = self.timed_run(request, &stop) => out.map_err(|f| Ended::Failed(f.to_string())),
                        () = tokio::time::sleep(limit) => {
                            stop.cancel();
                            Err(Ended::TimedOut(limit))
                        }
                    }
                }
            }
        };
        tokio::pin!(run);

        // A quick run is not claimed first: when it ends within
        // QUICK_RUN, its claim and its outcome are one write (the row goes
        // from `queued` to its final state, never `running`). Until the
        // outcome is committed the row stays `queued` and the message
        // unacked, so a crash loses nothing: the message is delivered
        // again and the task run again, as after a crash while `running`.
        let quick = tokio::select! {
            out = &mut run => Some(out),
            () = tokio::time::sleep(QUICK_RUN) => None,
            () = abandon.cancelled() => {
                tracing::warn!("shutting down mid-task; requeueing it");
                self.settle(delivery, Settle::Requeue).await;
                return;
            }
        };
        if let Some(outcome) = quick {
            if matches!(&outcome, Ok(o) if o.bytes.len() > self.settings.inline_result_limit) {
                // A result for object storage: claimed first, as a long
                // run is, so that a store that fails counts its attempt.
                let Some(attempts) = self.claim(delivery, message, attempt).await else {
                    return;
                };
                if let Some(finish) = self.finish_of(delivery, message, attempt, outcome).await {
                    self.complete(delivery, message, attempt, attempts, finish)
                        .await;
                }
                return;
            }
            let Some(finish) = self.finish_of(delivery, message, attempt, outcome).await else {
                return;
            };
            match self.quick_finishes.submit(finish.clone()).await {
                Ok(Some(attempts)) => {
                    self.settle(delivery, Settle::Ack).await;
                    self.announce_finish(message, &finish, attempts).await;
                }
                // Not waiting to run (already running elsewhere, finished,
                // cancelled or withdrawn): claim it as usual, which says
                // which, and record this run's outcome if it is ours.
                Ok(None) => {
                    if let Some(attempts) = self.claim(delivery, message, attempt).await {
                        self.complete(delivery, message, attempt, attempts, finish)
                            .await;
                    }
                }
                Err(e) => {
                    self.retry_or_give_up(delivery, message, attempt, format!("database: {e}"))
                        .await;
                }
            }
            return;
        }

        let Some(attempts) = self.claim(delivery, message, attempt).await else {
            return;
        };
        tracing::debug!(attempts, "running");
        // Heartbeats keep the reaper off this task while it is in hand; the
        // cancel watcher finds it through the same registration.
        let held = self.in_flight.hold(message.id);
        let outcome = tokio::select! {
            out = &mut run => out,
            () = held.cancelled().cancelled() => {
                stop.cancel();
                Err(Ended::Cancelled)
            }
            () = abandon.cancelled() => {
                tracing::warn!("shutting down mid-task; requeueing it");
                self.settle(delivery, Settle::Requeue).await;
                return;
            }
        };
        let Some(finish) = self.finish_of(delivery, message, attempt, outcome).await else {
            return;
        };
        self.complete(delivery, message, attempt, attempts, finish)
            .await;
    }

    /// Marks the task `running` and returns its attempt number; or settles
    /// the delivery (a duplicate, a cancelled task, a database failure) and
    /// returns `None`.
    async fn claim(
        &self,
        delivery: &Carrier<'_>,
        message: &TaskMessage,
        attempt: u64,
    ) -> Option<i32> {
        match self.claims.submit(message.id).await {
            Ok(Some(Claim::Run { attempts })) => Some(attempts),
            Ok(Some(Claim::Cancelled)) => {
                tracing::info!("task was cancelled while its worker was away; not running it");
                self.settle(delivery, Settle::Ack).await;
                self.announce(
                    message,
                    TaskState::Cancelled,
                    0,
                    Some("cancelled while it ran"),
                )
                .await;
                None
            }
            Ok(None) => {
                tracing::info!(
                    "task already finished, cancelled or withdrawn; acking the duplicate"
                );
                self.metrics
                    .message(topology::TASKS_QUEUE, MessageOutcome::Duplicate);
                self.settle(delivery, Settle::Ack).await;
                None
            }
            Err(e) => {
                self.retry_or_give_up(delivery, message, attempt, format!("database: {e}"))
                    .await;
                None
            }
        }
    }

    /// The outcome to record for how a run ended; a result that cannot be
    /// kept (object storage down) sends the task to retry and gives `None`.
    async fn finish_of(
        &self,
        delivery: &Carrier<'_>,
        message: &TaskMessage,
        attempt: u64,
        outcome: Result<TaskOutput, Ended>,
    ) -> Option<Finish> {
        Some(match outcome {
            Ok(output) => match self.keep_result(message, output).await {
                Ok(result) => Finish::Succeeded {
                    id: message.id,
                    result,
                },
                Err(e) => {
                    self.retry_or_give_up(delivery, message, attempt, e.to_string())
                        .await;
                    return None;
                }
            },
            Err(Ended::Failed(error)) => Finish::Failed {
                id: message.id,
                error,
                code: None,
            },
            Err(Ended::TimedOut(limit)) => {
                tracing::info!(
                    limit_ms = limit.as_millis(),
                    "task stopped at its time limit"
                );
                Finish::Failed {
                    id: message.id,
                    error: format!("stopped at its time limit of {} ms", limit.as_millis()),
                    code: Some(TIMEOUT_CODE),
                }
            }
            Err(Ended::Cancelled) => {
                tracing::info!("task stopped: a client cancelled it");
                Finish::Cancelled { id: message.id }
            }
        })
    }

    /// Commits the outcome of a claimed run, then acks, then announces it.
    async fn complete(
        &self,
        delivery: &Carrier<'_>,
        message: &TaskMessage,
        attempt: u64,
        attempts: i32,
        finish: Finish,
    ) {
        match self.finishes.submit(finish.clone()).await {
            Ok(applied) => {
                self.settle(delivery, Settle::Ack).await;
                if applied {
                    self.announce_finish(message, &finish, attempts).await;
                }
            }
            Err(e) => {
                self.retry_or_give_up(delivery, message, attempt, format!("database: {e}"))
                    .await;
            }
        }
    }

    /// Publishes the outcome event of a recorded finish.
    async fn announce_finish(&self, message: &TaskMessage, finish: &Finish, attempts: i32) {
        let (state, error) = match finish {
            Finish::Succeeded { .. } => (TaskState::Succeeded, None),
            Finish::Cancelled { .. } => (TaskState::Cancelled, Some("cancelled while it ran")),
            Finish::Failed { error, .. } => (TaskState::Failed, Some(error.as_str())),
            Finish::Retrying { .. } => (TaskState::Queued, None),
            Finish::Dead { error, .. } => (TaskState::Dead, Some(error.as_str())),
        };
        self.announce(message, state, attempts, error).await;
    }

    /// Small results stay inline; large ones go to object storage.
    async fn keep_result(
        &self,
        message: &TaskMessage,
        output: TaskOutput,
    ) -> Result<FinishedResult, StorageError> {
        if output.bytes.len() <= self.settings.inline_result_limit {
            return Ok(FinishedResult::Inline {
                text: String::from_utf8_lossy(&output.bytes).into_owned(),
                content_type: output.content_type.mime().to_owned(),
            });
        }
        let key = format!(
            "results/{}/{}.{}",
            message.submitted_at.format("%Y/%m/%d"),
            message.id,
            output.content_type.extension()
        );
        let stored = self
            .store
            .put(&key, output.bytes, output.content_type.mime())
            .await?;
        tracing::info!(key = %stored.key, size = stored.size, "stored a large result");
        Ok(FinishedResult::Stored(stored))
    }

    /// A passing failure: park the task in the retry queue for this attempt,
    /// or give up when the retries are spent.
    async fn retry_or_give_up(
        &self,
        delivery: &Carrier<'_>,
        message: &TaskMessage,
        attempt: u64,
        error: String,
    ) {
        let retry = u32::try_from(attempt).unwrap_or(u32::MAX);
        let Some(queue) = self.topology.task_retry_queue(retry) else {
            self.give_up(
                delivery,
                message,
                format!("gave up after {attempt} attempts: {error}"),
            )
            .await;
            return;
        };
        let delay = self.settings.retry_delay(retry);
        tracing::warn!(%error, attempt, retry_in = ?delay, "passing failure; will retry");
        // Best effort: with the database down this cannot be recorded, and
        // the claim on the next attempt sets things straight.
        let _ = self
            .finishes
            .submit(Finish::Retrying {
                id: message.id,
                error: format!("attempt {attempt} failed, retrying in {delay:?}: {error}"),
            })
            .await;
        let props = headers::with_header(
            headers::with_header(
                delivery.properties(message),
                headers::ATTEMPT,
                AMQPValue::LongLongInt(i64::try_from(attempt + 1).unwrap_or(i64::MAX)),
            ),
            headers::LAST_ERROR,
            headers::long_string(&error),
        );
        match self
            .publisher
            .publish(
                topology::RETRY_EXCHANGE,
                &queue,
                &delivery.data(message),
                props,
                true,
            )
            .await
        {
            Ok(()) => {
                self.metrics
                    .message(topology::TASKS_QUEUE, MessageOutcome::Retried);
                self.settle(delivery, Settle::Ack).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot park the task for retry; requeueing");
                // Not straight away, or a broken dependency turns into a hot loop.
                tokio::time::sleep(self.settings.retry_base).await;
                self.settle(delivery, Settle::Requeue).await;
            }
        }
    }

    /// Marks the task dead and moves its message to the dead-letter queue
    /// with the reason attached.
    async fn give_up(&self, delivery: &Carrier<'_>, message: &TaskMessage, error: String) {
        tracing::error!(%error, "task is dead");
        let recorded = self
            .finishes
            .submit(Finish::Dead {
                id: message.id,
                error: error.clone(),
            })
            .await;
        let props = headers::with_header(
            delivery.properties(message),
            headers::LAST_ERROR,
            headers::long_string(&error),
        );
        let routing_key = message.routing_key();
        match self
            .publisher
            .publish(
                topology::DEAD_LETTER_EXCHANGE,
                &routing_key,
                &delivery.data(message),
                props,
                true,
            )
            .await
        {
            Ok(()) => {
                self.metrics
                    .message(topology::TASKS_QUEUE, MessageOutcome::DeadLettered);
                self.settle(delivery, Settle::Ack).await;
            }
            // The queue's own dead-letter exchange still catches it.
            Err(_) => self.settle(delivery, Settle::DeadLetter).await,
        }
        if matches!(recorded, Ok(true)) {
            self.announce(message, TaskState::Dead, 0, Some(&error))
                .await;
        }
    }

    async fn timed_run(
        &self,
        request: TaskRequest,
        stop: &CancellationToken,
    ) -> Result<TaskOutput, bibliomq_core::tasks::TaskFailure> {
        let action = request.action();
        let started = std::time::Instant::now();
        let out = bibliomq_core::tasks::run(request, stop).await;
        self.metrics
            .task_duration
            .get_or_create(&ActionLabels {
                action: action.as_str().to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        out
    }

    async fn settle(&self, carrier: &Carrier<'_>, how: Settle) {
        let outcome = match how {
            Settle::Ack => MessageOutcome::Acked,
            Settle::Requeue => MessageOutcome::Requeued,
            Settle::DeadLetter => MessageOutcome::DeadLettered,
        };
        match carrier {
            Carrier::Own(delivery) => settle(delivery, how).await,
            Carrier::Part { give_back, .. } => {
                if !matches!(how, Settle::Ack) {
                    give_back.0.store(true, Ordering::Relaxed);
                }
            }
        }
        self.metrics.message(topology::TASKS_QUEUE, outcome);
    }

    /// Publishes the outcome event (`task.succeeded`, `task.failed`, `task.dead`).
    async fn announce(
        &self,
        message: &TaskMessage,
        state: TaskState,
        attempts: i32,
        error: Option<&str>,
    ) {
        self.metrics
            .tasks_finished
            .get_or_create(&TaskLabels {
                action: message.action.clone(),
                state: state.as_str().to_owned(),
            })
            .inc();
        let event = TaskEvent::new(message, state, attempts, error, chrono::Utc::now());
        bibliomq_core::broker::events::announce(&self.publisher, event.event.clone(), &event);
    }
}

impl Handler for TaskWorker {
    async fn handle(self: Arc<Self>, delivery: Delivery, abandon: CancellationToken) {
        let correlation_id = headers::correlation_id(&delivery.properties);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        if is_bundle(&delivery.properties) {
            let span = tracing::info_span!("bundle", bundle_id = %message_id, %correlation_id);
            self.process_bundle(delivery, abandon)
                .instrument(span)
                .await;
        } else {
            let span = tracing::info_span!("task", task_id = %message_id, %correlation_id);
            self.process(delivery, abandon).instrument(span).await;
        }
    }
}

/// Where a task came from, and how its message is settled.
enum Carrier<'a> {
    /// Its own message.
    Own(&'a Delivery),
    /// One task of a bundle, settled with the bundle.
    Part {
        /// The bundle's properties.
        properties: &'a BasicProperties,
        /// The task's own, when it is not the bundle's.
        correlation_id: Option<&'a str>,
        give_back: &'a GiveBack,
    },
}

impl Carrier<'_> {
    /// The task's message body as if it had come alone: what a retry or a
    /// dead letter carries.
    fn data(&self, message: &TaskMessage) -> Cow<'_, [u8]> {
        match self {
            Carrier::Own(delivery) => Cow::Borrowed(&delivery.data),
            Carrier::Part { .. } => Cow::Owned(serde_json::to_vec(message).unwrap_or_default()),
        }
    }

    /// The task's message properties as if it had come alone.
    fn properties(&self, message: &TaskMessage) -> BasicProperties {
        match self {
            Carrier::Own(delivery) => delivery.properties.clone(),
            Carrier::Part {
                properties,
                correlation_id,
                ..
            } => part_properties(properties, message.id, *correlation_id),
        }
    }
}

/// Set when a task of a bundle asks for its message back (shutdown, or a
/// dead letter that could not be published): the bundle is requeued whole
/// once its other tasks are done, and split when it comes back.
#[derive(Default)]
struct GiveBack(AtomicBool);

/// The properties of one task's message cut from a bundle: the bundle's
/// (persistent, its attempt and correlation id) under the task's id, and
/// the task's own correlation id when it has one.
fn part_properties(
    bundle: &BasicProperties,
    id: Uuid,
    correlation_id: Option<&str>,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into());
    if let Some(timestamp) = bundle.timestamp() {
        props = props.with_timestamp(*timestamp);
    }
    if let Some(bundle_headers) = bundle.headers() {
        // Not the broker's count of the bundle's deliveries: the task's
        // own message starts its own count.
        let mut own = lapin::types::FieldTable::default();
        for (key, value) in bundle_headers.inner() {
            if key.as_str() != headers::DELIVERY_COUNT {
                own.insert(key.clone(), value.clone());
            }
        }
        props = props.with_headers(own);
    }
    match correlation_id {
        Some(own) => headers::with_header(props, headers::CORRELATION, headers::long_string(own)),
        None => props,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;

    fn bundle_properties() -> BasicProperties {
        let props = headers::with_header(
            headers::persistent_json("the-bundle", "req"),
            headers::ATTEMPT,
            AMQPValue::LongLongInt(1),
        );
        headers::with_header(props, headers::DELIVERY_COUNT, AMQPValue::LongLongInt(2))
            .with_type(bibliomq_core::tasks::BUNDLE_KIND.into())
    }

    #[test]
    fn a_task_cut_from_a_bundle_is_a_first_attempt_of_its_own() {
        let id = Uuid::now_v7();
        let props = part_properties(&bundle_properties(), id, None);
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str().to_owned()),
            Some(id.to_string())
        );
        assert!(!is_bundle(&props));
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(headers::get_u64(&props, headers::ATTEMPT), Some(1));
        assert_eq!(
            headers::get_u64(&props, headers::DELIVERY_COUNT),
            None,
            "the bundle's deliveries are not the task's"
        );
        assert_eq!(headers::correlation_id(&props), "req");
    }

    #[test]
    fn a_task_of_another_request_keeps_its_own_correlation_id() {
        let props = part_properties(&bundle_properties(), Uuid::now_v7(), Some("own"));
        assert_eq!(headers::correlation_id(&props), "own");
    }
}
