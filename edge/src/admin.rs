//! Catalogue and patron administration over ZeroMQ: the same commands as
//! `/v1/titles`, `/v1/copies` and `/v1/patrons`, each a straight call of
//! the command layer, with the same field names.

use bibliomq_core::commands::{Commands, NewPatron, NewTitle, PatronEdit};
use serde_json::Value;

use crate::{
    reply::Answer,
    request::{Reply, Request},
    wire::WireError,
};

fn invalid(name: &str, what: &str) -> WireError {
    WireError::new("invalid_field", format!("`{name}` must be {what}")).with_field(name)
}

/// `authors`: a list of strings (absent: none).
fn authors(request: &Request) -> Result<Vec<String>, WireError> {
    match request.fields.get("authors") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("authors", "a list of strings"))
            })
            .collect(),
        Some(_) => Err(invalid("authors", "a list of strings")),
    }
}

fn year(request: &Request) -> Result<Option<serde_json::Number>, WireError> {
    match request.fields.get("year") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.clone())),
        Some(_) => Err(invalid("year", "a number")),
    }
}

/// `title_add`: `isbn`, `title`, `authors`?, `year`?.
pub async fn add_title(commands: Commands, request: Request) -> Reply {
    let title = commands
        .add_title(NewTitle {
            isbn: request.str_any(&["isbn"])?,
            title: request.str_any(&["title"])?,
            authors: authors(&request)?,
            year: year(&request)?,
        })
        .await?;
    Ok(Answer::Title { title })
}

/// `copy_add`: `isbn`, `branch`, `barcode`?.
pub async fn add_copy(commands: Commands, request: Request) -> Reply {
    let copy = commands
        .add_copy(
            &request.str_any(&["isbn"])?,
            &request.str_any(&["branch"])?,
            request.opt_str(&["barcode"])?.as_deref(),
        )
        .await?;
    Ok(Answer::Copy { copy })
}

/// `copy_withdraw`: `barcode`.
pub async fn withdraw_copy(commands: Commands, request: Request) -> Reply {
    let copy = commands
        .withdraw_copy(&request.str_any(&["barcode"])?)
        .await?;
    Ok(Answer::Copy { copy })
}

/// `patron_add`: `id`, `name`, `email`?.
pub async fn add_patron(commands: Commands, request: Request) -> Reply {
    let patron = commands
        .add_patron(NewPatron {
            id: request.str_any(&["id", "patron"])?,
            name: request.str_any(&["name"])?,
            email: request.opt_str(&["email"])?,
        })
        .await?;
    Ok(Answer::Patron { patron })
}

/// `patron_block`: `id`, `reason`.
pub async fn block_patron(commands: Commands, request: Request) -> Reply {
    let edit = PatronEdit {
        blocked: Some(Some(request.str_any(&["reason"])?)),
        ..PatronEdit::default()
    };
    let patron = commands
        .change_patron(&request.str_any(&["id", "patron"])?, edit)
        .await?;
    Ok(Answer::Patron { patron })
}

/// `patron_unblock`: `id`.
pub async fn unblock_patron(commands: Commands, request: Request) -> Reply {
    let edit = PatronEdit {
        blocked: Some(None),
        ..PatronEdit::default()
    };
    let patron = commands
        .change_patron(&request.str_any(&["id", "patron"])?, edit)
        .await?;
    Ok(Answer::Patron { patron })
}

/// `patron_show`: `id`.
pub async fn show_patron(commands: Commands, request: Request) -> Reply {
    let patron = commands
        .patron(&request.str_any(&["id", "patron"])?)
        .await?;
    Ok(Answer::Patron { patron })
}

/// `patron_list`: `q`?, `limit`?, `cursor`?.
pub async fn list_patrons(commands: Commands, request: Request) -> Reply {
    let limit = match request.fields.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| invalid("limit", "a whole number"))?,
        ),
        Some(_) => return Err(invalid("limit", "a whole number")),
    };
    let page = commands
        .list_patrons(
            request.opt_str(&["q"])?.as_deref(),
            limit,
            request.opt_str(&["cursor"])?.as_deref(),
        )
        .await?;
    Ok(Answer::Patrons(page))
}
