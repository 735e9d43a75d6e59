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

use crate::json::swar_string_stops;

use crate::errors::CoreError;

/// Token usage as reported in `message_start`, `message_delta` and the non-streaming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens that were not read from the cache.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the KV cache, when the upstream reported them.
    pub cache_read_input_tokens: Option<u64>,
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn one(buf: &[u8]) -> (String, serde_json::Value) {
        let mut frames = parse_frames(buf);
        assert_eq!(frames.len(), 1);
        frames.pop().unwrap()
    }

    #[test]
    fn escaping_matches_serde_json() {
        for s in [
            "",
            "plain",
            "quote \" and \\ backslash",
            "nl\ncr\rtab\t\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "é€😀",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn generic_frame() {
        let mut out = Vec::new();
        write_frame(&mut out, "ping", b"{\"type\":\"ping\"}");
        assert_eq!(out, b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        assert_eq!(frame_len("ping", b"{\"type\":\"ping\"}"), out.len());
    }

    #[test]
    fn multi_line_data_becomes_several_data_fields() {
        let data = b"{\n  \"a\": 1,\r\n  \"b\": 2\r}";
        let mut out = Vec::new();
        write_frame(&mut out, "x", data);
        assert_eq!(
            out,
            b"event: x\ndata: {\ndata:   \"a\": 1,\ndata:   \"b\": 2\ndata: }\n\n"
        );
        assert_eq!(frame_len("x", data), out.len());
        // An SSE client joins data lines with "\n": still the same JSON.
        let joined: Vec<&str> = std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let value: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(value, json!({"a": 1, "b": 2}));
    }

    #[test]
    fn empty_data_and_trailing_newline() {
        let mut out = Vec::new();
        write_frame(&mut out, "e", b"");
        assert_eq!(out, b"event: e\ndata: \n\n");
        out.clear();
        write_frame(&mut out, "e", b"{}\n");
        assert_eq!(out, b"event: e\ndata: {}\ndata: \n\n");
    }

    #[test]
    fn write_into_slice_matches_vec() {
        for data in [&b"{}"[..], b"a\nb\r\nc\rd", b"", b"\n"] {
            let mut vec = Vec::new();
            write_frame(&mut vec, "evt", data);
            let mut slice = vec![0u8; frame_len("evt", data)];
            write_frame_into(&mut slice, "evt", data);
            assert_eq!(vec, slice);
        }
    }

    #[test]
    fn event_validation() {
        assert!(validate_event("message_start").is_ok());
        assert!(validate_event("").is_err());
        assert!(validate_event("a\nb").is_err());
        assert!(validate_event("a\r").is_err());
    }

    #[test]
    fn frames_append_to_one_buffer() {
        let mut out = Vec::new();
        ping(&mut out);
        message_stop(&mut out);
        let frames = parse_frames(&out);
        assert_eq!(
            frames,
            [
                ("ping".into(), json!({"type": "ping"})),
                ("message_stop".into(), json!({"type": "message_stop"}))
            ]
        );
    }

    #[test]
    fn message_start_frame() {
        let mut out = Vec::new();
        let usage = Usage {
            input_tokens: 42,
            output_tokens: 0,
            cache_read_input_tokens: None,
        };
        message_start(&mut out, "msg_\"1", "qwen3:8b", &usage);
        let (event, data) = one(&out);
        assert_eq!(event, "message_start");
        assert_eq!(
            data,
            json!({"type": "message_start", "message": {"id": "msg_\"1", "type": "message", "role": "assistant",
                "model": "qwen3:8b", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 42, "output_tokens": 0}}})
        );
    }

    #[test]
    fn block_start_frames() {
        let mut out = Vec::new();
        text_block_start(&mut out, 0);
        thinking_block_start(&mut out, 1);
        tool_use_block_start(&mut out, 2, "toolu_x", "Read\n");
        let frames = parse_frames(&out);
        assert!(frames.iter().all(|(event, _)| event == "content_block_start"));
        assert_eq!(
            frames[0].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            frames[1].1,
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        );
        assert_eq!(
            frames[2].1,
            json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_x", "name": "Read\n", "input": {}}})
        );
    }

    #[test]
    fn delta_frames() {
        let mut out = Vec::new();
        text_delta(&mut out, 3, "he said \"hi\"\n");
        thinking_delta(&mut out, 4, "hmm\t");
        signature_delta(&mut out, 4, "ccop.0123");
        input_json_delta(&mut out, 5, "{\"a\":\"b\\n\"}");
        content_block_stop(&mut out, 5);
        let frames = parse_frames(&out);
        let expected = [
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "he said \"hi\"\n"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 4, "delta": {"type": "thinking_delta", "thinking": "hmm\t"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 4, "delta": {"type": "signature_delta", "signature": "ccop.0123"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 5, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":\"b\\n\"}"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 5})),
        ];
        assert_eq!(frames.len(), expected.len());
        for ((event, data), (want_event, want)) in frames.iter().zip(expected) {
            assert_eq!(event, want_event);
            assert_eq!(data, &want);
        }
    }

    #[test]
    fn message_delta_frames() {
        let mut out = Vec::new();
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_input_tokens: Some(7),
        };
        message_delta(&mut out, "stop_sequence", Some("\n\nHuman:"), &usage);
        message_delta(
            &mut out,
            "end_turn",
            None,
            &Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            },
        );
        let frames = parse_frames(&out);
        assert_eq!(
            frames[0].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:"},
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 7, "output_tokens": 5}})
        );
        assert_eq!(
            frames[1].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 1, "output_tokens": 2}})
        );
    }

    #[test]
    fn error_frame() {
        let mut out = Vec::new();
        error(&mut out, "api_error", "boom: \"x\"\n");
        let (event, data) = one(&out);
        assert_eq!(event, "error");
        assert_eq!(
            data,
            json!({"type": "error", "error": {"type": "api_error", "message": "boom: \"x\"\n"}})
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }

    proptest! {
        #[test]
        fn any_string_escapes_like_serde(s in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn any_text_delta_round_trips(s in any::<String>(), index in 0usize..1000) {
            let mut out = Vec::new();
            text_delta(&mut out, index, &s);
            let (event, data) = one(&out);
            prop_assert_eq!(event, "content_block_delta");
            prop_assert_eq!(data, json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": s}}));
        }

        #[test]
        fn frame_len_is_exact(event in "[a-z_]{1,20}", data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut out = Vec::new();
            write_frame(&mut out, &event, &data);
            prop_assert_eq!(out.len(), frame_len(&event, &data));
        }
    }
}
