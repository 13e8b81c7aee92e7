//! Stop strings over a stream of text deltas.
//!
//! Text that could still be the beginning of a stop string is held back until it either completes
//! the stop string (then it is dropped, with everything after it) or can no longer match (then it
//! is released). So a client never sees any part of a stop string, and the streamed deltas always
//! concatenate to the same text as the non-streamed answer.

/// What [`StopMatcher::push`] decided about the text seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string matched; `emit` is safe to send (it may be empty while text is held back).
    Continue {
        /// Text that can no longer be part of a stop string.
        emit: String,
    },
    /// A stop string matched; `emit` is the text before it, and generation must end.
    Stopped {
        /// Text before the stop string.
        emit: String,
    },
}

/// Matches stop strings across token boundaries, holding back possible prefixes.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds the next text delta.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue {
                emit: text.to_owned(),
            };
        }
        self.held.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped { emit };
        }
        let keep_from = self.partial_match_start();
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopOutcome::Continue { emit }
    }

    /// Releases the held-back text at the end of generation (when no stop string matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The byte offset of the earliest suffix of `held` that is a proper prefix of a stop string.
    fn partial_match_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopOutcome::Continue { emit } => out.push_str(&emit),
                StopOutcome::Stopped { emit } => {
                    out.push_str(&emit);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_across_deltas_is_removed() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn partial_prefix_is_held_then_released() {
        let stops = vec!["END".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(
            m.push("abc EN"),
            StopOutcome::Continue {
                emit: "abc ".into()
            }
        );
        assert_eq!(m.push("x"), StopOutcome::Continue { emit: "ENx".into() });
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn held_text_flushed_at_finish() {
        assert_eq!(run(&["STOP"], &["go ST"]), ("go ST".into(), false));
    }

    #[test]
    fn multibyte_boundaries_are_respected() {
        assert_eq!(run(&["é!"], &["café", "é", "!"]), ("café".into(), true));
        assert_eq!(
            run(&["日本"], &["こんにちは日", "x"]),
            ("こんにちは日x".into(), false)
        );
    }
}
