//! [`Backend`] over one llama.cpp context shared by all running sequences.
//!
//! The context holds one KV stream of `MAX_MODEL_LEN` cells per sequence slot, as many as the
//! memory budget holds, or with `KV_UNIFIED` one pool of cells that all slots share when the
//! streams do not all fit (see [`kv_layout`]).
//! Each engine step is one `llama_decode` over a batch mixing prefill chunks and decode tokens,
//! asking for logits only where the engine needs them. Engine sequence ids are mapped to
//! llama.cpp's sequence slots.
//!
//! Prefix caching: a released slot keeps its KV cells and remembers their tokens. A new
//! sequence whose tokens start like a free slot's (over more than half of its tokens) takes
//! that slot, drops the cells past the common prefix and starts computing after it
//! ([`Backend::reuse_prefix`]), as llama-server's slots do; repeated system prompts,
//! multi-turn chats and recomputed preempted sequences skip most of their prefill. With
//! streams, slots without a match are handed out lowest id first, which keeps busy slots
//! contiguous: llama.cpp batches only consecutive streams into one ubatch; a slot's cells are
//! its own stream, so what a free slot keeps takes nothing from running sequences. In a pool,
//! what free slots keep occupies cells that running sequences may need: before each step the
//! backend drops the kept cells of the least recently released slots until the step's tokens
//! fit, and a new sequence without a match takes the least recently released slot.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::Path;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::token::LlamaToken;
use llm_pipeline_core::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId, common_prefix};
use llm_pipeline_core::config::PipelineConfig;
use llm_pipeline_core::memory::{DeviceMemory, Weights, gpu_kv_budget};

use crate::LlamaCppError;
use crate::runtime;

/// llama.cpp's own cap on sequences per context (`LLAMA_MAX_SEQ`).
const LLAMA_MAX_SEQ: u32 = 256;

/// The llama.cpp backend.
pub struct LlamaCppBackend {
    // Field order matters: the context borrows the model and must be dropped first.
    ctx: LlamaContext<'static>,
    model: Box<LlamaModel>,
    batch: LlamaBatch<'static>,
    slots: HashMap<SeqId, i32>,
    /// Free slots, least recently released first.
    free_slots: VecDeque<i32>,
    /// The tokens in each slot's KV cells, by position; kept after release for reuse.
    cached: Vec<Vec<u32>>,
    /// `ENABLE_PREFIX_CACHING`.
    prefix_caching: bool,
    /// Whether all slots share one pool of cells ([`KvLayout::Pool`]) rather than a stream each.
    pooled: bool,
    info: BackendInfo,
}

impl std::fmt::Debug for LlamaCppBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppBackend")
            .field("info", &self.info)
            .field("sequences", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// How the model is split over GPUs, from `TENSOR_PARALLEL_SIZE` and `PIPELINE_PARALLEL_SIZE`.
fn split_mode(config: &PipelineConfig, gpus: usize) -> Result<LlamaSplitMode, LlamaCppError> {
    let (tp, pp) = (config.tensor_parallel_size, config.pipeline_parallel_size);
    if tp == 1 && pp == 1 {
        return Ok(LlamaSplitMode::Layer);
    }
    let wanted = tp as usize * pp as usize;
    if tp > 1 && pp > 1 {
        return Err(LlamaCppError::Unsupported {
            setting: "TENSOR_PARALLEL_SIZE",
            message: "llama.cpp splits a model by rows or by layers, not both: set one of \
                      TENSOR_PARALLEL_SIZE and PIPELINE_PARALLEL_SIZE to 1"
                .into(),
        });
    }
    if gpus < wanted {
        return Err(LlamaCppError::Unsupported {
            setting: if tp > 1 {
                "TENSOR_PARALLEL_SIZE"
            } else {
                "PIPELINE_PARALLEL_SIZE"
            },
            message: format!("{wanted} GPUs requested but {gpus} found"),
        });
    }
    Ok(if tp > 1 {
        LlamaSplitMode::Row
    } else {
        LlamaSplitMode::Layer
    })
}

/// The KV budget over the GPUs llama.cpp spreads the model across (all it found): on each,
/// `GPU_MEMORY_UTILIZATION × total − in use − its share of the weights`. ggml measured the
/// devices before the weights were loaded, so they are subtracted here.
fn gpus_kv_budget(gpus: &[runtime::DeviceInfo], utilization: f32, weight_bytes: u64) -> u64 {
    let share = weight_bytes.div_ceil(gpus.len().max(1) as u64);
    gpus.iter()
        .map(|gpu| {
            let memory = DeviceMemory {
                total_bytes: gpu.total_bytes,
                free_bytes: gpu.free_bytes,
            };
            gpu_kv_budget(memory, utilization, Weights::NotYetLoaded { bytes: share })
        })
        .sum()
}

/// KV cache bytes per token: keys and values, f16, every layer.
fn kv_bytes_per_token(model: &LlamaModel) -> u64 {
    let head_dim = model.n_embd() as u64 / u64::from(model.n_head().max(1));
    2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim * 2
}

/// How the KV cache is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// One stream of `cells_per_seq` cells per sequence slot (llama.cpp's non-unified cache).
    Streams {
        /// Sequence slots (llama.cpp's `n_seq_max`).
        seqs: u32,
        /// Cells per slot: `MAX_MODEL_LEN` rounded up to llama.cpp's 256-cell padding.
        cells_per_seq: u32,
    },
    /// One pool of `cells` shared by `seqs` slots (llama.cpp's unified cache): a sequence takes
    /// cells as it grows and gives them back when it ends.
    Pool {
        /// Sequence slots (llama.cpp's `n_seq_max`).
        seqs: u32,
        /// Cells in the pool, a multiple of 256.
        cells: u32,
    },
}

impl KvLayout {
    /// Sequence slots.
    pub fn seqs(&self) -> u32 {
        match *self {
            Self::Streams { seqs, .. } | Self::Pool { seqs, .. } => seqs,
        }
    }

    /// Cells in all: llama.cpp's `n_ctx`.
    pub fn cells(&self) -> u32 {
        match *self {
            Self::Streams {
                seqs,
                cells_per_seq,
            } => seqs * cells_per_seq,
            Self::Pool { cells, .. } => cells,
        }
    }

    /// Whether the sequences share one pool (llama.cpp's `kv_unified`).
    pub fn unified(&self) -> bool {
        matches!(self, Self::Pool { .. })
    }
}

impl std::fmt::Display for KvLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Streams {
                seqs,
                cells_per_seq,
            } => write!(f, "{seqs} sequences × {cells_per_seq} KV cells"),
            Self::Pool { seqs, cells } => write!(f, "{seqs} sequences sharing {cells} KV cells"),
        }
    }
}

/// Sizes the KV cache for `MAX_NUM_SEQS` sequences of up to `MAX_MODEL_LEN` tokens under the
/// memory budget.
///
/// By default each sequence gets its own stream of `MAX_MODEL_LEN` cells
/// ([`KvLayout::Streams`]), as many as the budget holds: attention then runs over the
/// sequence's own cells only, in the same order whatever else is in the batch, so a greedy
/// answer does not depend on the other requests, and attention costs each sequence only its
/// own length. Whole streams let the budget cap concurrency (4 GiB holds 22 streams of 8192
/// cells of SmolLM2). With `KV_UNIFIED`, when the streams do not all fit, the sequences share
/// one pool of every cell the budget holds instead ([`KvLayout::Pool`]) and the engine admits
/// them by the tokens they hold, as vLLM's paged cache does. But llama.cpp's attention over a
/// pool reads every occupied cell and masks out the other sequences', so its cost grows with
/// the tokens of the whole batch (on a CPU, decoding 64 sequences was 2.5 times slower than 22
/// streams running them in turn), and where a step puts other sequences' cells changes a
/// sequence's last bits.
///
/// The budget is `GPU_MEMORY_UTILIZATION × GPU memory − memory in use − weights` on a GPU, and
/// `CPU_KV_CACHE_SPACE` on the CPU.
///
/// # Errors
/// [`LlamaCppError::Unsupported`] naming `MAX_MODEL_LEN` when not even one sequence fits.
pub fn kv_layout(
    config: &PipelineConfig,
    budget_bytes: u64,
    bytes_per_token: u64,
) -> Result<KvLayout, LlamaCppError> {
    let cells_per_seq = config.max_model_len.div_ceil(256).saturating_mul(256);
    let wanted = config.max_num_seqs.min(LLAMA_MAX_SEQ);
    let fit = budget_bytes / bytes_per_token.max(1);
    let streams = (fit / u64::from(cells_per_seq)).min(u64::from(wanted)) as u32;
    if streams == wanted || (!config.kv_unified && streams > 0) {
        if streams < config.max_num_seqs {
            tracing::warn!(
                requested = config.max_num_seqs,
                streams,
                budget_bytes,
                "the KV budget holds fewer MAX_MODEL_LEN streams than MAX_NUM_SEQS \
                 (KV_UNIFIED shares one pool among them all)"
            );
        }
        return Ok(KvLayout::Streams {
            seqs: streams,
            cells_per_seq,
        });
    }
    let cells = (fit.min(u64::from(u32::MAX)) as u32) / 256 * 256;
    if !config.kv_unified || cells < config.max_model_len {
        return Err(LlamaCppError::Unsupported {
            setting: "MAX_MODEL_LEN",
            message: format!(
                "one sequence of MAX_MODEL_LEN={} needs {} bytes of KV cache \
                 ({bytes_per_token} per token) but the budget is {budget_bytes}; lower \
                 MAX_MODEL_LEN or raise CPU_KV_CACHE_SPACE / GPU_MEMORY_UTILIZATION",
                config.max_model_len,
                u64::from(cells_per_seq) * bytes_per_token,
            ),
        });
    }
    Ok(KvLayout::Pool {
        seqs: wanted,
        cells,
    })
}

impl LlamaCppBackend {
    /// Loads a GGUF model and creates its context under `config`.
    ///
    /// # Errors
    /// [`LlamaCppError`] when the file cannot be loaded, a setting cannot be honoured, or the
    /// context cannot be created.
    pub fn load(path: &Path, config: &PipelineConfig) -> Result<Self, LlamaCppError> {
        let rt = runtime::runtime()?;
        let gpus: Vec<_> = rt.gpus().cloned().collect();
        let mut params =
            LlamaModelParams::default().with_split_mode(split_mode(config, gpus.len())?);
        if !gpus.is_empty() {
            params = params.with_n_gpu_layers(u32::MAX / 2);
        }
        let model = LlamaModel::load_from_file(&rt.backend, path, &params).map_err(|e| {
            LlamaCppError::Load {
                path: path.to_path_buf(),
                source: e,
            }
        })?;
        let model = Box::new(model);
        let bytes_per_token = kv_bytes_per_token(&model);
        let budget = if gpus.is_empty() {
            config.cpu_kv_cache_bytes
        } else {
            gpus_kv_budget(&gpus, config.gpu_memory_utilization, model.size())
        };
        let layout = kv_layout(config, budget, bytes_per_token)?;
        let max_seqs = layout.seqs();
        let n_batch = config.max_num_batched_tokens;
        let threads = config.effective_threads() as i32;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(layout.cells()))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch.min(512))
            .with_n_seq_max(max_seqs)
            .with_kv_unified(layout.unified())
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        // SAFETY: the model is boxed (its address is stable) and outlives the context: the
        // context field is declared first, so it is dropped first.
        let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };
        let ctx = model_ref
            .new_context(&rt.backend, ctx_params)
            .map_err(|e| LlamaCppError::Context { source: e })?;
        let description = format!(
            "llama.cpp ({}; cpu variant {}; {} threads; {layout})",
            gpus.first()
                .map_or_else(|| "CPU".to_string(), |g| g.description.clone()),
            rt.cpu_variant.as_deref().unwrap_or("unknown"),
            threads,
        );
        let info = BackendInfo {
            name: "llama-cpp",
            vocab_size: model.n_vocab() as usize,
            trained_context: model.n_ctx_train(),
            kv_capacity: ctx.n_ctx(),
            max_batch_tokens: n_batch,
            max_seqs,
            description,
        };
        tracing::info!(?info, bytes_per_token, budget, "llama.cpp backend loaded");
        Ok(Self {
            ctx,
            model,
            batch: LlamaBatch::new(n_batch as usize, 1),
            slots: HashMap::new(),
            free_slots: (0..max_seqs as i32).collect(),
            cached: vec![Vec::new(); max_seqs as usize],
            prefix_caching: config.prefix_caching,
            pooled: layout.unified(),
            info,
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    fn slot(&mut self, seq: SeqId) -> Result<i32, LlamaCppError> {
        if let Some(&slot) = self.slots.get(&seq) {
            return Ok(slot);
        }
        let too_many = LlamaCppError::TooManySequences {
            max: self.info.max_seqs,
        };
        // With streams, the lowest free slot, so that busy slots stay contiguous (see
        // `forward`); in a pool, the least recently released, whose kept cells are the least
        // likely to be reused. A prefix match (`reuse_prefix`) may still pick any slot.
        let at = if self.pooled {
            if self.free_slots.is_empty() {
                return Err(too_many);
            }
            0
        } else {
            self.free_slots
                .iter()
                .enumerate()
                .min_by_key(|&(_, &slot)| slot)
                .map(|(at, _)| at)
                .ok_or(too_many)?
        };
        let slot = self.free_slots.remove(at).expect("an index found above");
        self.forget(slot);
        self.slots.insert(seq, slot);
        Ok(slot)
    }

    /// In a pool: drops the cells that free slots keep, least recently released first, until
    /// `needed` more cells are free. The engine admits sequences by the cells they hold, so
    /// dropping every kept cell always makes room for a step it planned.
    fn make_room(&mut self, needed: usize) {
        if !self.pooled {
            return;
        }
        let mut held: usize = self.cached.iter().map(Vec::len).sum();
        let capacity = self.info.kv_capacity as usize;
        let mut next = 0;
        while held + needed > capacity && next < self.free_slots.len() {
            let slot = self.free_slots[next];
            held -= self.cached[slot as usize].len();
            self.forget(slot);
            next += 1;
        }
    }

    /// Drops what `slot` kept from its previous sequence.
    fn forget(&mut self, slot: i32) {
        let cached = &mut self.cached[slot as usize];
        if cached.is_empty() {
            return;
        }
        cached.clear();
        if let Err(e) = self.ctx.kv_cache_seq_rm(slot, None, None) {
            tracing::error!(slot, error = %e, "cannot clear the KV cache of a slot");
        }
    }
}

impl Backend for LlamaCppBackend {
    type Error = LlamaCppError;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn forward(
        &mut self,
        batch: &[BatchEntry<'_>],
        logits: &mut Logits,
    ) -> Result<(), LlamaCppError> {
        self.batch.clear();
        // In slot order: with one KV stream per slot, llama.cpp puts into one ubatch only
        // sequences whose slot ids follow each other in the batch (`split_equal` with
        // `sequential`), and every ubatch reads all the weights again. In engine order, 32
        // decoding sequences cost up to 32 ubatches; in slot order, as many as there are gaps
        // between busy slots. Logits still come out in engine order.
        let mut order = Vec::with_capacity(batch.len());
        for (i, entry) in batch.iter().enumerate() {
            order.push((self.slot(entry.seq)?, i));
        }
        order.sort_unstable();
        self.make_room(batch.iter().map(|e| e.tokens.len()).sum());
        // Each entry's first logits row in the llama.cpp batch; its rows follow it.
        let mut rows = vec![None; batch.len()];
        for &(slot, i) in &order {
            let entry = &batch[i];
            let first = entry.first_logits();
            for (t, &token) in entry.tokens.iter().enumerate() {
                let wants = entry.logits > 0 && t >= first;
                let pos = (entry.start as usize + t) as i32;
                self.batch
                    .add(LlamaToken(token as i32), pos, &[slot], wants)
                    .map_err(|e| LlamaCppError::Batch { source: e })?;
                if wants && t == first {
                    rows[i] = Some(self.batch.n_tokens() - 1);
                }
            }
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            // What the failed step left in its slots is unknown: keep none of it for reuse.
            for entry in batch {
                if let Some(&slot) = self.slots.get(&entry.seq) {
                    self.forget(slot);
                }
            }
            return Err(LlamaCppError::Decode { source: e });
        }
        for entry in batch {
            let cached = &mut self.cached[self.slots[&entry.seq] as usize];
            cached.truncate(entry.start as usize);
            cached.extend_from_slice(entry.tokens);
        }
        for (entry, first) in batch.iter().zip(rows) {
            if let Some(first) = first {
                for i in first..first + entry.logits as i32 {
                    logits.push_row(self.ctx.get_logits_ith(i));
                }
            }
        }
        Ok(())
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), LlamaCppError> {
        let Some(&slot) = self.slots.get(&seq) else {
            return Ok(());
        };
        self.cached[slot as usize].truncate(len as usize);
        self.ctx
            .kv_cache_seq_rm(slot, Some(len), None)
            .map_err(|e| LlamaCppError::Truncate { source: e })?;
        Ok(())
    }

    fn release(&mut self, seq: SeqId) {
        // The cells stay, for a later sequence with the same prefix.
        if let Some(slot) = self.slots.remove(&seq) {
            self.free_slots.push_back(slot);
        }
    }

    fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> u32 {
        if !self.prefix_caching || self.slots.contains_key(&seq) {
            return 0;
        }
        let Some((at, slot, common)) = self
            .free_slots
            .iter()
            .enumerate()
            .map(|(at, &slot)| (at, slot, common_prefix(&self.cached[slot as usize], tokens)))
            .max_by_key(|&(at, _, common)| (common, std::cmp::Reverse(at)))
        else {
            return 0;
        };
        // As llama-server decides: a slot is taken for its prefix only when that covers more
        // than half of the new tokens. A smaller match (a shared "Document 3-" at the start of
        // two different documents) would save a few tokens and wipe a whole cached prompt;
        // such a sequence gets a free slot as any other does.
        if common == 0 || 2 * common <= tokens.len() {
            return 0;
        }
        self.free_slots.remove(at);
        self.slots.insert(seq, slot);
        if let Err(e) = self.ctx.kv_cache_seq_rm(slot, Some(common as u32), None) {
            tracing::warn!(slot, error = %e, "cannot trim a slot's KV cache; not reusing it");
            self.forget(slot);
            return 0;
        }
        self.cached[slot as usize].truncate(common);
        common as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_layout_respects_budget_and_floor() {
        let config = PipelineConfig::default()
            .with_max_model_len(2000)
            .with_max_num_seqs(4)
            .validated()
            .unwrap();
        let layout = |budget| kv_layout(&config, budget, 1000);
        let pooled = config.clone().with_kv_unified(true);
        let pool = |budget| kv_layout(&pooled, budget, 1000);
        // Plenty of memory: MAX_NUM_SEQS streams of MAX_MODEL_LEN, padded to 256 cells, with
        // or without KV_UNIFIED.
        let streams = KvLayout::Streams {
            seqs: 4,
            cells_per_seq: 2048,
        };
        for budget in [1 << 40, 4 * 2048 * 1000] {
            assert_eq!(layout(budget).unwrap(), streams);
            assert_eq!(pool(budget).unwrap(), streams);
        }
        assert!(!streams.unified());
        assert_eq!(streams.cells(), 4 * 2048);
        // Less: whole streams only by default...
        let three = layout(4 * 2048 * 1000 - 1).unwrap();
        assert_eq!((three.seqs(), three.cells()), (3, 3 * 2048));
        // ...or, with KV_UNIFIED, every sequence slot sharing every whole 256 cells.
        let shared = pool(4 * 2048 * 1000 - 1).unwrap();
        assert_eq!(
            shared,
            KvLayout::Pool {
                seqs: 4,
                cells: 4 * 2048 - 256
            }
        );
        assert!(shared.unified());
        assert_eq!(pool(2100 * 1000).unwrap().cells(), 2048);
        // Less than one sequence of MAX_MODEL_LEN: refused, naming it.
        for err in [layout(2047 * 1000), pool(2047 * 1000)] {
            let err = err.unwrap_err();
            assert!(err.to_string().contains("MAX_MODEL_LEN"), "{err}");
        }
        // llama.cpp's own cap on sequences, in either layout.
        let many = pooled.with_max_num_seqs(1000);
        assert_eq!(
            kv_layout(&many, 1 << 50, 1000).unwrap().seqs(),
            LLAMA_MAX_SEQ
        );
        assert_eq!(
            kv_layout(&many, 1 << 30, 1000).unwrap().seqs(),
            LLAMA_MAX_SEQ
        );
        // Livepeer's defaults on the CPU with SmolLM2 (23 040 bytes a token): 4 GiB holds 22
        // streams of 8192; with KV_UNIFIED all 128 sequences share a pool of 186 368 cells.
        let default = PipelineConfig::default().validated().unwrap();
        assert_eq!(kv_layout(&default, 4 << 30, 23_040).unwrap().seqs(), 22);
        assert_eq!(
            kv_layout(&default.with_kv_unified(true), 4 << 30, 23_040).unwrap(),
            KvLayout::Pool {
                seqs: 128,
                cells: 186_368
            }
        );
    }

    #[test]
    fn gpu_budget_sums_devices_and_subtracts_each_ones_weights() {
        const GIB: u64 = 1 << 30;
        let gpu = |total: u64, free: u64| runtime::DeviceInfo {
            name: "CUDA0".into(),
            description: "test".into(),
            is_gpu: true,
            free_bytes: free * GIB,
            total_bytes: total * GIB,
        };
        // One 141 GiB device with 1 GiB in use and 16 GiB of weights to come, at 0.85.
        let one = gpus_kv_budget(&[gpu(141, 140)], 0.85, 16 * GIB);
        assert_eq!(one, (141 * GIB * 85 / 100) - GIB - 16 * GIB);
        // Split over two: each holds half the weights; a busier device gives less.
        let two = gpus_kv_budget(&[gpu(100, 100), gpu(100, 90)], 0.5, 20 * GIB);
        assert_eq!(two, (50 - 10) * GIB + (50 - 10 - 10) * GIB);
        // Weights larger than a device's share: that device adds nothing, never a negative.
        assert_eq!(gpus_kv_budget(&[gpu(10, 10)], 0.9, 40 * GIB), 0);
    }

    #[test]
    fn parallelism_without_gpus_is_refused() {
        let tp = PipelineConfig::default().with_parallelism(2, 1);
        let err = split_mode(&tp, 0).unwrap_err();
        assert!(err.to_string().contains("TENSOR_PARALLEL_SIZE"), "{err}");
        let pp = PipelineConfig::default().with_parallelism(1, 2);
        assert!(
            split_mode(&pp, 0)
                .unwrap_err()
                .to_string()
                .contains("PIPELINE_PARALLEL_SIZE")
        );
        assert!(split_mode(&PipelineConfig::default().with_parallelism(2, 2), 8).is_err());
        assert_eq!(split_mode(&tp, 2).unwrap(), LlamaSplitMode::Row);
        assert_eq!(split_mode(&pp, 2).unwrap(), LlamaSplitMode::Layer);
    }
}
