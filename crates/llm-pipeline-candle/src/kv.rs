//! Per-sequence KV caches under one budget of cells.
//!
//! Each sequence owns, per layer, a key and a value tensor of shape `(kv_heads, cap, head_dim)`
//! that attention reads as a prefix view `(kv_heads, len, head_dim)`: a sequence attends only to
//! its own cache, in the same order whatever else is in the batch, so batching never changes a
//! sequence's numbers. Caches grow in chunks (doubling, at least [`CHUNK`] cells) instead of
//! being preallocated at `MAX_MODEL_LEN`, so short requests do not reserve long ones' memory.
//! Every cell allocated counts against the capacity reported to the engine, and the last chunk
//! is trimmed to what is free, so the allocated total never exceeds that capacity. The engine
//! counts tokens, not cells, so the cells doubling leaves unused could make a sequence the
//! engine admitted find no room; when that happens the other sequences' caches are compacted to
//! the cells they use, which frees every such cell: whatever the engine's token count admits,
//! the pool holds.
//!
//! Prefix caching: with it on, a released sequence's cache is retained with the tokens it holds,
//! oldest first, and stops counting against the capacity: any live sequence that needs room
//! evicts retained caches, oldest first. A new sequence whose tokens start like a retained cache
//! takes it over when the whole retained cache is its prefix (a next chat turn, a preempted
//! sequence coming back), and otherwise gets a copy of the common cells (a shared system
//! prompt), which leaves the retained cache for others. Copying a cell costs a small fraction of
//! computing it.

use std::collections::{HashMap, VecDeque};

use candle_core::{DType, Device, Tensor};
use llm_pipeline_core::backend::{SeqId, common_prefix};

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
    /// Cells the current step needs (`len` plus the tokens it prepared room for).
    wanted: usize,
    /// Cells allocated.
    cap: usize,
    /// The tokens of the first `len` cells (kept with prefix caching only).
    tokens: Vec<u32>,
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
    /// Cells of live sequences.
    allocated: usize,
    seqs: HashMap<SeqId, SeqCache>,
    prefix_caching: bool,
    /// Released caches kept for prefix caching, oldest first.
    retained: VecDeque<SeqCache>,
    /// Their cells: within the capacity, but yielded to live sequences on demand.
    retained_cells: usize,
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
            prefix_caching: false,
            retained: VecDeque::new(),
            retained_cells: 0,
        }
    }

    /// Keeps released caches for [`KvPool::reuse`].
    pub(crate) fn with_prefix_caching(mut self, on: bool) -> Self {
        self.prefix_caching = on;
        self
    }

    /// Caps one sequence's cache at `max_len` cells.
    pub(crate) fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.min(self.capacity);
        self
    }

    /// Cells allocated to live sequences.
    pub(crate) fn allocated(&self) -> usize {
        self.allocated
    }

    /// Cells of retained caches.
    pub(crate) fn retained(&self) -> usize {
        self.retained_cells
    }

    /// Cells neither live nor retained.
    fn unused(&self) -> usize {
        self.capacity - self.allocated - self.retained_cells
    }

    /// Evicts retained caches, oldest first, until `cells` are unused.
    fn make_room(&mut self, cells: usize) {
        while self.unused() < cells {
            let Some(old) = self.retained.pop_front() else {
                return;
            };
            self.retained_cells -= old.cap;
        }
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
            c.wanted = needed;
            c.tokens.truncate(start_us);
        }
        if needed <= cap {
            return Ok(());
        }
        if needed - cap > self.capacity - self.allocated {
            self.compact(seq)?;
        }
        let free = self.capacity - self.allocated;
        if needed > self.max_len || needed - cap > free {
            return Err(CandleError::KvExhausted {
                seq,
                needed: needed - cap,
                free,
            });
        }
        // Grow by doubling into unused cells; evict retained caches only for what is needed.
        let wanted = needed
            .next_multiple_of(CHUNK)
            .max(cap * 2)
            .min(self.max_len);
        let mut new_cap = wanted.min(cap + self.unused());
        if new_cap < needed {
            new_cap = needed
                .next_multiple_of(CHUNK)
                .min(cap + free)
                .min(self.max_len);
            self.make_room(new_cap - cap);
        }
        self.grow(seq, new_cap)?;
        if let Some(c) = self.seqs.get_mut(&seq) {
            c.wanted = needed;
        }
        Ok(())
    }

    /// Shrinks every live cache but `keep`'s to the cells its sequence uses this step.
    fn compact(&mut self, keep: SeqId) -> Result<(), CandleError> {
        let mut freed = 0;
        for (id, c) in &mut self.seqs {
            let used = c.wanted.max(c.len);
            if *id == keep || c.cap <= used {
                continue;
            }
            let mut shrunk = alloc(self.shape, self.dtype, &self.device, used)?;
            copy_cells(&c.layers, &mut shrunk, c.len)
                .map_err(CandleError::candle("compacting KV cache"))?;
            freed += c.cap - used;
            c.cap = used;
            c.layers = shrunk;
        }
        if freed > 0 {
            tracing::debug!(freed, "KV caches compacted to the cells in use");
        }
        self.allocated -= freed;
        Ok(())
    }

    fn grow(&mut self, seq: SeqId, new_cap: usize) -> Result<(), CandleError> {
        let mut grown = self.alloc(new_cap)?;
        let entry = self.seqs.entry(seq).or_insert_with(|| SeqCache {
            len: 0,
            wanted: 0,
            cap: 0,
            tokens: Vec::new(),
            layers: Vec::new(),
        });
        copy_cells(&entry.layers, &mut grown, entry.len)
            .map_err(CandleError::candle("growing KV cache"))?;
        self.allocated += new_cap - entry.cap;
        entry.cap = new_cap;
        entry.layers = grown;
        Ok(())
    }

    /// Zeroed tensors for a cache of `cap` cells.
    fn alloc(&self, cap: usize) -> Result<Vec<(Tensor, Tensor)>, CandleError> {
        alloc(self.shape, self.dtype, &self.device, cap)
    }

    /// Prefix caching: gives `seq`, which has no cache yet, the longest prefix of `tokens` that
    /// a retained cache holds, and returns its length (0 without prefix caching, or when
    /// nothing matches or fits).
    pub(crate) fn reuse(&mut self, seq: SeqId, tokens: &[u32]) -> usize {
        if !self.prefix_caching || self.seqs.contains_key(&seq) {
            return 0;
        }
        let Some((at, common)) = self
            .retained
            .iter()
            .enumerate()
            .map(|(at, c)| (at, common_prefix(&c.tokens, tokens)))
            .max_by_key(|&(at, common)| (common, at))
        else {
            return 0;
        };
        if common == 0 {
            return 0;
        }
        let Some(mut source) = self.retained.remove(at) else {
            return 0;
        };
        if common == source.len {
            // The whole cache is the prefix: the sequence takes it over.
            self.retained_cells -= source.cap;
            source.tokens.truncate(common);
            self.allocated += source.cap;
            self.seqs.insert(seq, source);
            return common;
        }
        // Part of it: a copy of the common cells, the original back as the newest. Its cells
        // stay counted while room is made for the copy.
        let cap = common.next_multiple_of(CHUNK).min(self.max_len);
        self.make_room(cap);
        let copied = if self.unused() >= cap {
            self.alloc(cap).and_then(|mut layers| {
                copy_cells(&source.layers, &mut layers, common)
                    .map_err(CandleError::candle("copying a cached prefix"))?;
                Ok(layers)
            })
        } else {
            Err(CandleError::KvExhausted {
                seq,
                needed: cap,
                free: self.unused(),
            })
        };
        let reused = match copied {
            Ok(layers) => {
                self.allocated += cap;
                self.seqs.insert(
                    seq,
                    SeqCache {
                        len: common,
                        wanted: common,
                        cap,
                        tokens: tokens[..common].to_vec(),
                        layers,
                    },
                );
                common
            }
            Err(e) => {
                tracing::debug!(seq, error = %e, "not reusing a cached prefix");
                0
            }
        };
        self.retained.push_back(source);
        reused
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

    /// Marks `tokens` of `seq` as cached after what it held.
    pub(crate) fn commit(&mut self, seq: SeqId, tokens: &[u32]) {
        if let Some(c) = self.seqs.get_mut(&seq) {
            c.len += tokens.len();
            if self.prefix_caching {
                c.tokens.extend_from_slice(tokens);
            }
        }
    }

    /// Forgets what `seq` cached from position `len` on; its cells stay allocated to it, to be
    /// written again.
    pub(crate) fn truncate(&mut self, seq: SeqId, len: usize) {
        if let Some(c) = self.seqs.get_mut(&seq) {
            c.len = c.len.min(len);
            c.tokens.truncate(len);
        }
    }

    /// Frees `seq`'s cache, or with prefix caching retains it as the newest; a no-op for
    /// unknown sequences. Retained caches that hold a prefix of it are dropped: it serves every
    /// request they would (a conversation's earlier turns, a copied system prompt).
    pub(crate) fn release(&mut self, seq: SeqId) {
        let Some(c) = self.seqs.remove(&seq) else {
            return;
        };
        self.allocated -= c.cap;
        if !self.prefix_caching || c.len == 0 {
            return;
        }
        let cells = &mut self.retained_cells;
        self.retained.retain(|old| {
            let covered = common_prefix(&old.tokens, &c.tokens) == old.len;
            if covered {
                *cells -= old.cap;
            }
            !covered
        });
        self.retained_cells += c.cap;
        self.retained.push_back(c);
    }
}

/// Zeroed per-layer key and value tensors of `cap` cells.
fn alloc(
    shape: KvShape,
    dtype: DType,
    device: &Device,
    cap: usize,
) -> Result<Vec<(Tensor, Tensor)>, CandleError> {
    let KvShape {
        layers,
        kv_heads,
        head_dim,
    } = shape;
    let fresh = || {
        Tensor::zeros((kv_heads, cap, head_dim), dtype, device)
            .map_err(CandleError::candle("allocating KV cache"))
    };
    (0..layers).map(|_| Ok((fresh()?, fresh()?))).collect()
}

/// Copies the first `len` cells of every layer of `from` into `to`.
fn copy_cells(
    from: &[(Tensor, Tensor)],
    to: &mut [(Tensor, Tensor)],
    len: usize,
) -> candle_core::Result<()> {
    if len == 0 {
        return Ok(());
    }
    for ((fk, fv), (tk, tv)) in from.iter().zip(to.iter_mut()) {
        tk.slice_set(&fk.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
        tv.slice_set(&fv.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
    }
    Ok(())
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
        p.commit(1, &[0; 10]);
        p.prepare(2, 0, 150).unwrap();
        assert_eq!(p.allocated(), CHUNK + 2 * CHUNK);
        p.commit(2, &[0; 150]);
        // Sequence 1 needs 130 cells: the doubling to 256 is trimmed to what is free.
        p.prepare(1, 10, 120).unwrap();
        assert_eq!(p.allocated(), 450);
        p.commit(1, &[0; 120]);
        // 280 tokens in 450 cells: a new sequence of 170 finds room once the others' caches
        // are compacted to the cells they use.
        p.prepare(3, 0, 170).unwrap();
        assert_eq!(p.allocated(), 450);
        p.commit(3, &[0; 170]);
        // Every cell holds a token now: one more is refused.
        let err = p.prepare(4, 0, 1).unwrap_err();
        assert!(matches!(err, CandleError::KvExhausted { .. }), "{err}");
        p.release(2);
        assert_eq!(p.allocated(), 300);
        p.prepare(4, 0, 1).unwrap();
    }

    #[test]
    fn compaction_keeps_the_room_prepared_this_step() {
        let mut p = pool(2 * CHUNK);
        feed(&mut p, 1, 0, &[1; 10]);
        // One step: a new sequence takes a chunk, then another needs cells only compaction
        // finds; the first keeps the room it was given.
        p.prepare(2, 0, 20).unwrap();
        p.prepare(3, 0, 100).unwrap();
        assert!(p.seqs[&2].cap >= 20 && p.seqs[&1].cap >= 10);
        let kv = Tensor::zeros((20, 2, 4), DType::F32, &Device::Cpu).unwrap();
        p.write(2, 0, &kv, &kv).unwrap();
    }

    #[test]
    fn a_prefix_copy_never_takes_the_cells_of_the_cache_it_copies() {
        let mut p = pool(2 * CHUNK).with_prefix_caching(true);
        feed(&mut p, 1, 0, &[1, 2, 3, 4]);
        p.release(1);
        feed(&mut p, 2, 0, &[5; 10]);
        // Every cell is live or retained: a partial copy of sequence 1's cache has no room.
        assert_eq!(p.reuse(3, &[1, 2, 9]), 0);
        assert_eq!((p.allocated(), p.retained()), (CHUNK, CHUNK));
        assert!(p.allocated() + p.retained() <= 2 * CHUNK);
    }

    #[test]
    fn compaction_keeps_every_cached_token() {
        let mut p = pool(300);
        feed(&mut p, 1, 0, &[1, 2, 3]);
        feed(&mut p, 2, 0, &[4, 5]);
        assert_eq!(p.allocated(), 2 * CHUNK);
        feed(&mut p, 3, 0, &[9; 200]);
        assert_eq!(p.allocated(), 3 + 2 + 2 * CHUNK);
        assert_eq!(cells(&p, 1, 3), [1, 2, 3]);
        assert_eq!(cells(&p, 2, 2), [4, 5]);
        feed(&mut p, 1, 3, &[6]);
        assert_eq!(cells(&p, 1, 4), [1, 2, 3, 6]);
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
        p.commit(7, &[1, 2, 3]);
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

    /// Writes `tokens` for `seq` at `start` in every layer (each cell holds its token's id) and
    /// commits them.
    fn feed(p: &mut KvPool, seq: SeqId, start: u32, tokens: &[u32]) {
        p.prepare(seq, start, tokens.len()).unwrap();
        let values: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t as f32, 8))
            .collect();
        let kv = Tensor::from_vec(values, (tokens.len(), 2, 4), &Device::Cpu).unwrap();
        for layer in 0..2 {
            p.write(seq, layer, &kv, &kv).unwrap();
        }
        p.commit(seq, tokens);
    }

    /// The token ids `seq`'s first `len` cells hold (read back from layer 1's keys).
    fn cells(p: &KvPool, seq: SeqId, len: usize) -> Vec<u32> {
        let k = &p.seqs[&seq].layers[1].0;
        let v: Vec<Vec<Vec<f32>>> = k.narrow(1, 0, len).unwrap().to_vec3().unwrap();
        v[0].iter().map(|cell| cell[0] as u32).collect()
    }

    #[test]
    fn a_released_cache_is_taken_over_when_it_is_a_prefix() {
        let mut p = pool(1024).with_prefix_caching(true);
        feed(&mut p, 1, 0, &[5, 6, 7, 8]);
        p.release(1);
        assert_eq!((p.allocated(), p.retained()), (0, CHUNK));
        // The next turn: everything cached plus new tokens.
        assert_eq!(p.reuse(2, &[5, 6, 7, 8, 9, 10]), 4);
        assert_eq!((p.allocated(), p.retained()), (CHUNK, 0));
        assert_eq!(cells(&p, 2, 4), [5, 6, 7, 8]);
        feed(&mut p, 2, 4, &[9]);
        assert_eq!(cells(&p, 2, 5), [5, 6, 7, 8, 9]);
        // A sequence that already has a cache is left alone.
        assert_eq!(p.reuse(2, &[5, 6]), 0);
    }

    #[test]
    fn a_partial_match_is_copied_and_the_original_stays() {
        let mut p = pool(1024).with_prefix_caching(true);
        feed(&mut p, 1, 0, &[1, 2, 3, 4, 5]);
        p.release(1);
        assert_eq!(p.reuse(2, &[1, 2, 3, 9]), 3);
        assert_eq!(cells(&p, 2, 3), [1, 2, 3]);
        assert_eq!((p.allocated(), p.retained()), (CHUNK, CHUNK));
        // Overwriting the copy's tail leaves the original whole for the next one.
        feed(&mut p, 2, 3, &[9]);
        assert_eq!(p.reuse(3, &[1, 2, 3, 4, 5, 6]), 5);
        assert_eq!(cells(&p, 3, 5), [1, 2, 3, 4, 5]);
        assert_eq!(p.reuse(4, &[7, 7]), 0, "nothing in common");
    }

    #[test]
    fn live_sequences_evict_retained_caches_oldest_first() {
        let mut p = pool(3 * CHUNK).with_prefix_caching(true);
        feed(&mut p, 1, 0, &[1; 10]);
        feed(&mut p, 2, 0, &[2; 10]);
        p.release(1);
        p.release(2);
        assert_eq!((p.allocated(), p.retained()), (0, 2 * CHUNK));
        // Two chunks for a live sequence: one unused, one from the oldest retained cache.
        feed(&mut p, 3, 0, &[3; CHUNK + 1]);
        assert_eq!((p.allocated(), p.retained()), (2 * CHUNK, CHUNK));
        assert_eq!(p.reuse(4, &[1; 10]), 0, "sequence 1's cache was evicted");
        assert_eq!(p.reuse(5, &[2; 11]), 10, "sequence 2's is still there");
        // Live sequences hold 139 tokens: a newcomer gets the cells their doublings left
        // unused (compacted away), but no more than the tokens leave.
        assert!(matches!(
            p.prepare(6, 0, 3 * CHUNK - 139 + 1),
            Err(CandleError::KvExhausted { .. })
        ));
        p.prepare(6, 0, CHUNK).unwrap();
        assert_eq!(p.allocated(), 139 + CHUNK);
    }

    #[test]
    fn a_retained_prefix_of_a_released_cache_is_dropped() {
        let mut p = pool(1024).with_prefix_caching(true);
        feed(&mut p, 1, 0, &[1, 2, 3]);
        feed(&mut p, 2, 0, &[1, 2, 9]);
        p.release(1);
        p.release(2);
        assert_eq!(p.retained(), 2 * CHUNK, "neither holds the other");
        // A longer conversation with sequence 1's tokens first makes its cache redundant.
        feed(&mut p, 3, 0, &[1, 2, 3, 4, 5]);
        p.release(3);
        assert_eq!(p.retained(), 2 * CHUNK);
        assert_eq!(p.reuse(4, &[1, 2, 3, 4]), 4);
        assert_eq!(p.reuse(5, &[1, 2, 9, 9]), 3);
    }

    #[test]
    fn without_prefix_caching_release_frees_everything() {
        let mut p = pool(1024);
        feed(&mut p, 1, 0, &[1, 2, 3]);
        p.release(1);
        assert_eq!((p.allocated(), p.retained()), (0, 0));
        assert_eq!(p.reuse(2, &[1, 2, 3, 4]), 0);
    }
}
