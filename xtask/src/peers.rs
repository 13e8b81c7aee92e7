//! The serving stacks our server is measured against, built or installed once and cached under
//! `<cache>/peers/` (next to the model fixtures):
//! - `llama-server`: llama.cpp's own server, built with cmake from the llama.cpp source that the
//!   PyPI `llama-cpp-python` source distribution vendors (the `llama-cpp-sys-2` crate ships no
//!   server sources). CPU only, with the kernels our backend loads on this machine (ggml's
//!   `zen4` set: AVX-512, VBMI, VNNI, BF16) compiled in and AMX compiled out: ggml's AMX path
//!   dies with SIGILL on this VM. Only the `llama-server` target is built.
//! - mistral.rs: the PyPI `mistralrs` wheel in a virtual environment. The wheel has the engine
//!   but not its HTTP server, so a launcher runs `xtask/peers/mistralrs_server.py`, a minimal
//!   streamed chat endpoint over the wheel's `Runner`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cache_dir, run, workspace_root};

/// The source distribution whose `vendor/llama.cpp` we build.
const LLAMA_CPP_PYTHON: &str = "0.3.36";
/// The mistral.rs wheel.
const MISTRALRS: &str = "mistralrs==0.9.5";

/// The cmake options of the llama-server build: no `GGML_NATIVE` (the binary must not depend
/// on the build machine) but the same CPU features as ggml's `zen4` variant, which our backend
/// selects at run time here.
const LLAMA_CMAKE: [&str; 23] = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_SSE42=ON",
    "-DGGML_AVX=ON",
    "-DGGML_F16C=ON",
    "-DGGML_FMA=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_AVX512=ON",
    "-DGGML_AVX512_VBMI=ON",
    "-DGGML_AVX512_VNNI=ON",
    "-DGGML_AVX512_BF16=ON",
    "-DGGML_AVX_VNNI=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DGGML_OPENMP=ON",
    "-DLLAMA_OPENSSL=OFF",
    // No web UI: the prebuilt one would be downloaded from a model hub.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
];

/// Where the peers live.
fn peers_dir() -> PathBuf {
    cache_dir()
        .parent()
        .map_or_else(|| PathBuf::from("peers"), |c| c.join("peers"))
}

/// Builds `llama-server` unless cached; returns its path.
pub(crate) fn llama_server() -> Result<PathBuf> {
    let peers = peers_dir();
    let build = peers.join(format!("build-llama-server-{LLAMA_CPP_PYTHON}"));
    let bin = build.join("bin").join("llama-server");
    if bin.is_file() {
        return Ok(bin);
    }
    let src = peers.join("src");
    let tree = src.join(format!("llama_cpp_python-{LLAMA_CPP_PYTHON}"));
    if !tree.join("vendor/llama.cpp/CMakeLists.txt").is_file() {
        std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        eprintln!("fetching llama-cpp-python=={LLAMA_CPP_PYTHON} (source) from PyPI");
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps"])
            // The source of llama-cpp-python alone: `:all:` would build its build
            // dependencies (cmake among them) from source too.
            .args(["--no-binary", "llama-cpp-python", "--dest"])
            .arg(&src)
            .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON}")))?;
        let archive = src.join(format!("llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"));
        run(Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&src))?;
    }
    eprintln!(
        "building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON}'s llama.cpp into {} \
         (several minutes)",
        build.display()
    );
    run(Command::new("cmake")
        .arg("-S")
        .arg(tree.join("vendor/llama.cpp"))
        .arg("-B")
        .arg(&build)
        .args(LLAMA_CMAKE))?;
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    run(Command::new("cmake").arg("--build").arg(&build).args([
        "--target",
        "llama-server",
        "-j",
        &jobs.to_string(),
    ]))?;
    Ok(bin)
}

/// Installs the mistral.rs wheel unless cached; returns the launcher of its HTTP shim.
pub(crate) fn mistralrs() -> Result<PathBuf> {
    let dir = peers_dir().join(MISTRALRS.replace("==", "-"));
    let venv = dir.join("venv");
    let python = venv.join("bin").join("python");
    if !installed(&python)? {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("installing {MISTRALRS} from PyPI into {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--only-binary", ":all:"])
            .arg(MISTRALRS))?;
    }
    // Written every time: it names this checkout's shim.
    let shim = workspace_root().join("xtask/peers/mistralrs_server.py");
    let launcher = dir.join("serve");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec '{}' '{}' \"$@\"\n",
            python.display(),
            shim.display()
        ),
    )?;
    make_executable(&launcher)?;
    Ok(launcher)
}

fn installed(python: &Path) -> Result<bool> {
    if !python.is_file() {
        return Ok(false);
    }
    let status = Command::new(python)
        .args(["-c", "import mistralrs"])
        .status()
        .with_context(|| format!("running {}", python.display()))?;
    Ok(status.success())
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
