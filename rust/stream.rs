//! The Ollama → Anthropic translation state machine.
//!
//! The proxy always streams from Ollama's `/api/chat`. A [`Translator`] takes the raw upstream bytes and either
//! writes Anthropic SSE frames (streaming requests) or only accumulates the answer for one final JSON message
//! (non-streaming requests, `emit_sse = false`). The event sequence follows Anthropic's streaming format
//! (docs/STREAMING.md) and gets right what a naive translation gets wrong:
//!
//! - content, thinking **and** tool calls are handled on every chunk, the final `done` chunk included (tool calls
//!   arrive only there in llama-server mode);
//! - thinking blocks get a stable `signature_delta`; later thinking after text opens a new thinking block;
//! - each tool call is one `tool_use` block with exactly one `input_json_delta` holding the complete, healed
//!   arguments (Claude Code ignores `content_block_start.input`), and gets a unique id;
//! - when the request offered tools, each call's arguments are repaired by the tool's schema ([`crate::schema`]),
//!   and tool calls the model wrote into its text become `tool_use` blocks too ([`crate::text_calls`]); text that
//!   could still be such a call is held back until it is decided, so nothing is ever sent and then withdrawn;
//! - stop sequences are matched here, so `stop_reason:"stop_sequence"` and the matched `stop_sequence` can be
//!   reported (Ollama strips the match and cannot say which one matched);
//! - `done_reason:"length"` below `max_tokens` becomes `model_context_window_exceeded` (a full context window, not
//!   the client's limit);
//! - upstream `{"error": …}` lines, malformed lines and an early EOF become an Anthropic `error` event instead of
//!   a silently truncated stream.
//!
//! Block indices start at 0, increase by one per block and are never reused. Consecutive text (or thinking)
//! deltas for the open block within one [`Translator::feed`] call are coalesced into a single delta event.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::errors::{CoreError, excerpt};
use crate::heal::{HealKind, heal_value};
use crate::ndjson::LineSplitter;
use crate::ollama_line::{Chunk, ToolCall, parse_chunk};
use crate::schema::ToolSet;
use crate::sse::{self, ContentBlock, Message, ToolInput, Usage};
use crate::stop::StopMatcher;
use crate::text_calls::{Piece, TextCall, TextCallScanner};
use crate::tokens::{count_json, count_text};
use crate::tool_use::ToolUses;

/// Message for a stream that ended without a `done` chunk or an error line.
pub const EARLY_EOF_MESSAGE: &str = "Ollama closed the stream before the answer was complete";

/// Construction parameters of a [`Translator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatorOptions {
    /// The Anthropic message id (`msg_…`) chosen by the caller.
    pub message_id: String,
    /// The model name the client sent, echoed back as Anthropic does.
    pub model: String,
    /// Estimated prompt tokens, reported in `message_start` and used when Ollama reports no `prompt_eval_count`.
    pub input_tokens_estimate: u64,
    /// The client's `max_tokens`, to tell `max_tokens` from a full context window on `done_reason:"length"`.
    pub max_tokens: u64,
    /// The client's `stop_sequences`; empty strings are ignored.
    pub stop_sequences: Vec<String>,
    /// Longest upstream NDJSON line accepted, in bytes.
    pub max_line_bytes: usize,
    /// Write SSE frames (`true`) or only accumulate for [`Translator::message_json`] (`false`).
    pub emit_sse: bool,
    /// The tools the request offered and the proxy sent to Ollama, or `None`. With tools, each call's arguments
    /// are repaired by the tool's schema, and calls to these tools written as text become `tool_use` blocks.
    pub tools: Option<ToolSet>,
}

impl Default for TranslatorOptions {
    fn default() -> Self {
        Self {
            message_id: String::new(),
            model: String::new(),
            input_tokens_estimate: 0,
            max_tokens: 0,
            stop_sequences: Vec::new(),
            max_line_bytes: crate::DEFAULT_MAX_LINE_BYTES,
            emit_sse: true,
            tools: None,
        }
    }
}

/// One content block of the answer, in the order the blocks were opened.
#[derive(Debug, Clone)]
enum Block {
    Thinking {
        thinking: String,
    },
    Text {
        text: String,
    },
    /// `input` is the healed, repaired arguments as compact JSON.
    ToolUse {
        id: String,
        name: String,
        input: Box<RawValue>,
    },
}

impl Block {
    fn output_tokens(&self) -> usize {
        match self {
            Block::Thinking { thinking: text } | Block::Text { text } => count_text(text),
            Block::ToolUse { name, input, .. } => count_text(name) + count_json(input.get()),
        }
    }
}

/// A block as the non-streaming message holds it (`signature` is the thinking's, computed by the caller).
fn content_block<'a>(block: &'a Block, signature: &'a str) -> ContentBlock<'a> {
    match block {
        Block::Thinking { thinking } => ContentBlock::Thinking { thinking, signature },
        Block::Text { text } => ContentBlock::Text { text },
        Block::ToolUse { id, name, input } => ContentBlock::ToolUse {
            id,
            name,
            input: ToolInput(Some(input)),
        },
    }
}

/// Where a translator's events go: SSE frames appended to the caller's buffer for a streaming client, or nowhere
/// for a non-streaming one, whose message [`Translator::message_json`] builds from the blocks at the end. Every
/// frame goes through [`Sink::frame`], the one place that decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Sse,
    Message,
}

impl Sink {
    fn frame(self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        if self == Sink::Sse {
            write(out);
        }
    }
}

/// Where the translation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for more upstream data.
    Streaming,
    /// `message_stop` was produced (done chunk or stop sequence).
    Finished,
    /// An error was reported; further input is ignored.
    Failed,
}

/// The Ollama → Anthropic stream translator. See the module docs.
#[derive(Debug)]
pub struct Translator {
    opts: TranslatorOptions,
    sink: Sink,
    splitter: LineSplitter,
    blocks: Vec<Block>,
    /// Whether the last block is still open (only thinking and text blocks stay open).
    open: bool,
    /// Byte offset into the open block's text from which no delta has been written yet (coalescing).
    pending_from: usize,
    /// The client's stop sequences, and the text held back while a match is still possible.
    stops: StopMatcher,
    started: bool,
    phase: Phase,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    prompt_eval_count: Option<u64>,
    prompt_eval_cached_count: Option<u64>,
    eval_count: Option<u64>,
    error: Option<(&'static str, String)>,
    /// The `tool_use` blocks: healing and repair counters, ids.
    tool_uses: ToolUses,
    /// Recovers tool calls written as text; present exactly when tools were offered.
    text_calls: Option<TextCallScanner>,
}

impl Translator {
    /// Create a translator for one message.
    pub fn new(mut opts: TranslatorOptions) -> Self {
        let tool_uses = ToolUses::new(opts.tools.take());
        let text_calls = tool_uses.tools().map(|_| TextCallScanner::new());
        let stops = StopMatcher::new(std::mem::take(&mut opts.stop_sequences));
        Self {
            sink: if opts.emit_sse { Sink::Sse } else { Sink::Message },
            splitter: LineSplitter::new(opts.max_line_bytes),
            opts,
            blocks: Vec::new(),
            open: false,
            pending_from: 0,
            stops,
            started: false,
            phase: Phase::Streaming,
            stop_reason: None,
            stop_sequence: None,
            prompt_eval_count: None,
            prompt_eval_cached_count: None,
            eval_count: None,
            error: None,
            tool_uses,
            text_calls,
        }
    }

    /// Write the `message_start` frame. Idempotent: it is written once, by this call or by the first frame that
    /// needs it (so a caller that skips `start` still produces a valid stream).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = Usage {
            input_tokens: self.opts.input_tokens_estimate,
            output_tokens: 0,
            cache_read_input_tokens: None,
        };
        self.sink.frame(out, |out| {
            sse::message_start(out, &self.opts.message_id, &self.opts.model, &usage);
        });
    }

    /// Feed raw upstream bytes (any chunking); SSE frames for everything completed are appended to `out`.
    ///
    /// Input after the message finished or failed is ignored.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.phase != Phase::Streaming {
            return;
        }
        // The splitter's callback needs `&mut self`, so the splitter steps out of `self` for the call.
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.feed(chunk, |line| self.on_line(line, out));
        self.splitter = splitter;
        self.flush_pending(out);
    }

    /// Signal upstream EOF: a trailing line without newline is processed, and a stream that ended without a
    /// `done` chunk or an error gets an `api_error` event ([`EARLY_EOF_MESSAGE`]).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.phase == Phase::Streaming {
            let mut splitter = std::mem::take(&mut self.splitter);
            splitter.finish(|line| self.on_line(line, out));
            self.splitter = splitter;
        }
        if self.phase == Phase::Streaming {
            self.fail("api_error", EARLY_EOF_MESSAGE.to_owned(), out);
        }
        self.flush_pending(out);
    }

    /// True once the message is complete (`message_stop` produced): after the done chunk, or a stop sequence.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// True when one of the client's stop sequences matched: the caller should close the upstream request.
    pub fn stopped(&self) -> bool {
        self.stop_sequence.is_some()
    }

    /// The reported error as `(Anthropic error type, message)`, if any.
    pub fn error(&self) -> Option<(&str, &str)> {
        self.error.as_ref().map(|(kind, message)| (*kind, message.as_str()))
    }

    /// Ollama's `prompt_eval_count` from the done chunk.
    pub fn prompt_eval_count(&self) -> Option<u64> {
        self.prompt_eval_count
    }

    /// Ollama's `prompt_eval_cached_count` from the done chunk, where the server reports it.
    pub fn prompt_eval_cached_count(&self) -> Option<u64> {
        self.prompt_eval_cached_count
    }

    /// Ollama's `eval_count` from the done chunk.
    pub fn eval_count(&self) -> Option<u64> {
        self.eval_count
    }

    /// Tool-call counters by name (see [`ToolUses::counts`]).
    pub fn heal_counts(&self) -> [(&'static str, u64); 8] {
        self.tool_uses.counts()
    }

    /// The stop reason, once the message finished.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason
    }

    /// The complete non-streaming Anthropic message as JSON.
    ///
    /// Blocks appear in the order they were opened: thinking `{type,thinking,signature}`, text `{type,text}`,
    /// `tool_use` `{type,id,name,input}`. Before the message finished, `stop_reason` and `stop_sequence` are null.
    ///
    /// # Panics
    ///
    /// Never: the message holds only strings, integers and already valid JSON.
    pub fn message_json(&self) -> Vec<u8> {
        let signatures: Vec<String> = self
            .blocks
            .iter()
            .map(|block| match block {
                Block::Thinking { thinking } => signature(thinking),
                _ => String::new(),
            })
            .collect();
        let content = self
            .blocks
            .iter()
            .zip(&signatures)
            .map(|(block, sig)| content_block(block, sig))
            .collect();
        let mut message = Message::new(&self.opts.message_id, &self.opts.model, content, self.usage());
        message.stop_reason = self.stop_reason;
        message.stop_sequence = self.stop_sequence.as_deref();
        serde_json::to_vec(&message).expect("a message serialises")
    }

    /// Usage totals: Ollama's counts when reported, the estimates otherwise.
    ///
    /// Ollama's `prompt_eval_count` includes the cached prompt tokens, while Anthropic's `input_tokens` excludes
    /// the ones reported in `cache_read_input_tokens` (a client adds the two up), so the cached part is
    /// subtracted to avoid counting it twice.
    fn usage(&self) -> Usage {
        let cached = self.prompt_eval_cached_count;
        let input_tokens = match self.prompt_eval_count {
            Some(prompt) => prompt.saturating_sub(cached.unwrap_or(0)),
            None => self.opts.input_tokens_estimate,
        };
        let output_tokens = self.eval_count.unwrap_or_else(|| self.output_estimate());
        Usage {
            input_tokens,
            output_tokens,
            cache_read_input_tokens: cached,
        }
    }

    fn output_estimate(&self) -> u64 {
        self.blocks.iter().map(|block| block.output_tokens() as u64).sum()
    }

    fn on_line(&mut self, line: Result<&[u8], CoreError>, out: &mut Vec<u8>) {
        if self.phase != Phase::Streaming {
            return;
        }
        match line {
            Err(CoreError::LineTooLong { limit }) => {
                self.fail(
                    "api_error",
                    format!("Ollama sent a line longer than {limit} bytes"),
                    out,
                );
            }
            Err(other) => self.fail("api_error", format!("Ollama stream could not be read: {other}"), out),
            Ok(line) => match parse_chunk(line) {
                Ok(mut chunk) => self.on_chunk(&mut chunk, out),
                Err(err) => {
                    let message = format!("Ollama sent a malformed line ({err}): {:?}", excerpt(line));
                    self.fail("api_error", message, out);
                }
            },
        }
    }

    fn on_chunk(&mut self, chunk: &mut Chunk<'_>, out: &mut Vec<u8>) {
        if let Some(error) = chunk.error {
            let (kind, message) = error.report();
            self.fail(kind, message, out);
            return;
        }
        if let Some(message) = &mut chunk.message {
            if let Some(thinking) = &message.thinking {
                self.on_thinking(thinking.as_str(), out);
            }
            if let Some(content) = &message.content {
                self.on_text(content.as_str(), out);
                if self.phase != Phase::Streaming {
                    return;
                }
            }
            for call in message.tool_calls.take().into_iter().flatten() {
                self.on_tool_call(call, out);
            }
        }
        self.prompt_eval_count = chunk.prompt_eval_count.or(self.prompt_eval_count);
        self.prompt_eval_cached_count = chunk.prompt_eval_cached_count.or(self.prompt_eval_cached_count);
        self.eval_count = chunk.eval_count.or(self.eval_count);
        if chunk.done {
            let reason = self.map_done_reason(chunk.done_reason.as_ref().map(crate::json::CowStr::as_str));
            self.finish_message(reason, out);
        }
    }

    /// Anthropic stop reason for a done chunk (docs/API.md, "Response translation").
    fn map_done_reason(&self, done_reason: Option<&str>) -> &'static str {
        if self.tool_uses.any() {
            return "tool_use";
        }
        match done_reason {
            Some("length") => {
                let generated = self.eval_count.unwrap_or_else(|| self.output_estimate());
                if generated >= self.opts.max_tokens {
                    "max_tokens"
                } else {
                    "model_context_window_exceeded"
                }
            }
            _ => "end_turn",
        }
    }

    fn on_thinking(&mut self, thinking: &str, out: &mut Vec<u8>) {
        if thinking.is_empty() {
            return;
        }
        // Text held back (for a stop sequence or a possible call) was written before this thinking: it is
        // settled first, so the blocks keep the order the model wrote them in.
        self.settle_text(out);
        if !(self.open && matches!(self.blocks.last(), Some(Block::Thinking { .. }))) {
            self.close_open_block(out);
            self.open_block(
                Block::Thinking {
                    thinking: String::new(),
                },
                out,
            );
        }
        if let Some(Block::Thinking { thinking: text }) = self.blocks.last_mut() {
            text.push_str(thinking);
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        // The matcher steps out of `self` for the call, as `pass_text` needs `&mut self`.
        let mut stops = std::mem::take(&mut self.stops);
        if let Some(matched) = stops.push(text, |passed| self.pass_text(passed, out)) {
            self.stop_sequence = Some(matched.to_owned());
            self.stops = stops;
            self.finish_message("stop_sequence", out);
            return;
        }
        self.stops = stops;
    }

    /// End the current text (another kind of block follows, or the answer ends): release the text held back for
    /// stop-sequence matching (it cannot be part of a match any more), and decide what the text-call scanner
    /// holds.
    fn settle_text(&mut self, out: &mut Vec<u8>) {
        let held = self.stops.take_held();
        if !held.is_empty() {
            self.pass_text(&held, out);
        }
        if let (Some(mut scanner), Some(tools)) = (self.text_calls.take(), self.tool_uses.tools().cloned()) {
            scanner.finish(&tools, |piece| self.on_piece(piece, out));
            self.text_calls = Some(scanner);
        }
    }

    /// Text that passed the stop-sequence stage: through the text-call scanner when tools were offered.
    fn pass_text(&mut self, text: &str, out: &mut Vec<u8>) {
        if let (Some(mut scanner), Some(tools)) = (self.text_calls.take(), self.tool_uses.tools().cloned()) {
            scanner.push(text, &tools, |piece| self.on_piece(piece, out));
            self.text_calls = Some(scanner);
        } else {
            self.emit_text(text, out);
        }
    }

    fn on_piece(&mut self, piece: Piece<'_>, out: &mut Vec<u8>) {
        match piece {
            Piece::Text(text) => self.emit_text(text, out),
            Piece::Call(TextCall {
                name,
                id,
                arguments,
                heal,
            }) => {
                self.tool_uses.count_text_call();
                self.emit_tool_use(name, id, arguments, heal, out);
            }
        }
    }

    fn emit_text(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        if !(self.open && matches!(self.blocks.last(), Some(Block::Text { .. }))) {
            self.close_open_block(out);
            self.open_block(Block::Text { text: String::new() }, out);
        }
        if let Some(Block::Text { text: block }) = self.blocks.last_mut() {
            block.push_str(text);
        }
    }

    fn on_tool_call(&mut self, call: ToolCall<'_>, out: &mut Vec<u8>) {
        self.settle_text(out);
        let function = call.function.unwrap_or_default();
        let name = function.name.map(|name| name.0.into_owned()).unwrap_or_default();
        let (arguments, kind) = heal_value(function.arguments.unwrap_or_default());
        let id = call.id.map(|id| id.0.into_owned());
        self.emit_tool_use(name, id, arguments, kind, out);
    }

    /// One complete `tool_use` block (see [`ToolUses::add`]).
    fn emit_tool_use(
        &mut self,
        name: String,
        id: Option<String>,
        arguments: Map<String, Value>,
        kind: HealKind,
        out: &mut Vec<u8>,
    ) {
        let (id, input) = self.tool_uses.add(&name, id, arguments, kind, &self.opts.message_id);
        self.close_open_block(out);
        let index = self.blocks.len();
        self.start(out);
        self.sink.frame(out, |out| {
            sse::tool_use_block_start(out, index, &id, &name);
            sse::input_json_delta(out, index, input.get());
            sse::content_block_stop(out, index);
        });
        self.blocks.push(Block::ToolUse { id, name, input });
    }

    /// Push a new open thinking or text block and write its `content_block_start`.
    fn open_block(&mut self, block: Block, out: &mut Vec<u8>) {
        let index = self.blocks.len();
        self.start(out);
        self.sink.frame(out, |out| match block {
            Block::Thinking { .. } => sse::thinking_block_start(out, index),
            _ => sse::text_block_start(out, index),
        });
        self.blocks.push(block);
        self.open = true;
        self.pending_from = 0;
    }

    /// Write the coalesced delta for the open block, if any text is waiting.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if !self.open {
            return;
        }
        let index = self.blocks.len() - 1;
        match self.blocks.last() {
            Some(Block::Text { text }) if text.len() > self.pending_from => {
                self.sink
                    .frame(out, |out| sse::text_delta(out, index, &text[self.pending_from..]));
                self.pending_from = text.len();
            }
            Some(Block::Thinking { thinking }) if thinking.len() > self.pending_from => {
                self.sink.frame(out, |out| {
                    sse::thinking_delta(out, index, &thinking[self.pending_from..]);
                });
                self.pending_from = thinking.len();
            }
            _ => {}
        }
    }

    /// Flush and stop the open block; a thinking block gets its signature first.
    fn close_open_block(&mut self, out: &mut Vec<u8>) {
        if !self.open {
            return;
        }
        self.flush_pending(out);
        self.open = false;
        self.sink.frame(out, |out| {
            let index = self.blocks.len() - 1;
            if let Some(Block::Thinking { thinking }) = self.blocks.last() {
                sse::signature_delta(out, index, &signature(thinking));
            }
            sse::content_block_stop(out, index);
        });
    }

    fn finish_message(&mut self, stop_reason: &'static str, out: &mut Vec<u8>) {
        self.settle_text(out);
        self.close_open_block(out);
        // A call recovered from the text just settled makes this a tool-use turn too (after a stop sequence as well:
        // the client must run the call).
        let stop_reason = if self.tool_uses.any() { "tool_use" } else { stop_reason };
        self.stop_reason = Some(stop_reason);
        self.phase = Phase::Finished;
        self.start(out);
        self.sink.frame(out, |out| {
            sse::message_delta(out, stop_reason, self.stop_sequence.as_deref(), &self.usage());
            sse::message_stop(out);
        });
    }

    /// Report an error event and stop. Text already received is sent first; the open block is left open, as
    /// Anthropic does when a stream fails.
    fn fail(&mut self, kind: &'static str, message: String, out: &mut Vec<u8>) {
        self.settle_text(out);
        self.flush_pending(out);
        self.sink.frame(out, |out| sse::error(out, kind, &message));
        self.error = Some((kind, message));
        self.phase = Phase::Failed;
    }
}

/// The thinking signature: `ccop.` plus the 64-bit FNV-1a hash of the text in hex.
///
/// Anthropic signs thinking blocks so they can be verified when sent back; Ollama has no such thing. Claude Code
/// only echoes the signature, so it just has to be stable: the same text always gives
/// the same signature, across processes and versions (hence a fixed hash, not `DefaultHasher`).
pub fn signature(thinking: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in thinking.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("ccop.{hash:016x}")
}

#[cfg(test)]
mod tests;
