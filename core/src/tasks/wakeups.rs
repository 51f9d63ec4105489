//! Word that tasks finished, for those waiting on them (`GET
//! /v1/tasks/{id}?wait_ms=`, `POST /v1/tasks?wait_ms=`, the edge's `task`
//! request): right behind each outcome write, on the same connection, the
//! workers send a `NOTIFY` on [`CHANNEL`] naming the tasks of that write
//! (or nobody in particular, for a large batch). It is a statement of its
//! own, run once the write has committed: inside the write's transaction
//! it would hold PostgreSQL's notify lock through the commit, and the
//! commits of concurrent outcome writes would queue behind each other
//! (the README's "Performance", item 14, has what moving it bought). A
//! waiter then reads its task at once instead of at its next poll.
//!
//! A wake-up is a hint, never the record: waiters still read the row, and
//! still poll on their own schedule, so a notification lost (the listening
//! connection down, a restart, a failover) costs latency only. The
//! listening connection is opened when a process first waits, follows the
//! database URL (the primary, for a cluster's multi-host URL), and is
//! opened again after it breaks.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::notifications::Heard;

/// The channel the workers notify on, right after each outcome write.
pub const CHANNEL: &str = "bibliomq_tasks_finished";

/// The most task ids a notification names; past it the payload is empty,
/// which wakes every waiter. (PostgreSQL takes up to 8,000 bytes; 100 ids
/// are 3,700.)
pub const NAMED_MAX: usize = 100;

/// The payload that names `ids` (empty past [`NAMED_MAX`]).
pub fn payload(ids: &[Uuid]) -> String {
    if ids.len() > NAMED_MAX {
        return String::new();
    }
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One notification: the ids it names, or `None` for "any task".
#[derive(Debug, Clone)]
pub struct Finished(Option<Arc<[Uuid]>>);

impl Finished {
    fn parse(payload: &str) -> Self {
        if payload.is_empty() {
            return Self(None);
        }
        let ids: Option<Vec<Uuid>> = payload.split(',').map(|s| s.parse().ok()).collect();
        // Unreadable: wake everyone rather than no one.
        Self(ids.map(Arc::from))
    }

    /// Whether this may concern `id`.
    pub fn names(&self, id: Uuid) -> bool {
        self.0.as_ref().is_none_or(|ids| ids.contains(&id))
    }
}

/// The process's listener, started by the first [`Wakeups::subscribe`].
pub struct Wakeups {
    database_url: String,
    sender: Mutex<Option<broadcast::Sender<Finished>>>,
    /// Whether the listening connection is up (its `LISTEN` done).
    live: Arc<AtomicBool>,
    /// Stops the listener when the owner is dropped.
    stop: CancellationToken,
}

impl Wakeups {
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            sender: Mutex::new(None),
            live: Arc::new(AtomicBool::new(false)),
            stop: CancellationToken::new(),
        }
    }

    /// Notifications from now on. Subscribe before reading the task, so
    /// that an outcome committed in between is not missed.
    pub async fn subscribe(&self) -> broadcast::Receiver<Finished> {
        let mut sender = self.sender.lock().await;
        if let Some(tx) = sender.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(256);
        tokio::spawn(listen(
            self.database_url.clone(),
            tx.clone(),
            self.live.clone(),
            self.stop.clone(),
        ));
        *sender = Some(tx);
        rx
    }

    /// Whether finished tasks are being heard now: waiters may then poll
    /// less often.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until `rx` brings word that may concern `id`. Never returns when
/// the listener is gone: the caller's own timer decides then.
pub async fn finished(rx: &mut broadcast::Receiver<Finished>, id: Uuid) {
    loop {
        match rx.recv().await {
            Ok(f) if f.names(id) => return,
            Ok(_) => {}
            // Missed some: one of them may have been ours.
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Keeps a connection listening on [`CHANNEL`], opening it again after it
/// breaks, until `stop`.
async fn listen(
    url: String,
    tx: broadcast::Sender<Finished>,
    live: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    crate::db::notifications::listen(&url, "bibliomq-wakeups", &[CHANNEL], stop, |heard| {
        match heard {
            Heard::Up => live.store(true, Ordering::Relaxed),
            Heard::Notification { payload, .. } => {
                let _ = tx.send(Finished::parse(payload));
            }
            Heard::Down => {
                live.store(false, Ordering::Relaxed);
                // Whatever finished while it was down: waiters read again.
                let _ = tx.send(Finished(None));
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_tasks_and_an_empty_or_unreadable_one_names_any() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let named = Finished::parse(&format!("{a},{b}"));
        assert!(named.names(a) && named.names(b));
        assert!(!named.names(Uuid::now_v7()));
        assert!(Finished::parse("").names(a));
        assert!(Finished::parse("not-an-id").names(a));
    }

    #[test]
    fn a_payload_names_up_to_the_limit_and_wakes_everyone_past_it() {
        let ids: Vec<Uuid> = (0..NAMED_MAX).map(|_| Uuid::now_v7()).collect();
        let named_ids = payload(&ids);
        assert!(named_ids.len() < 8000);
        let named = Finished::parse(&named_ids);
        assert!(ids.iter().all(|id| named.names(*id)));
        assert!(!named.names(Uuid::now_v7()));
        let many: Vec<Uuid> = (0..=NAMED_MAX).map(|_| Uuid::now_v7()).collect();
        assert!(Finished::parse(&payload(&many)).names(Uuid::now_v7()));
    }
}
