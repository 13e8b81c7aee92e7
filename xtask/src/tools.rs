//! The native build tools llama.cpp needs, provided when the machine lacks them.
//!
//! `llama-cpp-sys-2` runs CMake to build llama.cpp and bindgen (libclang) to read its headers.
//! A fresh machine with only Rust, Python and pip has neither, and bindgen's answer is a panic
//! with a backtrace. PyPI ships both as wheels: `cmake` (a static CMake under
//! `cmake/data/bin`) and `libclang` (`clang/native/libclang.so`). They are installed once with
//! `pip install --target` into the cache beside the model fixtures and handed to every cargo
//! command this xtask runs through `PATH` and `LIBCLANG_PATH`. The wheel's libclang carries no
//! compiler headers (`stddef.h`, `stdbool.h`), so bindgen gets the C compiler's own include
//! directory through `BINDGEN_EXTRA_CLANG_ARGS`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Pinned so that every machine builds llama.cpp with the same tools.
const CMAKE_WHEEL: &str = "cmake==3.31.10";
const LIBCLANG_WHEEL: &str = "libclang==18.1.1";

/// Environment variables to add to every cargo command, computed once per run.
pub(crate) fn build_env() -> Result<&'static [(String, OsString)]> {
    static ENV: OnceLock<Vec<(String, OsString)>> = OnceLock::new();
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env = provide()?;
    Ok(ENV.get_or_init(|| env))
}

/// `cargo xtask build-env`: the same variables as shell `export` lines, for building with plain
/// cargo (`eval "$(cargo xtask build-env)"`).
pub(crate) fn print_build_env() -> Result<()> {
    for (name, value) in build_env()? {
        println!("export {name}='{}'", value.to_string_lossy());
    }
    Ok(())
}

fn tools_dir() -> PathBuf {
    crate::cache_root().join("tools")
}

fn provide() -> Result<Vec<(String, OsString)>> {
    let mut env = Vec::new();
    let mut fetched = Vec::new();
    if !cmake_usable(Path::new("cmake")) {
        let dir = tools_dir().join("cmake");
        let bin = dir.join("cmake").join("data").join("bin");
        if !cmake_usable(&bin.join("cmake")) {
            pip_install(CMAKE_WHEEL, &dir, "cmake")?;
            fetched.push(CMAKE_WHEEL);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        env.push(("PATH".to_owned(), std::env::join_paths(paths)?));
    }
    if std::env::var_os("LIBCLANG_PATH").is_none() && system_libclang().is_none() {
        let dir = tools_dir().join("libclang");
        let native = dir.join("clang").join("native");
        if !native.join("libclang.so").is_file() {
            pip_install(LIBCLANG_WHEEL, &dir, "libclang")?;
            fetched.push(LIBCLANG_WHEEL);
        }
        env.push(("LIBCLANG_PATH".to_owned(), native.into_os_string()));
        if std::env::var_os("BINDGEN_EXTRA_CLANG_ARGS").is_none()
            && let Some(include) = compiler_include_dir()
        {
            env.push((
                "BINDGEN_EXTRA_CLANG_ARGS".to_owned(),
                format!("-isystem {}", include.display()).into(),
            ));
        }
    }
    if !fetched.is_empty() {
        eprintln!(
            "fetched {} from PyPI into {} (llama.cpp's build needs them)",
            fetched.join(" and "),
            tools_dir().display()
        );
    }
    Ok(env)
}

fn cmake_usable(cmake: &Path) -> bool {
    Command::new(cmake)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A libclang where clang-sys looks for one without `LIBCLANG_PATH`.
fn system_libclang() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("llvm-config").arg("--libdir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        let mut llvm: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
            })
            .map(|p| p.join("lib"))
            .collect();
        llvm.sort();
        dirs.extend(llvm);
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/local/lib",
            "/usr/lib",
        ]
        .map(PathBuf::from),
    );
    dirs.into_iter().find(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name == "libclang.so"
                    || name.starts_with("libclang.so.")
                    || name.starts_with("libclang-")
                        && name.ends_with(".so")
                        && !name.starts_with("libclang-cpp")
            })
        })
    })
}

/// The C compiler's own header directory (`stddef.h`, `stdbool.h`).
fn compiler_include_dir() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(cc)
        .arg("-print-file-name=include")
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("stddef.h").is_file().then_some(dir)
}

fn pip_install(wheel: &str, dir: &Path, what: &str) -> Result<()> {
    let python = "python3";
    let pip_works = Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pip_works {
        bail!(
            "{what} is missing and there is no `{python} -m pip` to fetch it from PyPI: \
             install Python 3 with pip, or {what} itself (Debian: apt-get install {})",
            if what == "cmake" {
                "cmake"
            } else {
                "libclang-dev"
            }
        );
    }
    let partial = dir.with_extension("part");
    let _ = std::fs::remove_dir_all(&partial);
    let status = crate::pip_install_into(&partial)
        .arg(wheel)
        .status()
        .with_context(|| format!("running {python} -m pip"))?;
    if !status.success() {
        bail!(
            "`pip install {wheel}` failed ({status}); install {what} yourself \
             (Debian: apt-get install {})",
            if what == "cmake" {
                "cmake"
            } else {
                "libclang-dev"
            }
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir)
        .with_context(|| format!("moving {} into place", partial.display()))
}
