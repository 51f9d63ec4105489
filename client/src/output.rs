//! Printing: JSON for programs (`--json`), short aligned text for people.

use std::io::Write;

use serde_json::Value;

/// Where a command's answer goes.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON on stdout (with `--json`); returns whether it did,
    /// so the caller prints its human text otherwise.
    pub fn json(&self, value: &Value) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
            );
        }
        self.json
    }
}

/// A string field, or `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// An RFC 3339 timestamp as `2026-05-04 10:11:12 UTC`; anything else as is.
pub fn when(v: &Value) -> String {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(
            || text(v),
            |t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string()
            },
        )
}

/// Only the date of a timestamp: `2026-05-04`.
pub fn day(v: &Value) -> String {
    let full = when(v);
    full.split(' ').next().unwrap_or_default().to_owned()
}

/// Lines of `label  value`, labels padded to one width.
pub fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
}

/// A table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    );
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

/// A JSON value shown compactly on one line, cut when long.
pub fn short_json(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > max {
        let mut cut: String = s.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_read_in_utc() {
        assert_eq!(
            when(&json!("2026-05-04T10:11:12.345Z")),
            "2026-05-04 10:11:12 UTC"
        );
        assert_eq!(day(&json!("2026-05-04T10:11:12Z")), "2026-05-04");
        assert_eq!(when(&Value::Null), "-");
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(short_json(&json!("abcdef"), 3), "abc…");
        assert_eq!(short_json(&json!([1, 2]), 10), "[1,2]");
    }
}
