//! Object storage for large task results: any S3-compatible server (Garage on
//! the no-Docker path, MinIO in the compose file).
//!
//! On a cluster (several Garage nodes, each serving the whole bucket) the
//! store is given every node's endpoint: a request goes to the node that
//! answered last, and to the next one when that node cannot be reached or
//! answers with a server error.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_sdk_s3::{
    Client,
    config::http::HttpResponse,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    presigning::PresigningConfig,
    primitives::ByteStream,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::S3Settings;

/// Where an object was stored, with what a reader needs to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub content_type: String,
    /// Lower-case hex SHA-256 of the object's bytes.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    /// The server could not be reached or refused the request; worth retrying.
    #[error("object storage unavailable: {0}")]
    Unavailable(String),
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key without the configured prefix.
    pub key: String,
    pub size: i64,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// A page of a listing, in key order.
#[derive(Debug, Clone)]
pub struct ObjectPage {
    pub objects: Vec<ObjectInfo>,
    /// More keys follow the last one of this page.
    pub truncated: bool,
}

/// An object's body, streamed, with its metadata.
pub struct ObjectBody {
    pub body: ByteStream,
    pub content_type: Option<String>,
    pub size: Option<i64>,
}

#[derive(Clone)]
pub struct ObjectStore {
    /// One client per node, in the configured order.
    nodes: Arc<[Client]>,
    /// The node that answered last: where the next request goes first.
    preferred: Arc<AtomicUsize>,
    bucket: String,
    prefix: String,
    presign_ttl: Duration,
}

impl ObjectStore {
    pub fn new(settings: &S3Settings) -> Self {
        let mut endpoints = settings.endpoints();
        if endpoints.is_empty() {
            endpoints.push(settings.endpoint.clone());
        }
        // With several nodes, a node that does not answer is left for the
        // next one at once rather than retried with backoff.
        let retry = if endpoints.len() > 1 {
            RetryConfig::standard().with_max_attempts(1)
        } else {
            RetryConfig::standard()
        };
        let nodes: Vec<Client> = endpoints
            .iter()
            .map(|endpoint| node_client(settings, endpoint, retry.clone()))
            .collect();
        Self {
            nodes: nodes.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            bucket: settings.bucket.clone(),
            prefix: settings.key_prefix.clone(),
            presign_ttl: settings.presign_ttl,
        }
    }

    /// The client of the node requests go to first.
    pub fn client(&self) -> &Client {
        let index = self.preferred.load(Ordering::Relaxed) % self.nodes.len().max(1);
        &self.nodes[index]
    }

    /// Runs `op` against the preferred node, then the others in turn while
    /// a node cannot be reached; remembers the node that answered.
    async fn on_any_node<T, E, F, Fut>(&self, op: F) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let count = self.nodes.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut offset = 0;
        loop {
            let index = (first + offset) % count;
            match op(self.nodes[index].clone()).await {
                Ok(value) => {
                    if offset > 0 {
                        tracing::warn!(node = index, "object storage answered from another node");
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Err(e) if offset + 1 < count && node_unreachable(&e) => {
                    tracing::debug!(
                        node = index,
                        "object storage node unreachable; trying the next"
                    );
                    offset += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The configured key prefix (empty in production).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stores `bytes` under `prefix + key` and returns where, with its SHA-256.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        let key = format!("{}{key}", self.prefix);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        self.on_any_node(|client| {
            client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(content_type)
                .metadata("sha256", &sha256)
                // Bytes clone cheaply (a reference count), so each node
                // tried gets the whole body.
                .body(ByteStream::from(bytes.clone()))
                .send()
        })
        .await
        .map_err(unavailable)?;
        Ok(StoredObject {
            bucket: self.bucket.clone(),
            key,
            size,
            content_type: content_type.to_owned(),
            sha256,
        })
    }

    /// Opens an object for streaming.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<ObjectBody, StorageError> {
        let out = self
            .on_any_node(|client| client.get_object().bucket(bucket).key(key).send())
            .await
            .map_err(|e| match e.code() {
                Some("NoSuchKey") => StorageError::NotFound,
                _ => unavailable(e),
            })?;
        Ok(ObjectBody {
            content_type: out.content_type().map(str::to_owned),
            size: out.content_length(),
            body: out.body,
        })
    }

    /// A time-limited download link that needs no credentials.
    pub async fn presigned_get(&self, bucket: &str, key: &str) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(self.presign_ttl)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let req = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(unavailable)?;
        Ok(req.uri().to_owned())
    }

    /// Up to `max` objects under `prefix` (within the configured prefix), in
    /// key order, starting after the key `after`. Keys come back without the
    /// configured prefix, so they can be handed back to [`ObjectStore::list`]
    /// or joined to [`ObjectStore::prefix`] for [`ObjectStore::get`].
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: i32,
    ) -> Result<ObjectPage, StorageError> {
        let page = self
            .on_any_node(|client| {
                client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(format!("{}{prefix}", self.prefix))
                    .set_start_after(after.map(|a| format!("{}{a}", self.prefix)))
                    .max_keys(max)
                    .send()
            })
            .await
            .map_err(unavailable)?;
        let objects = page
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(self.prefix.as_str())?.to_owned();
                let last_modified = o
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                Some(ObjectInfo {
                    key,
                    size: o.size().unwrap_or_default(),
                    last_modified,
                })
            })
            .collect();
        Ok(ObjectPage {
            objects,
            truncated: page.is_truncated().unwrap_or(false),
        })
    }

    /// Succeeds when the bucket can be reached with our credentials.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.on_any_node(|client| client.head_bucket().bucket(&self.bucket).send())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Deletes one object; an object already gone is no error.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.on_any_node(|client| client.delete_object().bucket(bucket).key(key).send())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Deletes every object under `prefix` (within the configured prefix).
    /// Returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let full = format!("{}{prefix}", self.prefix);
        let mut deleted = 0;
        loop {
            let page = self
                .on_any_node(|client| {
                    client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .send()
                })
                .await
                .map_err(unavailable)?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            if keys.is_empty() {
                return Ok(deleted);
            }
            for key in keys {
                self.on_any_node(|client| {
                    client.delete_object().bucket(&self.bucket).key(&key).send()
                })
                .await
                .map_err(unavailable)?;
                deleted += 1;
            }
        }
    }
}

/// One node's client. Everything but the endpoint is the same for all nodes.
fn node_client(settings: &S3Settings, endpoint: &str, retry: RetryConfig) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(endpoint)
        // Path-style URLs: no wildcard DNS needed for the bucket name.
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &settings.access_key,
            &settings.secret_key,
            None,
            None,
            "bibliomq",
        ))
        // Checksums only where the protocol demands them: S3-compatible
        // servers differ in which of the newer checksum headers they know.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// The node could not be reached, timed out, or answered with a server
/// error (a Garage node that lost its peers answers 503): another node may
/// do better. A client error (403, 404) would be the same everywhere.
fn node_unreachable<E>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s.raw().status().is_server_error(),
        _ => false,
    }
}

fn unavailable<E, R>(e: SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        // The error and its causes, without the debug dump.
        other => crate::db::error_chain(other),
    };
    StorageError::Unavailable(detail)
}

/// Bytes of a whole object, for tests and small reads.
pub async fn collect(body: ObjectBody) -> Result<Bytes, StorageError> {
    body.body
        .collect()
        .await
        .map(|d| d.into_bytes())
        .map_err(|e| StorageError::Unavailable(e.to_string()))
}
