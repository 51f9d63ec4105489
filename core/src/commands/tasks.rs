//! Task commands: submit (with an optional time limit and Idempotency-Key),
//! cancel, look up, list, fetch results.

use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Commands;
use crate::{
    batch::Batcher,
    db::DbFailure,
    error::{CommandError, ErrorDetails, Invalid, ItemError},
    storage::ObjectBody,
    tasks::{
        Action, Outgoing, TaskMessage, TaskRequest, TaskState, publish_first,
        store::{self, CancelOutcome, ListFilter, NewTask, TaskRecord},
    },
};

/// [`Commands::wait_for_task`]: the first pause between two reads of the
/// task (when finished tasks are heard, and when they are not), and the
/// longest.
const WAIT_FIRST_PAUSE_HEARD: std::time::Duration = std::time::Duration::from_millis(5);
const WAIT_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_micros(250);
const WAIT_LONGEST_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest a client may ask `GET /v1/tasks/{id}?wait_ms=` to wait.
pub const WAIT_MAX_MS: u64 = 30_000;

/// True when a string or key anywhere in `value` holds U+0000, which
/// PostgreSQL's `jsonb` cannot store.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Group-commits the `queued` rows of submissions arriving at the same time;
/// answers, per task, whether it was inserted (false: its Idempotency-Key
/// was taken).
pub type TaskInserter = Batcher<NewTask, bool, DbFailure>;

pub(super) fn inserter(pool: Pool) -> TaskInserter {
    Batcher::spawn(512, crate::batch::IN_FLIGHT, move |tasks: Vec<NewTask>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            Ok(store::insert_queued(&client, &tasks).await?)
        }
    })
}

/// A task submission as every transport hands it over, unchecked.
#[derive(Debug, Clone, Default)]
pub struct TaskSubmission {
    pub action: String,
    pub payload: Value,
    /// The time limit asked for, in milliseconds (any JSON: checked here).
    pub timeout_ms: Option<Value>,
    /// The client's Idempotency-Key.
    pub idempotency_key: Option<String>,
    /// When to run it (RFC 3339; any JSON: checked here). Not with `delay_ms`.
    pub run_at: Option<Value>,
    /// How long from now to run it, in milliseconds (any JSON: checked here).
    pub delay_ms: Option<Value>,
}

impl TaskSubmission {
    pub fn new(action: impl Into<String>, payload: Value) -> Self {
        Self {
            action: action.into(),
            payload,
            ..Self::default()
        }
    }
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize)]
pub struct SubmittedTask {
    pub id: Uuid,
    pub action: Action,
    pub state: TaskState,
    /// True when an earlier submission with the same Idempotency-Key made
    /// this task; the answer is that submission's.
    #[serde(skip)]
    pub replayed: bool,
}

/// The answer to a cancel: `cancelled`, or `running` while its worker stops it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCancellation {
    pub id: Uuid,
    pub state: TaskState,
    /// True while the task is still running and its worker has been told to stop it.
    pub stopping: bool,
}

/// What makes two submissions "the same request" for an Idempotency-Key.
/// A schedule counts as asked (`run_at` or `delay_ms` as sent), so a retry
/// of a delayed submission is the same request however late it comes.
fn fingerprint(
    action: Action,
    payload: &Value,
    timeout_ms: Option<i64>,
    schedule: Option<&str>,
) -> String {
    let mut text = format!(
        "{}|{}|{}",
        action.as_str(),
        timeout_ms.map(|t| t.to_string()).unwrap_or_default(),
        payload
    );
    if let Some(schedule) = schedule {
        text.push('|');
        text.push_str(schedule);
    }
    hex::encode(Sha256::digest(text))
}

/// A submission that passed every check: its row and its message.
struct Checked {
    id: Uuid,
    action: Action,
    /// The message body (a [`TaskMessage`]).
    body: Vec<u8>,
    task: NewTask,
}

/// Publishes the first messages of single submissions. Those that come
/// while earlier ones wait for their confirms go together, in bundles (see
/// [`publish_first`]); a submission that comes alone is published alone at
/// once. Each answers when its message is confirmed, or with why not.
pub(super) type TaskPublisher = Batcher<Outgoing, Result<(), String>, std::convert::Infallible>;

pub(super) fn task_publisher(publisher: crate::broker::Publisher) -> TaskPublisher {
    Batcher::spawn(512, crate::batch::IN_FLIGHT, move |tasks: Vec<Outgoing>| {
        let publisher = publisher.clone();
        async move { Ok(publish_first(&publisher, &tasks).await) }
    })
}

/// How far in the past a `run_at` may be (clocks differ, requests take
/// time); such a task is due at once.
pub const RUN_AT_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Most tasks one batch submission may hold.
pub const BATCH_MAX: usize = 1000;

/// A refused batch item as its index and the error the single request
/// would answer. Our own failures are not an item's fault: they fail the
/// whole batch.
fn item_error(index: usize, e: CommandError) -> Result<ItemError, CommandError> {
    let field = match &e {
        CommandError::Invalid(i) | CommandError::OutOfBounds(i) => i.field.clone(),
        CommandError::Conflict { .. } | CommandError::NotFound { .. } => None,
        _ => return Err(e),
    };
    Ok(ItemError {
        index,
        code: e.code(),
        message: e.public_message(),
        field,
    })
}

/// Most tasks one list call returns.
pub const LIST_MAX: i64 = 500;

impl Commands {
    /// Submits `action` with `payload`, without a time limit of its own or
    /// an Idempotency-Key. See [`Commands::submit`].
    pub async fn submit_task(
        &self,
        action: &str,
        payload: Value,
        correlation_id: &str,
    ) -> Result<SubmittedTask, CommandError> {
        self.submit(TaskSubmission::new(action, payload), correlation_id)
            .await
    }

    /// Validates, records the task as `queued` and publishes it; returns once
    /// the broker has confirmed the message. On any failure nothing stays
    /// queued. With an Idempotency-Key already used for the same request,
    /// answers with that task (`replayed`) and queues nothing; used for a
    /// different request, 409 `idempotency_key_reused`.
    #[tracing::instrument(skip_all, fields(action = %submission.action, task_id))]
    pub async fn submit(
        &self,
        submission: TaskSubmission,
        correlation_id: &str,
    ) -> Result<SubmittedTask, CommandError> {
        self.authorize(crate::auth::Permission::SubmitTask)?;
        let Checked {
            id,
            action,
            body,
            task,
        } = self.check_submission(submission, correlation_id)?;
        tracing::Span::current().record("task_id", tracing::field::display(id));
        let run_at = task.run_at;
        let idempotency = task.idempotency.clone();
        let inserted = self.inner.task_inserts.submit(task).await?;
        if !inserted {
            let Some((key, fingerprint)) = idempotency else {
                return Err(anyhow::anyhow!("a task without a key was not inserted").into());
            };
            return self.replay(action, &key, &fingerprint).await;
        }
        if run_at.is_some() {
            // Stored, not published: the workers' scheduler publishes it
            // when it is due.
            return Ok(SubmittedTask {
                id,
                action,
                state: TaskState::Scheduled,
                replayed: false,
            });
        }

        let published = self
            .inner
            .task_publishes
            .submit(Outgoing {
                id,
                action: action.as_str().to_owned(),
                body,
                correlation_id: correlation_id.to_owned(),
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|answer| answer);
        if let Err(e) = published {
            tracing::warn!(error = %e, "publish failed; withdrawing the task");
            if self.withdraw_unpublished(&[id]).await {
                return Ok(SubmittedTask {
                    id,
                    action,
                    state: TaskState::Queued,
                    replayed: false,
                });
            }
            return Err(CommandError::publish_failed(e));
        }
        Ok(SubmittedTask {
            id,
            action,
            state: TaskState::Queued,
            replayed: false,
        })
    }

    /// Submits up to [`BATCH_MAX`] tasks at once: all of them, or none.
    ///
    /// Each item is checked exactly as [`Commands::submit`] checks one (an
    /// item the transport could not read comes in as its error). Any
    /// refusal answers `invalid_tasks` with every refused item by index,
    /// and nothing is stored or published. Otherwise the rows go into
    /// PostgreSQL in one statement and one transaction, the tasks are
    /// published in bundles of up to [`crate::tasks::BUNDLE_MAX`] (one message each; see
    /// [`crate::tasks::TaskBundle`]) with their confirms awaited together, and the
    /// answer lists every task in the order sent. An item whose
    /// Idempotency-Key a task already holds for the same request answers
    /// with that task (`replayed`) and queues nothing; for a different
    /// request the batch is refused (`idempotency_key_reused` at its index).
    ///
    /// Should the broker fail part way, the batch's tasks that no worker
    /// has taken yet are withdrawn and the answer is `unavailable`: send
    /// it again, with Idempotency-Keys to be safe.
    #[tracing::instrument(skip_all, fields(tasks = items.len()))]
    pub async fn submit_batch(
        &self,
        items: Vec<Result<TaskSubmission, Invalid>>,
        correlation_id: &str,
    ) -> Result<Vec<SubmittedTask>, CommandError> {
        self.authorize(crate::auth::Permission::SubmitTask)?;
        if items.is_empty() {
            return Err(CommandError::OutOfBounds(Invalid::new(
                "empty_batch",
                "send at least one task in the batch",
            )));
        }
        if items.len() > BATCH_MAX {
            return Err(CommandError::OutOfBounds(Invalid::new(
                "too_many_tasks",
                format!(
                    "a batch holds at most {BATCH_MAX} tasks; this one has {}: split it",
                    items.len()
                ),
            )));
        }
        let mut checked = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match item
                .map_err(CommandError::from)
                .and_then(|s| self.check_submission(s, correlation_id))
            {
                Ok(c) => checked.push(c),
                Err(e) => errors.push(item_error(index, e)?),
            }
        }
        if !errors.is_empty() {
            return Err(CommandError::InvalidItems(errors));
        }
        let (heads, tasks): (Vec<_>, Vec<_>) = checked
            .into_iter()
            .map(|c| ((c.id, c.action, c.body), c.task))
            .unzip();

        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let inserted = store::insert_queued_in(&tx, &tasks).await?;
        let held: Vec<&str> = tasks
            .iter()
            .zip(&inserted)
            .filter(|(_, inserted)| !**inserted)
            .filter_map(|(t, _)| t.idempotency.as_ref().map(|(k, _)| k.as_str()))
            .collect();
        let holders = if held.is_empty() {
            std::collections::HashMap::new()
        } else {
            store::by_idempotency_keys(&*tx, &held).await?
        };
        let mut answers = Vec::with_capacity(tasks.len());
        for (index, ((task, (id, action, _)), inserted)) in
            tasks.iter().zip(&heads).zip(&inserted).enumerate()
        {
            if *inserted {
                answers.push(SubmittedTask {
                    id: *id,
                    action: *action,
                    state: if task.run_at.is_some() {
                        TaskState::Scheduled
                    } else {
                        TaskState::Queued
                    },
                    replayed: false,
                });
                continue;
            }
            let Some((key, print)) = &task.idempotency else {
                return Err(anyhow::anyhow!("a task without a key was not inserted").into());
            };
            let Some(holder) = holders.get(key) else {
                return Err(CommandError::Unavailable(
                    "the first submission with an Idempotency-Key of this batch is being withdrawn; retry"
                        .to_owned(),
                ));
            };
            if holder.fingerprint.as_deref() != Some(print.as_str()) {
                errors.push(ItemError {
                    index,
                    code: "idempotency_key_reused",
                    message: format!(
                        "Idempotency-Key `{key}` was already used for a different task request (task {})",
                        holder.id
                    ),
                    field: Some("idempotency_key".to_owned()),
                });
                continue;
            }
            answers.push(SubmittedTask {
                id: holder.id,
                action: holder.action.parse().unwrap_or(*action),
                state: if holder.delayed {
                    TaskState::Scheduled
                } else {
                    TaskState::Queued
                },
                replayed: true,
            });
        }
        if !errors.is_empty() {
            tx.rollback().await?;
            return Err(CommandError::InvalidItems(errors));
        }
        tx.commit().await?;
        drop(client);

        // Published together in bundles, confirmed together; a delayed
        // task waits for the scheduler.
        let due: Vec<Outgoing> = heads
            .into_iter()
            .zip(&tasks)
            .zip(&inserted)
            .filter(|((_, task), inserted)| **inserted && task.run_at.is_none())
            .map(|(((id, action, body), _), _)| Outgoing {
                id,
                action: action.as_str().to_owned(),
                body,
                correlation_id: correlation_id.to_owned(),
            })
            .collect();
        let published = publish_first(self.publisher(), &due).await;
        if let Some(Err(e)) = published.into_iter().find(Result::is_err) {
            let ids: Vec<Uuid> = tasks
                .iter()
                .zip(&inserted)
                .filter(|(_, inserted)| **inserted)
                .map(|(t, _)| t.id)
                .collect();
            tracing::warn!(error = %e, tasks = ids.len(), "publish failed; withdrawing the batch");
            if self.withdraw_unpublished(&ids).await {
                return Ok(answers);
            }
            return Err(CommandError::publish_failed(e));
        }
        Ok(answers)
    }

    /// After a failed publish: withdraws the submission's tasks, all or
    /// none ([`store::withdraw`]). `true` when a worker already took one of
    /// them (the broker had its message; only the confirm was lost): the
    /// submission stands accepted, so a refusal never hides a task that
    /// runs. `false` when they were withdrawn, or could not be (then the
    /// reaper publishes them again later): answer the failure.
    async fn withdraw_unpublished(&self, ids: &[Uuid]) -> bool {
        let withdrawn = match self.pool().get().await {
            Ok(mut client) => store::withdraw(&mut client, ids).await,
            Err(e) => {
                tracing::error!(error = %e, "could not withdraw the unpublished tasks");
                return false;
            }
        };
        match withdrawn {
            Ok(true) => false,
            Ok(false) => {
                tracing::info!(
                    tasks = ids.len(),
                    "a worker took a task whose publish failed; the submission stands accepted"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not withdraw the unpublished tasks");
                false
            }
        }
    }

    /// Every rule a submission must pass, the one place they are checked
    /// (for a single submit and for each item of a batch): the action, the
    /// payload, the time limit, the schedule and the Idempotency-Key.
    /// Returns the new task's row and message; nothing is stored yet.
    fn check_submission(
        &self,
        submission: TaskSubmission,
        correlation_id: &str,
    ) -> Result<Checked, CommandError> {
        let TaskSubmission {
            action,
            payload,
            timeout_ms,
            idempotency_key,
            run_at,
            delay_ms,
        } = submission;
        let action: Action = action.parse()?;
        if holds_nul(&payload) {
            return Err(Invalid::field(
                "invalid_payload",
                "payload",
                "the payload cannot hold the character U+0000 (the database cannot store it)",
            )
            .into());
        }
        TaskRequest::parse(action, &payload)?;
        let timeout_ms = self.check_timeout(timeout_ms.as_ref())?;
        let (run_at, schedule) = self.check_schedule(run_at.as_ref(), delay_ms.as_ref())?;
        let idempotency = idempotency_key
            .as_deref()
            .map(super::library::valid_idempotency_key)
            .transpose()?
            .map(|key| {
                let print = fingerprint(action, &payload, timeout_ms, schedule.as_deref());
                (key, print)
            });
        let id = Uuid::now_v7();
        let message = TaskMessage {
            id,
            action: action.as_str().to_owned(),
            payload,
            submitted_at: chrono::Utc::now(),
            timeout_ms: timeout_ms.and_then(|t| u64::try_from(t).ok()),
        };
        let body = serde_json::to_vec(&message).map_err(anyhow::Error::from)?;
        Ok(Checked {
            id,
            action,
            body,
            task: NewTask {
                id,
                action: message.action,
                payload: message.payload,
                correlation_id: correlation_id.to_owned(),
                timeout_ms,
                idempotency,
                run_at,
            },
        })
    }

    /// `timeout_ms`, when given: a whole number of milliseconds from 1 to
    /// the configured maximum. Anything else is refused before anything is
    /// queued, naming the field.
    fn check_timeout(&self, raw: Option<&Value>) -> Result<Option<i64>, CommandError> {
        let Some(raw) = raw.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let max = u64::try_from(self.settings().tasks.timeout_max.as_millis()).unwrap_or(u64::MAX);
        let refused = || {
            CommandError::OutOfBounds(Invalid::field(
                "invalid_timeout",
                "timeout_ms",
                format!("timeout_ms must be a whole number of milliseconds from 1 to {max}"),
            ))
        };
        let ms = crate::tasks::whole_number(raw).ok_or_else(refused)?;
        if !(1..=max).contains(&ms) {
            return Err(refused());
        }
        i64::try_from(ms).map(Some).map_err(|_| refused())
    }

    /// `run_at` (RFC 3339, not more than [`RUN_AT_TOLERANCE`] in the past)
    /// or `delay_ms` (a whole number of milliseconds), not both, at most
    /// the configured maximum ahead. Returns when the task is due and the
    /// schedule as asked (for the fingerprint); anything else is refused
    /// before anything is stored, naming the field.
    fn check_schedule(
        &self,
        run_at: Option<&Value>,
        delay_ms: Option<&Value>,
    ) -> Result<(Option<chrono::DateTime<chrono::Utc>>, Option<String>), CommandError> {
        let run_at = run_at.filter(|v| !v.is_null());
        let delay_ms = delay_ms.filter(|v| !v.is_null());
        let max = self.settings().tasks.delay_max;
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        let now = chrono::Utc::now();
        let latest = chrono::TimeDelta::from_std(max)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let refused = |field: &'static str, message: String| {
            CommandError::OutOfBounds(Invalid::field("invalid_schedule", field, message))
        };
        match (run_at, delay_ms) {
            (None, None) => Ok((None, None)),
            (Some(_), Some(_)) => Err(refused(
                "delay_ms",
                "give run_at or delay_ms, not both".to_owned(),
            )),
            (Some(raw), None) => {
                let when = raw
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .ok_or_else(|| {
                        refused(
                            "run_at",
                            "run_at must be an RFC 3339 date-time, e.g. 2030-01-31T09:00:00Z"
                                .to_owned(),
                        )
                    })?;
                if when < now - RUN_AT_TOLERANCE {
                    return Err(refused("run_at", "run_at is in the past".to_owned()));
                }
                if when > latest {
                    return Err(refused(
                        "run_at",
                        format!("run_at may be at most {max_ms} ms from now"),
                    ));
                }
                Ok((Some(when), Some(format!("run_at={raw}"))))
            }
            (None, Some(raw)) => {
                let ms = crate::tasks::whole_number(raw)
                    .filter(|ms| *ms <= max_ms)
                    .ok_or_else(|| {
                        refused(
                            "delay_ms",
                            format!(
                                "delay_ms must be a whole number of milliseconds from 0 to {max_ms}"
                            ),
                        )
                    })?;
                let delay = chrono::TimeDelta::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX));
                Ok((Some(now + delay), Some(format!("delay_ms={ms}"))))
            }
        }
    }

    /// The answer to a submission whose Idempotency-Key a task already holds.
    async fn replay(
        &self,
        action: Action,
        key: &str,
        fingerprint: &str,
    ) -> Result<SubmittedTask, CommandError> {
        let client = self.pool().get().await?;
        let holder = store::by_idempotency_key(&**client, key)
            .await?
            // Only a task withdrawn in the meantime (its publish failed).
            .ok_or_else(|| {
                CommandError::Unavailable(
                    "the first submission with this Idempotency-Key is being withdrawn; retry"
                        .to_owned(),
                )
            })?;
        if holder.fingerprint.as_deref() != Some(fingerprint) {
            let mut err = CommandError::conflict(
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was already used for a different task request (task {})",
                    holder.id
                ),
            );
            if let CommandError::Conflict { details, .. } = &mut err {
                *details = Some(ErrorDetails::KeyReused {
                    idempotency_key: key.to_owned(),
                });
            }
            return Err(err);
        }
        let action = holder.action.parse().unwrap_or(action);
        Ok(SubmittedTask {
            id: holder.id,
            action,
            state: if holder.delayed {
                TaskState::Scheduled
            } else {
                TaskState::Queued
            },
            replayed: true,
        })
    }

    /// Cancels a task: a queued or scheduled one at once (it will never run), a running
    /// one by telling its worker, which stops it within
    /// [`crate::tasks::CANCEL_POLL`] or so and records it `cancelled`.
    /// Cancelling again answers the same; a task that already ended
    /// otherwise is a conflict (`task_finished`).
    #[tracing::instrument(skip(self))]
    pub async fn cancel_task(&self, id: Uuid) -> Result<TaskCancellation, CommandError> {
        self.authorize(crate::auth::Permission::CancelTask)?;
        let client = self.pool().get().await?;
        let (state, stopping) = match store::cancel(&**client, id).await? {
            CancelOutcome::Cancelled { action } => {
                self.announce_cancelled(id, action);
                (TaskState::Cancelled, false)
            }
            CancelOutcome::AlreadyFinal(TaskState::Cancelled) => (TaskState::Cancelled, false),
            CancelOutcome::Requested => (TaskState::Running, true),
            CancelOutcome::AlreadyFinal(state) => {
                return Err(CommandError::Conflict {
                    code: "task_finished",
                    message: format!("the task already {state}; there is nothing to cancel"),
                    details: Some(ErrorDetails::TaskState { state }),
                });
            }
            CancelOutcome::NotFound => {
                return Err(CommandError::not_found(
                    "task_not_found",
                    format!("no task with id {id}"),
                ));
            }
        };
        Ok(TaskCancellation {
            id,
            state,
            stopping,
        })
    }

    pub async fn task(&self, id: Uuid) -> Result<TaskRecord, CommandError> {
        self.authorize(crate::auth::Permission::ReadTask)?;
        let client = self.pool().get().await?;
        store::get(&client, id).await?.ok_or_else(|| {
            CommandError::not_found("task_not_found", format!("no task with id {id}"))
        })
    }

    /// Publishes `task.cancelled` for a task cancelled before it ran (a
    /// worker announces the ones it stops), in the background: the event is
    /// a notification, the row is the record.
    fn announce_cancelled(&self, id: Uuid, action: String) {
        let event = crate::tasks::TaskEvent {
            event: format!("task.{}", TaskState::Cancelled),
            task_id: id,
            action,
            state: TaskState::Cancelled,
            attempts: 0,
            error: Some("cancelled before it ran".to_owned()),
            at: chrono::Utc::now(),
        };
        crate::broker::events::announce(self.publisher(), event.event.clone(), &event);
    }

    /// Submits a task and waits up to `wait` for it to end: the submitted
    /// task, and the task as last read (final or not; check `state`).
    /// Once the task is accepted it runs whatever happens to the wait, so
    /// a wait that fails is not an error: the record is then `None`, and
    /// the caller reports the task as accepted.
    pub async fn submit_and_wait(
        &self,
        submission: TaskSubmission,
        correlation_id: &str,
        wait: std::time::Duration,
    ) -> Result<(SubmittedTask, Option<TaskRecord>), CommandError> {
        let submitted = self.submit(submission, correlation_id).await?;
        match self.wait_for_task(submitted.id, wait).await {
            Ok(task) => Ok((submitted, Some(task))),
            Err(e) => {
                tracing::warn!(error = %e, task_id = %submitted.id, "could not follow the submitted task");
                Ok((submitted, None))
            }
        }
    }

    /// Waits until the task reaches a final state or `timeout` passes, and
    /// returns the latest record either way (check `state`).
    ///
    /// It reads the row again as soon as the workers' outcome write that
    /// names it commits (a `NOTIFY`, see [`crate::tasks::wakeups`]), and
    /// otherwise on its own schedule: first after 5 ms (a quarter of a
    /// millisecond while the listening connection is not up), then half as
    /// long again each time, up to every 50 ms. The schedule alone saw a
    /// task done in 1.5 ms up to a millisecond late; it stays for what
    /// sends no notification (a cancel, the reaper) and for when the
    /// listening connection is down.
    pub async fn wait_for_task(
        &self,
        id: Uuid,
        timeout: std::time::Duration,
    ) -> Result<TaskRecord, CommandError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Before the first read: an outcome committed after it is heard.
        let mut wakeups = self.inner.wakeups.subscribe().await;
        // While outcomes are heard, reads on the schedule are the fallback
        // (cancels, the reaper): fewer of them, less in the way of the
        // worker the waiter waits for.
        let mut pause = if self.inner.wakeups.live() {
            WAIT_FIRST_PAUSE_HEARD
        } else {
            WAIT_FIRST_PAUSE
        };
        loop {
            let task = self.task(id).await?;
            let now = tokio::time::Instant::now();
            if task.state.is_final() || now >= deadline {
                return Ok(task);
            }
            tokio::select! {
                () = tokio::time::sleep(pause.min(deadline - now)) => {
                    pause = (pause * 3 / 2).min(WAIT_LONGEST_PAUSE);
                }
                () = crate::tasks::wakeups::finished(&mut wakeups, id) => {}
            }
        }
    }

    pub async fn list_tasks(
        &self,
        state: Option<&str>,
        action: Option<&str>,
        limit: Option<i64>,
        before: Option<Uuid>,
    ) -> Result<Vec<TaskRecord>, CommandError> {
        self.authorize(crate::auth::Permission::ListTasks)?;
        let state = state
            .map(str::parse::<TaskState>)
            .transpose()
            .map_err(|e| Invalid::field("invalid_state", "state", e.to_string()))?;
        let action = action.map(str::parse::<Action>).transpose()?;
        let limit = limit.unwrap_or(50);
        if !(1..=LIST_MAX).contains(&limit) {
            return Err(Invalid::field(
                "invalid_limit",
                "limit",
                format!("limit must be from 1 to {LIST_MAX}"),
            )
            .into());
        }
        let client = self.pool().get().await?;
        Ok(store::list(
            &**client,
            &ListFilter {
                state,
                action: action.map(|a| a.as_str().to_owned()),
                limit,
                before,
            },
        )
        .await?)
    }

    /// Opens a stored (large) result for streaming.
    pub async fn open_stored_result(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectBody, CommandError> {
        self.authorize(crate::auth::Permission::ReadTask)?;
        self.store().get(bucket, key).await.map_err(|e| match e {
            crate::storage::StorageError::NotFound => CommandError::not_found(
                "result_missing",
                "the stored result is missing from object storage",
            ),
            crate::storage::StorageError::Unavailable(detail) => {
                tracing::warn!(%detail, "object storage unavailable");
                CommandError::Unavailable("object storage unavailable".to_owned())
            }
        })
    }

    /// A presigned link to a stored result.
    pub async fn presign_result(&self, bucket: &str, key: &str) -> Result<String, CommandError> {
        self.authorize(crate::auth::Permission::ReadTask)?;
        self.store()
            .presigned_get(bucket, key)
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::holds_nul;

    #[test]
    fn a_nul_anywhere_in_a_payload_is_found() {
        assert!(!holds_nul(&json!({"a": ["b", 1, null]})));
        assert!(holds_nul(&json!("a\0b")));
        assert!(holds_nul(&json!([{"x": "\0"}])));
        assert!(holds_nul(&json!({"k\0": 1})));
    }
}
