//! Library actions over ZeroMQ: look-ups, loans, renewals and returns,
//! each a straight call of the command layer. Field names have the Spanish
//! aliases older clients send (`titulo`, `usuario`/`socio`, `sede`/`sucursal`).

use std::time::Duration;

use bibliomq_core::{
    answers::BookSearch,
    commands::{CirculationRequest, Commands, LoanRequest, OperationAccepted},
    library::message::OperationState,
};
use serde_json::Value;

use crate::{
    reply::{Answer, BookReply, OperationReply},
    request::{Reply, Request},
    wire::WireError,
};

const ISBN: &[&str] = &["isbn"];
const TITLE: &[&str] = &["title", "titulo", "título"];
const PATRON: &[&str] = &["patron", "usuario", "socio"];
const BRANCH: &[&str] = &["branch", "sede", "sucursal"];

/// `CONSULTA`: by `isbn` (the book with its copies) or by `title` (matching titles).
pub async fn query(commands: Commands, request: Request) -> Reply {
    if request.opt_str(ISBN)?.is_some() {
        query_isbn(commands, request).await
    } else if request.opt_str(TITLE)?.is_some() {
        query_title(commands, request).await
    } else {
        Err(
            WireError::new("missing_field", "give the `isbn` or the `title` to look up")
                .with_field("isbn"),
        )
    }
}

pub async fn query_isbn(commands: Commands, request: Request) -> Reply {
    let isbn = request.str_any(ISBN)?;
    let book = commands.book(&isbn).await?;
    Ok(Answer::Book(BookReply { book }))
}

pub async fn query_title(commands: Commands, request: Request) -> Reply {
    let title = request.str_any(TITLE)?;
    let books = commands.search_books(&title, None).await?;
    Ok(Answer::Books(BookSearch {
        query: title,
        books,
    }))
}

/// `PRESTAMO`: answered at once — the loan, or why not.
pub async fn loan(commands: Commands, request: Request) -> Reply {
    let receipt = commands
        .loan(
            LoanRequest {
                isbn: request.opt_str(ISBN)?,
                title: request.opt_str(TITLE)?,
                patron: request.str_any(PATRON)?,
                branch: request.str_any(BRANCH)?,
                idempotency_key: request.opt_str(&["idempotency_key"])?,
            },
            &request.correlation_id,
        )
        .await?;
    Ok(Answer::Loan(receipt))
}

fn circulation(request: &Request) -> Result<CirculationRequest, WireError> {
    Ok(CirculationRequest {
        loan_id: request.opt_str(&["loan_id"])?,
        isbn: request.opt_str(ISBN)?,
        patron: request.opt_str(PATRON)?,
        branch: request.str_any(BRANCH)?,
    })
}

/// `RENOVACION`: accepted at once; with `"wait": true`, answered once applied or rejected.
pub async fn renew(commands: Commands, request: Request) -> Reply {
    let accepted = commands
        .renew(circulation(&request)?, &request.correlation_id)
        .await?;
    settle(&commands, &request, accepted).await
}

/// `DEVOLUCION`: like [`renew`].
pub async fn return_loan(commands: Commands, request: Request) -> Reply {
    let accepted = commands
        .return_loan(circulation(&request)?, &request.correlation_id)
        .await?;
    settle(&commands, &request, accepted).await
}

/// The accepted operation; with `wait`, followed until a worker settles it
/// (or the reply is due, when it is reported still `pending`).
async fn settle(commands: &Commands, request: &Request, accepted: OperationAccepted) -> Reply {
    let wait = matches!(request.fields.get("wait"), Some(Value::Bool(true)));
    if !wait {
        return Ok(Answer::Accepted(accepted));
    }
    let deadline = tokio::time::Instant::now() + request.time_left();
    let mut pause = Duration::from_millis(5);
    loop {
        let op = commands.operation(accepted.operation_id).await?;
        if op.state != OperationState::Pending || tokio::time::Instant::now() + pause >= deadline {
            return Ok(Answer::Operation(OperationReply {
                operation: op,
                operation_id: accepted.operation_id,
                tentative_due_at: accepted.tentative_due_at,
            }));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
