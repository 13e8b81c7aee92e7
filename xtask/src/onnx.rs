//! Fixtures of the ONNX Runtime backend: the runtime library and two decoder-with-past exports.
//!
//! Everything comes from PyPI and is cached under `<cache>/onnx/` (regenerated only when
//! missing):
//! - `runtime/libonnxruntime.so.<version>`: extracted from the `onnxruntime` wheel (`pip
//!   download --no-deps`); `ort` opens it at run time through `ORT_DYLIB_PATH`.
//! - `venv/`: a virtual environment with the pinned `onnx`, `gguf`, `numpy` and `onnxruntime`
//!   packages that run `xtask/onnx/export_llama.py`.
//! - `smollm2-135m-instruct/`: SmolLM2-135M-Instruct exported from the cached GGUF
//!   (dequantized to f32; Q/K rows un-permuted to the Hugging Face rope layout), with a
//!   `tokenizer.json` built from the GGUF's vocabulary and merges and the GGUF's chat template,
//!   and the optional `logits_index` input (the file of that name marks it).
//! - `tiny-llama/`: a two-layer Llama with random weights (seed 0) for fast tests, also as
//!   `model_fp16.onnx` (float16 KV and logits) for the backend's half-precision path.
//!
//! Both exports also get `model_quantized.onnx` (MatMul weights in int8, ONNX Runtime's dynamic
//! quantization), the variant `USE_8BIT` loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cache_dir, run, workspace_root};

/// The ONNX Runtime release whose wheel provides the library (API 31 or later, as `ort`'s
/// `api-31` feature requires).
const ONNXRUNTIME: &str = "onnxruntime==1.32.0";
/// The exporter's Python packages, pinned (`onnxruntime` for its int8 quantizer).
const EXPORTER_PACKAGES: [&str; 4] = [
    "onnx==1.23.2",
    "gguf==0.19.0",
    "numpy==2.4.6",
    "onnxruntime==1.32.0",
];

/// Paths of the ONNX fixtures.
#[derive(Debug)]
pub(crate) struct Fixtures {
    /// `libonnxruntime.so.*`.
    pub(crate) runtime: PathBuf,
    /// The SmolLM2 export directory.
    pub(crate) smollm2: PathBuf,
    /// The tiny random-weight export directory.
    pub(crate) tiny: PathBuf,
}

impl Fixtures {
    /// The variables the tests read.
    pub(crate) fn env(&self) -> [(&'static str, &Path); 3] {
        [
            ("ORT_DYLIB_PATH", &self.runtime),
            ("LLM_PIPELINE_ONNX_SMOLLM2", &self.smollm2),
            ("LLM_PIPELINE_ONNX_TINY", &self.tiny),
        ]
    }
}

/// Ensures every ONNX fixture is cached; `gguf` is the SmolLM2 GGUF to export.
pub(crate) fn fixtures(gguf: &Path) -> Result<Fixtures> {
    Ok(Fixtures {
        runtime: runtime()?,
        smollm2: export(gguf, "smollm2-135m-instruct")?,
        tiny: export_tiny("tiny-llama")?,
    })
}

fn onnx_dir() -> PathBuf {
    cache_dir().join("onnx")
}

/// The ONNX Runtime shared library from the PyPI wheel.
fn runtime() -> Result<PathBuf> {
    let dir = onnx_dir().join("runtime");
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
            })
    };
    if let Some(path) = find(&dir) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = dir.join("download");
    eprintln!("fetching {ONNXRUNTIME} from PyPI into {}", dir.display());
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .args(["--only-binary=:all:", "--dest"])
        .arg(&download)
        .arg(ONNXRUNTIME))?;
    let wheel = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no onnxruntime wheel")?;
    // The wheel is a zip; take the one library `ort` opens (it needs no other file of the
    // wheel for the CPU execution provider).
    let script = "import sys, zipfile, shutil, os\n\
         z = zipfile.ZipFile(sys.argv[1])\n\
         m = [n for n in z.namelist() if os.path.basename(n).startswith('libonnxruntime.so.')][0]\n\
         dst = os.path.join(sys.argv[2], os.path.basename(m))\n\
         with z.open(m) as src, open(dst + '.part', 'wb') as out: shutil.copyfileobj(src, out)\n\
         os.rename(dst + '.part', dst)\n";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&dir))?;
    std::fs::remove_dir_all(&download).ok();
    find(&dir).context("the onnxruntime wheel holds no libonnxruntime.so")
}

/// The exporter's Python: a virtual environment with the pinned packages.
fn python() -> Result<PathBuf> {
    crate::venv_python(
        &onnx_dir().join("venv"),
        &EXPORTER_PACKAGES,
        "the exporter's",
    )
}

/// Runs the exporter into `name` unless that directory already holds every one of `files`;
/// writes to a temporary directory first so that an interrupted export is never taken for a
/// finished one.
fn cached_export(name: &str, files: &[&str], args: &[&std::ffi::OsStr]) -> Result<PathBuf> {
    let dir = onnx_dir().join(name);
    if files.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let python = python()?;
    let part = onnx_dir().join(format!("{name}.part"));
    std::fs::remove_dir_all(&part).ok();
    eprintln!("exporting {name} to ONNX in {}", dir.display());
    run(Command::new(python)
        .arg(workspace_root().join("xtask/onnx/export_llama.py"))
        .args(args)
        .arg(&part))?;
    std::fs::remove_dir_all(&dir).ok();
    std::fs::rename(&part, &dir)?;
    Ok(dir)
}

fn export(gguf: &Path, name: &str) -> Result<PathBuf> {
    cached_export(
        name,
        &["model.onnx", "model_quantized.onnx", "logits_index"],
        &["gguf".as_ref(), gguf.as_os_str(), "--int8".as_ref()],
    )
}

fn export_tiny(name: &str) -> Result<PathBuf> {
    cached_export(
        name,
        &["model.onnx", "model_quantized.onnx", "model_fp16.onnx"],
        &["tiny".as_ref(), "--int8".as_ref()],
    )
}
