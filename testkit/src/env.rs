//! The per-test vhost, database and bucket prefix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bibliomq_core::{config::Settings, storage::ObjectStore};

/// Management API of the local RabbitMQ (plugin enabled by `scripts/services`).
pub const RABBIT_MGMT: &str = "http://127.0.0.1:15672/api";
/// Bucket the tests write into, each under its own prefix.
pub const TEST_BUCKET: &str = "bibliomq-test";
const ADMIN_DB_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Isolated resources of one test, removed on drop.
pub struct TestEnv {
    pub name: String,
    pub vhost: String,
    pub database: String,
    pub s3_prefix: String,
    settings: Settings,
}

impl TestEnv {
    /// Creates a vhost and a database and picks a bucket prefix. Settings
    /// point at them; migrations run when the apps start.
    pub async fn new() -> Self {
        // Logs only when asked for (RUST_LOG=...), to keep test output quiet.
        if std::env::var_os("RUST_LOG").is_some() {
            bibliomq_core::telemetry::init(bibliomq_core::config::LogFormat::Pretty);
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("{secs}_{rand}");
        let vhost = format!("bibliomq-test-{name}");
        let database = format!("bibliomq_test_{name}");
        let s3_prefix = format!("test-{name}/");

        create_vhost(&vhost).await;
        let (admin, conn) = tokio_postgres::connect(ADMIN_DB_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services starts it)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap();

        let vars = [
            (
                "BIBLIOMQ_AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:5672/{vhost}?heartbeat=5"),
            ),
            (
                "BIBLIOMQ_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            ),
            ("BIBLIOMQ_DATABASE_POOL_SIZE", "4".to_owned()),
            ("BIBLIOMQ_S3_BUCKET", TEST_BUCKET.to_owned()),
            ("BIBLIOMQ_S3_KEY_PREFIX", s3_prefix.clone()),
            ("BIBLIOMQ_API_HOST", "127.0.0.1".to_owned()),
            ("BIBLIOMQ_API_PORT", "0".to_owned()),
            ("BIBLIOMQ_WORKER_OPS_PORT", "0".to_owned()),
            ("BIBLIOMQ_EDGE_OPS_PORT", "0".to_owned()),
            ("BIBLIOMQ_AMQP_CONFIRM_TIMEOUT_MS", "3000".to_owned()),
            // Short retry delays keep retry tests quick.
            ("BIBLIOMQ_TASK_RETRY_BASE_MS", "200".to_owned()),
            ("BIBLIOMQ_TASK_RETRY_FACTOR", "2".to_owned()),
            ("BIBLIOMQ_TASK_MAX_RETRIES", "3".to_owned()),
            ("BIBLIOMQ_DRAIN_TIMEOUT_MS", "5000".to_owned()),
        ];
        let settings = Settings::from_lookup(|key| {
            vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
        .unwrap();
        Self {
            name,
            vhost,
            database,
            s3_prefix,
            settings,
        }
    }

    /// Settings for an app of this test.
    pub fn settings(&self) -> Settings {
        self.settings.clone()
    }

    /// A direct connection to the test database, for assertions.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.settings.database.url, tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client
    }

    /// The object store of this test (its own prefix in the test bucket).
    pub fn store(&self) -> ObjectStore {
        ObjectStore::new(&self.settings.s3)
    }

    /// A bucket of this test's own that does not exist until
    /// [`TestEnv::create_bucket`]: storing into it fails until then.
    pub fn missing_bucket(&self) -> String {
        format!("bibliomq-t-{}", self.name.replace('_', "-"))
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.store()
            .client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
    }

    /// Deletes `bucket` with what it holds, if it is there.
    pub async fn delete_bucket(&self, bucket: &str) {
        let client = self.store().client().clone();
        if let Ok(list) = client.list_objects_v2().bucket(bucket).send().await {
            for obj in list.contents() {
                if let Some(key) = obj.key() {
                    let _ = client.delete_object().bucket(bucket).key(key).send().await;
                }
            }
        }
        let _ = client.delete_bucket().bucket(bucket).send().await;
    }

    /// AMQP URL of this test's vhost.
    pub fn amqp_url(&self) -> String {
        self.settings.amqp.url.clone()
    }

    async fn cleanup(vhost: String, database: String, store: ObjectStore) {
        let http = reqwest::Client::new();
        let _ = http
            .delete(format!("{RABBIT_MGMT}/vhosts/{vhost}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
        if let Ok((admin, conn)) =
            tokio_postgres::connect(ADMIN_DB_URL, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                ))
                .await;
        }
        let _ = store.delete_prefix("").await;
    }
}

/// How long a test's cleanup (its vhost, database and objects) may take.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

impl Drop for TestEnv {
    fn drop(&mut self) {
        let vhost = self.vhost.clone();
        let database = self.database.clone();
        let store = self.store();
        // Drop cannot await, and the test's runtime may be shutting down: do
        // the cleanup on a thread with a runtime of its own, and wait for it.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Bounded: a cleanup that cannot finish leaves leftovers for
            // `scripts/test` to sweep, rather than a hung test.
            let cleanup = async {
                tokio::time::timeout(CLEANUP_DEADLINE, Self::cleanup(vhost, database, store)).await
            };
            if rt.block_on(cleanup).is_err() {
                eprintln!("the test's cleanup did not finish within {CLEANUP_DEADLINE:?}");
            }
        });
        let _ = cleanup.join();
    }
}

async fn create_vhost(vhost: &str) {
    let http = reqwest::Client::new();
    let put = |url: String, body: serde_json::Value| {
        http.put(url)
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
    };
    let resp = put(
        format!("{RABBIT_MGMT}/vhosts/{vhost}"),
        serde_json::json!({}),
    )
    .await
    .expect("the RabbitMQ management API must answer on :15672 (scripts/services enables it)");
    assert!(
        resp.status().is_success(),
        "creating vhost: {}",
        resp.status()
    );
    let resp = put(
        format!("{RABBIT_MGMT}/permissions/{vhost}/guest"),
        serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await
    .unwrap();
    assert!(
        resp.status().is_success(),
        "granting vhost permissions: {}",
        resp.status()
    );
}
