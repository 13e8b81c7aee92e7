//! KV cache capacity on a GPU from `GPU_MEMORY_UTILIZATION`: the arithmetic every backend
//! shares, apart from the device query.
//!
//! vLLM's rule, which Livepeer's variable comes from: the process may use
//! `GPU_MEMORY_UTILIZATION × total` bytes of the device; what the KV cache gets is that less
//! everything already in use (other processes, the CUDA context, the weights). Backends differ
//! only in *when* they ask the driver: candle measures after its weights are on the device,
//! llama.cpp (ggml) before, so its weights must still be subtracted. [`Weights`] says which,
//! so that the one function serves both and a test on the CPU can check it with made-up
//! numbers. The fraction is applied in integer parts per million, not in floating point, so
//! that the same inputs give the same byte count on every machine.

/// A device's memory as the driver reports it (`cuMemGetInfo`, NVML, ggml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// The device's memory in bytes.
    pub total_bytes: u64,
    /// Bytes free when measured.
    pub free_bytes: u64,
}

/// Whether the weights were already on the device when its memory was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Measured after loading: they are part of the memory in use.
    Loaded,
    /// Measured before loading: this many bytes are still to come.
    NotYetLoaded {
        /// The weights' size on the device.
        bytes: u64,
    },
}

/// The shape of one token's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Decoder layers.
    pub layers: u64,
    /// Key/value heads per layer.
    pub kv_heads: u64,
    /// Dimension of one head.
    pub head_dim: u64,
    /// Bytes of one element (2 for f16 and bf16).
    pub element_bytes: u64,
}

impl KvShape {
    /// Bytes of KV cache per token: keys and values, every layer.
    pub fn bytes_per_token(&self) -> u64 {
        2 * self.layers * self.kv_heads * self.head_dim * self.element_bytes
    }
}

/// `utilization × total − memory in use − weights not yet loaded`, at least 0.
///
/// `utilization` is `GPU_MEMORY_UTILIZATION`, already validated to lie in (0, 1]; it is
/// rounded to parts per million.
pub fn gpu_kv_budget(memory: DeviceMemory, utilization: f32, weights: Weights) -> u64 {
    let ppm = (f64::from(utilization.clamp(0.0, 1.0)) * 1e6).round() as u128;
    let allowed = (u128::from(memory.total_bytes) * ppm / 1_000_000) as u64;
    let in_use = memory.total_bytes.saturating_sub(memory.free_bytes);
    let to_come = match weights {
        Weights::Loaded => 0,
        Weights::NotYetLoaded { bytes } => bytes,
    };
    allowed.saturating_sub(in_use).saturating_sub(to_come)
}

/// Tokens of KV cache that `budget_bytes` holds, at most `u32::MAX`.
pub fn kv_capacity_tokens(budget_bytes: u64, bytes_per_token: u64) -> u32 {
    (budget_bytes / bytes_per_token.max(1)).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    /// Llama-3-8B in bf16: 32 layers, 8 KV heads of 128.
    const LLAMA3_8B: KvShape = KvShape {
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        element_bytes: 2,
    };

    #[test]
    fn llama3_8b_takes_128_kib_per_token() {
        assert_eq!(LLAMA3_8B.bytes_per_token(), 131_072);
    }

    #[test]
    fn weights_measured_in_use_are_not_subtracted_twice() {
        // candle: 16 GiB of weights and 1 GiB of context already in use.
        let memory = DeviceMemory {
            total_bytes: 100 * GIB,
            free_bytes: 83 * GIB,
        };
        let budget = gpu_kv_budget(memory, 0.9, Weights::Loaded);
        assert_eq!(budget, 73 * GIB);
        assert_eq!(
            kv_capacity_tokens(budget, LLAMA3_8B.bytes_per_token()),
            73 * 8192
        );
    }

    #[test]
    fn weights_still_to_load_are_subtracted() {
        // llama.cpp: measured with 1 GiB in use, 16 GiB of weights to come.
        let memory = DeviceMemory {
            total_bytes: 100 * GIB,
            free_bytes: 99 * GIB,
        };
        let weights = Weights::NotYetLoaded { bytes: 16 * GIB };
        assert_eq!(gpu_kv_budget(memory, 0.5, weights), 33 * GIB);
    }

    #[test]
    fn the_fraction_is_exact_to_the_byte() {
        let memory = DeviceMemory {
            total_bytes: 1_000_000_000,
            free_bytes: 1_000_000_000,
        };
        // 0.85 is 0.8500000238… as an f32; the budget is still 850 000 000 bytes.
        assert_eq!(gpu_kv_budget(memory, 0.85, Weights::Loaded), 850_000_000);
        assert_eq!(gpu_kv_budget(memory, 1.0, Weights::Loaded), 1_000_000_000);
    }

    #[test]
    fn an_overcommitted_device_leaves_nothing() {
        let memory = DeviceMemory {
            total_bytes: 100 * GIB,
            free_bytes: 83 * GIB,
        };
        assert_eq!(gpu_kv_budget(memory, 0.1, Weights::Loaded), 0);
        let weights = Weights::NotYetLoaded { bytes: 200 * GIB };
        assert_eq!(gpu_kv_budget(memory, 1.0, weights), 0);
        // A driver reporting more free than total does not underflow.
        let odd = DeviceMemory {
            total_bytes: GIB,
            free_bytes: 2 * GIB,
        };
        assert_eq!(gpu_kv_budget(odd, 1.0, Weights::Loaded), GIB);
        assert_eq!(kv_capacity_tokens(0, 131_072), 0);
    }

    #[test]
    fn capacity_saturates_and_survives_a_zero_token_size() {
        assert_eq!(kv_capacity_tokens(u64::MAX, 1), u32::MAX);
        assert_eq!(kv_capacity_tokens(10, 0), 10);
    }
}
