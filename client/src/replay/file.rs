//! The request-file format: one operation per line.
//!
//! ```text
//! # comment lines start with `#`; blank lines are skipped
//! LOAN 9788437604947 ana central           a loan by ISBN
//! LOAN "La sombra del viento" luis norte   a loan by title (quoted when it has spaces)
//! RENEW 9788437604947 ana central          renew ana's loan of that ISBN, at central
//! RETURN 9788437604947 ana norte           return it, at norte
//! TASK fib 30                              a task: the rest of the line is its payload,
//! TASK sum 1,2,3                           JSON when it parses as JSON, else a string
//! ```
//!
//! Keywords are case-insensitive. The names older request files use are
//! accepted too: PRESTAMO (loan), RENOVACION (renew), DEVOLUCION (return),
//! with or without accents, and TAREA (task). Inside quotes, `\"` is a quote
//! and `\\` a backslash. Checking that an ISBN, patron or branch is valid is
//! left to the API, which owns those rules.

use serde_json::Value;

use crate::{library::Book, tasks::parse_payload};

/// One operation of a request file.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Loan {
        book: Book,
        patron: String,
        branch: String,
    },
    Renew {
        isbn: String,
        patron: String,
        branch: String,
    },
    Return {
        isbn: String,
        patron: String,
        branch: String,
    },
    Task {
        action: String,
        payload: Value,
    },
}

/// The kinds the summary counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Loan,
    Renewal,
    Return,
    Task,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Loan, Kind::Renewal, Kind::Return, Kind::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loan => "loan",
            Self::Renewal => "renewal",
            Self::Return => "return",
            Self::Task => "task",
        }
    }
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Loan { .. } => Kind::Loan,
            Self::Renew { .. } => Kind::Renewal,
            Self::Return { .. } => Kind::Return,
            Self::Task { .. } => Kind::Task,
        }
    }

    /// Operations with the same key run in file order. The key is the
    /// patron: a loan, its renewal and its return must not overtake one
    /// another, and a loan asked for by title cannot be matched to the ISBN
    /// of a later line before the API resolves it. Tasks have no key.
    pub fn key(&self) -> Option<String> {
        match self {
            Self::Loan { patron, .. }
            | Self::Renew { patron, .. }
            | Self::Return { patron, .. } => Some(patron.to_lowercase()),
            Self::Task { .. } => None,
        }
    }
}

/// A parsed line, with its number (from 1) and text for reports.
#[derive(Debug, Clone)]
pub struct Line {
    pub number: usize,
    pub text: String,
    pub op: Op,
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub number: usize,
    pub text: String,
    pub message: String,
}

/// Parses a whole file: the operations, and the lines that are not any.
pub fn parse(text: &str) -> (Vec<Line>, Vec<LineError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        match parse_line(raw) {
            Ok(None) => {}
            Ok(Some(op)) => lines.push(Line {
                number,
                text: raw.trim().to_owned(),
                op,
            }),
            Err(message) => errors.push(LineError {
                number,
                text: raw.trim().to_owned(),
                message,
            }),
        }
    }
    (lines, errors)
}

/// One line: `Ok(None)` for blank and comment lines.
pub fn parse_line(raw: &str) -> Result<Option<Op>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let tokens = tokenize(line)?;
    let Some(first) = tokens.first() else {
        return Ok(None);
    };
    let args = &tokens[1..];
    let keyword = fold_keyword(&first.text);
    match keyword.as_str() {
        "LOAN" | "PRESTAMO" => {
            let [book, patron, branch] = three(args, &first.text, "a book (ISBN or \"title\")")?;
            let book = if !book.quoted && looks_like_isbn(&book.text) {
                Book::Isbn(book.text.clone())
            } else {
                Book::Title(book.text.clone())
            };
            Ok(Some(Op::Loan {
                book,
                patron: patron.text.clone(),
                branch: branch.text.clone(),
            }))
        }
        "RENEW" | "RENOVACION" => {
            let [isbn, patron, branch] = three(args, &first.text, "an ISBN")?;
            Ok(Some(Op::Renew {
                isbn: isbn.text.clone(),
                patron: patron.text.clone(),
                branch: branch.text.clone(),
            }))
        }
        "RETURN" | "DEVOLUCION" => {
            let [isbn, patron, branch] = three(args, &first.text, "an ISBN")?;
            Ok(Some(Op::Return {
                isbn: isbn.text.clone(),
                patron: patron.text.clone(),
                branch: branch.text.clone(),
            }))
        }
        "TASK" | "TAREA" => {
            let Some(action) = args.first() else {
                return Err(format!(
                    "{} needs an action and its payload, e.g. `TASK sum 1,2,3`",
                    first.text
                ));
            };
            // The payload is the rest of the line as written, so JSON with
            // spaces and quotes arrives untouched.
            let payload = parse_payload(&line[action.end..], false);
            Ok(Some(Op::Task {
                action: action.text.clone(),
                payload,
            }))
        }
        _ => Err(format!(
            "unknown operation `{}`; expected LOAN, RENEW, RETURN or TASK (or PRESTAMO, RENOVACION, DEVOLUCION, TAREA)",
            first.text
        )),
    }
}

#[derive(Debug)]
struct Token {
    text: String,
    quoted: bool,
    /// Byte offset just past the token in the line.
    end: usize,
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            let mut text = String::new();
            let mut closed = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => text.push(e),
                        None => break,
                    },
                    other => text.push(other),
                }
            }
            let Some(end) = closed else {
                return Err(format!(
                    "unterminated quote starting at column {}",
                    start + 1
                ));
            };
            tokens.push(Token {
                text,
                quoted: true,
                end,
            });
        } else {
            let mut end = start;
            let mut text = String::new();
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                text.push(c);
                end = i + c.len_utf8();
                chars.next();
            }
            tokens.push(Token {
                text,
                quoted: false,
                end,
            });
        }
    }
    Ok(tokens)
}

fn three<'a>(args: &'a [Token], keyword: &str, what: &str) -> Result<[&'a Token; 3], String> {
    match args {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(format!(
            "{keyword} takes {what}, a patron and a branch; got {} word{} (quote a title with spaces)",
            args.len(),
            if args.len() == 1 { "" } else { "s" }
        )),
    }
}

/// Upper case without accents: `préstamo` → `PRESTAMO`.
fn fold_keyword(word: &str) -> String {
    word.chars()
        .map(|c| match c {
            'á' | 'Á' => 'A',
            'é' | 'É' => 'E',
            'í' | 'Í' => 'I',
            'ó' | 'Ó' => 'O',
            'ú' | 'Ú' | 'ü' | 'Ü' => 'U',
            other => other.to_ascii_uppercase(),
        })
        .collect()
}

/// Digits and hyphens, ten or more digits, perhaps a final X: an ISBN as
/// far as the file format cares (the API checks the rest).
fn looks_like_isbn(word: &str) -> bool {
    let body = word.strip_suffix(['X', 'x']).unwrap_or(word);
    let digits = body.chars().filter(char::is_ascii_digit).count();
    digits >= 9 && body.chars().all(|c| c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(line: &str) -> Op {
        parse_line(line).unwrap().unwrap()
    }

    #[test]
    fn loans_take_an_isbn_or_a_quoted_title() {
        assert_eq!(
            op("LOAN 9788437604947 ana central"),
            Op::Loan {
                book: Book::Isbn("9788437604947".into()),
                patron: "ana".into(),
                branch: "central".into()
            }
        );
        assert_eq!(
            op(r#"loan "La sombra del viento" luis norte"#),
            Op::Loan {
                book: Book::Title("La sombra del viento".into()),
                patron: "luis".into(),
                branch: "norte".into()
            }
        );
        assert_eq!(
            op("LOAN Quijote ana central"),
            Op::Loan {
                book: Book::Title("Quijote".into()),
                patron: "ana".into(),
                branch: "central".into()
            }
        );
        assert!(matches!(
            op("LOAN 84-376-0494-X ana central"),
            Op::Loan {
                book: Book::Isbn(_),
                ..
            }
        ));
    }

    #[test]
    fn the_spanish_names_are_aliases() {
        assert_eq!(op("PRESTAMO 9788437604947 ana central").kind(), Kind::Loan);
        assert_eq!(op("Préstamo 9788437604947 ana central").kind(), Kind::Loan);
        assert_eq!(
            op("RENOVACIÓN 9788437604947 ana central").kind(),
            Kind::Renewal
        );
        assert_eq!(
            op("DEVOLUCION 9788437604947 ana norte").kind(),
            Kind::Return
        );
        assert_eq!(op("tarea fib 10").kind(), Kind::Task);
    }

    #[test]
    fn a_task_payload_is_the_rest_of_the_line() {
        assert_eq!(
            op("TASK sum 1,2,3"),
            Op::Task {
                action: "sum".into(),
                payload: json!("1,2,3")
            }
        );
        assert_eq!(
            op("TASK fib 30"),
            Op::Task {
                action: "fib".into(),
                payload: json!(30)
            }
        );
        assert_eq!(
            op(r#"TASK greet {"name": "Ana", "language": "es"}"#),
            Op::Task {
                action: "greet".into(),
                payload: json!({"name": "Ana", "language": "es"})
            }
        );
        assert_eq!(
            op("TASK upper hola   mundo"),
            Op::Task {
                action: "upper".into(),
                payload: json!("hola   mundo")
            }
        );
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_and_bad_lines_numbered() {
        let text = "# a comment\n\n  LOAN 9788437604947 ana central\nPRESTAR x y z\nLOAN \"unclosed ana central\nRENEW 9788437604947 ana\nTASK\n";
        let (lines, errors) = parse(text);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].number, 3);
        let numbers: Vec<usize> = errors.iter().map(|e| e.number).collect();
        assert_eq!(numbers, vec![4, 5, 6, 7]);
        assert!(errors[0].message.contains("unknown operation `PRESTAR`"));
        assert!(errors[1].message.contains("unterminated quote"));
        assert!(errors[2].message.contains("got 2 words"));
    }

    #[test]
    fn a_patron_s_lines_share_a_key() {
        let loan = op(r#"LOAN "Don Quijote" Ana central"#);
        let renew = op("RENEW 9788437604947 ana norte");
        assert_eq!(loan.key(), renew.key());
        assert_ne!(loan.key(), op("LOAN 9788437604947 luis central").key());
        assert_eq!(op("TASK fib 3").key(), None);
    }

    #[test]
    fn quotes_can_hold_quotes() {
        assert_eq!(
            op(r#"LOAN "El \"otro\" libro" ana central"#),
            Op::Loan {
                book: Book::Title(r#"El "otro" libro"#.into()),
                patron: "ana".into(),
                branch: "central".into()
            }
        );
    }
}
