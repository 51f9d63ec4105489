//! Dead letters: what sits in `bibliomq.tasks.dead` and
//! `bibliomq.library.dead`, listed and replayed.
//!
//! RabbitMQ has no way to read a queue without taking from it, so both
//! commands take the messages on a channel of their own with manual acks
//! and hold them: listing never acks, and closing the channel hands every
//! message back (a quorum queue puts returned messages back at the head, in
//! their order, so the listing is stable between calls). Replay publishes a
//! message to where it came from, waits for the broker's confirm, and only
//! then acks the dead copy: a crash between the two leaves a duplicate,
//! never a loss, and task workers already ignore a task that finished.
//!
//! The cursor is a position in the queue: replaying or new dead letters
//! shift later pages, which is the price of a queue that has no keys.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Serialize;
use uuid::Uuid;

use super::Commands;
use crate::{
    broker::{PUBLISH_MANY_WINDOW, STEP_TIMEOUT, headers, topology, within},
    error::{CommandError, Invalid},
    tasks::TaskMessage,
};

/// The most dead letters one page lists.
pub const DEAD_LIST_MAX: i64 = 500;
/// How far into a dead-letter queue listing and replay reach: every
/// message up to here is held at once on one channel.
pub const DEAD_REACH: usize = 10_000;
/// How a replay acks the dead copies it re-published.
#[derive(Clone, Copy)]
enum Acks {
    /// The chosen messages are the first the channel holds, in order: a
    /// window is acked in one frame.
    Prefix,
    /// Chosen among others: each is acked alone, [`ACKS_UNDER_WAY`] a
    /// window.
    EachAlone,
}

/// Single acks sent together before the next confirms: fewer than the
/// settlements a quorum queue's client keeps under way before it holds
/// the rest back.
const ACKS_UNDER_WAY: usize = 16;

/// How long to wait for the messages a queue said it holds.
const TAKE_WAIT: Duration = Duration::from_secs(3);

crate::words::word_enum!(
    "dead-letter queue",
    /// The dead-letter queues a client may read.
    pub enum DeadQueue {
        Tasks = "tasks",
        Library = "library",
    }
);

impl DeadQueue {
    pub fn queue_name(self) -> &'static str {
        match self {
            Self::Tasks => topology::TASKS_DEAD_QUEUE,
            Self::Library => topology::LIBRARY_DEAD_QUEUE,
        }
    }

    /// The exchange a dead message with this routing key was first sent to.
    fn origin(self, routing_key: &str) -> &'static str {
        match self {
            Self::Tasks => topology::TASKS_EXCHANGE,
            Self::Library if routing_key == topology::LOAN_REQUEST_KEY => topology::RPC_EXCHANGE,
            Self::Library => topology::CIRCULATION_EXCHANGE,
        }
    }
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The message id (a task's or an operation's id); empty when the
    /// message came without one (then only `all` replays it).
    pub id: String,
    pub routing_key: String,
    /// Why it is here: `rejected`, `expired`, `delivery_limit` (from the
    /// broker), or `given_up` (a worker gave up on it after its retries or
    /// as poison).
    pub reason: String,
    /// How many times it was tried.
    pub attempts: u64,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When it was dead-lettered (or, without that, sent).
    #[schema(required = true)]
    pub dead_at: Option<DateTime<Utc>>,
}

/// A page of one dead-letter queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub queue: DeadQueue,
    /// How many messages the queue holds in all.
    pub total: u64,
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterReplay {
    pub queue: DeadQueue,
    /// The ids re-published (confirmed) and removed from the queue.
    pub replayed: Vec<String>,
    /// How many of those asked for are still in the queue: the replay
    /// stopped part way (the broker failed, or `all` ran out of its time
    /// on a long queue). Ask again for the rest.
    pub left: u64,
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    All,
    Ids(Vec<String>),
}

struct Held {
    channel: Channel,
    probe: Channel,
    name: &'static str,
    total: u64,
    deliveries: Vec<Delivery>,
}

impl Held {
    /// Hands back what was not acked: closing the channel returns it to the
    /// queue. The queue takes the returns in a moment of its own, so this
    /// waits (a little) until it counts them again: a listing that follows
    /// straight after sees the whole queue.
    async fn release(self, acked: usize) {
        let _ = within(STEP_TIMEOUT, self.channel.close(200, "done".into())).await;
        let expected = self
            .total
            .saturating_sub(u64::try_from(acked).unwrap_or(u64::MAX));
        let deadline = tokio::time::Instant::now() + TAKE_WAIT;
        while tokio::time::Instant::now() < deadline {
            match within(STEP_TIMEOUT, ready_count(&self.probe, self.name)).await {
                Ok(n) if n >= expected => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        let _ = within(STEP_TIMEOUT, self.probe.close(200, "done".into())).await;
    }
}

async fn ready_count(probe: &Channel, name: &str) -> Result<u64, lapin::Error> {
    let declared = probe
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(u64::from(declared.message_count()))
}

impl Commands {
    pub async fn dead_letters(
        &self,
        queue: Option<&str>,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<DeadLetterList, CommandError> {
        self.authorize(crate::auth::Permission::ReadDeadLetters)?;
        let queue = parse_queue(queue)?;
        let limit = limit.unwrap_or(50);
        if !(1..=DEAD_LIST_MAX).contains(&limit) {
            return Err(Invalid::field(
                "invalid_limit",
                "limit",
                format!("limit must be from 1 to {DEAD_LIST_MAX}"),
            )
            .into());
        }
        let offset = match cursor {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .ok()
                .filter(|o| *o < DEAD_REACH)
                .ok_or_else(|| {
                    CommandError::OutOfBounds(Invalid::field(
                        "invalid_cursor",
                        "cursor",
                        "cursor must be a `next_cursor` from an earlier page",
                    ))
                })?,
        };
        let want = offset + usize::try_from(limit).unwrap_or(0);
        let _one_at_a_time = self.inner.dead_letters.lock().await;
        let held = self.hold(queue, want).await?;
        let dead_letters: Vec<DeadLetter> =
            held.deliveries.iter().skip(offset).map(describe).collect();
        let seen = offset + dead_letters.len();
        let next_cursor = (u64::try_from(seen).unwrap_or(u64::MAX) < held.total
            && seen < DEAD_REACH
            && !dead_letters.is_empty())
        .then(|| seen.to_string());
        let total = held.total;
        held.release(0).await;
        Ok(DeadLetterList {
            queue,
            total,
            dead_letters,
            next_cursor,
        })
    }

    /// Re-publishes the chosen dead letters to where they came from and
    /// removes each once its publish is confirmed. An id not in the queue
    /// fails the whole request before anything is sent.
    ///
    /// `all` goes through the whole queue, [`DEAD_REACH`] messages at a
    /// time, but only as far as the messages it held when the replay
    /// began: one that dies again meanwhile goes to the queue's tail and
    /// waits for the next replay. It starts no new window of
    /// [`PUBLISH_MANY_WINDOW`] once the replay budget is spent
    /// ([`crate::config::ApiSettings::replay_budget`]; one window always
    /// goes); `left` says how many are still to do.
    pub async fn replay_dead_letters(
        &self,
        queue: Option<&str>,
        selection: ReplaySelection,
    ) -> Result<DeadLetterReplay, CommandError> {
        self.authorize(crate::auth::Permission::ReplayDeadLetters)?;
        let queue = parse_queue(queue)?;
        if let ReplaySelection::Ids(ids) = &selection
            && ids.is_empty()
        {
            return Err(Invalid::field(
                "invalid_field",
                "ids",
                "give the ids to replay, or `all: true`",
            )
            .into());
        }
        let _one_at_a_time = self.inner.dead_letters.lock().await;
        let budget = tokio::time::Instant::now() + self.inner.settings.api.replay_budget();
        let mut replayed = Vec::new();
        let first = self.hold(queue, DEAD_REACH).await?;
        let (left, failure) = match &selection {
            ReplaySelection::Ids(ids) => {
                let present: HashSet<String> = first.deliveries.iter().map(message_id).collect();
                let missing: Vec<&str> = ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| !present.contains(*id))
                    .collect();
                if !missing.is_empty() {
                    let beyond = if first.total > first.deliveries.len() as u64 {
                        format!(
                            " (among its first {} of {} messages)",
                            first.deliveries.len(),
                            first.total
                        )
                    } else {
                        String::new()
                    };
                    let message = format!(
                        "not in {}{beyond}: {}; nothing was replayed",
                        queue.queue_name(),
                        missing.join(", ")
                    );
                    first.release(0).await;
                    return Err(CommandError::not_found("dead_letter_not_found", message));
                }
                let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
                let chosen: Vec<&Delivery> = first
                    .deliveries
                    .iter()
                    .filter(|d| wanted.contains(message_id(d).as_str()))
                    .collect();
                let asked = chosen.len();
                let failure = self
                    .replay_these(queue, &chosen, Acks::EachAlone, None, &mut replayed)
                    .await
                    .err();
                first.release(replayed.len()).await;
                ((asked - replayed.len()) as u64, failure)
            }
            ReplaySelection::All => {
                // Only as far as what the queue held at the start.
                let mut to_do = first.total;
                let mut held = first;
                let mut failure;
                loop {
                    let reach = usize::try_from(to_do).unwrap_or(usize::MAX);
                    let chosen: Vec<&Delivery> = held.deliveries.iter().take(reach).collect();
                    let before = replayed.len();
                    failure = self
                        .replay_these(queue, &chosen, Acks::Prefix, Some(budget), &mut replayed)
                        .await
                        .err();
                    let done = replayed.len() - before;
                    held.release(done).await;
                    to_do = to_do.saturating_sub(done as u64);
                    if failure.is_some()
                        || done == 0
                        || to_do == 0
                        || tokio::time::Instant::now() >= budget
                    {
                        break;
                    }
                    held = match self.hold(queue, DEAD_REACH).await {
                        Ok(h) => h,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    };
                }
                (to_do, failure)
            }
        };
        self.inner
            .metrics
            .dead_letters_replayed
            .inc_by(u64::try_from(replayed.len()).unwrap_or(0));
        match failure {
            Some(e) if replayed.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, replayed = replayed.len(), left, "replay stopped part way");
                Ok(DeadLetterReplay {
                    queue,
                    replayed,
                    left,
                })
            }
            None => Ok(DeadLetterReplay {
                queue,
                replayed,
                left,
            }),
        }
    }

    /// Replays `chosen`, a window at a time: a window's tasks go back to
    /// `queued` in one statement, its publishes are confirmed together,
    /// and the dead copies whose publish was confirmed are acked. Stops at
    /// the first window with a failure (the confirmed ones of that window
    /// are still acked and counted), or, given `until`, before the first
    /// window after it (one window always goes).
    ///
    /// How the acks go matters. A quorum queue's client in the channel
    /// keeps only a few settlements under way and holds back the rest
    /// until earlier ones are applied; closing the channel drops what it
    /// held back, and those messages come back to the queue. So a
    /// prefix is acked a window at a time in one frame (`multiple`), and
    /// chosen messages that are not a prefix go in small windows, each
    /// after its publishes' confirms, as single acks did before.
    async fn replay_these(
        &self,
        queue: DeadQueue,
        chosen: &[&Delivery],
        acks: Acks,
        until: Option<tokio::time::Instant>,
        replayed: &mut Vec<String>,
    ) -> Result<(), CommandError> {
        let window_size = match acks {
            Acks::Prefix => PUBLISH_MANY_WINDOW,
            Acks::EachAlone => ACKS_UNDER_WAY,
        };
        for (nth, window) in chosen.chunks(window_size).enumerate() {
            if nth > 0 && until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                break;
            }
            if queue == DeadQueue::Tasks {
                // A dead task runs again from its first attempt.
                let ids: Vec<Uuid> = window
                    .iter()
                    .filter_map(|d| serde_json::from_slice::<TaskMessage>(&d.data).ok())
                    .map(|m| m.id)
                    .collect();
                if !ids.is_empty() {
                    let client = self.pool().get().await?;
                    client
                        .execute(
                            "UPDATE tasks SET state = 'queued', error = NULL, error_code = NULL,
                                    finished_at = NULL, updated_at = now()
                              WHERE id = ANY($1) AND (state = 'dead') IS TRUE",
                            &[&ids],
                        )
                        .await?;
                }
            }
            let sent = futures::future::join_all(window.iter().map(|d| {
                let routing_key = d.routing_key.as_str();
                self.inner.publisher.publish(
                    queue.origin(routing_key),
                    routing_key,
                    &d.data,
                    fresh(&d.properties),
                    true,
                )
            }))
            .await;
            let broken =
                |e: lapin::Error| CommandError::Unavailable(format!("message broker: {e}"));
            let failure = sent.iter().position(Result::is_err);
            if let (Acks::Prefix, None, Some(last)) = (acks, failure, window.last()) {
                // Every delivery before this one on the channel is acked
                // already or in this window.
                within(
                    STEP_TIMEOUT,
                    last.acker.ack(BasicAckOptions { multiple: true }),
                )
                .await
                .map_err(broken)?;
                replayed.extend(window.iter().map(|d| message_id(d)));
                continue;
            }
            let mut first_error = None;
            for (delivery, outcome) in window.iter().zip(sent) {
                match outcome {
                    Ok(()) => {
                        within(STEP_TIMEOUT, delivery.acker.ack(BasicAckOptions::default()))
                            .await
                            .map_err(broken)?;
                        replayed.push(message_id(delivery));
                    }
                    Err(e) => {
                        first_error.get_or_insert(CommandError::from(e));
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes up to `want` messages of `queue` (all it holds, when fewer)
    /// and holds them unacked.
    async fn hold(&self, queue: DeadQueue, want: usize) -> Result<Held, CommandError> {
        let broken = |e: lapin::Error| CommandError::Unavailable(format!("message broker: {e}"));
        let name = queue.queue_name();
        let want = want.min(DEAD_REACH);
        let broker = self.inner.publisher.broker();
        let conn = broker
            .current()
            .ok_or_else(|| CommandError::Unavailable("message broker unavailable".to_owned()))?;
        let (probe, total) = within(STEP_TIMEOUT, async {
            let probe = conn.create_channel().await?;
            let total = ready_count(&probe, name).await?;
            Ok((probe, total))
        })
        .await
        .map_err(broken)?;
        let take = want.min(usize::try_from(total).unwrap_or(usize::MAX));
        let (channel, mut consumer) = broker
            .consume(name, "", u16::try_from(take.max(1)).unwrap_or(u16::MAX))
            .await
            .map_err(broken)?;
        let mut deliveries = Vec::with_capacity(take);
        let deadline = tokio::time::Instant::now() + TAKE_WAIT;
        while deliveries.len() < take {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => deliveries.push(d),
                Ok(Some(Err(e))) => {
                    let _ = within(STEP_TIMEOUT, channel.close(200, "done".into())).await;
                    let _ = within(STEP_TIMEOUT, probe.close(200, "done".into())).await;
                    return Err(broken(e));
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Held {
            channel,
            probe,
            name,
            total,
            deliveries,
        })
    }
}

fn parse_queue(raw: Option<&str>) -> Result<DeadQueue, CommandError> {
    raw.unwrap_or("tasks").parse::<DeadQueue>().map_err(|_| {
        Invalid::field(
            "invalid_queue",
            "queue",
            format!(
                "queue must be one of {}",
                DeadQueue::ALL
                    .iter()
                    .map(|q| q.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into()
    })
}

fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default()
}

/// The first `x-death` entry: the broker's record of where the message
/// died first.
fn first_death(props: &BasicProperties) -> Option<&FieldTable> {
    let deaths = props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from("x-death"))?;
    match deaths {
        AMQPValue::FieldArray(entries) => entries.as_slice().iter().find_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn describe(d: &Delivery) -> DeadLetter {
    let death = first_death(&d.properties);
    let field = |key: &str| death.and_then(|t| t.inner().get(&ShortString::from(key)));
    let reason = match field("reason") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "given_up".to_owned(),
    };
    let dead_at = match field("time") {
        Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
        _ => d.properties.timestamp().and_then(|t| i64::try_from(t).ok()),
    }
    .and_then(|t| Utc.timestamp_opt(t, 0).single());
    let attempts = headers::get_u64(&d.properties, headers::ATTEMPT)
        .or_else(|| {
            death.and_then(|t| {
                let mut only = FieldTable::default();
                if let Some(count) = t.inner().get(&ShortString::from("count")) {
                    only.insert("count".into(), count.clone());
                }
                headers::get_u64(&BasicProperties::default().with_headers(only), "count")
            })
        })
        .unwrap_or(1);
    DeadLetter {
        id: message_id(d),
        routing_key: d.routing_key.as_str().to_owned(),
        reason,
        attempts,
        last_error: headers::get_str(&d.properties, headers::LAST_ERROR),
        dead_at,
    }
}

/// The message's properties without what its past runs and deaths added,
/// so it starts again from its first attempt.
fn fresh(props: &BasicProperties) -> BasicProperties {
    let mut kept = FieldTable::default();
    if let Some(headers) = props.headers() {
        for (key, value) in headers.inner() {
            let key_str = key.as_str();
            if key_str == headers::ATTEMPT
                || key_str == headers::LAST_ERROR
                || key_str == headers::DELIVERY_COUNT
                || key_str.starts_with("x-death")
                || key_str.starts_with("x-first-death")
                || key_str.starts_with("x-last-death")
            {
                continue;
            }
            kept.insert(key.clone(), value.clone());
        }
    }
    props.clone().with_headers(kept)
}
