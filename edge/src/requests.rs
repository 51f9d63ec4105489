//! The ZeroMQ request socket: a ROUTER, so that many REQ (or DEALER)
//! clients are served at once. Each request runs in a task of its own and
//! its reply goes back by the envelope (identity frames) it came with.
//!
//! Every request gets exactly one reply, within the edge request timeout:
//! handler errors, unreadable frames and timeouts are all replies. After
//! the reply to a `follow`, the same task pushes the feed's events to that
//! peer (see [`crate::follow`]).

use std::{sync::Arc, time::Duration};

use bibliomq_core::commands::Commands;
use bytes::Bytes;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use zeromq::{RouterSocket, SocketRecv, SocketSend, ZmqMessage};

use crate::{
    dispatch::{self, Handled, error_reply},
    follow::Followers,
    reply::address,
    request::FeedChange,
    wire::WireError,
};

/// How long a reply may wait for room in a slow client's send queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests handled at once. A REQ client has one request out at a time,
/// but a DEALER may send any number; beyond this the socket is not read
/// until some are answered, and TCP and the clients' own queues push back.
const MAX_IN_FLIGHT: usize = 1024;

/// Serves `socket` until `shutdown`, then stops reading requests, answers
/// those in progress (each is bounded by `request_timeout`) and closes.
pub async fn serve(
    socket: RouterSocket,
    commands: Commands,
    request_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Split so that replies, sent from the requests' own tasks, never wait
    // behind the loop that receives.
    let (send, mut recv) = socket.split();
    let in_flight = TaskTracker::new();
    let followers = Followers::default();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        // The semaphore is never closed; an error would only mean it was.
        let Ok(slot) = slot else { break };
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = recv.recv() => message,
        };
        match message {
            Ok(message) => {
                let deadline = Instant::now() + request_timeout;
                let commands = commands.clone();
                let mut send = send.clone();
                let followers = followers.clone();
                let shutdown = shutdown.clone();
                in_flight.spawn(async move {
                    let Some((envelope, reply, feed)) =
                        answer(commands, message, deadline, request_timeout).await
                    else {
                        return;
                    };
                    let message = address(&envelope, reply);
                    match tokio::time::timeout(SEND_TIMEOUT, send.send(message)).await {
                        Ok(Ok(())) => {}
                        // The client went away before its answer: nothing to do.
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "reply not delivered");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("reply dropped: the client is not reading");
                            return;
                        }
                    }
                    // A feed runs for long: it gives its request slot back.
                    drop(slot);
                    match feed {
                        None => {}
                        Some(FeedChange::Stop) => followers.stop(&envelope),
                        Some(FeedChange::Start(feed)) => {
                            followers
                                .push(send, envelope, feed, SEND_TIMEOUT, shutdown)
                                .await;
                        }
                    }
                });
            }
            Err(e) => {
                // A broken peer; the socket itself goes on. The pause keeps a
                // persistent fault from spinning this loop.
                tracing::debug!(error = %e, "ZeroMQ receive failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
    drop(recv);
    in_flight.close();
    if tokio::time::timeout(request_timeout + SEND_TIMEOUT, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!("ZeroMQ requests still running at shutdown were abandoned");
    }
    // Dropping the last half closes the socket; queued replies are flushed
    // by the connections' writers first.
    drop(send);
}

/// The reply to one ROUTER message with the envelope it goes back by, and
/// what a `follow` or `unfollow` asks beyond it. `None` for a message that
/// has no return address at all.
async fn answer(
    commands: Commands,
    message: ZmqMessage,
    deadline: Instant,
    request_timeout: Duration,
) -> Option<(Vec<Bytes>, String, Option<FeedChange>)> {
    let (envelope, body) = split_envelope(message.into_vec())?;
    let invalid = |message: &str| error_reply(WireError::new("invalid_request", message));
    let (reply, feed) = match body.as_slice() {
        [frame] => {
            match tokio::time::timeout_at(deadline, dispatch::handle(commands, frame, deadline))
                .await
            {
                Ok(Handled { reply, feed }) => (reply, feed),
                Err(_) => {
                    tracing::warn!("a ZeroMQ request timed out");
                    (error_reply(crate::wire::timeout(request_timeout)), None)
                }
            }
        }
        [] => (invalid("the request is empty; send one JSON object"), None),
        _ => (
            invalid("send the request as a single frame holding one JSON object"),
            None,
        ),
    };
    Some((envelope, reply, feed))
}

/// Splits a ROUTER message into the envelope (the identity frames and the
/// empty delimiter REQ adds) and the body. A DEALER that sends no delimiter
/// has the identity alone as its envelope.
fn split_envelope(frames: Vec<Bytes>) -> Option<(Vec<Bytes>, Vec<Bytes>)> {
    if frames.is_empty() {
        return None;
    }
    let cut = match frames.iter().position(Bytes::is_empty) {
        Some(delimiter) => delimiter + 1,
        None => 1,
    };
    let mut envelope = frames;
    let body = envelope.split_off(cut);
    Some((envelope, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect()
    }

    #[test]
    fn a_req_envelope_keeps_identity_and_delimiter() {
        let (envelope, body) = split_envelope(frames(&["id", "", "{}"])).unwrap();
        assert_eq!(envelope, frames(&["id", ""]));
        assert_eq!(body, frames(&["{}"]));
    }

    #[test]
    fn a_dealer_without_delimiter_is_answered_by_identity() {
        let (envelope, body) = split_envelope(frames(&["id", "{}"])).unwrap();
        assert_eq!(envelope, frames(&["id"]));
        assert_eq!(body, frames(&["{}"]));
    }

    #[test]
    fn a_reply_goes_behind_its_envelope() {
        let message = address(&frames(&["id", ""]), "{}".to_owned());
        assert_eq!(message.into_vec(), frames(&["id", "", "{}"]));
    }

    #[test]
    fn an_empty_request_leaves_an_empty_body() {
        let (envelope, body) = split_envelope(frames(&["id", ""])).unwrap();
        assert_eq!(envelope, frames(&["id", ""]));
        assert!(body.is_empty());
    }
}
