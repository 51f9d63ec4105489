//! The `report` action: a per-group summary of a CSV text, as CSV.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{ReportSpec, TaskFailure, bad, kind};
use crate::error::Invalid;

/// Checks the request, including that the named columns exist, so a report
/// that cannot run is refused at submission rather than failing later.
pub(super) fn parse_spec(v: &Value) -> Result<ReportSpec, Invalid> {
    let Value::Object(o) = v else {
        return Err(bad(
            "payload",
            format!(
                "expected {{\"csv\": text, \"group_by\": column, \"sum\": column}}, got {}",
                kind(v)
            ),
        ));
    };
    let text = |name: &str| -> Result<Option<String>, Invalid> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(
                &format!("payload.{name}"),
                format!("expected a string, got {}", kind(other)),
            )),
        }
    };
    let csv = text("csv")?.ok_or_else(|| bad("payload.csv", "missing the CSV text"))?;
    let group_by = text("group_by")?
        .ok_or_else(|| bad("payload.group_by", "missing the column to group by"))?;
    let sum = text("sum")?;

    let headers = csv::ReaderBuilder::new()
        .from_reader(csv.as_bytes())
        .headers()
        .map_err(|e| bad("payload.csv", format!("cannot read the CSV header: {e}")))?
        .clone();
    if headers.is_empty() {
        return Err(bad("payload.csv", "the CSV text has no header line"));
    }
    for (field, column) in [("group_by", Some(&group_by)), ("sum", sum.as_ref())] {
        if let Some(column) = column
            && !headers.iter().any(|h| h == column)
        {
            return Err(bad(
                &format!("payload.{field}"),
                format!(
                    "no column `{column}` in the CSV header ({})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(ReportSpec { csv, group_by, sum })
}

#[derive(Default)]
struct Group {
    rows: u64,
    total: f64,
    min: Option<f64>,
    max: Option<f64>,
}

/// Groups the rows and writes `group,rows[,sum,min,max,mean]`, one line per group.
/// Stops between rows once `stop` is cancelled.
pub(super) fn run(spec: &ReportSpec, stop: &CancellationToken) -> Result<String, TaskFailure> {
    let mut reader = csv::ReaderBuilder::new().from_reader(spec.csv.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| TaskFailure::Rejected(format!("cannot read the CSV header: {e}")))?
        .clone();
    let position = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TaskFailure::Rejected(format!("no column `{name}`")))
    };
    let group_col = position(&spec.group_by)?;
    let sum_col = spec.sum.as_deref().map(position).transpose()?;

    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (line, record) in reader.records().enumerate() {
        if line.is_multiple_of(1024) && stop.is_cancelled() {
            return Err(TaskFailure::Stopped);
        }
        let record =
            record.map_err(|e| TaskFailure::Rejected(format!("CSV row {}: {e}", line + 2)))?;
        let key = record.get(group_col).unwrap_or_default().to_owned();
        let group = groups.entry(key).or_default();
        group.rows += 1;
        if let Some(col) = sum_col {
            let raw = record.get(col).unwrap_or_default().trim();
            let value: f64 = raw.parse().map_err(|_| {
                TaskFailure::Rejected(format!(
                    "CSV row {}: `{raw}` in column `{}` is not a number",
                    line + 2,
                    headers.get(col).unwrap_or_default()
                ))
            })?;
            group.total += value;
            group.min = Some(group.min.map_or(value, |m| m.min(value)));
            group.max = Some(group.max.map_or(value, |m| m.max(value)));
        }
    }

    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec![spec.group_by.clone(), "rows".to_owned()];
    if let Some(sum) = &spec.sum {
        header.extend(["sum", "min", "max", "mean"].map(|s| format!("{s}_{sum}")));
    }
    let write_err = |e: csv::Error| TaskFailure::Rejected(format!("cannot write the report: {e}"));
    out.write_record(&header).map_err(write_err)?;
    for (key, g) in &groups {
        let mut row = vec![key.clone(), g.rows.to_string()];
        if sum_col.is_some() {
            #[allow(clippy::cast_precision_loss)]
            let mean = g.total / g.rows as f64;
            row.extend([
                fmt_num(g.total),
                fmt_num(g.min.unwrap_or_default()),
                fmt_num(g.max.unwrap_or_default()),
                fmt_num(mean),
            ]);
        }
        out.write_record(&row).map_err(write_err)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| TaskFailure::Rejected(format!("cannot write the report: {e}")))?;
    String::from_utf8(bytes).map_err(|e| TaskFailure::Rejected(e.to_string()))
}

/// Whole numbers without a trailing `.0`; others rounded to 6 decimals.
fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOANS: &str =
        "branch,title,days\ncentral,Quijote,14\nnorte,Quijote,7\ncentral,\"Crimen y castigo\",21\n";

    #[test]
    fn groups_and_sums_a_column() {
        let spec = parse_spec(&json!({"csv": LOANS, "group_by": "branch", "sum": "days"})).unwrap();
        assert_eq!(
            run(&spec, &CancellationToken::new()).unwrap(),
            "branch,rows,sum_days,min_days,max_days,mean_days\ncentral,2,35,14,21,17.5\nnorte,1,7,7,7,7\n"
        );
    }

    #[test]
    fn a_missing_column_is_named_at_submission() {
        let err = parse_spec(&json!({"csv": LOANS, "group_by": "sucursal"})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("payload.group_by"));
        assert!(err.message.contains("sucursal"));
    }

    #[test]
    fn a_non_numeric_cell_fails_the_report_with_its_row() {
        let spec =
            parse_spec(&json!({"csv": "b,n\nx,1\ny,zz\n", "group_by": "b", "sum": "n"})).unwrap();
        let err = run(&spec, &CancellationToken::new()).unwrap_err();
        assert!(err.to_string().contains("row 3"), "{err}");
    }
}
