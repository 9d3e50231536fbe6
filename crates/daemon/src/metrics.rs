//! `GET /1.0/metrics`: Prometheus text. Figures of running instances come from their
//! monitors, asked concurrently, each bounded by the monitor timeout; an instance whose
//! monitor does not answer is left out rather than delaying the scrape.

use std::fmt::Write;
use std::sync::Arc;

use hyper::StatusCode;

use crate::http::Body;
use crate::instances::{lock, Daemon};

pub async fn render(d: &Arc<Daemon>) -> hyper::Response<Body> {
    let rows = lock(&d.store).list().unwrap_or_default();
    let mut tasks = Vec::new();
    for r in &rows {
        if d.is_running(&r.name) {
            let dd = d.clone();
            let (name, kind, id) = (r.name.clone(), r.kind, r.id);
            tasks.push(tokio::spawn(async move {
                match dd.call(id, monitor::Request::Usage).await {
                    Ok(monitor::Response::Usage(u)) => Some((name, kind, u)),
                    _ => None,
                }
            }));
        }
    }
    let mut usage = Vec::new();
    for t in tasks {
        if let Ok(Some(u)) = t.await {
            usage.push(u);
        }
    }
    let mut out = String::new();
    let mut counts = std::collections::BTreeMap::new();
    for r in &rows {
        *counts
            .entry(d.status_of(&r.name).0.to_string())
            .or_insert(0u64) += 1;
    }
    let _ = writeln!(out, "# HELP bulkhead_instances Instances by status.");
    let _ = writeln!(out, "# TYPE bulkhead_instances gauge");
    for (s, n) in &counts {
        let _ = writeln!(out, "bulkhead_instances{{status=\"{s}\"}} {n}");
    }
    type Get = fn(&monitor::Usage) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 9] = [
        (
            "bulkhead_cpu_seconds_total",
            "counter",
            "CPU time used.",
            |u| Some(u.cpu_ns as f64 / 1e9),
        ),
        ("bulkhead_memory_bytes", "gauge", "Memory in use.", |u| {
            Some(u.memory_bytes as f64)
        }),
        ("bulkhead_memory_limit_bytes", "gauge", "Memory cap.", |u| {
            u.memory_limit.map(|v| v as f64)
        }),
        (
            "bulkhead_processes",
            "gauge",
            "Processes and threads.",
            |u| Some(u.pids as f64),
        ),
        ("bulkhead_processes_limit", "gauge", "Process cap.", |u| {
            u.pids_limit.map(|v| v as f64)
        }),
        (
            "bulkhead_disk_read_bytes_total",
            "counter",
            "Bytes read from block devices.",
            |u| Some(u.read_bytes as f64),
        ),
        (
            "bulkhead_disk_write_bytes_total",
            "counter",
            "Bytes written to block devices.",
            |u| Some(u.write_bytes as f64),
        ),
        (
            "bulkhead_network_receive_bytes_total",
            "counter",
            "Bytes received (all interfaces but lo).",
            |u| Some(u.net_rx_bytes as f64),
        ),
        (
            "bulkhead_network_transmit_bytes_total",
            "counter",
            "Bytes sent (all interfaces but lo).",
            |u| Some(u.net_tx_bytes as f64),
        ),
    ];
    for (metric, ty, help, get) in series {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} {ty}");
        for (name, kind, u) in &usage {
            if let Some(v) = get(u) {
                let _ = writeln!(out, "{metric}{{name=\"{name}\",kind=\"{kind}\"}} {v}");
            }
        }
    }
    crate::http::text(StatusCode::OK, "text/plain; version=0.0.4", out)
}
