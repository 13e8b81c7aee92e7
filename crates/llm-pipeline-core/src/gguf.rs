//! GGUF metadata: the header, key/value section and tensor directory of a GGUF file, without the
//! tensor data.
//!
//! Every GGUF model carries its architecture facts, its chat template and its whole tokenizer
//! (vocabulary, merges, scores, token types) as metadata before the tensor data, followed by the
//! directory of its tensors (name, shape, type, offset). The tokenizer and the backends read
//! those from here, so a model file's header is parsed once per load, read through a buffer up
//! to the start of the tensor data; tensor data is never touched.
//!
//! Arrays are stored typed ([`GgufArray`]) rather than as a vector of [`GgufValue`]s: a vocabulary
//! holds tens of thousands of strings and token types, and a `&[i32]` or `&[String]` view is what
//! every reader wants. Files are little-endian GGUF version 2 or 3 (version 1, with 32-bit counts,
//! predates every model in use and is refused, as are big-endian files).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The chat template key (a Jinja template in the Hugging Face convention).
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// The architecture key (`llama`, `qwen2`, ...); prefixes the architecture's own keys.
pub const KEY_ARCHITECTURE: &str = "general.architecture";

/// The four bytes every GGUF file starts with.
const MAGIC: [u8; 4] = *b"GGUF";
/// Longest string accepted, a guard against corrupt lengths (the longest real ones are chat
/// templates of a few tens of kilobytes).
const MAX_STRING_LEN: u64 = 256 << 20;
/// Capacity reserved up front for an array at most; a corrupt count then fails at end of file
/// instead of exhausting memory.
const MAX_PREALLOC: u64 = 1 << 20;
/// Arrays nested deeper than this are refused (real files nest at most one level).
const MAX_DEPTH: u32 = 8;
/// Tensors have at most this many dimensions (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of a GGUF file's tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
    pub name: String,
    /// The dimensions in ggml's order: the innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    /// The ggml type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, ...).
    pub ggml_type: u32,
    /// Offset of the tensor's bytes from [`GgufMetadata::data_offset`].
    pub offset: u64,
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid bytes are replaced with U+FFFD).
    String(String),
    /// A typed array.
    Array(GgufArray),
}

/// A typed metadata array; arrays of arrays nest.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// Elements of type `uint8`.
    U8(Vec<u8>),
    /// Elements of type `int8`.
    I8(Vec<i8>),
    /// Elements of type `uint16`.
    U16(Vec<u16>),
    /// Elements of type `int16`.
    I16(Vec<i16>),
    /// Elements of type `uint32`.
    U32(Vec<u32>),
    /// Elements of type `int32`.
    I32(Vec<i32>),
    /// Elements of type `uint64`.
    U64(Vec<u64>),
    /// Elements of type `int64`.
    I64(Vec<i64>),
    /// Elements of type `float32`.
    F32(Vec<f32>),
    /// Elements of type `float64`.
    F64(Vec<f64>),
    /// Elements of type `bool`.
    Bool(Vec<bool>),
    /// Elements of type `string`.
    String(Vec<String>),
    /// Arrays, each with its own element type.
    Array(Vec<GgufArray>),
}

impl GgufArray {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

impl GgufValue {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// The value as an integer, whatever its integer type.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// The metadata of one GGUF file.
///
/// ```no_run
/// # fn main() -> llm_pipeline_core::Result<()> {
/// use llm_pipeline_core::gguf::GgufMetadata;
/// let meta = GgufMetadata::from_path("model.gguf")?;
/// let arch = meta.architecture()?;
/// let context = meta.arch_u32("context_length")?;
/// println!("{arch}, trained for {context:?} tokens");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GgufMetadata {
    path: PathBuf,
    version: u32,
    tensor_count: u64,
    values: HashMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: u64,
}

impl fmt::Debug for GgufMetadata {
    // The vocabulary alone is tens of thousands of strings: list the keys, not the values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.values.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("GgufMetadata")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensor_count", &self.tensor_count)
            .field("keys", &keys)
            .finish()
    }
}

impl GgufMetadata {
    /// Reads the header and metadata of the GGUF file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened or read; [`Error::Gguf`] if it is not a
    /// little-endian GGUF v2/v3 file, is truncated, or holds an unknown value type.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = Reader {
            inner: BufReader::with_capacity(1 << 20, file),
            path,
            position: 0,
        };
        reader.metadata()
    }

    /// Metadata built in memory, as if read from `path` (GGUF v3, no tensors): for tests and
    /// tools that adjust a file's metadata.
    pub fn from_values(
        path: impl Into<PathBuf>,
        values: impl IntoIterator<Item = (String, GgufValue)>,
    ) -> Self {
        Self {
            path: path.into(),
            version: 3,
            tensor_count: 0,
            values: values.into_iter().collect(),
            tensors: Vec::new(),
            data_offset: 0,
        }
    }

    /// The file the metadata was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The number of tensors the file declares.
    pub fn tensor_count(&self) -> u64 {
        self.tensor_count
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The directory entry of the tensor `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Where the tensor data starts in the file (tensor offsets count from here).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All keys and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.values.get(key)
    }

    /// An [`Error::Gguf`] about this file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn wrong_type(&self, key: &str, value: &GgufValue, expected: &str) -> Error {
        let found = match value {
            GgufValue::Array(a) => format!("array of {}", a.type_name()),
            other => other.type_name().to_owned(),
        };
        self.error(format!("key `{key}` is {found}, expected {expected}"))
    }

    /// The string value of `key`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, v, "string")),
        }
    }

    /// The value of `key` as a `u32`, from any integer type whose value fits.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds a non-integer or a value outside `u32`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_i128()
            .ok_or_else(|| self.wrong_type(key, v, "an integer"))?;
        u32::try_from(n)
            .map(Some)
            .map_err(|_| self.error(format!("key `{key}` = {n} does not fit in u32")))
    }

    /// The value of `key` as a `u64`, from any integer type whose value fits.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds a non-integer or a negative value.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_i128()
            .ok_or_else(|| self.wrong_type(key, v, "an integer"))?;
        u64::try_from(n)
            .map(Some)
            .map_err(|_| self.error(format!("key `{key}` = {n} does not fit in u64")))
    }

    /// The value of `key` as an `f32`, from `float32` or `float64`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds another type.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(v)) => Ok(Some(*v)),
            #[allow(clippy::cast_possible_truncation)] // metadata floats are f32 quantities
            Some(GgufValue::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(self.wrong_type(key, v, "a float")),
        }
    }

    /// The boolean value of `key`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds another type.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, v, "bool")),
        }
    }

    /// The array value of `key`, whatever its element type.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds a scalar.
    pub fn get_array(&self, key: &str) -> Result<Option<&GgufArray>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, v, "an array")),
        }
    }

    /// The string array of `key`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds anything but an array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::String(v))) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, v, "array of string")),
        }
    }

    /// The `int32` array of `key`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds anything but an array of `int32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::I32(v))) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, v, "array of int32")),
        }
    }

    /// The `float32` array of `key`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key holds anything but an array of `float32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::F32(v))) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, v, "array of float32")),
        }
    }

    /// The model architecture (`general.architecture`).
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or not a string.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(KEY_ARCHITECTURE)?
            .ok_or_else(|| self.error(format!("missing key `{KEY_ARCHITECTURE}`")))
    }

    /// The architecture's own `u32` key `{architecture}.{suffix}`, e.g. `context_length`.
    ///
    /// # Errors
    /// As [`Self::architecture`] and [`Self::get_u32`].
    pub fn arch_u32(&self, suffix: &str) -> Result<Option<u32>> {
        let key = format!("{}.{suffix}", self.architecture()?);
        self.get_u32(&key)
    }

    /// The chat template (`tokenizer.chat_template`), if the file has one.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is not a string.
    pub fn chat_template(&self) -> Result<Option<&str>> {
        self.get_str(KEY_CHAT_TEMPLATE)
    }
}

/// A little-endian reader over the file that turns failures into this crate's errors.
struct Reader<'p, R> {
    inner: R,
    path: &'p Path,
    /// Bytes read so far.
    position: u64,
}

/// Reads `n` fixed-size little-endian values into a vector.
macro_rules! read_vec {
    ($self:ident, $n:expr, $ty:ty) => {{
        let mut v = Vec::with_capacity(capacity($n));
        for _ in 0..$n {
            v.push(<$ty>::from_le_bytes($self.bytes()?));
        }
        v
    }};
}

fn capacity(n: u64) -> usize {
    usize::try_from(n.min(MAX_PREALLOC)).unwrap_or(0)
}

impl<R: Read> Reader<'_, R> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        self.position += buf.len() as u64;
        self.inner.read_exact(buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                self.error("file ends inside the header (truncated?)")
            } else {
                Error::Io {
                    path: self.path.to_path_buf(),
                    source,
                }
            }
        })
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > MAX_STRING_LEN {
            return Err(self.error(format!("string of {len} bytes (corrupt length?)")));
        }
        let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
        self.fill(&mut buf)?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn metadata(&mut self) -> Result<GgufMetadata> {
        let magic: [u8; 4] = self.bytes()?;
        if magic != MAGIC {
            return Err(self.error(format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = self.u32()?;
        match version {
            2 | 3 => {}
            1 => return Err(self.error("GGUF version 1 is not supported; reconvert the model")),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(self.error("big-endian GGUF files are not supported"));
            }
            v => return Err(self.error(format!("unknown GGUF version {v}"))),
        }
        let tensor_count = self.u64()?;
        let kv_count = self.u64()?;
        let mut values = HashMap::with_capacity(capacity(kv_count));
        for _ in 0..kv_count {
            let key = self.string()?;
            let ty = self.u32()?;
            let value = self
                .value(ty, 0)
                .map_err(|e| self.error(format!("key `{key}`: {}", inner_message(e))))?;
            values.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(capacity(tensor_count));
        for _ in 0..tensor_count {
            tensors.push(self.tensor_info()?);
        }
        let mut meta = GgufMetadata {
            path: self.path.to_path_buf(),
            version,
            tensor_count,
            values,
            tensors,
            data_offset: 0,
        };
        let alignment = match meta.get_u64("general.alignment") {
            Ok(Some(a)) if a > 0 => a,
            Ok(_) => DEFAULT_ALIGNMENT,
            Err(e) => return Err(e),
        };
        meta.data_offset = self.position.div_ceil(alignment) * alignment;
        Ok(meta)
    }

    fn tensor_info(&mut self) -> Result<GgufTensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(self.error(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<_>>()?;
        let ggml_type = self.u32()?;
        let offset = self.u64()?;
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.bytes()?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.bytes()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.bytes()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.bytes()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.bytes()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.bytes()?)),
            7 => GgufValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => GgufValue::Array(self.array(depth)?),
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.bytes()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.bytes()?)),
            t => return Err(self.error(format!("unknown value type {t}"))),
        })
    }

    fn array(&mut self, depth: u32) -> Result<GgufArray> {
        if depth >= MAX_DEPTH {
            return Err(self.error("arrays nested too deeply"));
        }
        let ty = self.u32()?;
        let n = self.u64()?;
        Ok(match ty {
            0 => GgufArray::U8(read_vec!(self, n, u8)),
            1 => GgufArray::I8(read_vec!(self, n, i8)),
            2 => GgufArray::U16(read_vec!(self, n, u16)),
            3 => GgufArray::I16(read_vec!(self, n, i16)),
            4 => GgufArray::U32(read_vec!(self, n, u32)),
            5 => GgufArray::I32(read_vec!(self, n, i32)),
            6 => GgufArray::F32(read_vec!(self, n, f32)),
            7 => GgufArray::Bool(read_vec!(self, n, u8).into_iter().map(|b| b != 0).collect()),
            8 => {
                let mut v = Vec::with_capacity(capacity(n));
                for _ in 0..n {
                    v.push(self.string()?);
                }
                GgufArray::String(v)
            }
            9 => {
                let mut v = Vec::with_capacity(capacity(n).min(1024));
                for _ in 0..n {
                    v.push(self.array(depth + 1)?);
                }
                GgufArray::Array(v)
            }
            10 => GgufArray::U64(read_vec!(self, n, u64)),
            11 => GgufArray::I64(read_vec!(self, n, i64)),
            12 => GgufArray::F64(read_vec!(self, n, f64)),
            t => return Err(self.error(format!("unknown array element type {t}"))),
        })
    }
}

/// The message of a nested [`Error::Gguf`], so that the key can be put in front of it.
fn inner_message(e: Error) -> String {
    match e {
        Error::Gguf { message, .. } => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_smollm2_metadata() {
        let start = std::time::Instant::now();
        let meta = GgufMetadata::from_path(crate::testing::smollm2()).unwrap();
        eprintln!("metadata read in {:?}", start.elapsed());
        assert_eq!(meta.version(), 3);
        assert_eq!(meta.tensor_count(), 272);
        assert_eq!(meta.architecture().unwrap(), "llama");
        assert_eq!(meta.arch_u32("context_length").unwrap(), Some(8192));
        assert_eq!(meta.arch_u32("block_count").unwrap(), Some(30));
        assert_eq!(
            meta.get_u32("tokenizer.ggml.bos_token_id").unwrap(),
            Some(1)
        );
        assert_eq!(meta.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
        assert_eq!(meta.get_str("tokenizer.ggml.pre").unwrap(), Some("smollm"));
        assert_eq!(
            meta.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(false)
        );
        let eps = meta
            .get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap()
            .unwrap();
        assert!((eps - 1e-5).abs() < 1e-9);
        let tokens = meta
            .get_string_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap();
        assert_eq!(tokens.len(), 49152);
        assert_eq!(tokens[1], "<|im_start|>");
        let types = meta
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap();
        assert_eq!(types.len(), 49152);
        assert_eq!(types[0], 3);
        let merges = meta
            .get_string_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap();
        assert_eq!(merges[0], "Ġ t");
        assert!(
            meta.chat_template()
                .unwrap()
                .unwrap()
                .contains("<|im_start|>")
        );
        assert_eq!(meta.get_str("no.such.key").unwrap(), None);
        // The tensor directory: every tensor, in ggml's dimension order, inside the file.
        assert_eq!(meta.tensors().len(), 272);
        let embd = meta.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.dims, [576, 49152]);
        assert_eq!(meta.data_offset() % DEFAULT_ALIGNMENT, 0);
        let file_len = std::fs::metadata(meta.path()).unwrap().len();
        let last = meta.tensors().iter().map(|t| t.offset).max().unwrap();
        assert!(meta.data_offset() + last < file_len);
        // A type mismatch is an error naming the key, not a silent `None`.
        let err = meta.get_str("llama.block_count").unwrap_err().to_string();
        assert!(
            err.contains("llama.block_count") && err.contains("uint32"),
            "{err}"
        );
        let err = meta
            .get_f32_array("tokenizer.ggml.tokens")
            .unwrap_err()
            .to_string();
        assert!(err.contains("array of string"), "{err}");
        assert!(
            format!("{meta:?}").len() < 4096,
            "Debug must not dump the vocabulary"
        );
    }

    /// Writes a small GGUF file with every value type, including nested arrays.
    fn write_sample(path: &Path, truncate: usize) {
        fn s(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&6u64.to_le_bytes());
        s(&mut out, "a.i8");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.push(0xff);
        s(&mut out, "a.u64");
        out.extend_from_slice(&10u32.to_le_bytes());
        out.extend_from_slice(&7u64.to_le_bytes());
        s(&mut out, "a.f64");
        out.extend_from_slice(&12u32.to_le_bytes());
        out.extend_from_slice(&0.5f64.to_le_bytes());
        s(&mut out, "a.bools");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        s(&mut out, "a.nested");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        for n in [1u64, 2] {
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            for i in 0..n {
                s(&mut out, &format!("s{i}"));
            }
        }
        s(&mut out, "a.i16");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(-3i16).to_le_bytes());
        out.truncate(out.len() - truncate);
        File::create(path).unwrap().write_all(&out).unwrap();
    }

    #[test]
    fn reads_every_value_type() {
        let dir = std::env::temp_dir().join(format!("llm-pipeline-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sample.gguf");
        write_sample(&path, 0);
        let meta = GgufMetadata::from_path(&path).unwrap();
        assert_eq!(meta.get("a.i8"), Some(&GgufValue::I8(-1)));
        assert!(meta.get_u32("a.i8").unwrap_err().to_string().contains("-1"));
        assert!(meta.get_u32("a.i16").is_err());
        assert_eq!(meta.get_u32("a.u64").unwrap(), Some(7));
        assert_eq!(meta.get_f32("a.f64").unwrap(), Some(0.5));
        assert_eq!(
            meta.get_array("a.bools").unwrap(),
            Some(&GgufArray::Bool(vec![true, false]))
        );
        let nested = meta.get_array("a.nested").unwrap().unwrap();
        assert_eq!(
            nested,
            &GgufArray::Array(vec![
                GgufArray::String(vec!["s0".into()]),
                GgufArray::String(vec!["s0".into(), "s1".into()]),
            ])
        );

        write_sample(&path, 1);
        let err = GgufMetadata::from_path(&path).unwrap_err();
        assert!(matches!(err, Error::Gguf { .. }), "{err}");
        assert!(err.to_string().contains("a.i16"), "{err}");

        std::fs::write(&path, b"NOPE\x03\0\0\0").unwrap();
        assert!(
            GgufMetadata::from_path(&path)
                .unwrap_err()
                .to_string()
                .contains("not a GGUF")
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let err = GgufMetadata::from_path(dir.join("missing.gguf")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
