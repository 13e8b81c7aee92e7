//! Hugging Face chat templates, rendered the way `transformers` renders them.
//!
//! A model's prompt format is a Jinja template shipped with the model (`tokenizer_config.json`'s
//! `chat_template` or the GGUF key `tokenizer.chat_template`). The model was trained on exactly
//! what `transformers`' `apply_chat_template` produces, so a prompt that differs by one newline
//! quietly degrades the answers. This module therefore copies that environment rather than Jinja's
//! defaults: `trim_blocks` and `lstrip_blocks` on, the trailing newline dropped, Python's string
//! and dict methods (`minijinja-contrib`'s `pycompat`), the `raise_exception` and `strftime_now`
//! globals, a `tojson` filter with `json.dumps` semantics (no HTML escaping, `ensure_ascii=False`,
//! Python's separators and float spelling), and the context `messages`, `tools` (none),
//! `documents` (none), `add_generation_prompt` (true), `bos_token` and `eos_token`.
//!
//! The template is compiled once in [`ChatTemplate::new`] (a syntax error is an
//! [`Error::Template`]) and rendered per request. A template that calls `raise_exception`
//! rejects the conversation (roles out of order, a role it does not know), which is the client's
//! fault, so that becomes an [`Error::Validation`] on `messages` carrying the template's text;
//! any other render failure is the model's template at fault and stays an [`Error::Template`].

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Rest, Value, ValueKind, ValueOrKwargs, from_args};
use minijinja::{Environment, ErrorKind};

use crate::error::{Error, Result};

/// The name the one template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The text of the special tokens a template may print (`bos_token`, `eos_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokenText {
    /// The beginning-of-sequence token, e.g. `<|begin_of_text|>` or `<s>`.
    pub bos: String,
    /// The end-of-sequence token, e.g. `<|eot_id|>` or `</s>`.
    pub eos: String,
}

/// One message of a conversation, as the template sees it: `message.role`, `message.content`.
///
/// Content is plain text; callers flatten OpenAI content parts before rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// `system`, `user`, `assistant`, ... (the template decides which it accepts).
    pub role: &'a str,
    /// The message text.
    pub content: &'a str,
}

/// A compiled chat template, ready to render conversations; cheap to share across threads.
///
/// ```
/// use llm_pipeline_core::template::{ChatMessage, ChatTemplate, SpecialTokenText};
///
/// let source = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
///               {% if add_generation_prompt %}<|assistant|>{% endif %}";
/// let template = ChatTemplate::new(source, SpecialTokenText::default())?;
/// let prompt = template.render(&[ChatMessage { role: "user", content: "Hi" }])?;
/// assert_eq!(prompt, "<|user|>Hi\n<|assistant|>");
/// # Ok::<(), llm_pipeline_core::Error>(())
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`, a Hugging Face Jinja chat template, with the special tokens it may
    /// print.
    ///
    /// # Errors
    ///
    /// [`Error::Template`] when the template does not parse.
    pub fn new(source: &str, tokens: SpecialTokenText) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|err| template_error("cannot configure the template syntax", err))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_global("bos_token", tokens.bos);
        env.add_global("eos_token", tokens.eos);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source).into_owned())
            .map_err(|err| template_error("cannot compile", err))?;
        Ok(Self { env })
    }

    /// Renders `messages` into a prompt, with `add_generation_prompt` set so the prompt ends
    /// where the assistant's answer begins.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] on `messages` when the template rejects the conversation with
    /// `raise_exception` (its text is the message); [`Error::Template`] for any other failure.
    pub fn render(&self, messages: &[ChatMessage<'_>]) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| template_error("cannot load", err))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|message| {
                Value::from_pairs([("role", message.role), ("content", message.content)])
            })
            .collect();
        let context = minijinja::context! {
            messages => messages,
            tools => Value::from(()),
            documents => Value::from(()),
            add_generation_prompt => true,
        };
        template
            .render(context)
            .map_err(|err| match raised_message(&err) {
                Some(message) => Error::validation("messages", message),
                None => template_error("cannot render", err),
            })
    }
}

fn template_error(what: &str, err: minijinja::Error) -> Error {
    Error::Template {
        message: format!("{what}: {err}"),
        source: Some(err),
    }
}

/// The cause attached to the error `raise_exception` returns, so `render` can tell a rejected
/// conversation from a broken template.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The text passed to `raise_exception`, if that is what stopped the render.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(raised) = current.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        cause = current.source();
    }
    None
}

/// `raise_exception(message)`: stops the render; HF raises a `TemplateError` with the text.
fn raise_exception(message: &Value) -> std::result::Result<Value, minijinja::Error> {
    let text = message.to_string();
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
}

/// `strftime_now(format)`: the current time in UTC, formatted like Python's `strftime`.
fn strftime_now(format: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    strftime_utc(format, i64::try_from(seconds).unwrap_or(i64::MAX))
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats the UTC time `unix_seconds` with C `strftime` directives (the common subset chat
/// templates use, plus glibc's `%-d` style unpadded numbers). Unknown directives stay as written.
fn strftime_utc(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let padded = spec != Some('-');
        if !padded {
            spec = chars.next();
        }
        let number = |value: i64, width: usize| {
            if padded {
                format!("{value:0width$}")
            } else {
                value.to_string()
            }
        };
        let text = match spec {
            Some('a') => WEEKDAYS[weekday][..3].to_owned(),
            Some('A') => WEEKDAYS[weekday].to_owned(),
            Some('b' | 'h') => month_name[..3].to_owned(),
            Some('B') => month_name.to_owned(),
            Some('d') => number(day, 2),
            Some('e') => format!("{day:2}"),
            Some('H') => number(hour, 2),
            Some('I') => number(hour12, 2),
            Some('j') => number(day_of_year, 3),
            Some('m') => number(month, 2),
            Some('M') => number(minute, 2),
            Some('S') => number(second, 2),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            Some('y') => number(year.rem_euclid(100), 2),
            Some('Y') => year.to_string(),
            Some('u') => (if weekday == 0 { 7 } else { weekday }).to_string(),
            Some('w') => weekday.to_string(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('D') => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('Z') => "UTC".to_owned(),
            Some('z') => "+0000".to_owned(),
            Some('%') => "%".to_owned(),
            Some(other) => format!("%{}{other}", if padded { "" } else { "-" }),
            None => (if padded { "%" } else { "%-" }).to_owned(),
        };
        out.push_str(&text);
    }
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A proleptic Gregorian date to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Rewrites the `{% generation %}` / `{% endgeneration %}` tags of HF's `AssistantTracker`
/// extension (used to mask training loss; they print nothing) into `if true` / `endif`, so
/// templates written for it still compile and keep their whitespace control.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        let body = &tag[2..];
        let control = usize::from(body.starts_with(['-', '+']));
        let after_control = &body[control..];
        let word_start = after_control.trim_start();
        let prefix_len = 2 + control + (after_control.len() - word_start.len());
        let word_len = word_start
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(word_start.len());
        let replacement = match &word_start[..word_len] {
            "generation" => "if true",
            "endgeneration" => "endif",
            _ => {
                out.push_str("{%");
                rest = body;
                continue;
            }
        };
        out.push_str(&tag[..prefix_len]);
        out.push_str(replacement);
        rest = &tag[prefix_len + word_len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, positional arguments in that order.
fn tojson(
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

    const SMOLLM2: &str = include_str!("../tests/fixtures/templates/smollm2.jinja");
    const LLAMA3: &str = include_str!("../tests/fixtures/templates/llama3.jinja");
    const MISTRAL: &str = include_str!("../tests/fixtures/templates/mistral.jinja");
    const GEMMA: &str = include_str!("../tests/fixtures/templates/gemma.jinja");

    /// A system prompt and one question.
    const SYSTEM_AND_USER: &[ChatMessage<'static>] = &[
        ChatMessage {
            role: "system",
            content: "You are a helpful assistant.",
        },
        ChatMessage {
            role: "user",
            content: "What is the capital of France?",
        },
    ];

    /// Two user turns with an answer between; the last one has padding and non-ASCII text.
    const MULTI_TURN: &[ChatMessage<'static>] = &[
        ChatMessage {
            role: "system",
            content: "Be brief.",
        },
        ChatMessage {
            role: "user",
            content: "Hi there!",
        },
        ChatMessage {
            role: "assistant",
            content: "Hello! How can I help?",
        },
        ChatMessage {
            role: "user",
            content: "  Ça va? Tell me about 日本.  ",
        },
    ];

    /// Two user messages in a row: templates that check alternation refuse it.
    const NOT_ALTERNATING: &[ChatMessage<'static>] = &[
        ChatMessage {
            role: "user",
            content: "one",
        },
        ChatMessage {
            role: "user",
            content: "two",
        },
    ];

    fn template(source: &str, bos: &str, eos: &str) -> ChatTemplate {
        let tokens = SpecialTokenText {
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        };
        ChatTemplate::new(source, tokens).expect("template compiles")
    }

    /// Renders a one-off template over no messages.
    fn render_str(source: &str) -> Result<String> {
        ChatTemplate::new(source, SpecialTokenText::default())?.render(&[])
    }

    // Expected strings below were produced by transformers' Jinja environment (Jinja2 with
    // trim_blocks, lstrip_blocks, HF's tojson/raise_exception) on the same fixtures.

    #[test]
    fn smollm2_renders_system_and_user() {
        let t = template(SMOLLM2, "<|im_start|>", "<|im_end|>");
        assert_eq!(
            t.render(SYSTEM_AND_USER).unwrap(),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_renders_multi_turn_verbatim() {
        let t = template(SMOLLM2, "<|im_start|>", "<|im_end|>");
        assert_eq!(
            t.render(MULTI_TURN).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\nHi there!<|im_end|>\n\
             <|im_start|>assistant\nHello! How can I help?<|im_end|>\n\
             <|im_start|>user\n  Ça va? Tell me about 日本.  <|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_adds_its_default_system_prompt() {
        let t = template(SMOLLM2, "<|im_start|>", "<|im_end|>");
        let messages = [
            ChatMessage {
                role: "user",
                content: "Hi",
            },
            ChatMessage {
                role: "assistant",
                content: "Hello!",
            },
            ChatMessage {
                role: "user",
                content: "How are you?",
            },
        ];
        assert_eq!(
            t.render(&messages).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nHow are you?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    /// Renders with Llama 3's template, whose header carries today's date from `strftime_now`;
    /// `expected` gets the date to splice in. Retries once across a midnight.
    fn assert_llama3(messages: &[ChatMessage<'_>], expected: impl Fn(&str) -> String) {
        let t = template(LLAMA3, "<|begin_of_text|>", "<|eot_id|>");
        let before = strftime_now("%d %b %Y");
        let rendered = t.render(messages).unwrap();
        let after = strftime_now("%d %b %Y");
        assert!(
            rendered == expected(&before) || rendered == expected(&after),
            "rendered {rendered:?}\nexpected {:?}",
            expected(&after)
        );
    }

    #[test]
    fn llama3_renders_system_and_user_after_bos() {
        assert_llama3(SYSTEM_AND_USER, |date| {
            format!(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                 Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n\
                 You are a helpful assistant.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            )
        });
    }

    #[test]
    fn llama3_renders_multi_turn_with_trimmed_content() {
        assert_llama3(MULTI_TURN, |date| {
            format!(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                 Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n\
                 Be brief.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nÇa va? Tell me about 日本.<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            )
        });
    }

    #[test]
    fn mistral_folds_system_into_last_user_turn() {
        let t = template(MISTRAL, "<s>", "</s>");
        assert_eq!(
            t.render(SYSTEM_AND_USER).unwrap(),
            "<s>[INST] You are a helpful assistant.\n\nWhat is the capital of France?[/INST]"
        );
        assert_eq!(
            t.render(MULTI_TURN).unwrap(),
            "<s>[INST] Hi there![/INST] Hello! How can I help?</s>\
             [INST] Be brief.\n\n  Ça va? Tell me about 日本.  [/INST]"
        );
    }

    #[test]
    fn gemma_folds_system_into_first_user_turn() {
        let t = template(GEMMA, "<bos>", "<eos>");
        assert_eq!(
            t.render(SYSTEM_AND_USER).unwrap(),
            "<bos><start_of_turn>user\nYou are a helpful assistant.\n\n\
             What is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            t.render(MULTI_TURN).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi there!<end_of_turn>\n\
             <start_of_turn>model\nHello! How can I help?<end_of_turn>\n\
             <start_of_turn>user\nÇa va? Tell me about 日本.<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn raise_exception_is_a_validation_error_on_messages() {
        let cases = [
            (
                template(MISTRAL, "<s>", "</s>"),
                "After the optional system message, conversation roles must alternate \
                 user/assistant/user/assistant/...",
            ),
            (
                template(GEMMA, "<bos>", "<eos>"),
                "Conversation roles must alternate user/assistant/user/assistant/...",
            ),
        ];
        for (t, expected) in cases {
            match t.render(NOT_ALTERNATING) {
                Err(Error::Validation { param, message }) => {
                    assert_eq!(param, "messages");
                    assert_eq!(message, expected);
                }
                other => panic!("expected a validation error, got {other:?}"),
            }
        }
        let err = render_str("{{ raise_exception('nope') }}").unwrap_err();
        assert!(err.is_client_error(), "{err:?}");
    }

    #[test]
    fn raise_exception_inside_a_macro_is_still_a_validation_error() {
        let source = "{% macro check(m) %}{{ raise_exception('bad ' + m.role) }}{% endmacro %}\
                      {% for m in messages %}{{ check(m) }}{% endfor %}";
        let t = template(source, "", "");
        let err = t
            .render(&[ChatMessage {
                role: "tool",
                content: "x",
            }])
            .unwrap_err();
        assert!(
            matches!(&err, Error::Validation { message, .. } if message == "bad tool"),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_errors_are_template_errors() {
        let err = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}",
            SpecialTokenText::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Template {
                    source: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_client_error());
    }

    #[test]
    fn other_render_failures_are_template_errors() {
        let err = render_str("{{ no_such_function() }}").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Template {
                    source: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn python_methods_loop_controls_and_namespaces_work() {
        let source = "{% set ns = namespace(n=0) %}{% for m in messages %}\
                      {% if loop.index > 2 %}{% break %}{% endif %}\
                      {% set ns.n = ns.n + 1 %}[{{ m.content.strip().upper() }}]\
                      {% endfor %}{{ ns.n }}{{ messages[0].get('role') }}";
        let t = template(source, "", "");
        let messages = [
            ChatMessage {
                role: "user",
                content: " a ",
            },
            ChatMessage {
                role: "assistant",
                content: "b",
            },
            ChatMessage {
                role: "user",
                content: "c",
            },
        ];
        assert_eq!(t.render(&messages).unwrap(), "[A][B]2user");
    }

    #[test]
    fn whitespace_follows_transformers() {
        // trim_blocks drops the newline after a tag, lstrip_blocks the indent before one,
        // and the template's final newline is dropped.
        let source = "{% for m in messages %}\n    {% if true %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}\n";
        let t = template(source, "", "");
        assert_eq!(t.render(SYSTEM_AND_USER).unwrap(), "system\nuser\n");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let source = "{% for m in messages %}{%- generation -%}{{ m.content }}{% endgeneration %}|{% endfor %}";
        let t = template(source, "", "");
        assert_eq!(
            t.render(SYSTEM_AND_USER).unwrap(),
            "You are a helpful assistant.|What is the capital of France?|"
        );
        assert_eq!(
            rewrite_generation_tags("{% if x %}a{% endif %}"),
            "{% if x %}a{% endif %}"
        );
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

    #[test]
    fn strftime_matches_c_strftime_in_utc() {
        // Expected strings are Python's time.strftime(fmt, time.gmtime(t)) on Linux.
        let format =
            "%d %b %Y|%a %A %B %d %e %H %I %j %m %M %S %p %y %Y %u %w %F %D %T %%|%-d %-m %-H %Q";
        let cases = [
            (
                1_721_952_000,
                "26 Jul 2024|Fri Friday July 26 26 00 12 208 07 00 00 AM 24 2024 5 5 2024-07-26 07/26/24 00:00:00 %|26 7 0 %Q",
            ),
            (
                1_721_999_109,
                "26 Jul 2024|Fri Friday July 26 26 13 01 208 07 05 09 PM 24 2024 5 5 2024-07-26 07/26/24 13:05:09 %|26 7 13 %Q",
            ),
            (
                951_782_400,
                "29 Feb 2000|Tue Tuesday February 29 29 00 12 060 02 00 00 AM 00 2000 2 2 2000-02-29 02/29/00 00:00:00 %|29 2 0 %Q",
            ),
            (
                0,
                "01 Jan 1970|Thu Thursday January 01  1 00 12 001 01 00 00 AM 70 1970 4 4 1970-01-01 01/01/70 00:00:00 %|1 1 0 %Q",
            ),
            (
                1_735_689_599,
                "31 Dec 2024|Tue Tuesday December 31 31 23 11 366 12 59 59 PM 24 2024 2 2 2024-12-31 12/31/24 23:59:59 %|31 12 23 %Q",
            ),
        ];
        for (seconds, expected) in cases {
            assert_eq!(strftime_utc(format, seconds), expected, "{seconds}");
        }
        for days in [-1_000_000, -1, 0, 59, 10_957, 20_000, 1_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn chat_template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
