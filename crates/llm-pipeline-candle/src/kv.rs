//! Per-sequence KV caches under one budget of cells.
//!
//! Each sequence owns, per layer, a key and a value tensor of shape `(kv_heads, cap, head_dim)`
//! that attention reads as a prefix view `(kv_heads, len, head_dim)`: a sequence attends only to
//! its own cache, in the same order whatever else is in the batch, so batching never changes a
//! sequence's numbers. Caches grow in chunks (doubling, at least [`CHUNK`] cells) instead of
//! being preallocated at `MAX_MODEL_LEN`, so short requests do not reserve long ones' memory.
//! Every cell allocated counts against the capacity reported to the engine, and the last chunk
//! is trimmed to what is free, so the allocated total never exceeds that capacity.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use llm_pipeline_core::backend::SeqId;

use crate::CandleError;

/// The smallest growth step, in cells.
pub(crate) const CHUNK: usize = 128;

/// The shape of every layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvShape {
    pub(crate) layers: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

#[derive(Debug)]
struct SeqCache {
    /// Tokens written and committed.
    len: usize,
    /// Cells allocated.
    cap: usize,
    /// Per layer: keys and values, each `(kv_heads, cap, head_dim)`.
    layers: Vec<(Tensor, Tensor)>,
}

/// All sequences' caches.
#[derive(Debug)]
pub(crate) struct KvPool {
    shape: KvShape,
    dtype: DType,
    device: Device,
    capacity: usize,
    max_len: usize,
    allocated: usize,
    seqs: HashMap<SeqId, SeqCache>,
}

impl KvPool {
    /// An empty pool of `capacity` cells; no sequence grows beyond `max_len`.
    pub(crate) fn new(shape: KvShape, dtype: DType, device: Device, capacity: usize) -> Self {
        Self {
            shape,
            dtype,
            device,
            capacity,
            max_len: capacity,
            allocated: 0,
            seqs: HashMap::new(),
        }
    }

    /// Caps one sequence's cache at `max_len` cells.
    pub(crate) fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.min(self.capacity);
        self
    }

    /// Cells allocated to all sequences.
    pub(crate) fn allocated(&self) -> usize {
        self.allocated
    }

    /// Sequences holding a cache.
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Makes room for `n` tokens of `seq` at `start`, rolling back anything cached at or after
    /// `start`.
    ///
    /// # Errors
    /// [`CandleError::OutOfOrder`] when `start` is past the cached tokens;
    /// [`CandleError::KvExhausted`] when the budget cannot hold them.
    pub(crate) fn prepare(&mut self, seq: SeqId, start: u32, n: usize) -> Result<(), CandleError> {
        let start_us = start as usize;
        let cached = self.seqs.get(&seq).map_or(0, |c| c.len);
        if start_us > cached {
            return Err(CandleError::OutOfOrder { seq, start, cached });
        }
        let needed = start_us + n;
        let cap = self.seqs.get(&seq).map_or(0, |c| c.cap);
        if let Some(c) = self.seqs.get_mut(&seq) {
            c.len = start_us;
        }
        if needed <= cap {
            return Ok(());
        }
        let free = self.capacity - self.allocated;
        if needed > self.max_len || needed - cap > free {
            return Err(CandleError::KvExhausted {
                seq,
                needed: needed - cap,
                free,
            });
        }
        let wanted = needed.next_multiple_of(CHUNK).max(cap * 2);
        let new_cap = wanted.min(cap + free).min(self.max_len);
        self.grow(seq, new_cap)
    }

    fn grow(&mut self, seq: SeqId, new_cap: usize) -> Result<(), CandleError> {
        let KvShape {
            layers,
            kv_heads,
            head_dim,
        } = self.shape;
        let fresh = || Tensor::zeros((kv_heads, new_cap, head_dim), self.dtype, &self.device);
        let entry = self.seqs.entry(seq).or_insert_with(|| SeqCache {
            len: 0,
            cap: 0,
            layers: Vec::new(),
        });
        let mut grown = Vec::with_capacity(layers);
        for l in 0..layers {
            let (k, v) = (fresh(), fresh());
            let (k, v) = (
                k.map_err(CandleError::candle("allocating KV cache"))?,
                v.map_err(CandleError::candle("allocating KV cache"))?,
            );
            if let Some((old_k, old_v)) = entry.layers.get(l)
                && entry.len > 0
            {
                let keep = |t: &Tensor| t.narrow(1, 0, entry.len)?.contiguous();
                let copy = keep(old_k)
                    .and_then(|ok| k.slice_set(&ok, 1, 0))
                    .and_then(|()| keep(old_v))
                    .and_then(|ov| v.slice_set(&ov, 1, 0));
                copy.map_err(CandleError::candle("growing KV cache"))?;
            }
            grown.push((k, v));
        }
        self.allocated += new_cap - entry.cap;
        entry.cap = new_cap;
        entry.layers = grown;
        Ok(())
    }

    /// Writes `k` and `v` (each `(n, kv_heads, head_dim)`) of `layer` at `seq`'s current end and
    /// returns the cache views `(kv_heads, len + n, head_dim)` for attention.
    ///
    /// The sequence's length advances only at [`KvPool::commit`], after every layer.
    pub(crate) fn write(
        &mut self,
        seq: SeqId,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let c = self
            .seqs
            .get(&seq)
            .expect("prepare() allocates every sequence of the batch");
        let (ck, cv) = &c.layers[layer];
        let n = k.dim(0)?;
        ck.slice_set(&k.transpose(0, 1)?.contiguous()?, 1, c.len)?;
        cv.slice_set(&v.transpose(0, 1)?.contiguous()?, 1, c.len)?;
        Ok((ck.narrow(1, 0, c.len + n)?, cv.narrow(1, 0, c.len + n)?))
    }

    /// Marks `n` more tokens of `seq` as cached.
    pub(crate) fn commit(&mut self, seq: SeqId, n: usize) {
        if let Some(c) = self.seqs.get_mut(&seq) {
            c.len += n;
        }
    }

    /// Frees `seq`'s cache; a no-op for unknown sequences.
    pub(crate) fn release(&mut self, seq: SeqId) {
        if let Some(c) = self.seqs.remove(&seq) {
            self.allocated -= c.cap;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(capacity: usize) -> KvPool {
        let shape = KvShape {
            layers: 2,
            kv_heads: 2,
            head_dim: 4,
        };
        KvPool::new(shape, DType::F32, Device::Cpu, capacity)
    }

    #[test]
    fn growth_stays_under_capacity_and_release_frees() {
        let mut p = pool(450);
        p.prepare(1, 0, 10).unwrap();
        assert_eq!(p.allocated(), CHUNK);
        p.commit(1, 10);
        p.prepare(2, 0, 150).unwrap();
        assert_eq!(p.allocated(), CHUNK + 2 * CHUNK);
        p.commit(2, 150);
        // Sequence 1 needs 130 cells: the doubling to 256 is trimmed to what is free.
        p.prepare(1, 10, 120).unwrap();
        assert_eq!(p.allocated(), 450);
        let err = p.prepare(3, 0, 1).unwrap_err();
        assert!(matches!(err, CandleError::KvExhausted { .. }), "{err}");
        p.release(2);
        assert_eq!(p.allocated(), 450 - 2 * CHUNK);
        p.prepare(3, 0, 1).unwrap();
    }

    #[test]
    fn writes_survive_growth() {
        let mut p = pool(1024);
        p.prepare(7, 0, 3).unwrap();
        let k = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((3, 2, 4))
            .unwrap();
        for layer in 0..2 {
            p.write(7, layer, &k, &k).unwrap();
        }
        p.commit(7, 3);
        p.prepare(7, 3, CHUNK).unwrap();
        let one = Tensor::ones((CHUNK, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let (ck, _) = p.write(7, 0, &one, &one).unwrap();
        assert_eq!(ck.dims(), &[2, 3 + CHUNK, 4]);
        let first: Vec<f32> = ck
            .narrow(1, 0, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<f32> = k
            .transpose(0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(first, expected);
        assert!(matches!(
            p.prepare(7, 500, 1),
            Err(CandleError::OutOfOrder { .. })
        ));
    }
}
