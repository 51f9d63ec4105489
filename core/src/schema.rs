//! JSON Schemas for the OpenAPI document where a field's Rust type says
//! less than the server checks: text that must parse as an ISBN or a patron
//! id, words from a fixed list, counts that are never negative. The types
//! point at these with `#[schema(schema_with = ...)]`; each one is written
//! next to the constant or parser it describes the input of, so that the
//! document says what the server enforces.

use utoipa::openapi::{
    AllOfBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, RefOr, Schema, SchemaFormat, Type,
    schema::{AdditionalProperties, ArrayBuilder},
};

use crate::tasks::state::TaskState;

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
    /// Text that must be a barcode.
    Barcode = barcode();
    /// Text that a patron search takes.
    PatronQuery = patron_query();
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

/// What `commands::label` takes: 1 to `max` characters, not all white
/// space, no control characters.
pub fn label(max: usize) -> ObjectBuilder {
    let plain = format!("[^{CONTROL}]");
    text(format!("^{plain}*[^{SPACE}{CONTROL}]{plain}*$"))
        .min_length(Some(1))
        .max_length(Some(max))
}

/// A title as the catalogue stores it.
pub fn title_text() -> Schema {
    label(crate::limits::TITLE_MAX).into()
}

/// An author's name.
pub fn author() -> Schema {
    label(crate::limits::AUTHOR_MAX).into()
}

/// A title's authors.
pub fn authors() -> Schema {
    ArrayBuilder::new()
        .items(label(crate::limits::AUTHOR_MAX))
        .max_items(Some(crate::limits::AUTHORS_MAX))
        .into()
}

/// A patron's name.
pub fn person_name() -> Schema {
    label(crate::limits::NAME_MAX).into()
}

/// Why a patron is blocked.
pub fn reason() -> Schema {
    label(crate::limits::REASON_MAX).into()
}

/// What `commands::email` takes.
pub fn email() -> Schema {
    let part = format!("[^@{SPACE}{CONTROL}]+");
    text(format!("^{part}@{part}$"))
        .max_length(Some(crate::limits::EMAIL_MAX))
        .description(Some("An e-mail address: local@domain."))
        .into()
}

/// What `commands::barcode` takes.
pub const BARCODE_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

pub fn barcode() -> Schema {
    text(BARCODE_PATTERN)
        .description(Some("A copy's barcode: letters, digits, `.`, `_` and `-`."))
        .into()
}

/// A year of publication.
pub fn year() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(crate::limits::YEAR_MIN))
        .maximum(Some(crate::limits::YEAR_MAX))
        .into()
}

/// What a patron search takes: up to 100 characters, no control characters.
pub fn patron_query() -> Schema {
    text(format!("^[^{CONTROL}]*$"))
        .max_length(Some(crate::limits::PATRON_QUERY_MAX))
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
        .enum_values(Some(["available", "on_loan", "on_hold_shelf"]))
        .into()
}

/// A copy's status, withdrawn copies included.
pub fn copy_record_status() -> Schema {
    one_of_words(&["available", "on_loan", "on_hold_shelf", "withdrawn"])
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

pub fn one_of_words(words: &[&str]) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(words.iter().copied()))
        .into()
}

/// The state of a task just accepted: `queued`, or `scheduled` when it
/// was submitted with `run_at` or `delay_ms`.
pub fn queued_or_scheduled() -> Schema {
    one_of_words(&[TaskState::Queued.as_str(), TaskState::Scheduled.as_str()])
}

/// The state of a task a cancel answers with: cancelled, or still running
/// while its worker stops it.
pub fn cancelled_or_running() -> Schema {
    one_of_words(&[TaskState::Cancelled.as_str(), TaskState::Running.as_str()])
}

text_schema! {
    /// Bytes of any content type.
    Bytes = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/octet-stream")
        .into();
}

/// One fixed word.
pub fn word(word: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([word]))
}

/// `oneOf` the given schemas.
pub fn one_of(choices: impl IntoIterator<Item = Schema>) -> OneOfBuilder {
    choices
        .into_iter()
        .fold(OneOfBuilder::new(), |one_of, choice| one_of.item(choice))
}

/// An object schema with one more required member, `name`, the word `tag`
/// (the tag of an internally tagged enum's variant).
pub fn tagged(schema: RefOr<Schema>, name: &str, tag: &str) -> Schema {
    match schema {
        RefOr::T(Schema::Object(mut object)) => {
            object.properties.insert(name.to_owned(), word(tag).into());
            object.required.push(name.to_owned());
            object.title = Some(tag.to_owned());
            Schema::Object(object)
        }
        other => AllOfBuilder::new()
            .item(other)
            .item(
                ObjectBuilder::new()
                    .property(name, word(tag))
                    .required(name),
            )
            .into(),
    }
}
