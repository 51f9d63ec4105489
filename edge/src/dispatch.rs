//! ZeroMQ requests: a JSON object `{"action": ..., ...}` in, exactly one
//! JSON reply out, `{"ok": true, ...}` or `{"ok": false, "error": {...}}`.
//!
//! [`ROUTES`] maps action names (and their aliases, matched without regard
//! to case) to handlers. A handler reads its fields from the [`Request`],
//! calls the command layer and returns the reply's fields; every rule and
//! validation stays in the command layer, the edge only reads fields.

use bibliomq_core::commands::{Commands, TaskSubmission};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::request::{FeedChange, Reply, Request};
use crate::{
    admin, follow, holds, library,
    outcome::{self, Progress},
    reply::{Answer, TaskReply, ZmqReply},
    wire::{WireError, to_text},
};

/// A handler: owned arguments, so it can run in a task of its own.
pub type Handler = fn(Commands, Request) -> BoxFuture<'static, Reply>;

/// One action: its names (lower case; the first is the canonical one) and its handler.
pub struct Route {
    pub names: &'static [&'static str],
    pub handler: Handler,
}

/// Every action the ZeroMQ edge answers.
pub const ROUTES: &[Route] = &[
    Route {
        names: &["task"],
        handler: |c, r| Box::pin(task(c, r)),
    },
    Route {
        names: &["task_batch", "tasks"],
        handler: |c, r| Box::pin(task_batch(c, r)),
    },
    Route {
        names: &["task_status"],
        handler: |c, r| Box::pin(task_status(c, r)),
    },
    Route {
        names: &["task_cancel"],
        handler: |c, r| Box::pin(task_cancel(c, r)),
    },
    // Library circulation (see `crate::library`); the Spanish names older
    // clients send are aliases.
    Route {
        names: &["query", "consulta"],
        handler: |c, r| Box::pin(library::query(c, r)),
    },
    Route {
        names: &["query_isbn"],
        handler: |c, r| Box::pin(library::query_isbn(c, r)),
    },
    Route {
        names: &["query_title"],
        handler: |c, r| Box::pin(library::query_title(c, r)),
    },
    Route {
        names: &["loan", "prestamo", "préstamo"],
        handler: |c, r| Box::pin(library::loan(c, r)),
    },
    Route {
        names: &["renew", "renovacion", "renovación"],
        handler: |c, r| Box::pin(library::renew(c, r)),
    },
    Route {
        names: &["return", "devolucion", "devolución"],
        handler: |c, r| Box::pin(library::return_loan(c, r)),
    },
    // Catalogue and patron administration (see `crate::admin`).
    Route {
        names: &["title_add"],
        handler: |c, r| Box::pin(admin::add_title(c, r)),
    },
    Route {
        names: &["copy_add"],
        handler: |c, r| Box::pin(admin::add_copy(c, r)),
    },
    Route {
        names: &["copy_withdraw"],
        handler: |c, r| Box::pin(admin::withdraw_copy(c, r)),
    },
    Route {
        names: &["patron_add"],
        handler: |c, r| Box::pin(admin::add_patron(c, r)),
    },
    Route {
        names: &["patron_block"],
        handler: |c, r| Box::pin(admin::block_patron(c, r)),
    },
    Route {
        names: &["patron_unblock"],
        handler: |c, r| Box::pin(admin::unblock_patron(c, r)),
    },
    Route {
        names: &["patron_show"],
        handler: |c, r| Box::pin(admin::show_patron(c, r)),
    },
    Route {
        names: &["patron_list"],
        handler: |c, r| Box::pin(admin::list_patrons(c, r)),
    },
    // Holds (see `crate::holds`).
    Route {
        names: &["hold_place"],
        handler: |c, r| Box::pin(holds::place(c, r)),
    },
    Route {
        names: &["hold_cancel"],
        handler: |c, r| Box::pin(holds::cancel(c, r)),
    },
    Route {
        names: &["holds"],
        handler: |c, r| Box::pin(holds::list(c, r)),
    },
    Route {
        names: &["me", "quien_soy", "quién_soy"],
        handler: |c, r| Box::pin(me(c, r)),
    },
    // The keyed event feed (see `crate::follow`).
    Route {
        names: &["follow"],
        handler: |c, r| Box::pin(follow::follow(c, r)),
    },
    Route {
        names: &["unfollow"],
        handler: |c, r| Box::pin(follow::unfollow(c, r)),
    },
];

/// The fields a request may carry its API key in (`clave` for the clients
/// that speak Spanish). Taken out of the request before any handler sees
/// it, so it is never echoed nor logged.
pub const KEY_FIELDS: [&str; 2] = ["key", "clave"];

/// Finds the route for `action`: trimmed, any case, any alias.
pub fn route(action: &str) -> Option<&'static Route> {
    let wanted = action.trim().to_lowercase();
    ROUTES.iter().find(|r| r.names.contains(&wanted.as_str()))
}

/// One request answered: the reply (JSON text), and what a `follow` or
/// `unfollow` asks of the socket beyond it.
pub struct Handled {
    pub reply: String,
    pub feed: Option<FeedChange>,
}

/// Answers one request frame; never fails, every outcome is a reply.
pub async fn handle(commands: Commands, body: &[u8], deadline: Instant) -> Handled {
    let started = std::time::Instant::now();
    let metrics = commands.metrics().clone();
    let (action, outcome, reply, feed) = answer(commands, body, deadline).await;
    metrics.edge_request("zmq", action, outcome, started.elapsed());
    Handled { reply, feed }
}

/// The reply, with the action (canonical name, `unknown` when there is none)
/// and the outcome (`ok` or the error code) it is counted under, and what
/// the handler left for the socket.
async fn answer(
    commands: Commands,
    body: &[u8],
    deadline: Instant,
) -> (&'static str, &'static str, String, Option<FeedChange>) {
    let mut request = match Request::parse(body, deadline) {
        Ok(r) => r,
        Err(e) => return ("unknown", e.code, error_reply(e), None),
    };
    // Who is asking, before anything else: the same check as every transport's.
    let mut key = None;
    for name in KEY_FIELDS {
        match request.fields.remove(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(k)) => key = Some(k),
            Some(_) => {
                let e = WireError::new("invalid_field", format!("`{name}` must be a string"))
                    .with_field(name);
                return ("unknown", e.code, error_reply(e), None);
            }
        }
    }
    let commands = match commands.authenticate(key.as_deref()).await {
        Ok(caller) => commands.acting_as(caller),
        Err(e) => {
            let e = WireError::from(e);
            return ("unknown", e.code, error_reply(e), None);
        }
    };
    let Some(route) = route(&request.action) else {
        let known: Vec<&str> = ROUTES
            .iter()
            .flat_map(|r| r.names.iter().copied())
            .collect();
        let e = WireError::new(
            "unknown_action",
            format!(
                "unknown action `{}`; known actions: {}",
                request.action,
                known.join(", ")
            ),
        )
        .with_field("action");
        return ("unknown", e.code, error_reply(e), None);
    };
    let span = tracing::info_span!(
        "zmq_request",
        action = route.names[0],
        correlation_id = %request.correlation_id
    );
    let slot = request.feed.clone();
    let reply = tracing::Instrument::instrument((route.handler)(commands, request), span).await;
    let action = route.names[0];
    match reply {
        Ok(answer) => (action, "ok", ok_reply(answer), slot.take()),
        Err(e) => (action, e.code, error_reply(e), None),
    }
}

/// `{"ok": true, ...answer}`, `ok` first.
pub fn ok_reply(answer: Answer) -> String {
    to_text(&ZmqReply::answered(answer))
}

/// `{"ok": false, "error": {"code", "message", ...}}`.
pub fn error_reply(error: WireError) -> String {
    to_text(&ZmqReply::failed(error))
}

/// `{"action": "task", "task": "fib", "payload": 30}`, optionally with
/// `"idempotency_key"`, `"timeout_ms"`, `"run_at"` or `"delay_ms"`: submit, wait up to the task wait
/// timeout, reply with the outcome or the state reached.
async fn task(commands: Commands, request: Request) -> Reply {
    let action = request.str("task")?.to_owned();
    let payload = request
        .fields
        .get("payload")
        .cloned()
        .unwrap_or(Value::Null);
    let submission = TaskSubmission {
        action: action.clone(),
        payload,
        timeout_ms: request.fields.get("timeout_ms").cloned(),
        idempotency_key: request.opt_str(&["idempotency_key"])?,
        run_at: request.fields.get("run_at").cloned(),
        delay_ms: request.fields.get("delay_ms").cloned(),
    };
    let wait = commands
        .settings()
        .edge
        .task_wait_timeout
        .min(request.time_left());
    let progress = outcome::submit_and_wait(&commands, submission, &request.correlation_id, wait)
        .await
        .map_err(|e| {
            let mut e = WireError::from(e);
            // In this request the task's action is named `task`.
            if e.field.as_deref() == Some("action") {
                e.field = Some("task".into());
            }
            e
        })?;
    Ok(match progress {
        Progress::Finished(task) => Answer::Task(TaskReply::from(&*task)),
        Progress::Unfinished(progress) => Answer::TaskProgress(progress),
    })
}

/// `{"action": "task_batch", "tasks": [{"task": "sum", "payload": "1,2"}, ...]}`:
/// up to 1,000 tasks, each as in a `task` request (`task`, `payload`,
/// optionally `idempotency_key`, `timeout_ms`, `run_at`, `delay_ms`). All
/// are queued or none; the reply lists each task (`id`, `action`, `state`)
/// in the order sent, without waiting for them to run. A refused batch
/// answers `invalid_tasks` with `errors` by index.
async fn task_batch(commands: Commands, request: Request) -> Reply {
    let items = match request.fields.get("tasks") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(
                WireError::new("invalid_field", "`tasks` must be an array of tasks")
                    .with_field("tasks"),
            );
        }
        None => {
            return Err(WireError::new("missing_field", "`tasks` is required").with_field("tasks"));
        }
    };
    let items = items.iter().map(batch_item).collect();
    let submitted = commands
        .submit_batch(items, &request.correlation_id)
        .await
        .map_err(|e| {
            let mut e = WireError::from(e);
            // In this request a task's action is named `task`.
            if let Some(bibliomq_core::error::ErrorDetails::Items { errors }) =
                e.details.as_deref_mut()
            {
                for item in errors {
                    if item.field.as_deref() == Some("action") {
                        item.field = Some("task".into());
                    }
                }
            }
            e
        })?;
    Ok(Answer::TaskBatch {
        tasks: submitted
            .iter()
            .map(|t| crate::reply::TaskProgress {
                id: t.id,
                action: t.action,
                state: t.state,
            })
            .collect(),
    })
}

/// One item of a `task_batch`, read as a `task` request reads its fields.
fn batch_item(item: &Value) -> Result<TaskSubmission, bibliomq_core::error::Invalid> {
    use bibliomq_core::error::Invalid;
    let Value::Object(fields) = item else {
        return Err(Invalid::new(
            "invalid_field",
            "each task must be an object with `task` and `payload`",
        ));
    };
    let action = match fields.get("task") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Invalid::field(
                "invalid_field",
                "task",
                "`task` must be a string",
            ));
        }
        None => {
            return Err(Invalid::field(
                "missing_field",
                "task",
                "`task` is required",
            ));
        }
    };
    let idempotency_key = match fields.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Invalid::field(
                "invalid_field",
                "idempotency_key",
                "`idempotency_key` must be a string",
            ));
        }
    };
    Ok(TaskSubmission {
        action,
        payload: fields.get("payload").cloned().unwrap_or(Value::Null),
        timeout_ms: fields.get("timeout_ms").cloned(),
        idempotency_key,
        run_at: fields.get("run_at").cloned(),
        delay_ms: fields.get("delay_ms").cloned(),
    })
}

/// `{"action": "task_status", "id": "..."}`.
async fn task_status(commands: Commands, request: Request) -> Reply {
    let task = commands.task(task_id(&request)?).await?;
    Ok(Answer::Task(TaskReply::from(&task)))
}

/// `{"action": "task_cancel", "id": "..."}`: `state` `cancelled`, or
/// `running` with `stopping: true` while its worker stops it.
async fn task_cancel(commands: Commands, request: Request) -> Reply {
    let cancelled = commands.cancel_task(task_id(&request)?).await?;
    Ok(Answer::Cancelled(cancelled))
}

/// `{"action": "me"}`: who the key is (role, branch, patron).
async fn me(commands: Commands, _request: Request) -> Reply {
    Ok(Answer::Me {
        caller: commands.me()?,
    })
}

/// The `id` field: a task id.
fn task_id(request: &Request) -> Result<Uuid, WireError> {
    let raw = request.str("id")?;
    Uuid::parse_str(raw.trim()).map_err(|_| {
        WireError::new(
            "invalid_task_id",
            format!("`{raw}` is not a task id (a UUID)"),
        )
        .with_field("id")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Request, WireError> {
        Request::parse(body.as_bytes(), Instant::now())
    }

    #[test]
    fn actions_are_found_by_any_alias_in_any_case() {
        for (sent, canonical) in [
            ("task", "task"),
            ("TASK_STATUS", "task_status"),
            ("CONSULTA", "query"),
            ("Prestamo", "loan"),
            ("PRÉSTAMO", "loan"),
            (" renovacion ", "renew"),
            ("DEVOLUCIÓN", "return"),
            ("query_isbn", "query_isbn"),
        ] {
            assert_eq!(route(sent).map(|r| r.names[0]), Some(canonical), "{sent}");
        }
        assert!(route("teleport").is_none());
    }

    #[test]
    fn every_name_is_lower_case_and_used_once() {
        let mut seen = std::collections::HashSet::new();
        for name in ROUTES.iter().flat_map(|r| r.names.iter()) {
            assert_eq!(*name, name.to_lowercase());
            assert!(seen.insert(*name), "{name} is listed twice");
        }
    }

    #[test]
    fn unreadable_requests_say_what_is_wrong() {
        assert_eq!(parse("{\"action\":").unwrap_err().code, "malformed_json");
        assert_eq!(parse("[1, 2]").unwrap_err().code, "invalid_request");
        let missing = parse("{\"task\": \"fib\"}").unwrap_err();
        assert_eq!(
            (missing.code, missing.field.as_deref()),
            ("missing_field", Some("action"))
        );
        assert_eq!(parse("{\"action\": 7}").unwrap_err().code, "invalid_field");
        let big = format!(
            "{{\"action\": \"{}\"}}",
            "x".repeat(crate::request::MAX_REQUEST_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().code, "payload_too_large");
    }

    #[test]
    fn a_usable_correlation_id_is_kept_and_a_bad_one_replaced() {
        let kept = parse(r#"{"action": "task", "correlation_id": "abc-1"}"#).unwrap();
        assert_eq!(kept.correlation_id, "abc-1");
        let replaced = parse(r#"{"action": "task", "correlation_id": "a b\n"}"#).unwrap();
        assert_ne!(replaced.correlation_id, "a b\n");
        assert!(!replaced.correlation_id.is_empty());
    }

    #[test]
    fn replies_put_ok_first_and_errors_in_a_fixed_order() {
        let progress = crate::reply::TaskProgress {
            id: Uuid::nil(),
            action: bibliomq_core::tasks::Action::Fib,
            state: bibliomq_core::tasks::TaskState::Queued,
        };
        assert_eq!(
            ok_reply(Answer::TaskProgress(progress)),
            r#"{"ok":true,"id":"00000000-0000-0000-0000-000000000000","action":"fib","state":"queued"}"#
        );
        assert_eq!(
            error_reply(WireError::new("timeout", "late").with_field("task")),
            r#"{"ok":false,"error":{"code":"timeout","message":"late","field":"task"}}"#
        );
    }

    #[test]
    fn string_fields_are_required_and_typed() {
        let r = parse(r#"{"action": "task_status", "id": 5}"#).unwrap();
        assert_eq!(r.str("id").unwrap_err().code, "invalid_field");
        assert_eq!(r.str("isbn").unwrap_err().code, "missing_field");
    }
}
