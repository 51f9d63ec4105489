//! RabbitMQ: one supervised connection per process, the topology, confirmed
//! publishing and consumer channels.
//!
//! The supervisor keeps trying to connect (with capped exponential backoff),
//! declares the topology on every new connection and notices when the
//! connection dies. On a cluster it is given every node's URL: it connects to
//! the first that answers and, when that node goes, tries the others in turn,
//! starting with the one after the node it lost. Publishers fail fast while
//! there is no connection, so the API can answer 503 instead of hanging;
//! consumers wait for the next one.

pub mod events;
pub mod headers;
mod publisher;
pub mod rpc;
pub mod topology;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, Event,
    options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use publisher::{PUBLISH_MANY_WINDOW, PublishError, Publisher};

/// Appends `items`, each already JSON, to `body` as a JSON array, joined as
/// they are rather than serialized again: how bundles carry their members.
pub fn push_json_array<'a>(body: &mut Vec<u8>, items: impl IntoIterator<Item = &'a [u8]>) {
    body.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
}
pub use topology::Topology;

/// How long one exchange with the broker that waits for its answer (open a
/// channel, subscribe, settle a delivery) may take. A connection that dies
/// under such a step can leave it waiting for good; past this it counts as
/// a broken connection, and the caller does what it does for one.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Declaring the whole topology on a new connection: several steps, each a
/// round trip, and on a cluster every quorum queue's replicas to agree.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `step`, failing it as a timed-out connection after `limit`.
pub async fn within<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    tokio::time::timeout(limit, step).await.map_err(|_| {
        lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the message broker within {limit:?}"),
        ))))
    })?
}

/// Closes a channel that is being replaced (it refused a publish, or a
/// send on it got stuck), in the background: what is still pending on it
/// fails as broken, and is sent again on a new channel where that is
/// promised.
pub(crate) fn retire(channel: Channel) {
    tokio::spawn(async move {
        let closing = channel.close(200, "replaced".into());
        if let Err(e) = tokio::time::timeout(STEP_TIMEOUT, closing).await {
            tracing::debug!(error = %e, "a retired channel did not close in time");
        }
    });
}

/// A handle to the process's supervised RabbitMQ connection. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    current: watch::Sender<Option<Arc<Connection>>>,
    /// Cancelled by [`Broker::close`]: stops reconnecting and closes the connection.
    closing: CancellationToken,
}

impl Broker {
    /// Starts the connection supervisor and returns at once; the connection
    /// arrives when the broker can be reached. `url` is one URL or a
    /// comma-separated list of a cluster's nodes. `name` shows in the
    /// management UI.
    pub fn start(url: &str, name: &str, topology: Topology) -> Self {
        let (current, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            current,
            closing: CancellationToken::new(),
        });
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        tokio::spawn(supervise(inner.clone(), urls, name.to_owned(), topology));
        Self { inner }
    }

    /// The live connection, if there is one right now.
    pub fn current(&self) -> Option<Arc<Connection>> {
        self.inner
            .current
            .borrow()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// Waits for a live connection. `None` once the broker handle is closing.
    pub async fn connection(&self) -> Option<Arc<Connection>> {
        let mut rx = self.inner.current.subscribe();
        loop {
            if self.inner.closing.is_cancelled() {
                return None;
            }
            if let Some(conn) = self.current() {
                return Some(conn);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return None },
                () = self.inner.closing.cancelled() => return None,
                // The status can flip without a new value being sent.
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Waits up to `timeout` for a live connection.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.connection())
            .await
            .ok()
            .flatten()
            .is_some()
    }

    /// Opens a consumer on `queue` with the given prefetch, on its own channel.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), lapin::Error> {
        let conn = self.connection().await.ok_or_else(|| {
            lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            ))
        })?;
        within(STEP_TIMEOUT, async {
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, consumer))
        })
        .await
    }

    /// Stops reconnecting and closes the connection. Call it last, after the
    /// consumers have settled their deliveries.
    pub async fn close(&self) {
        self.inner.closing.cancel();
        let conn = self.inner.current.send_replace(None);
        if let Some(conn) = conn
            && conn.status().connected()
        {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                conn.close(200, "shutting down".into()),
            )
            .await;
        }
    }
}

/// Declares a queue of the channel's own: server-named, so no two callers
/// share one; exclusive and auto-deleted, so it goes with its connection
/// (or its node).
pub(crate) async fn private_queue(channel: &Channel) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Consumes `queue` with automatic acknowledgement: for direct replies and
/// live feeds, where a message lost with a connection is acceptable (the
/// record of what happened is elsewhere).
pub(crate) async fn consume_unacked(
    channel: &Channel,
    queue: &str,
) -> Result<Consumer, lapin::Error> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

async fn supervise(inner: Arc<Inner>, urls: Vec<String>, name: String, topology: Topology) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    // The node to try first: after a loss, the one after the node we lost,
    // so a dead node is not the first thing every process knocks on.
    let mut next = 0usize;
    while !inner.closing.is_cancelled() {
        // One round: every node once, without waiting in between.
        let mut connected = None;
        for offset in 0..urls.len().max(1) {
            let index = (next + offset) % urls.len().max(1);
            let Some(url) = urls.get(index) else { break };
            match connect(url, &name, &topology).await {
                Ok(conn) => {
                    connected = Some((index, conn));
                    break;
                }
                Err(e) => {
                    failures += 1;
                    // Log the first failure loudly, then only now and then.
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(node = %redact(url), error = %e, failures, "cannot reach RabbitMQ; retrying");
                    }
                }
            }
            if inner.closing.is_cancelled() {
                return;
            }
        }
        if let Some((index, conn)) = connected {
            let conn = Arc::new(conn);
            backoff = MIN_BACKOFF;
            let node = urls.get(index).map(|u| redact(u)).unwrap_or_default();
            if failures > 0 {
                tracing::info!(%node, after_failures = failures, "reconnected to RabbitMQ");
            } else {
                tracing::info!(%node, "connected to RabbitMQ");
            }
            failures = 0;
            let events = conn.events_listener();
            inner.current.send_replace(Some(conn.clone()));
            tokio::select! {
                () = wait_until_broken(&conn, events) => {
                    tracing::warn!(%node, "lost the RabbitMQ connection; reconnecting");
                    inner.current.send_replace(None);
                    next = index + 1;
                    // Straight to the other nodes: the cluster is likely still there.
                    continue;
                }
                () = inner.closing.cancelled() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = inner.closing.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A node's URL for the logs: without the password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

async fn connect(url: &str, name: &str, topology: &Topology) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = within(STEP_TIMEOUT, Connection::connect(url, props)).await?;
    within(DECLARE_TIMEOUT, topology.declare(&conn)).await?;
    Ok(conn)
}

async fn wait_until_broken(
    conn: &Connection,
    mut events: impl futures::Stream<Item = Event> + Unpin,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(e)) => {
                    tracing::warn!(error = %e, "RabbitMQ connection error");
                    return;
                }
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked publishing (resource alarm)");
                }
                Some(Event::ConnectionUnblocked) => tracing::info!("RabbitMQ unblocked publishing"),
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => if !conn.status().connected() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_node_urls_carry_no_password() {
        assert_eq!(
            super::redact("amqp://guest:secret@10.0.0.1:5701/%2f"),
            "amqp://10.0.0.1:5701/%2f"
        );
        assert_eq!(super::redact("amqp://h:5672"), "amqp://h:5672");
    }
}
