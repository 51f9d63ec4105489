//! Who is calling, and API keys: the transports turn what a client sent
//! into a [`Caller`] here ([`Commands::authenticate`]), bind it to the
//! commands ([`Commands::acting_as`]), and every command checks its
//! [`Permission`] on entry ([`Commands::authorize`]). Keys are created,
//! listed and revoked here too (`bibliomq-api keys ...`, `/v1/keys`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use super::Commands;
use crate::{
    auth::{self, Caller, Permission, Role, StoredKey},
    error::{CommandError, Invalid},
    library::PatronId,
};

/// A key to make.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub role: String,
    pub branch: Option<String>,
    pub patron: Option<String>,
    pub name: Option<String>,
}

/// A key as lists show it: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// The key's visible id: a key reads `bmq_<id>_<secret>`.
    pub id: String,
    pub role: Role,
    #[schema(required = true)]
    pub branch: Option<String>,
    #[schema(required = true)]
    pub patron: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just made: the whole key, shown this once, and what it is.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyCreated {
    /// The key to send (`Authorization: Bearer <key>`, `"key"`, `AUTH <key>`).
    /// Only its digest is stored: it cannot be shown again.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// Why an authentication failed, as counted in the metrics.
fn refused(commands: &Commands, reason: &str, error: CommandError) -> CommandError {
    commands.metrics().auth_refused(reason);
    error
}

const COLUMNS: &str = "id, role, branch, patron, name, created_at, revoked_at";

fn key_of(r: &Row) -> Result<KeyInfo, CommandError> {
    let role: String = r.get(1);
    Ok(KeyInfo {
        id: r.get(0),
        role: role
            .parse()
            .map_err(|e: String| anyhow::anyhow!("stored key role: {e}"))?,
        branch: r.get(2),
        patron: r.get(3),
        name: r.get(4),
        created_at: r.get(5),
        revoked_at: r.get(6),
    })
}

async fn stored_key(db: &impl GenericClient, id: &str) -> Result<Option<StoredKey>, CommandError> {
    let row = db
        .query_opt(
            "SELECT digest, role, branch, patron FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    row.map(|r| {
        let role: String = r.get(1);
        Ok(StoredKey {
            digest: r.get(0),
            role: role
                .parse()
                .map_err(|e: String| anyhow::anyhow!("stored key role: {e}"))?,
            branch: r.get(2),
            patron: r.get(3),
        })
    })
    .transpose()
}

impl Commands {
    /// The same commands, acting for `caller`.
    pub fn acting_as(&self, caller: Caller) -> Self {
        Self {
            inner: self.inner.clone(),
            caller: Some(std::sync::Arc::new(caller)),
        }
    }

    /// The same commands, acting for nobody: everything answers
    /// `unauthorized`. What a transport starts from when keys are required,
    /// so that a path that forgot to authenticate refuses rather than admits.
    pub fn acting_as_nobody(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            caller: None,
        }
    }

    /// The commands as a transport should start from: anyone with
    /// BIBLIOMQ_AUTH=off, nobody until authenticated with it on.
    pub fn for_transport(&self) -> Self {
        if self.settings().auth.enabled {
            self.acting_as_nobody()
        } else {
            self.acting_as(Caller::open())
        }
    }

    /// Who these commands act for.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_deref()
    }

    /// Whether the caller may do `what`: `unauthorized` without a caller,
    /// `forbidden` (naming the roles that may) otherwise.
    pub fn authorize(&self, what: Permission<'_>) -> Result<&Caller, CommandError> {
        let Some(caller) = self.caller() else {
            return Err(refused(self, "no_key", no_key()));
        };
        caller.may(&what).map_err(|r| {
            tracing::info!(key = %caller.key, role = %caller.role, what = what.name(), "refused");
            refused(self, "forbidden", CommandError::Forbidden(r))
        })?;
        Ok(caller)
    }

    /// Whether the caller's role may ever do `what`, before the command
    /// has read what its scope depends on (whose loan, which branch).
    pub fn authorize_role(&self, what: Permission<'_>) -> Result<(), CommandError> {
        let Some(caller) = self.caller() else {
            return Err(refused(self, "no_key", no_key()));
        };
        if what.roles().contains(&caller.role) {
            Ok(())
        } else {
            self.authorize(what).map(|_| ())
        }
    }

    /// The caller a key stands for (any key when BIBLIOMQ_AUTH=off, where
    /// everyone is [`Caller::open`]). Takes one request from the key's
    /// budget. Errors never repeat the key.
    pub async fn authenticate(&self, key: Option<&str>) -> Result<Caller, CommandError> {
        if !self.settings().auth.enabled {
            return Ok(Caller::open());
        }
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return Err(refused(self, "no_key", no_key()));
        };
        let invalid = || {
            refused(
                self,
                "invalid_key",
                CommandError::Unauthenticated(
                    "the key is not valid: unknown, revoked or mistyped".to_owned(),
                ),
            )
        };
        let Some((id, secret)) = auth::split_key(key) else {
            return Err(invalid());
        };
        let Some(stored) = self.key_in_force(id).await? else {
            return Err(invalid());
        };
        if !auth::same_secret(&auth::digest(secret), &stored.digest) {
            return Err(invalid());
        }
        let caller = Caller {
            key: id.to_owned(),
            role: stored.role,
            branch: stored.branch,
            patron: stored.patron,
            auth: true,
        };
        self.admit(&caller)?;
        Ok(caller)
    }

    /// The stored key `id` while it is in force (`None`: unknown or
    /// revoked), from this process's cache when it has it.
    async fn key_in_force(&self, id: &str) -> Result<Option<StoredKey>, CommandError> {
        let gate = &self.inner.gate;
        gate.watch(&self.settings().database.url);
        if let Some(stored) = gate.cached(id) {
            return Ok(stored);
        }
        let read_at = gate.epoch();
        let client = self.pool().get().await?;
        let stored = stored_key(&**client, id).await?;
        gate.remember(id, stored.clone(), read_at);
        Ok(stored)
    }

    /// Whether the caller's key is still in force and may still do `what`:
    /// for what goes on long after the request that began it (a live
    /// feed), so that a key revoked meanwhile stops it. Spends nothing from
    /// the key's budget; answers from the cache, which forgets a key as
    /// soon as a change to it is announced.
    pub(super) async fn recheck(&self, what: Permission<'_>) -> Result<(), CommandError> {
        let Some(id) = self.authorize(what)?.key_id() else {
            return Ok(());
        };
        match self.key_in_force(id).await? {
            Some(_) => Ok(()),
            None => Err(refused(
                self,
                "invalid_key",
                CommandError::Unauthenticated(
                    "the key is no longer valid: it was revoked".to_owned(),
                ),
            )),
        }
    }

    /// Takes one request from the caller's budget (BIBLIOMQ_AUTH_RATE_*):
    /// `rate_limited` when it is spent. Called once per request: by
    /// [`Commands::authenticate`], and per line by the TCP gateways.
    pub fn admit(&self, caller: &Caller) -> Result<(), CommandError> {
        if !caller.auth {
            return Ok(());
        }
        self.inner
            .gate
            .admit(&caller.key)
            .map_err(|wait| refused(self, "rate_limited", CommandError::RateLimited(wait)))
    }

    /// Takes one request from the budget of the caller these commands act
    /// for (the TCP gateways, once per line).
    pub fn admit_current(&self) -> Result<(), CommandError> {
        match self.caller() {
            Some(caller) => self.admit(caller),
            None => Ok(()),
        }
    }

    /// Who is calling: the desk asks, to offer only what the role may do.
    pub fn me(&self) -> Result<Caller, CommandError> {
        self.caller()
            .cloned()
            .ok_or_else(|| refused(self, "no_key", no_key()))
    }

    /// Makes a key; the answer holds the only copy of its secret.
    pub async fn create_key(&self, new: NewKey) -> Result<KeyCreated, CommandError> {
        self.authorize(Permission::ManageKeys)?;
        let role: Role = new
            .role
            .parse()
            .map_err(|e: String| Invalid::field("invalid_role", "role", e))?;
        let branch = match new.branch.as_deref() {
            None => None,
            Some(_) if role != Role::Librarian => {
                return Err(Invalid::field(
                    "invalid_branch",
                    "branch",
                    "only a librarian key has a branch",
                )
                .into());
            }
            Some(b) => Some(self.branch(b)?.to_string()),
        };
        let patron = match (role, new.patron.as_deref()) {
            (Role::Patron, Some(p)) => Some(PatronId::parse(p)?),
            (Role::Patron, None) => {
                return Err(Invalid::field(
                    "missing_field",
                    "patron",
                    "a patron key needs --patron, the patron it acts for",
                )
                .into());
            }
            (_, Some(_)) => {
                return Err(Invalid::field(
                    "invalid_patron",
                    "patron",
                    "only a patron key has a patron",
                )
                .into());
            }
            (_, None) => None,
        };
        let name = new
            .name
            .as_deref()
            .map(|n| super::admin::label(n, "name", crate::limits::NAME_MAX))
            .transpose()?;
        let client = self.pool().get().await?;
        if let Some(p) = &patron
            && client
                .query_opt("SELECT 1 FROM patrons WHERE id = $1", &[&p.as_str()])
                .await?
                .is_none()
        {
            return Err(CommandError::not_found(
                "patron_not_found",
                format!("no patron with id {p}"),
            ));
        }
        let secret = auth::new_secret();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO api_keys (id, digest, role, branch, patron, name)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
                ),
                &[
                    &secret.id,
                    &secret.digest,
                    &role.as_str(),
                    &branch,
                    &patron.as_ref().map(PatronId::as_str),
                    &name,
                ],
            )
            .await?;
        let info = key_of(&row)?;
        tracing::info!(key = %info.id, role = %info.role, "API key created");
        Ok(KeyCreated {
            key: secret.text,
            info,
        })
    }

    /// Every key, newest first; revoked ones too when asked.
    pub async fn list_keys(&self, include_revoked: bool) -> Result<Vec<KeyInfo>, CommandError> {
        self.authorize(Permission::ManageKeys)?;
        let client = self.pool().get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL
                     ORDER BY created_at DESC, id"
                ),
                &[&include_revoked],
            )
            .await?;
        rows.iter().map(key_of).collect()
    }

    /// Revokes a key by its id (or the whole key): refused from then on,
    /// in this process at once, in others as soon as they hear of it
    /// (within BIBLIOMQ_AUTH_CACHE_MS if they do not).
    pub async fn revoke_key(&self, id: &str) -> Result<KeyInfo, CommandError> {
        self.authorize(Permission::ManageKeys)?;
        let id = auth::split_key(id).map_or(id.trim(), |(id, _)| id);
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                     WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&id],
            )
            .await?;
        self.inner.gate.forget(id);
        let info = row.as_ref().map(key_of).transpose()?.ok_or_else(|| {
            CommandError::not_found("key_not_found", format!("no key with id `{id}`"))
        })?;
        tracing::info!(key = %info.id, "API key revoked");
        Ok(info)
    }
}

fn no_key() -> CommandError {
    CommandError::Unauthenticated(
        "a key is needed: HTTP `Authorization: Bearer <key>`, a `key` field on ZeroMQ, \
         an `AUTH <key>` first line on the TCP gateways (an admin makes keys with \
         `bibliomq-api keys create`)"
            .to_owned(),
    )
}
