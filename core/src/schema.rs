//! JSON Schemas for the OpenAPI document where a field's Rust type says
//! less than the server checks: text that must parse as an ISBN or a patron
//! id, words from a fixed list, counts that are never negative. The types
//! point at these with `#[schema(schema_with = ...)]`; each one is written
//! next to the constant or parser it describes the input of, so that the
//! document says what the server enforces.

use utoipa::openapi::{
    KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat, Type,
    schema::{AdditionalProperties, ArrayBuilder},
};

use crate::{
    library::message::{OperationKind, OperationState},
    tasks::TaskState,
};

/// Declares a type that only stands for a schema, for parameters whose
/// Rust type is plain text (`#[param(value_type = Isbn, inline)]`).
macro_rules! text_schema {
    ($($(#[$meta:meta])* $name:ident = $schema:expr;)+) => {
        $(
            $(#[$meta])*
            pub struct $name;

            impl utoipa::PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    RefOr::T($schema)
                }
            }

            impl utoipa::ToSchema for $name {}
        )+
    };
}

text_schema! {
    /// Text that must be an ISBN.
    Isbn = isbn();
    /// Text that must be a patron id.
    Patron = patron();
    /// Text without control characters.
    PlainText = plain_text();
}

/// What `Isbn::parse` takes, short of the check digit (which a pattern
/// cannot say): an ISBN-13 starting 978 or 979, or an ISBN-10, hyphens
/// allowed between digits.
pub const ISBN_PATTERN: &str = "^(97[89](-?[0-9]){10}|[0-9](-?[0-9]){8}-?[0-9Xx])$";

/// What `PatronId::parse` takes.
pub const PATRON_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// White space as Rust's `trim` and `split_whitespace` read it, for a
/// regex character class (a regex's `\s` differs from it in two characters).
pub const SPACE: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Control characters, for a regex character class.
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// Text PostgreSQL can store: no U+0000.
pub const NO_NUL: &str = "^[^\\u0000]*$";

fn text(pattern: impl Into<String>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// An ISBN: the pattern says its digits; the format `isbn` says its check
/// digit is right too (a format JSON Schema validators pass over, which the
/// contract fuzzer is taught in `testkit/tests/e2e/schemathesis_hooks.py`).
pub fn isbn() -> Schema {
    text(ISBN_PATTERN)
        .format(Some(SchemaFormat::Custom("isbn".to_owned())))
        .description(Some("ISBN-13 (or ISBN-10; hyphens allowed)."))
        .into()
}

pub fn patron() -> Schema {
    text(PATRON_PATTERN)
        .description(Some("A patron id: letters, digits, `.`, `_` and `-`."))
        .into()
}

/// An id the server reads as a UUID from text.
pub fn uuid() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

/// A title to look up: 1 to 300 characters, not all white space, no
/// control characters.
pub fn title() -> Schema {
    let plain = format!("[^{CONTROL}]");
    text(format!("^{plain}*[^{SPACE}{CONTROL}]{plain}*$"))
        .min_length(Some(1))
        .max_length(Some(300))
        .description(Some("Words of the title, when no ISBN is given."))
        .into()
}

/// What a title search takes: 1 to `words` words of up to 100 characters,
/// split on white space as Rust's `split_whitespace` reads it.
pub fn search_words(words: usize) -> Schema {
    let word = format!("[^{SPACE}{CONTROL}]{{1,100}}");
    text(format!(
        "^[{SPACE}]*{word}([{SPACE}]+{word}){{0,{}}}[{SPACE}]*$",
        words - 1
    ))
    .into()
}

/// Text without control characters.
pub fn plain_text() -> Schema {
    text(format!("^[^{CONTROL}]*$")).into()
}

/// A copy's status.
pub fn copy_status() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["available", "on_loan"]))
        .into()
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

/// Counts, such as one per minute.
pub fn counts() -> Schema {
    ArrayBuilder::new().items(count()).into()
}

/// A count for every task state, each one present.
pub fn count_by_task_state() -> Schema {
    TaskState::ALL
        .iter()
        .fold(ObjectBuilder::new(), |o, s| {
            o.property(s.as_str(), count()).required(s.as_str())
        })
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        .into()
}

fn one_of_words(words: &[&str]) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(words.iter().copied()))
        .into()
}

/// The state of a task just accepted.
pub fn queued() -> Schema {
    one_of_words(&[TaskState::Queued.as_str()])
}

/// The state of a task a cancel answers with: cancelled, or still running
/// while its worker stops it.
pub fn cancelled_or_running() -> Schema {
    one_of_words(&[TaskState::Cancelled.as_str(), TaskState::Running.as_str()])
}

/// The state of an operation just accepted.
pub fn pending() -> Schema {
    one_of_words(&[OperationState::Pending.as_str()])
}

/// What an accepted operation is: a renewal or a return (loans are
/// answered at once).
pub fn renewal_or_return() -> Schema {
    one_of_words(&[
        OperationKind::Renewal.as_str(),
        OperationKind::Return.as_str(),
    ])
}

/// How an operation was settled.
pub fn settled() -> Schema {
    one_of_words(&[
        OperationState::Applied.as_str(),
        OperationState::Rejected.as_str(),
    ])
}

text_schema! {
    /// Bytes of any content type.
    Bytes = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/octet-stream")
        .into();
}
