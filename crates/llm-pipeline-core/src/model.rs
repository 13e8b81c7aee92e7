//! Where a model comes from: a GGUF file, a model directory, or a Hugging Face id.
//!
//! A Hugging Face id is looked up in `MODEL_DIR` with the hub cache layout
//! (`models--org--name/snapshots/<revision>/`, the revision named by `refs/main` when present),
//! which is what Livepeer's runner and `huggingface-cli download --cache-dir` produce. A model
//! that is not there is downloaded there (feature `hub`, see [`crate::hub`]) unless
//! `HF_HUB_OFFLINE` is set, in which case the error says where it was looked for. A directory or repository
//! with several GGUF files needs a choice (`org/name:Q4_K_M`, llama.cpp's convention, or the
//! file's path); split GGUFs (`-00001-of-0000N.gguf`) are one model. The id in a request only
//! selects among served models; it is never used as a path.

use std::path::{Path, PathBuf};

use crate::config::PipelineConfig;
use crate::{Error, Result};

/// A model's location, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local `.gguf` file.
    GgufFile(PathBuf),
    /// A local directory (`config.json`, `tokenizer.json`, weights, or `.gguf` files), with the
    /// GGUF to take when it holds several.
    Directory {
        /// The directory.
        path: PathBuf,
        /// A quantization (`Q4_K_M`) or file name, from `MODEL_ID=dir:choice`.
        gguf: Option<String>,
    },
    /// A Hugging Face repository id (`org/name`), found in the `MODEL_DIR` cache, with the GGUF
    /// to take when it holds several (llama.cpp's `org/name:Q4_K_M` convention).
    HuggingFace {
        /// `org/name`.
        repo: String,
        /// A quantization (`Q4_K_M`) or file name.
        gguf: Option<String>,
    },
}

impl ModelSource {
    /// Classifies `id`: an existing path is a file or directory, anything else a hub id; a
    /// `:choice` suffix that is not part of an existing path names the GGUF to take.
    pub fn parse(id: &str) -> Self {
        let path = Path::new(id);
        if path.is_dir() {
            return Self::Directory {
                path: path.to_path_buf(),
                gguf: None,
            };
        }
        if path.is_file() {
            return Self::GgufFile(path.to_path_buf());
        }
        let (base, gguf) = match id.rsplit_once(':') {
            Some((base, choice))
                if !base.is_empty() && !choice.is_empty() && !choice.contains('/') =>
            {
                (base, Some(choice.to_owned()))
            }
            _ => (id, None),
        };
        if Path::new(base).is_dir() {
            Self::Directory {
                path: PathBuf::from(base),
                gguf,
            }
        } else {
            Self::HuggingFace {
                repo: base.to_owned(),
                gguf,
            }
        }
    }

    /// The GGUF choice (`:Q4_K_M`), if any.
    pub fn gguf_choice(&self) -> Option<&str> {
        match self {
            Self::GgufFile(_) => None,
            Self::Directory { gguf, .. } | Self::HuggingFace { gguf, .. } => gguf.as_deref(),
        }
    }

    /// The local path of the model: the file or directory itself, or the cached snapshot
    /// directory of a hub id under `model_dir`. With a GGUF choice, the chosen file.
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) when a hub id is not in the cache, or the choice matches
    /// no GGUF file or several.
    pub fn resolve(&self, model_dir: &Path) -> Result<PathBuf> {
        let dir = match self {
            Self::GgufFile(p) => return Ok(p.clone()),
            Self::Directory { path, .. } => path.clone(),
            Self::HuggingFace { repo, .. } => cached_snapshot(repo, model_dir)?,
        };
        match self.gguf_choice() {
            Some(choice) => select_gguf(&dir, Some(choice)),
            None => Ok(dir),
        }
    }
}

impl ModelSource {
    /// As [`ModelSource::resolve`], downloading a hub repository that `MODEL_DIR` lacks (or
    /// the chosen GGUF of one) into it, in the hub cache layout, unless `HF_HUB_OFFLINE` is
    /// set. Downloads need the `hub` feature.
    ///
    /// # Errors
    /// As [`ModelSource::resolve`]; for a download, [`Error::Config`] naming `HF_TOKEN`,
    /// `HF_ENDPOINT` or `MODEL_ID` when the hub refuses, cannot be reached or has no such
    /// repository or files.
    pub fn fetch(&self, config: &PipelineConfig) -> Result<PathBuf> {
        let cached = self.resolve(&config.model_dir);
        let Self::HuggingFace { repo, gguf } = self else {
            return cached;
        };
        let interrupted = download_marker(repo, &config.model_dir).exists();
        let missing = match cached {
            Ok(_) if interrupted => Error::Config {
                variable: "MODEL_ID",
                message: format!(
                    "the download of `{repo}` into {} was interrupted",
                    config.model_dir.display()
                ),
            },
            Ok(path) => return Ok(path),
            Err(missing) => missing,
        };
        if config.hub.offline {
            return Err(Error::Config {
                variable: "HF_HUB_OFFLINE",
                message: format!("nothing is downloaded while it is set: {missing}"),
            });
        }
        #[cfg(feature = "hub")]
        {
            let dir = crate::hub::download(repo, gguf.as_deref(), config)?;
            match gguf {
                Some(choice) => select_gguf(&dir, Some(choice)),
                None => Ok(dir),
            }
        }
        #[cfg(not(feature = "hub"))]
        {
            let _ = (repo, gguf);
            Err(Error::Config {
                variable: "MODEL_ID",
                message: format!(
                    "{missing}; this build downloads nothing (llm-pipeline's feature `hub`)"
                ),
            })
        }
    }
}

/// The file that marks a download of `repo` into `model_dir` as under way or interrupted: a
/// snapshot is complete only without it (snapshots other tools made never have one).
pub(crate) fn download_marker(repo: &str, model_dir: &Path) -> PathBuf {
    repo_dir(repo, model_dir).join(".llm-pipeline-incomplete")
}

/// The folder of `repo` in the hub cache under `model_dir` (`models--org--name`).
fn repo_dir(repo: &str, model_dir: &Path) -> PathBuf {
    model_dir.join(format!("models--{}", repo.replace('/', "--")))
}

/// The snapshot directory of `repo` in the hub cache under `model_dir`: the one `refs/main`
/// names, else the first there is.
pub(crate) fn cached_snapshot(repo: &str, model_dir: &Path) -> Result<PathBuf> {
    let root = repo_dir(repo, model_dir);
    let snapshots = root.join("snapshots");
    let revision = std::fs::read_to_string(root.join("refs").join("main"))
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| snapshots.join(r).is_dir());
    let dir = match revision {
        Some(r) => Some(snapshots.join(r)),
        None => std::fs::read_dir(&snapshots)
            .ok()
            .and_then(|mut e| e.find_map(|e| e.ok().map(|e| e.path())))
            .filter(|p| p.is_dir()),
    };
    dir.ok_or_else(|| Error::Config {
        variable: "MODEL_ID",
        message: format!(
            "`{repo}` is neither a local path nor cached in {} (looked for {})",
            model_dir.display(),
            snapshots.display()
        ),
    })
}

/// One loadable GGUF among a listing: a single file, or a complete split set
/// (`name-00001-of-00003.gguf`, which llama.cpp loads from the first shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GgufCandidate {
    /// Its files, relative to the listing's root; the first is the one to open.
    pub(crate) files: Vec<String>,
    /// The name shown in lists: the first file without the shard suffix.
    pub(crate) label: String,
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3).
fn split_parts(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (base, index) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(index) && digits(total)) {
        return None;
    }
    Some((base, index.parse().ok()?, total.parse().ok()?))
}

/// The GGUF models among `names` (paths relative to a directory or a repository, `/`
/// separated), leaving out multimodal projectors (`mmproj*`); sorted by label.
///
/// # Errors
/// [`Error::Config`] (`MODEL_ID`) when the only GGUFs are split sets with shards missing,
/// naming them; `place` says where.
pub(crate) fn gguf_candidates(names: &[String], place: &str) -> Result<Vec<GgufCandidate>> {
    let present: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut candidates = Vec::new();
    let mut incomplete = Vec::new();
    for name in names {
        let (folder, file) = match name.rsplit_once('/') {
            Some((folder, file)) => (format!("{folder}/"), file),
            None => (String::new(), name.as_str()),
        };
        if !file.ends_with(".gguf") || file.starts_with("mmproj") {
            continue;
        }
        match split_parts(file) {
            None => candidates.push(GgufCandidate {
                files: vec![name.clone()],
                label: name.clone(),
            }),
            Some((base, 1, total)) => {
                let shards: Vec<String> = (1..=total)
                    .map(|i| format!("{folder}{base}-{i:05}-of-{total:05}.gguf"))
                    .collect();
                let missing: Vec<&str> = shards
                    .iter()
                    .filter(|f| !present.contains(f.as_str()))
                    .map(|f| f.rsplit('/').next().unwrap_or(f))
                    .collect();
                if missing.is_empty() {
                    let label = format!("{folder}{base}.gguf");
                    candidates.push(GgufCandidate {
                        files: shards,
                        label,
                    });
                } else {
                    incomplete.push(format!("{name} (missing {})", missing.join(", ")));
                }
            }
            Some(_) => {}
        }
    }
    if candidates.is_empty() && !incomplete.is_empty() {
        return Err(Error::Config {
            variable: "MODEL_ID",
            message: format!(
                "incomplete split GGUF in {place}: {}",
                incomplete.join("; ")
            ),
        });
    }
    candidates.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(candidates)
}

/// The files in `dir` and its immediate subdirectories (repositories that keep each
/// quantization in a folder), as `/`-separated relative paths.
pub(crate) fn listing(dir: &Path) -> Result<Vec<String>> {
    let read = |d: &Path| {
        std::fs::read_dir(d).map_err(|source| Error::Io {
            path: d.to_path_buf(),
            source,
        })
    };
    let mut names = Vec::new();
    for entry in read(dir)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            for inner in read(&path)?.flatten() {
                names.push(format!("{name}/{}", inner.file_name().to_string_lossy()));
            }
        } else {
            names.push(name);
        }
    }
    Ok(names)
}

/// The candidate `choice` names among `candidates` (or the only one without a choice).
///
/// # Errors
/// [`Error::Config`] (`MODEL_ID`) when there is none, when `choice` matches none or several
/// (listing them), and when there are several and no choice (listing them and how to choose).
pub(crate) fn choose_gguf<'c>(
    candidates: &'c [GgufCandidate],
    choice: Option<&str>,
    place: &str,
) -> Result<&'c GgufCandidate> {
    let list = |c: &[&GgufCandidate]| {
        c.iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&GgufCandidate> = candidates.iter().collect();
    let chosen: Vec<&GgufCandidate> = match choice {
        Some(choice) => all
            .iter()
            .copied()
            .filter(|c| names(&c.label, choice))
            .collect(),
        None => all.clone(),
    };
    let message = match (chosen.as_slice(), choice) {
        ([one], _) => return Ok(one),
        ([], _) if all.is_empty() => format!("no .gguf file in {place}"),
        ([], Some(choice)) => {
            format!(
                "no GGUF in {place} matches `{choice}`; it holds: {}",
                list(&all)
            )
        }
        (several, Some(choice)) => format!(
            "`{choice}` matches several GGUF files in {place}: {}; name one file",
            list(several)
        ),
        (several, None) => format!(
            "{place} holds several GGUF files: {}; choose one with \
             MODEL_ID=<id>:<quantization> (as `org/name:Q4_K_M`) or the file's path",
            list(several)
        ),
    };
    Err(Error::Config {
        variable: "MODEL_ID",
        message,
    })
}

/// Whether `label` is the one `choice` names: the same file name, or a quantization tag
/// (`Q4_K_M`) that stands between separators in it, case-insensitively.
fn names(label: &str, choice: &str) -> bool {
    let label = label.to_ascii_uppercase();
    let choice = choice.to_ascii_uppercase();
    let choice = choice.strip_suffix(".GGUF").unwrap_or(&choice);
    let label = label.strip_suffix(".GGUF").unwrap_or(&label);
    label == choice || label.split(['.', '-', '/']).any(|token| token == choice)
}

/// The name a model is served under, from `MODEL_ID` as given, read from the text alone: a hub
/// id (`org/name`, `org/name:Q4_K_M`) is its own name; a path becomes the repository it is a
/// snapshot of (`…/models--org--name/snapshots/<rev>` is `org/name`) or its last component
/// without `.gguf`, so clients (in `/v1/models`, in error messages) never see where the
/// operator keeps files.
///
/// ```
/// use llm_pipeline_core::model::served_name;
/// assert_eq!(served_name("meta-llama/Llama-3.1-8B-Instruct"), "meta-llama/Llama-3.1-8B-Instruct");
/// assert_eq!(served_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct.Q4_1");
/// assert_eq!(served_name("/models/models--org--tiny/snapshots/abc123"), "org/tiny");
/// assert_eq!(served_name("./weights/qwen3"), "qwen3");
/// ```
pub fn served_name(model_id: &str) -> String {
    let is_path = model_id.starts_with(['/', '.', '~'])
        || model_id.matches('/').count() > 1
        || model_id.ends_with(".gguf")
        || model_id.contains('\\');
    if !is_path {
        return model_id.to_owned();
    }
    let parts: Vec<&str> = model_id
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if let Some(repo) = parts.iter().rev().find_map(|p| p.strip_prefix("models--")) {
        return repo.replacen("--", "/", 1);
    }
    let last = parts.last().copied().unwrap_or("model");
    last.strip_suffix(".gguf").unwrap_or(last).to_owned()
}

/// The GGUF file in `dir` to load: the one there is, or the one `choice` names (a quantization
/// such as `Q4_K_M`, or a file name). Split files (`-00001-of-0000N.gguf`) count as one model,
/// opened at the first shard.
///
/// # Errors
/// [`Error::Config`] (`MODEL_ID`) when `dir` holds none, when `choice` matches none or several
/// (listing them), and when there are several and no choice (listing them and how to choose).
pub fn select_gguf(dir: &Path, choice: Option<&str>) -> Result<PathBuf> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    let place = dir.display().to_string();
    let candidates = gguf_candidates(&listing(dir)?, &place)?;
    let chosen = choose_gguf(&candidates, choice, &place)?;
    Ok(dir.join(&chosen.files[0]))
}

/// The single GGUF model in `dir` (see [`select_gguf`]).
///
/// # Errors
/// As [`select_gguf`] without a choice.
pub fn find_gguf(dir: &Path) -> Result<PathBuf> {
    select_gguf(dir, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        crate::testing::scratch_dir(&format!("model-{name}"))
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn hub_ids_resolve_in_the_cache_layout() {
        let root = scratch("hub");
        let snap = root.join("models--org--tiny/snapshots/abc123");
        touch(&root.join("models--org--tiny/refs/main"));
        std::fs::write(root.join("models--org--tiny/refs/main"), "abc123\n").unwrap();
        touch(&snap.join("m.Q8_0.gguf"));
        touch(&snap.join("m.Q4_0.gguf"));
        let src = ModelSource::parse("org/tiny");
        assert_eq!(
            src,
            ModelSource::HuggingFace {
                repo: "org/tiny".into(),
                gguf: None
            }
        );
        assert_eq!(src.resolve(&root).unwrap(), snap);
        // llama.cpp's `:quant` convention picks one; without it, the error lists them.
        let chosen = ModelSource::parse("org/tiny:q4_0").resolve(&root).unwrap();
        assert_eq!(chosen, snap.join("m.Q4_0.gguf"));
        let err = find_gguf(&snap).unwrap_err().to_string();
        assert!(
            err.contains("m.Q4_0.gguf, m.Q8_0.gguf") && err.contains("org/name:Q4_K_M"),
            "{err}"
        );
        let err = ModelSource::parse("org/tiny:Q5_K_M")
            .resolve(&root)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("matches `Q5_K_M`") && err.contains("m.Q8_0.gguf"),
            "{err}"
        );
        let missing = ModelSource::parse("org/absent").resolve(&root).unwrap_err();
        assert!(missing.to_string().contains("MODEL_ID"), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn split_ggufs_are_one_model_opened_at_the_first_shard() {
        let dir = scratch("split");
        for i in 1..=3 {
            touch(&dir.join(format!("Q4_K_M/big-Q4_K_M-{i:05}-of-00003.gguf")));
        }
        touch(&dir.join("big-Q8_0.gguf"));
        touch(&dir.join("mmproj-big-f16.gguf"));
        let first = dir.join("Q4_K_M/big-Q4_K_M-00001-of-00003.gguf");
        assert_eq!(select_gguf(&dir, Some("Q4_K_M")).unwrap(), first);
        assert_eq!(
            select_gguf(&dir, Some("big-Q8_0.gguf")).unwrap(),
            dir.join("big-Q8_0.gguf")
        );
        let err = find_gguf(&dir).unwrap_err().to_string();
        assert!(
            err.contains("Q4_K_M/big-Q4_K_M.gguf, big-Q8_0.gguf"),
            "{err}"
        );
        assert!(!err.contains("mmproj"), "{err}");
        // A set with a shard missing is not offered, and says which shard is missing.
        std::fs::remove_file(dir.join("big-Q8_0.gguf")).unwrap();
        std::fs::remove_file(dir.join("Q4_K_M/big-Q4_K_M-00002-of-00003.gguf")).unwrap();
        let err = find_gguf(&dir).unwrap_err().to_string();
        assert!(
            err.contains("missing big-Q4_K_M-00002-of-00003.gguf"),
            "{err}"
        );
        // A local directory takes the same `:choice`.
        let id = format!("{}:Q4_K_M", dir.display());
        assert!(matches!(
            ModelSource::parse(&id),
            ModelSource::Directory { gguf: Some(ref g), .. } if g == "Q4_K_M"
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
