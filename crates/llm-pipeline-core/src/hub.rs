//! Downloads from the Hugging Face Hub (feature `hub`), through `hf-hub`'s blocking client.
//!
//! A repository that `MODEL_DIR` lacks is fetched into it in the hub cache layout
//! (`models--org--name/blobs`, `snapshots/<commit>/…`, `refs/main`), the layout Livepeer's
//! `/models` and `huggingface-cli download --cache-dir` use, so either tool's cache serves the
//! other. Only the files a backend reads are fetched ([`wanted_files`]): safetensors weights with
//! `config.json`, `generation_config.json` and the tokenizer files; or one ONNX export; or one
//! GGUF model (all shards of a split one). Files already cached are not fetched again, and an
//! interrupted file resumes from its `.part` (hf-hub asks for the rest with a `Range` request).
//!
//! The hub's variables are read by [`PipelineConfig`] and passed to hf-hub here: `HF_ENDPOINT`
//! (`with_endpoint`), `HF_TOKEN` (`with_token`; hf-hub 0.4 itself only reads a token file) and
//! `HF_HUB_OFFLINE` (no client is made at all). On a terminal each file gets a progress bar;
//! otherwise progress is logged every tenth of a file.

use std::io::IsTerminal;
use std::path::PathBuf;

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::config::{PipelineConfig, Quantization};
use crate::model::{choose_gguf, gguf_candidates};
use crate::{Error, Result};

/// The hub used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files of a safetensors repository that a backend reads besides the weights.
const HF_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Downloads what a backend needs of `repo` into `config.model_dir` and returns the snapshot
/// directory. `gguf` chooses among a GGUF repository's quantizations.
///
/// # Errors
/// [`Error::Config`]: `HF_TOKEN` when the hub refuses the token (401/403), `MODEL_ID` when the
/// repository or a file does not exist or holds nothing a backend reads, `HF_ENDPOINT` when the
/// hub cannot be reached; [`Error::Io`] when `MODEL_DIR` cannot be written.
pub fn download(repo: &str, gguf: Option<&str>, config: &PipelineConfig) -> Result<PathBuf> {
    let endpoint = config
        .hub
        .endpoint
        .clone()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let terminal = std::io::stderr().is_terminal();
    let cache = Cache::new(config.model_dir.clone());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(endpoint.clone())
        .with_token(config.hub.token.clone())
        .with_progress(terminal)
        .with_retries(3)
        .build()
        .map_err(|e| hub_error(&e, repo, &endpoint, config))?;
    let handle = api.repo(Repo::new(repo.to_owned(), RepoType::Model));
    let info = handle
        .info()
        .map_err(|e| hub_error(&e, repo, &endpoint, config))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = wanted_files(&names, gguf, config.quantization, repo)?;
    let cache = cache.repo(Repo::new(repo.to_owned(), RepoType::Model));
    let total = files.len();
    // Marks the snapshot incomplete until every file is in (see `ModelSource::fetch`).
    let marker = crate::model::download_marker(repo, &config.model_dir);
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(marker.parent().unwrap_or(&config.model_dir))
        .map_err(io(&config.model_dir))?;
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    tracing::info!(
        repo,
        endpoint,
        revision = %info.sha,
        files = total,
        "downloading into {}",
        config.model_dir.display()
    );
    for (i, file) in files.iter().enumerate() {
        if cache.get(file).is_some() {
            tracing::info!(repo, file, "already cached");
            continue;
        }
        tracing::info!(repo, file, "downloading file {} of {total}", i + 1);
        let fetched = if terminal {
            handle.download(file)
        } else {
            handle.download_with_progress(file, LogProgress::default())
        };
        fetched.map_err(|e| hub_error(&e, repo, &endpoint, config))?;
    }
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    // hf-hub named the snapshot after the files' commit and pointed `refs/main` at it.
    crate::model::cached_snapshot(repo, &config.model_dir)
}

/// The files of a repository listing (`names`) that a backend reads: safetensors weights with
/// `config.json` and the tokenizer files; else an ONNX export (the int8 graph with
/// `USE_8BIT`); else one GGUF model (`choice` among several, all shards of a split one).
///
/// # Errors
/// [`Error::Config`] (`MODEL_ID`) when the listing holds none of these, or the GGUF choice is
/// missing or ambiguous (listing the GGUFs).
pub fn wanted_files(
    names: &[String],
    gguf: Option<&str>,
    quantization: Quantization,
    repo: &str,
) -> Result<Vec<String>> {
    let has = |n: &str| names.iter().any(|m| m == n);
    let extras = || {
        HF_FILES
            .iter()
            .filter(|f| has(f))
            .map(|f| (*f).to_owned())
            .collect::<Vec<_>>()
    };
    if gguf.is_none() && has("config.json") {
        let weights: Vec<String> = names
            .iter()
            .filter(|n| !n.contains('/') && n.ends_with(".safetensors"))
            .cloned()
            .collect();
        if !weights.is_empty() {
            let mut files = extras();
            files.extend(weights);
            return Ok(files);
        }
        let graphs: &[&str] = match quantization {
            Quantization::Int8 => &[
                "onnx/model_quantized.onnx",
                "onnx/model_int8.onnx",
                "model_quantized.onnx",
                "model_int8.onnx",
            ],
            Quantization::AsStored => &["onnx/model.onnx", "model.onnx"],
        };
        if let Some(graph) = graphs.iter().find(|g| has(g)) {
            let mut files = extras();
            // External weights: `model.onnx_data`, `model.onnx_data_1`, `model.onnx.data`.
            files.extend(
                names
                    .iter()
                    .filter(|n| {
                        n.as_str() == *graph
                            || n.starts_with(&format!("{graph}_data"))
                            || n.starts_with(&format!("{graph}.data"))
                    })
                    .cloned(),
            );
            return Ok(files);
        }
    }
    let place = format!("`{repo}` on the hub");
    let candidates = gguf_candidates(names, &place)?;
    if candidates.is_empty() {
        let mut shown: Vec<&str> = names.iter().map(String::as_str).take(12).collect();
        if names.len() > 12 {
            shown.push("…");
        }
        return Err(Error::Config {
            variable: "MODEL_ID",
            message: format!(
                "{place} has no safetensors weights with config.json, no ONNX export and no \
                 GGUF file; it holds: {}",
                shown.join(", ")
            ),
        });
    }
    Ok(choose_gguf(&candidates, gguf, &place)?.files.clone())
}

/// The status code of a refused request, if that is what `e` is.
fn status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        ApiError::TooManyRetries(inner) => status(inner),
        _ => None,
    }
}

/// A hub failure as the configuration error that says what to change.
fn hub_error(e: &ApiError, repo: &str, endpoint: &str, config: &PipelineConfig) -> Error {
    let (variable, message) = match status(e) {
        Some(401 | 403) => (
            "HF_TOKEN",
            format!(
                "{endpoint} refused access to `{repo}` ({}): {}",
                status(e).unwrap_or_default(),
                if config.hub.token.is_some() {
                    "HF_TOKEN is set but cannot read it (a gated model must be accepted on its \
                     page first)"
                } else {
                    "it is gated or private; set HF_TOKEN to a token that can read it"
                }
            ),
        ),
        Some(404) => (
            "MODEL_ID",
            format!("{endpoint} has no repository or file `{repo}` (404)"),
        ),
        Some(code) => (
            "HF_ENDPOINT",
            format!("{endpoint} answered {code} for `{repo}`: {e}"),
        ),
        None => match e {
            ApiError::RequestError(_) | ApiError::TooManyRetries(_) => (
                "HF_ENDPOINT",
                format!(
                    "cannot download `{repo}` from {endpoint}: {e}; set HF_HUB_OFFLINE=1 to use \
                     only what MODEL_DIR holds"
                ),
            ),
            _ => (
                "MODEL_DIR",
                format!(
                    "downloading `{repo}` into {} failed: {e}",
                    config.model_dir.display()
                ),
            ),
        },
    };
    Error::Config { variable, message }
}

/// Progress as log lines, every tenth of a file (for logs, where a bar is noise).
#[derive(Debug, Default)]
struct LogProgress {
    file: String,
    size: usize,
    done: usize,
    logged_tenths: usize,
}

impl Progress for LogProgress {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_owned();
        self.size = size;
        self.done = 0;
        self.logged_tenths = 0;
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        let tenths = (self.done * 10).checked_div(self.size).unwrap_or(10);
        if tenths > self.logged_tenths {
            self.logged_tenths = tenths;
            tracing::info!(
                file = %self.file,
                "{}% of {:.1} MiB",
                tenths.min(10) * 10,
                self.size as f64 / f64::from(1 << 20)
            );
        }
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn safetensors_repositories_fetch_weights_config_and_tokenizer_only() {
        let names = listing(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "original/consolidated.00.pth",
            "tokenizer.json",
            "tokenizer_config.json",
        ]);
        let files = wanted_files(&names, None, Quantization::AsStored, "org/m").unwrap();
        assert_eq!(
            files,
            listing(&[
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ])
        );
    }

    #[test]
    fn onnx_exports_fetch_one_graph_with_its_data() {
        let names = listing(&[
            "config.json",
            "tokenizer.json",
            "onnx/model.onnx",
            "onnx/model.onnx_data",
            "onnx/model_quantized.onnx",
            "onnx/model_fp16.onnx",
        ]);
        let full = wanted_files(&names, None, Quantization::AsStored, "org/m").unwrap();
        assert_eq!(
            full,
            listing(&[
                "config.json",
                "tokenizer.json",
                "onnx/model.onnx",
                "onnx/model.onnx_data"
            ])
        );
        let int8 = wanted_files(&names, None, Quantization::Int8, "org/m").unwrap();
        assert_eq!(
            int8,
            listing(&["config.json", "tokenizer.json", "onnx/model_quantized.onnx"])
        );
    }

    #[test]
    fn gguf_repositories_fetch_the_chosen_quantization_only() {
        let names = listing(&[
            "README.md",
            "m-Q4_K_M.gguf",
            "Q8_0/m-Q8_0-00001-of-00002.gguf",
            "Q8_0/m-Q8_0-00002-of-00002.gguf",
        ]);
        let q4 = wanted_files(&names, Some("q4_k_m"), Quantization::AsStored, "org/m").unwrap();
        assert_eq!(q4, listing(&["m-Q4_K_M.gguf"]));
        let q8 = wanted_files(&names, Some("Q8_0"), Quantization::AsStored, "org/m").unwrap();
        assert_eq!(
            q8,
            listing(&[
                "Q8_0/m-Q8_0-00001-of-00002.gguf",
                "Q8_0/m-Q8_0-00002-of-00002.gguf"
            ])
        );
        let err = wanted_files(&names, None, Quantization::AsStored, "org/m")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Q8_0/m-Q8_0.gguf, m-Q4_K_M.gguf") && err.contains("MODEL_ID"),
            "{err}"
        );
        let err = wanted_files(
            &listing(&["README.md"]),
            None,
            Quantization::AsStored,
            "org/m",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("it holds: README.md"), "{err}");
    }
}
