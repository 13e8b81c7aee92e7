//! Request metrics and their Prometheus text exposition, written by hand.
//!
//! The figures an operator watches are few (requests by status, the queue, tokens, latency
//! histograms, money), so a client library would bring more than it saves. Counters are
//! atomics; the per-route status counts and the price totals, which need a map or an exact
//! rational, sit behind short `std` mutexes that are never held across an await. Engine figures
//! (queue length, running sequences) are read from the pipeline at scrape time, not copied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llm_pipeline_core::engine::EngineStats;
use llm_pipeline_core::openai::Usage;
use llm_pipeline_core::pricing::Price;

/// Time-to-first-token and request-duration buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Time-per-output-token buckets, in seconds.
const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, plus one for `+Inf`.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What one finished generation request contributes to the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Its token counts.
    pub usage: Usage,
    /// From arrival to the first generated text, when it was streamed.
    pub time_to_first_token: Option<Duration>,
    /// From the first to the last generated token, when it was streamed.
    pub decode_time: Option<Duration>,
    /// From arrival to the end.
    pub duration: Duration,
    /// The quote made before generation.
    pub quote: Option<Price>,
    /// The charge after it.
    pub charge: Option<Price>,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    finished: AtomicU64,
    abandoned: AtomicU64,
    ttft: Histogram,
    tpot: Histogram,
    duration: Histogram,
    quoted: Mutex<Price>,
    charged: Mutex<Price>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            duration: Histogram::new(LATENCY_BUCKETS),
            quoted: Mutex::new(Price::ZERO),
            charged: Mutex::new(Price::ZERO),
        }
    }
}

impl Metrics {
    /// Counts one HTTP response on `route` (the matched route template, or `unmatched`).
    pub fn record_response(&self, route: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((route.to_owned(), status)).or_default() += 1;
    }

    /// Records a generation that ran to its end.
    pub fn record_outcome(&self, outcome: &Outcome) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(u64::from(outcome.usage.prompt_tokens), Ordering::Relaxed);
        self.completion_tokens.fetch_add(
            u64::from(outcome.usage.completion_tokens),
            Ordering::Relaxed,
        );
        self.duration.observe(outcome.duration);
        if let Some(ttft) = outcome.time_to_first_token {
            self.ttft.observe(ttft);
        }
        let decoded = outcome.usage.completion_tokens.saturating_sub(1);
        if let (Some(decode), true) = (outcome.decode_time, decoded > 0) {
            self.tpot.observe(decode / decoded);
        }
        add_price(&self.quoted, outcome.quote);
        add_price(&self.charged, outcome.charge);
    }

    /// Records a generation that ended early: the client went away or the backend failed.
    pub fn record_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the engine's figures when there are some.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut out = String::new();
        counter_header(
            &mut out,
            "llm_http_requests_total",
            "HTTP responses by route and status.",
        );
        {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, status), n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "llm_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = [
            (
                "llm_requests_finished_total",
                "Generation requests that ran to their end.",
                load(&self.finished),
            ),
            (
                "llm_requests_abandoned_total",
                "Generation requests that ended early (client gone or backend failure).",
                load(&self.abandoned),
            ),
            (
                "llm_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                load(&self.prompt_tokens),
            ),
            (
                "llm_generation_tokens_total",
                "Completion tokens of finished requests.",
                load(&self.completion_tokens),
            ),
        ];
        for (name, help, value) in counters {
            counter_header(&mut out, name, help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(s) = engine {
            let gauges = [
                (
                    "llm_queue_waiting",
                    "Sequences waiting to run.",
                    s.waiting as u64,
                ),
                (
                    "llm_sequences_running",
                    "Sequences in the running batch.",
                    s.running as u64,
                ),
                (
                    "llm_sequences_in_flight",
                    "Sequences submitted and not finished.",
                    s.in_flight as u64,
                ),
                (
                    "llm_engine_failed",
                    "1 when a backend step has failed.",
                    u64::from(s.failed),
                ),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
            let engine_counters = [
                ("llm_engine_steps_total", "Engine steps run.", s.steps),
                (
                    "llm_engine_generated_tokens_total",
                    "Tokens generated by the engine, cancelled sequences included.",
                    s.generated_tokens,
                ),
                (
                    "llm_engine_cached_tokens_total",
                    "Tokens whose KV cache was reused from earlier requests instead of computed.",
                    s.cached_tokens,
                ),
                (
                    "llm_engine_preemptions_total",
                    "Sequences preempted for KV space.",
                    s.preemptions,
                ),
                (
                    "llm_engine_cancelled_total",
                    "Sequences cancelled because their client went away.",
                    s.cancelled,
                ),
            ];
            for (name, help, value) in engine_counters {
                counter_header(&mut out, name, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        self.ttft.render(
            &mut out,
            "llm_time_to_first_token_seconds",
            "Time from arrival to the first streamed text.",
        );
        self.tpot.render(
            &mut out,
            "llm_time_per_output_token_seconds",
            "Mean time between streamed tokens of a request.",
        );
        self.duration.render(
            &mut out,
            "llm_request_duration_seconds",
            "Time from arrival to the end of finished generation requests.",
        );
        for (name, help, total) in [
            (
                "llm_price_quoted_total",
                "Sum of quotes (max_tokens at the price table), in the price currency.",
                &self.quoted,
            ),
            (
                "llm_price_charged_total",
                "Sum of charges (completion tokens at the price table), in the price currency.",
                &self.charged,
            ),
        ] {
            let total = *total.lock().unwrap_or_else(|e| e.into_inner());
            counter_header(&mut out, name, help);
            let value = total.numerator() as f64 / total.denominator() as f64;
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn counter_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Adds `amount` to `total` exactly; a sum that would overflow `u128` saturates at the old total.
fn add_price(total: &Mutex<Price>, amount: Option<Price>) {
    let Some(b) = amount else { return };
    let mut total = total.lock().unwrap_or_else(|e| e.into_inner());
    let a = *total;
    let sum = (|| {
        let g = gcd(a.denominator(), b.denominator());
        let lcm = (a.denominator() / g).checked_mul(b.denominator())?;
        let left = a.numerator().checked_mul(lcm / a.denominator())?;
        let right = b.numerator().checked_mul(lcm / b.denominator())?;
        Price::new(left.checked_add(right)?, lcm).ok()
    })();
    if let Some(sum) = sum {
        *total = sum;
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Parses a price as the pipeline writes it in response metadata: `"123"` or `"123/4"`.
pub(crate) fn parse_price(text: &str) -> Option<Price> {
    let (n, d) = text.split_once('/').unwrap_or((text, "1"));
    Price::new(n.trim().parse().ok()?, d.trim().parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_add_exactly() {
        let total = Mutex::new(Price::ZERO);
        add_price(&total, parse_price("1/3"));
        add_price(&total, parse_price("1/6"));
        add_price(&total, parse_price("2"));
        assert_eq!(*total.lock().unwrap(), Price::new(5, 2).unwrap());
        assert_eq!(parse_price("x"), None);
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 5.55\n"), "{out}");
    }
}
