//! Group commit for PostgreSQL writes.
//!
//! Each caller submits one item and awaits its own answer, so the code that
//! handles a request or a delivery reads straight through. Underneath, one loop
//! hands everything that queued up meanwhile to a single handler call: a
//! multi-row statement instead of one round trip and one commit per item.
//! A batcher started with [`Batcher::spawn`] has no linger timer: an item that
//! arrives alone runs alone at once, and batches only form when the handler
//! is already busy (`max_in_flight` calls). One started with
//! [`Batcher::spawn_gathering`] with [`Gather::Always`] waits a little after
//! an item arrives for others to join it: for writers nobody's answer waits
//! on, where fewer, larger batches save more than the wait costs. With
//! [`Gather::WhenBusy`] it waits so only while items come together (the
//! last batch, started less than that wait ago, held more than one): under
//! load its batches grow, and items that come one at a time run at once.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How long a batch waits for more items after its first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gather {
    /// Always this long.
    Always(Duration),
    /// This long while items come together: when the batch before started
    /// less than this long ago and held more than one item. Items that come
    /// one at a time run at once, as with [`Batcher::spawn`].
    WhenBusy(Duration),
}

/// Batches a writer keeps under way at once. Two, because while one
/// commits the next can run; more only splits the same items into smaller
/// batches (more commits for the same work) on a machine whose database has
/// a core or two to give. Measured: the library benchmark went from about
/// 1,000 to 1,130 loans/s going from 4 to 2.
pub const IN_FLIGHT: usize = 2;

/// Why a submitted item got no answer of its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError<E> {
    /// The handler failed for the whole batch.
    #[error(transparent)]
    Failed(E),
    /// The batcher stopped, or its handler broke its contract.
    #[error("the batch writer stopped")]
    Closed,
}

struct Job<I, O, E> {
    item: I,
    reply: oneshot::Sender<Result<O, BatchError<E>>>,
}

/// A handle to submit items to a running batch loop. Cheap to clone.
pub struct Batcher<I, O, E> {
    tx: mpsc::Sender<Job<I, O, E>>,
}

impl<I, O, E> Clone for Batcher<I, O, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Starts the loop. `handler` must return exactly one output per input,
    /// in order. The loop ends once every handle is dropped and the batches
    /// under way have answered.
    pub fn spawn<F, Fut>(max_batch: usize, max_in_flight: usize, handler: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
    {
        Self::spawn_gathering(
            max_batch,
            max_in_flight,
            Gather::Always(Duration::ZERO),
            handler,
        )
    }

    /// As [`Batcher::spawn`], but a batch, once its first item is there,
    /// may wait for more (until it has `max_batch`) before it runs, as
    /// `gather` says.
    pub fn spawn_gathering<F, Fut>(
        max_batch: usize,
        max_in_flight: usize,
        gather: Gather,
        handler: F,
    ) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<Job<I, O, E>>(max_batch * max_in_flight.max(1) * 2);
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            // When the last batch started, and how many items it held.
            let mut last: Option<(tokio::time::Instant, usize)> = None;
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut jobs = Vec::with_capacity(max_batch.min(64));
                jobs.push(first);
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let now = tokio::time::Instant::now();
                let wait = match gather {
                    Gather::Always(wait) => wait,
                    Gather::WhenBusy(wait) => {
                        let busy = last.is_some_and(|(at, held)| held > 1 && now - at < wait);
                        if busy { wait } else { Duration::ZERO }
                    }
                };
                if !wait.is_zero() {
                    let until = now + wait;
                    while jobs.len() < max_batch {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(job)) => jobs.push(job),
                            _ => break,
                        }
                    }
                }
                last = Some((tokio::time::Instant::now(), jobs.len()));
                let handler = handler.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<I>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
                    let expected = replies.len();
                    match handler(items).await {
                        Ok(outputs) if outputs.len() == expected => {
                            for (reply, out) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Ok(outputs) => {
                            tracing::error!(
                                expected,
                                got = outputs.len(),
                                "batch handler returned the wrong number of outputs"
                            );
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(BatchError::Failed(e.clone())));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Submits one item and waits for its output.
    pub async fn submit(&self, item: I) -> Result<O, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { item, reply })
            .await
            .map_err(|_| BatchError::Closed)?;
        answer.await.unwrap_or(Err(BatchError::Closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn items_submitted_while_busy_share_one_handler_call() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::<u32, u32, String>::spawn(100, 1, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(items.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let answers = futures::future::join_all((0..50).map(|i| batcher.submit(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap(), i as u32 * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(sizes.len() < 50, "expected batching, got {sizes:?}");
    }

    /// The batches a handler was handed, in order.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A handler that doubles each item and notes each batch in `batches`.
    fn doubling(
        batches: &Batches,
    ) -> impl Fn(Vec<u32>) -> std::future::Ready<Result<Vec<u32>, String>> + Send + Sync + 'static
    {
        let batches = batches.clone();
        move |items| {
            batches.lock().unwrap().push(items.clone());
            std::future::ready(Ok(items.into_iter().map(|i| i * 2).collect()))
        }
    }

    #[tokio::test]
    async fn a_gathering_batch_waits_for_items_that_come_soon_after_the_first() {
        let sizes = Batches::default();
        let batcher = Batcher::spawn_gathering(
            4,
            2,
            Gather::Always(Duration::from_secs(1)),
            doubling(&sizes),
        );
        // Five items a few milliseconds apart, the handler idle: the first
        // four make one batch, full before its second is up; the fifth
        // waits out a gathering of its own.
        let mut calls = Vec::new();
        for i in 0..5 {
            let batcher = batcher.clone();
            calls.push(tokio::spawn(async move { batcher.submit(i).await }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i as u32 * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn a_batch_gathering_when_busy_runs_single_items_at_once_and_gathers_company() {
        let sizes = Batches::default();
        // A wait far longer than the test: an item that waited it out
        // would time the test out below.
        let wait = Gather::WhenBusy(Duration::from_secs(600));
        let batcher = Batcher::spawn_gathering(2, 2, wait, doubling(&sizes));
        let within = Duration::from_secs(30);
        let one = |i: u32| {
            let batcher = batcher.clone();
            async move {
                let answer = tokio::time::timeout(within, batcher.submit(i)).await;
                answer.expect("the item waited").unwrap()
            }
        };
        // One at a time, even right after each other: no waiting.
        assert_eq!(one(0).await, 0);
        assert_eq!(one(1).await, 2);
        // Two together make a batch as with `spawn`...
        let (a, b) = tokio::join!(one(2), one(3));
        assert_eq!((a, b), (4, 6));
        // ... and the next batch waits for company, here until it is full.
        let fourth = tokio::spawn(one(4));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(one(5).await, 10);
        assert_eq!(fourth.await.unwrap(), 8);
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![vec![0], vec![1], vec![2, 3], vec![4, 5]]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_item_in_it() {
        let batcher =
            Batcher::<u32, u32, String>::spawn(10, 1, |_| async { Err("down".to_owned()) });
        match batcher.submit(1).await {
            Err(BatchError::Failed(e)) => assert_eq!(e, "down"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
