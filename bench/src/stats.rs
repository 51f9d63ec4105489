//! Percentiles and process memory.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of sorted samples, nearest rank (the
/// client's, so the bench and `bibliomq run` count alike); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    bibliomq_client::replay::stats::percentile(sorted, p).unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Peak and current resident memory of a process, in MiB, from /proc.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
    }
}

/// CPU time used so far, in seconds, per kind of process on this machine
/// (RabbitMQ, PostgreSQL, the bibliomq processes, this load generator).
/// Two snapshots around a run say where the CPU went.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot(std::collections::BTreeMap<String, f64>);

/// Linux reports CPU times in clock ticks of 1/100 s (USER_HZ on every
/// common architecture).
const TICKS_PER_SEC: f64 = 100.0;

impl CpuSnapshot {
    pub fn take() -> Self {
        let mut totals = std::collections::BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self(totals);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // comm is in parentheses and may hold spaces; fields follow the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let group = match comm {
                "beam.smp" | "erl_child_setup" | "inet_gethost" => "rabbitmq",
                "postgres" => "postgresql",
                "bibliomq-api" => "api",
                "bibliomq-worker" | "bibliomq-workers" => "workers",
                "bibliomq-bench" => "load generator",
                "bibliomq-edge" => "edge",
                "garage" => "garage",
                _ => continue,
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line.
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            *totals.entry(group.to_owned()).or_insert(0.0) +=
                (ticks(11) + ticks(12)) / TICKS_PER_SEC;
        }
        Self(totals)
    }

    /// CPU milliseconds per operation, per kind of process, since `before`.
    pub fn per_op_ms(&self, before: &Self, ops: usize) -> Vec<(String, f64)> {
        #[allow(clippy::cast_precision_loss)]
        let ops = ops.max(1) as f64;
        self.0
            .iter()
            .map(|(k, now)| {
                let then = before.0.get(k).copied().unwrap_or(0.0);
                (k.clone(), (now - then).max(0.0) * 1000.0 / ops)
            })
            .collect()
    }
}

/// Peak and current memory of the named processes, as JSON rows.
pub fn memory_json(processes: &[(String, u32)]) -> Vec<serde_json::Value> {
    processes
        .iter()
        .filter_map(|(name, pid)| {
            rss_mib(*pid).map(|(peak, now)| {
                serde_json::json!({"process": name, "peak_rss_mib": peak, "rss_mib": now})
            })
        })
        .collect()
}

/// CPU per operation as a JSON object, by kind of process.
pub fn cpu_json(cpu: &[(String, f64)]) -> serde_json::Value {
    serde_json::Value::Object(
        cpu.iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect(),
    )
}

/// Prints the memory rows and the CPU per operation, the way both
/// benchmarks end their report.
pub fn print_resources(memory: &[serde_json::Value], cpu: &[(String, f64)], per: &str) {
    for m in memory {
        println!(
            "peak RSS {:<12}  {:.1} MiB",
            m["process"].as_str().unwrap_or("?"),
            m["peak_rss_mib"].as_f64().unwrap_or(0.0)
        );
    }
    let total: f64 = cpu.iter().map(|(_, v)| v).sum();
    let parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    println!("CPU per {per:<13} {total:.2} ms: {}", parts.join(", "));
}

/// Reads `name=pid` (the `--process` option).
pub fn parse_process(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected name=pid")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|_| "pid must be a number")?,
    ))
}
