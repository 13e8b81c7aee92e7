//! Request metrics and their Prometheus text exposition, written by hand.
//!
//! The figures an operator watches are few (requests by status, the queue, tokens, latency
//! histograms, money), so a client library would bring more than it saves. Counters are
//! atomics; the per-route status counts and the price totals, which need a map or an exact
//! rational, sit behind short `std` mutexes that are never held across an await. Engine figures
//! (queue length, running sequences) are read from the pipeline at scrape time, not copied.
//!
//! A scrape first reads everything into a [`Snapshot`]; the exposition is then one loop over
//! [`METRICS`], a table that gives each metric its name, help, type and how to read it from the
//! snapshot. Adding a metric is adding a row.

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

    fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram as read at one scrape.
#[derive(Debug)]
struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Cumulative counts per bucket, the last one for `+Inf`.
    cumulative: Vec<u64>,
    /// The sum of the observations, in seconds.
    sum: f64,
}

impl HistogramSnapshot {
    /// The `_bucket`, `_sum` and `_count` lines of metric `name`.
    fn write(&self, out: &mut String, name: &str) {
        for (i, cumulative) in self.cumulative.iter().enumerate() {
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {count}", self.sum);
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
        let snapshot = self.snapshot(engine);
        let mut out = String::new();
        for metric in METRICS {
            if let Some(sample) = (metric.read)(&snapshot) {
                metric.write(&mut out, &sample);
            }
        }
        out
    }

    fn snapshot(&self, engine: Option<&EngineStats>) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let price = |total: &Mutex<Price>| *total.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            requests: self
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            finished: load(&self.finished),
            abandoned: load(&self.abandoned),
            prompt_tokens: load(&self.prompt_tokens),
            completion_tokens: load(&self.completion_tokens),
            engine: engine.copied(),
            ttft: self.ttft.snapshot(),
            tpot: self.tpot.snapshot(),
            duration: self.duration.snapshot(),
            quoted: price(&self.quoted),
            charged: price(&self.charged),
        }
    }
}

/// Everything a scrape shows, read once, so that the [`METRICS`] table only formats it.
#[derive(Debug)]
struct Snapshot {
    requests: BTreeMap<(String, u16), u64>,
    finished: u64,
    abandoned: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    engine: Option<EngineStats>,
    ttft: HistogramSnapshot,
    tpot: HistogramSnapshot,
    duration: HistogramSnapshot,
    quoted: Price,
    charged: Price,
}

impl Snapshot {
    /// An engine figure, when the pipeline reported its stats.
    fn engine(&self, read: fn(&EngineStats) -> u64) -> Option<Sample<'_>> {
        self.engine.as_ref().map(|e| Sample::Count(read(e)))
    }
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// What one metric shows at a scrape.
#[derive(Debug)]
enum Sample<'s> {
    /// One unlabelled whole number.
    Count(u64),
    /// One unlabelled amount of the price currency, written as a float (Prometheus has no
    /// rationals; the exact figures are in the responses and the logs).
    Price(Price),
    /// One number per `(route, status)`.
    ByRouteAndStatus(&'s BTreeMap<(String, u16), u64>),
    /// A histogram's buckets, sum and count.
    Histogram(&'s HistogramSnapshot),
}

/// One row of [`METRICS`].
#[derive(Debug)]
struct Descriptor {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// The metric's sample in a snapshot; `None` leaves the metric out of the exposition.
    read: fn(&Snapshot) -> Option<Sample<'_>>,
}

impl Descriptor {
    /// The `# HELP` and `# TYPE` lines, then the sample lines.
    fn write(&self, out: &mut String, sample: &Sample<'_>) {
        let (name, help, kind) = (self.name, self.help, self.kind.as_str());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        match sample {
            Sample::Count(value) => {
                let _ = writeln!(out, "{name} {value}");
            }
            Sample::Price(price) => {
                let value = price.numerator() as f64 / price.denominator() as f64;
                let _ = writeln!(out, "{name} {value}");
            }
            Sample::ByRouteAndStatus(counts) => {
                for ((route, status), n) in counts.iter() {
                    let route = escape(route);
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
            Sample::Histogram(histogram) => histogram.write(out, name),
        }
    }
}

/// Every metric, in exposition order.
const METRICS: &[Descriptor] = &[
    Descriptor {
        name: "llm_http_requests_total",
        help: "HTTP responses by route and status.",
        kind: Kind::Counter,
        read: |s| Some(Sample::ByRouteAndStatus(&s.requests)),
    },
    Descriptor {
        name: "llm_requests_finished_total",
        help: "Generation requests that ran to their end.",
        kind: Kind::Counter,
        read: |s| Some(Sample::Count(s.finished)),
    },
    Descriptor {
        name: "llm_requests_abandoned_total",
        help: "Generation requests that ended early (client gone or backend failure).",
        kind: Kind::Counter,
        read: |s| Some(Sample::Count(s.abandoned)),
    },
    Descriptor {
        name: "llm_prompt_tokens_total",
        help: "Prompt tokens of finished requests.",
        kind: Kind::Counter,
        read: |s| Some(Sample::Count(s.prompt_tokens)),
    },
    Descriptor {
        name: "llm_generation_tokens_total",
        help: "Completion tokens of finished requests.",
        kind: Kind::Counter,
        read: |s| Some(Sample::Count(s.completion_tokens)),
    },
    Descriptor {
        name: "llm_queue_waiting",
        help: "Sequences waiting to run.",
        kind: Kind::Gauge,
        read: |s| s.engine(|e| e.waiting as u64),
    },
    Descriptor {
        name: "llm_sequences_running",
        help: "Sequences in the running batch.",
        kind: Kind::Gauge,
        read: |s| s.engine(|e| e.running as u64),
    },
    Descriptor {
        name: "llm_sequences_in_flight",
        help: "Sequences submitted and not finished.",
        kind: Kind::Gauge,
        read: |s| s.engine(|e| e.in_flight as u64),
    },
    Descriptor {
        name: "llm_engine_failed",
        help: "1 while backend faults persist or the engine is broken (health ERROR).",
        kind: Kind::Gauge,
        read: |s| s.engine(|e| u64::from(e.failed)),
    },
    Descriptor {
        name: "llm_engine_faults_total",
        help: "Backend steps that failed or panicked; only their sequences failed.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.faults),
    },
    Descriptor {
        name: "llm_engine_panics_total",
        help: "Panics caught on the engine thread.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.panics),
    },
    Descriptor {
        name: "llm_engine_steps_total",
        help: "Engine steps run.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.steps),
    },
    Descriptor {
        name: "llm_engine_generated_tokens_total",
        help: "Tokens generated by the engine, cancelled sequences included.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.generated_tokens),
    },
    Descriptor {
        name: "llm_engine_cached_tokens_total",
        help: "Tokens whose KV cache was reused from earlier requests instead of computed.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.cached_tokens),
    },
    Descriptor {
        name: "llm_engine_preemptions_total",
        help: "Sequences preempted for KV space.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.preemptions),
    },
    Descriptor {
        name: "llm_spec_decode_draft_tokens_total",
        help: "Draft tokens verified by speculative decoding (prompt lookup).",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.draft_tokens),
    },
    Descriptor {
        name: "llm_spec_decode_accepted_tokens_total",
        help: "Draft tokens kept; divided by the drafts, the acceptance rate.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.accepted_tokens),
    },
    Descriptor {
        name: "llm_engine_cancelled_total",
        help: "Sequences cancelled because their client went away.",
        kind: Kind::Counter,
        read: |s| s.engine(|e| e.cancelled),
    },
    Descriptor {
        name: "llm_time_to_first_token_seconds",
        help: "Time from arrival to the first streamed text.",
        kind: Kind::Histogram,
        read: |s| Some(Sample::Histogram(&s.ttft)),
    },
    Descriptor {
        name: "llm_time_per_output_token_seconds",
        help: "Mean time between streamed tokens of a request.",
        kind: Kind::Histogram,
        read: |s| Some(Sample::Histogram(&s.tpot)),
    },
    Descriptor {
        name: "llm_request_duration_seconds",
        help: "Time from arrival to the end of finished generation requests.",
        kind: Kind::Histogram,
        read: |s| Some(Sample::Histogram(&s.duration)),
    },
    Descriptor {
        name: "llm_price_quoted_total",
        help: "Sum of quotes (max_tokens at the price table), in the price currency.",
        kind: Kind::Counter,
        read: |s| Some(Sample::Price(s.quoted)),
    },
    Descriptor {
        name: "llm_price_charged_total",
        help: "Sum of charges (completion tokens at the price table), in the price currency.",
        kind: Kind::Counter,
        read: |s| Some(Sample::Price(s.charged)),
    },
];

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Adds `amount` to `total` exactly; a sum that would overflow `u128` saturates at the old total.
fn add_price(total: &Mutex<Price>, amount: Option<Price>) {
    let Some(amount) = amount else { return };
    let mut total = total.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sum) = total.checked_add(amount) {
        *total = sum;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn price_totals_add_exactly_and_keep_the_total_on_overflow() {
        let total = Mutex::new(Price::ZERO);
        add_price(&total, Price::new(1, 3).ok());
        add_price(&total, None);
        add_price(&total, Price::new(1, 6).ok());
        assert_eq!(*total.lock().unwrap(), Price::new(1, 2).unwrap());
        add_price(&total, Price::new(u128::MAX, 1).ok());
        assert_eq!(*total.lock().unwrap(), Price::new(1, 2).unwrap());
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.snapshot().write(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 5.55\n"), "{out}");
    }

    #[test]
    fn every_metric_has_a_unique_name_help_and_type() {
        let mut names = HashSet::new();
        for metric in METRICS {
            assert!(names.insert(metric.name), "{} twice", metric.name);
            assert!(!metric.help.is_empty(), "{} has no help", metric.name);
        }
        let metrics = Metrics::default();
        metrics.record_response("/health", 200);
        let out = metrics.render(Some(&EngineStats::default()));
        for metric in METRICS {
            let name = metric.name;
            let help = format!("# HELP {name} {}\n", metric.help);
            let kind = format!("# TYPE {name} {}\n", metric.kind.as_str());
            assert_eq!(out.matches(&help).count(), 1, "{name}:\n{out}");
            assert_eq!(out.matches(&kind).count(), 1, "{name}:\n{out}");
        }
        // Every sample belongs to a described metric, histograms by their suffixes.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            let described = METRICS.iter().any(|m| match m.kind {
                Kind::Histogram => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample.strip_suffix(suffix) == Some(m.name)),
                Kind::Counter | Kind::Gauge => sample == m.name,
            });
            assert!(described, "undescribed sample {line:?}");
        }
    }

    #[test]
    fn engine_figures_only_when_reported() {
        let metrics = Metrics::default();
        let without = metrics.render(None);
        let with = metrics.render(Some(&EngineStats::default()));
        assert!(!without.contains("llm_queue_waiting"), "{without}");
        assert!(with.contains("llm_queue_waiting 0\n"), "{with}");
        assert!(with.contains("llm_engine_steps_total 0\n"), "{with}");
    }
}
