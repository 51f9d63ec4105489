//! The consume loop every worker kind shares: (re)subscribe whenever the
//! connection comes back, hand each delivery to its own task, and on shutdown
//! stop taking new deliveries, let the in-flight ones finish, and after the
//! drain time tell them to give their message back.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use bibliomq_core::broker::{Broker, STEP_TIMEOUT, within};
use futures::{FutureExt, StreamExt};
use lapin::{
    Acker,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How a consumer is told to stop.
#[derive(Clone)]
pub struct Stop {
    /// Stop taking deliveries; finish what is in hand.
    pub graceful: CancellationToken,
    /// The drain time is over: abandon work in progress and requeue it.
    pub abandon: CancellationToken,
}

/// Handles one delivery; must settle it (ack, nack or reject) itself.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        abandon: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// How long work told to give its message back (after the drain time) may
/// take before the consumer stops without it.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumes `queue` until `stop.graceful` is cancelled, then drains.
pub async fn run<H: Handler>(
    broker: Broker,
    queue: &str,
    prefetch: u16,
    handler: Arc<H>,
    stop: Stop,
    drain: Duration,
) {
    let tracker = TaskTracker::new();
    let tag = format!("{queue}@{}-{}", hostname(), std::process::id());
    'connect: while !stop.graceful.is_cancelled() {
        let opened = tokio::select! {
            opened = broker.consume(queue, &tag, prefetch) => opened,
            () = stop.graceful.cancelled() => break,
        };
        let (channel, mut consumer) = match opened {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(queue, error = %e, "cannot consume; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    () = stop.graceful.cancelled() => break,
                }
            }
        };
        tracing::info!(queue, prefetch, "consuming");
        loop {
            tokio::select! {
                // Prefer shutdown over new deliveries.
                biased;
                () = stop.graceful.cancelled() => {
                    let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                    let _ = within(STEP_TIMEOUT, cancel).await;
                    break 'connect;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        let acker = delivery.acker.clone();
                        let work = handler.handle(delivery, stop.abandon.clone());
                        let queue = queue.to_owned();
                        tracker.spawn(async move {
                            // A panic must not strand the delivery unacked on a
                            // live channel: hand it back. Redelivered again and
                            // again, it is caught as poison by its handler.
                            if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                                tracing::error!(%queue, "a handler panicked; requeueing its delivery");
                                settle_acker(&acker, Settle::Requeue).await;
                            }
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(queue, error = %e, "consumer failed; resubscribing");
                        continue 'connect;
                    }
                    None => {
                        tracing::warn!(queue, "consumer was cancelled by the broker; resubscribing");
                        continue 'connect;
                    }
                },
            }
        }
    }
    tracker.close();
    if !tracker.is_empty() {
        tracing::info!(
            queue,
            in_flight = tracker.len(),
            "waiting for in-flight deliveries"
        );
    }
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(queue, "drain time over; requeueing unfinished work");
        stop.abandon.cancel();
        if tokio::time::timeout(ABANDON_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            // Their messages stay unacked; closing the connection, which
            // comes next, makes the broker deliver them again.
            tracing::error!(
                queue,
                in_flight = tracker.len(),
                "in-flight work did not give its messages back in time; leaving them to the broker"
            );
        }
    }
    tracing::info!(queue, "consumer stopped");
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// How a handler settles a delivery.
pub enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

/// Acks, requeues or dead-letters a delivery; a failure (the channel is
/// gone) only means the broker will redeliver it.
pub async fn settle(delivery: &Delivery, how: Settle) {
    settle_acker(&delivery.acker, how).await;
}

/// [`settle`] by the delivery's acker alone (what is left of a delivery
/// whose handler panicked).
async fn settle_acker(acker: &Acker, how: Settle) {
    let result = within(STEP_TIMEOUT, async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
            Settle::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    })
    .await;
    if let Err(e) = result {
        // The channel is gone (or its connection died under the ack); the
        // broker redelivers the message, and the claim makes the
        // redelivery harmless.
        tracing::warn!(error = %e, "could not settle the delivery");
    }
}
