//! `cargo xtask gpu-check`: everything the GPU check needs, built here, in one directory small
//! enough to send to a GPU machine (under 64 MiB), with the script that runs it there.
//!
//! The GPU machines have a driver, PyTorch and no network; the build machine has the toolkit
//! (`cargo xtask cuda-env`) and no GPU. So the release bench binary (`examples/gpu_bench.rs`,
//! with the candle and ORT backends and `cuda`) is built here, stripped, and shipped
//! xz-compressed (`bin.tar.xz`) beside the Python scripts of `xtask/gpu/` and the `gguf`
//! package (`pylib/`, for a machine without it): `gen_model.py` makes the random Llama-3-8B-shaped model
//! there (16 GB of weights are not shipped), `hf_peer.py` runs the Hugging Face peer,
//! `to_gguf.py` converts the weights for llama.cpp, `report.py` writes the table, and `run.sh`
//! runs them in order under timeouts. The llama.cpp CUDA build takes 35-45 minutes on 2 cores
//! (see `docs/GPU-BUILD.md`), so its binary is built only with `--with-llama-cpp`, and
//! `run.sh` skips what is absent with a note instead of failing.
//!
//! ```text
//! cargo xtask gpu-check [--with-llama-cpp] [--no-build] [--out DIR]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, onnx, run, smollm2, target_dir, workspace_root};

/// What a GPU machine's command may carry along.
const SIZE_LIMIT: u64 = 64 << 20;

/// The scripts of `xtask/gpu/`, copied as they are.
const SCRIPTS: [&str; 5] = [
    "run.sh",
    "gen_model.py",
    "to_gguf.py",
    "hf_peer.py",
    "report.py",
];

/// The user messages of the bench, shared with the serving bench; sequence `c` asks
/// `prompts[c % len]`, in every system.
const PROMPTS: &str = "benches/serving/prompts.json";

/// The `gguf` package `to_gguf.py` writes with, shipped in `pylib/` for a GPU machine whose
/// Python lacks it (pure Python; it needs NumPy and PyYAML, which transformers brings).
const GGUF_PACKAGE: &str = "gguf==0.19.0";

/// The tiny ONNX export's files the ORT CUDA smoke run needs.
const ORT_TINY_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.onnx",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// `cargo xtask gpu-check`.
pub(crate) fn gpu_check(args: &[String]) -> Result<()> {
    let (mut build, mut with_llama_cpp) = (true, false);
    let mut out = target_dir().join("gpu-check");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--with-llama-cpp" => with_llama_cpp = true,
            "--no-build" => build = false,
            "--out" => out = PathBuf::from(it.next().context("--out DIR")?),
            other => bail!("gpu-check: unknown flag {other}"),
        }
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin)?;

    let candle = bench_binary("candle", "candle,ort,cuda", build)?;
    ship_binary(&candle, &bin.join("gpu_bench"))?;
    if with_llama_cpp {
        let llama = bench_binary("llama-cpp", "llama-cpp,cuda", build)?;
        ship_binary(&llama, &bin.join("gpu_bench_llama_cpp"))?;
        ship_llama_libraries(&bin.join("llama-libs"))?;
    }

    pack(&out, "bin")?;

    let sources = workspace_root().join("xtask").join("gpu");
    for script in SCRIPTS {
        std::fs::copy(sources.join(script), out.join(script))
            .with_context(|| format!("copying {script}"))?;
    }
    std::fs::copy(workspace_root().join(PROMPTS), out.join("prompts.json"))
        .with_context(|| format!("copying {PROMPTS}"))?;
    ship_gguf_package(&out.join("pylib"))?;
    let tiny = onnx::fixtures(&smollm2()?)?.tiny;
    std::fs::create_dir_all(out.join("ort-tiny"))?;
    for file in ORT_TINY_FILES {
        std::fs::copy(tiny.join(file), out.join("ort-tiny").join(file))?;
    }

    let size = dir_size(&out)?;
    eprintln!(
        "{}: {:.1} MiB (limit {} MiB)",
        out.display(),
        size as f64 / f64::from(1 << 20),
        SIZE_LIMIT >> 20
    );
    if size > SIZE_LIMIT {
        bail!("{} is over the limit; nothing was trimmed", out.display());
    }
    eprintln!(
        "On a GPU machine (carry this directory): bash {}/run.sh\n\
         It writes results.json and results.md to $OUT (or results/ beside run.sh).",
        out.strip_prefix(workspace_root()).unwrap_or(&out).display()
    );
    Ok(())
}

/// The release `gpu_bench` built with the facade `features`, kept in the target directory as
/// `gpu_bench-{tag}` (each build overwrites `gpu_bench`): built first in the toolkit's
/// environment when `build`, else as an earlier build left it.
fn bench_binary(tag: &str, features: &str, build: bool) -> Result<PathBuf> {
    let examples = target_dir().join("release").join("examples");
    let kept = examples.join(format!("gpu_bench-{tag}"));
    if build {
        let toolkit = crate::cuda::toolkit()?;
        eprintln!("building gpu_bench with {features}");
        run(cargo()?
            .args(["build", "--release", "--example", "gpu_bench"])
            .args(["--no-default-features", "--features", features])
            .envs(toolkit.env()))?;
        std::fs::copy(examples.join("gpu_bench"), &kept)
            .with_context(|| format!("keeping {}", kept.display()))?;
    }
    Ok(kept)
}

/// Copies a binary and strips it: the line tables of the release profile are most of its size.
fn ship_binary(built: &Path, shipped: &Path) -> Result<()> {
    if !built.is_file() {
        bail!(
            "{} is missing: build it (run without --no-build)",
            built.display()
        );
    }
    std::fs::copy(built, shipped).with_context(|| format!("copying {}", built.display()))?;
    run(Command::new("strip").arg(shipped))
}

/// The llama.cpp and ggml shared libraries (the CUDA backend module among them) of the newest
/// llama-cpp-sys-2 build: the llama.cpp binary loads them from `LD_LIBRARY_PATH` and
/// `GGML_BACKENDS_DIR`, which `run.sh` points here.
fn ship_llama_libraries(dest: &Path) -> Result<()> {
    let build = target_dir().join("release").join("build");
    let newest = std::fs::read_dir(&build)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("llama-cpp-sys-2-")
        })
        .filter(|e| e.path().join("out").is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .context("no llama-cpp-sys-2 build output")?
        .path()
        .join("out");
    std::fs::create_dir_all(dest)?;
    let mut stack = vec![newest];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let shipped = dest.join(&name);
            if path.is_symlink() {
                // Sonames (`libllama.so.0 -> libllama.so.0.6.0`) stay links: one copy each.
                if name.starts_with("lib") && name.contains(".so") && !shipped.exists() {
                    std::os::unix::fs::symlink(std::fs::read_link(&path)?, &shipped)?;
                }
            } else if path.is_dir() {
                stack.push(path);
            } else if name.starts_with("lib") && name.contains(".so") && !shipped.exists() {
                // The CPU variants stand both in build/bin and in backends/: one copy.
                std::fs::copy(&path, &shipped)?;
                run(Command::new("strip").arg("--strip-unneeded").arg(&shipped))?;
            }
        }
    }
    Ok(())
}

/// Replaces `out/dir` by `out/dir.tar.xz`: the binaries shrink about 8× (58 MB of candle's
/// gpu_bench, most of it kernel PTX, to 7 MB), which is what keeps llama.cpp's CUDA libraries
/// within the limit too. `run.sh` unpacks it on the GPU machine.
fn pack(out: &Path, dir: &str) -> Result<()> {
    eprintln!("compressing {dir}/ (xz -9)");
    run(Command::new("tar")
        .arg("-cJf")
        .arg(out.join(format!("{dir}.tar.xz")))
        .arg("-C")
        .arg(out)
        .arg(dir)
        .env("XZ_OPT", "-9 -T0"))?;
    std::fs::remove_dir_all(out.join(dir))?;
    Ok(())
}

/// Copies the pinned `gguf` package (installed once into the xtask cache) to `dest/gguf`.
fn ship_gguf_package(dest: &Path) -> Result<()> {
    let site = crate::cache_dir().join(GGUF_PACKAGE.replace("==", "-"));
    if !site.join("gguf/__init__.py").is_file() {
        run(crate::pip_install_into(&site).arg(GGUF_PACKAGE))?;
    }
    copy_python_tree(&site.join("gguf"), &dest.join("gguf"))
}

/// Copies a Python package's sources, without compiled caches.
fn copy_python_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)?.flatten() {
        let (path, name) = (entry.path(), entry.file_name());
        if path.is_dir() {
            if name != "__pycache__" {
                copy_python_tree(&path, &to.join(&name))?;
            }
        } else {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
