//! SIMD matrix products for Q4_1 and Q8_0 weights on the CPU.
//!
//! candle 0.11's Q4_1 dot product is scalar: on SmolLM2 Q4_1 it decoded at about a third of
//! llama.cpp's speed. Re-quantizing to Q8_0 at load time gets candle's SIMD path but reads 70%
//! more bytes per token. This kernel keeps Q4_1's bits (5 per weight) and does what llama.cpp
//! does: each activation row is quantized to 8 bits per block of 32 with its scale `d` and
//! `s = d·Σq` (Q8_1), and a block's dot product is `d_w·d_x·Σ q_w·q_x + m_w·s_x`.
//!
//! The weights are repacked at load time by pairs of blocks into 40-byte records: the four f16
//! scales (`d0 d1 m0 m1`, one load and one conversion) and 32 bytes whose low nibbles are block
//! 0's 32 weights in order and whose high nibbles are block 1's. One 256-bit load then yields
//! both blocks unpacked with one mask and one shift each: as two AVX2 registers, or one AVX-512
//! register that a single `vpdpbusd` multiplies with 64 activation bytes. On this project's
//! machine (2 vCPUs, AVX-512 VNNI) fewer instructions per block made a measurable difference.
//!
//! Q8_0 (SmolLM2's tied embedding, i.e. its LM head) fits the same shape once made unsigned at
//! load time: `q + 128` with minimum `-128·d`. Where the CPU has AVX-512 VNNI it runs here too;
//! candle's own Q8_0 kernel is AVX2.
//!
//! Records are interleaved by groups of four rows (row 0 pair 0, row 1 pair 0, ..., row 0 pair
//! 1, ...), so that a work item reads its weights as one sequential stream: profiled, the kernel
//! spent most of its time waiting on weight loads, and a single stream is what hardware
//! prefetchers follow best. The work is split over those groups on candle's CPU worker pool;
//! each work item computes its rows against every activation row of the step, in small tiles,
//! so a step's weights are read once whatever the batch size and each unpacked block serves
//! several rows.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Device, Storage, Tensor};

/// Weights per block.
const QK: usize = 32;
/// Bytes per Q4_1 block as stored: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;
/// Bytes per Q8_0 block as stored: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;

/// How a repacked record holds its pair of blocks' weights, after the four f16 scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Q4_1: 32 bytes, block 0 in the low nibbles, block 1 in the high nibbles.
    Nibbles,
    /// Q8_0 made unsigned: 64 bytes `q + 128`, with minimum `-128·d` (so the same
    /// `d·Σ q·x + m·s` holds, and VNNI's unsigned-by-signed product applies).
    Bytes,
}

impl Format {
    const fn record_bytes(self) -> usize {
        match self {
            Self::Nibbles => 8 + QK,
            Self::Bytes => 8 + 2 * QK,
        }
    }
}
/// At most this many activation rows are computed together.
const TILE: usize = 4;
/// Weight rows per work item.
const GROUP: usize = 4;

/// A pair of activation blocks quantized to 8 bits: `ds = [d0, d1, s0, s1]` with `x ≈ d·q` and
/// `s = d·Σq`, then the 64 quantized values.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct PairQ8 {
    ds: [f32; 4],
    qs: [i8; 2 * QK],
}

impl PairQ8 {
    const ZERO: Self = Self {
        ds: [0.0; 4],
        qs: [0; 2 * QK],
    };
}

/// A `(rows, cols)` Q4_1 or Q8_0 matrix, repacked by pairs of blocks.
#[derive(Debug)]
pub(crate) struct PackedMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Repacks a Q4_1 tensor, or a Q8_0 one where the CPU has AVX-512 VNNI (candle's Q8_0
    /// kernel is AVX2); `None` for other types, rows that are not whole pairs of blocks, or a
    /// row count that is not a multiple of the group size.
    pub(crate) fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let format = match q.dtype() {
            GgmlDType::Q4_1 => Format::Nibbles,
            GgmlDType::Q8_0 if Kernel::detect().takes(Format::Bytes) => Format::Bytes,
            _ => return Ok(None),
        };
        let (rows, cols) = match q.shape().dims() {
            [r, c] if c % (2 * QK) == 0 && r % GROUP == 0 => (*r, *c),
            _ => return Ok(None),
        };
        let raw = q.data()?;
        let pairs = cols / (2 * QK);
        let block = match format {
            Format::Nibbles => BLOCK_BYTES,
            Format::Bytes => Q8_0_BYTES,
        };
        let row_bytes = pairs * 2 * block;
        if raw.len() != rows * row_bytes {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(rows * pairs * format.record_bytes());
        for group in raw.chunks_exact(GROUP * row_bytes) {
            for p in 0..pairs {
                for row in group.chunks_exact(row_bytes) {
                    let pair = &row[p * 2 * block..(p + 1) * 2 * block];
                    let (b0, b1) = pair.split_at(block);
                    match format {
                        Format::Nibbles => data.extend(repack_q4_1(b0, b1)),
                        Format::Bytes => match repack_q8_0(b0, b1) {
                            Some(rec) => data.extend(rec),
                            None => return Ok(None),
                        },
                    }
                }
            }
        }
        Ok(Some(Self {
            format,
            rows,
            cols,
            data,
        }))
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `x Wᵀ` for `x` of shape `(m, cols)` in f32 on the CPU; returns `(m, rows)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("Q4_1 matmul: input width {k}, weight width {}", self.cols);
        }
        let pairs = k / (2 * QK);
        let mut acts = vec![PairQ8::ZERO; m * pairs];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                candle_core::bail!("Q4_1 matmul needs f32 input on the CPU");
            };
            let data = &data[layout.start_offset()..layout.start_offset() + m * k];
            for (row, out) in data.chunks_exact(k).zip(acts.chunks_exact_mut(pairs)) {
                quantize_row(row, out);
            }
        }
        let n = self.rows;
        let group_bytes = GROUP * pairs * self.format.record_bytes();
        let mut dst = vec![0f32; m * n];
        let dst_addr = dst.as_mut_ptr() as usize;
        let kernel = Kernel::detect();
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(GROUP), |range| {
            for g in range {
                let rows = g * GROUP..(g + 1) * GROUP;
                let group = &self.data[g * group_bytes..(g + 1) * group_bytes];
                let mut i = 0;
                while i < m {
                    let ra = TILE.min(m - i);
                    // Few activation rows: more weight rows at once, and the other way round,
                    // so that about eight accumulators are live.
                    let widest = if ra <= 2 { 4 } else { 2 };
                    let mut r = rows.start;
                    while r < rows.end {
                        let rw = [4, 2, 1]
                            .into_iter()
                            .find(|&x| x <= widest && x <= rows.end - r)
                            .unwrap_or(1);
                        let mut out = [0f32; GROUP * TILE];
                        let tile = Rows {
                            format: self.format,
                            w: group,
                            first: r - rows.start,
                            rw,
                            acts: &acts[i * pairs..(i + ra) * pairs],
                            ra,
                            pairs,
                        };
                        kernel.dot(tile, &mut out);
                        for ii in 0..rw {
                            for j in 0..ra {
                                // SAFETY: `dst` has `m * n` elements and outlives the pool call;
                                // each weight row belongs to one work item, so element
                                // `(i + j, r + ii)` is written by exactly one worker.
                                unsafe {
                                    *(dst_addr as *mut f32).add((i + j) * n + r + ii) =
                                        out[ii * ra + j];
                                }
                            }
                        }
                        r += rw;
                    }
                    i += ra;
                }
            }
        });
        Tensor::from_vec(dst, (m, n), &Device::Cpu)
    }
}

/// Two stored Q8_0 blocks as one 72-byte record; `None` if `-128·d` is not an exact f16.
fn repack_q8_0(b0: &[u8], b1: &[u8]) -> Option<[u8; 8 + 2 * QK]> {
    let mut out = [0u8; 8 + 2 * QK];
    out[0..2].copy_from_slice(&b0[0..2]);
    out[2..4].copy_from_slice(&b1[0..2]);
    for (k, b) in [b0, b1].into_iter().enumerate() {
        let m = times_minus_128(u16::from_le_bytes([b[0], b[1]]))?;
        out[4 + 2 * k..6 + 2 * k].copy_from_slice(&m.to_le_bytes());
        for (o, &q) in out[8 + k * QK..8 + (k + 1) * QK].iter_mut().zip(&b[2..]) {
            *o = (q as i8 as i16 + 128) as u8;
        }
    }
    Some(out)
}

/// `-128·h` for an f16 `h`, when exact: the exponent grows by 7 and the sign flips.
fn times_minus_128(h: u16) -> Option<u16> {
    let exp = (h >> 10) & 0x1F;
    match exp {
        0 if h & 0x3FF == 0 => Some(h ^ 0x8000),
        1..=23 => Some((h ^ 0x8000) + (7 << 10)),
        _ => None,
    }
}

/// Two stored Q4_1 blocks as one 40-byte record (see the module docs).
fn repack_q4_1(b0: &[u8], b1: &[u8]) -> [u8; 8 + QK] {
    let mut out = [0u8; 8 + QK];
    out[0..2].copy_from_slice(&b0[0..2]);
    out[2..4].copy_from_slice(&b1[0..2]);
    out[4..6].copy_from_slice(&b0[2..4]);
    out[6..8].copy_from_slice(&b1[2..4]);
    // Weight j of a stored block: j < 16 is the low nibble of byte j, else the high nibble of
    // byte j - 16.
    let weight = |b: &[u8], j: usize| {
        if j < QK / 2 {
            b[4 + j] & 0x0F
        } else {
            b[4 + j - QK / 2] >> 4
        }
    };
    for j in 0..QK {
        out[8 + j] = weight(b0, j) | (weight(b1, j) << 4);
    }
    out
}

fn quantize_row(x: &[f32], out: &mut [PairQ8]) {
    for (chunk, p) in x.chunks_exact(2 * QK).zip(out) {
        for half in 0..2 {
            let block = &chunk[half * QK..(half + 1) * QK];
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in p.qs[half * QK..(half + 1) * QK].iter_mut().zip(block) {
                let r = (v * id).round() as i32;
                *q = r as i8;
                sum += r;
            }
            p.ds[half] = d;
            p.ds[2 + half] = d * sum as f32;
        }
    }
}

/// A tile of the product: `rw` consecutive weight rows of a group, from row `first` of the
/// group, against `ra` activation rows; rows are `pairs` pairs of blocks long.
#[derive(Debug, Clone, Copy)]
struct Rows<'a> {
    format: Format,
    /// The group's records.
    w: &'a [u8],
    first: usize,
    rw: usize,
    acts: &'a [PairQ8],
    ra: usize,
    pairs: usize,
}

/// The dot-product implementation chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
            {
                return Self::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// The dot products of a tile; `out[i * ra + j]` is weight row `i` · activation row `j`.
    fn dot(self, t: Rows<'_>, out: &mut [f32]) {
        assert!(t.first + t.rw <= GROUP && t.acts.len() >= t.ra * t.pairs);
        assert!(t.w.len() >= GROUP * t.pairs * t.format.record_bytes());
        assert!(out.len() >= t.rw * t.ra);
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if t.format == Format::Nibbles => simd::dispatch::<false>(t, out),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => simd::dispatch::<true>(t, out),
            _ => dot_scalar(t, out),
        }
    }

    /// Whether this kernel has a SIMD path for `format` (AVX2's `maddubs` would saturate on
    /// unsigned bytes up to 255).
    fn takes(self, format: Format) -> bool {
        match self {
            Self::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => format == Format::Nibbles,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => true,
        }
    }
}

fn dot_scalar(t: Rows<'_>, out: &mut [f32]) {
    let Rows {
        format,
        w,
        first,
        rw,
        acts,
        ra,
        pairs,
    } = t;
    let record = format.record_bytes();
    for i in 0..rw {
        for j in 0..ra {
            let mut sum = 0f32;
            for p in 0..pairs {
                let at = (p * GROUP + first + i) * record;
                let rec = &w[at..at + record];
                let h = |k: usize| half_to_f32(u16::from_le_bytes([rec[2 * k], rec[2 * k + 1]]));
                let a = &acts[j * pairs + p];
                for half in 0..2 {
                    let mut sumi = 0i32;
                    for k in 0..QK {
                        let q = match format {
                            Format::Nibbles if half == 0 => rec[8 + k] & 0x0F,
                            Format::Nibbles => rec[8 + k] >> 4,
                            Format::Bytes => rec[8 + half * QK + k],
                        };
                        sumi += i32::from(q) * i32::from(a.qs[half * QK + k]);
                    }
                    sum += h(half) * a.ds[half] * sumi as f32 + h(2 + half) * a.ds[2 + half];
                }
            }
            out[i * ra + j] = sum;
        }
    }
}

/// IEEE half to f32, for the scalar path.
fn half_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1F);
    let frac = u32::from(h & 0x3FF);
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalize.
            let shift = frac.leading_zeros() - 21;
            let frac = (frac << shift) & 0x3FF;
            sign | ((113 - shift) << 23) | (frac << 13)
        }
        0x1F => sign | 0x7F80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the packed product of a `dtype` matrix against candle's dequantized one, and
    /// every SIMD path this CPU has against the scalar one on every tile shape.
    fn check(dtype: GgmlDType) {
        let (n, k, m) = (36, 128, 6);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104_729 % 997) as f32 / 498.0) - 1.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let reference = x
            .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let Some(ours) = PackedMatrix::from_qtensor(&q).unwrap() else {
            eprintln!("{dtype:?} is not packed on this CPU");
            return;
        };
        let got = ours.forward(&x).unwrap();
        let gap: f32 = (got - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let scale: f32 = reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(gap < 0.02 * scale, "{dtype:?}: gap {gap} at scale {scale}");

        let pairs = k / (2 * QK);
        let mut acts = vec![PairQ8::ZERO; 4 * pairs];
        let rows: Vec<f32> = x
            .narrow(0, 0, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (row, out) in rows.chunks_exact(k).zip(acts.chunks_exact_mut(pairs)) {
            quantize_row(row, out);
        }
        let mut kernels = vec![Kernel::detect()];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            kernels.push(Kernel::Avx2);
        }
        for kernel in kernels {
            for (rw, ra) in [(4, 1), (4, 2), (2, 3), (2, 4), (1, 1), (1, 4)] {
                let t = Rows {
                    format: ours.format,
                    w: &ours.data[..GROUP * pairs * ours.format.record_bytes()],
                    first: GROUP - rw,
                    rw,
                    acts: &acts[..ra * pairs],
                    ra,
                    pairs,
                };
                let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
                dot_scalar(t, &mut a);
                kernel.dot(t, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() < 1e-3 * x.abs().max(1.0),
                        "{dtype:?} {kernel:?} {rw}x{ra}: {a:?} vs {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn q4_1_matches_candle_dequantized_product() {
        check(GgmlDType::Q4_1);
    }

    #[test]
    fn q8_0_matches_candle_dequantized_product() {
        check(GgmlDType::Q8_0);
    }

    #[test]
    fn minus_128_times_an_f16_is_exact() {
        for bits in [0x3C00u16, 0x2E66, 0xB400, 0x0000] {
            let m = times_minus_128(bits).unwrap();
            assert_eq!(half_to_f32(m), -128.0 * half_to_f32(bits));
        }
        assert_eq!(times_minus_128(0x7BFF), None, "65504 × 128 overflows");
    }

    #[test]
    fn half_conversion_is_exact() {
        for (bits, value) in [
            (0x3C00u16, 1.0f32),
            (0xC000, -2.0),
            (0x0001, 5.960_464_5e-8),
        ] {
            assert_eq!(half_to_f32(bits), value);
        }
    }
}
