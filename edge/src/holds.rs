//! Holds over ZeroMQ: the same commands as `/v1/holds`, each a straight
//! call of the command layer, with the same field names.

use bibliomq_core::commands::{Commands, HoldCancel, HoldRequest};
use serde_json::Value;

use crate::{
    reply::Answer,
    request::{Reply, Request},
    wire::WireError,
};

/// `hold_place`: `isbn` or `title`, `patron`, `pickup_branch`.
pub async fn place(commands: Commands, request: Request) -> Reply {
    let hold = commands
        .place_hold(HoldRequest {
            isbn: request.opt_str(&["isbn"])?,
            title: request.opt_str(&["title"])?,
            patron: request.str_any(&["patron"])?,
            pickup_branch: request.str_any(&["pickup_branch"])?,
        })
        .await?;
    Ok(Answer::Hold { hold })
}

/// `hold_cancel`: `id`, `patron`? (the patron the request acts for).
pub async fn cancel(commands: Commands, request: Request) -> Reply {
    let cancelled = commands
        .cancel_hold(HoldCancel {
            hold_id: request.str_any(&["id", "hold_id"])?,
            patron: request.opt_str(&["patron"])?,
        })
        .await?;
    Ok(Answer::HoldCancelled(cancelled))
}

/// `holds`: a patron's (`patron`, `all`?) or a title's (`isbn`) holds.
pub async fn list(commands: Commands, request: Request) -> Reply {
    let all = match request.fields.get("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(
                WireError::new("invalid_field", "`all` must be true or false").with_field("all"),
            );
        }
    };
    match (request.opt_str(&["patron"])?, request.opt_str(&["isbn"])?) {
        (Some(patron), None) => Ok(Answer::PatronHolds(
            commands.patron_holds(&patron, all).await?,
        )),
        (None, Some(isbn)) => Ok(Answer::TitleHolds(commands.title_holds(&isbn).await?)),
        _ => Err(WireError::new(
            "missing_field",
            "give either `patron` (their holds) or `isbn` (the title's holds)",
        )
        .with_field("patron")),
    }
}
