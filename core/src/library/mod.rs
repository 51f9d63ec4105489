//! Library circulation: the domain types every request is parsed into, and
//! the rules' numbers.
//!
//! The rules themselves run inside PostgreSQL functions (see
//! `migrations/0002_library.sql`), one transaction each under row locks, with
//! the numbers from [`Rules`]; due dates are computed here, in one place.
//! What the functions answer (codes and data) is typed in [`outcome`], where
//! the messages are written.

pub mod hold;
pub mod message;
pub mod outcome;
pub mod retention;
pub mod seed;
pub mod store;

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{config::LibrarySettings, error::Invalid};

/// A 13-digit ISBN with a valid check digit. ISBN-10s are accepted and
/// converted (978 prefix, new check digit); hyphens and spaces are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Isbn(String);

impl Isbn {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| {
            Invalid::field(
                "invalid_isbn",
                "isbn",
                format!("`{raw}` is not a valid ISBN: {why}"),
            )
        };
        let compact: String = raw.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
        match compact.len() {
            13 => {
                if !compact.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("an ISBN-13 has only digits"));
                }
                if !(compact.starts_with("978") || compact.starts_with("979")) {
                    return Err(bad("an ISBN-13 starts with 978 or 979"));
                }
                let digits: Vec<u32> = compact.bytes().map(|b| u32::from(b - b'0')).collect();
                if check_digit_13(&digits[..12]) != digits[12] {
                    return Err(bad("the check digit does not match"));
                }
                Ok(Self(compact))
            }
            10 => {
                let bytes = compact.as_bytes();
                if !bytes[..9].iter().all(u8::is_ascii_digit)
                    || !(bytes[9].is_ascii_digit() || bytes[9] == b'X' || bytes[9] == b'x')
                {
                    return Err(bad("an ISBN-10 has nine digits and a digit or X"));
                }
                let value = |b: u8| {
                    if b == b'X' || b == b'x' {
                        10
                    } else {
                        u32::from(b - b'0')
                    }
                };
                let sum: u32 = bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| (10 - i as u32) * value(b))
                    .sum();
                if !sum.is_multiple_of(11) {
                    return Err(bad("the check digit does not match"));
                }
                let mut digits: Vec<u32> = vec![9, 7, 8];
                digits.extend(bytes[..9].iter().map(|b| u32::from(b - b'0')));
                let check = check_digit_13(&digits);
                digits.push(check);
                Ok(Self(
                    digits
                        .iter()
                        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
                        .collect(),
                ))
            }
            _ => Err(bad("expected 13 digits (or an ISBN-10)")),
        }
    }

    /// Builds a valid ISBN-13 from its first 12 digits (for generated catalogues).
    pub fn from_prefix12(prefix: &str) -> Option<Self> {
        if prefix.len() != 12 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: Vec<u32> = prefix.bytes().map(|b| u32::from(b - b'0')).collect();
        Some(Self(format!("{prefix}{}", check_digit_13(&digits))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_digit_13(first12: &[u32]) -> u32 {
    let sum: u32 = first12
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
        .sum();
    (10 - sum % 10) % 10
}

impl TryFrom<String> for Isbn {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<Isbn> for String {
    fn from(i: Isbn) -> String {
        i.0
    }
}

impl fmt::Display for Isbn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A patron's id: lower-case letters, digits, `.`, `_`, `-`; up to 64.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PatronId(String);

impl PatronId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let id = raw.trim().to_lowercase();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(Self(id))
        } else {
            Err(Invalid::field(
                "invalid_patron",
                "patron",
                format!("`{raw}` is not a patron id (letters, digits, `.`, `_`, `-`; up to 64)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PatronId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A branch code that exists in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BranchCode(String);

impl BranchCode {
    pub fn parse(raw: &str, settings: &LibrarySettings) -> Result<Self, Invalid> {
        let code = raw.trim().to_lowercase();
        if settings.branches.iter().any(|b| b.code == code) {
            Ok(Self(code))
        } else {
            let known: Vec<&str> = settings.branches.iter().map(|b| b.code.as_str()).collect();
            Err(Invalid::field(
                "unknown_branch",
                "branch",
                format!("unknown branch `{raw}`; branches: {}", known.join(", ")),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The numbers of the circulation rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub loan_period: Duration,
    pub renewal_extension: Duration,
    pub max_renewals: i32,
    pub max_loans: i32,
}

impl Rules {
    pub fn from_settings(s: &LibrarySettings) -> Self {
        Self {
            loan_period: Duration::days(i64::from(s.loan_days)),
            renewal_extension: Duration::days(i64::from(s.renewal_days)),
            max_renewals: i32::try_from(s.max_renewals).unwrap_or(i32::MAX),
            max_loans: i32::try_from(s.max_loans).unwrap_or(i32::MAX),
        }
    }

    /// When a loan made at `loaned_at` is due.
    pub fn due_for_loan(&self, loaned_at: DateTime<Utc>) -> DateTime<Utc> {
        loaned_at + self.loan_period
    }

    /// The due date after one renewal of a loan due at `due_at`.
    pub fn due_after_renewal(&self, due_at: DateTime<Utc>) -> DateTime<Utc> {
        due_at + self.renewal_extension
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isbn_13_check_digits_are_verified() {
        for good in ["9788437604947", "978-84-9759-220-8", "9780140449266"] {
            assert!(Isbn::parse(good).is_ok(), "{good}");
        }
        let err = Isbn::parse("9788437604948").unwrap_err();
        assert_eq!(err.code, "invalid_isbn");
        assert_eq!(err.field.as_deref(), Some("isbn"));
        assert!(err.message.contains("check digit"));
        assert!(Isbn::parse("123").is_err());
        assert!(Isbn::parse("97884376049x7").is_err());
        assert!(Isbn::parse("1234567890123").is_err());
    }

    #[test]
    fn isbn_10_is_converted_to_13() {
        assert_eq!(
            Isbn::parse("0-14-044926-4").unwrap().as_str(),
            "9780140449266"
        );
        assert!(Isbn::parse("0140449263").is_err());
    }

    #[test]
    fn generated_isbns_are_valid() {
        let isbn = Isbn::from_prefix12("978845000001").unwrap();
        assert!(Isbn::parse(isbn.as_str()).is_ok());
    }

    #[test]
    fn patron_ids_are_normalised_and_checked() {
        assert_eq!(PatronId::parse(" Ana ").unwrap().as_str(), "ana");
        assert!(PatronId::parse("").is_err());
        assert!(PatronId::parse("ana maria").is_err());
        assert!(PatronId::parse("-ana").is_err());
    }
}
