//! Who may do what: API keys, roles, the caller of a command and the
//! permission each command asks for.
//!
//! Every transport turns what the client sent (a bearer header, a `key`
//! field, an `AUTH` line, a source address) into a [`Caller`] once, and the
//! command layer checks [`Caller::may`] at each entry point, so the rules
//! below hold the same for HTTP, ZeroMQ, the TCP gateways and the CLI.
//!
//! A key reads `bmq_<id>_<secret>`. The id is not secret: `keys list`, the
//! logs and error bodies name a key by it. The secret is 244 random bits;
//! only its SHA-256 digest is stored. A plain (unsalted, fast) hash is
//! enough for a secret of that entropy: there is no dictionary to try. The
//! digest is compared in constant time.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What a key may do. See [`Permission::roles`] for the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Circulation and catalogue; with a branch, only at that branch.
    Librarian,
    /// Only their own: search, their loans and holds, renew their loans,
    /// place and cancel their holds.
    Patron,
    /// Tasks only (submit, follow, cancel).
    Service,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::Admin, Self::Librarian, Self::Patron, Self::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Librarian => "librarian",
            Self::Patron => "patron",
            Self::Service => "service",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Admin => "everything",
            Self::Librarian => "circulation and catalogue, optionally at one branch only",
            Self::Patron => {
                "their own: search, their loans and holds, renew their loans, place and cancel their holds"
            }
            Self::Service => "tasks only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim().to_lowercase())
            .ok_or_else(|| format!("unknown role `{s}`; roles: admin, librarian, patron, service"))
    }
}

/// Who is asking: the key (by its id, never its secret), its role and scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Caller {
    /// The key's id (`bmq_<id>_...`), or how the caller got in without one:
    /// `open` (BIBLIOMQ_AUTH=off), `internal` (this process's own CLI),
    /// `address:<ip>` (a gateway client on the allow-list).
    pub key: String,
    pub role: Role,
    /// A librarian's branch, when the key is restricted to one.
    #[schema(required = true)]
    pub branch: Option<String>,
    /// A patron key's patron.
    #[schema(required = true)]
    pub patron: Option<String>,
    /// Whether keys are checked at all (false with BIBLIOMQ_AUTH=off).
    pub auth: bool,
}

impl Caller {
    /// The process itself (CLI sub-commands, workers): may do everything.
    pub fn internal() -> Self {
        Self {
            key: "internal".to_owned(),
            role: Role::Admin,
            branch: None,
            patron: None,
            auth: false,
        }
    }

    /// Anyone, with BIBLIOMQ_AUTH=off: may do everything.
    pub fn open() -> Self {
        Self {
            key: "open".to_owned(),
            role: Role::Admin,
            branch: None,
            patron: None,
            auth: false,
        }
    }

    /// A legacy gateway client let in by its source address: tasks only.
    pub fn address(ip: std::net::IpAddr) -> Self {
        Self {
            key: format!("address:{ip}"),
            role: Role::Service,
            branch: None,
            patron: None,
            auth: true,
        }
    }

    /// The id of the stored key this caller stands for; `None` for the
    /// process itself, anyone with auth off, and gateway clients let in by
    /// address.
    pub fn key_id(&self) -> Option<&str> {
        (self.auth && !self.key.starts_with("address:")).then_some(self.key.as_str())
    }

    /// Whether this caller's live feed may carry the outcome event routed
    /// by `routing_key` (`task.<state>`; `loaned.<branch>`,
    /// `rejected.<operation>.<branch>`, `hold.<kind>.<branch>`, ...): an
    /// admin every event; a service key the task events (its role is tasks
    /// only); a librarian the circulation events, only those of their
    /// branch when the key has one (they name patrons). Others follow
    /// nothing ([`Permission::WatchEvents`] refuses them first).
    pub fn may_see_event(&self, routing_key: &str) -> bool {
        let is_task = routing_key.split('.').next() == Some("task");
        match self.role {
            Role::Admin => true,
            Role::Service => is_task,
            Role::Librarian => {
                !is_task
                    && self.branch.as_deref().is_none_or(|own| {
                        routing_key
                            .rsplit('.')
                            .next()
                            .is_some_and(|branch| branch.eq_ignore_ascii_case(own))
                    })
            }
            Role::Patron => false,
        }
    }

    /// Whether this caller may do `what`; the error names the role missing.
    pub fn may(&self, what: &Permission<'_>) -> Result<(), Refused> {
        let roles = what.roles();
        if !roles.contains(&self.role) {
            return Err(Refused {
                message: format!(
                    "{} needs the {} role; this key ({}) has the {} role",
                    what.name(),
                    roles_text(roles),
                    self.key,
                    self.role
                ),
                required: roles.to_vec(),
                role: self.role,
            });
        }
        // Refused by its scope (another branch, another patron): the roles
        // named are still those that may, each within its own scope.
        let scoped = |message: String| Refused {
            message,
            required: roles.to_vec(),
            role: self.role,
        };
        match self.role {
            Role::Librarian => match (what.branch(), self.branch.as_deref()) {
                (Some(wanted), Some(own)) if !wanted.trim().eq_ignore_ascii_case(own) => {
                    Err(scoped(format!(
                        "{} at branch `{}` needs a librarian of that branch or the admin role; this key ({}) is a librarian of branch `{own}`",
                        what.name(),
                        wanted.trim(),
                        self.key
                    )))
                }
                _ => Ok(()),
            },
            Role::Patron => match (what.patron(), self.patron.as_deref()) {
                (Some(Some(wanted)), Some(own)) if wanted.trim().eq_ignore_ascii_case(own) => {
                    Ok(())
                }
                (None, _) => Ok(()),
                _ => Err(scoped(format!(
                    "{} of another patron needs the {} role; this key ({}) is patron `{}`'s own",
                    what.name(),
                    roles_text(
                        &roles
                            .iter()
                            .copied()
                            .filter(|r| *r != Role::Patron)
                            .collect::<Vec<_>>()
                    ),
                    self.key,
                    self.patron.as_deref().unwrap_or("?")
                ))),
            },
            Role::Admin | Role::Service => Ok(()),
        }
    }
}

fn roles_text(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.as_slice() {
        [] => "(no)".to_owned(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A refusal: what the caller lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    /// Roles that may do it (within their scope).
    pub required: Vec<Role>,
    /// The caller's role.
    pub role: Role,
}

/// What a command asks of its caller. Scoped variants carry what the rule
/// looks at: the branch (a branch librarian) and the patron (a patron key,
/// which acts on its own patron only). A patron of `Some(None)` is "a
/// patron not named in the request", which a patron key may not act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission<'a> {
    SubmitTask,
    ReadTask,
    CancelTask,
    ListTasks,
    /// Task and queue figures, the object browser.
    WatchTasks,
    /// The live event feed (tasks and circulation).
    WatchEvents,
    /// Title search, a title's copies, the branches.
    Search,
    Lend {
        patron: &'a str,
        branch: &'a str,
    },
    Renew {
        patron: Option<&'a str>,
        branch: &'a str,
    },
    Return {
        branch: &'a str,
    },
    ReadLoans {
        patron: &'a str,
    },
    /// A renewal or return by its id.
    ReadOperation {
        patron: &'a str,
    },
    AddTitle,
    ChangeTitle,
    AddCopy {
        branch: &'a str,
    },
    WithdrawCopy {
        branch: &'a str,
    },
    AddPatron,
    ChangePatron,
    ReadPatron {
        patron: &'a str,
    },
    ListPatrons,
    Import,
    /// The circulation figures of the dashboard.
    WatchCirculation,
    ReadDeadLetters,
    ReplayDeadLetters,
    ManageKeys,
    PlaceHold {
        patron: &'a str,
        branch: &'a str,
    },
    CancelHold {
        patron: &'a str,
    },
    ListHolds {
        patron: &'a str,
    },
    ListTitleHolds,
}

use Role::{Admin, Librarian, Patron, Service};

impl Permission<'_> {
    /// The roles that may do it, within their scope.
    pub fn roles(&self) -> &'static [Role] {
        match self {
            Self::SubmitTask
            | Self::ReadTask
            | Self::CancelTask
            | Self::ListTasks
            | Self::WatchTasks => &[Admin, Service],
            Self::WatchEvents => &[Admin, Librarian, Service],
            Self::Search
            | Self::Renew { .. }
            | Self::ReadLoans { .. }
            | Self::ReadOperation { .. }
            | Self::ReadPatron { .. }
            | Self::PlaceHold { .. }
            | Self::CancelHold { .. }
            | Self::ListHolds { .. } => &[Admin, Librarian, Patron],
            Self::Lend { .. }
            | Self::Return { .. }
            | Self::AddTitle
            | Self::ChangeTitle
            | Self::AddCopy { .. }
            | Self::WithdrawCopy { .. }
            | Self::AddPatron
            | Self::ChangePatron
            | Self::ListPatrons
            | Self::Import
            | Self::WatchCirculation
            | Self::ListTitleHolds => &[Admin, Librarian],
            Self::ReadDeadLetters | Self::ReplayDeadLetters | Self::ManageKeys => &[Admin],
        }
    }

    /// The branch a branch librarian must be of, when it matters.
    fn branch(&self) -> Option<&str> {
        match self {
            Self::Lend { branch, .. }
            | Self::Renew { branch, .. }
            | Self::Return { branch }
            | Self::AddCopy { branch }
            | Self::WithdrawCopy { branch }
            | Self::PlaceHold { branch, .. } => Some(*branch),
            _ => None,
        }
    }

    /// `Some(patron)` when a patron key may do it for its own patron only.
    fn patron(&self) -> Option<Option<&str>> {
        match self {
            Self::Renew { patron, .. } => Some(*patron),
            Self::Lend { patron, .. }
            | Self::ReadLoans { patron }
            | Self::ReadOperation { patron }
            | Self::ReadPatron { patron }
            | Self::PlaceHold { patron, .. }
            | Self::CancelHold { patron }
            | Self::ListHolds { patron } => Some(Some(*patron)),
            _ => None,
        }
    }

    /// For messages: what is being done.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SubmitTask => "submitting a task",
            Self::ReadTask => "reading a task",
            Self::CancelTask => "cancelling a task",
            Self::ListTasks => "listing tasks",
            Self::WatchTasks => "watching tasks and queues",
            Self::WatchEvents => "following the live events",
            Self::Search => "searching the catalogue",
            Self::Lend { .. } => "lending",
            Self::Renew { .. } => "renewing a loan",
            Self::Return { .. } => "returning a loan",
            Self::ReadLoans { .. } => "reading loans",
            Self::ReadOperation { .. } => "reading a renewal or return",
            Self::AddTitle => "adding a title",
            Self::ChangeTitle => "changing a title",
            Self::AddCopy { .. } => "adding a copy",
            Self::WithdrawCopy { .. } => "withdrawing a copy",
            Self::AddPatron => "adding a patron",
            Self::ChangePatron => "changing a patron",
            Self::ReadPatron { .. } => "reading a patron",
            Self::ListPatrons => "listing patrons",
            Self::Import => "importing",
            Self::WatchCirculation => "watching circulation",
            Self::ReadDeadLetters => "reading dead letters",
            Self::ReplayDeadLetters => "replaying dead letters",
            Self::ManageKeys => "managing API keys",
            Self::PlaceHold { .. } => "placing a hold",
            Self::CancelHold { .. } => "cancelling a hold",
            Self::ListHolds { .. } => "listing holds",
            Self::ListTitleHolds => "listing a title's holds",
        }
    }
}

/// The prefix of every key.
pub const KEY_PREFIX: &str = "bmq_";

/// A new key: its id and the whole secret text, shown once.
pub struct NewSecret {
    pub id: String,
    pub text: String,
    pub digest: Vec<u8>,
}

/// Makes a key: a 12-hex-digit id and 244 random bits (two v4 UUIDs,
/// from the operating system's generator).
pub fn new_secret() -> NewSecret {
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    NewSecret {
        digest: digest(&secret),
        text: format!("{KEY_PREFIX}{id}_{secret}"),
        id,
    }
}

/// `bmq_<id>_<secret>` → (id, secret); `None` when it is not of that shape.
pub fn split_key(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim().strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty()
        && secret.len() <= 128
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some((id, secret))
}

pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell a guesser how much they got right.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).unwrap_or(&0) ^ e;
    }
    diff == 0
}

/// A stored key as the gate needs it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub digest: Vec<u8>,
    pub role: Role,
    pub branch: Option<String>,
    pub patron: Option<String>,
}

/// Key look-ups kept for a while (so each request does not query
/// PostgreSQL), and the per-key request budget.
///
/// A change to a key (a revocation, by any process or by hand in SQL) is
/// announced on [`KEYS_CHANNEL`] by a trigger (migration 0022); once
/// [`Gate::watch`] has started, the process forgets that key as soon as it
/// hears it. What was cached while nobody listened is forgotten whenever
/// the listening connection comes up or goes down, and the time to live
/// bounds the rest (a notification that never arrives).
pub struct Gate {
    ttl: Duration,
    rate: f64,
    burst: f64,
    /// std Mutex: held only to read or write a map entry, never across an await.
    keys: Mutex<HashMap<String, (Instant, Option<StoredKey>)>>,
    buckets: Mutex<HashMap<String, (Instant, f64)>>,
    /// Moves on at each forgetting: a look-up read before it is not kept,
    /// as it may predate the change that was forgotten.
    epoch: AtomicU64,
    /// The listener of [`Gate::watch`]; stopped with the gate.
    watching: OnceLock<tokio_util::sync::DropGuard>,
}

/// The channel key changes are announced on; the payload is the key's id.
pub const KEYS_CHANNEL: &str = "bibliomq_keys";

/// Entries kept at most; beyond, the map is emptied (a flood of made-up ids).
const GATE_MAX_ENTRIES: usize = 100_000;

impl Gate {
    pub fn new(ttl: Duration, rate_per_sec: f64, burst: f64) -> Self {
        Self {
            ttl,
            rate: rate_per_sec,
            burst: burst.max(1.0),
            keys: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            watching: OnceLock::new(),
        }
    }

    /// Starts (once) listening for key changes on the database at `url`.
    pub fn watch(self: &Arc<Self>, url: &str) {
        self.watching.get_or_init(|| {
            let stop = tokio_util::sync::CancellationToken::new();
            let gate: Weak<Self> = Arc::downgrade(self);
            let (url, listening) = (url.to_owned(), stop.clone());
            tokio::spawn(async move {
                crate::db::notifications::listen(
                    &url,
                    "bibliomq-keys",
                    &[KEYS_CHANNEL],
                    listening,
                    |heard| {
                        let Some(gate) = gate.upgrade() else { return };
                        match heard {
                            crate::db::notifications::Heard::Notification { payload, .. } => {
                                gate.forget(payload);
                            }
                            // Changes made while nobody listened were missed.
                            _ => gate.forget_all(),
                        }
                    },
                )
                .await;
            });
            stop.drop_guard()
        });
    }

    /// Where forgetting stands: pass it to [`Gate::remember`] with a
    /// look-up read after this call.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The cached look-up of `id`, when fresh: `Some(None)` is "no such key".
    pub fn cached(&self, id: &str) -> Option<Option<StoredKey>> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, k)| k.clone())
    }

    /// Keeps a look-up read after [`Gate::epoch`] returned `read_at`,
    /// unless something was forgotten since.
    pub fn remember(&self, id: &str, key: Option<StoredKey>, read_at: u64) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch() != read_at {
            return;
        }
        if keys.len() >= GATE_MAX_ENTRIES {
            keys.clear();
        }
        keys.insert(id.to_owned(), (Instant::now(), key));
    }

    pub fn forget(&self, id: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        keys.remove(id);
    }

    pub fn forget_all(&self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        keys.clear();
    }

    /// Takes one request from `key`'s budget (a token bucket: `burst` at
    /// once, refilled at `rate` a second); `Err(wait)` when it is spent.
    pub fn admit(&self, key: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= GATE_MAX_ENTRIES {
            buckets.clear();
        }
        let (at, tokens) = buckets.entry(key.to_owned()).or_insert((now, self.burst));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_feed_carries_what_the_role_may_see() {
        let caller = |role, branch: Option<&str>| Caller {
            key: "k".to_owned(),
            role,
            branch: branch.map(str::to_owned),
            patron: None,
            auth: true,
        };
        let keys = [
            "task.succeeded",
            "loaned.norte",
            "rejected.renewal.norte",
            "hold.ready.norte",
            "returned.sur",
        ];
        let seen = |c: &Caller| -> Vec<&str> {
            keys.iter()
                .copied()
                .filter(|k| c.may_see_event(k))
                .collect()
        };
        assert_eq!(seen(&caller(Role::Admin, None)), keys);
        assert_eq!(seen(&Caller::open()), keys);
        assert_eq!(seen(&caller(Role::Service, None)), ["task.succeeded"]);
        assert_eq!(seen(&caller(Role::Librarian, None)), keys[1..]);
        assert_eq!(
            seen(&caller(Role::Librarian, Some("Norte"))),
            ["loaned.norte", "rejected.renewal.norte", "hold.ready.norte"]
        );
        assert!(seen(&caller(Role::Patron, None)).is_empty());
    }

    fn key(role: Role, branch: Option<&str>, patron: Option<&str>) -> Caller {
        Caller {
            key: "abc".into(),
            role,
            branch: branch.map(Into::into),
            patron: patron.map(Into::into),
            auth: true,
        }
    }

    #[test]
    fn keys_split_into_id_and_secret_and_hash_to_their_digest() {
        let new = new_secret();
        let (id, secret) = split_key(&new.text).unwrap();
        assert_eq!(id, new.id);
        assert!(same_secret(&digest(secret), &new.digest));
        assert!(!same_secret(&digest("other"), &new.digest));
        assert!(split_key("bmq_short_x").is_none());
        assert!(split_key("token").is_none());
        assert_ne!(new_secret().text, new.text);
    }

    #[test]
    fn a_look_up_read_before_a_forgetting_is_not_kept() {
        let gate = Gate::new(Duration::from_secs(3600), 0.0, 1.0);
        let stored = || {
            Some(StoredKey {
                digest: vec![1],
                role: Role::Librarian,
                branch: None,
                patron: None,
            })
        };
        let read_at = gate.epoch();
        gate.remember("a", stored(), read_at);
        assert!(gate.cached("a").is_some_and(|k| k.is_some()));
        // Read, then the key changed and was forgotten, then the stale
        // look-up comes back: it is not kept.
        let read_at = gate.epoch();
        gate.forget("a");
        gate.remember("a", stored(), read_at);
        assert!(gate.cached("a").is_none());
        let read_at = gate.epoch();
        gate.remember("a", stored(), read_at);
        gate.remember("b", None, read_at);
        gate.forget_all();
        assert!(gate.cached("a").is_none() && gate.cached("b").is_none());
    }

    #[test]
    fn roles_follow_the_table() {
        let service = key(Role::Service, None, None);
        assert!(service.may(&Permission::SubmitTask).is_ok());
        let refused = service.may(&Permission::Search).unwrap_err();
        assert_eq!(refused.required, vec![Admin, Librarian, Patron]);
        assert!(
            refused.message.contains("admin, librarian or patron"),
            "{}",
            refused.message
        );
        let librarian = key(Role::Librarian, Some("central"), None);
        assert!(
            librarian
                .may(&Permission::Lend {
                    patron: "p",
                    branch: "central"
                })
                .is_ok()
        );
        assert!(
            librarian
                .may(&Permission::Lend {
                    patron: "p",
                    branch: "norte"
                })
                .is_err()
        );
        assert!(librarian.may(&Permission::SubmitTask).is_err());
        assert!(librarian.may(&Permission::ManageKeys).is_err());
        let patron = key(Role::Patron, None, Some("ana"));
        assert!(patron.may(&Permission::ReadLoans { patron: "ana" }).is_ok());
        assert!(
            patron
                .may(&Permission::ReadLoans { patron: "bob" })
                .is_err()
        );
        assert!(
            patron
                .may(&Permission::Renew {
                    patron: None,
                    branch: "x"
                })
                .is_err()
        );
        assert!(
            patron
                .may(&Permission::Lend {
                    patron: "ana",
                    branch: "x"
                })
                .is_err()
        );
        assert!(
            patron
                .may(&Permission::PlaceHold {
                    patron: "ana",
                    branch: "x"
                })
                .is_ok()
        );
        assert!(
            patron
                .may(&Permission::CancelHold { patron: "bob" })
                .is_err()
        );
        assert!(Caller::open().may(&Permission::ManageKeys).is_ok());
    }

    #[test]
    fn a_spent_budget_says_how_long_to_wait() {
        let gate = Gate::new(Duration::from_secs(1), 1.0, 2.0);
        assert!(gate.admit("k").is_ok());
        assert!(gate.admit("k").is_ok());
        let wait = gate.admit("k").unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(gate.admit("other").is_ok());
    }
}
