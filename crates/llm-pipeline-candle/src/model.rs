//! The decoder over a batch that mixes sequences at different positions.
//!
//! This is Orca's selective batching: every token of the step, whatever its sequence, is one row
//! of a `(tokens, hidden)` matrix, so the projections, the MLP and the LM head each run once per
//! step as one matrix product (where the weights are read once for all sequences). Only attention
//! is split: each sequence's rows attend to that sequence's own KV cache, with a causal mask when
//! it brings more than one token. Rotary embeddings are applied per row from a position table,
//! which is what lets one step carry a prefill chunk at position 0 beside a decode at 900.
//! candle-transformers' Llama cannot do this (it assumes one position per batch), hence our own
//! model code. The families' differences (see [`crate::config`]) are switches in one layer
//! function: per-head query/key norms, norms after attention and MLP, GELU, soft-capping, and
//! a sliding window that narrows the keys a query reads.

use candle_core::{DType, Device, Tensor};
use llm_pipeline_core::backend::BatchEntry;

use crate::CandleError;
use crate::config::{Activation, LayerAttention, ModelConfig, RopeStyle};
use crate::kv::KvPool;
use crate::weights::{LayerWeights, ModelWeights};

/// Query rows of one sequence attended at once (bounds the score matrix of long prefills).
const ATTN_ROWS: usize = 256;

/// A loaded decoder.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) config: ModelConfig,
    pub(crate) weights: ModelWeights,
    /// RoPE tables `(cos, sin)`, global and (Gemma 3) local.
    rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
    /// Gemma's factor on the embeddings, as a scalar in the activation dtype (rounded to it,
    /// as Gemma's own code rounds it).
    embed_scale: Option<Tensor>,
    positions: usize,
    dtype: DType,
    device: Device,
}

/// Where one batch entry's rows are in the step's token matrix.
#[derive(Debug, Clone, Copy)]
struct Span {
    entry: usize,
    offset: usize,
    len: usize,
}

impl Model {
    /// Wraps loaded weights, with RoPE tables for `positions` positions.
    pub(crate) fn new(
        config: ModelConfig,
        weights: ModelWeights,
        positions: usize,
        device: &Device,
    ) -> Result<Self, CandleError> {
        let dtype = weights.embed.dtype();
        let rope = config.rope_tables(positions, false, dtype, device)?;
        let local_rope = if config.has_local_rope() {
            Some(config.rope_tables(positions, true, dtype, device)?)
        } else {
            None
        };
        let embed_scale = config
            .embed_scale
            .map(|scale| Tensor::new(scale, device).and_then(|t| t.to_dtype(dtype)))
            .transpose()
            .map_err(CandleError::candle("embedding scale"))?;
        Ok(Self {
            config,
            weights,
            rope,
            local_rope,
            embed_scale,
            positions,
            dtype,
            device: device.clone(),
        })
    }

    /// The activation dtype.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `batch` and returns the logits `(rows, vocab)` in f32 that the entries ask for, in
    /// batch order; `None` when none does.
    pub(crate) fn forward(
        &self,
        batch: &[BatchEntry<'_>],
        kv: &mut KvPool,
    ) -> Result<Option<Tensor>, CandleError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(batch.len());
        for (i, e) in batch.iter().enumerate() {
            let end = e.start as usize + e.tokens.len();
            if end > self.positions {
                return Err(CandleError::PositionOutOfRange {
                    seq: e.seq,
                    position: end - 1,
                    limit: self.positions,
                });
            }
            kv.prepare(e.seq, e.start, e.tokens.len())?;
            spans.push(Span {
                entry: i,
                offset: ids.len(),
                len: e.tokens.len(),
            });
            ids.extend_from_slice(e.tokens);
            positions.extend(e.start..end as u32);
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let logits = self
            .run(batch, &spans, &ids, &positions, kv)
            .map_err(CandleError::candle("forward step"))?;
        for s in &spans {
            kv.commit(batch[s.entry].seq, batch[s.entry].tokens);
        }
        Ok(logits)
    }

    fn run(
        &self,
        batch: &[BatchEntry<'_>],
        spans: &[Span],
        ids: &[u32],
        positions: &[u32],
        kv: &mut KvPool,
    ) -> candle_core::Result<Option<Tensor>> {
        let t = ids.len();
        let half = self.config.head_dim / 2;
        let ids = Tensor::from_slice(ids, t, &self.device)?;
        let pos = Tensor::from_slice(positions, t, &self.device)?;
        let rope_at = |(cos, sin): &(Tensor, Tensor)| -> candle_core::Result<Rope> {
            Ok(Rope {
                cos: cos.index_select(&pos, 0)?.reshape((t, 1, half))?,
                sin: sin.index_select(&pos, 0)?.reshape((t, 1, half))?,
                style: self.config.rope_style,
            })
        };
        let rope = rope_at(&self.rope)?;
        let local_rope = self.local_rope.as_ref().map(rope_at).transpose()?;
        let mut x = self.weights.embed.index_select(&ids, 0)?;
        if let Some(scale) = &self.embed_scale {
            x = x.broadcast_mul(scale)?;
        }
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let attention = self.config.layers[l];
            let ctx = LayerCtx {
                batch,
                spans,
                rope: match &local_rope {
                    Some(local) if attention.local_rope => local,
                    _ => &rope,
                },
                layer: l,
                attention,
            };
            x = self.layer(layer, &x, &ctx, kv)?;
        }
        let rows: Vec<u32> = spans
            .iter()
            .flat_map(|s| {
                let first = s.offset + batch[s.entry].first_logits();
                (first..s.offset + s.len).map(|row| row as u32)
            })
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let rows = Tensor::from_vec(rows.clone(), rows.len(), &self.device)?;
        let h = x.index_select(&rows, 0)?;
        let h = candle_nn::ops::rms_norm(&h, &self.weights.norm, self.config.rms_norm_eps as f32)?;
        let logits = self.weights.lm_head.forward(&h)?.to_dtype(DType::F32)?;
        Ok(Some(match self.config.final_softcap {
            Some(cap) => softcap(&logits, cap)?,
            None => logits,
        }))
    }

    fn layer(
        &self,
        w: &LayerWeights,
        x: &Tensor,
        ctx: &LayerCtx<'_>,
        kv: &mut KvPool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let t = x.dim(0)?;
        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, eps)?;
        let (q, k, v) = w
            .qkv
            .forward(&h, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim)?;
        let q = q.reshape((t, c.num_heads, 1, c.head_dim))?;
        let k = k.reshape((t, c.num_kv_heads, 1, c.head_dim))?;
        let v = v.reshape((t, c.num_kv_heads, c.head_dim))?;
        let q = norm_if(q, w.q_norm.as_ref(), eps)?;
        let k = norm_if(k, w.k_norm.as_ref(), eps)?;
        let q = ctx.rope.apply(&q)?.reshape((t, c.num_heads, c.head_dim))?;
        let k = ctx
            .rope
            .apply(&k)?
            .reshape((t, c.num_kv_heads, c.head_dim))?;

        let mut outs = Vec::with_capacity(ctx.spans.len());
        for s in ctx.spans {
            let e = &ctx.batch[s.entry];
            let (ck, cv) = kv.write(
                e.seq,
                ctx.layer,
                &k.narrow(0, s.offset, s.len)?,
                &v.narrow(0, s.offset, s.len)?,
            )?;
            // Long prefills attend in slices of query rows, so the score matrix stays
            // `ATTN_ROWS × keys` instead of `prompt × prompt`.
            let mut done = 0;
            while done < s.len {
                let rows = ATTN_ROWS.min(s.len - done);
                let window = Window {
                    start: e.start as usize + done,
                    size: ctx.attention.window,
                };
                // The keys the slice reads: from the first row's window to the last row.
                let first = window.first();
                let keys = window.start + rows - first;
                outs.push(self.attend(
                    &q.narrow(0, s.offset + done, rows)?,
                    &ck.narrow(1, first, keys)?,
                    &cv.narrow(1, first, keys)?,
                    window,
                )?);
                done += rows;
            }
        }
        let attn = Tensor::cat(&outs, 0)?;
        let attn = norm_if(w.o.forward(&attn)?, w.post_attn_norm.as_ref(), eps)?;
        let x = (x + attn)?;
        let h = candle_nn::ops::rms_norm(&x, &w.mlp_norm, eps)?;
        let (gate, up) = w.gate_up.forward(&h, c.intermediate_size)?;
        let gate = match c.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        let mlp = norm_if(
            w.down.forward(&(gate * up)?)?,
            w.post_mlp_norm.as_ref(),
            eps,
        )?;
        x + mlp
    }

    /// One sequence's attention: `q` is `(n, heads, head_dim)` for positions
    /// `window.start..window.start + n`, `k`/`v` the cache `(kv_heads, keys, head_dim)` from
    /// position `window.first`. Returns `(n, heads × head_dim)`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Window,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = q.dim(0)?;
        let len = k.dim(1)?;
        let groups = c.num_heads / c.num_kv_heads;
        // Query heads of one KV head are adjacent (head j uses KV head j / groups), so the
        // groups fold into the row dimension and K/V are never repeated.
        let q =
            q.transpose(0, 1)?
                .contiguous()?
                .reshape((c.num_kv_heads, groups * n, c.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * c.attn_scale)?.to_dtype(DType::F32)?;
        let scores = match c.attn_softcap {
            Some(cap) => softcap(&scores, cap)?,
            None => scores,
        };
        // One row reads exactly its keys (the narrowing did the window); several need a mask.
        let scores = if n > 1 {
            let mask = window.mask(n, len, &self.device)?;
            scores
                .reshape((c.num_kv_heads, groups, n, len))?
                .broadcast_add(&mask)?
                .reshape((c.num_kv_heads, groups * n, len))?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
        let out = probs.matmul(&v.contiguous()?)?;
        out.reshape((c.num_heads, n, c.head_dim))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n, c.num_heads * c.head_dim))
    }
}

/// `x` RMS-normalized with `norm` over its last dimension, or `x` itself for a family without
/// that norm.
fn norm_if(x: Tensor, norm: Option<&Tensor>, eps: f32) -> candle_core::Result<Tensor> {
    match norm {
        Some(n) => candle_nn::ops::rms_norm(&x, n, eps),
        None => Ok(x),
    }
}

/// `cap · tanh(x / cap)`.
fn softcap(x: &Tensor, cap: f32) -> candle_core::Result<Tensor> {
    let cap = f64::from(cap);
    (x / cap)?.tanh()? * cap
}

/// Which keys a slice of query rows reads.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Position of the first query row.
    start: usize,
    /// Sliding-window size, if the layer has one.
    size: Option<usize>,
}

impl Window {
    /// Position of the first key any row of the slice sees: the first row's window start.
    fn first(self) -> usize {
        self.size.map_or(0, |w| (self.start + 1).saturating_sub(w))
    }

    /// The additive mask `(n, len)`: row `i` (position `start + i`) sees key `j` (position
    /// `first() + j`) when it is not later and, with a window, fewer than `size` positions back.
    fn mask(self, n: usize, len: usize, device: &Device) -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                let query = self.start + i;
                let first = self.first();
                (0..len).map(move |j| {
                    let key = first + j;
                    let visible = key <= query && self.size.is_none_or(|w| query - key < w);
                    if visible { 0.0 } else { f32::NEG_INFINITY }
                })
            })
            .collect();
        Tensor::from_vec(mask, (n, len), device)
    }
}

/// What a layer needs besides its weights.
struct LayerCtx<'a> {
    batch: &'a [BatchEntry<'a>],
    spans: &'a [Span],
    rope: &'a Rope,
    layer: usize,
    attention: LayerAttention,
}

/// The step's rotary embedding: one cos/sin row per token.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    /// `x` is `(tokens, heads, 1, head_dim)`: each token is its own "batch" so that it takes
    /// its own position's row of the table.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        match self.style {
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin),
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_causal_from_the_chunk_start() {
        let w = Window {
            start: 3,
            size: None,
        };
        let m: Vec<Vec<f32>> = w.mask(2, 5, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], [0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], [0.0; 5]);
    }

    #[test]
    fn a_window_hides_keys_too_far_back() {
        // Rows at positions 4 and 5 with a window of 3: keys 2..=4 and 3..=5, given from 2.
        let w = Window {
            start: 4,
            size: Some(3),
        };
        assert_eq!(w.first(), 2);
        let inf = f32::NEG_INFINITY;
        let m: Vec<Vec<f32>> = w.mask(2, 4, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], [0.0, 0.0, 0.0, inf]);
        assert_eq!(m[1], [inf, 0.0, 0.0, 0.0]);
    }
}
