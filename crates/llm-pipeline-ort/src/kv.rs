//! The KV cache of every sequence, kept in ONNX Runtime tensors, and the copies between them.
//!
//! A decoder-with-past graph takes the whole past as input and returns it, grown by the new
//! tokens, as output; it has no notion of sequences. Batching several sequences into one call
//! therefore means stacking their pasts into one padded `[batch, kv_heads, past, head_dim]`
//! tensor per layer (the *gather*) and, after the call, keeping each sequence's part of the
//! output (the *scatter*). Done naively that copies the whole cache twice per step, so the cache
//! lives in one of two places:
//!
//! - *own*: the sequence's own tensors `[1, kv_heads, len, head_dim]`, compact.
//! - *resident*: a row of the *resident batch*, the output of the last decode call.
//!   When the next decode step carries exactly the same sequences, the resident outputs are fed
//!   straight back as inputs: no copy at all. The attention mask then carries each row's holes
//!   (the padding of rows shorter than the longest), which the graph skips; positions come from
//!   `position_ids`, so holes do not shift them.
//!
//! Copies happen only when the batch's membership changes (a sequence joins, finishes or is
//! prefilled): the new batch is gathered once, straight from wherever each row lives, and rows
//! leaving the resident batch are compacted into their own tensors. The copy time and bytes are
//! counted in a [`KvCopyMeter`].

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ort::value::{DynValue, Tensor};

use crate::OrtError;

/// A KV element type: `f32` or `f16`.
pub(crate) trait KvElem:
    ort::value::PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + Send + 'static
{
}
impl KvElem for f32 {}
impl KvElem for half::f16 {}

/// Counters of the KV copies, shared with whoever wants to read them.
#[derive(Debug, Clone, Default)]
pub struct KvCopyMeter {
    inner: Arc<MeterInner>,
}

#[derive(Debug, Default)]
struct MeterInner {
    steps: AtomicU64,
    calls: AtomicU64,
    zero_copy_calls: AtomicU64,
    copy_nanos: AtomicU64,
    copy_bytes: AtomicU64,
    run_nanos: AtomicU64,
    max_step_copy_nanos: AtomicU64,
    max_run_cells: AtomicU64,
}

/// A snapshot of a [`KvCopyMeter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvCopyStats {
    /// Engine steps (`forward` calls).
    pub steps: u64,
    /// Graph runs (a step runs one for its decode rows and one for its prefill rows).
    pub calls: u64,
    /// Graph runs whose past was the previous run's output, fed back without a copy.
    pub zero_copy_calls: u64,
    /// Time spent gathering and scattering KV, in nanoseconds.
    pub copy_nanos: u64,
    /// Bytes of KV copied.
    pub copy_bytes: u64,
    /// Time spent inside ONNX Runtime, in nanoseconds.
    pub run_nanos: u64,
    /// The most copy time of any one step, in nanoseconds.
    pub max_step_copy_nanos: u64,
    /// The most KV cells (`rows × columns` of its padded attention mask) of any one graph run:
    /// what its past and its present each hold.
    pub max_run_cells: u64,
}

impl KvCopyStats {
    /// Mean copy time per step, in microseconds.
    pub fn copy_micros_per_step(&self) -> f64 {
        self.copy_nanos as f64 / 1e3 / self.steps.max(1) as f64
    }

    /// Mean bytes copied per step.
    pub fn copy_bytes_per_step(&self) -> f64 {
        self.copy_bytes as f64 / self.steps.max(1) as f64
    }

    /// Copy time as a fraction of copy plus run time.
    pub fn copy_fraction(&self) -> f64 {
        let total = self.copy_nanos + self.run_nanos;
        self.copy_nanos as f64 / total.max(1) as f64
    }
}

impl KvCopyMeter {
    /// The counters now.
    pub fn snapshot(&self) -> KvCopyStats {
        let i = &self.inner;
        KvCopyStats {
            steps: i.steps.load(Ordering::Relaxed),
            calls: i.calls.load(Ordering::Relaxed),
            zero_copy_calls: i.zero_copy_calls.load(Ordering::Relaxed),
            copy_nanos: i.copy_nanos.load(Ordering::Relaxed),
            copy_bytes: i.copy_bytes.load(Ordering::Relaxed),
            run_nanos: i.run_nanos.load(Ordering::Relaxed),
            max_step_copy_nanos: i.max_step_copy_nanos.load(Ordering::Relaxed),
            max_run_cells: i.max_run_cells.load(Ordering::Relaxed),
        }
    }

    /// Counts a step; returns the copy time so far, for [`KvCopyMeter::end_step`].
    pub(crate) fn begin_step(&self) -> u64 {
        self.inner.steps.fetch_add(1, Ordering::Relaxed);
        self.inner.copy_nanos.load(Ordering::Relaxed)
    }

    /// Records the step's copy time in the maximum.
    pub(crate) fn end_step(&self, copy_before: u64) {
        let step = self.inner.copy_nanos.load(Ordering::Relaxed) - copy_before;
        self.inner
            .max_step_copy_nanos
            .fetch_max(step, Ordering::Relaxed);
    }

    pub(crate) fn call(&self, zero_copy: ZeroCopy, run_started: Instant, cells: usize) {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        self.inner
            .max_run_cells
            .fetch_max(cells as u64, Ordering::Relaxed);
        if zero_copy == ZeroCopy::Yes {
            self.inner.zero_copy_calls.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = run_started.elapsed().as_nanos() as u64;
        self.inner.run_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn copied(&self, started: Instant, bytes: u64) {
        let nanos = started.elapsed().as_nanos() as u64;
        self.inner.copy_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.inner.copy_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Whether a graph run reused the previous outputs as its past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroCopy {
    /// It did.
    Yes,
    /// The past was gathered.
    No,
}

/// The geometry of every KV tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvShape {
    /// `2 × layers` tensors per sequence: key then value of each layer.
    pub(crate) tensors: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// Where one sequence's KV lives.
#[derive(Debug)]
pub(crate) enum Place {
    /// Its own compact tensors (empty before its first step).
    Own(Vec<DynValue>),
    /// Row `.0` of the resident batch.
    Resident(usize),
}

/// The output of the last decode call, kept to be fed back.
#[derive(Debug, Default)]
pub(crate) struct Resident {
    /// The sequence of each row; `None` once released.
    pub(crate) rows: Vec<Option<u64>>,
    /// `[rows, kv_heads, cols, head_dim]` each.
    pub(crate) values: Vec<DynValue>,
    /// `[rows, cols]`: 1 where a column holds a token of the row.
    pub(crate) mask: Vec<i64>,
    /// Columns.
    pub(crate) cols: usize,
}

impl Resident {
    /// The column ranges holding row `r`'s tokens, in order.
    pub(crate) fn runs(&self, r: usize) -> Vec<Range<usize>> {
        runs(&self.mask[r * self.cols..(r + 1) * self.cols])
    }
}

/// The first `n` cells of `runs`, in order.
pub(crate) fn first_cells(runs: Vec<Range<usize>>, mut n: usize) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        if n == 0 {
            break;
        }
        let take = run.len().min(n);
        out.push(run.start..run.start + take);
        n -= take;
    }
    out
}

/// Maximal ranges of ones in a mask row.
pub(crate) fn runs(mask: &[i64]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &m) in mask.iter().enumerate() {
        match (m == 1, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..mask.len());
    }
    out
}

/// Where a gathered row's tokens come from: a tensor set, a row in it, its column count, and
/// the column ranges holding the tokens.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub(crate) values: &'a [DynValue],
    pub(crate) row: usize,
    pub(crate) cols: usize,
    pub(crate) runs: Vec<Range<usize>>,
}

fn extract<T: KvElem>(value: &DynValue) -> Result<&[T], OrtError> {
    value
        .try_extract_tensor::<T>()
        .map(|(_, data)| data)
        .map_err(|source| OrtError::Run { source })
}

/// Stacks `sources` into new tensors `[rows, kv_heads, past, head_dim]`: each row's tokens
/// compacted to columns `0..len`, zeros after.
pub(crate) fn gather<T: KvElem>(
    shape: KvShape,
    sources: &[Source<'_>],
    past: usize,
    meter: &KvCopyMeter,
) -> Result<Vec<DynValue>, OrtError> {
    let started = Instant::now();
    let (heads, hd) = (shape.kv_heads, shape.head_dim);
    let rows = sources.len();
    let mut copied = 0usize;
    let mut out = Vec::with_capacity(shape.tensors);
    for t in 0..shape.tensors {
        let mut data = vec![T::default(); rows * heads * past * hd];
        for (b, src) in sources.iter().enumerate() {
            if src.runs.iter().all(Range::is_empty) {
                continue;
            }
            let from = extract::<T>(&src.values[t])?;
            for h in 0..heads {
                let base = ((src.row * heads + h) * src.cols) * hd;
                let mut dst = ((b * heads + h) * past) * hd;
                for run in &src.runs {
                    let n = run.len() * hd;
                    let s = base + run.start * hd;
                    data[dst..dst + n].copy_from_slice(&from[s..s + n]);
                    dst += n;
                    copied += n;
                }
            }
        }
        let tensor = Tensor::from_array(([rows, heads, past, hd], data))
            .map_err(|source| OrtError::Run { source })?;
        out.push(tensor.into_dyn());
    }
    meter.copied(started, (copied * size_of::<T>()) as u64);
    Ok(out)
}

/// Copies one row's tokens out of `src` into compact tensors `[1, kv_heads, len, head_dim]`.
pub(crate) fn compact<T: KvElem>(
    shape: KvShape,
    src: &Source<'_>,
    meter: &KvCopyMeter,
) -> Result<Vec<DynValue>, OrtError> {
    let len = src.runs.iter().map(ExactSizeIterator::len).sum();
    gather::<T>(shape, std::slice::from_ref(src), len, meter)
}

/// Empty past tensors `[rows, kv_heads, 0, head_dim]`.
pub(crate) fn empty<T: KvElem>(shape: KvShape, rows: usize) -> Result<Vec<DynValue>, OrtError> {
    (0..shape.tensors)
        .map(|_| {
            Tensor::from_array(([rows, shape.kv_heads, 0, shape.head_dim], Vec::<T>::new()))
                .map(Tensor::into_dyn)
                .map_err(|source| OrtError::Run { source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_find_the_tokens_between_holes() {
        assert_eq!(runs(&[1, 1, 0, 0, 1, 0, 1]), vec![0..2, 4..5, 6..7]);
        assert_eq!(runs(&[0, 0]), Vec::<Range<usize>>::new());
        assert_eq!(runs(&[1, 1]), vec![0..2]);
    }

    #[test]
    fn stats_report_per_step_means() {
        let stats = KvCopyStats {
            steps: 4,
            copy_nanos: 8_000,
            copy_bytes: 400,
            run_nanos: 24_000,
            ..KvCopyStats::default()
        };
        assert_eq!(stats.copy_micros_per_step(), 2.0);
        assert_eq!(stats.copy_bytes_per_step(), 100.0);
        assert_eq!(stats.copy_fraction(), 0.25);
    }
}
