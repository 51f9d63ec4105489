//! Library commands: loans (synchronous, over RPC), renewals and returns
//! (asynchronous, over the circulation exchange), and catalogue look-ups.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Commands;
use crate::{
    auth::{Permission, Role},
    batch::{Batcher, Gather},
    broker::{
        Publisher, headers,
        rpc::{RpcClient, RpcError, new_call_id},
        topology,
    },
    config::Branch,
    db::DbFailure,
    error::{CommandError, ErrorDetails, Invalid, TitleCandidate},
    library::{
        BranchCode, Isbn, PatronId,
        message::{
            CIRCULATION_BUNDLE_KIND, CIRCULATION_BUNDLE_MAX, CirculationBundle, CirculationMessage,
            LOAN_BUNDLE_KIND, LOAN_BUNDLE_MAX, LoanBundle, LoanRequestMessage, OperationKind,
            OperationState,
        },
        outcome::{LoanMade, LoanOutcome, Refusal},
        store::{
            self, BookSummary, BookView, LoanLookup, LoanView, OperationView, PatronLoans,
            PendingRequest,
        },
    },
};

/// Group-commits the `pending` rows of renewals and returns.
pub(super) type RequestInserter = Batcher<PendingRequest, Option<store::OpenLoan>, DbFailure>;

/// How long a recording of renewals and returns waits for more to join it
/// while they come together (requests that come one at a time go at once).
/// A recording costs PostgreSQL about as much for one request as for a
/// few: at 2,000 operations a second they came about 2 to a call, and
/// waiting took PostgreSQL's share from 0.32–0.35 to 0.29–0.32 ms an
/// operation (README item 27), for a few milliseconds more before the
/// `202`.
const RECORD_GATHER: Duration = Duration::from_millis(5);

pub(super) fn request_inserter(pool: deadpool_postgres::Pool) -> RequestInserter {
    Batcher::spawn_gathering(
        256,
        crate::batch::IN_FLIGHT,
        Gather::WhenBusy(RECORD_GATHER),
        move |requests: Vec<PendingRequest>| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await?;
                // A deadlock with a worker's batch is resolved by PostgreSQL
                // aborting one side; trying again is then safe.
                let mut tries = 0;
                loop {
                    match store::record_requests(&client, &requests).await {
                        Err(e) if tries < 3 && crate::db::is_contention(&e) => tries += 1,
                        other => return Ok(other?),
                    }
                }
            }
        },
    )
}

/// A renewal or return recorded as `pending`, on its way to the workers.
pub(super) struct CirculationOut {
    operation_id: Uuid,
    /// The serialized [`CirculationMessage`].
    body: Vec<u8>,
    /// `renewal.<branch>` or `return.<branch>`.
    routing_key: String,
    correlation_id: String,
}

/// Publishes recorded renewals and returns: one that comes alone goes
/// alone, at once; those that come while earlier ones wait for their
/// confirms go together, in a bundle for each routing key. Each answers
/// when the message that carries it is confirmed, or with why not.
pub(super) type CirculationPublisher =
    Batcher<CirculationOut, Result<(), String>, std::convert::Infallible>;

pub(super) fn circulation_publisher(publisher: Publisher) -> CirculationPublisher {
    Batcher::spawn(
        512,
        crate::batch::IN_FLIGHT,
        move |ops: Vec<CirculationOut>| {
            let publisher = publisher.clone();
            async move { Ok(publish_circulation(&publisher, &ops).await) }
        },
    )
}

/// Publishes `ops` on the circulation exchange, those of one routing key
/// in bundles of up to [`CIRCULATION_BUNDLE_MAX`] and one left alone as
/// its own message, their confirms awaited together; answers in order.
async fn publish_circulation(
    publisher: &Publisher,
    ops: &[CirculationOut],
) -> Vec<Result<(), String>> {
    let mut by_key: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match by_key.iter_mut().find(|(key, _)| *key == op.routing_key) {
            Some((_, members)) => members.push(i),
            None => by_key.push((op.routing_key.as_str(), vec![i])),
        }
    }
    let mut messages = Vec::new();
    let mut carried = Vec::new();
    for (key, members) in &by_key {
        for chunk in members.chunks(CIRCULATION_BUNDLE_MAX) {
            let (body, props) = match chunk {
                [one] => {
                    let op = &ops[*one];
                    let id = op.operation_id.to_string();
                    let props = headers::persistent_json(&id, &op.correlation_id);
                    (op.body.clone(), props)
                }
                _ => {
                    let correlations: Vec<&str> = chunk
                        .iter()
                        .map(|&i| ops[i].correlation_id.as_str())
                        .collect();
                    let body = CirculationBundle::body(
                        chunk.iter().map(|&i| ops[i].body.as_slice()),
                        &correlations,
                    );
                    let props =
                        headers::persistent_json(&Uuid::now_v7().to_string(), correlations[0])
                            .with_type(CIRCULATION_BUNDLE_KIND.into());
                    (body, props)
                }
            };
            messages.push(((*key).to_owned(), body, props));
            carried.push(chunk);
        }
    }
    let published = publisher
        .publish_many(topology::CIRCULATION_EXCHANGE, &messages, true)
        .await;
    let mut answers: Vec<Result<(), String>> = vec![Ok(()); ops.len()];
    for (chunk, result) in carried.into_iter().zip(published) {
        let answer = result.map_err(|e| e.to_string());
        for &i in chunk {
            answers[i] = answer.clone();
        }
    }
    answers
}

/// One loan request on its way to the loan workers, and until when its
/// caller waits.
pub(super) struct LoanCall {
    operation_id: Uuid,
    /// The serialized [`LoanRequestMessage`].
    body: Vec<u8>,
    correlation_id: String,
    deadline: tokio::time::Instant,
}

/// Sends loan requests: one that comes alone goes alone, at once; those
/// that come while earlier ones wait for their answers go together, in
/// bundles of up to [`LOAN_BUNDLE_MAX`], each request still its own call
/// with its own answer, which comes on the receiver each submission gets.
pub(super) type LoanCaller = Batcher<LoanCall, LoanReply, std::convert::Infallible>;

/// Where a sent loan request's answer comes.
pub(super) type LoanReply = tokio::sync::oneshot::Receiver<Result<Vec<u8>, RpcError>>;

/// Bundles under way at once: as many as a loan worker's transactions
/// under way ([`crate::batch::IN_FLIGHT`]), so that while the worker
/// settles one bundle the next is on its way, and what comes meanwhile
/// forms the bundle after.
const LOAN_CALLS_IN_FLIGHT: usize = crate::batch::IN_FLIGHT;

/// How long a bundle holds its place among those under way while it waits
/// for its answers. Answers come within a few tens of milliseconds; a
/// worker that hangs with a bundle (its connection still open) must not
/// hold back every loan behind it until the loan timeout, so past this the
/// bundle waits on without its place and the next one goes out.
const LOAN_PLACE_HOLD: Duration = Duration::from_millis(100);

pub(super) fn loan_caller(rpc: RpcClient) -> LoanCaller {
    Batcher::spawn(
        LOAN_BUNDLE_MAX,
        LOAN_CALLS_IN_FLIGHT,
        move |calls: Vec<LoanCall>| {
            let rpc = rpc.clone();
            async move {
                let (senders, receivers): (Vec<_>, Vec<_>) = (0..calls.len())
                    .map(|_| tokio::sync::oneshot::channel())
                    .unzip();
                let asked = tokio::spawn(async move {
                    let answers = call_loans(&rpc, calls).await;
                    for (tx, answer) in senders.into_iter().zip(answers) {
                        let _ = tx.send(answer);
                    }
                });
                let _ = tokio::time::timeout(LOAN_PLACE_HOLD, asked).await;
                Ok(receivers)
            }
        },
    )
}

/// Asks for `calls`, alone or as one bundle; answers in their order.
async fn call_loans(rpc: &RpcClient, calls: Vec<LoanCall>) -> Vec<Result<Vec<u8>, RpcError>> {
    let now = tokio::time::Instant::now();
    // A caller who gave up while its request waited here is not asked for.
    let mut answers: Vec<Result<Vec<u8>, RpcError>> =
        vec![Err(RpcError::Timeout(Duration::ZERO)); calls.len()];
    let live: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].deadline > now)
        .collect();
    let Some(latest) = live.iter().map(|&i| calls[i].deadline).max() else {
        return answers;
    };
    let timeout = latest - now;
    // A request nobody waits for any more expires in the queue instead of
    // making a loan behind the caller's back.
    let expiration = timeout.as_millis().max(1).to_string();
    if let [one] = live.as_slice() {
        let call = &calls[*one];
        let properties =
            headers::persistent_json(&call.operation_id.to_string(), &call.correlation_id)
                .with_expiration(expiration.into());
        answers[*one] = rpc
            .call(
                topology::RPC_EXCHANGE,
                topology::LOAN_REQUEST_KEY,
                &call.body,
                properties,
                timeout,
            )
            .await;
        return answers;
    }
    let ids: Vec<String> = live.iter().map(|_| new_call_id()).collect();
    let body = LoanBundle::body(
        live.iter().map(|&i| calls[i].body.as_slice()),
        &ids,
        live.iter().map(|&i| calls[i].correlation_id.as_str()),
    );
    let first = &calls[live[0]];
    let properties = headers::persistent_json(&Uuid::now_v7().to_string(), &first.correlation_id)
        .with_type(LOAN_BUNDLE_KIND.into())
        .with_expiration(expiration.into());
    let replies = rpc
        .call_many(
            topology::RPC_EXCHANGE,
            topology::LOAN_REQUEST_KEY,
            &body,
            properties,
            &ids,
            timeout,
        )
        .await;
    for (&i, reply) in live.iter().zip(replies) {
        answers[i] = reply;
    }
    answers
}

/// Most words a title search takes.
pub const SEARCH_MAX_WORDS: usize = 8;
/// Most results a title search returns.
pub const SEARCH_MAX_LIMIT: i64 = 100;

/// A loan as asked for: a title by ISBN or by title words, for a patron, at a branch.
#[derive(Debug, Clone, Default)]
pub struct LoanRequest {
    pub isbn: Option<String>,
    pub title: Option<String>,
    pub patron: String,
    pub branch: String,
    /// The client's key for safe retries; one is made when absent.
    pub idempotency_key: Option<String>,
}

/// A loan that was made (or, with `replayed`, made earlier for the same key).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoanReceipt {
    pub loan: LoanMade,
    pub replayed: bool,
    pub idempotency_key: String,
}

/// A renewal or return: the loan by id, or by ISBN and patron; at a branch.
#[derive(Debug, Clone, Default)]
pub struct CirculationRequest {
    pub loan_id: Option<String>,
    pub isbn: Option<String>,
    pub patron: Option<String>,
    pub branch: String,
}

/// A renewal or return accepted for processing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AcceptedOperation)]
pub struct OperationAccepted {
    pub operation_id: Uuid,
    #[schema(schema_with = crate::library::message::renewal_or_return)]
    pub kind: OperationKind,
    #[schema(schema_with = crate::library::message::pending)]
    pub state: OperationState,
    pub loan_id: Uuid,
    pub branch: String,
    /// Renewals: the due date the loan will have if the renewal is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub tentative_due_at: Option<DateTime<Utc>>,
}

fn check_idempotency_key(key: Option<&str>) -> Result<String, Invalid> {
    match key {
        None => Ok(Uuid::new_v4().to_string()),
        Some(k) => valid_idempotency_key(k),
    }
}

/// A client's Idempotency-Key (loans and task submissions alike): 1 to 200
/// visible ASCII characters.
pub(super) fn valid_idempotency_key(key: &str) -> Result<String, Invalid> {
    if !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(key.to_owned())
    } else {
        Err(Invalid::field(
            "invalid_idempotency_key",
            "Idempotency-Key",
            "an idempotency key has 1 to 200 visible ASCII characters",
        ))
    }
}

impl Commands {
    pub fn branches(&self) -> &[Branch] {
        &self.settings().library.branches
    }

    pub(super) fn branch(&self, raw: &str) -> Result<BranchCode, Invalid> {
        BranchCode::parse(raw, &self.settings().library)
    }

    /// Lends a copy, or says why not. Waits for the loan worker's answer.
    #[tracing::instrument(skip_all, fields(patron = %req.patron, branch = %req.branch))]
    pub async fn loan(
        &self,
        req: LoanRequest,
        correlation_id: &str,
    ) -> Result<LoanReceipt, CommandError> {
        let answer = self.make_loan(req, correlation_id).await;
        // Counted here rather than in the worker: only the caller's side sees
        // timeouts and requests that never reached the worker.
        let outcome = match &answer {
            Ok(r) if r.replayed => "replayed",
            Ok(_) => "loaned",
            Err(CommandError::Invalid(_)) => "invalid",
            Err(e) => e.code(),
        };
        self.metrics().loan_request(outcome);
        answer
    }

    async fn make_loan(
        &self,
        req: LoanRequest,
        correlation_id: &str,
    ) -> Result<LoanReceipt, CommandError> {
        let patron = PatronId::parse(&req.patron)?;
        let branch = self.branch(&req.branch)?;
        self.authorize(Permission::Lend {
            patron: patron.as_str(),
            branch: branch.as_str(),
        })?;
        let key = check_idempotency_key(req.idempotency_key.as_deref())?;
        let isbn = self
            .isbn_or_title(req.isbn.as_deref(), req.title.as_deref())
            .await?;

        let now = self.clock().now();
        let fingerprint = hex::encode(Sha256::digest(format!("{isbn}|{patron}|{branch}")));
        let message = LoanRequestMessage {
            operation_id: Uuid::now_v7(),
            idempotency_key: key.clone(),
            fingerprint,
            isbn: isbn.to_string(),
            patron: patron.to_string(),
            branch: branch.to_string(),
            requested_at: now,
        };
        let body = serde_json::to_vec(&message).map_err(anyhow::Error::from)?;
        let timeout = self.settings().library.loan_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let call = LoanCall {
            operation_id: message.operation_id,
            body,
            correlation_id: correlation_id.to_owned(),
            deadline,
        };
        let timed_out = || {
            CommandError::Timeout(format!(
                "no answer from the loan service within {} ms; retry with the same Idempotency-Key ({key}) to learn whether the loan was made",
                timeout.as_millis()
            ))
        };
        let stopped = || CommandError::Unavailable("the loan sender stopped".to_owned());
        let answer = async {
            let reply = self
                .inner
                .loan_calls
                .submit(call)
                .await
                .map_err(|_| stopped())?;
            reply.await.map_err(|_| stopped())
        };
        let reply = tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| timed_out())??
            .map_err(|e| match e {
                RpcError::NotSent(e) => CommandError::publish_failed(e),
                RpcError::Timeout(_) => timed_out(),
                RpcError::Interrupted => CommandError::Unavailable(format!(
                    "the connection to the message broker broke while waiting; retry with the same Idempotency-Key ({key})"
                )),
            })?;
        let reply: LoanOutcome = serde_json::from_slice(&reply)
            .map_err(|e| anyhow::anyhow!("unreadable loan reply: {e}"))?;
        loan_outcome(reply, key)
    }

    /// The book a request names, by ISBN or by title words (one of them).
    pub(super) async fn isbn_or_title(
        &self,
        isbn: Option<&str>,
        title: Option<&str>,
    ) -> Result<Isbn, CommandError> {
        match (isbn, title) {
            (Some(_), Some(_)) => Err(Invalid::new(
                "isbn_or_title",
                "give either an isbn or a title, not both",
            )
            .into()),
            (None, None) => Err(Invalid::field(
                "missing_field",
                "isbn",
                "give the isbn (or the title) of the book",
            )
            .into()),
            (Some(isbn), None) => Ok(Isbn::parse(isbn)?),
            (None, Some(title)) => self.resolve_title(title).await,
        }
    }

    async fn resolve_title(&self, title: &str) -> Result<Isbn, CommandError> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > 300 || title.chars().any(char::is_control) {
            return Err(Invalid::field(
                "invalid_title",
                "title",
                "give 1 to 300 characters of the title",
            )
            .into());
        }
        let client = self.pool().get().await?;
        let found = store::resolve_title(&**client, title).await?;
        match found.as_slice() {
            [] => Err(CommandError::not_found(
                "title_not_found",
                format!("no title matching `{title}` in the catalogue"),
            )),
            [(isbn, _)] => Ok(Isbn::parse(isbn)?),
            many => Err(CommandError::Conflict {
                code: "ambiguous_title",
                message: format!(
                    "`{title}` matches {} titles; give the ISBN or more words",
                    many.len()
                ),
                details: Some(ErrorDetails::Candidates {
                    candidates: many
                        .iter()
                        .map(|(isbn, title)| TitleCandidate {
                            isbn: isbn.clone(),
                            title: title.clone(),
                        })
                        .collect(),
                }),
            }),
        }
    }

    /// Accepts a renewal: answered at once, applied by a worker.
    pub async fn renew(
        &self,
        req: CirculationRequest,
        correlation_id: &str,
    ) -> Result<OperationAccepted, CommandError> {
        self.circulate(OperationKind::Renewal, req, correlation_id)
            .await
    }

    /// Accepts a return: answered at once, applied by a worker.
    pub async fn return_loan(
        &self,
        req: CirculationRequest,
        correlation_id: &str,
    ) -> Result<OperationAccepted, CommandError> {
        self.circulate(OperationKind::Return, req, correlation_id)
            .await
    }

    #[tracing::instrument(skip_all, fields(kind = kind.as_str(), branch = %req.branch))]
    async fn circulate(
        &self,
        kind: OperationKind,
        req: CirculationRequest,
        correlation_id: &str,
    ) -> Result<OperationAccepted, CommandError> {
        let branch = self.branch(&req.branch)?;
        let (loan_id, isbn, patron) = match (
            req.loan_id.as_deref(),
            req.isbn.as_deref(),
            req.patron.as_deref(),
        ) {
            (Some(id), _, _) => {
                let id = Uuid::parse_str(id.trim()).map_err(|_| {
                    Invalid::field(
                        "invalid_loan_id",
                        "loan_id",
                        format!("`{id}` is not a loan id"),
                    )
                })?;
                (Some(id), None, None)
            }
            (None, Some(isbn), Some(patron)) => (
                None,
                Some(Isbn::parse(isbn)?),
                Some(PatronId::parse(patron)?),
            ),
            (None, None, _) => {
                return Err(Invalid::field(
                    "missing_field",
                    "isbn",
                    "give the loan_id, or the isbn and the patron",
                )
                .into());
            }
            (None, Some(_), None) => {
                return Err(Invalid::field(
                    "missing_field",
                    "patron",
                    "give the patron whose loan it is",
                )
                .into());
            }
        };

        match kind {
            OperationKind::Return => self.authorize(Permission::Return {
                branch: branch.as_str(),
            })?,
            _ => {
                let owner = match (&patron, loan_id) {
                    (Some(p), _) => Some(p.to_string()),
                    // A patron key renews its own loans only: whose is it?
                    (None, Some(id)) if self.caller().is_some_and(|c| c.role == Role::Patron) => {
                        let client = self.pool().get().await?;
                        match store::find_loan_by_id(&**client, id).await? {
                            LoanLookup::Found(open) => Some(open.patron),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                self.authorize(Permission::Renew {
                    patron: owner.as_deref(),
                    branch: branch.as_str(),
                })?
            }
        };

        // Find the open loan and record the operation as pending, in one
        // statement shared with whatever other requests arrive meanwhile.
        let id = Uuid::now_v7();
        let now = self.clock().now();
        let recorded = self
            .inner
            .request_inserts
            .submit(PendingRequest {
                id,
                kind,
                loan_id,
                isbn: isbn.as_ref().map(ToString::to_string),
                patron: patron.as_ref().map(ToString::to_string),
                branch: branch.to_string(),
                requested_at: now,
                correlation_id: correlation_id.to_owned(),
            })
            .await?;
        let Some(loan) = recorded else {
            return Err(self
                .why_no_open_loan(loan_id, isbn.as_ref(), patron.as_ref())
                .await);
        };

        let message = CirculationMessage {
            operation_id: id,
            kind,
            loan_id: loan.loan_id,
            isbn: loan.isbn.clone(),
            patron: loan.patron.clone(),
            branch: branch.to_string(),
            requested_at: now,
        };
        let published = self
            .inner
            .circulation_publishes
            .submit(CirculationOut {
                operation_id: id,
                body: serde_json::to_vec(&message).map_err(anyhow::Error::from)?,
                routing_key: format!("{}.{branch}", kind.as_str()),
                correlation_id: correlation_id.to_owned(),
            })
            .await
            .unwrap_or_else(|_| Err("the publisher stopped".to_owned()));
        if let Err(e) = published {
            if let Ok(client) = self.pool().get().await
                && let Err(e) = store::delete_pending(&**client, id).await
            {
                tracing::error!(error = %e, "could not withdraw the unpublished operation");
            }
            return Err(CommandError::publish_failed(e));
        }
        Ok(OperationAccepted {
            operation_id: id,
            kind,
            state: OperationState::Pending,
            loan_id: loan.loan_id,
            branch: branch.to_string(),
            tentative_due_at: (kind == OperationKind::Renewal)
                .then(|| self.rules().due_after_renewal(loan.due_at)),
        })
    }

    /// Says why a renewal or return found no open loan.
    async fn why_no_open_loan(
        &self,
        loan_id: Option<Uuid>,
        isbn: Option<&Isbn>,
        patron: Option<&PatronId>,
    ) -> CommandError {
        let lookup = async {
            let client = self.pool().get().await?;
            Ok::<_, CommandError>(match (loan_id, isbn, patron) {
                (Some(id), _, _) => store::find_loan_by_id(&**client, id).await?,
                (None, Some(isbn), Some(patron)) => {
                    store::find_open_loan(&**client, isbn.as_str(), patron.as_str()).await?
                }
                _ => LoanLookup::NoSuchLoan,
            })
        };
        match lookup.await {
            Err(e) => e,
            Ok(LoanLookup::NoSuchPatron) => {
                CommandError::not_found("patron_not_found", "no such patron")
            }
            Ok(LoanLookup::NoSuchTitle) => CommandError::not_found(
                "title_not_found",
                "no title with that ISBN in the catalogue",
            ),
            Ok(LoanLookup::Closed) => {
                CommandError::conflict("not_on_loan", "that loan is already closed")
            }
            // Found: it closed or opened in between; say what was asked.
            Ok(LoanLookup::NoSuchLoan | LoanLookup::Found(_)) => match loan_id {
                Some(id) => {
                    CommandError::not_found("loan_not_found", format!("no loan with id {id}"))
                }
                None => CommandError::not_found(
                    "loan_not_found",
                    "no open loan of that book for that patron",
                ),
            },
        }
    }

    pub async fn operation(&self, id: Uuid) -> Result<OperationView, CommandError> {
        self.authorize_role(Permission::ReadOperation { patron: "" })?;
        let client = self.pool().get().await?;
        let op = store::operation(&**client, id).await?.ok_or_else(|| {
            CommandError::not_found("operation_not_found", format!("no operation with id {id}"))
        })?;
        self.authorize(Permission::ReadOperation {
            patron: op.patron.as_deref().unwrap_or_default(),
        })?;
        Ok(op)
    }

    pub async fn book(&self, isbn: &str) -> Result<BookView, CommandError> {
        self.authorize(Permission::Search)?;
        let isbn = Isbn::parse(isbn)?;
        let client = self.pool().get().await?;
        store::book(&**client, isbn.as_str()).await?.ok_or_else(|| {
            CommandError::not_found(
                "title_not_found",
                format!("no title with ISBN {isbn} in the catalogue"),
            )
        })
    }

    /// Titles containing every word of `query`, ignoring case and accents.
    pub async fn search_books(
        &self,
        query: &str,
        limit: Option<i64>,
    ) -> Result<Vec<BookSummary>, CommandError> {
        self.authorize(Permission::Search)?;
        let words: Vec<String> = query.split_whitespace().map(str::to_owned).collect();
        if words.is_empty()
            || words.len() > SEARCH_MAX_WORDS
            || words
                .iter()
                .any(|w| w.chars().count() > 100 || w.chars().any(char::is_control))
        {
            return Err(Invalid::field(
                "invalid_query",
                "title",
                format!("give 1 to {SEARCH_MAX_WORDS} words of the title"),
            )
            .into());
        }
        let limit = limit.unwrap_or(20);
        if !(1..=SEARCH_MAX_LIMIT).contains(&limit) {
            return Err(Invalid::field(
                "invalid_limit",
                "limit",
                format!("limit must be from 1 to {SEARCH_MAX_LIMIT}"),
            )
            .into());
        }
        let client = self.pool().get().await?;
        Ok(store::search(&**client, &words, limit).await?)
    }

    pub async fn patron_loans(
        &self,
        patron: &str,
        include_returned: bool,
    ) -> Result<PatronLoans, CommandError> {
        let patron = PatronId::parse(patron)?;
        self.authorize(Permission::ReadLoans {
            patron: patron.as_str(),
        })?;
        let client = self.pool().get().await?;
        let now = self.clock().now();
        store::patron_loans(
            &**client,
            patron.as_str(),
            include_returned,
            now,
            &self.rules(),
        )
        .await?
        .ok_or_else(|| {
            CommandError::not_found("patron_not_found", format!("no patron with id {patron}"))
        })
    }

    pub async fn loan_view(&self, id: Uuid) -> Result<LoanView, CommandError> {
        self.authorize_role(Permission::ReadLoans { patron: "" })?;
        let client = self.pool().get().await?;
        let loan = store::loan(&**client, id, self.clock().now())
            .await?
            .ok_or_else(|| {
                CommandError::not_found("loan_not_found", format!("no loan with id {id}"))
            })?;
        self.authorize(Permission::ReadLoans {
            patron: &loan.patron,
        })?;
        Ok(loan)
    }
}

/// What a refused loan's error carries: what the refusal is about (when a
/// copy may come back, the loan limit) and the key to retry with.
fn refusal_details(refusal: &Refusal, idempotency_key: String) -> ErrorDetails {
    match refusal {
        Refusal::NotAvailable {
            earliest_due_at, ..
        } => ErrorDetails::NotAvailable {
            earliest_due_at: *earliest_due_at,
            idempotency_key,
        },
        Refusal::LoanLimitReached {
            open_loans,
            max_loans,
            ..
        } => ErrorDetails::LoanLimitReached {
            open_loans: *open_loans,
            max_loans: *max_loans,
            idempotency_key,
        },
        Refusal::PatronBlocked { patron, reason } => ErrorDetails::PatronBlocked {
            patron: patron.clone(),
            reason: reason.clone(),
            idempotency_key,
        },
        _ => ErrorDetails::RefusedLoan { idempotency_key },
    }
}

/// Turns the loan worker's reply into the command's answer.
fn loan_outcome(reply: LoanOutcome, key: String) -> Result<LoanReceipt, CommandError> {
    match reply {
        LoanOutcome::Loaned { loan, replayed } => Ok(LoanReceipt {
            loan,
            replayed,
            idempotency_key: key,
        }),
        LoanOutcome::Rejected(refusal) => Err(CommandError::Conflict {
            code: refusal.code(),
            message: refusal.message(),
            details: Some(refusal_details(&refusal, key)),
        }),
        LoanOutcome::NotFound(refusal) => Err(CommandError::NotFound {
            code: refusal.code(),
            message: refusal.message(),
        }),
        LoanOutcome::Error => Err(CommandError::Unavailable(format!(
            "the loan service could not reach its database; nothing was lent. Retry with the same Idempotency-Key ({key})"
        ))),
    }
}
