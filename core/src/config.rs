//! Typed configuration read from `BIBLIOMQ_*` environment variables.
//!
//! Every setting has a default that works on a developer machine with the
//! services started by `scripts/up`; the README lists them all in one table.

use std::{
    fmt::{self, Display},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, bail};

/// Everything a bibliomq process can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub s3: S3Settings,
    pub api: ApiSettings,
    pub edge: EdgeSettings,
    pub tasks: TaskSettings,
    pub library: LibrarySettings,
    pub dashboard: DashboardSettings,
    pub worker: WorkerSettings,
    pub auth: AuthSettings,
    pub log_format: LogFormat,
}

/// Who may do what (see `crate::auth`): API keys and roles on every transport.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `BIBLIOMQ_AUTH=on`: every request needs a key. Off (the development
    /// default) lets everyone do everything, and is refused on an address
    /// other machines can reach.
    pub enabled: bool,
    /// How long a key look-up is reused before PostgreSQL is asked again:
    /// the most a revocation takes to reach a running process.
    pub cache_ttl: Duration,
    /// Requests a key may make per second, on average (0: no limit).
    pub rate_per_sec: f64,
    /// Requests a key may make at once before the average applies.
    pub rate_burst: f64,
    /// Source addresses whose TCP gateway connections need no `AUTH` line
    /// (legacy clients); they get the `service` role.
    pub gateway_allow: AddressList,
}

/// `loopback`, `none`, or a comma-separated list of IP addresses (and `loopback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressList {
    pub loopback: bool,
    pub addresses: Vec<std::net::IpAddr>,
}

impl AddressList {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        (self.loopback && ip.is_loopback()) || self.addresses.contains(&ip)
    }
}

impl Display for AddressList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        if self.loopback {
            parts.insert(0, "loopback".to_owned());
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl FromStr for AddressList {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut list = Self {
            loopback: false,
            addresses: Vec::new(),
        };
        for part in split_list(s) {
            match part.as_str() {
                "none" => {}
                "loopback" => list.loopback = true,
                other => list.addresses.push(other.parse().with_context(|| {
                    format!("`{other}` is not an IP address (nor `loopback` or `none`)")
                })?),
            }
        }
        Ok(list)
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl FromStr for OnOff {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(Self(true)),
            "off" | "false" | "0" | "no" => Ok(Self(false)),
            other => bail!("expected `on` or `off`, got `{other}`"),
        }
    }
}

/// `on` or `off` where unset means something of its own.
struct OptionalOnOff(Option<bool>);

impl FromStr for OptionalOnOff {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(Self(Some(s.parse::<OnOff>()?.0)))
    }
}

impl AuthSettings {
    /// Refuses to serve without keys on an address other machines can
    /// reach: BIBLIOMQ_AUTH=off is for one's own machine only.
    pub fn check_bind(&self, host: &str, what: &str) -> anyhow::Result<()> {
        if self.enabled {
            return Ok(());
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!(
                "refusing to start the {what} on {host} with BIBLIOMQ_AUTH=off: anyone who reaches that \
                 address could do anything. Set BIBLIOMQ_AUTH=on (and create a key with \
                 `bibliomq-api keys create --role admin`), or listen on 127.0.0.1"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost`; the vhost is URL-encoded (`%2f` is `/`).
    /// On a cluster, a comma-separated list of node URLs: see [`AmqpSettings::urls`].
    pub url: String,
    /// How long a publish may wait for the broker's confirm before it counts as failed.
    pub confirm_timeout: Duration,
    /// Unacknowledged deliveries a consumer may hold (basic.qos prefetch).
    pub prefetch: u16,
}

impl AmqpSettings {
    /// The node URLs, in the order given. A process connects to the first
    /// that answers and moves on to the next when its node goes away.
    pub fn urls(&self) -> Vec<String> {
        split_list(&self.url)
    }
}

/// A comma-separated list, trimmed, without empty items.
fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// A PostgreSQL URL. On a cluster, a multi-host URL with
    /// `target_session_attrs=read-write` (`postgresql://u@h1:p1,h2:p2/db?...`):
    /// connections go to whichever host is the primary.
    pub url: String,
    pub pool_size: usize,
    /// Apply pending migrations when a process starts.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The server's URL; on a cluster, a comma-separated list of nodes tried
    /// in turn (see [`S3Settings::endpoints`]).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Prepended to every object key; tests use it to keep to their own corner of a bucket.
    pub key_prefix: String,
    /// Lifetime of presigned download links.
    pub presign_ttl: Duration,
}

impl S3Settings {
    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        split_list(&self.endpoint)
    }
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// When set, `/v1/*` requires `Authorization: Bearer <token>`.
    pub token: Option<ApiToken>,
    pub host: String,
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// How long a replay of all dead letters goes on starting windows of
    /// messages; the rest is left for the next call (`left`). See
    /// [`ApiSettings::replay_budget`].
    pub dead_replay_budget: Duration,
}

impl ApiSettings {
    /// The replay budget in force: as set, but at most a third of the
    /// request's time, which leaves the rest for taking the queue's
    /// messages, the last window and the answer, so that a replay always
    /// answers with how far it went rather than timing out.
    pub fn replay_budget(&self) -> Duration {
        self.dead_replay_budget.min(self.request_timeout / 3)
    }
}

/// The ZeroMQ edge and the legacy TCP gateways (`bibliomq-edge`).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Address every edge socket binds to.
    pub host: String,
    /// ZeroMQ ROUTER socket that REQ (or DEALER) clients send JSON requests to.
    pub zmq_request_port: u16,
    /// ZeroMQ PUB socket carrying the event feed (topic = AMQP routing key).
    pub zmq_pub_port: u16,
    /// Whether the PUB socket is served; `None`: as auth says (see
    /// [`Settings::serves_open_feed`]).
    pub open_feed: Option<bool>,
    /// Newline-delimited JSON task gateway.
    pub ndjson_port: u16,
    /// `TASK|id|1,2,3` pipe text gateway.
    pub pipe_port: u16,
    /// The edge's operations server (`/metrics`, `/healthz`, `/readyz`).
    pub ops_port: u16,
    /// Every request is answered within this time, with an error if need be.
    pub request_timeout: Duration,
    /// How long a task request waits for the task's outcome before answering
    /// with its current state.
    pub task_wait_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Results larger than this many bytes go to object storage instead of PostgreSQL.
    pub inline_result_limit: usize,
    /// How many times a task that failed for a passing reason is tried again.
    pub max_retries: u32,
    /// Delay before the first retry; each further retry waits `retry_factor` times longer.
    pub retry_base: Duration,
    pub retry_factor: u32,
    /// A message delivered this many times without being settled is treated as poison.
    pub poison_delivery_limit: u32,
    /// How long shutdown waits for in-flight tasks before requeueing them.
    pub drain_timeout: Duration,
    /// A task still `queued` or `running` this long after its row last
    /// changed, with no worker holding it, is published again (once) by the
    /// reaper: its message was lost, e.g. with a broker node. Longer than
    /// the longest retry delay, so tasks waiting for a retry are left alone.
    pub reap_after: Duration,
    /// How often each worker process looks for such tasks.
    pub reap_interval: Duration,
    /// The longest time limit a request may ask for (`timeout_ms`); also
    /// caps each action's own limit.
    pub timeout_max: Duration,
    /// Tasks that finished longer ago than this are deleted, with their
    /// stored results, by the janitor in the workers.
    pub retention: Duration,
    /// How often each worker process tries a janitor pass (one process at
    /// a time runs it).
    pub janitor_interval: Duration,
    /// The furthest ahead a task may be scheduled (`run_at`, `delay_ms`).
    pub delay_max: Duration,
}

#[derive(Debug, Clone)]
pub struct LibrarySettings {
    /// The library's branches, in display order.
    pub branches: Vec<Branch>,
    pub loan_days: u32,
    pub renewal_days: u32,
    pub max_renewals: u32,
    /// Loans one patron may hold at once.
    pub max_loans: u32,
    /// How long a loan request waits for the loan worker's answer.
    pub loan_timeout: Duration,
    /// How long a copy waits on the hold shelf for the patron whose hold it
    /// went to; a hold keeps the period in force when it was placed.
    pub hold_pickup: Duration,
    /// How often each worker process looks for pickups past their deadline.
    pub hold_expiry_interval: Duration,
    /// Circulation-history rows older than this are deleted by the
    /// workers' janitor; `None` (the default) keeps them forever.
    pub history_retention: Option<Duration>,
    /// The patron of history rows and settled operations older than this
    /// is removed by the janitor, and loans returned before then are
    /// deleted; `None` (the default) never does it.
    pub history_anonymise_after: Option<Duration>,
}

/// What the web dashboard reads besides the API's own data.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// RabbitMQ management HTTP API, the source of queue depths, rates and
    /// consumer counts; the browser reaches it only through the API, so it
    /// never needs these credentials. Also the dashboard's link to the RabbitMQ UI.
    pub rabbitmq_mgmt_url: String,
    pub rabbitmq_mgmt_user: String,
    pub rabbitmq_mgmt_password: String,
    /// A web console of the object store (MinIO's), linked from the dashboard;
    /// empty where there is none (Garage): the API's own object browser stands in.
    pub s3_console_url: String,
    /// Live event feeds (`GET /v1/events/stream`, the edge's `follow`) one
    /// process serves at once; each holds a RabbitMQ queue and a consumer.
    /// Past it a new feed is answered `unavailable`.
    pub live_feeds_max: usize,
}

/// The worker process's own small HTTP server (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub ops_host: String,
    /// Port 0 picks a free port (tests do); several workers on one machine
    /// need one port each.
    pub ops_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub code: String,
    pub name: String,
}

/// `code=Name,code=Name`, as in `BIBLIOMQ_BRANCHES`.
#[derive(Debug, Clone)]
pub struct Branches(pub Vec<Branch>);

impl FromStr for Branches {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut branches = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, name) = part.split_once('=').unwrap_or((part, part));
            let code = code.trim().to_lowercase();
            let valid = code.len() <= 32
                && code.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && code.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                bail!("branch code `{code}` must be lower-case letters, digits, `-` or `_`");
            }
            if branches.iter().any(|b: &Branch| b.code == code) {
                bail!("branch `{code}` is listed twice");
            }
            branches.push(Branch {
                code,
                name: name.trim().to_owned(),
            });
        }
        if branches.is_empty() {
            bail!("at least one branch is needed");
        }
        Ok(Self(branches))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl FromStr for LogFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => bail!("expected `pretty` or `json`, got `{other}`"),
        }
    }
}

impl Settings {
    /// Whether the edge serves the keyless ZeroMQ event feed (PUB). It
    /// cannot check keys (a PUB socket hears nothing from its subscribers),
    /// so by default only with auth off; with auth on, keyed clients follow
    /// events with the `follow` request instead.
    /// `BIBLIOMQ_EDGE_OPEN_FEED=on` serves it anyway, for a port only
    /// trusted machines reach.
    pub fn serves_open_feed(&self) -> bool {
        self.edge.open_feed.unwrap_or(!self.auth.enabled)
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, so tests can supply their own variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env(&lookup);
        let settings = Self {
            amqp: AmqpSettings {
                url: env.get(
                    "AMQP_URL",
                    "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10".to_owned(),
                )?,
                confirm_timeout: env.millis("AMQP_CONFIRM_TIMEOUT_MS", 5_000)?,
                prefetch: env.get("AMQP_PREFETCH", 256)?,
            },
            database: DatabaseSettings {
                url: env.get(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/bibliomq".to_owned(),
                )?,
                pool_size: env.get("DATABASE_POOL_SIZE", 16)?,
                migrate_on_start: env.get("MIGRATE_ON_START", true)?,
            },
            s3: S3Settings {
                endpoint: env.get("S3_ENDPOINT", "http://127.0.0.1:3900".to_owned())?,
                region: env.get("S3_REGION", "garage".to_owned())?,
                bucket: env.get("S3_BUCKET", "bibliomq".to_owned())?,
                access_key: env.get("S3_ACCESS_KEY", DEV_ACCESS_KEY.to_owned())?,
                secret_key: env.get("S3_SECRET_KEY", DEV_SECRET_KEY.to_owned())?,
                key_prefix: env.get("S3_KEY_PREFIX", String::new())?,
                presign_ttl: Duration::from_secs(env.get("S3_PRESIGN_TTL_SECS", 900)?),
            },
            api: ApiSettings {
                token: Some(env.get("API_TOKEN", String::new())?)
                    .filter(|t| !t.is_empty())
                    .map(ApiToken),
                host: env.get("API_HOST", "127.0.0.1".to_owned())?,
                port: env.get("API_PORT", 8080)?,
                body_limit: env.get("API_BODY_LIMIT", 1024 * 1024)?,
                request_timeout: env.millis("API_REQUEST_TIMEOUT_MS", 30_000)?,
                dead_replay_budget: env.millis("API_DEAD_REPLAY_BUDGET_MS", 10_000)?,
            },
            edge: EdgeSettings {
                host: env.get("EDGE_HOST", "127.0.0.1".to_owned())?,
                zmq_request_port: env.get("EDGE_ZMQ_REQUEST_PORT", 5555)?,
                zmq_pub_port: env.get("EDGE_ZMQ_PUB_PORT", 5556)?,
                open_feed: env.get("EDGE_OPEN_FEED", OptionalOnOff(None))?.0,
                ndjson_port: env.get("EDGE_NDJSON_PORT", 5557)?,
                pipe_port: env.get("EDGE_PIPE_PORT", 5558)?,
                ops_port: env.get("EDGE_OPS_PORT", 9102)?,
                request_timeout: env.millis("EDGE_REQUEST_TIMEOUT_MS", 10_000)?,
                task_wait_timeout: env.millis("EDGE_TASK_WAIT_TIMEOUT_MS", 5_000)?,
            },
            tasks: TaskSettings {
                inline_result_limit: env.get("TASK_INLINE_RESULT_LIMIT", 64 * 1024)?,
                max_retries: env.get("TASK_MAX_RETRIES", 5)?,
                retry_base: env.millis("TASK_RETRY_BASE_MS", 1_000)?,
                retry_factor: env.get("TASK_RETRY_FACTOR", 4)?,
                poison_delivery_limit: env.get("TASK_POISON_DELIVERY_LIMIT", 5)?,
                drain_timeout: env.millis("DRAIN_TIMEOUT_MS", 30_000)?,
                reap_after: env.millis("TASK_REAP_AFTER_MS", 600_000)?,
                reap_interval: env.millis("TASK_REAP_INTERVAL_MS", 30_000)?,
                timeout_max: env.millis("TASK_TIMEOUT_MAX_MS", 300_000)?,
                retention: env
                    .get(
                        "TASK_RETENTION",
                        HumanDuration(Duration::from_secs(7 * 86_400)),
                    )?
                    .0,
                janitor_interval: env.millis("TASK_JANITOR_INTERVAL_MS", 60_000)?,
                delay_max: env.millis("TASK_DELAY_MAX_MS", 7 * 86_400_000)?,
            },
            library: LibrarySettings {
                branches: env
                    .get(
                        "BRANCHES",
                        Branches(vec![
                            Branch {
                                code: "central".to_owned(),
                                name: "Biblioteca Central".to_owned(),
                            },
                            Branch {
                                code: "norte".to_owned(),
                                name: "Biblioteca Norte".to_owned(),
                            },
                        ]),
                    )?
                    .0,
                loan_days: env.get("LOAN_DAYS", 14)?,
                renewal_days: env.get("RENEWAL_DAYS", 7)?,
                max_renewals: env.get("MAX_RENEWALS", 2)?,
                max_loans: env.get("MAX_LOANS", 5)?,
                loan_timeout: env.millis("LOAN_TIMEOUT_MS", 5_000)?,
                hold_pickup: env
                    .get(
                        "HOLD_PICKUP",
                        HumanDuration(Duration::from_secs(3 * 86_400)),
                    )?
                    .0,
                hold_expiry_interval: env.millis("HOLD_EXPIRY_INTERVAL_MS", 60_000)?,
                history_retention: env
                    .get::<OptionalDuration>("HISTORY_RETENTION", OptionalDuration(None))?
                    .0,
                history_anonymise_after: env
                    .get::<OptionalDuration>("HISTORY_ANONYMISE_AFTER", OptionalDuration(None))?
                    .0,
            },
            dashboard: DashboardSettings {
                rabbitmq_mgmt_url: env
                    .get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672".to_owned())?,
                rabbitmq_mgmt_user: env.get("RABBITMQ_MGMT_USER", "guest".to_owned())?,
                rabbitmq_mgmt_password: env.get("RABBITMQ_MGMT_PASSWORD", "guest".to_owned())?,
                s3_console_url: env.get("S3_CONSOLE_URL", String::new())?,
                live_feeds_max: env.get("LIVE_FEEDS_MAX", 1_000)?,
            },
            worker: WorkerSettings {
                ops_host: env.get("WORKER_OPS_HOST", "127.0.0.1".to_owned())?,
                ops_port: env.get("WORKER_OPS_PORT", 9101)?,
            },
            auth: AuthSettings {
                enabled: env.get("AUTH", OnOff(false))?.0,
                cache_ttl: env.millis("AUTH_CACHE_MS", 2_000)?,
                rate_per_sec: env.get("AUTH_RATE_PER_SEC", 100.0)?,
                rate_burst: env.get("AUTH_RATE_BURST", 200.0)?,
                gateway_allow: env.get(
                    "AUTH_GATEWAY_ALLOW",
                    AddressList {
                        loopback: true,
                        addresses: Vec::new(),
                    },
                )?,
            },
            log_format: env.get("LOG_FORMAT", LogFormat::Pretty)?,
        };
        settings.check()?;
        Ok(settings)
    }

    /// What single variables cannot say wrong on their own.
    fn check(&self) -> anyhow::Result<()> {
        if self.amqp.urls().is_empty() {
            bail!("BIBLIOMQ_AMQP_URL lists no RabbitMQ URL");
        }
        if self.s3.endpoints().is_empty() {
            bail!("BIBLIOMQ_S3_ENDPOINT lists no S3 endpoint");
        }
        let longest_retry = self.tasks.retry_delay(self.tasks.max_retries.max(1));
        if self.tasks.reap_after <= longest_retry {
            bail!(
                "BIBLIOMQ_TASK_REAP_AFTER_MS ({:?}) must be longer than the longest retry delay ({:?}), \
                 or tasks waiting for a retry would be published twice",
                self.tasks.reap_after,
                longest_retry
            );
        }
        if self.tasks.reap_interval.is_zero() {
            bail!("BIBLIOMQ_TASK_REAP_INTERVAL_MS must be above 0");
        }
        if self.library.hold_pickup.is_zero() {
            bail!("BIBLIOMQ_HOLD_PICKUP must be above 0");
        }
        if self.library.hold_expiry_interval.is_zero() {
            bail!("BIBLIOMQ_HOLD_EXPIRY_INTERVAL_MS must be above 0");
        }
        Ok(())
    }
}

/// The API's bearer token. Its `Debug` hides the value, so settings can be
/// logged without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Access key of the development S3 server set up by `scripts/services`
/// (and of MinIO in `infra/docker-compose.yml`). Never use it outside a dev machine.
pub const DEV_ACCESS_KEY: &str = "GK6269626c696f6d712d646576";
/// Secret of [`DEV_ACCESS_KEY`].
pub const DEV_SECRET_KEY: &str = "6269626c696f6d712d6465762d7365637265742d6b65792d6f6e6c792d646576";

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get<T>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let key = format!("BIBLIOMQ_{name}");
        match (self.0)(&key) {
            None => Ok(default),
            Some(raw) if raw.trim().is_empty() => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("{key}={raw:?} is not valid")),
        }
    }

    fn millis(&self, name: &str, default_ms: u64) -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(self.get(name, default_ms)?))
    }
}

impl TaskSettings {
    /// Delay before retry number `retry` (1-based): `base * factor^(retry-1)`.
    pub fn retry_delay(&self, retry: u32) -> Duration {
        let factor = self
            .retry_factor
            .max(1)
            .saturating_pow(retry.saturating_sub(1));
        self.retry_base.saturating_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_variable() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.api.port, 8080);
        assert_eq!(
            (
                s.edge.zmq_request_port,
                s.edge.zmq_pub_port,
                s.edge.ndjson_port,
                s.edge.pipe_port
            ),
            (5555, 5556, 5557, 5558)
        );
        assert_eq!(s.edge.request_timeout, Duration::from_secs(10));
        assert_eq!(s.edge.task_wait_timeout, Duration::from_secs(5));
        assert_eq!(s.tasks.inline_result_limit, 65_536);
        assert_eq!(s.log_format, LogFormat::Pretty);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = Settings::from_lookup(|k| (k == "BIBLIOMQ_API_PORT").then(|| "eighty".into()))
            .unwrap_err();
        assert!(format!("{err:#}").contains("BIBLIOMQ_API_PORT"), "{err:#}");
    }

    #[test]
    fn the_dead_replay_budget_is_at_most_a_third_of_the_request_time() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.api.replay_budget(), Duration::from_secs(10));
        let short = Settings::from_lookup(|k| {
            (k == "BIBLIOMQ_API_REQUEST_TIMEOUT_MS").then(|| "6000".into())
        })
        .unwrap();
        assert_eq!(short.api.replay_budget(), Duration::from_secs(2));
    }

    #[test]
    fn env_example_documents_exactly_the_defaults() {
        let example: Vec<(String, String)> = include_str!("../../.env.example")
            .lines()
            .filter(|l| l.starts_with("BIBLIOMQ_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        assert!(example.len() >= 20, "{example:?}");
        let from_example = Settings::from_lookup(|k| {
            example
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        let read = std::cell::RefCell::new(Vec::new());
        let defaults = Settings::from_lookup(|k| {
            read.borrow_mut().push(k.to_owned());
            None
        })
        .unwrap();
        assert_eq!(format!("{from_example:?}"), format!("{defaults:?}"));
        let mut documented: Vec<String> = example.into_iter().map(|(k, _)| k).collect();
        let mut read = read.into_inner();
        documented.sort();
        read.sort();
        assert_eq!(documented, read, ".env.example and the settings disagree");
    }

    #[test]
    fn the_api_token_is_off_unless_set_and_never_shown() {
        let off = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(off.api.token, None);
        let on = Settings::from_lookup(|k| (k == "BIBLIOMQ_API_TOKEN").then(|| "s3cret".into()))
            .unwrap();
        assert_eq!(on.api.token, Some(ApiToken("s3cret".into())));
        assert!(!format!("{on:?}").contains("s3cret"));
    }

    #[test]
    fn auth_is_off_by_default_and_then_only_on_loopback() {
        let off = Settings::from_lookup(|_| None).unwrap().auth;
        assert!(!off.enabled);
        assert!(off.check_bind("127.0.0.1", "API").is_ok());
        assert!(off.check_bind("::1", "API").is_ok());
        let err = off.check_bind("0.0.0.0", "API").unwrap_err().to_string();
        assert!(err.contains("BIBLIOMQ_AUTH=on"), "{err}");
        let on = Settings::from_lookup(|k| (k == "BIBLIOMQ_AUTH").then(|| "on".into()))
            .unwrap()
            .auth;
        assert!(on.check_bind("0.0.0.0", "API").is_ok());
        // The keyless ZeroMQ event feed follows auth unless told otherwise.
        let feed = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Settings::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .unwrap()
                .serves_open_feed()
        };
        assert!(feed(&[]));
        assert!(!feed(&[("BIBLIOMQ_AUTH", "on")]));
        assert!(feed(&[
            ("BIBLIOMQ_AUTH", "on"),
            ("BIBLIOMQ_EDGE_OPEN_FEED", "on")
        ]));
        assert!(!feed(&[("BIBLIOMQ_EDGE_OPEN_FEED", "off")]));
        assert!(off.gateway_allow.allows("127.0.0.1".parse().unwrap()));
        assert!(!off.gateway_allow.allows("10.0.0.1".parse().unwrap()));
        let list: AddressList = "10.0.0.1, loopback".parse().unwrap();
        assert!(list.allows("10.0.0.1".parse().unwrap()));
        assert!(list.allows("::ffff:10.0.0.1".parse().unwrap()));
        let none: AddressList = "none".parse().unwrap();
        assert!(!none.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn node_lists_are_split_on_commas() {
        let s = Settings::from_lookup(|k| match k {
            "BIBLIOMQ_AMQP_URL" => Some("amqp://a:5701/%2f, amqp://b:5702/%2f,".into()),
            "BIBLIOMQ_S3_ENDPOINT" => Some("http://a:3910,http://b:3920".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.amqp.urls(), ["amqp://a:5701/%2f", "amqp://b:5702/%2f"]);
        assert_eq!(s.s3.endpoints(), ["http://a:3910", "http://b:3920"]);
    }

    #[test]
    fn a_reaper_age_below_the_longest_retry_is_refused() {
        let err =
            Settings::from_lookup(|k| (k == "BIBLIOMQ_TASK_REAP_AFTER_MS").then(|| "60000".into()))
                .unwrap_err();
        assert!(err.to_string().contains("REAP_AFTER"), "{err}");
    }

    #[test]
    fn retry_delays_grow_geometrically() {
        let s = Settings::from_lookup(|_| None).unwrap().tasks;
        assert_eq!(s.retry_delay(1), Duration::from_secs(1));
        assert_eq!(s.retry_delay(2), Duration::from_secs(4));
        assert_eq!(s.retry_delay(3), Duration::from_secs(16));
    }
}

/// A duration written as a number and a unit: `500ms`, `90s`, `30m`, `1h`,
/// `7d` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A [`HumanDuration`], or `forever` / `never` / `off` for none (as is
/// an unset variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

impl FromStr for OptionalDuration {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "forever" | "never" | "off" => Ok(Self(None)),
            _ => raw.parse::<HumanDuration>().map(|d| Some(d.0)).map(Self),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (number, unit) = raw.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{raw}` is not a duration such as 90s, 30m, 1h or 7d"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{raw}`: use ms, s, m, h or d"
                ));
            }
        }
        .ok_or_else(|| format!("`{raw}` is too long"))?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_read_with_their_units() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|h| h.0);
        assert_eq!(d("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(d("90"), Ok(Duration::from_secs(90)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert!(d("1w").is_err());
        assert!(d("h").is_err());
        let round = HumanDuration(Duration::from_millis(1_500)).to_string();
        assert_eq!(
            round.parse::<HumanDuration>().map(|h| h.0),
            Ok(Duration::from_millis(1_500))
        );
    }

    #[test]
    fn an_optional_duration_is_a_duration_or_forever() {
        let d = |s: &str| s.parse::<OptionalDuration>().map(|h| h.0);
        assert_eq!(d("365d"), Ok(Some(Duration::from_secs(365 * 86_400))));
        for none in ["", "forever", "Never", "off"] {
            assert_eq!(d(none), Ok(None), "{none}");
        }
        assert!(d("soon").is_err());
    }

    #[test]
    fn the_history_is_kept_whole_unless_told_otherwise() {
        let settings = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(settings.library.history_retention, None);
        assert_eq!(settings.library.history_anonymise_after, None);
    }
}
