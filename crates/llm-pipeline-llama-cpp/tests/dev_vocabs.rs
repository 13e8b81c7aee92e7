//! TEMPORARY dev harness (not to be committed).
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llm_pipeline_core::gguf::GgufMetadata;
use llm_pipeline_core::tokenizer::{SkipSpecial, Tokenizer};

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
fn dev_vocabs() {
    let dir = std::path::PathBuf::from(std::env::var("DEV_VOCAB_DIR").unwrap());
    let mut backend = LlamaBackend::init().unwrap();
    backend.void_logs();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    paths.sort();
    for path in paths {
        let meta = GgufMetadata::from_path(&path).unwrap();
        let Ok(ours) = Tokenizer::from_gguf(&meta) else {
            eprintln!("skip {}", path.display());
            continue;
        };
        let model = LlamaModel::load_from_file(
            &backend,
            &path,
            &LlamaModelParams::default().with_vocab_only(true),
        )
        .unwrap();
        let vocab = model.vocab();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut specials: Vec<String> = Vec::new();
        for id in 0..vocab.n_tokens().min(300000) {
            if vocab.is_control(LlamaToken(id)) && specials.len() < 12 {
                specials.push(
                    String::from_utf8_lossy(&vocab.token_to_piece(LlamaToken(id), true, None))
                        .into_owned(),
                );
            }
        }
        let mut pieces: Vec<String> = [
            "a",
            "b",
            "Z",
            "the",
            " the",
            "ing",
            "Hello",
            "é",
            "ß",
            "日",
            "本",
            "語",
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
            "   ",
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
            "<0x0A>",
            "▁",
            "<s>",
            "</s>",
            "<unk>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        pieces.extend(specials);
        let mut rng = Lcg(7);
        let mut bad = 0;
        let mut n = 0;
        for _ in 0..1500 {
            let len = 1 + rng.next(20);
            let text: String = (0..len)
                .map(|_| pieces[rng.next(pieces.len())].clone())
                .collect();
            let theirs: Vec<u32> = vocab
                .tokenize(text.as_bytes(), false, true)
                .into_iter()
                .map(|t| t.0 as u32)
                .collect();
            let got = ours
                .inner()
                .encode_fast(text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            n += 1;
            if got != theirs {
                bad += 1;
                if bad <= 3 {
                    eprintln!("{name} MISMATCH {text:?}\n  llama {theirs:?}\n  ours  {got:?}");
                }
            }
        }
        // prompt with add_special
        let p = "Hello world";
        let theirs: Vec<u32> = vocab
            .tokenize(p.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect();
        let got = ours.encode_prompt(p).unwrap();
        if got != theirs {
            eprintln!("{name} encode_prompt differs: llama {theirs:?} ours {got:?}");
        }
        let eog: Vec<u32> = vocab
            .tokens()
            .filter(|&t| vocab.is_eog(t))
            .map(|t| t.0 as u32)
            .collect();
        if eog != ours.special().end_of_generation {
            eprintln!(
                "{name} EOG differs: llama {eog:?} ours {:?}",
                ours.special().end_of_generation
            );
        }
        let mut tt_bad = 0;
        for id in 0..vocab.n_tokens() {
            let piece = String::from_utf8_lossy(&vocab.token_to_piece(LlamaToken(id), true, None))
                .into_owned();
            let o = ours.token_text(id as u32).unwrap();
            if o != piece {
                tt_bad += 1;
                if tt_bad <= 3 {
                    eprintln!("{name} token_text {id}: llama {piece:?} ours {o:?}");
                }
            }
        }
        // decode comparison on a few texts
        let mut dec_bad = 0;
        for t in ["Hello world", " leading", "a\n\nb  c", "日本語 🦀"] {
            let ids = ours.encode_prompt(t).unwrap();
            let toks: Vec<LlamaToken> = ids.iter().map(|&i| LlamaToken(i as i32)).collect();
            let l = String::from_utf8_lossy(&vocab.detokenize(&toks, true, false)).into_owned();
            let o = ours.decode(&ids, SkipSpecial::Yes).unwrap();
            if l != o {
                dec_bad += 1;
                eprintln!("{name} decode {t:?}: llama {l:?} ours {o:?}");
            }
        }
        eprintln!(
            "{name}: {bad}/{n} id mismatches, {tt_bad} token_text mismatches, {dec_bad} decode mismatches, bos {:?}/{} add_bos {}/{}",
            ours.special().bos,
            vocab.bos().0,
            ours.special().add_bos,
            vocab.should_add_bos()
        );
    }
}
