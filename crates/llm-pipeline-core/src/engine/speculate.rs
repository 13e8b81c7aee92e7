//! Speculative decoding by prompt lookup: draft tokens guessed from the sequence itself.
//!
//! A sequence that is about to decode one token may instead send the backend that token
//! followed by a few draft tokens, and get one logits row after each. The engine then samples
//! row by row as it would have without drafts, and goes on to the next row only while the
//! token it sampled is the draft token that row's successor was computed with. Every emitted
//! token is thus sampled from exactly the distribution (and, for a seeded request, with exactly
//! the random draws) of plain decoding; drafts only decide how many tokens one step yields.
//! For a draft that is a single guessed token (a point mass), "sample, then compare" is the
//! standard rejection rule of speculative sampling: the draft is kept with probability p(draft),
//! and otherwise the token comes from p without the draft, renormalized.
//!
//! The drafts come from the sequence's own tokens (prompt lookup, as vLLM's `ngram` method and
//! llama.cpp's lookup decoding): the latest earlier occurrence of its last few tokens, and what
//! followed it. Summaries, quotes, code edits and extraction copy long runs of their prompt, and
//! the lookup guesses them for the cost of a scan; where nothing repeats, no draft is made and
//! the step is a plain decode step.

/// The longest suffix looked up; longer matches are tried first.
const NGRAM_MAX: usize = 4;
/// The shortest suffix looked up: one or two tokens repeat too often in free text to predict
/// what follows, and each wrong draft costs its place in the step.
const NGRAM_MIN: usize = 3;
/// The most tokens searched back from the end: a long document's lookup stays a few
/// microseconds.
const SEARCH_WINDOW: usize = 16_384;

/// The most draft tokens a step carries per sequence under [`SPECULATION_MAX_SEQS`]: an
/// engine-wide setting (`SPECULATIVE_TOKENS`), and also the most a backend is asked to verify.
pub const DEFAULT_SPECULATIVE_TOKENS: u32 = 8;

/// Drafts are made only while at most this many sequences run. A step of a few sequences
/// reads every weight for a handful of rows, so verifying drafts costs little beside it; a
/// large batch already fills the device, and rejected drafts would take the place of other
/// sequences' tokens.
pub const SPECULATION_MAX_SEQS: usize = 4;

/// How many draft tokens a sequence tries next, after a step that kept `accepted` of its
/// `drafted`: twice as many when all were kept, so that a copy in progress soon drafts as many
/// as the step allows; else one more than were kept, so that a guess that failed costs one
/// position at a time until the text repeats again.
pub(crate) fn next_limit(accepted: u32, drafted: u32) -> u32 {
    if accepted == drafted {
        drafted.saturating_mul(2)
    } else {
        accepted + 1
    }
}

/// Up to `max` draft tokens for a sequence whose known tokens are `tokens`: what followed the
/// latest earlier occurrence of its last [`NGRAM_MAX`] down to [`NGRAM_MIN`] tokens; empty when
/// none occurs.
pub(crate) fn lookup(tokens: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let len = tokens.len();
    let floor = len.saturating_sub(SEARCH_WINDOW);
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if len <= n {
            continue;
        }
        let tail = &tokens[len - n..];
        // Latest first: a copy in progress continues where it was last seen.
        if let Some(at) = (floor..len - n).rev().find(|&i| &tokens[i..i + n] == tail) {
            let from = at + n;
            return tokens[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_continues_the_latest_earlier_occurrence() {
        // "0 1 2 3 4 5 ... 0 1 2 3" drafts "4 5 6"; the longest suffix wins.
        let t = [0, 1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 7, 0, 1, 2, 3];
        assert_eq!(lookup(&t, 3), [4, 5, 6]);
        // Only "1 2 3" matches, latest first: after "9 1 2 3" came 7.
        let t = [1, 2, 3, 4, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(lookup(&t, 2), [7, 8]);
        // The draft stops at the known tokens' end, overlapping the suffix if need be.
        let t = [5, 5, 5, 5, 5];
        assert_eq!(lookup(&t, 4), [5]);
        // Nothing repeats, two tokens are too weak a clue, and max 0 asks for nothing.
        assert!(lookup(&[1, 2, 3, 4], 4).is_empty());
        assert!(lookup(&[1, 2, 3, 1, 2], 4).is_empty());
        assert!(lookup(&[1, 2, 3, 1, 2, 3], 0).is_empty());
        assert!(lookup(&[], 4).is_empty());
    }
}
