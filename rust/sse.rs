//! Server-sent-event framing for the Anthropic Messages stream.
//!
//! A frame is `event: <name>\ndata: <json>\n\n` (Anthropic's streaming format, docs/STREAMING.md).
//! Claude Code rejects a stream whose frames lack the `event:` line (observed with Claude Code 2.1), so every frame
//! carries one.
//!
//! Everything appends to a caller-owned `Vec<u8>` so one buffer can collect many frames and go to the socket in
//! one write. The per-event helpers write their JSON straight into that buffer: no intermediate `String`s and no
//! `serde_json::Value` trees on the hot path. JSON strings are escaped by [`push_json_str`], which escapes exactly
//! what `serde_json` escapes (`"`, `\`, and control characters below U+0020), so the output is byte-identical to
//! `serde_json::to_string`.

use memchr::memchr2;
use serde::Serialize;

use crate::json::swar_string_stops;

use crate::errors::CoreError;

/// Token usage as reported in `message_start`, `message_delta` and the non-streaming message (fields in the order
/// [`push_usage`] writes them).
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

/// Escape table: 0 = copy as is; otherwise the character to put after a backslash (`u` = `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Append `s` as a quoted, escaped JSON string.
///
/// Non-ASCII text is copied as UTF-8, like `serde_json` does; runs of plain bytes are copied in one go.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while nothing needs escaping: the bytes to escape are exactly the ones that end a
        // run of plain string contents in JSON input.
        if let Some(word) = bytes[i..].first_chunk::<8>() {
            let stops = swar_string_stops(u64::from_le_bytes(*word));
            if stops == 0 {
                i += 8;
                continue;
            }
            i += (stops.trailing_zeros() / 8) as usize;
        }
        let byte = bytes[i];
        let escape = ESCAPE[byte as usize];
        if escape != 0 {
            out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
            if escape == b'u' {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xF) as usize],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', escape]);
            }
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Append the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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

/// Start a frame whose data the caller writes as one line of JSON; [`end`] closes it.
fn begin(out: &mut Vec<u8>, event: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\n\n");
}

/// Append the `usage` object (`{"input_tokens":…,"output_tokens":…[,"cache_read_input_tokens":…]}`).
pub fn push_usage(out: &mut Vec<u8>, usage: &Usage) {
    out.extend_from_slice(b"{\"input_tokens\":");
    push_u64(out, usage.input_tokens);
    if let Some(cached) = usage.cache_read_input_tokens {
        out.extend_from_slice(b",\"cache_read_input_tokens\":");
        push_u64(out, cached);
    }
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, usage.output_tokens);
    out.push(b'}');
}

/// Append a JSON string, or `null` for `None`.
pub fn push_opt_json_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `message_start`: the empty assistant message with `stop_reason`/`stop_sequence` null and the input estimate.
pub fn message_start(out: &mut Vec<u8>, id: &str, model: &str, usage: &Usage) {
    begin(out, "message_start");
    out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
    push_json_str(out, id);
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    push_json_str(out, model);
    out.extend_from_slice(b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
    push_usage(out, usage);
    out.extend_from_slice(b"}}");
    end(out);
}

fn block_start_prefix(out: &mut Vec<u8>, index: usize) {
    begin(out, "content_block_start");
    out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
    push_u64(out, index as u64);
    out.extend_from_slice(b",\"content_block\":");
}

/// `content_block_start` of an empty text block.
pub fn text_block_start(out: &mut Vec<u8>, index: usize) {
    block_start_prefix(out, index);
    out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}}");
    end(out);
}

/// `content_block_start` of an empty thinking block (its signature follows as a `signature_delta`).
pub fn thinking_block_start(out: &mut Vec<u8>, index: usize) {
    block_start_prefix(out, index);
    out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}");
    end(out);
}

/// `content_block_start` of a tool call; the input follows as one `input_json_delta`.
pub fn tool_use_block_start(out: &mut Vec<u8>, index: usize, id: &str, name: &str) {
    block_start_prefix(out, index);
    out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
    push_json_str(out, id);
    out.extend_from_slice(b",\"name\":");
    push_json_str(out, name);
    out.extend_from_slice(b",\"input\":{}}}");
    end(out);
}

/// `content_block_delta` with a delta of type `kind` whose string field `field` is `value`.
/// The bytes of a `content_block_delta` frame before its index.
const DELTA_HEAD: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":";

/// One `content_block_delta` frame; `middle` is what goes between the index and the value
/// (`,"delta":{"type":"<kind>","<field>":`). Deltas are the bulk of a stream, so the frame is written in as few
/// copies as possible.
#[inline]
fn delta(out: &mut Vec<u8>, index: usize, middle: &[u8], value: &str) {
    out.reserve(DELTA_HEAD.len() + 20 + middle.len() + value.len() + 2 + 4);
    out.extend_from_slice(DELTA_HEAD);
    push_u64(out, index as u64);
    out.extend_from_slice(middle);
    push_json_str(out, value);
    out.extend_from_slice(b"}}\n\n");
}

/// `text_delta` for a text block.
pub fn text_delta(out: &mut Vec<u8>, index: usize, text: &str) {
    delta(out, index, b",\"delta\":{\"type\":\"text_delta\",\"text\":", text);
}

/// `thinking_delta` for a thinking block.
pub fn thinking_delta(out: &mut Vec<u8>, index: usize, thinking: &str) {
    delta(
        out,
        index,
        b",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":",
        thinking,
    );
}

/// `signature_delta`, sent just before a thinking block stops.
pub fn signature_delta(out: &mut Vec<u8>, index: usize, signature: &str) {
    delta(
        out,
        index,
        b",\"delta\":{\"type\":\"signature_delta\",\"signature\":",
        signature,
    );
}

/// `input_json_delta` carrying (part of) a tool call's input JSON as a string.
pub fn input_json_delta(out: &mut Vec<u8>, index: usize, partial_json: &str) {
    delta(
        out,
        index,
        b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
        partial_json,
    );
}

/// `content_block_stop`.
pub fn content_block_stop(out: &mut Vec<u8>, index: usize) {
    begin(out, "content_block_stop");
    out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
    push_u64(out, index as u64);
    out.push(b'}');
    end(out);
}

/// `message_delta` with the final stop reason, matched stop sequence and usage totals.
pub fn message_delta(out: &mut Vec<u8>, stop_reason: &str, stop_sequence: Option<&str>, usage: &Usage) {
    begin(out, "message_delta");
    out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
    push_json_str(out, stop_reason);
    out.extend_from_slice(b",\"stop_sequence\":");
    push_opt_json_str(out, stop_sequence);
    out.extend_from_slice(b"},\"usage\":");
    push_usage(out, usage);
    out.push(b'}');
    end(out);
}

/// `message_stop`.
pub fn message_stop(out: &mut Vec<u8>) {
    begin(out, "message_stop");
    out.extend_from_slice(b"{\"type\":\"message_stop\"}");
    end(out);
}

/// `ping`, a keep-alive the client ignores.
pub fn ping(out: &mut Vec<u8>) {
    begin(out, "ping");
    out.extend_from_slice(b"{\"type\":\"ping\"}");
    end(out);
}

/// An `error` event: `{"type":"error","error":{"type":<kind>,"message":<message>}}`.
pub fn error(out: &mut Vec<u8>, kind: &str, message: &str) {
    begin(out, "error");
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    push_json_str(out, kind);
    out.extend_from_slice(b",\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b"}}");
    end(out);
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
