//! The token estimator behind `/v1/messages/count_tokens` and the `message_start` input estimate.
//!
//! Ollama has no tokenize endpoint, so the proxy estimates. The rule is deliberately simple
//! and fast: split text on Unicode whitespace; a word of up to 4 characters is 1 token, a longer word is
//! `ceil(chars / 4)`. Prose lands near real BPE counts; code and JSON (long runs without spaces) count about
//! chars/4, which is what tokenizers do with them too.
//!
//! [`count_request`] adds up every part of a Messages request body that the model reads:
//!
//! | part | counted as |
//! |---|---|
//! | `system` (string or text blocks) | its text |
//! | message content (string or blocks, any role, including `role:"system"` entries) | per block, below |
//! | `text` / `thinking` | `text` / `thinking` |
//! | `redacted_thinking` | its opaque `data` as one word: `ceil(len / 4)`, i.e. bytes ÷ 4 |
//! | `tool_use` | `name` + `input` as compact JSON |
//! | `tool_result` | its `content` (string or nested blocks, images included) |
//! | `image` | [`IMAGE_TOKENS`] |
//! | `document` | `title` + `context` + the source: text source → its text, `content` source → its blocks, any other source (PDF, URL, file) → [`DOCUMENT_TOKENS`] |
//! | any other block type, or a block whose known fields have unexpected types | the block as compact JSON |
//! | each tool definition | `name` + `description` + `input_schema` as compact JSON |
//!
//! "As compact JSON" means counting the JSON text as if re-serialised without insignificant whitespace; it is
//! done by scanning the raw input text ([`count_json`]), never by building a copy.
//!
//! Unknown fields are ignored and unknown block types are never an error. What is an error
//! ([`CoreError::InvalidJson`]): invalid JSON, a body that is not an object, and containers of the wrong kind at
//! the request level (`messages`/`tools` not arrays, a message or tool that is not an object, a tool `name` or
//! `description` that is not a string).
//!
//! # How it runs
//!
//! The body is read once into borrowed serde structs (strings without escapes are not copied); content blocks are
//! kept as raw JSON and read a second time as a [`Block`], so a block of an unknown type or with odd fields can be
//! counted as the JSON it is. Text goes through [`count_text`], JSON parts through [`count_json`], which applies the
//! same word rule while scanning the JSON text. Counting the benchmark's 200 KB Claude Code request takes well under
//! a millisecond (docs/PERFORMANCE.md, group 4).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::errors::CoreError;
use crate::json::{self, CowStr};

/// Tokens charged for one image, whatever its size.
///
/// Anthropic resizes images so the long edge is at most 1568 px, about 1.15 megapixels, and bills
/// `width × height / 750` tokens: roughly 1600 tokens for an image at that cap. Decoding the image to get its real
/// size would cost far more than the estimate is worth, so every image is charged the maximum.
pub const IMAGE_TOKENS: usize = 1600;

/// Tokens charged for a `document` block whose text is not in the request (base64 PDF, URL or file source).
///
/// Anthropic counts each PDF page as its text (roughly 1500–3000 tokens) plus a page image; the page count is
/// unknown without parsing the PDF, so a flat 3000 tokens (about one dense page) is used.
pub const DOCUMENT_TOKENS: usize = 3000;

/// Nesting depth (`tool_result` inside `tool_result`, …) after which blocks are counted as plain JSON instead of
/// being walked, so hostile input cannot exhaust the stack.
const MAX_BLOCK_DEPTH: usize = 32;

// ---------------------------------------------------------------------------------------------------------------
// The word counter
// ---------------------------------------------------------------------------------------------------------------

/// Estimate the tokens in `text`: per whitespace-separated word, `ceil(chars / 4)` (so 1 for up to 4 chars).
///
/// `"hello world"` → 4, `"abcdefghij"` → 3, `""` → 0. Characters are Unicode scalar values and whitespace is
/// `char::is_whitespace`.
pub fn count_text(text: &str) -> usize {
    let mut counter = Counter::default();
    counter.text(text.as_bytes());
    counter.total()
}

/// What a byte of UTF-8 text is to the word counter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    /// Starts a character that is not whitespace.
    Char,
    /// ASCII whitespace.
    Space,
    /// A UTF-8 continuation byte: part of the character before it.
    Continuation,
    /// Starts a character that may be non-ASCII whitespace (U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028,
    /// U+2029, U+202F, U+205F, U+3000 all start with one of these bytes).
    MaybeSpace,
}

/// [`ByteClass`] of every byte value, so the counter's loop is one table look-up per byte.
const BYTE_CLASSES: [ByteClass; 256] = {
    let mut classes = [ByteClass::Char; 256];
    let mut byte = 0;
    while byte < 256 {
        classes[byte] = match byte {
            0x09..=0x0D | 0x20 => ByteClass::Space,
            0x80..=0xBF => ByteClass::Continuation,
            0xC2 | 0xE1..=0xE3 => ByteClass::MaybeSpace,
            _ => ByteClass::Char,
        };
        byte += 1;
    }
    classes
};

/// The running word rule: a word of `n` characters is `ceil(n / 4)` tokens. The state carries over between calls,
/// as [`count_json`] feeds a string piece by piece (escapes between the pieces).
#[derive(Debug, Default)]
struct Counter {
    /// Tokens of the words already ended.
    tokens: usize,
    /// Characters of the current word so far.
    word: usize,
}

impl Counter {
    /// Add `n` characters to the current word.
    #[inline]
    fn chars(&mut self, n: usize) {
        self.word += n;
    }

    /// End the current word.
    fn separator(&mut self) {
        self.tokens += self.word.div_ceil(4);
        self.word = 0;
    }

    /// The tokens counted so far, the current word included.
    fn total(&self) -> usize {
        self.tokens + self.word.div_ceil(4)
    }

    /// Count UTF-8 text (split characters at either end are harmless: continuation bytes count as nothing).
    ///
    /// Eight bytes at a time while they are ASCII: their whitespace comes out as one bit per byte, so the loop
    /// works per word rather than per byte. Other bytes go one at a time through [`BYTE_CLASSES`].
    fn text(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        let mut offset = 0;
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if word & HIGH_BITS == 0 {
                self.ascii_chunk(ascii_whitespace(word));
            } else {
                self.bytes(bytes, offset, offset + 8);
            }
            offset += 8;
        }
        self.bytes(bytes, offset, bytes.len());
    }

    /// Eight ASCII bytes whose whitespace is `spaces` (the high bit of each whitespace byte).
    fn ascii_chunk(&mut self, mut spaces: u64) {
        let mut start = 0;
        while spaces != 0 {
            let at = spaces.trailing_zeros() as usize / 8;
            self.chars(at - start);
            self.separator();
            start = at + 1;
            spaces &= spaces - 1;
        }
        self.chars(8 - start);
    }

    /// `bytes[from..to]`, one byte at a time (a character may continue past `to`: its bytes count as nothing).
    fn bytes(&mut self, bytes: &[u8], from: usize, to: usize) {
        for i in from..to {
            match BYTE_CLASSES[usize::from(bytes[i])] {
                ByteClass::Char => self.word += 1,
                ByteClass::Continuation => {}
                ByteClass::MaybeSpace if unicode_space_len(bytes, i) == 0 => self.word += 1,
                ByteClass::Space | ByteClass::MaybeSpace => self.separator(),
            }
        }
    }
}

/// The high bit of each of 8 bytes in a `u64`.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The whitespace bytes (`\t` … `\r` and space) among 8 ASCII bytes, as the high bit of each.
///
/// Per byte, without carries between bytes (every byte is below 0x80): `x + 0x77` has its high bit set from 0x09
/// on and `x + 0x72` from 0x0E on, which brackets `\t` … `\r`; `(y & 0x7F) + 0x7F` sets it for every `y` but 0.
const fn ascii_whitespace(word: u64) -> u64 {
    const fn each(byte: u8) -> u64 {
        u64::from_le_bytes([byte; 8])
    }
    let controls = word.wrapping_add(each(0x77)) & !word.wrapping_add(each(0x72));
    let not_space = word ^ each(b' ');
    let spaces = !((not_space & each(0x7F)).wrapping_add(each(0x7F)) | not_space);
    (controls | spaces) & HIGH_BITS
}

/// The length of the whitespace character starting at `bytes[i]` (a UTF-8 lead byte), or 0 when it is not
/// whitespace. Byte patterns of every non-ASCII `White_Space` character: U+0085, U+00A0, U+1680, U+2000–U+200A,
/// U+2028, U+2029, U+202F, U+205F, U+3000.
#[inline]
fn unicode_space_len(bytes: &[u8], i: usize) -> usize {
    let b1 = bytes.get(i + 1).copied().unwrap_or(0);
    let b2 = bytes.get(i + 2).copied().unwrap_or(0);
    match bytes[i] {
        0xC2 if b1 == 0x85 || b1 == 0xA0 => 2,
        0xE1 if b1 == 0x9A && b2 == 0x80 => 3,
        0xE2 if (b1 == 0x80 && (b2 <= 0x8A || b2 == 0xA8 || b2 == 0xA9 || b2 == 0xAF))
            || (b1 == 0x81 && b2 == 0x9F) =>
        {
            3
        }
        0xE3 if b1 == 0x80 && b2 == 0x80 => 3,
        _ => 0,
    }
}

/// Estimate the tokens of a JSON document as if it were serialised compactly.
///
/// The result equals `count_text` of the document re-serialised by `serde_json` (no insignificant whitespace,
/// non-ASCII characters raw), computed by scanning the text as it is, without building that copy:
/// - whitespace outside strings is skipped without ending a word (compact JSON has none);
/// - whitespace inside strings separates words;
/// - escapes count as the serialiser would write them: `\n`, `\"` etc. stay two characters, `\/` becomes `/`,
///   and `\uXXXX` becomes the character itself (so `\u00e9` is one character and `\u0020` a separator), except
///   for control characters and `"`/`\`, which stay escaped; a lone surrogate counts as U+FFFD.
///
/// The input should be valid JSON text (e.g. a [`RawValue`]); anything else still gives a number, never a panic.
pub fn count_json(json: &str) -> usize {
    let bytes = json.as_bytes();
    let mut counter = Counter::default();
    let mut i = 0;
    while i < bytes.len() {
        // Outside strings: every byte but whitespace is one character of the compact form.
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => i = count_json_string(bytes, i + 1, &mut counter),
            _ => counter.chars(1),
        }
        i += 1;
    }
    counter.total()
}

/// Count the string whose contents start at `bytes[start]`, with its quotes; returns the index of its closing
/// quote (or the end of the input).
fn count_json_string(bytes: &[u8], start: usize, counter: &mut Counter) -> usize {
    counter.chars(1);
    let mut i = start;
    while let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[i..]) {
        counter.text(&bytes[i..i + offset]);
        i += offset;
        if bytes[i] == b'"' {
            counter.chars(1);
            return i;
        }
        i += count_escape(bytes, i, counter);
    }
    counter.text(&bytes[i..]);
    bytes.len()
}

/// Account for the escape starting at `bytes[i]` (a backslash) as serialised by `serde_json`; returns its length.
/// Malformed escapes count as written and a lone surrogate as U+FFFD.
fn count_escape(bytes: &[u8], i: usize, counter: &mut Counter) -> usize {
    match bytes.get(i + 1) {
        None => {
            counter.chars(1);
            1
        }
        Some(b'/') => {
            counter.chars(1);
            2
        }
        Some(b'u') => {
            let Some(unit) = json::hex4(bytes, i + 2) else {
                counter.chars(2);
                return 2;
            };
            let (code, len) = if (0xD800..0xDC00).contains(&unit)
                && bytes.get(i + 6) == Some(&b'\\')
                && bytes.get(i + 7) == Some(&b'u')
                && let Some(low) = json::hex4(bytes, i + 8)
                && (0xDC00..0xE000).contains(&low)
            {
                (0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00), 12)
            } else {
                (unit, 6)
            };
            match char::from_u32(code).unwrap_or('\u{FFFD}') {
                '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => counter.chars(2),
                c if u32::from(c) < 0x20 => counter.chars(6),
                c if c.is_whitespace() => counter.separator(),
                _ => counter.chars(1),
            }
            len
        }
        Some(_) => {
            counter.chars(2);
            2
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------------------------------------------

/// Estimate the prompt tokens of an Anthropic `/v1/messages` or `/v1/messages/count_tokens` request body.
///
/// See the module docs for what is counted.
///
/// # Errors
///
/// [`CoreError::InvalidJson`] for invalid JSON, a body that is not an object, or request-level containers of
/// the wrong kind (see the module docs).
pub fn count_request(body: &[u8]) -> Result<usize, CoreError> {
    // serde would happily read a struct from a JSON array (positionally); a request must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<IgnoredAny>(body)?;
        return Err(CoreError::InvalidJson(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    let request: Request<'_> = serde_json::from_slice(body)?;
    let mut total = request.system.as_ref().map_or(0, |content| content.count(0));
    for Object(message) in request.messages.iter().flatten() {
        total += message.content.as_ref().map_or(0, |content| content.count(0));
    }
    for Object(tool) in request.tools.iter().flatten() {
        total += tokens_of(tool.name) + tokens_of(tool.description);
        total += tool.input_schema.map_or(0, |schema| count_json(schema.get()));
    }
    Ok(total)
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    system: Option<Content<'a>>,
    #[serde(borrow)]
    messages: Option<Vec<Object<Message<'a>>>>,
    #[serde(borrow)]
    tools: Option<Vec<Object<Tool<'a>>>>,
}

/// A message or tool, which must be a JSON object: serde's derived structs would also read an array, by position.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("each message and tool to be a JSON object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    name: Option<Tokens>,
    description: Option<Tokens>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

/// A string field, read as its token count: the text is counted where serde hands it over (borrowed from the body,
/// or unescaped into serde's scratch buffer), so it is never copied.
#[derive(Clone, Copy)]
struct Tokens(usize);

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TokensVisitor;

        impl Visitor<'_> for TokensVisitor {
            type Value = Tokens;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Tokens(count_text(v)))
            }
        }

        deserializer.deserialize_str(TokensVisitor)
    }
}

fn tokens_of(field: Option<Tokens>) -> usize {
    field.map_or(0, |Tokens(tokens)| tokens)
}

/// A `content` (or `system`) value: a string, or an array of blocks kept raw so that a block of an unknown type
/// can be counted as the JSON it is.
enum Content<'a> {
    Text(usize),
    Blocks(Vec<&'a RawValue>),
    /// A number, boolean, object or null: not valid content, counted as nothing.
    Other,
}

impl Content<'_> {
    fn count(&self, depth: usize) -> usize {
        match self {
            Content::Text(tokens) => *tokens,
            Content::Blocks(blocks) => blocks.iter().map(|raw| count_block(raw, depth)).sum(),
            Content::Other => 0,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
            type Value = Content<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(count_text(v)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(block) = seq.next_element::<&'de RawValue>()? {
                    blocks.push(block);
                }
                Ok(Content::Blocks(blocks))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Content::Other)
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Content::Other)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Content::Other)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Content::Other)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Content::Other)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Other)
            }
        }

        deserializer.deserialize_any(ContentVisitor(std::marker::PhantomData))
    }
}

/// The fields of any content block that the counter reads; everything else is ignored.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<CowStr<'a>>,
    text: Option<Tokens>,
    thinking: Option<Tokens>,
    data: Option<Tokens>,
    name: Option<Tokens>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    title: Option<Tokens>,
    context: Option<Tokens>,
}

/// A `document` (or `image`) source.
#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<CowStr<'a>>,
    data: Option<Tokens>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

/// Count one content block given as raw JSON.
fn count_block(raw: &RawValue, depth: usize) -> usize {
    let json = raw.get();
    // Only objects are blocks (serde would read a struct from an array positionally).
    if depth >= MAX_BLOCK_DEPTH || !json.starts_with('{') {
        return count_json(json);
    }
    let Ok(block) = serde_json::from_str::<Block<'_>>(json) else {
        // A known field with an unexpected type: count what is there.
        return count_json(json);
    };
    match block.kind.as_ref().map(CowStr::as_str) {
        Some("text") => tokens_of(block.text),
        Some("thinking") => tokens_of(block.thinking),
        Some("redacted_thinking") => tokens_of(block.data),
        Some("tool_use") => tokens_of(block.name) + block.input.map_or(0, |input| count_json(input.get())),
        Some("tool_result") => block.content.as_ref().map_or(0, |content| content.count(depth + 1)),
        Some("image") => IMAGE_TOKENS,
        Some("document") => {
            let source = match &block.source {
                Some(source) => match source.kind.as_ref().map(CowStr::as_str) {
                    Some("text") => tokens_of(source.data),
                    Some("content") => source.content.as_ref().map_or(0, |content| content.count(depth + 1)),
                    _ => DOCUMENT_TOKENS,
                },
                None => DOCUMENT_TOKENS,
            };
            tokens_of(block.title) + tokens_of(block.context) + source
        }
        _ => count_json(json),
    }
}

#[cfg(test)]
mod tests;
