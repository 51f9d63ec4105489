//! The `bibliomq-workers` binary run as a child process of the test, so that
//! races and restarts cross real process boundaries: separate connections,
//! separate pools, separate memory.
//!
//! The child gets the test's [`Settings`] as `BIBLIOMQ_*` variables (and no
//! other `BIBLIOMQ_*` variable from the test's own environment), an
//! operations port picked by the system, and logs in JSON on its stdout,
//! which the harness reads to learn that port. Its log lines are passed on
//! to the test's output, so a failing test shows them. The child is killed,
//! and waited for, when its [`WorkerProcess`] is dropped; where util-linux's
//! `setpriv` exists it also dies with the thread that started it, so a test
//! binary killed outright leaves no worker behind.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bibliomq_core::{
    config::{LogFormat, Settings},
    metrics::MessageOutcome,
};

use crate::app::DEADLINE;

/// Name of the workers' binary (package `bibliomq-workers`).
pub const WORKERS_BIN: &str = "bibliomq-workers";
const SETPRIV: &str = "/usr/bin/setpriv";
/// Lines of a child's output kept for the message when it fails to start.
const TAIL_LINES: usize = 40;

/// `settings` as the `BIBLIOMQ_*` variables that make
/// [`Settings::from_env`] read them back unchanged.
pub fn settings_env(settings: &Settings) -> Vec<(String, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    let s = settings;
    let branches = s
        .library
        .branches
        .iter()
        .map(|b| format!("{}={}", b.code, b.name))
        .collect::<Vec<_>>()
        .join(",");
    let log_format = match s.log_format {
        LogFormat::Json => "json",
        LogFormat::Pretty => "pretty",
    };
    let vars: Vec<(&str, String)> = vec![
        ("AMQP_URL", s.amqp.url.clone()),
        ("AMQP_CONFIRM_TIMEOUT_MS", ms(s.amqp.confirm_timeout)),
        ("AMQP_PREFETCH", s.amqp.prefetch.to_string()),
        ("DATABASE_URL", s.database.url.clone()),
        ("DATABASE_POOL_SIZE", s.database.pool_size.to_string()),
        ("MIGRATE_ON_START", s.database.migrate_on_start.to_string()),
        ("S3_ENDPOINT", s.s3.endpoint.clone()),
        ("S3_REGION", s.s3.region.clone()),
        ("S3_BUCKET", s.s3.bucket.clone()),
        ("S3_ACCESS_KEY", s.s3.access_key.clone()),
        ("S3_SECRET_KEY", s.s3.secret_key.clone()),
        ("S3_KEY_PREFIX", s.s3.key_prefix.clone()),
        (
            "S3_PRESIGN_TTL_SECS",
            s.s3.presign_ttl.as_secs().to_string(),
        ),
        (
            "API_TOKEN",
            s.api
                .token
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default(),
        ),
        ("API_HOST", s.api.host.clone()),
        ("API_PORT", s.api.port.to_string()),
        ("API_BODY_LIMIT", s.api.body_limit.to_string()),
        ("API_REQUEST_TIMEOUT_MS", ms(s.api.request_timeout)),
        ("API_DEAD_REPLAY_BUDGET_MS", ms(s.api.dead_replay_budget)),
        ("EDGE_HOST", s.edge.host.clone()),
        ("EDGE_ZMQ_REQUEST_PORT", s.edge.zmq_request_port.to_string()),
        ("EDGE_ZMQ_PUB_PORT", s.edge.zmq_pub_port.to_string()),
        (
            "EDGE_OPEN_FEED",
            match s.edge.open_feed {
                Some(true) => "on",
                Some(false) => "off",
                None => "",
            }
            .to_owned(),
        ),
        ("EDGE_NDJSON_PORT", s.edge.ndjson_port.to_string()),
        ("EDGE_PIPE_PORT", s.edge.pipe_port.to_string()),
        ("EDGE_OPS_PORT", s.edge.ops_port.to_string()),
        ("EDGE_REQUEST_TIMEOUT_MS", ms(s.edge.request_timeout)),
        ("EDGE_TASK_WAIT_TIMEOUT_MS", ms(s.edge.task_wait_timeout)),
        (
            "TASK_INLINE_RESULT_LIMIT",
            s.tasks.inline_result_limit.to_string(),
        ),
        ("TASK_MAX_RETRIES", s.tasks.max_retries.to_string()),
        ("TASK_RETRY_BASE_MS", ms(s.tasks.retry_base)),
        ("TASK_RETRY_FACTOR", s.tasks.retry_factor.to_string()),
        (
            "TASK_POISON_DELIVERY_LIMIT",
            s.tasks.poison_delivery_limit.to_string(),
        ),
        ("DRAIN_TIMEOUT_MS", ms(s.tasks.drain_timeout)),
        ("TASK_REAP_AFTER_MS", ms(s.tasks.reap_after)),
        ("TASK_REAP_INTERVAL_MS", ms(s.tasks.reap_interval)),
        ("TASK_TIMEOUT_MAX_MS", ms(s.tasks.timeout_max)),
        (
            "TASK_RETENTION",
            bibliomq_core::config::HumanDuration(s.tasks.retention).to_string(),
        ),
        ("TASK_JANITOR_INTERVAL_MS", ms(s.tasks.janitor_interval)),
        ("TASK_DELAY_MAX_MS", ms(s.tasks.delay_max)),
        ("BRANCHES", branches),
        ("LOAN_DAYS", s.library.loan_days.to_string()),
        ("RENEWAL_DAYS", s.library.renewal_days.to_string()),
        ("MAX_RENEWALS", s.library.max_renewals.to_string()),
        ("MAX_LOANS", s.library.max_loans.to_string()),
        ("LOAN_TIMEOUT_MS", ms(s.library.loan_timeout)),
        (
            "HOLD_PICKUP",
            bibliomq_core::config::HumanDuration(s.library.hold_pickup).to_string(),
        ),
        (
            "HOLD_EXPIRY_INTERVAL_MS",
            ms(s.library.hold_expiry_interval),
        ),
        (
            "HISTORY_RETENTION",
            s.library
                .history_retention
                .map(|d| bibliomq_core::config::HumanDuration(d).to_string())
                .unwrap_or_default(),
        ),
        (
            "HISTORY_ANONYMISE_AFTER",
            s.library
                .history_anonymise_after
                .map(|d| bibliomq_core::config::HumanDuration(d).to_string())
                .unwrap_or_default(),
        ),
        ("RABBITMQ_MGMT_URL", s.dashboard.rabbitmq_mgmt_url.clone()),
        ("RABBITMQ_MGMT_USER", s.dashboard.rabbitmq_mgmt_user.clone()),
        (
            "RABBITMQ_MGMT_PASSWORD",
            s.dashboard.rabbitmq_mgmt_password.clone(),
        ),
        ("S3_CONSOLE_URL", s.dashboard.s3_console_url.clone()),
        ("LIVE_FEEDS_MAX", s.dashboard.live_feeds_max.to_string()),
        ("WORKER_OPS_HOST", s.worker.ops_host.clone()),
        ("WORKER_OPS_PORT", s.worker.ops_port.to_string()),
        ("AUTH", if s.auth.enabled { "on" } else { "off" }.to_owned()),
        ("AUTH_CACHE_MS", ms(s.auth.cache_ttl)),
        ("AUTH_RATE_PER_SEC", s.auth.rate_per_sec.to_string()),
        ("AUTH_RATE_BURST", s.auth.rate_burst.to_string()),
        ("AUTH_GATEWAY_ALLOW", s.auth.gateway_allow.to_string()),
        ("LOG_FORMAT", log_format.to_owned()),
    ];
    vars.into_iter()
        .map(|(name, value)| (format!("BIBLIOMQ_{name}"), value))
        .collect()
}

/// The `bibliomq-workers` binary of the build this test belongs to:
/// `target/<profile>/bibliomq-workers`, beside the test executable's
/// `target/<profile>/deps/`. Built with cargo, once per test process, when
/// it is missing or older than the test executable (which is rebuilt
/// whenever the workers' code changes, since it links their library).
pub fn workers_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(find_or_build_workers)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_or_build_workers() -> Result<PathBuf, String> {
    let test_exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = test_exe
        .parent()
        .filter(|deps| deps.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .ok_or_else(|| {
            format!(
                "cannot tell the target directory from the test executable {}; \
                 run the tests with `cargo test`",
                test_exe.display()
            )
        })?;
    let binary = profile_dir.join(WORKERS_BIN);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&binary), modified(&test_exe)) {
        (Some(bin), Some(exe)) => bin >= exe,
        _ => false,
    };
    if fresh {
        return Ok(binary);
    }
    build_workers(profile_dir)?;
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "`cargo build -p {WORKERS_BIN}` succeeded but {} is missing",
            binary.display()
        ))
    }
}

/// `cargo build -p bibliomq-workers --bins` into the test's own target
/// directory and profile.
fn build_workers(profile_dir: &Path) -> Result<(), String> {
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile directory has no parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the profile directory has no name")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--locked",
        "--bins",
        "-p",
        WORKERS_BIN,
        "--manifest-path",
    ])
    .arg(&manifest)
    .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building {WORKERS_BIN} for the process tests: {cmd:?}");
    let out = cmd.output().map_err(|e| {
        format!(
            "could not run {cargo:?} to build {WORKERS_BIN} ({e}); build it first: \
             cargo build -p {WORKERS_BIN}"
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {WORKERS_BIN} failed ({}); build it first: cargo build -p {WORKERS_BIN}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A `bibliomq-workers` process of this test.
pub struct WorkerProcess {
    pub pid: u32,
    /// Its operations server (`/metrics`, `/healthz`, `/readyz`).
    pub ops_addr: SocketAddr,
    child: Child,
    http: reqwest::Client,
}

impl WorkerProcess {
    /// Starts the workers with `settings` (migrations left to the API, which
    /// runs them on start), and returns once its operations server listens.
    ///
    /// Call it from the test's own task rather than a blocking thread: the
    /// child is tied to the thread that starts it.
    pub async fn start(settings: &Settings) -> Self {
        let mut settings = settings.clone();
        settings.database.migrate_on_start = false;
        settings.worker.ops_host = "127.0.0.1".to_owned();
        settings.worker.ops_port = 0;
        // JSON, so the harness can read where the operations server listens.
        settings.log_format = LogFormat::Json;

        let binary = workers_binary();
        let mut cmd = if Path::new(SETPRIV).is_file() {
            let mut cmd = Command::new(SETPRIV);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(&binary);
            cmd
        } else {
            Command::new(&binary)
        };
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BIBLIOMQ_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(settings_env(&settings));
        cmd.env("NO_COLOR", "1");
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,bibliomq_core::ops=info".to_owned()),
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));
        let pid = child.id();

        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        forward_lines(pid, stdout, tail.clone(), Some(tx));
        forward_lines(pid, stderr, tail.clone(), None);

        let listening = tokio::time::timeout(DEADLINE, rx).await;
        let ops_addr = match listening {
            Ok(Ok(addr)) => addr,
            failed => {
                let _ = child.kill();
                let status = child.wait();
                let why = match failed {
                    Err(_) => format!("did not listen within {DEADLINE:?}"),
                    _ => format!("exited ({status:?}) before listening"),
                };
                let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                panic!(
                    "{WORKERS_BIN} (pid {pid}) {why}; its last lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        Self {
            pid,
            ops_addr,
            child,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// `n` processes with the same settings, started one after the other.
    pub async fn start_many(settings: &Settings, n: usize) -> Vec<Self> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(Self::start(settings).await);
        }
        all
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.ops_addr))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("{WORKERS_BIN} (pid {}) /metrics: {e}", self.pid))
            .text()
            .await
            .unwrap()
    }

    /// How many messages of `queue` met `outcome` in this process so far.
    pub async fn message_count(&self, queue: &str, outcome: MessageOutcome) -> u64 {
        message_count_in(&self.metrics().await, queue, outcome)
    }

    /// How many library operations of `operation` (`loan`, `renewal`,
    /// `return`) this process settled so far, at every branch and with
    /// every outcome.
    pub async fn operation_count(&self, operation: &str) -> u64 {
        let operation = format!("operation=\"{operation}\"");
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("bibliomq_library_operations_total{"))
            .filter(|l| l.contains(&operation))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `bibliomq_messages_total` counter for `queue` and `outcome` in a
/// `/metrics` text; 0 when it is not there yet.
pub fn message_count_in(metrics: &str, queue: &str, outcome: MessageOutcome) -> u64 {
    let queue = format!("queue=\"{queue}\"");
    let outcome = format!("outcome=\"{}\"", outcome.as_str());
    metrics
        .lines()
        .filter(|l| l.starts_with("bibliomq_messages_total{"))
        .filter(|l| l.contains(&queue) && l.contains(&outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Reads a child's output on a thread of its own: passes each line on to
/// the test's output, keeps the last few for error messages, and reports
/// the operations server's address through `listening`.
fn forward_lines(
    pid: u32,
    from: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    mut listening: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            if let Some(addr) = parsed.as_ref().and_then(ops_addr_in) {
                if let Some(tx) = listening.take() {
                    let _ = tx.send(addr);
                }
                continue;
            }
            let shown = parsed.as_ref().map_or_else(|| line.clone(), readable);
            eprintln!("[{WORKERS_BIN} {pid}] {shown}");
            let mut tail = tail.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(shown);
        }
    });
}

/// The address in the operations server's "listening" log line.
fn ops_addr_in(line: &serde_json::Value) -> Option<SocketAddr> {
    let fields = &line["fields"];
    fields["message"]
        .as_str()?
        .starts_with("operations server listening")
        .then_some(())?;
    fields["addr"].as_str()?.parse().ok()
}

/// A JSON log line as `LEVEL target: message key=value ...`.
fn readable(line: &serde_json::Value) -> String {
    let mut out = format!(
        "{} {}: {}",
        line["level"].as_str().unwrap_or("?"),
        line["target"].as_str().unwrap_or("?"),
        line["fields"]["message"].as_str().unwrap_or_default()
    );
    if let Some(fields) = line["fields"].as_object() {
        for (k, v) in fields.iter().filter(|(k, _)| *k != "message") {
            match v.as_str() {
                Some(s) => out.push_str(&format!(" {k}={s}")),
                None => out.push_str(&format!(" {k}={v}")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_trip_through_environment_variables() {
        let mut s = Settings::from_lookup(|_| None).unwrap();
        s.amqp.url = "amqp://guest:guest@127.0.0.1:5672/bibliomq-test-1?heartbeat=5".into();
        s.amqp.confirm_timeout = Duration::from_millis(3_000);
        s.database.migrate_on_start = false;
        s.database.pool_size = 4;
        s.s3.key_prefix = "test-1/".into();
        s.api.token = Some(bibliomq_core::config::ApiToken("t0ken".into()));
        s.tasks.max_retries = 8;
        s.tasks.retry_base = Duration::from_millis(200);
        s.tasks.retry_factor = 2;
        s.tasks.reap_after = Duration::from_secs(90);
        s.tasks.reap_interval = Duration::from_millis(2_500);
        s.tasks.timeout_max = Duration::from_millis(4_321);
        s.tasks.retention = Duration::from_secs(3_600);
        s.tasks.janitor_interval = Duration::from_millis(750);
        s.tasks.delay_max = Duration::from_millis(86_400_000);
        s.library.branches.reverse();
        s.library.loan_timeout = Duration::from_millis(1_500);
        s.worker.ops_port = 0;
        s.edge.open_feed = Some(false);
        s.dashboard.live_feeds_max = 7;
        s.log_format = LogFormat::Json;
        let vars = settings_env(&s);
        let back = Settings::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[test]
    fn a_message_counter_is_read_from_the_metrics_text() {
        let text = "# TYPE bibliomq_messages counter\n\
            bibliomq_messages_total{queue=\"bibliomq.loans\",outcome=\"acked\"} 7\n\
            bibliomq_messages_total{queue=\"bibliomq.tasks\",outcome=\"acked\"} 2\n\
            # EOF\n";
        assert_eq!(
            message_count_in(text, "bibliomq.loans", MessageOutcome::Acked),
            7
        );
        assert_eq!(
            message_count_in(text, "bibliomq.loans", MessageOutcome::Duplicate),
            0
        );
    }

    #[test]
    fn the_listening_line_gives_the_operations_address() {
        let line = serde_json::json!({
            "level": "INFO",
            "target": "bibliomq_core::ops",
            "fields": {
                "message": "operations server listening (/metrics, /healthz, /readyz)",
                "addr": "127.0.0.1:40123"
            }
        });
        assert_eq!(ops_addr_in(&line), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(
            ops_addr_in(&serde_json::json!({"fields": {"message": "consuming"}})),
            None
        );
    }
}
