//! The figures side by side: every figure also as a ratio to llama-server's in the same run, as
//! a Markdown table (for BENCHMARKS.md) and as JSON (for `cargo xtask bench`'s chart).

use serde_json::{Value, json};

use crate::load::{Load, Report};
use crate::systems::Run;

/// The anchor every ratio divides by.
pub(crate) const ANCHOR: &str = "llama-server";

/// What the run measured besides the systems.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) threads: u32,
    pub(crate) rounds: u32,
    pub(crate) model: String,
    pub(crate) model_bytes: u64,
    pub(crate) bandwidth: f64,
}

impl Context {
    /// Single-sequence decode bound: bandwidth over the bytes read per token.
    pub(crate) fn decode_limit(&self) -> f64 {
        self.bandwidth / self.model_bytes as f64
    }
}

fn anchor(runs: &[Run], index: usize) -> Option<&Report> {
    runs.iter()
        .find(|r| r.system == ANCHOR)
        .and_then(|r| r.reports.get(index)?.as_ref())
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}x", x / b),
        _ => "-".into(),
    }
}

/// The Markdown table: one row per system and workload.
pub(crate) fn markdown(runs: &[Run], workloads: &[Load]) -> String {
    let mut out = String::from(
        "| system | mix | clients | tok/s | vs llama-server | TTFT p50 ms | vs | TTFT p99 ms | vs \
         | TPOT p50 ms | vs | peak RSS MiB | vs | engine share |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, w) in workloads.iter().enumerate() {
        let base = anchor(runs, i);
        for run in runs {
            let Some(Some(r)) = run.reports.get(i) else {
                continue;
            };
            let share = r
                .engine_share
                .map_or("".into(), |s| format!("{:.2}%", s * 100.0));
            let line = format!(
                "| {} | {} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {} | {:.2} | {} | {:.0} | {} | {} |\n",
                run.system,
                w.mix.name(),
                w.clients,
                r.tokens_per_s,
                ratio(r.tokens_per_s, base.map(|b| b.tokens_per_s)),
                r.ttft_p50_ms,
                ratio(r.ttft_p50_ms, base.map(|b| b.ttft_p50_ms)),
                r.ttft_p99_ms,
                ratio(r.ttft_p99_ms, base.map(|b| b.ttft_p99_ms)),
                r.tpot_p50_ms,
                ratio(r.tpot_p50_ms, base.map(|b| b.tpot_p50_ms)),
                r.peak_rss_mib,
                ratio(r.peak_rss_mib, base.map(|b| b.peak_rss_mib)),
                share,
            );
            out.push_str(&line);
        }
    }
    out
}

/// The targets of the serving issue, checked against this run.
pub(crate) fn verdicts(runs: &[Run], workloads: &[Load], ctx: &Context) -> String {
    let mut out = format!(
        "memory read bandwidth {:.1} GB/s ({} threads); model {:.1} MB per token; \
         single-sequence decode limit {:.0} tokens/s\n",
        ctx.bandwidth / 1e9,
        ctx.threads,
        ctx.model_bytes as f64 / 1e6,
        ctx.decode_limit()
    );
    for run in runs.iter().filter(|r| r.system.starts_with("ours")) {
        for (i, w) in workloads.iter().enumerate() {
            let Some(Some(r)) = run.reports.get(i) else {
                continue;
            };
            if let Some(b) = anchor(runs, i) {
                out.push_str(&format!(
                    "{}: {} x{}: {:.3}x llama-server's tokens/s\n",
                    run.system,
                    w.mix.name(),
                    w.clients,
                    r.tokens_per_s / b.tokens_per_s
                ));
            }
            if w.clients == 1 && r.tpot_p50_ms > 0.0 {
                let decode = 1e3 / r.tpot_p50_ms;
                out.push_str(&format!(
                    "{}: {} x1: single-sequence decode {:.0} tokens/s = {:.0}% of the limit\n",
                    run.system,
                    w.mix.name(),
                    decode,
                    100.0 * decode / ctx.decode_limit()
                ));
            }
        }
    }
    out
}

/// Everything, for the xtask's chart and for the record.
pub(crate) fn json(runs: &[Run], workloads: &[Load], ctx: &Context) -> Value {
    let runs: Vec<Value> = runs
        .iter()
        .map(|run| {
            let results: Vec<Value> = run
                .reports
                .iter()
                .zip(workloads)
                .filter_map(|(r, w)| Some((r.as_ref()?, w)))
                .map(|(r, w)| {
                    let mut v = r.to_json();
                    v["mix"] = json!(w.mix.name());
                    v["max_tokens"] = json!(w.max_tokens);
                    v
                })
                .collect();
            json!({ "system": run.system, "results": results })
        })
        .collect();
    json!({
        "model": ctx.model,
        "model_bytes": ctx.model_bytes,
        "threads": ctx.threads,
        "rounds": ctx.rounds,
        "bandwidth_bytes_per_s": ctx.bandwidth,
        "decode_limit_tokens_per_s": ctx.decode_limit(),
        "anchor": ANCHOR,
        "runs": runs,
    })
}
