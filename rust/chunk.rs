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
//! Nearly every line is a plain delta (`message.content` or `message.thinking`) or the done chunk with its
//! metrics. Those are read by a hand-written pass over the bytes (`json::Cursor`), which skips the fields
//! the translator ignores (`model`, `created_at`, `role`, …) without decoding them and validates as it goes. Lines
//! with an error, tool calls or anything unusual (duplicate fields, numbers that are not plain integers, …) go
//! through serde, which gives the same result or error as it always did.
//!
//! Within one answer Ollama writes every delta with the same bytes around a few strings: `created_at`, and
//! `message.content` or `message.thinking`. [`ChunkParser`] remembers that layout from the last delta it parsed
//! in full; a line that repeats it is read by comparing the constant bytes and scanning only those strings.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json::{CowStr, Cursor};

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
    let mut chunk = Chunk::default();
    ChunkParser::default().parse_into(line, &mut chunk)?;
    Ok(chunk)
}

/// Parses the lines of one stream: [`parse_chunk`], plus a faster read of lines that repeat the layout of the
/// last plain delta (see the module docs).
#[derive(Debug, Default)]
pub struct ChunkParser {
    layout: Layout,
}

impl ChunkParser {
    /// [`parse_chunk`] into `chunk`, which should be [`Chunk::default`]; on error it is left in an unspecified
    /// state.
    ///
    /// A `Chunk` is a few hundred bytes, and returning it through `Option` and `Result` layers costs a `memcpy` per
    /// layer; the translator parses every line into one chunk on its stack instead.
    ///
    /// # Errors
    ///
    /// As [`parse_chunk`].
    pub fn parse_into<'a>(&mut self, line: &'a [u8], chunk: &mut Chunk<'a>) -> Result<(), serde_json::Error> {
        if self.layout.read(line, chunk).is_some() {
            return Ok(());
        }
        let mut slots = Slots::default();
        if parse_plain(line, chunk, &mut slots).is_some() {
            if is_plain_delta(chunk) && slots.has_text() {
                self.layout.learn(line, &slots);
            }
            return Ok(());
        }
        *chunk = parse_serde(line)?;
        Ok(())
    }
}

/// A string of a delta line that changes from one line to the next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The top-level `created_at` (read and ignored).
    #[default]
    CreatedAt,
    /// `message.content`.
    Content,
    /// `message.thinking`.
    Thinking,
}

/// Where the [`Slot`]s of one line are, in line order: from the opening quote to just past the closing quote.
///
/// Each slot is a field the fast path reads at most once (a duplicate sends the line to serde), so three suffice.
#[derive(Debug, Default)]
struct Slots {
    spans: [(Slot, usize, usize); 3],
    len: usize,
}

impl Slots {
    fn push(&mut self, slot: Slot, start: usize, end: usize) {
        if let Some(span) = self.spans.get_mut(self.len) {
            *span = (slot, start, end);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(Slot, usize, usize)> {
        self.spans[..self.len].iter()
    }

    /// Whether the line has answer or reasoning text: only such lines are worth remembering.
    fn has_text(&self) -> bool {
        self.iter().any(|&(slot, ..)| slot != Slot::CreatedAt)
    }
}

/// True for a chunk that carries only `message.content` and/or `message.thinking`: the chunk a line with the
/// same layout gives, whatever its slots hold.
fn is_plain_delta(chunk: &Chunk<'_>) -> bool {
    chunk.error.is_none()
        && !chunk.done
        && chunk.done_reason.is_none()
        && [
            chunk.prompt_eval_count,
            chunk.prompt_eval_cached_count,
            chunk.eval_count,
            chunk.total_duration,
            chunk.load_duration,
            chunk.prompt_eval_duration,
            chunk.eval_duration,
        ]
        .iter()
        .all(Option::is_none)
        && chunk
            .message
            .as_ref()
            .is_some_and(|message| message.tool_calls.is_none())
}

/// The layout of the last plain delta: its bytes outside the slots, and where each slot goes.
///
/// A line that has exactly these constant bytes with a valid JSON string in each slot is a valid chunk that
/// differs from the learned one only in those strings: replacing a string token by another keeps the document
/// valid, its keys the same (so no new duplicates), and changes nothing else.
#[derive(Debug, Default)]
struct Layout {
    /// The learned line without its slots.
    constant: Vec<u8>,
    /// Each slot, in line order, with the length of `constant` that comes before it.
    slots: [(Slot, usize); 3],
    /// Slots in use; 0 until a line was learned.
    len: usize,
}

impl Layout {
    fn learn(&mut self, line: &[u8], slots: &Slots) {
        self.constant.clear();
        let mut from = 0;
        for (i, &(slot, start, end)) in slots.iter().enumerate() {
            self.constant.extend_from_slice(&line[from..start]);
            self.slots[i] = (slot, self.constant.len());
            from = end;
        }
        self.constant.extend_from_slice(&line[from..]);
        self.len = slots.len;
    }

    /// `line` read by this layout into `chunk` (a default one, only written on success); `None` if it does not
    /// follow the layout or a slot is not a valid string.
    fn read<'a>(&self, line: &'a [u8], chunk: &mut Chunk<'a>) -> Option<()> {
        if self.len == 0 {
            return None;
        }
        let mut cursor = Cursor::new(line);
        let mut message = ChunkMessage::default();
        let mut from = 0;
        for &(slot, upto) in &self.slots[..self.len] {
            let constant = &self.constant[from..upto];
            if !line.get(cursor.pos..)?.starts_with(constant) {
                return None;
            }
            cursor.pos += constant.len();
            from = upto;
            // The constant ends right before the slot's opening quote.
            if line.get(cursor.pos) != Some(&b'"') {
                return None;
            }
            match slot {
                Slot::CreatedAt => drop(cursor.string()?),
                Slot::Content => message.content = Some(CowStr(cursor.string_value()?)),
                Slot::Thinking => message.thinking = Some(CowStr(cursor.string_value()?)),
            }
        }
        if line.get(cursor.pos..)? != &self.constant[from..] {
            return None;
        }
        chunk.message = Some(message);
        Some(())
    }
}

/// The fast path of [`parse_chunk`]: a chunk without error or tool calls, in one pass, into `chunk` (a default
/// one), noting where its [`Slot`]s are; `None` for anything serde must decide.
fn parse_plain<'a>(line: &'a [u8], chunk: &mut Chunk<'a>, slots: &mut Slots) -> Option<()> {
    // Strings are checked for UTF-8 only when they hold non-ASCII bytes (found while scanning them), and bytes
    // outside strings must be ASCII punctuation, digits or literals anyway.
    let mut cursor = Cursor::new(line);
    cursor.expect(b'{')?;
    // Top-level fields seen, one bit each, to leave duplicates to serde (which rejects them).
    let mut seen = 0u16;
    let mut first = true;
    while cursor.next_item(b'}', first)? {
        first = false;
        let field = match cursor.key()? {
            b"error" => 0,
            b"message" => 1,
            b"done" => 2,
            b"done_reason" => 3,
            b"prompt_eval_count" => 4,
            b"prompt_eval_cached_count" => 5,
            b"eval_count" => 6,
            b"total_duration" => 7,
            b"load_duration" => 8,
            b"prompt_eval_duration" => 9,
            b"eval_duration" => 10,
            b"created_at" => 11,
            _ => {
                cursor.skip_value()?;
                continue;
            }
        };
        let bit = 1u16 << field;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match field {
            // `error: null` is no error; any other error value is serde's (it keeps the raw value).
            0 => cursor.literal(b"null")?,
            1 => plain_message(&mut cursor, &mut chunk.message, slots)?,
            2 => {
                chunk.done = match cursor.peek()? {
                    b't' => cursor.literal(b"true").map(|()| true)?,
                    _ => cursor.literal(b"false").map(|()| false)?,
                }
            }
            3 => optional_string(&mut cursor, &mut chunk.done_reason)?,
            11 => {
                if cursor.peek()? == b'"' {
                    let start = cursor.pos;
                    cursor.string()?;
                    slots.push(Slot::CreatedAt, start, cursor.pos);
                } else {
                    cursor.skip_value()?;
                }
            }
            _ => optional_count(
                &mut cursor,
                match field {
                    4 => &mut chunk.prompt_eval_count,
                    5 => &mut chunk.prompt_eval_cached_count,
                    6 => &mut chunk.eval_count,
                    7 => &mut chunk.total_duration,
                    8 => &mut chunk.load_duration,
                    9 => &mut chunk.prompt_eval_duration,
                    _ => &mut chunk.eval_duration,
                },
            )?,
        }
    }
    cursor.end()
}

/// `message` into `slot`: `null`, or an object whose `content` and `thinking` are read; `tool_calls` other than
/// `null` are left to serde. `None`: not for the fast path.
fn plain_message<'a>(cursor: &mut Cursor<'a>, slot: &mut Option<ChunkMessage<'a>>, slots: &mut Slots) -> Option<()> {
    if cursor.peek()? == b'n' {
        return cursor.literal(b"null");
    }
    cursor.expect(b'{')?;
    let message = slot.insert(ChunkMessage::default());
    let mut seen = 0u8;
    let mut first = true;
    while cursor.next_item(b'}', first)? {
        first = false;
        let field = match cursor.key()? {
            b"content" => 0,
            b"thinking" => 1,
            b"tool_calls" => 2,
            _ => {
                cursor.skip_value()?;
                continue;
            }
        };
        if seen & 1 << field != 0 {
            return None;
        }
        seen |= 1 << field;
        match field {
            0 => noted_string(cursor, &mut message.content, slots, Slot::Content)?,
            1 => noted_string(cursor, &mut message.thinking, slots, Slot::Thinking)?,
            _ => cursor.literal(b"null")?,
        }
    }
    Some(())
}

/// A string (borrowed unless it has escapes) or `null`, into `slot`.
fn optional_string<'a>(cursor: &mut Cursor<'a>, slot: &mut Option<CowStr<'a>>) -> Option<()> {
    if cursor.peek()? == b'n' {
        return cursor.literal(b"null");
    }
    *slot = Some(CowStr(cursor.string_value()?));
    Some(())
}

/// [`optional_string`] for a [`Slot`]: a string's span is noted in `slots`.
fn noted_string<'a>(
    cursor: &mut Cursor<'a>,
    value: &mut Option<CowStr<'a>>,
    slots: &mut Slots,
    slot: Slot,
) -> Option<()> {
    // `peek` skips whitespace, so the span starts at the quote.
    if cursor.peek()? == b'"' {
        let start = cursor.pos;
        *value = Some(CowStr(cursor.string_value()?));
        slots.push(slot, start, cursor.pos);
        return Some(());
    }
    optional_string(cursor, value)
}

/// A count or duration into `slot`: a plain non-negative integer that fits in a `u64`, or `null`. Other numbers
/// (negative, fractional, exponent, too large) are left to serde.
fn optional_count(cursor: &mut Cursor<'_>, slot: &mut Option<u64>) -> Option<()> {
    if cursor.peek()? == b'n' {
        return cursor.literal(b"null");
    }
    let digits = cursor.number()?;
    let value = digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    *slot = Some(value);
    Some(())
}

/// [`parse_chunk`] with serde: the reference, used for every line the fast path leaves alone.
fn parse_serde(line: &[u8]) -> Result<Chunk<'_>, serde_json::Error> {
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn content_chunk() {
        let line = br#"{"model":"qwen3:30b","created_at":"2026-08-01T10:00:00.2Z","message":{"role":"assistant","content":"Let me read it."},"done":false}"#;
        let chunk = parse_chunk(line).unwrap();
        assert!(chunk.error.is_none());
        assert!(!chunk.done);
        let message = chunk.message.unwrap();
        assert_eq!(message.content.unwrap().as_str(), "Let me read it.");
        assert!(message.thinking.is_none());
        assert!(message.tool_calls.is_none());
    }

    #[test]
    fn strings_borrow_when_unescaped() {
        let line = br#"{"message":{"content":"plain","thinking":"a\nb"}}"#;
        let chunk = parse_chunk(line).unwrap();
        let message = chunk.message.unwrap();
        assert!(matches!(message.content.unwrap().0, Cow::Borrowed("plain")));
        assert!(matches!(message.thinking.unwrap().0, Cow::Owned(ref s) if s == "a\nb"));
    }

    #[test]
    fn thinking_chunk() {
        let line = br#"{"message":{"role":"assistant","content":"","thinking":"User wants the file."},"done":false}"#;
        let message = parse_chunk(line).unwrap().message.unwrap();
        assert_eq!(message.thinking.unwrap().as_str(), "User wants the file.");
        assert_eq!(message.content.unwrap().as_str(), "");
    }

    #[test]
    fn tool_call_chunk_keeps_argument_order() {
        let line = br#"{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_k3j9x0qa","function":{"index":0,"name":"Read","arguments":{"z":1,"file_path":"/src/a.ts"}}},{"function":{"index":1,"name":"Bash","arguments":"{\"command\":\"ls\"}"}}]},"done":false}"#;
        let calls = parse_chunk(line).unwrap().message.unwrap().tool_calls.unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id.as_ref().unwrap().as_str(), "call_k3j9x0qa");
        let function = calls[0].function.as_ref().unwrap();
        assert_eq!(function.name.as_ref().unwrap().as_str(), "Read");
        assert_eq!(function.index, Some(0));
        let args = function.arguments.as_ref().unwrap();
        assert_eq!(
            serde_json::to_string(args).unwrap(),
            r#"{"z":1,"file_path":"/src/a.ts"}"#
        );
        assert!(calls[1].id.is_none());
        assert_eq!(
            calls[1].function.as_ref().unwrap().arguments,
            Some(json!("{\"command\":\"ls\"}"))
        );
    }

    #[test]
    fn done_chunk_with_metrics() {
        let line = br#"{"model":"m","created_at":"t","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":1043000000,"load_duration":21000000,"prompt_eval_count":18234,"prompt_eval_cached_count":18000,"prompt_eval_duration":512000000,"eval_count":57,"eval_duration":498000000}"#;
        let chunk = parse_chunk(line).unwrap();
        assert!(chunk.done);
        assert_eq!(chunk.done_reason.unwrap().as_str(), "stop");
        assert_eq!(chunk.prompt_eval_count, Some(18234));
        assert_eq!(chunk.prompt_eval_cached_count, Some(18000));
        assert_eq!(chunk.eval_count, Some(57));
        assert_eq!(chunk.total_duration, Some(1_043_000_000));
        assert_eq!(chunk.load_duration, Some(21_000_000));
        assert_eq!(chunk.prompt_eval_duration, Some(512_000_000));
        assert_eq!(chunk.eval_duration, Some(498_000_000));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let line = br#"{"remote_model":"x","logprobs":[{"token":"a","logprob":-0.1}],"_debug_info":{},"message":{"content":"a","images":null,"tool_name":"t"},"done":false}"#;
        assert_eq!(
            parse_chunk(line).unwrap().message.unwrap().content.unwrap().as_str(),
            "a"
        );
    }

    #[test]
    fn error_lines() {
        let chunk = parse_chunk(br#"{"error":"model runner has unexpectedly stopped"}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), "model runner has unexpectedly stopped");
        let chunk = parse_chunk(br#"{"error":"quote \" and\nnewline"}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), "quote \" and\nnewline");
        let chunk = parse_chunk(br#"{"error":{"message":"nested","code":500}}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), "nested");
        let chunk = parse_chunk(br#"{"error":{"code":500}}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), r#"{"code":500}"#);
        let chunk = parse_chunk(br#"{"error":42}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), "42");
    }

    #[test]
    fn error_is_found_even_when_the_rest_is_odd() {
        // `message` as a string and `done` as a string would fail the full parse.
        let chunk = parse_chunk(br#"{"message":"x","done":"yes","error":"boom"}"#).unwrap();
        assert_eq!(chunk.error.unwrap().text(), "boom");
        assert!(chunk.message.is_none());
    }

    #[test]
    fn null_error_is_no_error() {
        let chunk = parse_chunk(br#"{"error":null,"message":{"content":"x"},"done":false}"#).unwrap();
        assert!(chunk.error.is_none());
        assert!(parse_chunk(br#"{"error":null,"done":"x"}"#).is_err());
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            &b""[..],
            b"not json",
            b"{\"message\":",
            b"[1,2]",
            b"[null,{\"content\":\"x\"},true]",
            b"  7",
            b"\"s\"",
            b"{\"done\":\"yes\"}",
            b"{\"message\":{\"content\":\"\xff\"}}",
            b"\xff\xfe",
        ] {
            assert!(parse_chunk(line).is_err(), "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// Chunk lines as Ollama writes them, with now and then an odd field: duplicated, null, of the wrong type, a
    /// non-integer count, an error, tool calls, unknown fields.
    fn chunk_line() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof!["[a-z ]{0,12}", any::<String>(), "[ a\"\\\\/\n\t\u{1}é😀]{0,8}"];
        let value = prop_oneof![
            3 => text.clone().prop_map(|s| json!(s)),
            1 => Just(json!(null)),
            1 => Just(json!(true)),
            1 => Just(json!(false)),
            1 => prop_oneof![Just(json!(0)), Just(json!(18234)), Just(json!(u64::MAX)), Just(json!(-1)), Just(json!(1.5)), Just(json!(1e30))],
            1 => Just(json!({"content": "x"})),
            1 => Just(json!([{"function": {"name": "Read", "arguments": {"a": 1}}}])),
        ];
        let key = prop_oneof![
            Just("model"),
            Just("created_at"),
            Just("message"),
            Just("done"),
            Just("done_reason"),
            Just("error"),
            Just("prompt_eval_count"),
            Just("eval_count"),
            Just("total_duration"),
            Just("eval_duration"),
            Just("x"),
        ];
        let message_key = prop_oneof![
            Just("role"),
            Just("content"),
            Just("thinking"),
            Just("tool_calls"),
            Just("images")
        ];
        let message = proptest::collection::vec((message_key, value.clone()), 0..4);
        let members = proptest::collection::vec((key, value, message, any::<bool>()), 0..7);
        (members, any::<bool>()).prop_map(|(members, pretty)| {
            use std::fmt::Write;
            let mut line = String::from("{");
            for (i, (key, value, message, as_message)) in members.into_iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let value = if key == "message" && as_message {
                    let fields: Vec<String> = message.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                } else {
                    value.to_string()
                };
                write!(line, "{key:?}:{value}").unwrap();
                if pretty {
                    line.push_str(" \n");
                }
            }
            line.push('}');
            line.into_bytes()
        })
    }

    /// Delta lines as Ollama writes them within one answer: the same fields around a changing `created_at`,
    /// `content` and `thinking`, which may be absent, null, empty or any text.
    fn delta_line() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof![
            3 => "[a-z ]{0,12}".prop_map(|s| json!(s)),
            2 => any::<String>().prop_map(|s| json!(s)),
            1 => "[ a\"\\\\/\n\t\u{1}é😀]{0,8}".prop_map(|s| json!(s)),
            1 => Just(json!(null)),
            1 => Just(json!(7)),
        ];
        let created_at = prop_oneof![
            Just("2026-11-24T10:00:00.1208Z"),
            Just("2026-11-24T10:00:00.120814999Z"),
            Just("t\\u00e9")
        ];
        (
            created_at,
            proptest::option::of(text.clone()),
            proptest::option::of(text),
            any::<bool>(),
        )
            .prop_map(|(created_at, content, thinking, done)| {
                use std::fmt::Write;
                let mut line =
                    format!(r#"{{"model":"qwen3:30b","created_at":"{created_at}","message":{{"role":"assistant""#);
                for (key, value) in [("content", content), ("thinking", thinking)] {
                    if let Some(value) = value {
                        write!(line, ",{key:?}:{value}").unwrap();
                    }
                }
                write!(line, r#"}},"done":{done}}}"#).unwrap();
                line.into_bytes()
            })
    }

    #[test]
    fn later_deltas_are_read_by_layout() {
        let mut parser = ChunkParser::default();
        let first = br#"{"model":"m","created_at":"2026-11-24T10:00:00.1Z","message":{"role":"assistant","content":"Hi"},"done":false}"#;
        parser.parse_into(first, &mut Chunk::default()).unwrap();
        let next = br#"{"model":"m","created_at":"2026-11-24T10:00:00.25Z","message":{"role":"assistant","content":" the\n\u00e9"},"done":false}"#;
        let mut chunk = Chunk::default();
        assert!(parser.layout.read(next, &mut chunk).is_some());
        assert_eq!(chunk.message.unwrap().content.unwrap().as_str(), " the\né");
        // The done chunk does not follow the layout; it is parsed in full and not learned.
        let done =
            br#"{"model":"m","created_at":"t","message":{"role":"assistant","content":""},"done":true,"eval_count":3}"#;
        assert!(parser.layout.read(done, &mut Chunk::default()).is_none());
        let mut chunk = Chunk::default();
        parser.parse_into(done, &mut chunk).unwrap();
        assert!(chunk.done);
        assert!(parser.layout.read(next, &mut Chunk::default()).is_some());
    }

    /// Every outcome of [`parse_chunk`] (chunk or error message) is serde's.
    fn assert_same_as_serde(line: &[u8]) -> Result<(), TestCaseError> {
        let fast = parse_chunk(line)
            .map(|chunk| format!("{chunk:?}"))
            .map_err(|err| err.to_string());
        let reference = parse_serde(line)
            .map(|chunk| format!("{chunk:?}"))
            .map_err(|err| err.to_string());
        prop_assert_eq!(fast, reference, "{}", String::from_utf8_lossy(line));
        Ok(())
    }

    proptest! {
        #[test]
        fn chunks_match_serde(line in chunk_line()) {
            assert_same_as_serde(&line)?;
        }

        #[test]
        fn mutated_chunks_match_serde(line in chunk_line(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4)) {
            let mut line = line;
            for (at, byte, op) in edits {
                let at = at % (line.len() + 1);
                match op {
                    0 if at < line.len() => line[at] = byte,
                    1 if at < line.len() => { line.remove(at); }
                    _ => line.insert(at, byte),
                }
            }
            assert_same_as_serde(&line)?;
        }

        /// The usual chunks take the fast path.
        #[test]
        fn plain_chunks_take_the_fast_path(content in any::<String>(), done in any::<bool>(), count in any::<u64>()) {
            let line = serde_json::to_vec(&json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": content},
                "done": done, "done_reason": "stop", "eval_count": count, "prompt_eval_count": null})).unwrap();
            prop_assert!(parse_plain(&line, &mut Chunk::default(), &mut Slots::default()).is_some());
        }

        /// A parser that has learned a delta's layout reads every later line as serde does: lines of the same
        /// layout (with any strings in the slots), and the same lines with a few bytes changed.
        #[test]
        fn learned_layouts_match_serde(
            first in delta_line(),
            next in delta_line(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..4u8), 0..3),
        ) {
            let mut parser = ChunkParser::default();
            let _ = parser.parse_into(&first, &mut Chunk::default());
            let mut line = next;
            for (at, byte, op) in edits {
                let at = at % (line.len() + 1);
                match op {
                    0 if at < line.len() => line[at] = byte,
                    1 if at < line.len() => { line.remove(at); }
                    2 => line.insert(at, byte),
                    _ => line.insert(at, b' '),
                }
            }
            let mut chunk = Chunk::default();
            let ours = parser.parse_into(&line, &mut chunk).map(|()| format!("{chunk:?}")).map_err(|err| err.to_string());
            let reference = parse_serde(&line).map(|chunk| format!("{chunk:?}")).map_err(|err| err.to_string());
            prop_assert_eq!(ours, reference, "{}", String::from_utf8_lossy(&line));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_chunk(&bytes);
        }

        #[test]
        fn content_round_trips(content in any::<String>(), thinking in any::<String>()) {
            let line = serde_json::to_vec(&json!({"message": {"content": content, "thinking": thinking}, "done": false})).unwrap();
            let chunk = parse_chunk(&line).unwrap();
            let message = chunk.message.unwrap();
            let (got_content, got_thinking) = (message.content.unwrap(), message.thinking.unwrap());
            prop_assert_eq!(got_content.as_str(), content.as_str());
            prop_assert_eq!(got_thinking.as_str(), thinking.as_str());
        }
    }
}
