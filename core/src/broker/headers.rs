//! Message properties and headers: how bibliomq messages are stamped and read.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Number of the attempt this message carries (1 for the first, +1 per retry).
pub const ATTEMPT: &str = "x-attempt";
/// The reason of the latest failure, carried along retries and into the dead-letter queue.
pub const LAST_ERROR: &str = "x-last-error";
/// Set by quorum queues on redelivery: how many times the message was delivered before.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// The correlation id (see [`crate::telemetry::CORRELATION_HEADER`]).
pub const CORRELATION: &str = crate::telemetry::CORRELATION_HEADER;

/// Properties of a persistent JSON message.
pub fn persistent_json(message_id: &str, correlation_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(CORRELATION.into(), long_string(correlation_id));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0).unsigned_abs())
        .with_headers(headers)
}

/// As [`persistent_json`], but transient: for messages that only queues
/// which are not durable receive (the outcome events).
pub fn transient_json(message_id: &str, correlation_id: &str) -> BasicProperties {
    persistent_json(message_id, correlation_id).with_delivery_mode(1)
}

/// Whether `props` carry the AMQP `type` `kind` (how bundles are told
/// from single messages).
pub fn has_type(props: &BasicProperties, kind: &str) -> bool {
    props.kind().as_ref().is_some_and(|k| k.as_str() == kind)
}

/// Returns `props` with header `key` set to `value`.
pub fn with_header(props: BasicProperties, key: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(key.into(), value);
    props.with_headers(headers)
}

pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A header as text, whatever string type the sender used.
pub fn get_str(props: &BasicProperties, key: &str) -> Option<String> {
    let value = props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header as an unsigned number, whatever integer type the sender used.
pub fn get_u64(props: &BasicProperties, key: &str) -> Option<u64> {
    let value = props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))?;
    let n: i128 = match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v.into(),
        AMQPValue::Timestamp(v) => v.into(),
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// The correlation id of a message, or a fresh one when it came without.
pub fn correlation_id(props: &BasicProperties) -> String {
    get_str(props, CORRELATION).unwrap_or_else(crate::telemetry::new_correlation_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let p = persistent_json("m1", "c1");
        let p = with_header(p, ATTEMPT, AMQPValue::LongLongInt(3));
        assert_eq!(get_str(&p, CORRELATION).as_deref(), Some("c1"));
        assert_eq!(get_u64(&p, ATTEMPT), Some(3));
        assert_eq!(get_u64(&p, "missing"), None);
        assert_eq!(p.delivery_mode(), &Some(2));
    }
}
