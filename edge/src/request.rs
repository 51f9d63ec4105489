//! One ZeroMQ request as the handlers see it: the envelope read and checked
//! (a JSON object with a string `action`), its other fields, the
//! correlation id and when the reply is due; and what a handler returns,
//! including what a `follow` leaves for the socket ([`FeedChange`]).
//! The dispatcher and the handlers both depend on this module, and on
//! nothing of each other's but the routing table.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bibliomq_core::{commands::EventFeed, telemetry};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{reply::Answer, wire::WireError};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What a handler returns: its answer (`"ok": true` added by the
/// dispatcher) or the error to reply with.
pub type Reply = Result<Answer, WireError>;

/// A parsed request: the action as sent, the other fields, and the correlation
/// id (the client's `correlation_id` when it is usable, a fresh one otherwise).
#[derive(Debug, Clone)]
pub struct Request {
    pub action: String,
    pub fields: Map<String, Value>,
    pub correlation_id: String,
    /// When the reply is due; handlers that wait stop waiting before it.
    pub deadline: Instant,
    /// Where `follow` and `unfollow` leave what the socket is to do next.
    pub feed: FeedSlot,
}

impl Request {
    /// Reads the request frame. Only the envelope is checked here: a JSON
    /// object with a string `action`.
    pub fn parse(body: &[u8], deadline: Instant) -> Result<Self, WireError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(WireError::new(
                "payload_too_large",
                format!(
                    "the request is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
                    body.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            WireError::new(
                "malformed_json",
                format!("the request is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(mut fields) = value else {
            return Err(WireError::new(
                "invalid_request",
                "the request must be a JSON object such as {\"action\": \"task\", ...}",
            ));
        };
        let action = match fields.remove("action") {
            Some(Value::String(a)) => a,
            Some(_) => {
                return Err(WireError::new("invalid_field", "`action` must be a string")
                    .with_field("action"));
            }
            None => {
                return Err(
                    WireError::new("missing_field", "the request has no `action`")
                        .with_field("action"),
                );
            }
        };
        let correlation_id = fields
            .get("correlation_id")
            .and_then(Value::as_str)
            .and_then(telemetry::sanitize_correlation_id)
            .unwrap_or_else(telemetry::new_correlation_id);
        Ok(Self {
            action,
            fields,
            correlation_id,
            deadline,
            feed: FeedSlot::default(),
        })
    }

    /// An optional string field, under its name or one of its aliases.
    pub fn opt_str(&self, names: &[&str]) -> Result<Option<String>, WireError> {
        for name in names {
            match self.fields.get(*name) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(_) => {
                    return Err(WireError::new(
                        "invalid_field",
                        format!("`{name}` must be a string"),
                    )
                    .with_field(*name));
                }
            }
        }
        Ok(None)
    }

    /// A required string field, under its name or one of its aliases.
    pub fn str_any(&self, names: &[&str]) -> Result<String, WireError> {
        self.opt_str(names)?.ok_or_else(|| {
            WireError::new(
                "missing_field",
                format!("the request has no `{}`", names[0]),
            )
            .with_field(names[0])
        })
    }

    /// A required string field.
    pub fn str(&self, name: &str) -> Result<&str, WireError> {
        match self.fields.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(
                WireError::new("invalid_field", format!("`{name}` must be a string"))
                    .with_field(name),
            ),
            None => Err(
                WireError::new("missing_field", format!("the request has no `{name}`"))
                    .with_field(name),
            ),
        }
    }

    /// Time left before the reply is due, less a margin to send it in.
    pub fn time_left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(250))
    }
}

/// What a `follow` or `unfollow` asks of the request socket beyond its
/// reply; handed over through [`FeedSlot`].
pub enum FeedChange {
    /// Push the feed to the peer that asked.
    Start(EventFeed),
    /// Stop the feed the peer has.
    Stop,
}

/// Where a handler leaves the [`FeedChange`] for the request socket.
#[derive(Clone, Default)]
pub struct FeedSlot(Arc<Mutex<Option<FeedChange>>>);

impl std::fmt::Debug for FeedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedSlot")
    }
}

impl FeedSlot {
    pub fn set(&self, change: FeedChange) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(change);
    }

    pub fn take(&self) -> Option<FeedChange> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
