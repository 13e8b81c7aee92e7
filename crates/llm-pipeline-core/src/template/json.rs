//! The `tojson` filter as `transformers` defines it, which is Python's `json.dumps` and not
//! Jinja's HTML-safe `tojson`.
//!
//! Templates print tool definitions and arguments with `tojson`, and a model was trained on the
//! exact bytes Python wrote: `", "` and `": "` separators, non-ASCII text kept as it is
//! (`ensure_ascii=False`), no escaping of `<`, `>`, `&` or `'`, floats in `repr` spelling
//! (`1e-05`, `100.0`, `1e+16`), and the `indent`, `separators` and `sort_keys` options. The
//! writer here walks minijinja values directly so that each of those rules is spelled out once.

use minijinja::ErrorKind;
use minijinja::value::{Kwargs, Rest, Value, ValueKind, ValueOrKwargs, from_args};

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, positional arguments in that order.
pub(super) fn tojson(
    value: &Value,
    args: Rest<ValueOrKwargs>,
) -> std::result::Result<String, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let args = args.into_values();
    let (positional, kwargs) = from_args::<(&[Value], Kwargs)>(&args)?;
    if positional.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut options: [Option<Value>; 4] = Default::default();
    for (index, name) in NAMES.iter().enumerate() {
        let keyword: Option<Value> = kwargs.get(name)?;
        options[index] = match (positional.get(index), keyword) {
            (Some(_), Some(_)) => {
                return Err(minijinja::Error::new(
                    ErrorKind::TooManyArguments,
                    format!("tojson got multiple values for argument '{name}'"),
                ));
            }
            (Some(value), None) => Some(value.clone()),
            (None, keyword) => keyword,
        }
        .filter(|value| !value.is_none() && !value.is_undefined());
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = options;

    let indent = match indent {
        None => None,
        Some(indent) if indent.kind() == ValueKind::String => Some(indent.to_string()),
        Some(indent) => {
            let width = i64::try_from(indent)?;
            Some(" ".repeat(usize::try_from(width).unwrap_or(0)))
        }
    };
    let (item_separator, key_separator) = match separators {
        Some(pair) => {
            let (item, key): (String, String) =
                from_args(&[pair.get_item_by_index(0)?, pair.get_item_by_index(1)?])?;
            (item, key)
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut writer = PyJsonWriter {
        out: String::new(),
        indent,
        item_separator,
        key_separator,
        ensure_ascii: ensure_ascii.is_some_and(|value| value.is_true()),
        sort_keys: sort_keys.is_some_and(|value| value.is_true()),
    };
    writer.value(value, 0)?;
    Ok(writer.out)
}

/// Writes values the way Python's `json.dumps` does.
struct PyJsonWriter {
    out: String,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl PyJsonWriter {
    fn value(&mut self, value: &Value, depth: usize) -> std::result::Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => self.out.push_str(&value.to_string()),
            ValueKind::Number => self
                .out
                .push_str(&python_float(f64::try_from(value.clone())?)),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.out.push('[');
                for (index, item) in items.iter().enumerate() {
                    self.separator(index, depth);
                    self.value(item, depth + 1)?;
                }
                self.close(']', depth, items.is_empty());
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((self.key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.out.push('{');
                for (index, (key, item)) in entries.iter().enumerate() {
                    self.separator(index, depth);
                    self.string(key);
                    self.out.push_str(&self.key_separator);
                    self.value(item, depth + 1)?;
                }
                self.close('}', depth, entries.is_empty());
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// A dict key as Python converts it: strings as they are, numbers, booleans and none spelled.
    fn key(&self, key: &Value) -> std::result::Result<String, minijinja::Error> {
        match key.kind() {
            ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
            ValueKind::Number if key.is_integer() => Ok(key.to_string()),
            ValueKind::Number => Ok(python_float(f64::try_from(key.clone())?)),
            ValueKind::Bool => Ok((if key.is_true() { "true" } else { "false" }).to_owned()),
            ValueKind::None => Ok("null".to_owned()),
            kind => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            )),
        }
    }

    fn separator(&mut self, index: usize, depth: usize) {
        if index > 0 {
            self.out.push_str(&self.item_separator);
        }
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            self.out.push_str(&indent.repeat(depth + 1));
        }
    }

    fn close(&mut self, bracket: char, depth: usize, empty: bool) {
        if let (Some(indent), false) = (&self.indent, empty) {
            self.out.push('\n');
            self.out.push_str(&indent.repeat(depth));
        }
        self.out.push(bracket);
    }

    fn string(&mut self, text: &str) {
        self.out.push('"');
        for c in text.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if u32::from(c) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0_u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A float as Python's `repr` spells it: shortest round-trip digits, positional for exponents
/// in [-4, 16), otherwise `1.5e+16` style; `NaN` and `Infinity` as `json.dumps` writes them.
fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return (if value > 0.0 { "Infinity" } else { "-Infinity" }).to_owned();
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let mut positional = value.to_string();
        if !positional.contains('.') {
            positional.push_str(".0");
        }
        positional
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatTemplate, SpecialTokenText};

    /// Renders a one-off template over no messages, in the full chat-template environment.
    fn render_str(source: &str) -> crate::error::Result<String> {
        ChatTemplate::new(source, SpecialTokenText::default())?.render(&[])
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Each expected value is Python's json.dumps output for the same data.
        let cases = [
            (
                r#"{{ {"a": "é\"\n\t<>&'/\x01", "b": [1, 2.5, none, true, false]} | tojson }}"#,
                r#"{"a": "é\"\n\t<>&'/\u0001", "b": [1, 2.5, null, true, false]}"#,
            ),
            (
                r#"{{ {"a": {"x": []}, "b": [1, {}]} | tojson(indent=2) }}"#,
                "{\n  \"a\": {\n    \"x\": []\n  },\n  \"b\": [\n    1,\n    {}\n  ]\n}",
            ),
            (
                r#"{{ "é😀" | tojson(ensure_ascii=true) }}"#,
                r#""\u00e9\ud83d\ude00""#,
            ),
            (
                r#"{{ {"a": [1, 2]} | tojson(separators=(",", ":")) }}"#,
                r#"{"a":[1,2]}"#,
            ),
            (
                r#"{{ {"b": 1, "a": 2} | tojson(sort_keys=true) }}"#,
                r#"{"a": 2, "b": 1}"#,
            ),
            (
                "{{ [1e16, 1.5e16, 0.00001, 0.0001, 100.0, 0.1, 1e15, 123456789.125] | tojson }}",
                "[1e+16, 1.5e+16, 1e-05, 0.0001, 100.0, 0.1, 1000000000000000.0, 123456789.125]",
            ),
            (r#"{{ {"a": 1} | tojson(false, 4) }}"#, "{\n    \"a\": 1\n}"),
            (
                r#"{{ [[1, 2], "x"] | tojson(indent="\t") }}"#,
                "[\n\t[\n\t\t1,\n\t\t2\n\t],\n\t\"x\"\n]",
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(render_str(source).unwrap(), expected, "{source}");
        }
        assert!(render_str("{{ 1 | tojson(nope=1) }}").is_err());
    }

    #[test]
    fn python_float_spelling() {
        assert_eq!(python_float(-0.0), "-0.0");
        assert_eq!(python_float(0.0), "0.0");
        assert_eq!(python_float(-2.5e-7), "-2.5e-07");
        assert_eq!(
            python_float(1.2345678901234568e17),
            "1.2345678901234568e+17"
        );
        assert_eq!(python_float(f64::NAN), "NaN");
        assert_eq!(python_float(f64::NEG_INFINITY), "-Infinity");
    }
}
