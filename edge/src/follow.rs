//! The keyed event feed over ZeroMQ. A PUB socket cannot check keys (it
//! hears nothing from its subscribers), so a client that has a key follows
//! events through the request socket instead, from a DEALER:
//!
//! - `{"action": "follow", "key": ..., "keys": "task.*,loaned.#"}` (or an
//!   array of patterns; every event when absent) is answered
//!   `{"ok": true, "following": [...]}` once the feed's queue is bound;
//! - then each matching event comes to the same socket as one frame,
//!   `{"ok": true, "routing_key": "task.succeeded", "event": {...}}`;
//! - the feed stops on `{"action": "unfollow"}` (or a new `follow`, which
//!   replaces it), when the client goes away or stops reading, and when
//!   the key is revoked or the edge stops: then with a last frame
//!   `{"ok": false, "error": {...}}` (`unauthorized`, `unavailable`);
//! - a feed with no event for 15 s sends `{"ok": true, "keep_alive": true}`,
//!   which is how a follower that went away is noticed.
//!
//! The permission, the patterns and the check of the key at each event
//! (still in force; an event its role may see: a service key the tasks, a
//! librarian the circulation of their branch) are the command layer's, as
//! for the HTTP event stream.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bibliomq_core::commands::{Commands, EventFeed};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use zeromq::{RouterSendHalf, SocketSend};

use crate::{
    reply::{Answer, ZmqReply, address},
    request::{FeedChange, Reply, Request},
    wire::{WireError, to_text},
};

/// Events a follower may fall behind by before it misses some.
const BUFFER: usize = 512;
/// A follower hears something at least this often: a keep-alive frame when
/// no event came. Sending is how a follower that went away is noticed
/// (its socket answers no more), so its feed and queue do not linger.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `follow`: starts (or replaces) this peer's feed.
pub async fn follow(commands: Commands, request: Request) -> Reply {
    let keys = patterns_field(&request)?;
    let feed = commands.follow_events(keys.as_deref(), BUFFER).await?;
    let following = feed.patterns().to_vec();
    request.feed.set(FeedChange::Start(feed));
    Ok(Answer::Following { following })
}

/// `unfollow`: stops this peer's feed, if it has one.
pub async fn unfollow(_commands: Commands, request: Request) -> Reply {
    request.feed.set(FeedChange::Stop);
    Ok(Answer::Following {
        following: Vec::new(),
    })
}

/// `keys`: comma-separated patterns, or an array of them.
fn patterns_field(request: &Request) -> Result<Option<String>, WireError> {
    match request.fields.get("keys") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str())
            .collect::<Option<Vec<&str>>>()
            .map(|patterns| Some(patterns.join(",")))
            .ok_or_else(not_patterns),
        Some(_) => Err(not_patterns()),
    }
}

fn not_patterns() -> WireError {
    WireError::new(
        "invalid_field",
        "`keys` must be a string of comma-separated patterns or an array of strings",
    )
    .with_field("keys")
}

/// One event as a follower gets it.
#[derive(Serialize)]
struct Pushed<'a> {
    ok: bool,
    routing_key: &'a str,
    event: Value,
}

/// What a quiet feed sends every [`KEEP_ALIVE`].
#[derive(Serialize)]
struct KeepAlive {
    ok: bool,
    keep_alive: bool,
}

/// A peer's envelope (its identity frames, and the delimiter a REQ-like
/// DEALER sends), which its events go back by.
type Peer = Vec<Bytes>;

/// The feeds being pushed, one per peer, each with its number and what
/// stops it, so that a new `follow` or an `unfollow` stops the one before.
#[derive(Clone, Default)]
pub struct Followers {
    feeds: Arc<Mutex<HashMap<Peer, (u64, CancellationToken)>>>,
    next: Arc<AtomicU64>,
}

impl Followers {
    /// Registers a new feed for `peer`, stopping the one it had.
    fn begin(&self, peer: &[Bytes]) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, before)) = feeds.insert(peer.to_vec(), (id, stop.clone())) {
            before.cancel();
        }
        (id, stop)
    }

    /// Stops `peer`'s feed.
    pub fn stop(&self, peer: &[Bytes]) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, stop)) = feeds.remove(peer) {
            stop.cancel();
        }
    }

    /// Forgets feed `id` of `peer` once it has ended (unless replaced).
    fn end(&self, peer: &[Bytes], id: u64) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if feeds.get(peer).is_some_and(|(current, _)| *current == id) {
            feeds.remove(peer);
        }
    }

    /// Pushes `feed` to `peer` until it is stopped, replaced, refused, or
    /// `shutdown`; see the module's text for how each ends.
    pub async fn push(
        &self,
        mut send: RouterSendHalf,
        peer: Peer,
        mut feed: EventFeed,
        send_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        let (id, stop) = self.begin(&peer);
        let last = loop {
            let message = tokio::select! {
                () = stop.cancelled() => break None,
                () = shutdown.cancelled() => break Some(WireError::new(
                    "unavailable",
                    "the edge is stopping; follow again once it is back",
                )),
                message = tokio::time::timeout(KEEP_ALIVE, feed.next()) => message,
            };
            let text = match message {
                // Quiet for a while: a frame anyway, which also finds out
                // whether the follower is still there.
                Err(_) => to_text(&KeepAlive {
                    ok: true,
                    keep_alive: true,
                }),
                Ok(None) => {
                    break Some(WireError::new(
                        "unavailable",
                        "the live feed ended; follow again",
                    ));
                }
                Ok(Some(Ok(message))) => to_text(&Pushed {
                    ok: true,
                    routing_key: &message.routing_key,
                    event: message.json(),
                }),
                // The key is no longer in force.
                Ok(Some(Err(e))) => break Some(e.into()),
            };
            match tokio::time::timeout(send_timeout, send.send(address(&peer, text))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a follower went away");
                    break None;
                }
                Err(_) => {
                    tracing::info!("a follower stopped reading; its feed ends");
                    break None;
                }
            }
        };
        if let Some(error) = last {
            let frame = address(&peer, to_text(&ZmqReply::failed(error)));
            let _ = tokio::time::timeout(send_timeout, send.send(frame)).await;
        }
        self.end(&peer, id);
    }
}
