//! The x86-64 tiles of the packed product: AVX-512 VNNI (one `vpdpbusd` per pair of blocks)
//! and AVX2 (one block at a time). Each is monomorphized per tile shape so the accumulators
//! live in registers.

use std::arch::x86_64::*;

use super::{Format, GROUP, Rows};

/// Runs tile `t` with the kernel monomorphized for its shape: AVX-512 VNNI when `WIDE`,
/// else AVX2. `Kernel::dot` has checked the bounds and `Kernel::detect` the CPU features.
pub(super) fn dispatch<const WIDE: bool>(t: Rows<'_>, out: &mut [f32]) {
    macro_rules! shapes {
        ($(($rw:literal, $ra:literal)),*) => {
            match (t.rw, t.ra) {
                $(($rw, $ra) => {
                    // SAFETY: see above.
                    unsafe {
                        if WIDE && t.format == Format::Bytes {
                            tile_avx512::<$rw, $ra, true>(t, out)
                        } else if WIDE {
                            tile_avx512::<$rw, $ra, false>(t, out)
                        } else {
                            tile_avx2::<$rw, $ra>(t, out)
                        }
                    }
                })*
                _ => super::dot_scalar(t, out),
            }
        };
    }
    shapes!(
        (4, 1),
        (4, 2),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4)
    )
}

/// The scales of pair `p` of weight row `i`: `[d0, d1, m0, m1]`.
#[inline(always)]
unsafe fn scales(rec: *const u8) -> __m128 {
    // SAFETY: `rec` points at a 40-byte record; F16C is enabled by every caller.
    unsafe { _mm_cvtph_ps(_mm_loadl_epi64(rec.cast())) }
}

/// Both blocks of a record unpacked: block 0's 32 weights, block 1's 32 weights.
#[inline(always)]
unsafe fn nibbles(rec: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the 32 nibble bytes follow the 8 scale bytes; AVX2 is enabled by callers.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let x = _mm256_loadu_si256(rec.add(8).cast());
        (
            _mm256_and_si256(x, mask),
            _mm256_and_si256(_mm256_srli_epi16(x, 4), mask),
        )
    }
}

/// `RW` weight rows against `RA` activation rows with 512-bit VNNI: one `vpdpbusd` per pair
/// of blocks, the two blocks' scales spread over the two halves of the register.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tile_avx512<const RW: usize, const RA: usize, const BYTES: bool>(
    t: Rows<'_>,
    out: &mut [f32],
) {
    let Rows {
        format,
        w,
        first,
        acts,
        pairs,
        ..
    } = t;
    let record = format.record_bytes();
    // Lanes 0..8 take the scale of block 0, lanes 8..16 that of block 1.
    let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); RA]; RW];
    let mut mins = [[_mm_setzero_ps(); RA]; RW];
    for p in 0..pairs {
        // The group's records are one stream: fetch eight pairs ahead.
        let ahead = w.as_ptr().wrapping_add((p + 8) * GROUP * record);
        for line in (0..GROUP * record).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
        }
        let mut q8 = [_mm512_setzero_si512(); RA];
        let mut ds = [_mm_setzero_ps(); RA];
        for j in 0..RA {
            let a = &acts[j * pairs + p];
            // SAFETY: `qs` is 64 bytes and `ds` 16 bytes.
            unsafe {
                q8[j] = _mm512_loadu_si512(a.qs.as_ptr().cast());
                ds[j] = _mm_loadu_ps(a.ds.as_ptr());
            }
        }
        for i in 0..RW {
            // SAFETY: record `p` of row `i` is within `w` (checked by `Kernel::dot`).
            let (dm, q4) = unsafe {
                let rec = w.as_ptr().add((p * GROUP + first + i) * record);
                let q4 = if BYTES {
                    _mm512_loadu_si512(rec.add(8).cast())
                } else {
                    let (lo, hi) = nibbles(rec);
                    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
                };
                (scales(rec), q4)
            };
            for j in 0..RA {
                // [dw0·dx0, dw1·dx1, mw0·sx0, mw1·sx1]
                let prod = _mm_mul_ps(dm, ds[j]);
                mins[i][j] = _mm_add_ps(mins[i][j], prod);
                let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
                let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4, q8[j]);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[i][j]);
            }
        }
    }
    for i in 0..RW {
        for j in 0..RA {
            let m = mins[i][j];
            let m = _mm_add_ss(_mm_movehl_ps(m, m), _mm_shuffle_ps(m, m, 0b11));
            out[i * RA + j] = _mm512_reduce_add_ps(acc[i][j]) + _mm_cvtss_f32(m);
        }
    }
}

/// The same product with 256-bit AVX2: one block at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const RW: usize, const RA: usize>(t: Rows<'_>, out: &mut [f32]) {
    let Rows {
        format,
        w,
        first,
        acts,
        pairs,
        ..
    } = t;
    let record = format.record_bytes();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let mut mins = [[_mm_setzero_ps(); RA]; RW];
    for p in 0..pairs {
        for i in 0..RW {
            // SAFETY: record `p` of row `i` is within `w` (checked by `Kernel::dot`).
            let (dm, (lo, hi)) = unsafe {
                let rec = w.as_ptr().add((p * GROUP + first + i) * record);
                (scales(rec), nibbles(rec))
            };
            for j in 0..RA {
                let a = &acts[j * pairs + p];
                // SAFETY: `qs` is 64 bytes and `ds` 16 bytes.
                let (x0, x1, ds) = unsafe {
                    (
                        _mm256_loadu_si256(a.qs.as_ptr().cast()),
                        _mm256_loadu_si256(a.qs.as_ptr().add(32).cast()),
                        _mm_loadu_ps(a.ds.as_ptr()),
                    )
                };
                let prod = _mm_mul_ps(dm, ds);
                mins[i][j] = _mm_add_ps(mins[i][j], prod);
                let d0 = _mm256_broadcastss_ps(prod);
                let d1 = _mm256_broadcastss_ps(_mm_shuffle_ps(prod, prod, 1));
                let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), ones);
                let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), d0, acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), d1, acc[i][j]);
            }
        }
    }
    for i in 0..RW {
        for j in 0..RA {
            let v = acc[i][j];
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            let m = mins[i][j];
            let m = _mm_add_ss(_mm_movehl_ps(m, m), _mm_shuffle_ps(m, m, 0b11));
            out[i * RA + j] = _mm_cvtss_f32(s) + _mm_cvtss_f32(m);
        }
    }
}
