//! What a decoder-with-past export looks like, and the checks that a directory is one.
//!
//! Hugging Face Optimum and transformers.js export causal language models with the same
//! interface: `input_ids`, `attention_mask`, optional `position_ids` and one
//! `past_key_values.{i}.key/value` pair per layer in; `logits` and `present.{i}.key/value` out.
//! The model file sits at the directory's root (`model.onnx`, Optimum) or under `onnx/`
//! (transformers.js, `onnx-community/*`), with quantized siblings (`model_quantized.onnx`,
//! `model_int8.onnx`) and half-precision ones (`model_fp16.onnx`). This module finds the file
//! and checks the graph's interface against `config.json` before anything runs, so a directory
//! that is not such an export is refused with an error that names what is missing. The checks
//! are pure functions over names, shapes and element types, unit-tested without a runtime.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::OrtError;

/// The model files tried for full precision, in order of preference.
const FULL_PRECISION: [&str; 2] = ["model.onnx", "model_fp16.onnx"];
/// The model files accepted for `USE_8BIT`, in order of preference.
const INT8: [&str; 2] = ["model_quantized.onnx", "model_int8.onnx"];

/// Which weights to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `model.onnx` (or `model_fp16.onnx`).
    Full,
    /// An int8 variant, for `USE_8BIT`.
    Int8,
}

/// The facts of `config.json` the backend needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelConfig {
    /// Decoder layers: the number of `past_key_values.{i}` pairs.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the attention heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of one head; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Trained context length.
    #[serde(default)]
    pub max_position_embeddings: Option<u32>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    ///
    /// # Errors
    /// [`OrtError::NotAnExport`] when the file is missing, [`OrtError::Config`] when it does not
    /// parse.
    pub fn from_dir(dir: &Path) -> Result<Self, OrtError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|_| OrtError::NotAnExport {
            dir: dir.to_path_buf(),
            missing: "config.json (layer and head counts)".into(),
        })?;
        serde_json::from_str(&text).map_err(|source| OrtError::Config { path, source })
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// Finds the model file in `dir` (or `dir/onnx`) for `precision`.
///
/// # Errors
/// [`OrtError::NotAnExport`] naming the files looked for; for [`Precision::Int8`] the error is
/// [`OrtError::Unsupported`] naming `USE_8BIT`.
pub fn find_model(dir: &Path, precision: Precision) -> Result<PathBuf, OrtError> {
    let names: &[&str] = match precision {
        Precision::Full => &FULL_PRECISION,
        Precision::Int8 => &INT8,
    };
    let found = [dir.to_path_buf(), dir.join("onnx")]
        .iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file());
    found.ok_or_else(|| match precision {
        Precision::Full => OrtError::NotAnExport {
            dir: dir.to_path_buf(),
            missing: format!(
                "a model file ({} in the directory or onnx/)",
                names.join(" or ")
            ),
        },
        Precision::Int8 => OrtError::Unsupported {
            setting: "USE_8BIT",
            message: format!(
                "{} has no int8 variant ({}); quantize the export first or unset USE_8BIT",
                dir.display(),
                names.join(" or ")
            ),
        },
    })
}

/// A tensor's element type, as far as the backend cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `float32`.
    F32,
    /// `float16`.
    F16,
    /// `int64`.
    I64,
    /// Anything else (named for the error).
    Other(&'static str),
}

/// One graph input or output: name, element type, shape (`-1` for a dynamic dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The name.
    pub name: String,
    /// The element type.
    pub dtype: Dtype,
    /// The shape; `-1` marks a symbolic dimension.
    pub shape: Vec<i64>,
}

/// The checked interface of a decoder-with-past graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// The KV tensors' element type (F32 or F16).
    pub kv_dtype: Dtype,
    /// The logits' element type (F32 or F16).
    pub logits_dtype: Dtype,
    /// Logits row width.
    pub vocab_size: usize,
    /// Whether the graph takes `position_ids` (otherwise it derives them from the mask).
    pub has_position_ids: bool,
    /// Whether the graph takes `logits_index` (`[batch, n]` int64: the columns of each row
    /// whose logits it computes), so that a prompt's step runs the LM head only for the rows
    /// the engine samples from. Optimum's exports compute logits at every column.
    pub has_logits_index: bool,
}

fn find<'a>(ports: &'a [Port], name: &str) -> Option<&'a Port> {
    ports.iter().find(|p| p.name == name)
}

/// Checks that `inputs` and `outputs` form a decoder-with-past interface for `config`.
///
/// # Errors
/// [`OrtError::NotAnExport`] naming every missing input and output (or the first mismatched
/// shape or type), so a wrong directory is diagnosed in one go.
pub fn check_interface(
    dir: &Path,
    config: &ModelConfig,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<Interface, OrtError> {
    let not_export = |missing: String| OrtError::NotAnExport {
        dir: dir.to_path_buf(),
        missing,
    };
    let layers = config.num_hidden_layers;
    let mut missing = Vec::new();
    for name in ["input_ids", "attention_mask"] {
        if find(inputs, name).is_none() {
            missing.push(format!("input `{name}`"));
        }
    }
    if find(outputs, "logits").is_none() {
        missing.push("output `logits`".to_string());
    }
    for i in 0..layers {
        for kind in ["key", "value"] {
            let past = format!("past_key_values.{i}.{kind}");
            if find(inputs, &past).is_none() {
                missing.push(format!("input `{past}`"));
            }
            let present = format!("present.{i}.{kind}");
            if find(outputs, &present).is_none() {
                missing.push(format!("output `{present}`"));
            }
        }
    }
    if !missing.is_empty() {
        let shown = missing.len().min(6);
        let more = missing.len() - shown;
        let mut text = missing[..shown].join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        return Err(not_export(format!(
            "{text} (a decoder-with-past export has input_ids, attention_mask, \
             past_key_values.{{i}}.key/value for {layers} layers, logits and present.{{i}}.key/value)"
        )));
    }
    let known = |n: &str| {
        matches!(
            n,
            "input_ids" | "attention_mask" | "position_ids" | "logits_index"
        ) || n.starts_with("past_key_values.")
    };
    if let Some(extra) = inputs.iter().find(|p| !known(&p.name)) {
        return Err(not_export(format!(
            "support for input `{}` (only input_ids, attention_mask, position_ids, \
             logits_index and past_key_values are fed; merged exports with use_cache_branch are not supported)",
            extra.name
        )));
    }
    let past = find(inputs, "past_key_values.0.key").expect("checked above");
    let kv_dtype = past.dtype;
    if !matches!(kv_dtype, Dtype::F32 | Dtype::F16) {
        return Err(not_export(format!(
            "float32 or float16 KV tensors (past_key_values.0.key is {kv_dtype:?})"
        )));
    }
    let (kv_heads, head_dim) = (config.kv_heads(), config.head_dim());
    let shape_ok = |s: &[i64]| {
        s.len() == 4
            && (s[1] == -1 || s[1] == kv_heads as i64)
            && (s[3] == -1 || s[3] == head_dim as i64)
    };
    if let Some(bad) = inputs
        .iter()
        .filter(|p| p.name.starts_with("past_key_values."))
        .find(|p| !shape_ok(&p.shape) || p.dtype != kv_dtype)
    {
        return Err(not_export(format!(
            "`{}` of shape [batch, {kv_heads}, past, {head_dim}] and type {kv_dtype:?} \
             (config.json's heads); the graph has {:?} {:?}",
            bad.name, bad.shape, bad.dtype
        )));
    }
    for name in [
        "input_ids",
        "attention_mask",
        "position_ids",
        "logits_index",
    ] {
        if let Some(p) = find(inputs, name).filter(|p| p.dtype != Dtype::I64) {
            return Err(not_export(format!(
                "`{name}` of type int64 (it is {:?})",
                p.dtype
            )));
        }
    }
    let logits = find(outputs, "logits").expect("checked above");
    if !matches!(logits.dtype, Dtype::F32 | Dtype::F16) || logits.shape.len() != 3 {
        return Err(not_export(format!(
            "`logits` as float [batch, seq, vocab] (it is {:?} {:?})",
            logits.dtype, logits.shape
        )));
    }
    let vocab_size = match logits.shape[2] {
        v if v > 0 => v as usize,
        _ => config.vocab_size,
    };
    Ok(Interface {
        layers,
        kv_heads,
        head_dim,
        kv_dtype,
        logits_dtype: logits.dtype,
        vocab_size,
        has_position_ids: find(inputs, "position_ids").is_some(),
        has_logits_index: find(inputs, "logits_index").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        serde_json::from_str(
            r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "hidden_size": 64, "vocab_size": 100}"#,
        )
        .unwrap()
    }

    fn port(name: &str, dtype: Dtype, shape: &[i64]) -> Port {
        Port {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    fn export() -> (Vec<Port>, Vec<Port>) {
        let mut inputs = vec![
            port("input_ids", Dtype::I64, &[-1, -1]),
            port("attention_mask", Dtype::I64, &[-1, -1]),
        ];
        let mut outputs = vec![port("logits", Dtype::F32, &[-1, -1, 100])];
        for i in 0..2 {
            for kind in ["key", "value"] {
                inputs.push(port(
                    &format!("past_key_values.{i}.{kind}"),
                    Dtype::F32,
                    &[-1, 2, -1, 16],
                ));
                outputs.push(port(
                    &format!("present.{i}.{kind}"),
                    Dtype::F32,
                    &[-1, 2, -1, 16],
                ));
            }
        }
        (inputs, outputs)
    }

    #[test]
    fn a_decoder_with_past_export_passes() {
        let (inputs, outputs) = export();
        let iface = check_interface(Path::new("m"), &config(), &inputs, &outputs).unwrap();
        assert_eq!((iface.layers, iface.kv_heads, iface.head_dim), (2, 2, 16));
        assert_eq!(iface.vocab_size, 100);
        assert!(!iface.has_position_ids && !iface.has_logits_index);
        // With the optional `logits_index`, as int64; of another type it is refused.
        let (mut inputs, outputs) = export();
        inputs.push(port("logits_index", Dtype::I64, &[-1, -1]));
        let iface = check_interface(Path::new("m"), &config(), &inputs, &outputs).unwrap();
        assert!(iface.has_logits_index);
        inputs.last_mut().unwrap().dtype = Dtype::F32;
        let err = check_interface(Path::new("m"), &config(), &inputs, &outputs).unwrap_err();
        assert!(
            err.to_string().contains("`logits_index` of type int64"),
            "{err}"
        );
    }

    #[test]
    fn missing_ports_are_named() {
        let (mut inputs, mut outputs) = export();
        inputs.retain(|p| p.name != "past_key_values.1.value");
        outputs.retain(|p| p.name != "logits");
        let err = check_interface(Path::new("m"), &config(), &inputs, &outputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("input `past_key_values.1.value`"), "{err}");
        assert!(err.contains("output `logits`"), "{err}");
    }

    #[test]
    fn head_mismatch_and_unknown_inputs_are_refused() {
        let (mut inputs, outputs) = export();
        inputs[2].shape = vec![-1, 3, -1, 16];
        let err = check_interface(Path::new("m"), &config(), &inputs, &outputs).unwrap_err();
        assert!(err.to_string().contains("past_key_values.0.key"), "{err}");
        let (mut inputs, outputs) = export();
        inputs.push(port("use_cache_branch", Dtype::Other("bool"), &[1]));
        let err = check_interface(Path::new("m"), &config(), &inputs, &outputs).unwrap_err();
        assert!(err.to_string().contains("use_cache_branch"), "{err}");
    }

    #[test]
    fn int8_without_a_variant_is_refused_naming_use_8bit() {
        let dir = std::env::temp_dir().join(format!("llmp-ort-layout-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("onnx")).unwrap();
        std::fs::write(dir.join("onnx/model.onnx"), b"").unwrap();
        assert_eq!(
            find_model(&dir, Precision::Full).unwrap(),
            dir.join("onnx/model.onnx")
        );
        let err = find_model(&dir, Precision::Int8).unwrap_err();
        assert!(err.to_string().contains("USE_8BIT"), "{err}");
        std::fs::write(dir.join("onnx/model_int8.onnx"), b"").unwrap();
        assert!(find_model(&dir, Precision::Int8).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
