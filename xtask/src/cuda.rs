//! `cargo xtask cuda-env`: a CUDA 13.0 toolkit from PyPI wheels, enough to build the `cuda`
//! features on a machine without a GPU or a system toolkit.
//!
//! The wheels (pinned: unpinned `nvidia-nvvm` and `nvidia-cuda-crt` come as 13.5, whose PTX the
//! H200 machines' driver 580 cannot load) merge into `site/nvidia/cu13/{bin,include,lib,nvvm}`.
//! nvcc's profile wants a toolkit root with a real `bin/` and a `lib64/` with unversioned names,
//! so the root is built beside it from links. No wheel ships the driver's `libcuda.so`: a stub
//! with every `cu*` entry point of `cuda.h` and soname `libcuda.so.1` goes in `lib64/stubs` for
//! linking only; at run time the driver provides the real one. PyPI has no static cuBLAS, which
//! llama-cpp-sys-2 names on its link line: empty archives stand in, and the shared libraries
//! are linked instead. See `docs/GPU-BUILD.md` for the measurements behind each step.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cache_dir, run};

/// The CUDA 13.0 pieces, pinned together.
const WHEELS: [&str; 9] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-culibos==13.0.85",
];

/// Hopper (H100, H200): machine code for it, so that nothing is JIT-compiled on the GPU host.
const COMPUTE_CAP: &str = "90";

/// Libraries that get unversioned names in `lib64/`.
const UNVERSIONED: [&str; 6] = [
    "libcudart.so",
    "libcublas.so",
    "libcublasLt.so",
    "libcurand.so",
    "libnvrtc.so",
    "libnvblas.so",
];

/// Static archives llama-cpp-sys-2 links that PyPI does not ship.
const EMPTY_ARCHIVES: [&str; 2] = ["libcublas_static.a", "libcublasLt_static.a"];

/// The toolkit root, once prepared.
pub(crate) struct Toolkit {
    root: PathBuf,
}

impl Toolkit {
    /// The environment to build the `cuda` features with.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let root = self.root.display().to_string();
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            ("CUDA_HOME", root.clone()),
            ("CUDA_PATH", root.clone()),
            ("CUDA_ROOT", root.clone()),
            ("CUDAToolkit_ROOT", root.clone()),
            ("CUDACXX", format!("{root}/bin/nvcc")),
            ("PATH", format!("{root}/bin:{path}")),
            ("LIBRARY_PATH", format!("{root}/lib64:{root}/lib64/stubs")),
            ("CUDA_COMPUTE_CAP", COMPUTE_CAP.to_owned()),
            ("CMAKE_CUDA_ARCHITECTURES", COMPUTE_CAP.to_owned()),
        ]
    }
}

/// Installs (once) and returns the toolkit.
pub(crate) fn toolkit() -> Result<Toolkit> {
    let base = cache_dir().join("cuda-13.0");
    let site = base.join("site");
    let cu13 = site.join("nvidia/cu13");
    if !cu13.join("bin/nvcc").is_file() {
        eprintln!("installing the CUDA 13.0 wheels into {}", site.display());
        run(crate::pip_install_into(&site).args(WHEELS))?;
    }
    let root = base.join("toolkit");
    if !root.join("lib64/stubs/libcuda.so").is_file() {
        build_root(&cu13, &root)?;
    }
    Ok(Toolkit { root })
}

fn build_root(cu13: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    // Real directories holding per-file links: nvcc resolves its profile from its own path.
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for entry in std::fs::read_dir(cu13.join("bin"))? {
        let entry = entry?;
        std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()))?;
    }
    for dir in ["include", "nvvm"] {
        std::os::unix::fs::symlink(cu13.join(dir), root.join(dir))?;
    }
    let lib64 = root.join("lib64");
    std::fs::create_dir_all(lib64.join("stubs"))?;
    for entry in std::fs::read_dir(cu13.join("lib"))? {
        let entry = entry?;
        std::os::unix::fs::symlink(entry.path(), lib64.join(entry.file_name()))?;
    }
    for name in UNVERSIONED {
        let versioned = std::fs::read_dir(cu13.join("lib"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|f| f.starts_with(&format!("{name}.")) && !f.contains(".alt."))
            .with_context(|| format!("no {name}.* among the wheels' libraries"))?;
        std::os::unix::fs::symlink(&versioned, lib64.join(name))?;
    }
    for archive in EMPTY_ARCHIVES {
        run(Command::new("ar").arg("rcs").arg(lib64.join(archive)))?;
    }
    driver_stub(&cu13.join("include/cuda.h"), &lib64.join("stubs"))
}

/// Compiles `libcuda.so` (soname `libcuda.so.1`) with a body for every `cu*` function that
/// `cuda.h` declares, under both its plain and its versioned (`cuCtxCreate_v2`) names.
fn driver_stub(header: &Path, stubs: &Path) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for defines in [&[][..], &["-D__CUDA_API_VERSION_INTERNAL"][..]] {
        let out = Command::new("cc")
            .args(["-E", "-P"])
            .args(defines)
            .arg(header)
            .output()
            .context("cc -E cuda.h")?;
        if !out.status.success() {
            bail!(
                "preprocessing cuda.h failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        names.extend(called_cu_names(&String::from_utf8_lossy(&out.stdout)));
    }
    if names.len() < 200 {
        bail!("only {} cu* functions found in cuda.h", names.len());
    }
    let mut source = String::from("/* Link-time stand-in for the CUDA driver; never loaded. */\n");
    for name in &names {
        writeln!(source, "int {name}(void) {{ return 999; }}")?;
    }
    let c = stubs.join("cuda_stub.c");
    std::fs::write(&c, source)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(stubs.join("libcuda.so"))
        .arg(&c))?;
    std::os::unix::fs::symlink("libcuda.so", stubs.join("libcuda.so.1"))?;
    eprintln!("driver stub: {} entry points", names.len());
    Ok(())
}

/// Identifiers `cuX…` (X upper case) directly followed by `(`: the driver API's functions.
fn called_cu_names(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let is_call = bytes.get(j) == Some(&b'(');
        if is_call
            && word.len() > 3
            && word.starts_with("cu")
            && word.as_bytes()[2].is_ascii_uppercase()
        {
            names.push(word.to_owned());
        }
    }
    names
}

/// `cargo xtask cuda-env`: installs the toolkit and prints `export` lines for a shell.
pub(crate) fn cuda_env() -> Result<()> {
    let toolkit = toolkit()?;
    for (key, value) in toolkit.env() {
        println!("export {key}='{value}'");
    }
    eprintln!(
        "# eval \"$(cargo xtask cuda-env)\" && cargo build --release --features cuda\n\
         # At run time on the GPU machine: the driver's libcuda.so.1, and cuBLAS/cuRAND/cudart 13\n\
         # on LD_LIBRARY_PATH (its Python environment's site-packages/nvidia/cu13/lib)."
    );
    Ok(())
}

/// `cargo xtask cuda-check [--with-llama-cpp]`: clippy (`-D warnings`) over the facade's
/// library and examples with the `cuda` feature, so that code behind `cfg(feature = "cuda")` is
/// compiled and linted on a machine without a GPU. By default the candle and ORT backends:
/// candle's kernels take about 10 minutes of nvcc on 2 cores, which CI's budget holds, while
/// llama.cpp's CUDA build takes 35-45 minutes (`docs/GPU-BUILD.md`) and comes only with
/// `--with-llama-cpp`. Builds in `target/cuda-check` (or `$CARGO_TARGET_DIR`), apart from the CPU
/// builds whose features differ.
pub(crate) fn cuda_check(args: &[String]) -> Result<()> {
    let mut features = String::from("candle,ort,cuda");
    for flag in args {
        match flag.as_str() {
            "--with-llama-cpp" => features.push_str(",llama-cpp"),
            other => bail!("cuda-check: unknown flag {other}"),
        }
    }
    let toolkit = toolkit()?;
    // A target directory of its own: the CUDA features would otherwise rebuild the crates
    // that the CPU builds share.
    let target = crate::target_dir().join("cuda-check");
    eprintln!("clippy with {features} in {}", target.display());
    run(crate::cargo()?
        .args(["clippy", "--package", "llm-pipeline", "--lib", "--examples"])
        .args(["--no-default-features", "--features", &features])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", &target)
        .envs(toolkit.env()))
}
