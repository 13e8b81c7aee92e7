//! One way to load a model, shared by every backend crate.
//!
//! A backend crate's `load` is three steps: [`ModelFiles::locate`] finds the model named by the
//! configuration and reads what it is (a GGUF file's header is parsed here, once per load);
//! the crate checks it is a format it reads ([`ModelFiles::require_gguf`],
//! [`ModelFiles::require_directory`]); and [`start`] does the rest: the tokenizer and chat
//! template from the same files, the engine's limits from the configuration, the engine thread
//! (which opens the backend with the crate's closure), and the [`EnginePipeline`]. The only
//! code a backend crate owns is its [`Backend`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::PipelineConfig;
use crate::engine::{Engine, EngineLimits};
use crate::gguf::GgufMetadata;
use crate::model::{ModelSource, find_gguf};
use crate::pipeline::{EnginePipeline, ModelAssets};
use crate::structured::tools::ToolFormat;
use crate::template::{ChatTemplate, KnownTemplate, SpecialTokenText};
use crate::tokenizer::{Tokenizer, read_json};
use crate::validation::SamplingDefaults;
use crate::{Error, Result};

/// A located model: what its files are, read as far as every backend needs.
#[derive(Debug, Clone)]
pub enum ModelFiles {
    /// A GGUF file, its header (metadata and tensor directory) already read.
    Gguf(Arc<GgufMetadata>),
    /// A Hugging Face model directory: `config.json`, `tokenizer.json`, the chat template, and
    /// weights as safetensors or an ONNX export.
    Directory(PathBuf),
}

impl ModelFiles {
    /// Finds the model named by `config.model_id` (a path, or a hub id cached in `MODEL_DIR`)
    /// and reads what it is.
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) when it cannot be found; see [`ModelFiles::at`].
    pub fn locate(config: &PipelineConfig) -> Result<Self> {
        let location = ModelSource::parse(&config.model_id).fetch(config)?;
        Self::at(&location)
    }

    /// Reads what the model at a local path is: an `.onnx` file stands for its directory; any
    /// other file is read as GGUF; a directory with `config.json` is a Hugging Face directory;
    /// any other directory must hold a `.gguf` file.
    ///
    /// # Errors
    /// [`Error::Gguf`] or [`Error::Io`] when a GGUF header cannot be read, [`Error::Config`]
    /// (`MODEL_ID`) for a directory with neither `config.json` nor a `.gguf` file.
    pub fn at(location: &Path) -> Result<Self> {
        if location.is_file() {
            if location.extension().is_some_and(|e| e == "onnx") {
                let dir = location.parent().unwrap_or(Path::new("."));
                // Optimum exports keep the graph in `onnx/` beside the tokenizer files.
                let dir = match dir.file_name() {
                    Some(n) if n == "onnx" && !dir.join("config.json").is_file() => {
                        dir.parent().unwrap_or(dir)
                    }
                    _ => dir,
                };
                return Ok(Self::Directory(dir.to_path_buf()));
            }
            return Ok(Self::Gguf(Arc::new(GgufMetadata::from_path(location)?)));
        }
        if location.join("config.json").is_file() {
            return Ok(Self::Directory(location.to_path_buf()));
        }
        if !location.is_dir() {
            return Err(Error::Config {
                variable: "MODEL_ID",
                message: format!("{} does not exist", location.display()),
            });
        }
        let gguf = find_gguf(location).map_err(|_| Error::Config {
            variable: "MODEL_ID",
            message: format!(
                "{} holds neither a .gguf file nor config.json (a Hugging Face model directory)",
                location.display()
            ),
        })?;
        Ok(Self::Gguf(Arc::new(GgufMetadata::from_path(&gguf)?)))
    }

    /// The GGUF file or the directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(meta) => meta.path(),
            Self::Directory(dir) => dir,
        }
    }

    /// The GGUF header, for a backend that reads only GGUF. A directory that also holds a
    /// `.gguf` file gives that file's.
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) naming `backend` when the model has no GGUF file.
    pub fn require_gguf(&self, backend: &str) -> Result<Arc<GgufMetadata>> {
        match self {
            Self::Gguf(meta) => Ok(Arc::clone(meta)),
            Self::Directory(dir) => match find_gguf(dir) {
                Ok(path) => Ok(Arc::new(GgufMetadata::from_path(path)?)),
                Err(_) => Err(Error::Config {
                    variable: "MODEL_ID",
                    message: format!(
                        "{backend} reads GGUF files, and {} is a Hugging Face directory without \
                         one; use the candle backend for safetensors or ONNX Runtime for an \
                         ONNX export",
                        dir.display()
                    ),
                }),
            },
        }
    }

    /// The directory, for a backend that reads only Hugging Face directories.
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) naming `backend` when the model is a GGUF file.
    pub fn require_directory(&self, backend: &str) -> Result<&Path> {
        match self {
            Self::Directory(dir) => Ok(dir),
            Self::Gguf(meta) => Err(Error::Config {
                variable: "MODEL_ID",
                message: format!(
                    "{backend} reads model directories, and {} is a GGUF file; use the \
                     llama-cpp or candle backend for GGUF",
                    meta.path().display()
                ),
            }),
        }
    }

    /// The model's tokenizer: from the GGUF metadata, or the directory's `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] or [`Error::Gguf`] when it cannot be built.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Self::Gguf(meta) => Tokenizer::from_gguf(meta),
            Self::Directory(dir) => Tokenizer::from_dir(dir),
        }
    }

    /// The model's chat template (or `file`'s, which replaces it; or, for a model without one,
    /// its family's [`KnownTemplate`]), with the tokenizer's BOS and EOS text; `None` when
    /// there is none of these.
    ///
    /// # Errors
    /// [`Error::Config`] (`CHAT_TEMPLATE`) when `file` cannot be read; [`Error::Template`] when
    /// the template does not compile; [`Error::Io`] when a model's template file cannot be read.
    pub fn chat_template(
        &self,
        tokenizer: &Tokenizer,
        file: Option<&Path>,
    ) -> Result<Option<ChatTemplate>> {
        let source = match file {
            Some(file) => Some(std::fs::read_to_string(file).map_err(|e| Error::Config {
                variable: "CHAT_TEMPLATE",
                message: format!("cannot read {}: {e}", file.display()),
            })?),
            None => match self {
                Self::Gguf(meta) => meta.chat_template()?.map(str::to_owned),
                Self::Directory(dir) => hf_chat_template(dir)?,
            },
        };
        let source = match source {
            Some(source) => source,
            None => match self.known_template(tokenizer)? {
                Some(known) => {
                    tracing::info!(
                        template = known.name(),
                        "the model has no chat template; using its family's"
                    );
                    known.source().to_owned()
                }
                None => {
                    tracing::warn!(
                        model = %self.path().display(),
                        "the model has no chat template (looked for {}) and its family has no \
                         known one; chat requests will be refused until CHAT_TEMPLATE names one",
                        match self {
                            Self::Gguf(_) => "tokenizer.chat_template",
                            Self::Directory(_) =>
                                "chat_template.jinja and tokenizer_config.json's chat_template",
                        }
                    );
                    return Ok(None);
                }
            },
        };
        let special = tokenizer.special();
        ChatTemplate::new(
            &source,
            SpecialTokenText {
                bos: special.bos_text.clone().unwrap_or_default(),
                eos: special.eos_text.clone().unwrap_or_default(),
            },
        )
        .map(Some)
    }
}

impl ModelFiles {
    /// The sampling defaults of a Hugging Face directory's `generation_config.json` (none for
    /// a GGUF, which does not carry them).
    ///
    /// # Errors
    /// [`Error::Io`] when the file exists but cannot be read; [`Error::Tokenizer`] when it is
    /// not JSON (as [`Tokenizer::from_dir`], which reads its EOS ids, reports it).
    pub fn sampling_defaults(&self) -> Result<SamplingDefaults> {
        let Self::Directory(dir) = self else {
            return Ok(SamplingDefaults::default());
        };
        let Some(value) = read_json(&dir.join("generation_config.json"))? else {
            return Ok(SamplingDefaults::default());
        };
        let defaults = SamplingDefaults::from_generation_config(&value);
        if defaults != SamplingDefaults::default() {
            tracing::info!(?defaults, "sampling defaults from generation_config.json");
        }
        Ok(defaults)
    }

    /// The family template for a model without one: by the GGUF architecture or
    /// `config.json`'s `model_type`, and the vocabulary (see [`KnownTemplate::detect`]).
    fn known_template(&self, tokenizer: &Tokenizer) -> Result<Option<KnownTemplate>> {
        let architecture = match self {
            Self::Gguf(meta) => meta.architecture()?.to_owned(),
            Self::Directory(dir) => read_json(&dir.join("config.json"))
                .ok()
                .flatten()
                .and_then(|c| c.get("model_type")?.as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        let vocab = tokenizer.inner();
        Ok(KnownTemplate::detect(&architecture, |t| {
            vocab.token_to_id(t).is_some()
        }))
    }
}

/// How a model's weights are stored, as far as choosing a backend needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file (or a directory of them).
    Gguf,
    /// A Hugging Face directory with `*.safetensors` weights.
    Safetensors,
    /// A Hugging Face directory with an ONNX export (`model*.onnx`, at the top or in `onnx/`).
    Onnx,
}

impl ModelFormat {
    /// Reads the format of the model `config` names from its file names, without opening any
    /// weights; also says why, for the log line and `/version` (without the model's path, which
    /// clients never see).
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) when the model cannot be found, or its files are none of
    /// the formats, naming what was found.
    pub fn detect(config: &PipelineConfig) -> Result<(Self, String)> {
        let location = ModelSource::parse(&config.model_id).fetch(config)?;
        Self::detect_at(&location)
    }

    /// As [`ModelFormat::detect`], for a local path.
    ///
    /// # Errors
    /// As [`ModelFormat::detect`].
    pub fn detect_at(location: &Path) -> Result<(Self, String)> {
        let shown = location.display();
        if location.is_file() {
            return match location.extension().and_then(|e| e.to_str()) {
                Some("gguf") => Ok((Self::Gguf, "the model is a GGUF file".to_owned())),
                Some("onnx") => Ok((Self::Onnx, "the model is an ONNX graph".to_owned())),
                _ => Err(Error::Config {
                    variable: "MODEL_ID",
                    message: format!("{shown} is neither a .gguf nor an .onnx file; {}", ACCEPTED),
                }),
            };
        }
        // The directory and its subdirectories one level down (`onnx/`, per-quantization
        // folders of GGUFs).
        let mut names = crate::model::listing(location).unwrap_or_default();
        names.sort();
        // What the directory itself holds: its files, and its subdirectories by name.
        let mut top: Vec<&str> = names
            .iter()
            .map(|n| n.split('/').next().unwrap_or(n))
            .collect();
        top.dedup();
        let has = |pred: &dyn Fn(&str) -> bool| top.iter().any(|n| pred(n));
        let config = has(&|n| n == "config.json");
        if config && has(&|n| n.ends_with(".safetensors") || n == "model.safetensors.index.json") {
            return Ok((
                Self::Safetensors,
                "the model directory holds config.json and safetensors weights".to_owned(),
            ));
        }
        let onnx = |n: &str| n.ends_with(".onnx") && (!n.contains('/') || n.starts_with("onnx/"));
        if config && names.iter().any(|n| onnx(n)) {
            return Ok((
                Self::Onnx,
                "the model directory holds an ONNX export".to_owned(),
            ));
        }
        if names.iter().any(|n| n.ends_with(".gguf")) {
            return Ok((
                Self::Gguf,
                "the model directory holds GGUF files".to_owned(),
            ));
        }
        let found = if top.is_empty() {
            "nothing (or it cannot be read)".to_owned()
        } else {
            let mut list = top[..top.len().min(12)].join(", ");
            if top.len() > 12 {
                list.push_str(&format!(", and {} more", top.len() - 12));
            }
            list
        };
        Err(Error::Config {
            variable: "MODEL_ID",
            message: format!("{shown} holds {found}; {ACCEPTED}"),
        })
    }
}

/// What the built-in backends read, for errors about a model none of them can.
const ACCEPTED: &str = "llama-cpp reads a GGUF file, candle a directory with config.json and \
    *.safetensors (or a GGUF), ort a directory with config.json and model.onnx";

/// The chat template of a Hugging Face directory, found as `transformers` finds it:
/// `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`, a string or a list of
/// named templates of which the one named `default` (else the first) is taken.
///
/// # Errors
/// [`Error::Io`] when a file exists but cannot be read, and [`Error::Template`] when
/// `tokenizer_config.json` is not JSON.
pub fn hf_chat_template(dir: &Path) -> Result<Option<String>> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read(&jinja).map(Some);
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(&read(&config)?).map_err(|e| Error::Template {
            message: format!("{} is not JSON: {e}", config.display()),
            source: None,
        })?;
    Ok(match value.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_owned),
        _ => None,
    })
}

impl From<&PipelineConfig> for EngineLimits {
    fn from(config: &PipelineConfig) -> Self {
        Self {
            max_model_len: config.max_model_len,
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_queue: config.max_queue,
            sampling_threads: config.sampling_threads.or(config.threads).unwrap_or(0),
            speculative_tokens: config.speculative_tokens,
        }
    }
}

/// Starts a pipeline over `files`: builds the tokenizer and chat template, starts the engine
/// thread, which opens the backend with `open`, and waits until the backend is ready.
///
/// # Errors
/// The tokenizer's, the template's, or `open`'s error.
pub fn start<B, F>(config: &PipelineConfig, files: &ModelFiles, open: F) -> Result<EnginePipeline>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<B> + Send + 'static,
{
    let tokenizer = Arc::new(files.tokenizer()?);
    let template = files
        .chat_template(&tokenizer, config.chat_template.as_deref())?
        .map(Arc::new);
    let engine = Engine::start(open, Arc::clone(&tokenizer), EngineLimits::from(config))?;
    let source = template.as_ref().map(|t| t.source()).unwrap_or_default();
    let tool_format = config
        .tool_call_parser
        .unwrap_or_else(|| ToolFormat::detect(&source));
    let assets = ModelAssets {
        model_id: crate::model::served_name(&config.model_id),
        tokenizer,
        template,
        defaults: files.sampling_defaults()?,
        tool_format,
        thinks: crate::structured::reasoning::thinks(&source),
    };
    Ok(EnginePipeline::new(engine, assets, config.prices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        crate::testing::scratch_dir(&format!("load-{name}"))
    }

    #[test]
    fn templates_are_found_as_transformers_finds_them() {
        let dir = scratch("template");
        assert_eq!(hf_chat_template(&dir).unwrap(), None);
        let named = r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                          {"name": "default", "template": "D"}]}"#;
        std::fs::write(dir.join("tokenizer_config.json"), named).unwrap();
        assert_eq!(hf_chat_template(&dir).unwrap().as_deref(), Some("D"));
        let first = r#"{"chat_template": [{"name": "a", "template": "A"}]}"#;
        std::fs::write(dir.join("tokenizer_config.json"), first).unwrap();
        assert_eq!(hf_chat_template(&dir).unwrap().as_deref(), Some("A"));
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": "S"}"#,
        )
        .unwrap();
        assert_eq!(hf_chat_template(&dir).unwrap().as_deref(), Some("S"));
        // `chat_template.jinja` wins over the JSON.
        std::fs::write(dir.join("chat_template.jinja"), "J").unwrap();
        assert_eq!(hf_chat_template(&dir).unwrap().as_deref(), Some("J"));
        std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), "{oops").unwrap();
        let err = hf_chat_template(&dir).unwrap_err().to_string();
        assert!(err.contains("not JSON"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formats_are_told_apart_and_refused_by_name() {
        let dir = scratch("formats");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("onnx")).unwrap();
        std::fs::write(dir.join("onnx/model.onnx"), b"").unwrap();
        let files = ModelFiles::at(&dir).unwrap();
        assert!(matches!(&files, ModelFiles::Directory(d) if d == &dir));
        // An `.onnx` file in `onnx/` stands for the export's directory.
        let onnx = ModelFiles::at(&dir.join("onnx/model.onnx")).unwrap();
        assert_eq!(onnx.path(), dir);
        let err = files.require_gguf("llama.cpp").unwrap_err().to_string();
        assert!(
            err.contains("MODEL_ID") && err.contains("llama.cpp"),
            "{err}"
        );
        assert_eq!(files.require_directory("ONNX Runtime").unwrap(), dir);
        let empty = scratch("empty");
        let err = ModelFiles::at(&empty).unwrap_err().to_string();
        assert!(
            err.contains("neither a .gguf file nor config.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
