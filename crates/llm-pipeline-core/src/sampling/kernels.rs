//! The passes over a whole vocabulary row behind [`Sampler`](super::Sampler).
//!
//! They run for every sequence at every step over up to 128k logits, so each is written to
//! vectorize on any x86-64 or ARM CPU without `target-cpu` flags (independent lane
//! accumulators, fixed-size blocks, branch-free selects) and none sorts the vocabulary: maxima
//! and sums are single passes, top-n selection keeps a heap and skips blocks that cannot enter
//! it, and the nucleus is found from a histogram of probability mass plus a quickselect over
//! one bin.

/// Lanes of the independent accumulators that let the compiler vectorize sums and maxima.
const LANES: usize = 32;
/// Mass-histogram bins: a weight's bits shifted right by this keep its exponent and the top three
/// bits of its mantissa.
const BIN_SHIFT: u32 = 20;
/// Weights are at most 1, whose bin is 1016; larger bins never fill.
const BINS: usize = 1024;
/// Interleaved histograms, so consecutive tokens in one bin do not wait on each other's adds.
const HISTS: usize = 4;

/// A token under consideration: `s` is its (scaled) logit, `w` its unnormalized probability.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cand {
    pub(super) s: f32,
    pub(super) w: f32,
    pub(super) id: u32,
}

/// Orders candidates best first: higher `s`, then lower id.
pub(super) fn rank(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.s.total_cmp(&a.s).then(a.id.cmp(&b.id))
}

/// Orders candidates heaviest first: higher `w`, then lower id.
fn rank_weight(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.w.total_cmp(&a.w).then(a.id.cmp(&b.id))
}

/// The mass-histogram bin of a weight in `[0, 1]`.
fn bin(w: f32) -> usize {
    ((w.to_bits() >> BIN_SHIFT) as usize).min(BINS - 1)
}

/// The index of the largest logit, the lowest one on ties (`0` if none compares, e.g. all NaN).
pub(super) fn argmax(logits: &[f32]) -> u32 {
    argmax_value(logits).0
}

/// The largest value, ignoring NaNs (`-inf` if there is none), and its lowest index.
///
/// Two passes that both vectorize (the maximum, then the first block holding it) beat one that
/// tracks indices.
pub(super) fn argmax_value(xs: &[f32]) -> (u32, f32) {
    const BLOCK: usize = 4 * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &x in chunks.remainder() {
        max = if x > max { x } else { max };
    }
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    for &x in &lanes {
        max = if x > max { x } else { max };
    }
    let at = (xs.chunks(BLOCK).enumerate())
        .find(|(_, block)| block.iter().fold(false, |any, &x| any | (x == max)))
        .and_then(|(b, block)| Some(b * BLOCK + block.iter().position(|&x| x == max)?));
    (at.unwrap_or(0) as u32, max)
}

/// `exp(x)` for `x <= 0` (Cephes' `expf`, within 2 ulp), written so that loops over it vectorize;
/// `0` below `-87`, where `f32` stops being normal.
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = if x > -87.0 { x } else { -87.0 };
    let shifted = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let exponent = (shifted.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) as u32;
    let scaled = y * f32::from_bits(exponent << 23);
    if x > -87.0 { scaled } else { 0.0 }
}

/// Replaces every logit by its weight `exp((logit - max) * inv_t)` and returns their sum.
pub(super) fn exp_in_place(row: &mut [f32], max: f32, inv_t: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, l) in acc.iter_mut().zip(chunk) {
            *l = exp_neg((*l - max) * inv_t);
            *a += *l;
        }
    }
    for l in chunks.into_remainder() {
        *l = exp_neg((*l - max) * inv_t);
        acc[0] += *l;
    }
    acc.iter().sum()
}

/// Like [`exp_in_place`], but a token whose scaled logit is below `floor` gets weight 0, and
/// blocks of 16 wholly below it skip the `exp`.
pub(super) fn exp_above(row: &mut [f32], max: f32, inv_t: f32, floor: f32) -> f32 {
    let least = max + floor / inv_t;
    let weight = |l: f32| {
        if l >= least {
            exp_neg((l - max) * inv_t)
        } else {
            0.0
        }
    };
    let mut z = 0.0;
    let (blocks, rest) = row.as_chunks_mut::<16>();
    for block in blocks {
        if !block.map(|l| l >= least).contains(&true) {
            block.fill(0.0);
            continue;
        }
        for l in block {
            *l = weight(*l);
            z += *l;
        }
    }
    for l in rest {
        *l = weight(*l);
        z += *l;
    }
    z
}

/// The sum of the weights that reach `cut`.
pub(super) fn masked_sum(weights: &[f32], cut: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = weights.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().filter(|&&w| w >= cut).sum();
    for chunk in chunks {
        for (a, &w) in acc.iter_mut().zip(chunk) {
            *a += if w >= cut { w } else { 0.0 };
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// The first token at which the running sum of the weights that reach `cut` passes `u`.
pub(super) fn draw_cut(weights: &[f32], cut: f32, u: f32) -> u32 {
    const BLOCK: usize = 256;
    let mut acc = 0.0;
    for (b, block) in weights.chunks(BLOCK).enumerate() {
        let sum = masked_sum(block, cut);
        if acc + sum > u {
            for (i, &w) in block.iter().enumerate() {
                if w >= cut {
                    acc += w;
                    if acc > u {
                        return (b * BLOCK + i) as u32;
                    }
                }
            }
        }
        acc += sum;
    }
    // Rounding left `u` past the sum: take the last kept token with any weight.
    weights
        .iter()
        .rposition(|&w| w >= cut && w > 0.0)
        .unwrap_or(0) as u32
}

/// Leaves the `n` highest logits in `heap` (the logit in `s`), best first, scanning in id order.
pub(super) fn top_n_scan(logits: &[f32], n: usize, heap: &mut Vec<Cand>) {
    const BLOCK: usize = 32;
    heap.clear();
    let n = n.min(logits.len());
    if n == 0 {
        return;
    }
    // The heap's worst logit once it is full: only a higher one can enter. Ids rise, so an
    // equal logit never beats a kept one: it loses the tie on id.
    let mut floor = f32::NEG_INFINITY;
    let offer = |heap: &mut Vec<Cand>, floor: &mut f32, id: u32, s: f32| {
        if heap.len() < n || s > *floor {
            heap_push(heap, n, Cand { s, w: 0.0, id });
            if heap.len() == n {
                *floor = heap[0].s;
            }
        }
    };
    let (blocks, rest) = logits.as_chunks::<BLOCK>();
    for (b, block) in blocks.iter().enumerate() {
        // Skip, with vectorized compares, the blocks that hold nothing above the heap's floor.
        if heap.len() == n && !block.map(|s| s > floor).contains(&true) {
            continue;
        }
        for (id, &s) in ((b * BLOCK) as u32..).zip(block) {
            offer(heap, &mut floor, id, s);
        }
    }
    let base = (logits.len() - rest.len()) as u32;
    for (id, &s) in (base..).zip(rest) {
        offer(heap, &mut floor, id, s);
    }
    heap.sort_unstable_by(rank);
}

/// Pushes `c` into a min-heap (root = the worst kept) of at most `n` candidates.
fn heap_push(heap: &mut Vec<Cand>, n: usize, c: Cand) {
    let worse = |a: &Cand, b: &Cand| rank(a, b).is_gt();
    if heap.len() < n {
        heap.push(c);
        let mut i = heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !worse(&heap[i], &heap[parent]) {
                break;
            }
            heap.swap(i, parent);
            i = parent;
        }
        return;
    }
    if !worse(&heap[0], &c) {
        return;
    }
    heap[0] = c;
    let mut i = 0;
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut worst = i;
        if l < heap.len() && worse(&heap[l], &heap[worst]) {
            worst = l;
        }
        if r < heap.len() && worse(&heap[r], &heap[worst]) {
            worst = r;
        }
        if worst == i {
            break;
        }
        heap.swap(i, worst);
        i = worst;
    }
}

/// Finds the nucleus of a whole vocabulary whose weights are in `weights`, using `cands` as
/// scratch: returns its
/// lightest weight and its mass, or `None` if it is everything. Tokens tied with that lightest
/// weight that the nucleus leaves out (higher ids) get weight 0, so the nucleus is exactly
/// the tokens whose weight reaches the cut.
pub(super) fn nucleus_cut(
    weights: &mut [f32],
    target: f32,
    cands: &mut Vec<Cand>,
) -> Option<(f32, f32)> {
    let mut hist = [[0.0f32; BINS]; HISTS];
    let mut keys = [0u16; 1024];
    for ws in weights.chunks(keys.len()) {
        // Bins in one vectorized pass, then the scatter, four tokens to four histograms.
        for (k, &w) in keys.iter_mut().zip(ws) {
            *k = bin(w) as u16;
        }
        let (keys4, ws4) = (keys[..ws.len()].chunks_exact(HISTS), ws.chunks_exact(HISTS));
        for (&k, &w) in keys4.remainder().iter().zip(ws4.remainder()) {
            hist[0][k as usize] += w;
        }
        for (k, w) in keys4.zip(ws4) {
            for h in 0..HISTS {
                hist[h][k[h] as usize] += w[h];
            }
        }
    }
    let mut above = 0.0;
    let boundary = (0..BINS).rev().find(|&b| {
        let mass: f32 = hist.iter().map(|h| h[b]).sum();
        let reached = above + mass >= target;
        if !reached {
            above += mass;
        }
        reached
    })?;
    // Gather the boundary bin's tokens, skipping (with vectorized compares) the blocks of 16
    // that hold none.
    let lo = f32::from_bits((boundary as u32) << BIN_SHIFT);
    let hi = f32::from_bits((boundary as u32 + 1) << BIN_SHIFT);
    let inside = |w: f32| (w >= lo) & (w < hi);
    cands.clear();
    let (blocks, rest) = weights.as_chunks::<16>();
    for (b, block) in blocks.iter().enumerate() {
        let hits = block.map(inside);
        if hits.contains(&true) {
            for ((id, &w), _) in ((b * 16) as u32..)
                .zip(block)
                .zip(hits)
                .filter(|(_, hit)| *hit)
            {
                cands.push(Cand { s: 0.0, w, id });
            }
        }
    }
    let base = (weights.len() - rest.len()) as u32;
    for (id, &w) in (base..).zip(rest).filter(|(_, w)| inside(**w)) {
        cands.push(Cand { s: 0.0, w, id });
    }
    if cands.is_empty() {
        return None; // Only NaN weights get here.
    }
    let len = nucleus_len(cands, target - above).max(1);
    let (inside, outside) = cands.split_at(len);
    let cut = inside.iter().map(|c| c.w).fold(f32::INFINITY, f32::min);
    let mass = above + inside.iter().map(|c| c.w).sum::<f32>();
    for c in outside.iter().filter(|c| c.w == cut) {
        weights[c.id as usize] = 0.0;
    }
    Some((cut, mass))
}

/// Reorders `cands` so that the nucleus comes first and returns its length: the fewest heaviest
/// candidates whose weights sum to at least `target` (all of them if they never do).
///
/// A quickselect on weight that tracks the mass above the pivot, so no sort of the candidates is
/// needed: expected linear time. Ties on weight go to the lowest id.
pub(super) fn nucleus_len(cands: &mut [Cand], target: f32) -> usize {
    const SMALL: usize = 32;
    let (mut lo, mut hi) = (0, cands.len());
    // Invariant: `acc` (the mass of `cands[..lo]`) is below `target`.
    let mut acc = 0.0f32;
    let mut rounds = 0;
    while hi - lo > SMALL && rounds < 64 {
        rounds += 1;
        let part = &mut cands[lo..hi];
        let pivot = median3(part[0].w, part[part.len() / 2].w, part[part.len() - 1].w);
        let (heavier, equal) = partition3(part, pivot);
        let heavier_mass: f32 = part[..heavier].iter().map(|c| c.w).sum();
        if acc + heavier_mass >= target {
            hi = lo + heavier;
            continue;
        }
        acc += heavier_mass;
        let eq = &mut part[heavier..heavier + equal];
        if acc + pivot * equal as f32 >= target {
            eq.sort_unstable_by_key(|c| c.id);
            let mut i = 0;
            while acc < target && i < eq.len() {
                acc += eq[i].w;
                i += 1;
            }
            return lo + heavier + i;
        }
        acc += pivot * equal as f32;
        lo += heavier + equal;
    }
    let rest = &mut cands[lo..hi];
    rest.sort_unstable_by(rank_weight);
    for (i, c) in rest.iter().enumerate() {
        if acc >= target {
            return lo + i;
        }
        acc += c.w;
    }
    hi
}

fn median3(a: f32, b: f32, c: f32) -> f32 {
    a.max(b).min(a.min(b).max(c))
}

/// Three-way partition by weight: heavier than `pivot`, equal, lighter. Returns the sizes of the
/// first two parts.
fn partition3(xs: &mut [Cand], pivot: f32) -> (usize, usize) {
    let (mut lt, mut i, mut gt) = (0, 0, xs.len());
    while i < gt {
        if xs[i].w > pivot {
            xs.swap(lt, i);
            lt += 1;
            i += 1;
        } else if xs[i].w < pivot {
            gt -= 1;
            xs.swap(i, gt);
        } else {
            i += 1;
        }
    }
    (lt, gt - lt)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Pseudo-random logits, roughly normal with standard deviation `scale`.
    fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * scale * 1.7)
            .collect()
    }

    #[test]
    fn nucleus_matches_a_sorted_reference() {
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..40 {
            let n = 1 + round * 257;
            // Quantized weights give plenty of ties.
            let levels = if round % 2 == 0 { 7.0 } else { 1e6 };
            let mut cands: Vec<Cand> = (0..n as u32)
                .map(|id| Cand {
                    s: 0.0,
                    w: (rng.random::<f32>() * levels).floor() + 1.0,
                    id,
                })
                .collect();
            let total: f32 = cands.iter().map(|c| c.w).sum();
            let target = rng.random::<f32>() * total;
            let mut sorted = cands.clone();
            sorted.sort_by(rank_weight);
            let mut acc = 0.0;
            let want = sorted
                .iter()
                .take_while(|c| {
                    let keep = acc < target;
                    acc += c.w;
                    keep
                })
                .count();
            let len = nucleus_len(&mut cands, target);
            assert!(len.abs_diff(want) <= 1, "n={n} len={len} want={want}");
            let mass: f32 = cands[..len].iter().map(|c| c.w).sum();
            assert!(mass >= target * (1.0 - 1e-5), "n={n}");
            let lightest_in = cands[..len]
                .iter()
                .map(|c| c.w)
                .fold(f32::INFINITY, f32::min);
            let heaviest_out = cands[len..].iter().map(|c| c.w).fold(0.0, f32::max);
            assert!(lightest_in >= heaviest_out, "n={n}");
        }
    }

    #[test]
    fn nucleus_cut_over_the_vocabulary_is_minimal() {
        for (seed, scale) in [(1, 0.5), (2, 2.0), (3, 6.0), (4, 20.0)] {
            let logits = random_logits(50_000, seed, scale);
            let mut weights = logits.clone();
            let max = argmax_value(&weights).1;
            let z = exp_in_place(&mut weights, max, 1.0);
            for top_p in [0.1, 0.5, 0.9, 0.99] {
                let mut w = weights.clone();
                let (cut, mass) =
                    nucleus_cut(&mut w, top_p * z, &mut Vec::new()).expect("a nucleus");
                let kept: Vec<f32> = w.iter().copied().filter(|&x| x >= cut).collect();
                let kept_mass: f32 = kept.iter().sum();
                assert!(
                    (kept_mass - mass).abs() <= 1e-4 * z,
                    "scale={scale} top_p={top_p}"
                );
                assert!(
                    kept_mass >= top_p * z * (1.0 - 1e-4),
                    "scale={scale} top_p={top_p}"
                );
                assert!(
                    kept_mass - cut < top_p * z * (1.0 + 1e-4),
                    "scale={scale} top_p={top_p}"
                );
                let heaviest_out = weights
                    .iter()
                    .copied()
                    .filter(|&x| x < cut)
                    .fold(0.0, f32::max);
                assert!(heaviest_out <= cut);
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_neg(x), x.exp());
            assert!(
                (got - want).abs() <= 3.0 * f32::EPSILON * want,
                "exp({x}) = {got}, not {want}"
            );
            x -= 0.001_37;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn argmax_takes_the_lowest_id_of_the_maximum() {
        let mut xs = vec![0.0f32; 1000];
        assert_eq!(argmax_value(&xs), (0, 0.0));
        xs[700] = 2.0;
        xs[999] = 2.0;
        xs[3] = f32::NAN;
        assert_eq!(argmax_value(&xs), (700, 2.0));
        assert_eq!(argmax_value(&[f32::NEG_INFINITY; 3]).0, 0);
    }
}
