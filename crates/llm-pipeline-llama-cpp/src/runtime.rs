//! The process-wide llama.cpp runtime: backend modules, the one `LlamaBackend`, logging.
//!
//! llama.cpp is built with `GGML_BACKEND_DL` and every x86 CPU variant (`dynamic-backends`), so
//! the CPU kernels are chosen when the program starts, for the CPU it runs on, instead of when
//! it is compiled: a binary built here runs with AVX-512 kernels on a server and with AVX2 ones
//! on a laptop. ggml scores each `libggml-cpu-*.so` variant by the features the CPU reports and
//! loads the best. The modules are looked up in `GGML_BACKENDS_DIR` (run time), else the
//! directory the build wrote them to, else next to the executable.
//!
//! ggml's AMX kernels (the `sapphirerapids` variant's extra buffer type) are known to crash with
//! SIGILL on some virtual machines that report AMX; [`AmxPolicy`] keeps them off unless
//! `LLM_PIPELINE_ALLOW_AMX=1`, by turning off llama.cpp's extra buffer types when that variant
//! is the one loaded.

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

fn backends_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("GGML_BACKENDS_DIR").map(PathBuf::from),
        llama_cpp_sys_2::BACKENDS_DIR.map(PathBuf::from),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
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
    let c_dir = CString::new(dir.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; ggml copies what it needs.
    unsafe { llama_cpp_sys_2::ggml_backend_load_all_from_path(c_dir.as_ptr()) };
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

/// Whether llama.cpp's extra (repacking, AMX) buffer types may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmxPolicy {
    /// Use them.
    Allow,
    /// Turn them off: the AMX variant is loaded and AMX was not explicitly allowed.
    Avoid,
}

impl Runtime {
    /// The llama.cpp backend token, for code that drives `llama-cpp-2` directly (benches).
    pub fn backend(&self) -> &LlamaBackend {
        &self.backend
    }

    /// The policy for this process (see the module docs).
    pub fn amx_policy(&self) -> AmxPolicy {
        let allowed = std::env::var("LLM_PIPELINE_ALLOW_AMX").is_ok_and(|v| v == "1");
        match self.cpu_variant.as_deref() {
            Some("sapphirerapids") if !allowed => AmxPolicy::Avoid,
            _ => AmxPolicy::Allow,
        }
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
