//! The ONNX Runtime library, its environment, and sessions on the chosen execution provider.
//!
//! `ort` is built with `load-dynamic`: the shared library is opened at run time, never
//! downloaded at build time. It comes from the PyPI `onnxruntime` wheel and is found through
//! `ORT_DYLIB_PATH` or, failing that, in the cache `cargo xtask` fills. The library and the
//! environment are process-wide, so they are opened once.
//!
//! Execution providers: the CPU by default; CUDA (behind the `cuda` feature) with the device id
//! and an arena limit derived from `GPU_MEMORY_UTILIZATION`. When CUDA cannot be used, the
//! session is refused unless [`Fallback::Cpu`] was chosen, and then the fallback is logged:
//! a model meant for a GPU never lands on the CPU silently.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llm_pipeline_core::config::PipelineConfig;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::OrtError;

/// The environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// The environment variable choosing the CPU fallback (`cpu`) or refusal (`refuse`, default).
pub const FALLBACK_ENV: &str = "LLM_PIPELINE_ORT_FALLBACK";

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider on the given device (needs the `cuda` feature).
    Cuda {
        /// The CUDA device ordinal among the visible devices.
        device_id: i32,
    },
}

/// What to do when the requested execution provider cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Fail the load (the default).
    #[default]
    Refuse,
    /// Run on the CPU instead, with a warning in the log.
    Cpu,
}

/// Backend options beyond [`PipelineConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtOptions {
    /// The execution provider.
    pub device: Device,
    /// What to do when it is unavailable.
    pub fallback: Fallback,
    /// The ONNX Runtime library; `None` looks in `ORT_DYLIB_PATH`, then the xtask cache.
    pub dylib: Option<PathBuf>,
}

impl Default for OrtOptions {
    /// CUDA device 0 when built with `cuda`, else the CPU; no fallback.
    fn default() -> Self {
        Self {
            device: if cfg!(feature = "cuda") {
                Device::Cuda { device_id: 0 }
            } else {
                Device::Cpu
            },
            fallback: Fallback::Refuse,
            dylib: None,
        }
    }
}

impl OrtOptions {
    /// The defaults, with the fallback read from `LLM_PIPELINE_ORT_FALLBACK` (`cpu` or
    /// `refuse`).
    ///
    /// # Errors
    /// [`OrtError::Unsupported`] naming the variable when its value is neither.
    pub fn from_env() -> Result<Self, OrtError> {
        let fallback = match std::env::var(FALLBACK_ENV).ok().as_deref() {
            None | Some("" | "refuse") => Fallback::Refuse,
            Some("cpu") => Fallback::Cpu,
            Some(other) => {
                return Err(OrtError::Unsupported {
                    setting: FALLBACK_ENV,
                    message: format!("`{other}` is neither `cpu` nor `refuse`"),
                });
            }
        };
        Ok(Self {
            fallback,
            ..Self::default()
        })
    }

    /// With `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// With `fallback`.
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// With the ONNX Runtime library at `path`.
    pub fn with_dylib(mut self, path: impl Into<PathBuf>) -> Self {
        self.dylib = Some(path.into());
        self
    }
}

/// The library in the xtask cache, if there is one.
fn cached_dylib() -> Option<PathBuf> {
    let root = std::env::var_os("LLM_PIPELINE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/llm-pipeline")))?;
    let dir = root.join("models/onnx/runtime");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
}

/// Opens the ONNX Runtime library once and returns the process-wide environment.
///
/// # Errors
/// [`OrtError::Runtime`] when no library is found or it cannot be opened.
pub fn environment(dylib: Option<&Path>) -> Result<&'static Environment, OrtError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        let path = dylib
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(DYLIB_ENV).map(PathBuf::from))
            .or_else(cached_dylib)
            .ok_or_else(|| {
                format!(
                    "no ONNX Runtime library: set {DYLIB_ENV} to libonnxruntime.so from the PyPI \
                     `onnxruntime` wheel, or run `cargo xtask models` to cache one"
                )
            })?;
        tracing::info!(path = %path.display(), "opening ONNX Runtime");
        ort::init_from(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_name("llm-pipeline")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    });
    result.as_ref().map_err(|message| OrtError::Runtime {
        message: message.clone(),
    })
}

/// How a session was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the CPU, as asked.
    Cpu,
    /// On a CUDA device.
    Cuda {
        /// The device.
        device_id: i32,
    },
    /// On the CPU because CUDA could not be used and the fallback was chosen.
    CpuFallback,
}

/// Creates a session for `model` on the chosen execution provider.
///
/// # Errors
/// [`OrtError::Session`] when ONNX Runtime cannot load the model; [`OrtError::Unsupported`]
/// when CUDA is asked for and unavailable without a fallback.
pub fn session(
    model: &Path,
    config: &PipelineConfig,
    options: &OrtOptions,
) -> Result<(Session, Placement), OrtError> {
    let env = environment(options.dylib.as_deref())?;
    let threads = config.effective_threads().max(1) as usize;
    let ort_err = |source: ort::Error| OrtError::Session {
        path: model.to_path_buf(),
        source,
    };
    let builder = || -> Result<_, OrtError> {
        Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ort_err(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| ort_err(e.into()))
    };
    let cpu = |placement| -> Result<(Session, Placement), OrtError> {
        let session = builder()?.commit_from_file(model).map_err(ort_err)?;
        Ok((session, placement))
    };
    match options.device {
        Device::Cpu => cpu(Placement::Cpu),
        Device::Cuda { device_id } => match cuda_session(model, config, device_id, builder()?) {
            Ok(session) => Ok((session, Placement::Cuda { device_id })),
            Err(e) if options.fallback == Fallback::Cpu => {
                tracing::warn!(error = %e, "CUDA is unavailable; running on the CPU as {FALLBACK_ENV}=cpu asks");
                cpu(Placement::CpuFallback)
            }
            Err(e) => Err(e),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_session(
    model: &Path,
    config: &PipelineConfig,
    device_id: i32,
    builder: ort::session::builder::SessionBuilder,
) -> Result<Session, OrtError> {
    let ort_err = |source: ort::Error| OrtError::Session {
        path: model.to_path_buf(),
        source,
    };
    let mut cuda = ort::ep::CUDA::default().with_device_id(device_id);
    if let Some(total) = gpu_total_bytes(device_id) {
        let limit = (total as f64 * f64::from(config.gpu_memory_utilization)) as usize;
        cuda = cuda.with_memory_limit(limit);
    } else if config.gpu_memory_utilization < 1.0 {
        return Err(OrtError::Unsupported {
            setting: "GPU_MEMORY_UTILIZATION",
            message: "the GPU's memory size is unknown (nvidia-smi did not answer), so the \
                      fraction cannot be turned into an arena limit"
                .into(),
        });
    }
    builder
        .with_execution_providers([cuda.build().error_on_failure()])
        .map_err(|e| ort_err(e.into()))?
        .commit_from_file(model)
        .map_err(ort_err)
}

#[cfg(not(feature = "cuda"))]
fn cuda_session(
    _model: &Path,
    _config: &PipelineConfig,
    _device_id: i32,
    _builder: ort::session::builder::SessionBuilder,
) -> Result<Session, OrtError> {
    Err(OrtError::Unsupported {
        setting: "device",
        message: "llm-pipeline-ort was built without the `cuda` feature".into(),
    })
}

/// The device's memory in bytes, from `nvidia-smi`.
#[cfg(feature = "cuda")]
fn gpu_total_bytes(device_id: i32) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total",
            "--format=csv,noheader,nounits",
            "-i",
        ])
        .arg(device_id.to_string())
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib * 1024 * 1024)
}
