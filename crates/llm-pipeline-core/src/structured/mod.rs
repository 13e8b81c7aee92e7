//! Structured output: grammars that decoding cannot leave.
//!
//! A request that asks for JSON (`response_format`) or for a tool call gets a [`Constraint`]
//! per sequence: before each token is sampled it says which token ids keep the text inside the
//! grammar, and the sampler gives every other id a probability of zero. The answer therefore
//! parses, at any temperature and on every backend, because the mask is applied in core's
//! sampler to whatever logits the backend produced.
//!
//! The grammar engine is `llguidance` (an Earley parser over a lexer of derivative regexes, the
//! engine behind vLLM's and SGLang's `guidance` backend); `vocab.rs` spells our vocabulary as the
//! bytes it needs. [`Grammars`] holds what a model's grammars share (the vocabulary's trie and
//! the parser factory: about 0.1 s for 49k tokens, built in the background after loading) and
//! compiles a [`Grammar`] into a [`Constraint`], refusing a schema it cannot compile with the
//! reason, before anything is generated.
//!
//! A constraint may be armed rather than active (`tool_choice: auto`): it leaves the model free
//! until the text reaches a trigger (the family's tool-call marker), then enforces its grammar
//! from there on.

pub mod answer;
pub mod reasoning;
pub mod tools;
mod vocab;

use std::fmt;
use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// What the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema (`response_format: {"type": "json_schema"}`).
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (which embeds JSON schemas with `%json`), for
    /// tool calls.
    Lark(String),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(json_schema_of(&serde_json::json!(
                    {"type": "object"}
                )))
            }
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(json_schema_of(schema)),
            Self::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
        }
    }
}

/// `schema` with the JSON layout answers use: one space after `,` and `:`, no other whitespace.
/// Without it a grammar lets the model spend its tokens on whitespace (a small model at a high
/// temperature can fill `max_tokens` with newlines); a schema that sets its own `x-guidance`
/// options keeps them.
pub(crate) fn json_schema_of(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if schema.get("x-guidance").is_none() {
        let options = JsonCompileOptions {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        };
        options.apply_to(&mut schema);
    }
    schema
}

/// What a model's grammars share: its vocabulary as a trie and the parser factory.
pub struct Grammars {
    tokenizer: Arc<Tokenizer>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl fmt::Debug for Grammars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammars")
            .field("ready", &self.factory.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Grammars {
    /// Grammars over `tokenizer`'s vocabulary; the trie is built on first use.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            factory: OnceLock::new(),
        }
    }

    /// Builds the trie and the parser factory now (on the calling thread) rather than on the
    /// first structured request; the pipeline calls it on a thread of its own after loading.
    pub fn prepare(&self) {
        if let Err(e) = self.factory() {
            tracing::warn!(error = %e, "structured output is unavailable for this vocabulary");
        }
    }

    fn factory(&self) -> Result<&ParserFactory, String> {
        self.factory
            .get_or_init(|| {
                let env: TokEnv = Arc::new(ApproximateTokEnv::new(vocab::trie(&self.tokenizer)));
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Compiles `grammar` into a constraint that starts active.
    ///
    /// # Errors
    /// Why the grammar cannot be compiled (an unsupported or unsatisfiable schema, a bad
    /// reference), for the client.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, String> {
        let factory = self.factory()?;
        let parser = factory
            .create_parser(grammar.top_level())
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        Ok(Constraint {
            matcher,
            trigger: None,
            mask: None,
        })
    }
}

/// One sequence's grammar state; see the [module docs](self).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// While set, the constraint is armed: it waits for this text before enforcing anything.
    trigger: Option<Trigger>,
    /// The mask for the next token, once computed.
    mask: Option<SimpleVob>,
}

#[derive(Debug, Clone)]
struct Trigger {
    text: String,
    seen: String,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("trigger", &self.trigger)
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

/// Why a constraint cannot go on; the sequence fails with it (a grammar engine fault, never the
/// client's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintError(pub String);

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the output grammar failed: {}", self.0)
    }
}

impl Constraint {
    /// This constraint, armed: free text until the output reaches `trigger`, the grammar after
    /// it.
    #[must_use]
    pub fn after(mut self, trigger: impl Into<String>) -> Self {
        self.trigger = Some(Trigger {
            text: trigger.into(),
            seen: String::new(),
        });
        self
    }

    /// Whether the grammar applies to the next token.
    pub fn is_active(&self) -> bool {
        self.trigger.is_none() && !self.matcher.is_stopped()
    }

    /// Computes the mask for the next token, if active and not yet computed; the engine calls it
    /// while the backend computes the logits.
    pub fn prepare(&mut self) {
        if self.is_active() && self.mask.is_none() {
            self.mask = self.matcher.compute_mask().ok();
        }
    }

    /// The allowed token ids for the next token as a bitset (bit `i % 32` of word `i / 32`), or
    /// `None` when the constraint does not apply to it.
    ///
    /// # Errors
    /// [`ConstraintError`] when the grammar engine fails or allows no token at all.
    pub fn allowed(&mut self) -> Result<Option<&[u32]>, ConstraintError> {
        if !self.is_active() {
            return Ok(None);
        }
        if self.mask.is_none() {
            let mask = self
                .matcher
                .compute_mask()
                .map_err(|e| ConstraintError(e.to_string()))?;
            self.mask = Some(mask);
        }
        let mask = self.mask.as_ref().expect("just computed");
        if mask.is_zero() {
            let why = self
                .matcher
                .get_error()
                .unwrap_or_else(|| "no token can continue the output".into());
            return Err(ConstraintError(why));
        }
        Ok(Some(mask.as_slice()))
    }

    /// Records the sampled `token`, which released `text`.
    ///
    /// # Errors
    /// [`ConstraintError`] when the grammar refuses the token (it was masked out, so only a
    /// grammar engine fault gets here).
    pub fn commit(&mut self, token: u32, text: &str) -> Result<(), ConstraintError> {
        self.mask = None;
        if let Some(trigger) = &mut self.trigger {
            trigger.seen.push_str(text);
            if trigger.seen.trim_end().ends_with(&trigger.text) {
                self.trigger = None;
            } else if trigger.seen.len() > 4 * trigger.text.len() {
                // Keep only what could still hold the start of the trigger.
                let keep = trigger.seen.len() - 2 * trigger.text.len();
                let cut = (keep..trigger.seen.len())
                    .find(|&i| trigger.seen.is_char_boundary(i))
                    .unwrap_or(0);
                trigger.seen.drain(..cut);
            }
            return Ok(());
        }
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError(e.to_string()))
    }

    /// Whether the grammar is complete: nothing but the end of the output may follow.
    pub fn is_complete(&self) -> bool {
        self.trigger.is_none() && self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests;
