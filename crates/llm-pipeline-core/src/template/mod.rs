//! Hugging Face chat templates, rendered the way `transformers` renders them.
//!
//! A model's prompt format is a Jinja template shipped with the model (`tokenizer_config.json`'s
//! `chat_template` or the GGUF key `tokenizer.chat_template`). The model was trained on exactly
//! what `transformers`' `apply_chat_template` produces, so a prompt that differs by one newline
//! quietly degrades the answers. This module therefore copies that environment rather than Jinja's
//! defaults: `trim_blocks` and `lstrip_blocks` on, the trailing newline dropped, Python's string
//! and dict methods (`minijinja-contrib`'s `pycompat`), the `raise_exception` and `strftime_now`
//! globals, a `tojson` filter with `json.dumps` semantics (no HTML escaping, `ensure_ascii=False`,
//! Python's separators and float spelling), and the context `messages`, `tools` (the request's,
//! or none), `documents` (none), `add_generation_prompt` (true), `bos_token` and `eos_token`.
//!
//! The template is compiled once in [`ChatTemplate::new`] (a syntax error is an
//! [`Error::Template`]) and rendered per request. A template that calls `raise_exception`
//! rejects the conversation (roles out of order, a role it does not know), which is the client's
//! fault, so that becomes an [`Error::Validation`] on `messages` carrying the template's text;
//! any other render failure is also a 400 on `messages` (the conversation is what differs from
//! one request to the next), logged for the operator since the template may be at fault.
//!
//! The two Python imitations the environment needs sit in their own files: `json` (the `tojson`
//! filter, Python's `json.dumps`) and `strftime` (`strftime_now`, C's `strftime` in UTC).

mod json;
mod known;
mod strftime;

use std::borrow::Cow;
use std::fmt;

use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};

use self::json::tojson;
pub use self::known::KnownTemplate;
use self::strftime::strftime_now;
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
    /// `raise_exception` (its text is the message) or fails on it any other way (a template
    /// that indexes a message the conversation lacks, say): the conversation is what this
    /// request changes, so the client gets a 400 naming `messages` and the template's reason,
    /// and the failure is logged for the operator. [`Error::Template`] when the compiled
    /// template cannot be loaded.
    pub fn render(&self, messages: &[ChatMessage<'_>]) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|message| {
                Value::from_pairs([("role", message.role), ("content", message.content)])
            })
            .collect();
        self.render_context(Value::from(messages), Value::from(()))
    }

    /// Renders a conversation with tool use: `messages` as JSON objects in OpenAI's shape
    /// (`role`, `content`, and `tool_calls` or `tool_call_id` where they apply; a call's
    /// `arguments` as an object, as `transformers` users pass them), and the declared `tools`
    /// (`{"type": "function", "function": {…}}`) in the template's `tools` variable.
    ///
    /// # Errors
    ///
    /// As [`ChatTemplate::render`].
    pub fn render_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        let tools = tools.map_or(Value::from(()), |tools| Value::from(Serde(tools)));
        self.render_context(Value::from(Serde(messages)), tools)
    }

    /// The template's source, for what it teaches the model (its tool-call format).
    pub fn source(&self) -> String {
        self.env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.source().to_owned())
            .unwrap_or_default()
    }

    fn render_context(&self, messages: Value, tools: Value) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| template_error("cannot load", err))?;
        let context = minijinja::context! {
            messages => messages,
            tools => tools,
            documents => Value::from(()),
            add_generation_prompt => true,
        };
        template
            .render(context)
            .map_err(|err| match raised_message(&err) {
                Some(message) => Error::validation("messages", message),
                None => {
                    tracing::warn!(error = %err, "the chat template failed on a conversation");
                    Error::validation(
                        "messages",
                        format!("the model's chat template cannot render this conversation: {err}"),
                    )
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = include_str!("../../tests/fixtures/templates/smollm2.jinja");
    const LLAMA3: &str = include_str!("../../tests/fixtures/templates/llama3.jinja");
    const MISTRAL: &str = include_str!("../../tests/fixtures/templates/mistral.jinja");
    const GEMMA: &str = include_str!("../../tests/fixtures/templates/gemma.jinja");

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
    fn other_render_failures_are_client_errors_on_messages() {
        let err = render_str("{{ no_such_function() }}").unwrap_err();
        assert!(
            matches!(&err, Error::Validation { param, message } if param == "messages"
                && message.contains("cannot render this conversation")),
            "{err:?}"
        );
        assert!(err.is_client_error());
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
    fn tools_and_tool_messages_reach_the_template() {
        let source = "{% for t in tools %}[{{ t.function.name }}:{{ t.function.parameters | tojson }}]{% endfor %}\
                      {% for m in messages %}<{{ m.role }}>{{ m.content }}\
                      {% for c in m.tool_calls %}{{ c.id }}={{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}\
                      {% if m.tool_call_id %}@{{ m.tool_call_id }}{% endif %}{% endfor %}";
        let t = template(source, "", "");
        let tools = [serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})];
        let messages = [
            serde_json::json!({"role": "user", "content": "Weather?"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "a": 1}}}]}),
            serde_json::json!({"role": "tool", "content": "22 C", "tool_call_id": "call_1"}),
        ];
        assert_eq!(
            t.render_with_tools(&messages, Some(&tools)).unwrap(),
            "[get_weather:{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}]\
             <user>Weather?<assistant>call_1=get_weather{\"city\": \"Paris\", \"a\": 1}<tool>22 C@call_1"
        );
        // Without tools, `tools` is none, as in `render`.
        assert_eq!(
            t.render_with_tools(&messages[..1], None).unwrap(),
            t.render(&[ChatMessage {
                role: "user",
                content: "Weather?"
            }])
            .unwrap()
        );
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
    fn chat_template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
