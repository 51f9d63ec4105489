//! Tracing setup shared by every binary, and the correlation id carried from
//! HTTP or ZeroMQ through AMQP headers into the logs and the database.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Header (HTTP) and AMQP message header that carry the correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "info,lapin=warn,tokio_postgres=warn,aws_config=warn,aws_smithy_runtime=warn,zeromq=warn",
        )
    });
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: a second call (tests spawning several components) is harmless.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
}

/// A fresh correlation id for work that did not arrive with one.
pub fn new_correlation_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Accepts a caller's correlation id only if it is short and printable, so
/// it can go into headers, logs and a database column without surprises.
pub fn sanitize_correlation_id(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| raw.to_owned())
}
