//! Tool-call argument healing: turn whatever a model produced as "arguments" into a JSON object.
//!
//! Anthropic's `tool_use.input` must be an object, and so must Ollama's `tool_calls[].function.arguments` when the
//! call is replayed in history (a string gives HTTP 400). Ollama normally hands us an object,
//! but older versions and some models produce a JSON-encoded *string* instead, sometimes encoded twice, or with
//! backslash-escaped quotes, or wrapped in a Markdown code fence. The steps, in order:
//!
//! - (a) already an object → unchanged ([`HealKind::Unchanged`]);
//! - (b) a string whose text is a JSON object → parsed ([`HealKind::ParsedString`]);
//! - (c) a string that needs clean-up first: a JSON string literal holding object text (`"{\"a\":1}"`),
//!   backslash-escaped quotes without the outer quotes (`{\"a\": 1}`), surrounding whitespace, or a
//!   ` ```json ` fence → unescaped and parsed ([`HealKind::Unescaped`]); up to [`MAX_UNWRAP`] layers;
//! - (d) anything else → `{"raw": <original text>}` ([`HealKind::Raw`]), so nothing the model said is lost and the
//!   tool sees a validation error it can report back.
//!
//! Two inputs mean "no arguments" and become `{}`: JSON `null` (a Go nil map) counts as [`HealKind::Unchanged`],
//! and an empty or whitespace-only string (or the text `null`) as [`HealKind::ParsedString`]: models emit these
//! for zero-parameter tools, and `{"raw": ""}` would make such a call fail for no reason.
//!
//! Nothing here panics: parsing goes through `serde_json`, whose recursion limit turns deep nesting into an error.
//! Key order is preserved (the crate enables `serde_json/preserve_order`), which Ollama's KV cache needs.

use serde_json::{Map, Value};

/// How many layers of string encoding (c) unwraps before giving up.
pub const MAX_UNWRAP: usize = 4;

/// Which healing step produced the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealKind {
    /// (a) The arguments already were an object (or `null`, meaning none).
    Unchanged,
    /// (b) A string holding valid JSON object text (or an empty string, meaning none).
    ParsedString,
    /// (c) A double-encoded, backslash-escaped or fenced string that needed clean-up before parsing.
    Unescaped,
    /// (d) Unrecoverable: the original is kept under the key `"raw"`.
    Raw,
}

impl HealKind {
    /// Every kind, in step order (for counters indexed by [`HealKind::index`]).
    pub const ALL: [HealKind; 4] = [Self::Unchanged, Self::ParsedString, Self::Unescaped, Self::Raw];

    /// Stable `snake_case` name, as exposed to Python: `unchanged`, `parsed_string`, `unescaped`, `raw`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::ParsedString => "parsed_string",
            Self::Unescaped => "unescaped",
            Self::Raw => "raw",
        }
    }

    /// Position in [`HealKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Heal tool-call arguments given as any JSON value.
///
/// Objects pass through, strings go through [`heal_str`], `null` becomes `{}`, and numbers, booleans and arrays
/// become `{"raw": <their JSON text>}`.
pub fn heal_value(value: Value) -> (Map<String, Value>, HealKind) {
    match value {
        Value::Object(map) => (map, HealKind::Unchanged),
        Value::Null => (Map::new(), HealKind::Unchanged),
        Value::String(text) => heal_str(&text),
        other => (raw(other.to_string()), HealKind::Raw),
    }
}

/// Heal tool-call arguments given as text. See the module docs for the steps.
pub fn heal_str(text: &str) -> (Map<String, Value>, HealKind) {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => return (map, HealKind::ParsedString),
        Ok(Value::Null) => return (Map::new(), HealKind::ParsedString),
        // A JSON string literal: the arguments were encoded twice.
        Ok(Value::String(inner)) => {
            return match unwrap(&inner, 1) {
                Some(map) => (map, HealKind::Unescaped),
                None => (raw(text.to_owned()), HealKind::Raw),
            };
        }
        // A number, boolean or array is valid JSON but not an argument object: nothing to clean up.
        Ok(_) => return (raw(text.to_owned()), HealKind::Raw),
        Err(_) => {}
    }
    if text.trim().is_empty() {
        return (Map::new(), HealKind::ParsedString);
    }
    match unwrap(text, 0) {
        Some(map) => (map, HealKind::Unescaped),
        None => (raw(text.to_owned()), HealKind::Raw),
    }
}

/// Heal tool-call arguments given as raw bytes: UTF-8 text goes through [`heal_str`]; anything else cannot be
/// JSON, so it is kept (lossily decoded) under `"raw"`.
pub fn heal_bytes(bytes: &[u8]) -> (Map<String, Value>, HealKind) {
    match std::str::from_utf8(bytes) {
        Ok(text) => heal_str(text),
        Err(_) => (raw(String::from_utf8_lossy(bytes).into_owned()), HealKind::Raw),
    }
}

/// `{"raw": text}`.
fn raw(text: String) -> Map<String, Value> {
    let mut map = Map::with_capacity(1);
    map.insert("raw".to_owned(), Value::String(text));
    map
}

/// Step (c): trim, strip a code fence, parse; unescape and retry for backslash-escaped text.
fn unwrap(text: &str, depth: usize) -> Option<Map<String, Value>> {
    if depth > MAX_UNWRAP {
        return None;
    }
    let text = strip_fence(text.trim());
    if text.is_empty() {
        return Some(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => return Some(map),
        Ok(Value::Null) => return Some(Map::new()),
        Ok(Value::String(inner)) => return unwrap(&inner, depth + 1),
        Ok(_) => return None,
        Err(_) => {}
    }
    if !text.contains('\\') {
        return None;
    }
    // `"{\"a\":1}"` that is not a valid JSON string (raw newlines, say), or `{\"a\": 1}` without outer quotes.
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.is_empty())
        .unwrap_or(text);
    unwrap(&unescape(inner), depth + 1)
}

/// Remove a Markdown code fence: ```` ```json\n…\n``` ````, with or without the language tag or newlines.
fn strip_fence(text: &str) -> &str {
    let Some(body) = text.strip_prefix("```") else {
        return text;
    };
    // An optional language tag such as `json` or `JSON`.
    let body = body.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    let body = body.strip_suffix("```").unwrap_or(body);
    body.trim()
}

/// Decode JSON backslash escapes in `text`, leniently: unknown or malformed escapes are kept as written, a lone
/// surrogate becomes U+FFFD, and unescaped quotes or line breaks are left alone.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&next) = chars.peek() else {
            out.push('\\');
            break;
        };
        let simple = match next {
            '"' => Some('"'),
            '\\' => Some('\\'),
            '/' => Some('/'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            _ => None,
        };
        if let Some(decoded) = simple {
            chars.next();
            out.push(decoded);
        } else if next == 'u' {
            let mut lookahead = chars.clone();
            lookahead.next();
            match read_hex4(&mut lookahead) {
                Some(unit) => {
                    chars = lookahead;
                    push_utf16_unit(&mut out, unit, &mut chars);
                }
                None => out.push('\\'),
            }
        } else {
            out.push('\\');
        }
    }
    out
}

fn read_hex4(chars: &mut impl Iterator<Item = char>) -> Option<u16> {
    let mut value: u16 = 0;
    for _ in 0..4 {
        let digit = chars.next()?.to_digit(16)?;
        value = value * 16 + u16::try_from(digit).ok()?;
    }
    Some(value)
}

/// Push one `\uXXXX` unit, pairing a high surrogate with a following `\uDCXX` escape when there is one.
fn push_utf16_unit(out: &mut String, unit: u16, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    if (0xD800..0xDC00).contains(&unit) {
        let mut lookahead = chars.clone();
        if lookahead.next() == Some('\\')
            && lookahead.next() == Some('u')
            && let Some(low) = read_hex4(&mut lookahead)
            && (0xDC00..0xE000).contains(&low)
        {
            *chars = lookahead;
            let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            return;
        }
    }
    out.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
}

#[cfg(test)]
mod tests;
