//! A connection kept listening on PostgreSQL channels (`LISTEN`), opened
//! again after it breaks: what task wake-ups ([`crate::tasks::wakeups`])
//! and key revocations ([`crate::auth::Gate`]) hear from.
//!
//! Notifications are hints. A listener says when it starts hearing
//! ([`Heard::Up`], its `LISTEN` done) and when it stops ([`Heard::Down`]),
//! so that whoever relies on them can make up for what was sent while
//! nobody listened.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// What a listener hears.
#[derive(Debug)]
pub enum Heard<'a> {
    /// Listening (again): notifications from now on are heard.
    Up,
    /// A notification on `channel`.
    Notification { channel: &'a str, payload: &'a str },
    /// The connection ended: notifications are missed until the next `Up`.
    Down,
}

/// How long a listener waits before opening its connection again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Keeps a connection to `url` (the primary, for a cluster's multi-host
/// URL) listening on `channels`, calling `heard` with what it hears, until
/// `stop`. `name` is the connection's `application_name`, so it is told
/// from a pool's connections.
pub async fn listen(
    url: &str,
    name: &str,
    channels: &[&str],
    stop: CancellationToken,
    mut heard: impl FnMut(Heard<'_>) + Send,
) {
    let mut config = match super::config(url) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, listener = name, "cannot listen for notifications");
            return;
        }
    };
    config.application_name(name);
    let statement: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    loop {
        let session = async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            let listening = client.batch_execute(&statement);
            // The connection must be driven for the LISTEN to complete.
            tokio::pin!(listening);
            let mut listened = false;
            loop {
                tokio::select! {
                    done = &mut listening, if !listened => {
                        done?;
                        listened = true;
                        heard(Heard::Up);
                    }
                    message = messages.next() => match message {
                        Some(Ok(AsyncMessage::Notification(n))) => heard(Heard::Notification {
                            channel: n.channel(),
                            payload: n.payload(),
                        }),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok::<(), tokio_postgres::Error>(()),
                    },
                }
            }
        };
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = session => ended,
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, listener = name, "listening connection ended; opening it again");
        }
        heard(Heard::Down);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REOPEN_AFTER) => {}
        }
    }
}
