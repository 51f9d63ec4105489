//! The RabbitMQ management HTTP API, read on the browser's behalf: queue
//! depths, message rates and consumer counts of our vhost. The browser asks
//! the API, so it never holds RabbitMQ credentials.

use std::{sync::OnceLock, time::Duration};

use bibliomq_core::config::Settings;
use percent_encoding::{percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;

use super::SEGMENT;

/// What the dashboard shows of one queue.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct QueueFigures {
    pub name: String,
    /// `quorum`, `classic` or `stream`.
    #[serde(rename = "type")]
    pub kind: String,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub consumers: u64,
    /// Messages per second, averaged by RabbitMQ over its last sample window.
    pub publish_rate: f64,
    pub deliver_rate: f64,
    pub ack_rate: f64,
}

/// The figures of our vhost.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DashboardQueues)]
pub struct VhostFigures {
    pub vhost: String,
    pub queues: Vec<QueueFigures>,
    /// Server-named queues (live feeds, reply queues) come and go with their
    /// connections; they are counted, not listed.
    pub temporary_queues: usize,
    pub publish_rate: f64,
    pub deliver_rate: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("the RabbitMQ management API at {0} did not answer; is the management plugin enabled?")]
    Unreachable(String),
    #[error(
        "the RabbitMQ management API refused our credentials (BIBLIOMQ_RABBITMQ_MGMT_USER and _PASSWORD)"
    )]
    Refused,
    #[error("the RabbitMQ management API answered {0}")]
    Failed(u16),
}

/// A client for one management API and vhost.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    vhost: String,
}

/// How long a management API call may take before the figures are
/// answered `503 management_unavailable`. The management API gathers its
/// statistics from every node and answers slowly when the broker is busy:
/// 3 s was seen to run out on a loaded 2-core machine while the broker
/// itself was well. A refused connection still answers at once.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(8);

/// One HTTP client for the process: it pools connections, and building one
/// loads TLS roots, which is not worth doing on every dashboard refresh.
fn http() -> reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(MANAGEMENT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
    .clone()
}

impl Management {
    pub fn new(settings: &Settings) -> Self {
        Self {
            http: http(),
            base: settings
                .dashboard
                .rabbitmq_mgmt_url
                .trim_end_matches('/')
                .to_owned(),
            user: settings.dashboard.rabbitmq_mgmt_user.clone(),
            password: settings.dashboard.rabbitmq_mgmt_password.clone(),
            // Every node of a cluster serves the same vhost: the first URL tells.
            vhost: vhost_of(settings.amqp.urls().first().map_or("", String::as_str)),
        }
    }

    async fn get(&self, path: &str) -> Result<Value, ManagementError> {
        let url = format!("{}/api/{path}", self.base);
        let response = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, %url, "management API unreachable");
                ManagementError::Unreachable(self.base.clone())
            })?;
        match response.status().as_u16() {
            200 => response
                .json()
                .await
                .map_err(|_| ManagementError::Unreachable(self.base.clone())),
            401 | 403 => Err(ManagementError::Refused),
            other => Err(ManagementError::Failed(other)),
        }
    }

    /// Queues of our vhost, by name, and the vhost's overall rates.
    pub async fn figures(&self) -> Result<VhostFigures, ManagementError> {
        let vhost = utf8_percent_encode(&self.vhost, SEGMENT).to_string();
        let queues_path = format!(
            "queues/{vhost}?columns=name,type,messages_ready,messages_unacknowledged,consumers,message_stats"
        );
        let vhost_path = format!("vhosts/{vhost}");
        let (queues, totals) = tokio::join!(self.get(&queues_path), self.get(&vhost_path));
        let queues = queues?;
        let totals = totals?;
        let mut list: Vec<QueueFigures> = queues
            .as_array()
            .map(|qs| qs.iter().map(queue_figures).collect())
            .unwrap_or_default();
        let before = list.len();
        list.retain(|q| !q.name.starts_with("amq."));
        let temporary_queues = before - list.len();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(VhostFigures {
            vhost: self.vhost.clone(),
            queues: list,
            temporary_queues,
            publish_rate: rate(&totals, "publish_details"),
            deliver_rate: rate(&totals, "deliver_get_details"),
        })
    }
}

fn queue_figures(q: &Value) -> QueueFigures {
    let count = |field: &str| q[field].as_u64().unwrap_or(0);
    QueueFigures {
        name: q["name"].as_str().unwrap_or_default().to_owned(),
        kind: q["type"].as_str().unwrap_or("classic").to_owned(),
        messages_ready: count("messages_ready"),
        messages_unacknowledged: count("messages_unacknowledged"),
        consumers: count("consumers"),
        publish_rate: rate(q, "publish_details"),
        deliver_rate: rate(q, "deliver_get_details"),
        ack_rate: rate(q, "ack_details"),
    }
}

/// `message_stats.<details>.rate`, absent until the first message.
fn rate(v: &Value, details: &str) -> f64 {
    v["message_stats"][details]["rate"].as_f64().unwrap_or(0.0)
}

/// The vhost named by an AMQP URL: its path, percent-decoded; `/` when
/// there is none, as RabbitMQ clients take it.
pub fn vhost_of(amqp_url: &str) -> String {
    let rest = amqp_url.split_once("://").map_or(amqp_url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => {
            percent_decode_str(path).decode_utf8_lossy().into_owned()
        }
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_comes_from_the_amqp_url() {
        assert_eq!(
            vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"),
            "/"
        );
        assert_eq!(vhost_of("amqp://127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672/"), "/");
        assert_eq!(
            vhost_of("amqp://u:p@h:5672/bibliomq-test-1_ab?heartbeat=5"),
            "bibliomq-test-1_ab"
        );
        assert_eq!(vhost_of("amqps://h/library%2Fprod"), "library/prod");
    }

    #[test]
    fn vhosts_are_encoded_as_one_path_segment() {
        assert_eq!(utf8_percent_encode("/", SEGMENT).to_string(), "%2F");
        assert_eq!(
            utf8_percent_encode("a b/c", SEGMENT).to_string(),
            "a%20b%2Fc"
        );
        assert_eq!(
            utf8_percent_encode("bibliomq-test-1_ab", SEGMENT).to_string(),
            "bibliomq-test-1_ab"
        );
    }

    #[test]
    fn figures_read_missing_stats_as_zero() {
        let q = queue_figures(&serde_json::json!({
            "name": "bibliomq.tasks", "type": "quorum", "messages_ready": 3,
            "messages_unacknowledged": 1, "consumers": 2,
            "message_stats": {"publish_details": {"rate": 1.5}}
        }));
        assert_eq!(q.messages_ready, 3);
        assert_eq!(q.consumers, 2);
        assert!((q.publish_rate - 1.5).abs() < f64::EPSILON);
        assert!(q.ack_rate.abs() < f64::EPSILON);
    }
}
