//! Every exchange, queue and binding bibliomq uses, declared in one place.
//!
//! Declaration is idempotent and runs on every (re)connection of every
//! process, so whichever component starts first sets the broker up. The
//! README draws this module as a diagram; keep the two in step.

use std::time::Duration;

use lapin::{
    Channel, Connection, ErrorKind, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::TaskSettings;

/// Topic exchange for task submissions; routing key `task.<action>`.
pub const TASKS_EXCHANGE: &str = "bibliomq.tasks";
/// Quorum queue the task workers compete on.
pub const TASKS_QUEUE: &str = "bibliomq.tasks";
/// Direct exchange in front of the retry queues; routing key = retry queue name.
pub const RETRY_EXCHANGE: &str = "bibliomq.retry";
/// Topic exchange that catches what queues dead-letter; routing keys are kept.
pub const DEAD_LETTER_EXCHANGE: &str = "bibliomq.dlx";
/// Tasks that ran out of retries, were poison, or could not be read.
pub const TASKS_DEAD_QUEUE: &str = "bibliomq.tasks.dead";
/// Topic exchange of outcome events: `task.<state>`, and the library's
/// `loaned.<branch>`, `renewed.<branch>`, `returned.<branch>`, `rejected.<op>.<branch>`.
pub const EVENTS_EXCHANGE: &str = "bibliomq.events";
/// Direct exchange for requests that expect a reply (direct reply-to).
pub const RPC_EXCHANGE: &str = "bibliomq.rpc";
/// Quorum queue of loan requests; the loan workers answer them.
pub const LOANS_QUEUE: &str = "bibliomq.loans";
/// Routing key of loan requests on [`RPC_EXCHANGE`].
pub const LOAN_REQUEST_KEY: &str = "loan";
/// Topic exchange of asynchronous circulation: `renewal.<branch>`, `return.<branch>`.
pub const CIRCULATION_EXCHANGE: &str = "bibliomq.circulation";
/// Quorum queue bound to `renewal.*`.
pub const RENEWALS_QUEUE: &str = "bibliomq.renewals";
/// Quorum queue bound to `return.*`.
pub const RETURNS_QUEUE: &str = "bibliomq.returns";
/// Library messages that could not be read or were poison, and loan
/// requests that expired before a worker took them.
pub const LIBRARY_DEAD_QUEUE: &str = "bibliomq.library.dead";
/// Routing key that retried tasks come back to [`TASKS_EXCHANGE`] with.
pub const RETRIED_TASK_KEY: &str = "task.retried";

/// The parts of the topology that depend on configuration.
#[derive(Debug, Clone)]
pub struct Topology {
    task_retry_delays: Vec<Duration>,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(tasks: &TaskSettings) -> Self {
        Self {
            task_retry_delays: (1..=tasks.max_retries)
                .map(|n| tasks.retry_delay(n))
                .collect(),
            // The broker's own backstop sits above the worker's poison check,
            // so the worker normally records the verdict itself.
            delivery_limit: tasks.poison_delivery_limit + 5,
        }
    }

    /// Name of the retry queue that holds a task before retry number `retry` (1-based).
    pub fn task_retry_queue(&self, retry: u32) -> Option<String> {
        let delay = self
            .task_retry_delays
            .get(usize::try_from(retry).ok()?.checked_sub(1)?)?;
        Some(retry_queue_name(*delay))
    }

    /// All queue names, for tests and tooling.
    pub fn queues(&self) -> Vec<String> {
        let mut names = vec![
            TASKS_QUEUE.to_owned(),
            TASKS_DEAD_QUEUE.to_owned(),
            LOANS_QUEUE.to_owned(),
            RENEWALS_QUEUE.to_owned(),
            RETURNS_QUEUE.to_owned(),
            LIBRARY_DEAD_QUEUE.to_owned(),
        ];
        names.extend(self.task_retry_delays.iter().map(|d| retry_queue_name(*d)));
        names
    }

    /// Declares everything. Safe to run any number of times.
    pub async fn declare(&self, conn: &Connection) -> Result<(), lapin::Error> {
        let mut ch = conn.create_channel().await?;
        let mut declarer = Declarer { conn, ch: &mut ch };
        self.declare_on(&mut declarer).await?;
        let _ = ch.close(200, "topology declared".into()).await;
        Ok(())
    }

    async fn declare_on(&self, d: &mut Declarer<'_>) -> Result<(), lapin::Error> {
        d.exchange(TASKS_EXCHANGE, ExchangeKind::Topic).await?;
        d.exchange(RETRY_EXCHANGE, ExchangeKind::Direct).await?;
        d.exchange(DEAD_LETTER_EXCHANGE, ExchangeKind::Topic)
            .await?;
        d.exchange(EVENTS_EXCHANGE, ExchangeKind::Topic).await?;

        let mut args = dead_lettering(DEAD_LETTER_EXCHANGE);
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        d.queue(TASKS_QUEUE, args).await?;
        d.bind(TASKS_QUEUE, TASKS_EXCHANGE, "task.#").await?;

        d.queue(TASKS_DEAD_QUEUE, quorum()).await?;
        d.bind(TASKS_DEAD_QUEUE, DEAD_LETTER_EXCHANGE, "task.#")
            .await?;

        for delay in &self.task_retry_delays {
            let name = retry_queue_name(*delay);
            // The retry queue's TTL hands the task back through dead-lettering,
            // so it must survive a node's loss like any other delivery.
            let mut args = dead_lettering(TASKS_EXCHANGE);
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert("x-dead-letter-routing-key".into(), text(RETRIED_TASK_KEY));
            d.queue(&name, args).await?;
            d.bind(&name, RETRY_EXCHANGE, &name).await?;
        }

        d.exchange(RPC_EXCHANGE, ExchangeKind::Direct).await?;
        d.exchange(CIRCULATION_EXCHANGE, ExchangeKind::Topic)
            .await?;
        for (name, source, key) in [
            (LOANS_QUEUE, RPC_EXCHANGE, LOAN_REQUEST_KEY),
            (RENEWALS_QUEUE, CIRCULATION_EXCHANGE, "renewal.*"),
            (RETURNS_QUEUE, CIRCULATION_EXCHANGE, "return.*"),
        ] {
            let mut args = dead_lettering(DEAD_LETTER_EXCHANGE);
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(self.delivery_limit.into()),
            );
            d.queue(name, args).await?;
            d.bind(name, source, key).await?;
        }
        d.queue(LIBRARY_DEAD_QUEUE, quorum()).await?;
        for key in [LOAN_REQUEST_KEY, "renewal.#", "return.#"] {
            d.bind(LIBRARY_DEAD_QUEUE, DEAD_LETTER_EXCHANGE, key)
                .await?;
        }
        Ok(())
    }
}

/// `bibliomq.tasks.retry.4s`: the delay is in the name, so changing the
/// configured delays declares new queues instead of clashing with old ones.
fn retry_queue_name(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{TASKS_QUEUE}.retry.{}s", ms / 1000)
    } else {
        format!("{TASKS_QUEUE}.retry.{ms}ms")
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// Quorum queue arguments that dead-letter to `exchange` *at least once*:
/// RabbitMQ then keeps a dead-lettered message until the target queue has
/// confirmed it, instead of firing and forgetting — without this, a retry
/// whose TTL expires while a node is down can vanish. At-least-once needs
/// `reject-publish` overflow (RabbitMQ 3.10+); with no length limit set, it
/// never refuses anything.
fn dead_lettering(exchange: &str) -> FieldTable {
    let mut args = quorum();
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

/// Declares on a channel, opening a new one when the broker closes it.
struct Declarer<'a> {
    conn: &'a Connection,
    ch: &'a mut Channel,
}

impl Declarer<'_> {
    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<(), lapin::Error> {
        self.ch
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Declares a durable queue. A queue that already exists with other
    /// arguments (declared by an older bibliomq) cannot be changed by
    /// declaring it: the broker refuses (406) and closes the channel. It is
    /// then kept as it is, and the operator is told how to bring it up to
    /// date with a policy, which applies to live queues.
    async fn queue(&mut self, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
        match self
            .ch
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failed(&e) => {
                tracing::warn!(
                    queue = name,
                    "the queue exists with older arguments and keeps them; \
                     `scripts/up` applies the `bibliomq-dead-letter` policy that brings \
                     at-least-once dead-lettering to it (see README, Running on a cluster)"
                );
                *self.ch = self.conn.create_channel().await?;
                self.ch
                    .queue_declare(
                        name.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::durable()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_queues_are_named_after_their_delay() {
        assert_eq!(
            retry_queue_name(Duration::from_secs(4)),
            "bibliomq.tasks.retry.4s"
        );
        assert_eq!(
            retry_queue_name(Duration::from_millis(250)),
            "bibliomq.tasks.retry.250ms"
        );
    }
}
