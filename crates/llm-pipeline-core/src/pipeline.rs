//! The [`Pipeline`] trait that services embed, and its implementation over the [`Engine`].
//!
//! `chat` returns one `chat.completion`; `chat_stream` returns `chat.completion.chunk`s. Both
//! validate the request first, so that a bad request is an error before anything is streamed.
//! Rendering the template and tokenizing run on a blocking thread, never on the async runtime;
//! generation runs on the engine thread. Dropping the returned future or stream cancels the
//! request's sequences at the engine's next step.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::{self, Stream, StreamExt};

use crate::engine::{Engine, EngineStats, Event, EventReceiver, SeqRequest, TokenEvent};
use crate::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    ChoiceLogprobs, ChunkChoice, Delta, FinishReason, ResponseMetadata, TokenLogprob, ToolCall,
    ToolCallDelta, TopLogprob, Usage,
};
use crate::pricing::{Price, PriceTable};
use crate::structured::answer::{AnswerPart, AnswerStream};
use crate::structured::reasoning::THINK_OPEN;
use crate::structured::tools::{ToolChoice, ToolFormat};
use crate::structured::{Constraint, Grammar, Grammars};
use crate::template::{ChatMessage, ChatTemplate};
use crate::tokenizer::Tokenizer;
use crate::validation::{self, GenerationRequest, ModelLimits, PromptMessage, SamplingDefaults};
use crate::{Error, Result};

/// A stream of chunks; an `Err` item ends it (the backend failed mid-generation).
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatCompletionChunk>> + Send>>;

/// An OpenAI-compatible chat pipeline: what a Rust service embeds.
pub trait Pipeline: Send + Sync {
    /// The served model's id.
    fn model_id(&self) -> &str;

    /// Generates whole answers.
    ///
    /// # Errors
    /// [`Error::Validation`] for a bad request, [`Error::QueueFull`] when at capacity,
    /// [`Error::Backend`] or [`Error::EngineStopped`] for internal faults.
    fn chat(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatCompletion>> + Send;

    /// Streams answers as chunks.
    ///
    /// # Errors
    /// As [`Pipeline::chat`], for everything that can be known before the first chunk.
    fn chat_stream(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatStream>> + Send;

    /// The engine's counters now, for health checks and metrics; `None` when the pipeline has
    /// no engine to report on.
    fn stats(&self) -> Option<EngineStats> {
        None
    }

    /// The backend that runs the model (`llama-cpp`, `candle`, `ort`) and, when it was chosen
    /// automatically, why; for `/version`, `/v1/models` and logs. `None` when unknown.
    fn backend(&self) -> Option<String> {
        None
    }
}

/// A boxed future, as [`DynPipeline`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Pipeline`] as a trait object, for services that choose the pipeline at run time or keep
/// several behind one type: `Arc<dyn DynPipeline>` is itself a [`Pipeline`] (and `Clone`), so
/// it serves wherever a pipeline does, the HTTP router included.
///
/// Every [`Pipeline`] is a `DynPipeline`; the cost is one allocation per call for the boxed
/// future. The methods have their own names (`erased_*`) so that importing both traits never
/// makes a call ambiguous; call them through [`Pipeline`].
///
/// ```
/// use std::sync::Arc;
/// use llm_pipeline_core::pipeline::{DynPipeline, EnginePipeline, Pipeline};
///
/// fn erase(pipeline: EnginePipeline) -> Arc<dyn DynPipeline> {
///     Arc::new(pipeline)
/// }
/// fn serve<P: Pipeline + Clone + 'static>(_: P) {}
/// # fn f(p: EnginePipeline) { serve(erase(p)); }
/// ```
pub trait DynPipeline: Send + Sync {
    /// See [`Pipeline::model_id`].
    fn erased_model_id(&self) -> &str;

    /// See [`Pipeline::chat`].
    fn erased_chat(&self, request: ChatCompletionRequest) -> BoxFuture<'_, Result<ChatCompletion>>;

    /// See [`Pipeline::chat_stream`].
    fn erased_chat_stream(
        &self,
        request: ChatCompletionRequest,
    ) -> BoxFuture<'_, Result<ChatStream>>;

    /// See [`Pipeline::stats`].
    fn erased_stats(&self) -> Option<EngineStats>;

    /// See [`Pipeline::backend`].
    fn erased_backend(&self) -> Option<String>;
}

impl<P: Pipeline> DynPipeline for P {
    fn erased_model_id(&self) -> &str {
        Pipeline::model_id(self)
    }

    fn erased_chat(&self, request: ChatCompletionRequest) -> BoxFuture<'_, Result<ChatCompletion>> {
        Box::pin(Pipeline::chat(self, request))
    }

    fn erased_chat_stream(
        &self,
        request: ChatCompletionRequest,
    ) -> BoxFuture<'_, Result<ChatStream>> {
        Box::pin(Pipeline::chat_stream(self, request))
    }

    fn erased_stats(&self) -> Option<EngineStats> {
        Pipeline::stats(self)
    }

    fn erased_backend(&self) -> Option<String> {
        Pipeline::backend(self)
    }
}

impl Pipeline for dyn DynPipeline {
    fn model_id(&self) -> &str {
        self.erased_model_id()
    }

    fn chat(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatCompletion>> + Send {
        self.erased_chat(request)
    }

    fn chat_stream(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatStream>> + Send {
        self.erased_chat_stream(request)
    }

    fn stats(&self) -> Option<EngineStats> {
        self.erased_stats()
    }

    fn backend(&self) -> Option<String> {
        self.erased_backend()
    }
}

impl<P: Pipeline + ?Sized> Pipeline for Arc<P> {
    fn model_id(&self) -> &str {
        P::model_id(self)
    }

    fn chat(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatCompletion>> + Send {
        P::chat(self, request)
    }

    fn chat_stream(
        &self,
        request: ChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatStream>> + Send {
        P::chat_stream(self, request)
    }

    fn stats(&self) -> Option<EngineStats> {
        P::stats(self)
    }

    fn backend(&self) -> Option<String> {
        P::backend(self)
    }
}

/// What a backend crate loads besides the backend itself.
#[derive(Debug, Clone)]
pub struct ModelAssets {
    /// The id requests must name (or leave empty).
    pub model_id: String,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template; `None` for a model without one (a base model), whose chat requests
    /// are then refused with a 400 that says so.
    pub template: Option<Arc<ChatTemplate>>,
    /// The model's sampling defaults (`generation_config.json`).
    pub defaults: SamplingDefaults,
    /// How the model writes tool calls (`TOOL_CALL_PARSER`, or what its template teaches).
    pub tool_format: ToolFormat,
    /// Whether the model thinks first (`<think>…</think>`, as its template teaches): its
    /// reasoning is then returned apart, as `reasoning_content`.
    pub thinks: bool,
}

/// The pricing figures of one request, as exact rationals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrice {
    /// Before generation: `max_tokens × n` at the price table.
    pub quote: Price,
    /// After generation: the completion tokens at the price table.
    pub charge: Price,
}

/// [`Pipeline`] over an [`Engine`]: templates, validation and the OpenAI shapes.
#[derive(Debug, Clone)]
pub struct EnginePipeline {
    engine: Engine,
    assets: ModelAssets,
    prices: PriceTable,
    /// The grammar engine over the model's vocabulary, for structured output.
    grammars: Arc<Grammars>,
    /// Why the backend was chosen, when it was chosen automatically.
    chosen_because: Option<Arc<str>>,
}

struct Prepared {
    id: String,
    created: u64,
    prompt_tokens: u32,
    receivers: Vec<EventReceiver>,
    quote: Price,
    /// The format answers are parsed in for tool calls, when the request may call tools.
    tool_format: Option<ToolFormat>,
    /// For a model that thinks: whether the prompt opened its reasoning.
    reasoning: Option<bool>,
}

impl EnginePipeline {
    /// A pipeline over a started engine.
    pub fn new(engine: Engine, assets: ModelAssets, prices: PriceTable) -> Self {
        let grammars = Arc::new(Grammars::new(Arc::clone(&assets.tokenizer)));
        // The vocabulary's trie takes 0.1 s (49k tokens) to 0.5 s (262k): built now, beside
        // serving, so that the first structured request does not wait for it.
        let warming = Arc::clone(&grammars);
        let _ = std::thread::Builder::new()
            .name("llm-grammars".into())
            .spawn(move || warming.prepare());
        Self {
            engine,
            assets,
            prices,
            grammars,
            chosen_because: None,
        }
    }

    /// Records why the backend was chosen (shown by [`Pipeline::backend`]).
    #[must_use]
    pub fn with_choice_reason(mut self, reason: impl Into<Arc<str>>) -> Self {
        self.chosen_because = Some(reason.into());
        self
    }

    /// The engine, for its counters and limits.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.assets.tokenizer
    }

    /// Renders the chat template for `request`'s messages and tokenizes the result: the exact
    /// prompt the model would see.
    ///
    /// # Errors
    /// As [`Pipeline::chat`].
    pub async fn prompt_tokens(&self, request: &ChatCompletionRequest) -> Result<Vec<u32>> {
        let generation = validation::validate(request, &self.limits())?;
        Ok(self.tokenize(&generation).await?.0)
    }

    fn limits(&self) -> ModelLimits {
        ModelLimits {
            model_id: self.assets.model_id.clone(),
            vocab_size: self.engine.backend_info().vocab_size,
            defaults: self.assets.defaults,
        }
    }

    /// The prompt's tokens, and whether the prompt ends inside the model's reasoning (a
    /// template that opens `<think>` for it).
    async fn tokenize(&self, generation: &GenerationRequest) -> Result<(Vec<u32>, bool)> {
        let template = self.assets.template.clone().ok_or_else(|| {
            Error::validation(
                "messages",
                format!(
                    "model `{}` has no chat template (a base model); the operator can give one \
                     with CHAT_TEMPLATE=FILE",
                    self.assets.model_id
                ),
            )
        })?;
        let tokenizer = Arc::clone(&self.assets.tokenizer);
        let messages = generation.messages.clone();
        let tools: Option<Vec<serde_json::Value>> = generation
            .tools
            .as_ref()
            .map(|use_| use_.tools.iter().map(|t| t.definition.clone()).collect());
        tokio::task::spawn_blocking(move || {
            let uses_tools = tools.is_some()
                || messages
                    .iter()
                    .any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some());
            let text = if uses_tools {
                let messages: Vec<serde_json::Value> =
                    messages.iter().map(PromptMessage::to_template).collect();
                template.render_with_tools(&messages, tools.as_deref())?
            } else {
                let messages: Vec<ChatMessage<'_>> = messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m.role.as_str(),
                        content: &m.content,
                    })
                    .collect();
                template.render(&messages)?
            };
            // Where each content landed in the rendered text, in order: message contents are
            // data, never control tokens (a template that rewrites a content leaves it unfound,
            // and that content is encoded as the template's own text).
            let mut data = Vec::with_capacity(messages.len());
            let mut from = 0;
            for m in &messages {
                if m.content.is_empty() {
                    continue;
                }
                if let Some(at) = text[from..].find(m.content.as_str()) {
                    data.push(from + at..from + at + m.content.len());
                    from += at + m.content.len();
                }
            }
            let opened = text.trim_end().ends_with(THINK_OPEN);
            Ok((tokenizer.encode_chat(&text, &data)?, opened))
        })
        .await
        .map_err(|e| Error::backend("the tokenizer task failed", e))?
    }

    /// Refuses, before any rendering or tokenizing, a request the engine has no room for and
    /// messages too long for the context whatever their tokens: no token stands for more than
    /// `max_token_bytes` bytes of the tokenizer's (normalized) text, and normalization shrinks
    /// a character at most from four bytes to one.
    fn admit(&self, generation: &GenerationRequest) -> Result<()> {
        self.engine.check_room()?;
        let bytes: usize = generation.messages.iter().map(|m| m.content.len()).sum();
        let at_least = bytes / (4 * self.assets.tokenizer.max_token_bytes());
        let context = self.engine.limits().max_model_len as usize;
        if at_least >= context {
            return Err(Error::validation(
                "messages",
                format!(
                    "the messages are {bytes} bytes, at least {at_least} tokens; the model's \
                     context (MAX_MODEL_LEN) is {context} tokens"
                ),
            ));
        }
        Ok(())
    }

    async fn prepare(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<(Prepared, GenerationRequest)> {
        let generation = validation::validate(request, &self.limits())?;
        self.admit(&generation)?;
        let tool_format = generation
            .tools
            .as_ref()
            .filter(|t| t.choice != ToolChoice::None)
            .map(|_| self.assets.tool_format);
        let grammar = match (&generation.format, &generation.tools) {
            (Some(grammar), _) => Some((grammar.clone(), None)),
            (None, Some(tools)) => self.assets.tool_format.grammar(tools),
            (None, None) => None,
        };
        let constraint = match grammar {
            Some((grammar, None)) => Some(self.compile(grammar).await?),
            Some((grammar, Some(trigger))) => Some(self.compile(grammar).await?.after(trigger)),
            None => None,
        };
        let (prompt, opened) = self.tokenize(&generation).await?;
        let max_model_len = self.engine.limits().max_model_len;
        let room = max_model_len.saturating_sub(prompt.len() as u32);
        let max_tokens = generation.max_tokens.unwrap_or(room).min(room.max(1));
        let quote_tokens = generation.max_tokens.unwrap_or(room);
        let quote = self.prices.quote(quote_tokens.saturating_mul(generation.n));
        let mut receivers = Vec::with_capacity(generation.n as usize);
        for i in 0..generation.n {
            let mut sampling = generation.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(u64::from(i));
            receivers.push(self.engine.submit(SeqRequest {
                prompt: prompt.clone(),
                max_tokens,
                sampling,
                stop: generation.stop.clone(),
                constraint: constraint.clone(),
            })?);
        }
        let prepared = Prepared {
            id: format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            prompt_tokens: prompt.len() as u32,
            receivers,
            quote,
            tool_format,
            reasoning: self.assets.thinks.then_some(opened),
        };
        Ok((prepared, generation))
    }

    /// Compiles a request's grammar on a blocking thread (the first one builds the vocabulary's
    /// trie); one that cannot compile is the client's error, on the field that gave it.
    async fn compile(&self, grammar: Grammar) -> Result<Constraint> {
        let grammars = Arc::clone(&self.grammars);
        let param = match grammar {
            Grammar::JsonSchema(_) => "response_format.json_schema.schema",
            Grammar::JsonObject => "response_format",
            Grammar::Lark(_) => "tools",
        };
        tokio::task::spawn_blocking(move || grammars.compile(&grammar))
            .await
            .map_err(|e| Error::backend("the grammar task failed", e))?
            .map_err(|reason| Error::validation(param, format!("cannot be enforced: {reason}")))
    }

    fn metadata(&self, quote: Price, completion_tokens: u32) -> ResponseMetadata {
        ResponseMetadata {
            price_quote: Some(quote),
            price_charged: Some(self.prices.charge(completion_tokens)),
        }
    }

    fn logprobs(&self, event: &TokenEvent) -> Option<ChoiceLogprobs> {
        let lp = event.logprobs.as_ref()?;
        let tokenizer = &self.assets.tokenizer;
        let text = |id: u32| tokenizer.token_text(id).unwrap_or_default();
        let mut entry = TokenLogprob::new(text(event.token), lp.logprob);
        entry.top_logprobs = lp
            .top
            .iter()
            .map(|&(id, logprob)| TopLogprob::new(text(id), logprob))
            .collect();
        Some(ChoiceLogprobs {
            content: vec![entry],
        })
    }
}

/// One choice's answer, folded from its events.
struct Answer {
    text: String,
    logprobs: Option<ChoiceLogprobs>,
    reason: FinishReason,
    completion_tokens: u32,
    cached_tokens: u32,
}

async fn fold(pipeline: &EnginePipeline, mut rx: EventReceiver) -> Result<Answer> {
    let mut answer = Answer {
        text: String::new(),
        logprobs: None,
        reason: FinishReason::Stop,
        completion_tokens: 0,
        cached_tokens: 0,
    };
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token(t) => {
                answer.text.push_str(&t.text);
                if let Some(lp) = pipeline.logprobs(&t) {
                    answer
                        .logprobs
                        .get_or_insert_with(|| ChoiceLogprobs {
                            content: Vec::new(),
                        })
                        .content
                        .extend(lp.content);
                }
            }
            Event::Finished(f) => {
                answer.reason = f.reason;
                answer.completion_tokens = f.completion_tokens;
                answer.cached_tokens = f.cached_tokens;
                return Ok(answer);
            }
            Event::Failed { message } => {
                return Err(Error::Backend {
                    message,
                    source: None,
                });
            }
        }
    }
    Err(Error::EngineStopped)
}

impl Pipeline for EnginePipeline {
    fn model_id(&self) -> &str {
        &self.assets.model_id
    }

    async fn chat(&self, request: ChatCompletionRequest) -> Result<ChatCompletion> {
        let (prepared, _) = self.prepare(&request).await?;
        let answers =
            futures::future::join_all(prepared.receivers.into_iter().map(|rx| fold(self, rx)))
                .await;
        let mut completion = ChatCompletion::new(prepared.id, self.model_id(), prepared.created);
        let (mut completion_tokens, mut cached_tokens) = (0, 0);
        for (index, answer) in answers.into_iter().enumerate() {
            let answer = answer?;
            completion_tokens += answer.completion_tokens;
            // The choices share one prompt; report the most of it any of them found cached.
            cached_tokens = cached_tokens.max(answer.cached_tokens);
            let split =
                AnswerStream::new(prepared.reasoning, prepared.tool_format).split(&answer.text);
            let (mut message, reason) = if split.calls.is_empty() {
                let mut message = AssistantMessage::new(split.content);
                if !split.reasoning.is_empty() && message.content.as_deref() == Some("") {
                    message.content = None;
                }
                (message, answer.reason)
            } else {
                let calls = split
                    .calls
                    .into_iter()
                    .map(|c| ToolCall::new(c.name, c.arguments))
                    .collect();
                (
                    AssistantMessage::calling(&split.content, calls),
                    called(answer.reason),
                )
            };
            message.reasoning_content = (!split.reasoning.is_empty()).then_some(split.reasoning);
            completion.choices.push(Choice {
                index: index as u32,
                message,
                logprobs: answer.logprobs,
                finish_reason: Some(reason),
            });
        }
        completion.usage =
            Usage::new(prepared.prompt_tokens, completion_tokens).with_cached_tokens(cached_tokens);
        completion.metadata = Some(self.metadata(prepared.quote, completion_tokens));
        Ok(completion)
    }

    async fn chat_stream(&self, request: ChatCompletionRequest) -> Result<ChatStream> {
        let (prepared, generation) = self.prepare(&request).await?;
        let include_usage = matches!(
            generation.delivery,
            validation::Delivery::Stream {
                include_usage: true
            }
        );
        let state = StreamState {
            pipeline: self.clone(),
            template: ChatCompletionChunk::new(prepared.id, self.model_id(), prepared.created),
            events: stream::select_all(prepared.receivers.into_iter().enumerate().map(
                |(i, rx)| Tagged {
                    index: i as u32,
                    rx,
                },
            )),
            splitters: (0..generation.n)
                .map(|_| AnswerStream::new(prepared.reasoning, prepared.tool_format))
                .collect(),
            open: generation.n as usize,
            prompt_tokens: prepared.prompt_tokens,
            completion_tokens: 0,
            cached_tokens: 0,
            include_usage,
            quote: prepared.quote,
            done: false,
        };
        let head: Vec<Result<ChatCompletionChunk>> = (0..generation.n)
            .map(|i| Ok(state.chunk(ChunkChoice::new(i, Delta::start()))))
            .collect();
        let body = stream::unfold(state, |mut state| async move {
            let items = state.next_items().await?;
            Some((stream::iter(items), state))
        })
        .flatten();
        Ok(Box::pin(stream::iter(head).chain(body)))
    }

    fn stats(&self) -> Option<EngineStats> {
        Some(self.engine.stats())
    }

    fn backend(&self) -> Option<String> {
        let name = self.engine.backend_info().name;
        Some(match &self.chosen_because {
            Some(reason) => format!("{name} (auto: {reason})"),
            None => name.to_owned(),
        })
    }
}

/// The finish reason of an answer that called tools: `tool_calls` when the model ended it,
/// `length` when the limit cut it.
fn called(reason: FinishReason) -> FinishReason {
    match reason {
        FinishReason::Stop => FinishReason::ToolCalls,
        other => other,
    }
}

/// One choice's events, tagged with the choice index for merging.
struct Tagged {
    index: u32,
    rx: EventReceiver,
}

impl Stream for Tagged {
    type Item = (u32, Event);

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let index = self.index;
        Pin::new(&mut self.rx)
            .poll_next(cx)
            .map(|e| e.map(|e| (index, e)))
    }
}

struct StreamState {
    pipeline: EnginePipeline,
    template: ChatCompletionChunk,
    events: stream::SelectAll<Tagged>,
    /// Per choice: what splits its text into reasoning, content and tool calls.
    splitters: Vec<AnswerStream>,
    open: usize,
    prompt_tokens: u32,
    completion_tokens: u32,
    cached_tokens: u32,
    include_usage: bool,
    quote: Price,
    done: bool,
}

impl StreamState {
    /// The deltas of what a choice's splitter released: reasoning and text as they are, each
    /// call as its head (id, name) and then its arguments.
    fn deltas(parts: Vec<AnswerPart>) -> Vec<Delta> {
        let mut deltas = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                AnswerPart::Reasoning(text) => deltas.push(Delta::reasoning(text)),
                AnswerPart::Content(text) => deltas.push(Delta::text(text)),
                AnswerPart::Call { index: nth, call } => {
                    let call = ToolCall::new(call.name, call.arguments);
                    let [head, arguments] = ToolCallDelta::pieces(nth, &call);
                    deltas.push(Delta::calls(vec![head]));
                    deltas.push(Delta::calls(vec![arguments]));
                }
            }
        }
        deltas
    }

    fn chunk(&self, choice: ChunkChoice) -> ChatCompletionChunk {
        let chunk = self.template.clone().with_choice(choice);
        if self.include_usage {
            chunk.with_null_usage()
        } else {
            chunk
        }
    }

    /// The chunks for the next event; `None` when the stream is over.
    async fn next_items(&mut self) -> Option<Vec<Result<ChatCompletionChunk>>> {
        if self.done {
            return None;
        }
        let Some((index, event)) = self.events.next().await else {
            self.done = true;
            return Some(vec![Err(Error::EngineStopped)]);
        };
        match event {
            Event::Token(t) => {
                let logprobs = self.pipeline.logprobs(&t);
                let splitter = &mut self.splitters[index as usize];
                let mut deltas = if splitter.is_plain() {
                    if t.text.is_empty() {
                        Vec::new()
                    } else {
                        vec![Delta::text(t.text)]
                    }
                } else {
                    Self::deltas(splitter.push(&t.text))
                };
                if deltas.is_empty() && logprobs.is_some() {
                    deltas.push(Delta::text(""));
                }
                let mut chunks = Vec::with_capacity(deltas.len());
                for (i, delta) in deltas.into_iter().enumerate() {
                    let mut choice = ChunkChoice::new(index, delta);
                    if i == 0 {
                        choice.logprobs.clone_from(&logprobs);
                    }
                    chunks.push(Ok(self.chunk(choice)));
                }
                Some(chunks)
            }
            Event::Finished(f) => {
                self.completion_tokens += f.completion_tokens;
                self.cached_tokens = self.cached_tokens.max(f.cached_tokens);
                self.open -= 1;
                let mut out: Vec<Result<ChatCompletionChunk>> = Vec::new();
                let splitter = &mut self.splitters[index as usize];
                let deltas = Self::deltas(splitter.finish());
                let reason = if splitter.has_called() {
                    called(f.reason)
                } else {
                    f.reason
                };
                for delta in deltas {
                    out.push(Ok(self.chunk(ChunkChoice::new(index, delta))));
                }
                let mut last = self
                    .chunk(ChunkChoice::new(index, Delta::default()).with_finish_reason(reason));
                if self.open > 0 {
                    out.push(Ok(last));
                    return Some(out);
                }
                self.done = true;
                let metadata = self.pipeline.metadata(self.quote, self.completion_tokens);
                if !self.include_usage {
                    last.metadata = Some(metadata);
                    out.push(Ok(last));
                    return Some(out);
                }
                let mut usage = self.template.clone().with_usage(
                    Usage::new(self.prompt_tokens, self.completion_tokens)
                        .with_cached_tokens(self.cached_tokens),
                );
                usage.metadata = Some(metadata);
                out.extend([Ok(last), Ok(usage)]);
                Some(out)
            }
            Event::Failed { message } => {
                self.done = true;
                Some(vec![Err(Error::Backend {
                    message,
                    source: None,
                })])
            }
        }
    }
}
