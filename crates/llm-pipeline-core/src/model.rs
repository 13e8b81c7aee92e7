//! Where a model comes from: a GGUF file, a model directory, or a Hugging Face id.
//!
//! A Hugging Face id is looked up in `MODEL_DIR` with the hub cache layout
//! (`models--org--name/snapshots/<revision>/`, the revision named by `refs/main` when present),
//! which is what Livepeer's runner and `huggingface-cli download --cache-dir` produce. Nothing is
//! downloaded at run time: a model that is not there is a clear error saying where it was looked
//! for. The id in a request only selects among served models; it is never used as a path.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A model's location, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local `.gguf` file.
    GgufFile(PathBuf),
    /// A local directory (`config.json`, `tokenizer.json`, weights).
    Directory(PathBuf),
    /// A Hugging Face repository id (`org/name`), found in the `MODEL_DIR` cache.
    HuggingFace(String),
}

impl ModelSource {
    /// Classifies `id`: an existing path is a file or directory, anything else a hub id.
    pub fn parse(id: &str) -> Self {
        let path = Path::new(id);
        if path.is_dir() {
            Self::Directory(path.to_path_buf())
        } else if path.is_file() {
            Self::GgufFile(path.to_path_buf())
        } else {
            Self::HuggingFace(id.to_owned())
        }
    }

    /// The local path of the model: the file or directory itself, or the cached snapshot
    /// directory of a hub id under `model_dir`.
    ///
    /// # Errors
    /// [`Error::Config`] (`MODEL_ID`) when a hub id is not in the cache.
    pub fn resolve(&self, model_dir: &Path) -> Result<PathBuf> {
        match self {
            Self::GgufFile(p) | Self::Directory(p) => Ok(p.clone()),
            Self::HuggingFace(id) => {
                let repo = model_dir.join(format!("models--{}", id.replace('/', "--")));
                let snapshots = repo.join("snapshots");
                let revision = std::fs::read_to_string(repo.join("refs").join("main"))
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
                        "`{id}` is neither a local path nor cached in {} (looked for {}); \
                         models are never downloaded at run time",
                        model_dir.display(),
                        snapshots.display()
                    ),
                })
            }
        }
    }
}

/// The single `.gguf` file in `dir` (the smallest, when there are several quantizations).
///
/// # Errors
/// [`Error::Config`] (`MODEL_ID`) when `dir` holds none.
pub fn find_gguf(dir: &Path) -> Result<PathBuf> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .map(|p| (std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::Config {
            variable: "MODEL_ID",
            message: format!("no .gguf file in {}", dir.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_resolve_in_the_cache_layout() {
        let root = std::env::temp_dir().join(format!("llmp-model-{}", std::process::id()));
        let snap = root.join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("models--org--tiny/refs")).unwrap();
        std::fs::write(root.join("models--org--tiny/refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("m.Q8_0.gguf"), b"xx").unwrap();
        std::fs::write(snap.join("m.Q4_0.gguf"), b"x").unwrap();
        let src = ModelSource::parse("org/tiny");
        assert_eq!(src, ModelSource::HuggingFace("org/tiny".into()));
        let dir = src.resolve(&root).unwrap();
        assert_eq!(dir, snap);
        assert_eq!(find_gguf(&dir).unwrap(), snap.join("m.Q4_0.gguf"));
        let missing = ModelSource::parse("org/absent").resolve(&root).unwrap_err();
        assert!(missing.to_string().contains("MODEL_ID"), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
