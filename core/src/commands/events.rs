//! Following the live outcome events of `bibliomq.events` (the HTTP event
//! stream and the ZeroMQ `follow` request): which patterns a caller may ask
//! for, the subscription itself, and which events reach the caller. The
//! feed checks each event against the key ([`EventFeed::next`]): a key
//! revoked while it follows ends its feed, and a key sees only what its
//! role may (a service key the tasks, a librarian the circulation of their
//! branch). Both transports only pass on what the feed gives them.

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Commands;
use crate::{
    auth::Permission,
    broker::{events::EventMessage, topology::EVENTS_EXCHANGE},
    error::{CommandError, Invalid},
};

/// Most patterns one feed may follow.
pub const EVENT_PATTERNS_MAX: usize = 16;
/// Longest pattern, in bytes (RabbitMQ's limit for a binding key).
const PATTERN_MAX_BYTES: usize = 255;
/// How long to wait for the feed's queue to be bound before answering
/// `unavailable`.
const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// A live feed: the patterns followed, and the events its caller may see
/// as they come. A follower that falls more than its buffer behind misses
/// the excess. It holds its place among the process's live feeds until
/// dropped.
pub struct EventFeed {
    patterns: Vec<String>,
    events: mpsc::Receiver<EventMessage>,
    /// Acting for the caller who began the feed.
    commands: Commands,
    /// An event taken from `events` whose check had not finished: `next`
    /// may be cancelled there (a keep-alive timer), and the event is not
    /// lost.
    checking: Option<EventMessage>,
    /// The key was refused once: the feed gives nothing more.
    refused: bool,
    _place: OwnedSemaphorePermit,
    /// `bibliomq_live_feeds`, one less when the feed is dropped.
    counted: Gauge,
}

impl Drop for EventFeed {
    fn drop(&mut self) {
        self.counted.dec();
    }
}

impl EventFeed {
    /// The patterns followed.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The next event this feed's caller may see. An error once when the
    /// key is no longer in force (revoked while it followed), which ends
    /// the feed; `None` once the feed has ended (that, or the process's
    /// broker handle closed). Cancel-safe: an event whose check was cut
    /// short is checked again at the next call.
    pub async fn next(&mut self) -> Option<Result<EventMessage, CommandError>> {
        if self.refused {
            return None;
        }
        loop {
            let message = match self.checking.take() {
                Some(message) => message,
                None => self.events.recv().await?,
            };
            let message = self.checking.insert(message);
            match self.commands.may_pass_on(message).await {
                Ok(true) => return self.checking.take().map(Ok),
                Ok(false) => self.checking = None,
                Err(e) => {
                    self.checking = None;
                    self.refused = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Topic patterns from a comma-separated list (`task.*,loaned.#`); every
/// event (`#`) when `raw` is `None`. Each is dot-separated words of
/// letters, digits, `-` and `_`, or the wildcards `*` (one word) and `#`
/// (any number). Refused as `invalid_keys` (field `keys`).
pub fn event_patterns(raw: Option<&str>) -> Result<Vec<String>, Invalid> {
    let invalid = |message: String| Invalid::field("invalid_keys", "keys", message);
    let patterns: Vec<String> = raw
        .unwrap_or("#")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if patterns.is_empty() || patterns.len() > EVENT_PATTERNS_MAX {
        return Err(invalid(format!(
            "give 1 to {EVENT_PATTERNS_MAX} comma-separated routing key patterns, such as `task.*,loaned.#`"
        )));
    }
    for pattern in &patterns {
        let valid = pattern.len() <= PATTERN_MAX_BYTES
            && pattern.split('.').all(|word| {
                word == "*"
                    || word == "#"
                    || (!word.is_empty()
                        && word
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            });
        if !valid {
            return Err(invalid(format!(
                "`{pattern}` is not a routing key pattern: use dot-separated words, `*` for one word, `#` for any"
            )));
        }
    }
    Ok(patterns)
}

impl Commands {
    /// Starts following the outcome events that match `raw` (see
    /// [`event_patterns`]). Returns once the feed's own queue is bound, so
    /// every event published afterwards is delivered; `unavailable` when
    /// RabbitMQ cannot be reached in time.
    pub async fn follow_events(
        &self,
        raw: Option<&str>,
        buffer: usize,
    ) -> Result<EventFeed, CommandError> {
        self.authorize(Permission::WatchEvents)?;
        let patterns = event_patterns(raw)?;
        let place = self
            .inner
            .live_feeds
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                CommandError::Unavailable(format!(
                    "this process already serves {} live feeds, the most it may \
                     (BIBLIOMQ_LIVE_FEEDS_MAX); try again once one has ended",
                    self.settings().dashboard.live_feeds_max
                ))
            })?;
        let keys: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let events = self
            .publisher()
            .broker()
            .subscribe_bound(EVENTS_EXCHANGE, &keys, buffer, BIND_TIMEOUT)
            .await
            .ok_or_else(|| {
                CommandError::Unavailable(
                    "the message broker cannot be reached, so there is no live feed; try again shortly"
                        .to_owned(),
                )
            })?;
        let counted = self.metrics().live_feeds.clone();
        counted.inc();
        Ok(EventFeed {
            patterns,
            events,
            commands: self.clone(),
            checking: None,
            refused: false,
            _place: place,
            counted,
        })
    }

    /// What a feed begun by [`Commands::follow_events`] does with `event`:
    /// pass it on (`true`), or skip it (`false`: not for this caller, see
    /// [`crate::auth::Caller::may_see_event`]). An error ends the feed: the
    /// key is no longer in force (revoked while it followed).
    async fn may_pass_on(&self, event: &EventMessage) -> Result<bool, CommandError> {
        self.recheck(Permission::WatchEvents).await?;
        Ok(self
            .caller()
            .is_some_and(|caller| caller.may_see_event(&event.routing_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_follows_every_event() {
        assert_eq!(event_patterns(None).unwrap(), vec!["#"]);
    }

    #[test]
    fn patterns_with_wildcards_are_accepted() {
        assert_eq!(
            event_patterns(Some("task.*, loaned.#,rejected.renewal.central")).unwrap(),
            vec!["task.*", "loaned.#", "rejected.renewal.central"]
        );
    }

    #[test]
    fn malformed_patterns_are_refused_naming_the_culprit() {
        for bad in ["task..x", "task.a b", "", ",,", "tä.*"] {
            let err = event_patterns(Some(bad)).unwrap_err();
            assert_eq!(
                (err.code, err.field.as_deref()),
                ("invalid_keys", Some("keys")),
                "{bad}"
            );
        }
        let many = vec!["a"; EVENT_PATTERNS_MAX + 1].join(",");
        assert!(event_patterns(Some(&many)).is_err());
        let long = "a".repeat(PATTERN_MAX_BYTES + 1);
        assert!(event_patterns(Some(&long)).is_err());
    }
}
