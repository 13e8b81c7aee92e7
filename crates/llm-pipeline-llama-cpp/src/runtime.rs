//! The process-wide llama.cpp runtime: backend modules, the one `LlamaBackend`, logging.
//!
//! llama.cpp is built with `GGML_BACKEND_DL` and every x86 CPU variant (`dynamic-backends`), so
//! the CPU kernels are chosen when the program starts, for the CPU it runs on, instead of when
//! it is compiled: a binary built here runs with AVX-512 kernels on a server and with AVX2 ones
//! on a laptop. ggml scores each `libggml-cpu-*.so` variant by the features the CPU reports and
//! loads the best. The modules are looked up in `GGML_BACKENDS_DIR` (run time), else beside the
//! executable (`../lib/llm-pipeline/`, then its own folder), else the directory the build wrote
//! them to.
//!
//! We pick the CPU variant ourselves rather than with ggml's `ggml_backend_load_all`: ggml would
//! pick `sapphirerapids` on any CPU that reports AMX, and its AMX kernels die with SIGILL at
//! `tilezero` on virtual machines that report AMX without supporting it (measured here: the
//! demo crashed in a release build). So the best variant whose instructions the CPU has is
//! chosen, AMX excluded unless `LLM_PIPELINE_ALLOW_AMX=1`. Which variant was loaded is reported
//! ([`Runtime::cpu_variant`]; the backend's description and the throughput bench print it), so
//! that a slow run can be told from a wrong kernel choice.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

use crate::LlamaCppError;

/// The loaded runtime: the backend token and what was loaded.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) backend: LlamaBackend,
    /// The backend modules loaded, e.g. `["CPU"]`, and the CPU variant's library file.
    pub devices: Vec<DeviceInfo>,
    /// The CPU variant chosen (`haswell`, `skylakex`, `sapphirerapids`, …), when known.
    pub cpu_variant: Option<String>,
}

/// One compute device ggml found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// ggml's device name (`CPU`, `CUDA0`).
    pub name: String,
    /// Its description (the CPU model, the GPU name).
    pub description: String,
    /// Whether it is a GPU.
    pub is_gpu: bool,
    /// Free memory in bytes, as ggml reports it.
    pub free_bytes: u64,
    /// Total memory in bytes.
    pub total_bytes: u64,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process-wide runtime, initialized on first use.
///
/// # Errors
/// [`LlamaCppError::Runtime`] if no backend module could be loaded.
pub fn runtime() -> Result<&'static Runtime, LlamaCppError> {
    RUNTIME
        .get_or_init(init)
        .as_ref()
        .map_err(|message| LlamaCppError::Runtime {
            message: message.clone(),
        })
}

/// The folder of the backend modules: `GGML_BACKENDS_DIR`, else the installed layout beside the
/// program (`bin/llm-pipeline` with `lib/llm-pipeline/`, or the modules next to the program),
/// else the folder the build wrote them to. An installed copy thus loads its own modules even
/// where the build that made it still exists.
fn backends_dir() -> Option<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let candidates = [
        std::env::var_os("GGML_BACKENDS_DIR").map(PathBuf::from),
        exe_dir
            .as_ref()
            .map(|dir| dir.join("..").join("lib").join("llm-pipeline")),
        exe_dir,
        llama_cpp_sys_2::BACKENDS_DIR.map(PathBuf::from),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| has_cpu_variants(dir))
}

fn has_cpu_variants(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libggml-cpu"))
    })
}

fn init() -> Result<Runtime, String> {
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let dir = backends_dir().ok_or_else(|| {
        "no ggml backend modules (libggml-cpu-*.so) found: set GGML_BACKENDS_DIR to their \
         directory"
            .to_string()
    })?;
    load_backends(&dir)?;
    let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
    let devices = devices();
    if devices.is_empty() {
        return Err(format!(
            "no ggml device could be loaded from {}",
            dir.display()
        ));
    }
    let cpu_variant = cpu_variant(&dir);
    tracing::info!(dir = %dir.display(), ?cpu_variant, ?devices, "llama.cpp runtime ready");
    Ok(Runtime {
        backend,
        devices,
        cpu_variant,
    })
}

/// ggml's x86 CPU variants (ggml/src/CMakeLists.txt) and the instructions each one needs,
/// best first.
const CPU_VARIANTS: &[(&str, &[&str])] = &[
    (
        "sapphirerapids",
        &["avx512f", "avx512vbmi", "avx512vnni", "avx512bf16", "amx"],
    ),
    (
        "zen4",
        &["avx512f", "avx512vbmi", "avx512vnni", "avx512bf16"],
    ),
    ("cooperlake", &["avx512f", "avx512vnni", "avx512bf16"]),
    ("icelake", &["avx512f", "avx512vbmi", "avx512vnni"]),
    ("cascadelake", &["avx512f", "avx512vnni"]),
    ("cannonlake", &["avx512f", "avx512vbmi"]),
    ("skylakex", &["avx512f"]),
    ("alderlake", &["avx2", "fma", "f16c", "bmi2", "avxvnni"]),
    ("haswell", &["avx2", "fma", "f16c", "bmi2"]),
    ("piledriver", &["avx", "f16c", "fma"]),
    ("ivybridge", &["avx", "f16c"]),
    ("sandybridge", &["avx"]),
    ("sse42", &["sse4.2"]),
    ("x64", &[]),
];

#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> bool {
    let avx512 = || {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
    };
    match feature {
        // Never detected: AMX is opt-in (see the module docs).
        "amx" => std::env::var("LLM_PIPELINE_ALLOW_AMX").is_ok_and(|v| v == "1"),
        "avx512f" => avx512(),
        "avx512vbmi" => is_x86_feature_detected!("avx512vbmi"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        "avxvnni" => is_x86_feature_detected!("avxvnni"),
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "bmi2" => is_x86_feature_detected!("bmi2"),
        "avx" => is_x86_feature_detected!("avx"),
        "sse4.2" => is_x86_feature_detected!("sse4.2"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_feature: &str) -> bool {
    false
}

/// The CPU variants this CPU can run, best first.
pub fn usable_cpu_variants() -> Vec<&'static str> {
    CPU_VARIANTS
        .iter()
        .filter(|(_, needs)| needs.iter().all(|f| cpu_has(f)))
        .map(|(name, _)| *name)
        .collect()
}

fn load_one(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.to_string_lossy().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; ggml registers the backend it finds there.
    !unsafe { llama_cpp_sys_2::ggml_backend_load(c_path.as_ptr()) }.is_null()
}

/// Loads the best usable CPU variant and every other backend module (CUDA, …) in `dir`.
fn load_backends(dir: &Path) -> Result<(), String> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let variant_file = |v: &str| {
        files
            .iter()
            .find(|p| name_of(p) == format!("libggml-cpu-{v}.so"))
    };
    let cpu = if cfg!(target_arch = "x86_64") {
        usable_cpu_variants()
            .into_iter()
            .filter_map(variant_file)
            .find(|p| load_one(p))
    } else {
        // Elsewhere (ARM), ggml's own scoring has no AMX to trip over.
        files
            .iter()
            .filter(|p| name_of(p).starts_with("libggml-cpu"))
            .find(|p| load_one(p))
    };
    if cpu.is_none() {
        return Err(format!(
            "no CPU backend in {} could be loaded",
            dir.display()
        ));
    }
    for other in files.iter().filter(|p| {
        let n = name_of(p);
        n.starts_with("libggml-")
            && n.ends_with(".so")
            && !n.starts_with("libggml-cpu")
            && !n.starts_with("libggml-base")
    }) {
        if !load_one(other) {
            tracing::warn!(path = %other.display(), "cannot load ggml backend module");
        }
    }
    Ok(())
}

fn c_str(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated static strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn devices() -> Vec<DeviceInfo> {
    // SAFETY: plain queries of ggml's device registry, valid after loading.
    unsafe {
        (0..llama_cpp_sys_2::ggml_backend_dev_count())
            .map(|i| {
                let dev = llama_cpp_sys_2::ggml_backend_dev_get(i);
                let (mut free, mut total) = (0usize, 0usize);
                llama_cpp_sys_2::ggml_backend_dev_memory(dev, &mut free, &mut total);
                let kind = llama_cpp_sys_2::ggml_backend_dev_type(dev);
                DeviceInfo {
                    name: c_str(llama_cpp_sys_2::ggml_backend_dev_name(dev)),
                    description: c_str(llama_cpp_sys_2::ggml_backend_dev_description(dev)),
                    is_gpu: kind == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_GPU,
                    free_bytes: free as u64,
                    total_bytes: total as u64,
                }
            })
            .collect()
    }
}

/// Which CPU variant ggml loaded, read from this process's memory map.
fn cpu_variant(dir: &Path) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let dir = dir.to_string_lossy();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with(dir.as_ref()) || p.contains("libggml-cpu"))
        .find_map(|p| {
            let name = Path::new(p).file_name()?.to_string_lossy().into_owned();
            let variant = name.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
            Some(variant.to_owned())
        })
}

impl Runtime {
    /// The llama.cpp backend token, for code that drives `llama-cpp-2` directly (benches).
    pub fn backend(&self) -> &LlamaBackend {
        &self.backend
    }

    /// The GPUs ggml found.
    pub fn gpus(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.devices.iter().filter(|d| d.is_gpu)
    }

    /// llama.cpp's own line of CPU features and backends.
    pub fn system_info(&self) -> String {
        // SAFETY: returns a static NUL-terminated string.
        c_str(unsafe { llama_cpp_sys_2::llama_print_system_info() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_ordered_and_amx_is_opt_in() {
        let usable = usable_cpu_variants();
        assert_eq!(usable.last(), Some(&"x64"), "the baseline always runs");
        if std::env::var("LLM_PIPELINE_ALLOW_AMX").is_err() {
            assert!(!usable.contains(&"sapphirerapids"));
        }
        // Best first: the order of the table is kept.
        let order: Vec<&str> = CPU_VARIANTS.iter().map(|(n, _)| *n).collect();
        let positions: Vec<usize> = usable
            .iter()
            .map(|v| order.iter().position(|o| o == v).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_loaded_variant_is_the_best_usable_one() {
        let rt = runtime().expect("runtime");
        assert_eq!(
            rt.cpu_variant.as_deref(),
            usable_cpu_variants().first().copied()
        );
        assert!(
            rt.devices.iter().any(|d| d.name == "CPU"),
            "{:?}",
            rt.devices
        );
    }
}
