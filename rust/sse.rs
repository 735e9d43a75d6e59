//! Server-sent-event framing for the Anthropic Messages stream.
//!
//! A frame is `event: <name>\ndata: <json>\n\n` (Anthropic's streaming format, docs/STREAMING.md).
//! Claude Code rejects a stream whose frames lack the `event:` line (observed with Claude Code 2.1), so every frame
//! carries one.
//!
//! Everything appends to a caller-owned `Vec<u8>` so one buffer can collect many frames and go to the socket in
//! one write. Each event's data is an [`Event`] serialised by serde straight into that buffer; the event name is
//! its `type`.

use memchr::memchr2;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::errors::CoreError;

/// Token usage as reported in `message_start`, `message_delta` and the non-streaming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens that were not read from the cache.
    pub input_tokens: u64,
    /// Prompt tokens served from the KV cache, when the upstream reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// An Anthropic message: the non-streaming answer, and (empty) the `message` of `message_start`.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    /// `msg_…`.
    pub id: &'a str,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    /// The model name the client sent.
    pub model: &'a str,
    /// The blocks, in the order they were opened.
    pub content: Vec<ContentBlock<'a>>,
    /// `end_turn`, `tool_use`, …; null until the message finished.
    pub stop_reason: Option<&'a str>,
    /// The client's stop sequence that ended the message.
    pub stop_sequence: Option<&'a str>,
    /// Token usage.
    pub usage: Usage,
}

impl<'a> Message<'a> {
    /// A message with these blocks, stop reason and usage.
    pub fn new(id: &'a str, model: &'a str, content: Vec<ContentBlock<'a>>, usage: Usage) -> Self {
        Self {
            id,
            kind: "message",
            role: "assistant",
            model,
            content,
            stop_reason: None,
            stop_sequence: None,
            usage,
        }
    }
}

/// A content block of a [`Message`], or the empty block of a `content_block_start` (whose text, thinking and
/// input follow as deltas).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock<'a> {
    /// Reasoning, with its signature.
    Thinking {
        /// The reasoning text.
        thinking: &'a str,
        /// See `stream::signature`.
        signature: &'a str,
    },
    /// Answer text.
    Text {
        /// The text.
        text: &'a str,
    },
    /// A tool call.
    ToolUse {
        /// `toolu_…` or the model's own id.
        id: &'a str,
        /// The tool's name.
        name: &'a str,
        /// The arguments.
        input: ToolInput<'a>,
    },
}

/// A tool call's arguments (a JSON object), or `None` for the `{}` of a `content_block_start`.
#[derive(Debug, Clone, Copy)]
pub struct ToolInput<'a>(pub Option<&'a RawValue>);

impl Serialize for ToolInput<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Some(raw) => raw.serialize(serializer),
            None => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

/// The data of one stream event; its `type` is also the frame's event name.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: ContentBlock<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: Usage,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorBody<'a>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Ping => "ping",
            Event::Error { .. } => "error",
        }
    }
}

/// The `delta` of a `content_block_delta`.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

/// The `delta` of a `message_delta`.
#[derive(Debug, Serialize)]
struct StopDelta<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

/// The `error` of an `error` event.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// Append the frame of `event`.
fn write(out: &mut Vec<u8>, event: &Event<'_>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing strings, integers and valid JSON into a `Vec` cannot fail.
    let written = serde_json::to_writer(&mut *out, event);
    debug_assert!(written.is_ok(), "an event serialises");
    out.extend_from_slice(b"\n\n");
}

/// Check that `event` can be used as an SSE event name: non-empty and free of line breaks.
///
/// # Errors
///
/// [`CoreError::InvalidSseEvent`] otherwise.
pub fn validate_event(event: &str) -> Result<(), CoreError> {
    if event.is_empty() || event.bytes().any(|b| b == b'\n' || b == b'\r') {
        return Err(CoreError::InvalidSseEvent(event.to_owned()));
    }
    Ok(())
}

/// Call `f` with each piece of the frame for `event` and `data`, in order.
///
/// `data` is normally one line of JSON. If it has line breaks (`\n`, `\r\n` or `\r`) each line gets its own
/// `data:` field; an SSE client joins them back with `\n` (HTML Living Standard, "Interpreting an event stream"),
/// which for JSON only changes insignificant whitespace. So pretty-printed JSON still arrives intact.
fn for_each_piece(event: &str, data: &[u8], mut f: impl FnMut(&[u8])) {
    f(b"event: ");
    f(event.as_bytes());
    f(b"\n");
    let mut rest = data;
    loop {
        f(b"data: ");
        match memchr2(b'\n', b'\r', rest) {
            None => {
                f(rest);
                f(b"\n");
                break;
            }
            Some(pos) => {
                f(&rest[..pos]);
                f(b"\n");
                let skip = if rest[pos] == b'\r' && rest.get(pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[pos + skip..];
            }
        }
    }
    f(b"\n");
}

/// Exact byte length of the frame [`write_frame`] would produce.
pub fn frame_len(event: &str, data: &[u8]) -> usize {
    let mut len = 0;
    for_each_piece(event, data, |piece| len += piece.len());
    len
}

/// Append one frame `event: <event>\ndata: <data>\n\n`. The event name must pass [`validate_event`].
pub fn write_frame(out: &mut Vec<u8>, event: &str, data: &[u8]) {
    out.reserve(frame_len(event, data));
    for_each_piece(event, data, |piece| out.extend_from_slice(piece));
}

/// Write one frame into `buf`, which must be exactly [`frame_len`] bytes long (for building a Python `bytes`
/// object in place).
///
/// # Panics
///
/// If `buf` is shorter than the frame.
pub fn write_frame_into(buf: &mut [u8], event: &str, data: &[u8]) {
    let mut pos = 0;
    for_each_piece(event, data, |piece| {
        buf[pos..pos + piece.len()].copy_from_slice(piece);
        pos += piece.len();
    });
    debug_assert_eq!(pos, buf.len());
}

/// `message_start`: the empty assistant message with `stop_reason`/`stop_sequence` null and the input estimate.
pub fn message_start(out: &mut Vec<u8>, id: &str, model: &str, usage: &Usage) {
    let message = Message::new(id, model, Vec::new(), *usage);
    write(out, &Event::MessageStart { message });
}

/// `content_block_start` of an empty text block.
pub fn text_block_start(out: &mut Vec<u8>, index: usize) {
    let content_block = ContentBlock::Text { text: "" };
    write(out, &Event::ContentBlockStart { index, content_block });
}

/// `content_block_start` of an empty thinking block (its signature follows as a `signature_delta`).
pub fn thinking_block_start(out: &mut Vec<u8>, index: usize) {
    let content_block = ContentBlock::Thinking {
        thinking: "",
        signature: "",
    };
    write(out, &Event::ContentBlockStart { index, content_block });
}

/// `content_block_start` of a tool call; the input follows as one `input_json_delta`.
pub fn tool_use_block_start(out: &mut Vec<u8>, index: usize, id: &str, name: &str) {
    let content_block = ContentBlock::ToolUse {
        id,
        name,
        input: ToolInput(None),
    };
    write(out, &Event::ContentBlockStart { index, content_block });
}

/// `text_delta` for a text block.
pub fn text_delta(out: &mut Vec<u8>, index: usize, text: &str) {
    let delta = Delta::Text { text };
    write(out, &Event::ContentBlockDelta { index, delta });
}

/// `thinking_delta` for a thinking block.
pub fn thinking_delta(out: &mut Vec<u8>, index: usize, thinking: &str) {
    let delta = Delta::Thinking { thinking };
    write(out, &Event::ContentBlockDelta { index, delta });
}

/// `signature_delta`, sent just before a thinking block stops.
pub fn signature_delta(out: &mut Vec<u8>, index: usize, signature: &str) {
    let delta = Delta::Signature { signature };
    write(out, &Event::ContentBlockDelta { index, delta });
}

/// `input_json_delta` carrying (part of) a tool call's input JSON as a string.
pub fn input_json_delta(out: &mut Vec<u8>, index: usize, partial_json: &str) {
    let delta = Delta::InputJson { partial_json };
    write(out, &Event::ContentBlockDelta { index, delta });
}

/// `content_block_stop`.
pub fn content_block_stop(out: &mut Vec<u8>, index: usize) {
    write(out, &Event::ContentBlockStop { index });
}

/// `message_delta` with the final stop reason, matched stop sequence and usage totals.
pub fn message_delta(out: &mut Vec<u8>, stop_reason: &str, stop_sequence: Option<&str>, usage: &Usage) {
    let delta = StopDelta {
        stop_reason,
        stop_sequence,
    };
    write(out, &Event::MessageDelta { delta, usage: *usage });
}

/// `message_stop`.
pub fn message_stop(out: &mut Vec<u8>) {
    write(out, &Event::MessageStop);
}

/// `ping`, a keep-alive the client ignores.
pub fn ping(out: &mut Vec<u8>) {
    write(out, &Event::Ping);
}

/// An `error` event: `{"type":"error","error":{"type":<kind>,"message":<message>}}`.
pub fn error(out: &mut Vec<u8>, kind: &str, message: &str) {
    write(
        out,
        &Event::Error {
            error: ErrorBody { kind, message },
        },
    );
}

/// Test helper shared with `stream.rs`: parse a buffer of frames back into `(event, data)` pairs.
///
/// Panics on anything that is not a well-formed single-data-line frame with JSON data.
#[cfg(test)]
pub(crate) fn parse_frames(buf: &[u8]) -> Vec<(String, serde_json::Value)> {
    let text = std::str::from_utf8(buf).expect("frames are UTF-8");
    if text.is_empty() {
        return Vec::new();
    }
    assert!(text.ends_with("\n\n"), "frames end with a blank line: {text:?}");
    text[..text.len() - 2]
        .split("\n\n")
        .map(|frame| {
            let mut lines = frame.split('\n');
            let event = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect("event line");
            let data = lines.next().and_then(|l| l.strip_prefix("data: ")).expect("data line");
            assert!(lines.next().is_none(), "one data line per frame: {frame:?}");
            let value: serde_json::Value = serde_json::from_str(data).expect("data is JSON");
            (event.to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests;
