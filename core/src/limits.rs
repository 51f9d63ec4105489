//! The limits the catalogue and patron commands enforce, in one leaf of
//! their own: the commands check input against them and the OpenAPI
//! schemas (`schema`) state them, without either depending on the other.

/// Longest title, in characters.
pub const TITLE_MAX: usize = 300;
/// Most authors of a title, and the longest name of one.
pub const AUTHORS_MAX: usize = 20;
pub const AUTHOR_MAX: usize = 200;
/// Years of publication taken.
pub const YEAR_MIN: i32 = 0;
pub const YEAR_MAX: i32 = 2100;
/// Longest patron name and block reason, in characters.
pub const NAME_MAX: usize = 200;
pub const REASON_MAX: usize = 500;
/// Longest e-mail address, in characters.
pub const EMAIL_MAX: usize = 254;
/// Most patrons in one page, and the default.
pub const PATRONS_MAX_LIMIT: i64 = 100;
pub const PATRONS_DEFAULT_LIMIT: i64 = 20;
/// Longest patron search text.
pub const PATRON_QUERY_MAX: usize = 100;
