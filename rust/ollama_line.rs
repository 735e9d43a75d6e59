//! Parsing of one Ollama `/api/chat` NDJSON line into a borrowed [`Chunk`].
//!
//! Shape (Ollama's `ChatResponse`): `{"model","created_at","message":{"role","content","thinking"?,"tool_calls"?},
//! "done","done_reason"?, metrics…}`; mid-stream failures arrive as one more line `{"error": …}` (§3). Strings
//! borrow from the line unless they contain escapes. Every field is optional and unknown fields are ignored, so
//! newer Ollama versions that add fields keep working.
//!
//! The error check comes first: a line with a non-null top-level `error` is an error whatever else it holds, even
//! when the rest would not parse as a chat chunk. The error value may be a string (the normal case) or any other
//! JSON value; [`ChunkError::text`] makes text of either.
//!
//! One parser, serde's: [`Chunk`] and its parts are borrowed structs, so a plain delta costs one pass over the
//! line and no copies unless a string has escapes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json::CowStr;

/// One parsed `/api/chat` line.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk<'a> {
    /// Top-level `error`; when present the other fields are meaningless.
    #[serde(borrow, default, deserialize_with = "non_null_raw")]
    pub error: Option<ChunkError<'a>>,
    /// The assistant message delta.
    #[serde(borrow)]
    pub message: Option<ChunkMessage<'a>>,
    /// True on the final chunk.
    #[serde(default)]
    pub done: bool,
    /// `stop`, `length`, `load`, `unload`, or absent.
    #[serde(borrow)]
    pub done_reason: Option<CowStr<'a>>,
    /// Prompt tokens (cached plus newly processed since Ollama 0.30).
    pub prompt_eval_count: Option<u64>,
    /// The cached part of `prompt_eval_count`, where the server reports it.
    pub prompt_eval_cached_count: Option<u64>,
    /// Generated tokens.
    pub eval_count: Option<u64>,
    /// Whole request time, nanoseconds.
    pub total_duration: Option<u64>,
    /// Model load time, nanoseconds.
    pub load_duration: Option<u64>,
    /// Prompt processing time, nanoseconds.
    pub prompt_eval_duration: Option<u64>,
    /// Generation time, nanoseconds.
    pub eval_duration: Option<u64>,
}

/// The `message` object of a chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkMessage<'a> {
    /// Answer text delta (always present in Ollama's output, often empty).
    #[serde(borrow)]
    pub content: Option<CowStr<'a>>,
    /// Reasoning text delta.
    #[serde(borrow)]
    pub thinking: Option<CowStr<'a>>,
    /// Complete tool calls; a call is never split across chunks.
    #[serde(borrow)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
}

/// One entry of `message.tool_calls`.
#[derive(Debug, Default, Deserialize)]
pub struct ToolCall<'a> {
    /// Ollama's id (`call_…`, or llama-server's own); may be missing or empty.
    #[serde(borrow)]
    pub id: Option<CowStr<'a>>,
    /// The call itself.
    #[serde(borrow)]
    pub function: Option<ToolFunction<'a>>,
}

/// `tool_calls[].function`.
#[derive(Debug, Default, Deserialize)]
pub struct ToolFunction<'a> {
    /// Tool name.
    #[serde(borrow)]
    pub name: Option<CowStr<'a>>,
    /// Position of the call within the response, from 0.
    pub index: Option<i64>,
    /// Arguments: normally an object (key order kept), sometimes a JSON-encoded string; see [`crate::heal`].
    pub arguments: Option<Value>,
}

/// The raw JSON of a top-level `error` value.
#[derive(Debug, Clone, Copy)]
pub struct ChunkError<'a>(pub &'a RawValue);

impl ChunkError<'_> {
    /// The error as the client will see it: the Anthropic error type and a message naming Ollama.
    pub fn report(&self) -> (&'static str, String) {
        let text = self.text();
        let text = truncate(&text, MAX_ERROR_TEXT);
        (classify_error(text), format!("Ollama reported an error: {text}"))
    }

    /// The error as text: a string value as is; an object's `message` or `error` string; otherwise the JSON text.
    pub fn text(&self) -> Cow<'_, str> {
        let raw = self.0.get();
        if let Ok(CowStr(text)) = serde_json::from_str::<CowStr<'_>>(raw) {
            return text;
        }
        if let Ok(nested) = serde_json::from_str::<Nested<'_>>(raw)
            && let Some(CowStr(text)) = nested.message.or(nested.error)
        {
            return text;
        }
        Cow::Borrowed(raw)
    }
}

/// Longest upstream error text passed on, in bytes; upstream errors are short, this only bounds hostile input.
pub(crate) const MAX_ERROR_TEXT: usize = 2000;

/// Anthropic error type for an Ollama error text.
///
/// `server busy` is Ollama's full-queue 503; an overflowing prompt is the client's problem
/// (`invalid_request_error`, like Anthropic's "prompt is too long"); everything else is `api_error`. Go's
/// "context deadline exceeded"/"context canceled" are timeouts, not overflows, and stay `api_error`.
pub fn classify_error(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    if lower.contains("server busy") || lower.contains("overloaded") {
        "overloaded_error"
    } else if [
        "exceeds the available context size",
        "exceed_context_size",
        "context window",
        "context length",
        "context size",
        "context overflow",
        "prompt is too long",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
    {
        "invalid_request_error"
    } else {
        "api_error"
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An error object such as `{"message": "..."}` or `{"error": "..."}`.
#[derive(Deserialize)]
struct Nested<'a> {
    #[serde(borrow)]
    message: Option<CowStr<'a>>,
    #[serde(borrow)]
    error: Option<CowStr<'a>>,
}

/// `error: null` counts as no error (Go's `omitempty` never sends it, but a null is clearly not a failure).
fn non_null_raw<'de, D>(deserializer: D) -> Result<Option<ChunkError<'de>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = <&'de RawValue>::deserialize(deserializer)?;
    Ok((raw.get() != "null").then_some(ChunkError(raw)))
}

/// Only the `error` field, for lines that do not parse as a full chunk.
#[derive(Deserialize)]
struct ErrorOnly<'a> {
    #[serde(borrow, default, deserialize_with = "non_null_raw")]
    error: Option<ChunkError<'a>>,
}

/// Parse one NDJSON line. It never panics.
///
/// # Errors
///
/// Invalid JSON (including invalid UTF-8), a line that is not an object, or a field of the wrong type (unless
/// the line carries an `error`), with `serde_json`'s message.
pub fn parse_chunk(line: &[u8]) -> Result<Chunk<'_>, serde_json::Error> {
    // serde would read a struct from a JSON array (positionally); a chunk must be an object.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(line)?;
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    match serde_json::from_slice::<Chunk<'_>>(line) {
        Ok(chunk) => Ok(chunk),
        Err(err) => match serde_json::from_slice::<ErrorOnly<'_>>(line) {
            // An error line whose other fields are odd is still an error line.
            Ok(ErrorOnly { error: Some(error) }) => Ok(Chunk {
                error: Some(error),
                ..Chunk::default()
            }),
            _ => Err(err),
        },
    }
}

#[cfg(test)]
mod tests;
