//! Enums whose values travel as fixed words: in JSON, in PostgreSQL `text`
//! columns, in query strings and in routing keys. One list per enum gives
//! `ALL`, `as_str`, `Display`, `FromStr`, serde, `FromSql` and the OpenAPI
//! schema (an `enum` of the words), so a state
//! cannot be spelt two ways and an unknown word is refused where it enters.

use std::fmt;

/// A word that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// What was expected, e.g. `task state`.
    pub what: &'static str,
    pub word: String,
    /// Every accepted word, comma-separated.
    pub expected: String,
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} `{}`; expected one of {}",
            self.what, self.word, self.expected
        )
    }
}

impl std::error::Error for UnknownWord {}

/// Declares a word enum: `word_enum!(what, pub enum Name { Variant = "word", ... })`.
macro_rules! word_enum {
    (
        $what:literal,
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $word)] $variant),+
        }

        impl $name {
            /// Every value, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        /// A string, one of the words.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .enum_values(Some([$($word),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::words::UnknownWord;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::words::UnknownWord {
                        what: $what,
                        word: s.to_owned(),
                        expected: [$($word),+].join(", "),
                    }),
                }
            }
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let word = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok(word.parse::<$name>()?)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}

pub(crate) use word_enum;

#[cfg(test)]
mod tests {
    use crate::{library::message::OperationState, tasks::TaskState};

    #[test]
    fn words_round_trip_and_unknown_ones_are_refused() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(*s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        let e = "done".parse::<TaskState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown task state `done`; expected one of scheduled, queued, running, succeeded, failed, dead, cancelled"
        );
        assert_eq!(
            serde_json::from_str::<OperationState>("\"applied\"").unwrap(),
            OperationState::Applied
        );
    }
}
