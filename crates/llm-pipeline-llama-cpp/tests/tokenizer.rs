//! The core tokenizer built from GGUF metadata must give llama.cpp's token ids.
//!
//! The engine tokenizes prompts with `llm_pipeline_core::tokenizer::Tokenizer` and hands the ids
//! to llama.cpp, so any difference from llama.cpp's own tokenizer is a prompt the model was never
//! trained to read. These tests load the same GGUF both ways (llama.cpp with `vocab_only`) and
//! compare ids over a varied corpus and a seeded random one, decoded text, per-token text, and
//! the special tokens.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::testing::smollm2 as smollm2_path;
use llm_pipeline_core::tokenizer::{SkipSpecial, Tokenizer};

struct Fixture {
    _backend: LlamaBackend,
    model: LlamaModel,
    ours: Tokenizer,
}

/// llama.cpp's backend can be initialised once per process, so the tests share one fixture.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = smollm2_path();
        let mut backend = LlamaBackend::init().expect("llama.cpp backend");
        backend.void_logs();
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(&backend, &path, &params).expect("llama.cpp vocab");
        let meta = GgufMetadata::from_path(&path).expect("GGUF metadata");
        let ours = Tokenizer::from_gguf(&meta).expect("tokenizer from GGUF");
        Fixture {
            _backend: backend,
            model,
            ours,
        }
    })
}

/// llama.cpp's ids for `text`, special tokens parsed, nothing added.
fn llama_ids(text: &str) -> Vec<u32> {
    let vocab = fixture().model.vocab();
    vocab
        .tokenize(text.as_bytes(), false, true)
        .into_iter()
        .map(|t| u32::try_from(t.0).expect("non-negative id"))
        .collect()
}

fn our_ids(text: &str) -> Vec<u32> {
    fixture().ours.encode_prompt(text).expect("encode")
}

const CORPUS: &[&str] = &[
    "Hello, world! This is a simple sentence.",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they're here, I'd go.",
    "café naïve Ångström façade coöperate résumé Straße",
    "日本語のテキスト 中文 한국어 텍스트",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "emoji: 🦀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️",
    "fn main() {\n\tlet x = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n",
    "def f(a, b):\n    return {'a': a, \"b\": b}  # comment\n",
    "a  b   c    d     e\t\tf\n\ng\n\n\nh \n i\r\nj",
    "1234567 and 3.14159, -42, 1e10, 0x1F, 2024-06-01",
    "   leading and trailing whitespace   ",
    "\n\nleading newlines",
    "trailing newlines\n\n",
    " ",
    "\t",
    "",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "text<|im_end|>text<|endoftext|><|im_start|>",
    "<|im_start|><|im_end|> <|im_start|>  <|im_end|>",
    "<|im_start |> <im_start> <|IM_START|> <|im_sta",
    "URL: https://example.com/path?q=1&r=2#frag, mail: a.b@c.de",
    "Mixed CASE and camelCase and snake_case and SCREAMING_CASE",
    "quotes “curly” ‘single’ «guillemets» — dash – en dash … ellipsis",
    "math ∑∫√∞ ≠ ≤ ≥ ± × ÷ → ⇒ ∀∃",
    "combining: e\u{301} a\u{308} n\u{303}; zero width: a\u{200B}b\u{200D}c; nbsp: a\u{A0}b",
    "line\u{2028}separator and \u{3000}ideographic space",
    "'s 're 've 'm 'll 'd 'S 'RE",
    "!!!???... ,,, ;;; ::: $$$ %%% ^^^ &&& *** ((( ))) [[[ ]]] {{{ }}} ||| ~~~ ``` @@@ ###",
];

#[test]
fn ids_match_llama_cpp_on_the_corpus() {
    for text in CORPUS {
        assert_eq!(our_ids(text), llama_ids(text), "text: {text:?}");
    }
}

/// A small deterministic generator, so that failures reproduce without a `rand` dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound
    }
}

#[test]
fn ids_match_llama_cpp_on_random_text() {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "Z",
        "the",
        " the",
        "ing",
        "Hello",
        "é",
        "ß",
        "Å",
        "日",
        "本",
        "語",
        "中",
        "한",
        "я",
        "λ",
        "ع",
        "0",
        "1",
        "7",
        "42",
        "2024",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\n\n",
        "'",
        "'s",
        "'ll",
        "\"",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "{",
        "}",
        "<",
        ">",
        "|",
        "/",
        "\\",
        "#",
        "$",
        "%",
        "&",
        "*",
        "+",
        "=",
        "~",
        "`",
        "^",
        "@",
        ";",
        ":",
        "🦀",
        "👍🏽",
        "👨‍👩‍👧",
        "🇫🇷",
        "\u{301}",
        "\u{200D}",
        "\u{A0}",
        "\u{3000}",
        "…",
        "—",
        "“",
        "”",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_",
        "|>",
    ];
    let mut rng = Lcg(0x5EED);
    for _ in 0..3000 {
        let len = 1 + rng.next(24);
        let text: String = (0..len).map(|_| PIECES[rng.next(PIECES.len())]).collect();
        assert_eq!(our_ids(&text), llama_ids(&text), "text: {text:?}");
    }
}

#[test]
fn decoding_round_trips_and_matches_llama_cpp() {
    let f = fixture();
    let vocab = f.model.vocab();
    for text in CORPUS {
        let ids = our_ids(text);
        assert_eq!(
            f.ours.decode(&ids, SkipSpecial::No).unwrap(),
            *text,
            "text: {text:?}"
        );
        if ids.is_empty() {
            // llama-cpp-2's `detokenize` underflows its size estimate on no tokens.
            continue;
        }
        let tokens: Vec<LlamaToken> = ids.iter().map(|&id| LlamaToken(id as i32)).collect();
        let theirs = vocab.detokenize(&tokens, false, true);
        assert_eq!(
            f.ours.decode(&ids, SkipSpecial::No).unwrap().as_bytes(),
            theirs.as_slice(),
            "text: {text:?}"
        );
        let without_specials = vocab.detokenize(&tokens, true, false);
        assert_eq!(
            f.ours.decode(&ids, SkipSpecial::Yes).unwrap().as_bytes(),
            without_specials.as_slice(),
            "text: {text:?}"
        );
    }
}

#[test]
fn token_text_matches_llama_cpp_pieces() {
    let f = fixture();
    let vocab = f.model.vocab();
    assert_eq!(
        f.ours.vocab_size(),
        usize::try_from(vocab.n_tokens()).unwrap()
    );
    for id in 0..vocab.n_tokens() {
        let piece = vocab.token_to_piece(LlamaToken(id), true, None);
        let ours = f
            .ours
            .token_text(u32::try_from(id).unwrap())
            .expect("token text");
        assert_eq!(ours, String::from_utf8_lossy(&piece), "token {id}");
    }
}

#[test]
fn special_tokens_match_llama_cpp() {
    let f = fixture();
    let vocab = f.model.vocab();
    let special = f.ours.special();
    assert_eq!(special.bos.map(|id| id as i32), Some(vocab.bos().0));
    assert_eq!(special.eos.map(|id| id as i32), Some(vocab.eos().0));
    assert_eq!(special.add_bos, vocab.should_add_bos());
    let theirs: Vec<u32> = vocab
        .tokens()
        .filter(|&t| vocab.is_eog(t))
        .map(|t| u32::try_from(t.0).unwrap())
        .collect();
    assert_eq!(special.end_of_generation, theirs);
}
