//! `cargo xtask dist`: the `llm-pipeline` program with llama.cpp's shared libraries, as one
//! folder that runs anywhere it is copied (the container image installs it into `/usr/local`).
//!
//! ```text
//! DIR/bin/llm-pipeline
//! DIR/lib/llm-pipeline/libllama.so.0, libggml.so.0, libggml-base.so.0, libggml-cpu-*.so, …
//! ```
//! The program's run path starts with `$ORIGIN/../lib/llm-pipeline` (the facade's `build.rs`),
//! and the llama.cpp backend looks for its CPU variants there too, so nothing else is needed:
//! no library path, no `GGML_BACKENDS_DIR`. The libraries are those the built program resolves
//! (`ldd`), so the copy always matches the build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run, target_dir};

/// `cargo xtask dist [--out DIR] [--features F]`.
pub(crate) fn dist(args: &[String]) -> Result<()> {
    let mut out = target_dir().join("dist").join("llm-pipeline");
    let mut features = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a folder")?),
            "--features" => features.push(it.next().context("--features needs a list")?.clone()),
            other => bail!("unknown argument `{other}` (dist [--out DIR] [--features F])"),
        }
    }
    let mut build = cargo()?;
    build.args(["build", "--release", "--bin", "llm-pipeline"]);
    for f in &features {
        build.args(["--features", f]);
    }
    run(&mut build)?;
    let exe = target_dir().join("release").join("llm-pipeline");
    assemble(&exe, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// Copies `exe` and the llama.cpp libraries it resolves into `out` (emptied first).
pub(crate) fn assemble(exe: &Path, out: &Path) -> Result<()> {
    let libs = llama_lib_dir(exe)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let bin = out.join("bin");
    let lib = out.join("lib").join("llm-pipeline");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&lib)?;
    std::fs::copy(exe, bin.join("llm-pipeline"))
        .with_context(|| format!("copying {}", exe.display()))?;
    // The shared libraries (with their version links) and, in the build's `backends/` beside
    // them, one module per CPU variant (and the CUDA module when built with it).
    let backends = libs.parent().map(|p| p.join("backends"));
    for dir in std::iter::once(libs.clone()).chain(backends) {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !(name.starts_with("lib") && name.contains(".so")) {
                continue;
            }
            let to = lib.join(&name);
            if path.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&path)?, &to)?;
            } else {
                std::fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The folder from which `exe` loads `libllama.so`, as the dynamic loader resolves it.
fn llama_lib_dir(exe: &Path) -> Result<PathBuf> {
    let output = Command::new("ldd")
        .arg(exe)
        .output()
        .context("running ldd (glibc's loader listing) on the program")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter(|l| l.trim_start().starts_with("libllama.so"))
        .find_map(|l| l.split("=>").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .filter(|path| path.starts_with('/'))
        .and_then(|path| Path::new(path).parent().map(Path::to_path_buf))
        .with_context(|| format!("{} does not resolve libllama.so:\n{text}", exe.display()))
}
