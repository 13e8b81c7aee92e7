//! The machine's physical limit for decoding: a streaming read over a buffer far larger than
//! the caches, by the same number of threads the servers get.
//!
//! Decoding one sequence reads every weight once per token, so memory bandwidth over the
//! model's bytes per token bounds single-sequence tokens/s; batching shares one read among the
//! sequences of a step, which is how servers go past it.

use std::time::Instant;

/// 1 GiB: an order of magnitude past any L3 this bench runs on.
pub(crate) const BUFFER_BYTES: usize = 1 << 30;
const PASSES: usize = 5;

/// Read bandwidth in bytes/s over a buffer of `bytes`, best of [`PASSES`] passes with
/// `threads` threads each summing its own contiguous part of the buffer.
pub(crate) fn read_bandwidth(threads: u32, bytes: usize) -> f64 {
    let words = bytes / 8;
    // Written once so every page is resident before the timed passes.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let part = words.div_ceil(threads.max(1) as usize);
    let mut best = f64::MAX;
    let mut checksum = 0u64;
    for _ in 0..PASSES {
        let started = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(part)
                .map(|chunk| s.spawn(move || sum(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a reader thread"))
                .collect()
        });
        best = best.min(started.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sums.into_iter().fold(0, u64::wrapping_add));
    }
    std::hint::black_box(checksum);
    (words * 8) as f64 / best
}

/// Eight independent accumulators so the loop is bound by loads, not by one add chain.
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0, |a: u64, w| a.wrapping_add(*w));
    acc.iter().fold(tail, |a, w| a.wrapping_add(*w))
}
