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
//! A request is counted in one pass over its bytes, without allocating: a hand-written walker (`json::Cursor`)
//! validates the JSON as it goes, follows the few fields that matter and feeds string contents straight into the
//! word counter, decoding escapes on the fly. Blocks are read in one pass even though `type` may come after the
//! text: until the type is known, each candidate field is counted on its own and the block's total is chosen at
//! its closing brace. Only a block that ends up counted as compact JSON (unknown type, odd field) is read twice.
//!
//! Strings are scanned 64 bytes at a time with SIMD compares (through the `wide` crate: SSE2, NEON, or plain
//! code elsewhere), each window becoming bit masks of one bit per byte: separator, character start, or neither
//! (transparent: UTF-8 continuation bytes). An escape only changes bits, never moves them: its first byte becomes
//! the character it makes and the rest are transparent, or all of them are separators when it makes whitespace
//! (`\n` is two separator bits, `\"` a character and a transparent byte). A window whose escapes are all
//! two-byte ones looks each up independently; `\u`, escaped backslashes and broken escapes are taken in order.
//! UTF-8 is validated from the same masks, and short plain strings (keys, names, schema words) take an 8-byte
//! shortcut. Runs of non-separator bits are words, and a word of `n` characters gets a token at its 1st, 5th,
//! 9th, … character, so tokens are counted with a few additions and one popcount per window instead of a branch
//! per word (see `Counter::window`). [`count_text`] uses the same counter.
//!
//! The walker is exact on the requests it accepts and gives up on anything unusual: invalid JSON, but also valid
//! JSON it does not bother with (duplicate fields, escaped field names, lone surrogates, objects or numbers as
//! `content`, messages given as arrays, deep nesting). Those bodies go through the original serde implementation,
//! which stays the reference: same counts, same error messages.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::errors::CoreError;
use crate::json::{self, CowStr, Cursor, SWAR_HIGH, SWAR_ONES, Window, below, deeper, swar_string_stops, unescape_at};

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

/// Bit positions with bit 0 of their index set (1, 3, 5, …): the low bit plane of "position modulo 4".
const ODD_POSITIONS: u64 = 0xAAAA_AAAA_AAAA_AAAA;

/// Bit positions with bit 1 of their index set (2, 3, 6, 7, …): the high bit plane of "position modulo 4".
const HIGH_PAIR_POSITIONS: u64 = 0xCCCC_CCCC_CCCC_CCCC;

/// Bit `p` of the result is the parity of the bits of `mask` at or below `p`.
#[inline]
const fn prefix_parity(mut mask: u64) -> u64 {
    mask ^= mask << 1;
    mask ^= mask << 2;
    mask ^= mask << 4;
    mask ^= mask << 8;
    mask ^= mask << 16;
    mask ^= mask << 32;
    mask
}

/// Running state of the word counter.
///
/// A word of `n` characters is `ceil(n / 4)` tokens, which is one token for each of its characters at positions
/// 0, 4, 8, … in the word. So the counter only needs to know where it is in the current word modulo 4 (`phase`):
/// a character at phase 0 adds a token. A separator resets the phase; being outside any word is phase 0 too.
#[derive(Debug, Default)]
struct Counter {
    tokens: usize,
    /// Characters in the current word so far, modulo 4.
    phase: u32,
}

impl Counter {
    /// Add `n` characters to the current word.
    #[inline]
    fn chars(&mut self, n: u32) {
        self.tokens += ((self.phase + n).div_ceil(4) - u32::from(self.phase > 0)) as usize;
        self.phase = (self.phase + n) % 4;
    }

    /// End the current word.
    #[inline]
    fn separator(&mut self) {
        self.phase = 0;
    }

    /// Count a window of `len` bytes (1..=64) described by bit masks: `chars` has a bit for each byte that starts
    /// a character, `seps` for each separator byte; other bytes are transparent (they neither count nor separate:
    /// UTF-8 continuation bytes, the bytes of an escape beyond the character it makes). The current word
    /// continues into the window.
    ///
    /// Words are runs of non-separator bits, and a word's tokens are at its characters of rank 0, 4, 8, …; all
    /// the arithmetic works on two bit planes holding a number modulo 4 for every byte, so there is no branch per
    /// word or per character. Adding a set of run starts to `words` clears those runs (the carry ripples through
    /// each), so `words & !(words + starts)` spreads one bit of each start over its whole run.
    ///
    /// - Without transparent bytes, a character's rank is its distance from the run's start: the tokens are the
    ///   bytes whose position agrees with the start's in their two lowest bits.
    /// - Otherwise ranks come from prefix counts: with `count(p)` the characters at or below `p` modulo 4 (two
    ///   prefix parities), a character is a token when `count(p)` is one more than `count` just before its run.
    ///
    /// The run continuing the previous window starts where its word really started, `phase` bytes back.
    #[expect(
        clippy::inline_always,
        reason = "called from two hot loops; inlining measured 2.5% faster on the 200 KB request"
    )]
    #[inline(always)]
    fn window(&mut self, chars: u64, seps: u64, len: usize) {
        debug_assert!((1..=64).contains(&len));
        let words = !seps & below(len);
        let chars = chars & words;
        let starts = words & !(words << 1);
        // Bit 0 never comes out of the masks below, so the leading run's start bits can be ORed in there.
        let leading = words & 1;
        let leading_start = u64::from((4 - self.phase) % 4);
        // Per run, `before_low`/`before_high` spread the two bits of the number it is compared with; per byte,
        // `at_low`/`at_high` hold the number that makes a token when it agrees.
        let (marks, at_low, at_high, before_low, before_high) = if chars == words {
            let before_low = words & !words.wrapping_add((starts & ODD_POSITIONS) | (leading & leading_start));
            let before_high =
                words & !words.wrapping_add((starts & HIGH_PAIR_POSITIONS) | (leading & leading_start >> 1));
            let marks = words & !(before_low ^ ODD_POSITIONS) & !(before_high ^ HIGH_PAIR_POSITIONS);
            (marks, ODD_POSITIONS, HIGH_PAIR_POSITIONS, before_low, before_high)
        } else {
            let count_low = prefix_parity(chars);
            let count_high = prefix_parity(chars & !count_low);
            // `count` just before each run, as the run's start bits.
            let before_low = words & !words.wrapping_add((count_low << 1 & starts) | (leading & leading_start));
            let before_high = words & !words.wrapping_add((count_high << 1 & starts) | (leading & leading_start >> 1));
            // A token where `count` is `before + 1`: bit 0 differs, bit 1 is `before`'s bit 1 plus the carry.
            let marks = chars & (count_low ^ before_low) & !(count_high ^ before_high ^ before_low);
            (marks, count_low, count_high, before_low, before_high)
        };
        self.tokens += marks.count_ones() as usize;
        // The word reaching the end of the window: its characters so far, modulo 4. With positions that is
        // `len - start`; with prefix counts `count(last) - before`.
        let last = len - 1;
        self.phase = if words >> last & 1 == 0 {
            0
        } else {
            #[expect(clippy::cast_possible_truncation, reason = "two bits")]
            let number = |plane0: u64, plane1: u64| ((plane0 >> last & 1) | (plane1 >> last & 1) << 1) as u32;
            let end = if chars == words {
                number(at_low, at_high) + 1
            } else {
                number(at_low, at_high)
            };
            (end + 4 - number(before_low, before_high)) % 4
        };
    }

    fn finish(&self) -> usize {
        self.tokens
    }
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

/// The non-ASCII whitespace of a window whose non-ASCII bytes are `highs` (not empty): all the bytes of each such
/// character. Candidates are found by their first two bytes in vector registers, then checked one by one.
#[inline]
fn unicode_spaces(window: Window, bytes: &[u8], pos: usize, highs: u64) -> u64 {
    let mut candidates = window.space_leads(Window::load(bytes, pos + 1)) & highs;
    let mut spaces = 0;
    while candidates != 0 {
        let lane = candidates.trailing_zeros() as usize;
        // A character reaching past the window leaves its last bytes to the next one, as transparent bytes.
        spaces |= below(unicode_space_len(bytes, pos + lane)) << lane;
        candidates &= candidates - 1;
    }
    spaces
}

/// Estimate the tokens in `text`: per whitespace-separated word, `ceil(chars / 4)` (so 1 for up to 4 chars).
///
/// `"hello world"` → 4, `"abcdefghij"` → 3, `""` → 0. Characters are Unicode scalar values and whitespace is
/// `char::is_whitespace`, decided from the UTF-8 bytes without decoding, 64 bytes at a time.
pub fn count_text(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut counter = Counter::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = (bytes.len() - pos).min(64);
        let window = Window::load(bytes, pos);
        let mut seps = window.ascii_whitespace();
        let highs = if window.any_high() {
            window.high() & below(len)
        } else {
            0
        };
        let mut chars = !seps;
        if highs != 0 {
            seps |= unicode_spaces(window, bytes, pos, highs);
            chars = !seps & !window.continuation();
        }
        counter.window(chars, seps, len);
        pos += len;
    }
    counter.finish()
}

// ---------------------------------------------------------------------------------------------------------------
// Strings and JSON values
// ---------------------------------------------------------------------------------------------------------------

/// How an escape sequence of `len` bytes for `c` counts: `None` when it is a separator, or the number of
/// characters it makes (its first bytes stand for them; the rest of the sequence is dropped from the count).
///
/// As text (`JSON = false`) the escape is the character it stands for. As compact JSON (`JSON = true`) it counts
/// as `serde_json` would write it: `\/` becomes `/`; `"`, `\` and the control characters with a short form stay
/// two characters (`\n`); other control characters become `\u001f` (six); anything else is the character itself.
#[inline]
const fn escape_chars<const JSON: bool>(c: char, len: usize) -> Option<usize> {
    if JSON {
        match c {
            '/' if len == 2 => Some(1),
            _ if len == 2 => Some(2),
            '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => Some(2),
            c if (c as u32) < 0x20 => Some(6),
            c if c.is_whitespace() => None,
            _ => Some(1),
        }
    } else if c.is_whitespace() {
        None
    } else {
        Some(1)
    }
}

/// The bits an escape sequence of `len` bytes sets in a window's masks, from its first byte on: separators when
/// it is one, else transparent bytes for those beyond the characters it makes ([`escape_chars`]).
#[inline]
const fn escape_bits<const JSON: bool>(c: char, len: usize) -> EscapeBits {
    match escape_chars::<JSON>(c, len) {
        None => EscapeBits {
            seps: below(len),
            transparent: 0,
        },
        Some(chars) => EscapeBits {
            seps: 0,
            transparent: below(len) & !below(chars),
        },
    }
}

#[derive(Clone, Copy)]
struct EscapeBits {
    seps: u64,
    transparent: u64,
}

/// [`SHORT_ESCAPES`] entry for a byte that does not make a two-byte escape: `u` (a `\uXXXX` escape) or invalid.
const LONG_ESCAPE: u8 = 0xFF;

/// [`escape_bits`] of the two-byte escapes, by the byte after the backslash, as text (`[0]`) and as JSON
/// (`[1]`): the separator bits in the low nibble, the transparent bits in the high one; [`LONG_ESCAPE`] for any
/// other byte. One table load per escape, and no branch on what kind of escape it is.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the bits of a two-byte escape fit in a nibble"
)]
const SHORT_ESCAPES: [[u8; 256]; 2] = {
    let mut tables = [[LONG_ESCAPE; 256]; 2];
    let mut json = 0;
    while json < 2 {
        let mut byte = 0;
        while byte < 256 {
            if let Some(c) = crate::json::short_escape(byte as u8) {
                let bits = if json == 1 {
                    escape_bits::<true>(c, 2)
                } else {
                    escape_bits::<false>(c, 2)
                };
                tables[json][byte] = (bits.seps | bits.transparent << 4) as u8;
            }
            byte += 1;
        }
        json += 1;
    }
    tables
};

/// Fold the escape sequences of a string window at `bytes[pos..]` into its separator and transparent masks, and
/// find where the window's part of the string ends: `(len, closed)`, `closed` when the closing quote is at `len`.
/// `stops` ([`Window::string_stops`]) is not empty and its first byte is not the closing quote.
///
/// Usually every backslash starts a two-byte escape: their bits are then set from [`SHORT_ESCAPES`] one escape
/// after another without anything carried from one to the next, so the escapes of a window overlap in the CPU.
/// Escaped backslashes, `\u` escapes and an escape cut by the window's end go through [`fold_escapes_in_order`].
#[inline]
fn fold_escapes<const JSON: bool>(
    window: Window,
    bytes: &[u8],
    pos: usize,
    stops: u64,
    seps: &mut u64,
    transparent: &mut u64,
) -> Option<(usize, bool)> {
    let backslashes = window.eq(b'\\');
    if backslashes & (backslashes << 1 | 1 << 63) == 0 {
        let unescaped = stops & !backslashes & !(backslashes << 1);
        let end = unescaped.trailing_zeros() as usize;
        let (mut escape_seps, mut escape_transparent) = (0, 0);
        let mut escapes = backslashes & below(end);
        while escapes != 0 {
            let lane = escapes.trailing_zeros() as usize;
            let class = SHORT_ESCAPES[usize::from(JSON)][usize::from(*bytes.get(pos + lane + 1)?)];
            if class == LONG_ESCAPE {
                return fold_escapes_in_order::<JSON>(bytes, pos, stops, seps, transparent);
            }
            escape_seps |= u64::from(class & 0x0F) << lane;
            escape_transparent |= u64::from(class >> 4) << lane;
            escapes &= escapes - 1;
        }
        *seps |= escape_seps;
        *transparent |= escape_transparent;
        return match end {
            64 => Some((64, false)),
            _ if *bytes.get(pos + end)? == b'"' => Some((end, true)),
            _ => None,
        };
    }
    fold_escapes_in_order::<JSON>(bytes, pos, stops, seps, transparent)
}

/// [`fold_escapes`] one stop after another, decoding `\u` escapes. An escape that may reach past the window
/// (one starting in its last 12 bytes) ends the window's part: the next window starts with it.
fn fold_escapes_in_order<const JSON: bool>(
    bytes: &[u8],
    pos: usize,
    mut stops: u64,
    seps: &mut u64,
    transparent: &mut u64,
) -> Option<(usize, bool)> {
    while stops != 0 {
        let lane = stops.trailing_zeros() as usize;
        let at = pos + lane;
        match *bytes.get(at)? {
            b'"' => return Some((lane, true)),
            b'\\' if lane <= 64 - 12 => {
                let class = SHORT_ESCAPES[usize::from(JSON)][usize::from(*bytes.get(at + 1)?)];
                let (bits, escape_len) = if class == LONG_ESCAPE {
                    let (c, escape_len) = unescape_at(bytes, at)?;
                    (escape_bits::<JSON>(c, escape_len), escape_len)
                } else {
                    let bits = EscapeBits {
                        seps: u64::from(class & 0x0F),
                        transparent: u64::from(class >> 4),
                    };
                    (bits, 2)
                };
                *seps |= bits.seps << lane;
                *transparent |= bits.transparent << lane;
                stops &= !below(lane + escape_len);
            }
            b'\\' => return Some((lane, false)),
            _ => return None,
        }
    }
    Some((64, false))
}

/// Count the rest of a string whose opening quote was just read, and read its closing quote: as decoded text
/// (`JSON = false`), or its contents as compact JSON writes them (`JSON = true`; the quotes are the caller's).
///
/// Validates like [`Cursor::string_body`]. Escapes are folded into the window's bit masks, so a string is
/// scanned 64 bytes at a time whatever it holds.
fn count_string<const JSON: bool>(cursor: &mut Cursor<'_>, counter: &mut Counter) -> Option<()> {
    let bytes = cursor.bytes;
    let start = cursor.pos;
    // Short plain strings (keys, names, types, schema words) are one word of ASCII: when the closing quote is
    // the first special byte of the next eight, no window is needed.
    if let Some(word) = bytes.get(start..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*word);
        let spaces = word ^ (SWAR_ONES * u64::from(b' '));
        let specials =
            swar_string_stops(word) | (spaces.wrapping_sub(SWAR_ONES) & !spaces & SWAR_HIGH) | (word & SWAR_HIGH);
        let lane = (specials.trailing_zeros() / 8) as usize;
        if specials != 0 && bytes[start + lane] == b'"' {
            #[expect(clippy::cast_possible_truncation, reason = "at most 7")]
            counter.chars(lane as u32);
            cursor.pos = start + lane + 1;
            return Some(());
        }
    }
    let mut utf8 = Utf8::default();
    loop {
        let pos = cursor.pos;
        let window = Window::load(bytes, pos);
        let stops = window.string_stops();
        let mut seps = window.eq(b' ');
        // UTF-8 continuation bytes: transparent for the counter.
        let mut transparent = 0;
        let highs = if window.any_high() { window.high() } else { 0 };
        if highs != 0 {
            seps |= unicode_spaces(window, bytes, pos, highs);
            transparent = window.continuation();
        }
        let continuation = transparent;
        let (len, closed) = match stops {
            0 => (64, false),
            _ if *bytes.get(pos + stops.trailing_zeros() as usize)? == b'"' => (stops.trailing_zeros() as usize, true),
            _ => fold_escapes::<JSON>(window, bytes, pos, stops, &mut seps, &mut transparent)?,
        };
        utf8.window(window, highs & below(len), continuation, len)?;
        if (seps | transparent) & below(len) == 0 {
            // One run of characters (often a whole short string): no window arithmetic needed.
            #[expect(clippy::cast_possible_truncation, reason = "a window is at most 64 bytes")]
            counter.chars(len as u32);
        } else {
            counter.window(!seps & !transparent, seps, len);
        }
        cursor.pos = pos + len;
        if closed {
            cursor.pos += 1;
            return utf8.finish(&bytes[start..pos + len]);
        }
    }
}

/// UTF-8 validation of a string scanned window by window, from the window's bit masks: every lead byte must be
/// followed by exactly the continuation bytes its length asks for, and nothing else may be a continuation byte.
/// That structure settles validity for all lead bytes but E0, ED, F0–F4 (which limit their second byte) and the
/// invalid C0, C1, F5–FF; a string holding any of those is checked with `str::from_utf8` at its end.
#[derive(Default)]
struct Utf8 {
    /// Continuation bytes the next window must start with (bit `i`: byte `i`).
    pending: u64,
    /// Whether the string needs `str::from_utf8` at its end.
    check_at_end: bool,
}

impl Utf8 {
    /// Account for the first `len` bytes of `window`, whose non-ASCII bytes are `highs` and continuation bytes
    /// `continuation` (computed only when `highs` is not empty).
    #[inline]
    fn window(&mut self, window: Window, highs: u64, continuation: u64, len: usize) -> Option<()> {
        if highs | self.pending == 0 || self.check_at_end {
            return Some(());
        }
        let live = below(len);
        let continuation = continuation & live;
        let (long, special) = window.utf8_leads();
        if special & live != 0 {
            self.check_at_end = true;
            return Some(());
        }
        let leads = highs & !continuation;
        let long = long & live;
        let wanted = (leads << 1) | (long << 2) | self.pending;
        if wanted & live != continuation {
            return None;
        }
        // What the last lead bytes still ask of the next window; a window cut short ends before an ASCII byte.
        self.pending = if len == 64 { leads >> 63 | long >> 62 } else { 0 };
        (len == 64 || wanted & !live == 0).then_some(())
    }

    /// The verdict for the whole string, given its raw bytes.
    fn finish(&self, raw: &[u8]) -> Option<()> {
        if self.check_at_end {
            std::str::from_utf8(raw).ok()?;
        }
        Some(())
    }
}

/// Count a whole string value as text (after optional whitespace).
fn text_tokens(cursor: &mut Cursor<'_>) -> Option<usize> {
    cursor.expect(b'"')?;
    let mut counter = Counter::default();
    count_string::<false>(cursor, &mut counter)?;
    Some(counter.finish())
}

/// Count one value as compact JSON, validating it: whitespace outside strings is dropped without ending a word.
fn count_json_value(cursor: &mut Cursor<'_>, counter: &mut Counter, depth: u32) -> Option<()> {
    match cursor.peek()? {
        b'"' => {
            cursor.pos += 1;
            counter.chars(1);
            count_string::<true>(cursor, counter)?;
            counter.chars(1);
        }
        open @ (b'{' | b'[') => {
            cursor.pos += 1;
            counter.chars(1);
            let depth = deeper(depth)?;
            let close = if open == b'{' { b'}' } else { b']' };
            let mut first = true;
            // Each step reads a `,` (or, at the end, the closing bracket): one character either way.
            while cursor.next_item(close, first)? {
                if !first {
                    counter.chars(1);
                }
                first = false;
                if open == b'{' {
                    cursor.expect(b'"')?;
                    counter.chars(1);
                    count_string::<true>(cursor, counter)?;
                    cursor.expect(b':')?;
                    counter.chars(2);
                }
                count_json_value(cursor, counter, depth)?;
            }
            counter.chars(1);
        }
        b't' => {
            cursor.literal(b"true")?;
            counter.chars(4);
        }
        b'f' => {
            cursor.literal(b"false")?;
            counter.chars(5);
        }
        b'n' => {
            cursor.literal(b"null")?;
            counter.chars(4);
        }
        _ => counter.chars(u32::try_from(cursor.number()?.len()).ok()?),
    }
    Some(())
}

/// Count one value as compact JSON on its own (a fresh word counter).
fn json_tokens(cursor: &mut Cursor<'_>) -> Option<usize> {
    let mut counter = Counter::default();
    count_json_value(cursor, &mut counter, 0)?;
    Some(counter.finish())
}

/// Estimate the tokens of a JSON document as if it were serialised compactly.
///
/// The result equals `count_text` of the document re-serialised by `serde_json` (no insignificant whitespace,
/// non-ASCII characters raw), computed by scanning the text as it is, without building that copy:
/// - whitespace outside strings is skipped without ending a word (compact JSON has none);
/// - whitespace inside strings separates words;
/// - escapes count as the serialiser would write them: `\n`, `\"` etc. stay two characters, `\/` becomes `/`,
///   and `\uXXXX` becomes the character itself (so `\u00e9` is one character and `\u0020` a separator), except
///   for control characters and `"`/`\`, which stay escaped.
///
/// The input should be valid JSON text (e.g. a [`RawValue`]); anything else still gives a number, never a panic.
pub fn count_json(json: &str) -> usize {
    let mut cursor = Cursor::new(json.as_bytes());
    match json_tokens(&mut cursor) {
        Some(tokens) if cursor.end().is_some() => tokens,
        _ => count_json_lenient(json),
    }
}

/// [`count_json`] for text that is not valid JSON (or that the fast path leaves alone, e.g. lone surrogates):
/// a byte-by-byte scan with the same rules, which tracks only whether it is inside a string.
fn count_json_lenient(json: &str) -> usize {
    let bytes = json.as_bytes();
    let mut counter = Counter::default();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if !in_string {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                in_string = byte == b'"';
                counter.chars(1);
            }
            i += 1;
            continue;
        }
        match byte {
            b'"' => {
                in_string = false;
                counter.chars(1);
                i += 1;
            }
            b'\\' => i += count_escape_lenient(bytes, i, &mut counter),
            // Inside a string of a `&str`, so `i` is on a character boundary here.
            _ => {
                let space = if byte.is_ascii() {
                    usize::from(matches!(byte, b'\t'..=b'\r' | b' '))
                } else {
                    unicode_space_len(bytes, i)
                };
                if space > 0 {
                    counter.separator();
                    i += space;
                } else {
                    counter.chars(1);
                    i += json_char_len(byte);
                }
            }
        }
    }
    counter.finish()
}

/// The length of the UTF-8 character whose first byte is `byte`.
fn json_char_len(byte: u8) -> usize {
    match byte {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Account for the escape starting at `bytes[i]` (a backslash) as serialised by `serde_json`; returns its length.
/// Lenient: malformed escapes count as written and a lone surrogate as U+FFFD.
fn count_escape_lenient(bytes: &[u8], i: usize, counter: &mut Counter) -> usize {
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
// The request walker
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
    match walk_request(body) {
        Some(tokens) => Ok(tokens),
        None => count_request_serde(body),
    }
}

/// Marks which fields of an object were seen, to notice duplicates (serde rejects a struct field given twice).
#[derive(Default)]
struct Seen(u16);

impl Seen {
    /// Whether field number `field` is new (and now seen).
    fn first(&mut self, field: u16) -> bool {
        let bit = 1 << field;
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }
}

/// The one-pass walk of a request body; `None` for anything [`count_request_serde`] must decide.
fn walk_request(body: &[u8]) -> Option<usize> {
    let mut cursor = Cursor::new(body);
    cursor.expect(b'{')?;
    let mut seen = Seen::default();
    let mut total = 0;
    let mut first = true;
    while cursor.next_item(b'}', first)? {
        first = false;
        match cursor.key()? {
            b"system" if seen.first(0) => total += content(&mut cursor, 0)?,
            b"messages" if seen.first(1) => total += messages(&mut cursor)?,
            b"tools" if seen.first(2) => total += tools(&mut cursor)?,
            b"system" | b"messages" | b"tools" => return None,
            _ => cursor.skip_value()?,
        }
    }
    cursor.end()?;
    Some(total)
}

/// `null`, or an array whose items are read by `item`.
fn array_or_null(cursor: &mut Cursor<'_>, mut item: impl FnMut(&mut Cursor<'_>) -> Option<usize>) -> Option<usize> {
    if cursor.peek()? == b'n' {
        cursor.literal(b"null")?;
        return Some(0);
    }
    cursor.expect(b'[')?;
    let mut total = 0;
    let mut first = true;
    while cursor.next_item(b']', first)? {
        first = false;
        total += item(cursor)?;
    }
    Some(total)
}

/// `messages`: each message must be an object (serde would read an array positionally); only `content` counts.
fn messages(cursor: &mut Cursor<'_>) -> Option<usize> {
    array_or_null(cursor, |cursor| {
        cursor.expect(b'{')?;
        let mut seen = Seen::default();
        let mut total = 0;
        let mut first = true;
        while cursor.next_item(b'}', first)? {
            first = false;
            match cursor.key()? {
                b"content" if seen.first(0) => total += content(cursor, 0)?,
                b"content" => return None,
                _ => cursor.skip_value()?,
            }
        }
        Some(total)
    })
}

/// `tools`: `name` + `description` + `input_schema` as compact JSON, per tool object.
fn tools(cursor: &mut Cursor<'_>) -> Option<usize> {
    array_or_null(cursor, |cursor| {
        cursor.expect(b'{')?;
        let mut seen = Seen::default();
        let mut total = 0;
        let mut first = true;
        while cursor.next_item(b'}', first)? {
            first = false;
            let field = match cursor.key()? {
                b"name" => 0,
                b"description" => 1,
                b"input_schema" => 2,
                _ => {
                    cursor.skip_value()?;
                    continue;
                }
            };
            if !seen.first(field) {
                return None;
            }
            match cursor.peek()? {
                b'n' => cursor.literal(b"null")?,
                _ if field == 2 => total += json_tokens(cursor)?,
                _ => total += text_tokens(cursor)?,
            }
        }
        Some(total)
    })
}

/// A `content` (or `system`) value: a string, an array of blocks, or `null`/`true`/`false` (nothing). Objects and
/// numbers are left to serde: counted as nothing there, but serde can fail on them (numbers out of range).
fn content(cursor: &mut Cursor<'_>, depth: usize) -> Option<usize> {
    match cursor.peek()? {
        b'"' => text_tokens(cursor),
        b'[' => array_or_null(cursor, |cursor| block(cursor, depth)),
        _ => skip_content(cursor).map(|()| 0),
    }
}

/// Validate a `content` value that does not count, with the same restrictions as [`content`].
fn skip_content(cursor: &mut Cursor<'_>) -> Option<()> {
    match cursor.peek()? {
        b'"' | b'[' => cursor.skip_value(),
        b'n' => cursor.literal(b"null"),
        b't' => cursor.literal(b"true"),
        b'f' => cursor.literal(b"false"),
        _ => None,
    }
}

/// A block's `type`, or a document source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not seen (yet).
    Unset,
    /// `null`, or a type nothing special happens for.
    Other,
    Text,
    Thinking,
    RedactedThinking,
    ToolUse,
    ToolResult,
    Image,
    Document,
    /// A document source's `"type":"content"`.
    Content,
}

impl Kind {
    fn of(type_name: &[u8]) -> Self {
        match type_name {
            b"text" => Self::Text,
            b"thinking" => Self::Thinking,
            b"redacted_thinking" => Self::RedactedThinking,
            b"tool_use" => Self::ToolUse,
            b"tool_result" => Self::ToolResult,
            b"image" => Self::Image,
            b"document" => Self::Document,
            b"content" => Self::Content,
            _ => Self::Other,
        }
    }

    /// Whether a field that matters for `kind` blocks must be counted: yes for that kind, and while the type is
    /// still unknown (it may come last).
    fn wants(self, kind: Self) -> bool {
        self == kind || self == Self::Unset
    }
}

/// Read a `type` field: a string (not escaped) or `null`; `Err(())` when it is neither (the block is then odd).
fn read_kind(cursor: &mut Cursor<'_>) -> Option<Result<Kind, ()>> {
    match cursor.peek()? {
        b'"' => {
            let name = cursor.string()?;
            // An escaped type name would need decoding before matching; no client writes one.
            (!name.escaped).then(|| Ok(Kind::of(name.raw)))
        }
        b'n' => cursor.literal(b"null").map(|()| Ok(Kind::Other)),
        _ => cursor.skip_value().map(|()| Err(())),
    }
}

/// Read a text field: a string, counted if `wanted`, or `null`; `Err(())` when it is neither.
fn read_text(cursor: &mut Cursor<'_>, wanted: bool) -> Option<Result<usize, ()>> {
    match cursor.peek()? {
        b'"' if wanted => text_tokens(cursor).map(Ok),
        b'"' => cursor.string().map(|_| Ok(0)),
        b'n' => cursor.literal(b"null").map(|()| Ok(0)),
        _ => cursor.skip_value().map(|()| Err(())),
    }
}

/// The fields of one block that may count, gathered in one pass and combined at the closing brace.
#[derive(Default)]
struct BlockCounts {
    text: usize,
    thinking: usize,
    data: usize,
    name: usize,
    input: usize,
    content: usize,
    title: usize,
    context: usize,
    /// The source's tokens; `None` without a source.
    source: Option<usize>,
}

/// Count one content block. An object is read field by field; anything else, a block nested deeper than
/// [`MAX_BLOCK_DEPTH`], a block of unknown or missing type and a block with a field of the wrong type count as
/// compact JSON.
fn block(cursor: &mut Cursor<'_>, depth: usize) -> Option<usize> {
    if depth >= MAX_BLOCK_DEPTH || cursor.peek()? != b'{' {
        return json_tokens(cursor);
    }
    let start = cursor.pos;
    cursor.pos += 1;
    let mut kind = Kind::Unset;
    let mut counts = BlockCounts::default();
    let mut seen = Seen::default();
    let mut odd = false;
    let mut first = true;
    while cursor.next_item(b'}', first)? {
        first = false;
        let key = cursor.key()?;
        if odd {
            // serde stopped at the odd field; the rest only has to be valid JSON.
            cursor.skip_value()?;
            continue;
        }
        let field = match key {
            b"type" => 0,
            b"text" => 1,
            b"thinking" => 2,
            b"data" => 3,
            b"name" => 4,
            b"input" => 5,
            b"content" => 6,
            b"source" => 7,
            b"title" => 8,
            b"context" => 9,
            _ => {
                cursor.skip_value()?;
                continue;
            }
        };
        if !seen.first(field) {
            odd = true;
            cursor.skip_value()?;
            continue;
        }
        let read = match key {
            b"type" => read_kind(cursor)?.map(|read| kind = read),
            b"text" => read_text(cursor, kind.wants(Kind::Text))?.map(|n| counts.text = n),
            b"thinking" => read_text(cursor, kind.wants(Kind::Thinking))?.map(|n| counts.thinking = n),
            b"data" => read_text(cursor, kind.wants(Kind::RedactedThinking))?.map(|n| counts.data = n),
            b"name" => read_text(cursor, kind.wants(Kind::ToolUse))?.map(|n| counts.name = n),
            b"title" => read_text(cursor, kind.wants(Kind::Document))?.map(|n| counts.title = n),
            b"context" => read_text(cursor, kind.wants(Kind::Document))?.map(|n| counts.context = n),
            b"input" => {
                match cursor.peek()? {
                    b'n' => cursor.literal(b"null")?,
                    _ if kind.wants(Kind::ToolUse) => counts.input = json_tokens(cursor)?,
                    _ => cursor.skip_value()?,
                }
                Ok(())
            }
            b"content" => {
                if kind.wants(Kind::ToolResult) {
                    counts.content = content(cursor, depth + 1)?;
                } else {
                    skip_content(cursor)?;
                }
                Ok(())
            }
            _ => match cursor.peek()? {
                b'n' => cursor.literal(b"null").map(|()| Ok(()))?,
                b'{' => source(cursor, depth, kind.wants(Kind::Document))?.map(|n| counts.source = Some(n)),
                // serde would read the source from an array positionally.
                b'[' => return None,
                _ => cursor.skip_value().map(|()| Err(()))?,
            },
        };
        odd = read.is_err();
    }
    // The block again, as compact JSON (a second pass, for odd blocks only).
    let as_json = || json_tokens(&mut Cursor::new(&cursor.bytes[start..cursor.pos]));
    let tokens = match kind {
        _ if odd => return as_json(),
        Kind::Text => counts.text,
        Kind::Thinking => counts.thinking,
        Kind::RedactedThinking => counts.data,
        Kind::ToolUse => counts.name + counts.input,
        Kind::ToolResult => counts.content,
        Kind::Image => IMAGE_TOKENS,
        Kind::Document => counts.title + counts.context + counts.source.unwrap_or(DOCUMENT_TOKENS),
        Kind::Unset | Kind::Other | Kind::Content => return as_json(),
    };
    Some(tokens)
}

/// A document's `source` object: its tokens, or `Err(())` when a field has the wrong type. `wanted`: whether its
/// text has to be counted at all (the block may be a document).
fn source(cursor: &mut Cursor<'_>, depth: usize, wanted: bool) -> Option<Result<usize, ()>> {
    cursor.expect(b'{')?;
    let mut kind = Kind::Unset;
    let mut data = 0;
    let mut content_tokens = 0;
    let mut seen = Seen::default();
    let mut odd = false;
    let mut first = true;
    while cursor.next_item(b'}', first)? {
        first = false;
        let key = cursor.key()?;
        let field = match key {
            b"type" => 0,
            b"data" => 1,
            b"content" => 2,
            _ => {
                cursor.skip_value()?;
                continue;
            }
        };
        if odd || !seen.first(field) {
            odd = true;
            cursor.skip_value()?;
            continue;
        }
        let read = match field {
            0 => read_kind(cursor)?.map(|read| kind = read),
            1 => read_text(cursor, wanted && kind.wants(Kind::Text))?.map(|n| data = n),
            _ => {
                if wanted && kind.wants(Kind::Content) {
                    content_tokens = content(cursor, depth + 1)?;
                } else {
                    skip_content(cursor)?;
                }
                Ok(())
            }
        };
        odd = read.is_err();
    }
    Some(if odd {
        Err(())
    } else {
        Ok(match kind {
            Kind::Text => data,
            Kind::Content => content_tokens,
            _ => DOCUMENT_TOKENS,
        })
    })
}

// ---------------------------------------------------------------------------------------------------------------
// The serde implementation: the reference, and the fallback for bodies the walker leaves alone
// ---------------------------------------------------------------------------------------------------------------

/// [`count_request`] with borrowed serde structs. Blocks are captured raw and parsed a second time, which is why
/// [`walk_request`] replaced it on the hot path; it still decides every body the walker gives up on, so errors
/// keep serde's messages and odd shapes keep their historical counts.
fn count_request_serde(body: &[u8]) -> Result<usize, CoreError> {
    // serde would happily read a struct from a JSON array (positionally); a request must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
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
        total += tool.name.as_ref().map_or(0, |s| count_text(s.as_str()));
        total += tool.description.as_ref().map_or(0, |s| count_text(s.as_str()));
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
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom(format!(
                "each message and tool must be a JSON object, found {}",
                crate::errors::excerpt(raw.get().as_bytes())
            )));
        }
        serde_json::from_str(raw.get())
            .map(Object)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Option<CowStr<'a>>,
    #[serde(borrow)]
    description: Option<CowStr<'a>>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

/// A `content` (or `system`) value: a string, or an array of blocks kept raw so that a block of an unknown type
/// can be counted as the JSON it is.
enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<&'a RawValue>),
    /// A number, boolean, object or null: not valid content, counted as nothing.
    Other,
}

impl Content<'_> {
    fn count(&self, depth: usize) -> usize {
        match self {
            Content::Text(text) => count_text(text),
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

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
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
    #[serde(borrow)]
    text: Option<CowStr<'a>>,
    #[serde(borrow)]
    thinking: Option<CowStr<'a>>,
    #[serde(borrow)]
    data: Option<CowStr<'a>>,
    #[serde(borrow)]
    name: Option<CowStr<'a>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    #[serde(borrow)]
    title: Option<CowStr<'a>>,
    #[serde(borrow)]
    context: Option<CowStr<'a>>,
}

/// A `document` (or `image`) source.
#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<CowStr<'a>>,
    #[serde(borrow)]
    data: Option<CowStr<'a>>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

fn text_of(field: Option<&CowStr<'_>>) -> usize {
    field.map_or(0, |s| count_text(s.as_str()))
}

/// Count one content block given as raw JSON.
fn count_block(raw: &RawValue, depth: usize) -> usize {
    let json = raw.get();
    // Only objects are blocks (serde would read a struct from an array positionally).
    if depth >= MAX_BLOCK_DEPTH || !json.starts_with('{') {
        return count_json(json);
    }
    let Ok(block) = serde_json::from_str::<Block<'_>>(json) else {
        // Not an object, or a known field with an unexpected type: count what is there.
        return count_json(json);
    };
    match block.kind.as_ref().map(CowStr::as_str) {
        Some("text") => text_of(block.text.as_ref()),
        Some("thinking") => text_of(block.thinking.as_ref()),
        Some("redacted_thinking") => text_of(block.data.as_ref()),
        Some("tool_use") => text_of(block.name.as_ref()) + block.input.map_or(0, |input| count_json(input.get())),
        Some("tool_result") => block.content.as_ref().map_or(0, |content| content.count(depth + 1)),
        Some("image") => IMAGE_TOKENS,
        Some("document") => {
            let source = match &block.source {
                Some(source) => match source.kind.as_ref().map(CowStr::as_str) {
                    Some("text") => text_of(source.data.as_ref()),
                    Some("content") => source.content.as_ref().map_or(0, |content| content.count(depth + 1)),
                    _ => DOCUMENT_TOKENS,
                },
                None => DOCUMENT_TOKENS,
            };
            text_of(block.title.as_ref()) + text_of(block.context.as_ref()) + source
        }
        _ => count_json(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward reference implementation of the counting rule.
    fn reference(text: &str) -> usize {
        text.split(char::is_whitespace)
            .map(|word| word.chars().count().div_ceil(4))
            .sum()
    }

    #[test]
    fn text_examples() {
        assert_eq!(count_text("hello world"), 4);
        assert_eq!(count_text("abcdefghij"), 3);
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("   \t\n "), 0);
        assert_eq!(count_text("a"), 1);
        assert_eq!(count_text("abcd"), 1);
        assert_eq!(count_text("abcde"), 2);
        assert_eq!(count_text("  a  b  "), 2);
        assert_eq!(count_text("one\ntwo\r\nthree"), 1 + 1 + 2);
    }

    #[test]
    fn characters_not_bytes() {
        // 4 chars of 2-4 bytes each: still 1 token.
        assert_eq!(count_text("éé€😀"), 1);
        assert_eq!(count_text("日本語のテキスト"), 2);
    }

    #[test]
    fn unicode_whitespace_separates_words() {
        for space in [
            '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}',
            '\u{3000}', '\u{B}', '\u{C}',
        ] {
            let text = format!("abc{space}def");
            assert_eq!(count_text(&text), 2, "{space:?}");
        }
        // Characters sharing a first byte with whitespace, but not whitespace.
        for c in ['\u{A9}', '\u{2010}', '\u{200B}', '\u{1681}', '\u{3001}', '\u{2060}'] {
            let text = format!("abc{c}def");
            assert_eq!(count_text(&text), 2, "{c:?}");
            assert_eq!(count_text(&text), reference(&text));
        }
    }

    /// [`Counter::window`] one byte at a time: the definition it must match.
    fn window_by_lanes(phase: u32, chars: u64, seps: u64, len: usize) -> (usize, u32) {
        let mut counter = Counter { tokens: 0, phase };
        for lane in 0..len {
            if seps >> lane & 1 == 1 {
                counter.separator();
            } else if chars >> lane & 1 == 1 {
                counter.chars(1);
            }
        }
        (counter.tokens, counter.phase)
    }

    #[test]
    fn window_examples() {
        let check = |phase, chars, seps, len| {
            let mut counter = Counter { tokens: 0, phase };
            counter.window(chars, seps, len);
            assert_eq!(
                (counter.tokens, counter.phase),
                window_by_lanes(phase, chars, seps, len),
                "phase {phase} chars {chars:#x} seps {seps:#x} len {len}"
            );
        };
        for phase in 0..4 {
            for len in [1, 2, 5, 63, 64] {
                check(phase, u64::MAX, 0, len);
                check(phase, 0, u64::MAX, len);
                check(phase, 0, 0, len);
                check(phase, 0x5555_5555_5555_5555, 0xAAAA_AAAA_AAAA_AAAA, len);
                check(phase, 0x0F0F_0F0F_0F0F_0F0F, 0x1010_1010_1010_1010, len);
                check(phase, !(1u64 << 63), 0, len);
                check(phase, 1 << 63 | 1, 0, len);
            }
        }
    }

    /// Multi-byte whitespace (and characters sharing its first bytes) at every position around the 64-byte
    /// window boundary, as plain text and inside a request string.
    #[test]
    fn unicode_whitespace_across_windows() {
        for c in [
            '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2028}', '\u{205F}', '\u{3000}', '\u{A9}', '\u{2010}',
            '\u{3001}', 'の',
        ] {
            for before in 56..68 {
                let text = format!("{}{c}{}", "a".repeat(before), "b".repeat(9));
                assert_eq!(count_text(&text), reference(&text), "{c:?} after {before}");
                let body = format!(r#"{{"system":"{text}","messages":[{{"role":"user","content":"x\"{text}"}}]}}"#);
                let decoded = format!("x\"{text}");
                assert_eq!(
                    count(&body),
                    reference(&text) + reference(&decoded),
                    "{c:?} after {before}"
                );
            }
        }
    }

    #[test]
    fn long_ascii_words_across_blocks() {
        let text = format!("{} {} {}", "a".repeat(17), "b".repeat(8), "c".repeat(3));
        assert_eq!(count_text(&text), 5 + 2 + 1);
        assert_eq!(count_text(&"x ".repeat(100)), 100);
        assert_eq!(count_text(&format!("{}é{}", "a".repeat(7), "b".repeat(8))), 4);
    }

    #[test]
    fn every_char_classified_like_std() {
        for code in 0..=0x0010_FFFFu32 {
            let Some(c) = char::from_u32(code) else { continue };
            // Short (byte-by-byte tail) and long (8-byte blocks) surroundings.
            for text in [format!("ab{c}cd"), format!("abcdefg{c}hijklmnopq")] {
                assert_eq!(count_text(&text), reference(&text), "U+{code:04X}");
            }
        }
    }

    #[test]
    fn json_counting() {
        assert_eq!(count_json(""), 0);
        assert_eq!(count_json("{}"), 1);
        // Compact form `{"a":1}` is one 7-char word.
        assert_eq!(count_json("{ \"a\" : 1 }"), 2);
        assert_eq!(count_json("{\n  \"a\": 1\n}"), 2);
        // Whitespace inside strings separates words: `{"a":"x` + `y"}`.
        assert_eq!(count_json(r#"{"a":"x y"}"#), 2 + 1);
        // Escapes count as written: `"a\"b\nc"` is 10 chars.
        assert_eq!(count_json(r#""a\"b\nc""#), 3);
        // An escaped quote does not end the string, so the space after it still separates.
        assert_eq!(count_json(r#"["\" x"]"#), 1 + 1);
        assert_eq!(count_json(r#"{"k":"é€"}"#), 3);
    }

    #[test]
    fn json_matches_compact_serialisation() {
        let raw = r#"{ "type" : "object",
            "properties": { "file_path": {"type": "string", "description": "The absolute path to the file"},
                            "limit": {"type": ["integer", "null"], "minimum": 1 } },
            "required": ["file_path"], "additionalProperties": false }"#;
        let value: serde_json::Value = serde_json::from_str(raw).unwrap();
        let compact = serde_json::to_string(&value).unwrap();
        assert_eq!(count_json(raw), count_text(&compact));
        assert_eq!(count_json(&compact), count_text(&compact));
    }

    #[test]
    fn json_escapes_count_like_their_serialisation() {
        // `\u00e9` is one character once re-serialised, `\u0020` a space, `\/` a slash.
        assert_eq!(count_json(r#""\u00e9\u00e9\u00e9\u00e9""#), count_text("\"éééé\""));
        assert_eq!(count_json(r#""abc\u0020def""#), 2);
        assert_eq!(count_json(r#""a\/b""#), count_text("\"a/b\""));
        // Surrogate pairs are one character; a lone surrogate counts as one (U+FFFD).
        assert_eq!(count_json(r#""\ud83d\ude00""#), 1);
        assert_eq!(count_json(r#""\ud83dxy""#), count_text("\"\u{FFFD}xy\""));
        // Control characters stay escaped: `\u0001` is six characters, `\u000a` is `\n` (two).
        assert_eq!(count_json(r#""\u0001""#), 2);
        assert_eq!(count_json(r#""\u000a\u000a""#), count_text(r#""\n\n""#));
        assert_eq!(count_json(r#""\u0022""#), count_text(r#""\"""#));
        // Malformed escapes never panic.
        for text in [r#""\u12""#, r#""\uzzzz""#, "\"\\", r#""\ud800\u""#] {
            let _ = count_json(text);
        }
    }

    #[test]
    fn json_never_panics_on_garbage() {
        for text in ["\"", "\\", "\"\\", "{\"a", "\u{A0}", "\"\u{3000}\""] {
            let _ = count_json(text);
        }
        assert_eq!(count_json("\"a\u{3000}b\""), 2);
    }

    fn count(body: &str) -> usize {
        count_request(body.as_bytes()).unwrap()
    }

    #[test]
    fn system_string_and_blocks() {
        assert_eq!(count(r#"{"system":"You are helpful."}"#), 1 + 1 + 2);
        assert_eq!(
            count(
                r#"{"system":[{"type":"text","text":"You are"},{"type":"text","text":"helpful.","cache_control":{"type":"ephemeral"}}]}"#
            ),
            1 + 1 + 2
        );
        assert_eq!(count(r#"{"system":null,"messages":null,"tools":null}"#), 0);
        assert_eq!(count("{}"), 0);
    }

    #[test]
    fn message_content_forms() {
        let body = r#"{"model":"m","max_tokens":5,"messages":[
            {"role":"user","content":"hello world"},
            {"role":"assistant","content":[{"type":"text","text":"hi there"}]},
            {"role":"system","content":[]},
            {"role":"system","content":"abcdefghij","output_config":{"effort":"medium"}},
            {"role":"user"}
        ]}"#;
        // The empty system list and the message without content add nothing.
        assert_eq!(count(body), 4 + 3 + 3);
    }

    #[test]
    fn escaped_strings_are_counted_unescaped() {
        // `a\nb` is two words once decoded.
        assert_eq!(count(r#"{"messages":[{"role":"user","content":"abcde\nfghij"}]}"#), 4);
        assert_eq!(
            count(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"abcde\u0020fghij"}]}]}"#),
            4
        );
    }

    #[test]
    fn thinking_and_redacted_thinking() {
        let data = "A".repeat(41);
        let body = format!(
            r#"{{"messages":[{{"role":"assistant","content":[
                {{"type":"thinking","thinking":"let me think","signature":"sig"}},
                {{"type":"redacted_thinking","data":"{data}"}}]}}]}}"#
        );
        assert_eq!(count(&body), 1 + 1 + 2 + 11);
    }

    #[test]
    fn tool_use_and_tool_result() {
        let body = r#"{"messages":[
            {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"Read","input":{ "file_path" : "/a/b.ts" }}]},
            {"role":"user","content":[
                {"tool_use_id":"toolu_1","type":"tool_result","content":"line one","cache_control":{"type":"ephemeral"}},
                {"type":"tool_result","tool_use_id":"toolu_2","is_error":true,"content":[
                    {"type":"text","text":"screenshot:"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]},
                {"type":"tool_result","tool_use_id":"toolu_3"}
            ]}
        ]}"#;
        // `{"file_path":"/a/b.ts"}` is 23 chars → 6; "Read" → 1.
        assert_eq!(count(body), 1 + 6 + 2 + 3 + IMAGE_TOKENS);
    }

    #[test]
    fn images_and_documents() {
        let body = r#"{"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"url","url":"https://example.com/a.png"}},
            {"type":"document","source":{"type":"text","media_type":"text/plain","data":"plain text doc"},"title":"Notes"},
            {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"}},
            {"type":"document","source":{"type":"content","content":[{"type":"text","text":"inner"}]},"context":"ctx"},
            {"type":"document"}
        ]}]}"#;
        assert_eq!(
            count(body),
            IMAGE_TOKENS + (2 + 1 + 1 + 2) + DOCUMENT_TOKENS + (2 + 1) + DOCUMENT_TOKENS
        );
    }

    #[test]
    fn unknown_blocks_count_as_compact_json() {
        let block = r#"{ "type": "search_result", "title": "T", "source": "https://x", "content": [] }"#;
        let body = format!(r#"{{"messages":[{{"role":"user","content":[{block}]}}]}}"#);
        let compact = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(block).unwrap()).unwrap();
        assert_eq!(count(&body), count_text(&compact));
        // No type at all, a bare string, a number, and a known type with a wrongly typed field.
        let body = r#"{"messages":[{"role":"user","content":[{"text":"a b"}, "loose string", 12345, {"type":"text","text":5}]}]}"#;
        assert_eq!(
            count(body),
            count_text(r#"{"text":"a b"}"#) + 4 + 2 + count_text(r#"{"type":"text","text":5}"#)
        );
    }

    #[test]
    fn odd_content_values_count_as_nothing() {
        let body = r#"{"system":5,"messages":[{"role":"user","content":{"type":"text","text":"x"}},{"role":"user","content":true},{"role":"user","content":1.5}]}"#;
        assert_eq!(count(body), 0);
    }

    #[test]
    fn tools_are_counted() {
        let body = r#"{"tools":[
            {"name":"Read","description":"Reads a file from disk","input_schema":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}},
            {"name":"DeferredToolPlaceholder","defer_loading":true,"description":"x","input_schema":{ }},
            {"type":"web_search_20250305","name":"web_search"}
        ]}"#;
        let schema = r#"{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}"#;
        let expected = 1 + count_text("Reads a file from disk") + count_text(schema) + 6 + 1 + 1 + 3;
        assert_eq!(count(body), expected);
    }

    #[test]
    fn deep_tool_result_nesting_is_bounded() {
        let depth = 5000;
        let mut body = String::from(r#"{"messages":[{"role":"user","content":"#);
        for _ in 0..depth {
            body.push_str(r#"[{"type":"tool_result","content":"#);
        }
        body.push_str("\"x\"");
        for _ in 0..depth {
            body.push_str("}]");
        }
        body.push_str("}]}");
        // serde_json's own recursion limit rejects this before our walk even starts, or our depth cap
        // bounds the walk; either way no stack overflow.
        let _ = count_request(body.as_bytes());
        let mut body = String::from(r#"{"messages":[{"role":"user","content":"#);
        for _ in 0..60 {
            body.push_str(r#"[{"type":"tool_result","content":"#);
        }
        body.push_str("\"x\"");
        for _ in 0..60 {
            body.push_str("}]");
        }
        body.push_str("}]}");
        assert!(count_request(body.as_bytes()).unwrap() >= 1);
    }

    #[test]
    fn errors() {
        for body in [
            &b""[..],
            b"nope",
            b"[]",
            b"[null,null,null]",
            b" 5",
            b"\"s\"",
            b"{\"messages\":",
            b"{\"messages\":{}}",
            b"{\"messages\":[1]}",
            b"{\"tools\":[{\"name\":1}]}",
            // A message or tool given as an array, which serde alone would read field by field.
            b"{\"messages\":[[\"hi\"]]}",
            b"{\"messages\":[[\"user\",\"some words here\"]]}",
            b"{\"tools\":[[\"Read\",\"Reads a file\",{}]]}",
            b"\xff",
        ] {
            match count_request(body) {
                Err(CoreError::InvalidJson(msg)) => assert!(!msg.is_empty()),
                other => panic!("{:?} → {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    /// Shapes recorded from Claude Code 2.1.330 (tests/data), trimmed: top-level system blocks with
    /// `cache_control`, the mid-conversation `role:"system"` message with `output_config` (as a block list,
    /// a replayed plain string, and `--bare`'s empty list), `<system-reminder>` text blocks, a tool round trip
    /// with `tool_use_id` before `type`, and tools with `$schema`/`additionalProperties`/`defer_loading`.
    const CLAUDE_CODE_FOLLOWUP: &str = r#"{"model":"claude-opus-5-5","messages":[
        {"role":"user","content":[{"type":"text","text":"<system-reminder>As you answer the user's questions, you can use the following context</system-reminder>"},{"type":"text","text":"create the file"}]},
        {"role":"system","content":"Here is useful information about the environment you are running in: cwd /home/user/project","output_config":{"effort":"medium"}},
        {"role":"system","content":[{"type":"text","text":"Today's date is 2026-11-24.","cache_control":{"type":"ephemeral"}}],"output_config":{"effort":"medium"}},
        {"role":"system","content":[],"output_config":{"effort":"medium"}},
        {"role":"assistant","content":[{"type":"text","text":"I will use the Write tool."},{"type":"tool_use","id":"toolu_01AePXTQLpObZnsP4sFqz1o6","name":"Write","input":{"file_path":"/home/user/project/v.txt","content":"v2.1.330"}}]},
        {"role":"user","content":[{"tool_use_id":"toolu_01AePXTQLpObZnsP4sFqz1o6","type":"tool_result","content":"File created successfully at: /home/user/project/v.txt","cache_control":{"type":"ephemeral"}}]}],
      "system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.330.413; cc_entrypoint=sdk-cli;"},{"type":"text","text":"You are a Claude agent, built on Anthropic's Claude Agent SDK.","cache_control":{"type":"ephemeral"}}],
      "tools":[{"name":"Write","description":"Writes a file to the local filesystem.","input_schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"file_path":{"description":"The absolute path to the file to write","type":"string"},"content":{"description":"The content to write to the file","type":"string"}},"required":["file_path","content"],"additionalProperties":false}},
               {"name":"DeferredToolPlaceholder","description":"placeholder","input_schema":{"type":"object","properties":{}},"defer_loading":true}],
      "metadata":{"user_id":"{\"device_id\":\"abc\",\"account_uuid\":\"\",\"session_id\":\"u\"}"},
      "max_tokens":32000,"thinking":{"type":"adaptive","display":"omitted"},"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},"output_config":{"effort":"medium"},"stream":true}"#;

    #[test]
    fn claude_code_followup_sample() {
        let messages = count_text(
            "<system-reminder>As you answer the user's questions, you can use the following context</system-reminder>",
        ) + count_text("create the file")
            + count_text("Here is useful information about the environment you are running in: cwd /home/user/project")
            + count_text("Today's date is 2026-11-24.")
            + count_text("I will use the Write tool.")
            + count_text("Write")
            + count_text(r#"{"file_path":"/home/user/project/v.txt","content":"v2.1.330"}"#)
            + count_text("File created successfully at: /home/user/project/v.txt");
        let system = count_text("x-anthropic-billing-header: cc_version=2.1.330.413; cc_entrypoint=sdk-cli;")
            + count_text("You are a Claude agent, built on Anthropic's Claude Agent SDK.");
        let tools = count_text("Write")
            + count_text("Writes a file to the local filesystem.")
            + count_text(
                r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"file_path":{"description":"The absolute path to the file to write","type":"string"},"content":{"description":"The content to write to the file","type":"string"}},"required":["file_path","content"],"additionalProperties":false}"#,
            )
            + count_text("DeferredToolPlaceholder")
            + count_text("placeholder")
            + count_text(r#"{"type":"object","properties":{}}"#);
        // Pinned totals (cross-checked with an independent Python implementation) guard against silent changes.
        assert_eq!(messages, 28 + 4 + 24 + 7 + 8 + 2 + 16 + 13);
        assert_eq!(system, 19 + 18);
        assert_eq!(tools, 2 + 11 + 80 + 6 + 3 + 9);
        assert_eq!(count(CLAUDE_CODE_FOLLOWUP), messages + system + tools);
    }

    /// The `count_tokens` shape: `{"model","messages","tools"}` with no system, content as a plain string.
    #[test]
    fn claude_code_count_tokens_sample() {
        let body = r#"{"model":"claude-opus-5-5","messages":[{"role":"user","content":"foo"}],"tools":[{"name":"Bash","description":"Executes a given bash command","input_schema":{"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}}]}"#;
        let expected = 1
            + 1
            + count_text("Executes a given bash command")
            + count_text(r#"{"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}"#);
        assert_eq!(count(body), expected);
    }

    /// The 2.0.77 topic-detection shape: system blocks, an assistant prefill `{`.
    #[test]
    fn claude_code_prefill_sample() {
        let body = r#"{"model":"claude-haiku","messages":[{"role":"user","content":[{"type":"text","text":"hello there"}]},{"role":"assistant","content":[{"type":"text","text":"{"}]}],"system":[{"type":"text","text":"Analyze if this message indicates a new conversation topic."}],"tools":[],"max_tokens":512,"stream":true}"#;
        assert_eq!(
            count(body),
            4 + 1 + count_text("Analyze if this message indicates a new conversation topic.")
        );
    }

    #[test]
    fn large_request_is_fast_enough_to_not_need_threads() {
        // Not a benchmark, just a smoke check that a ~200 KB body parses and counts.
        let mut body = String::from(r#"{"system":[{"type":"text","text":"sys"}],"messages":["#);
        for i in 0..400 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"role":"user","content":[{"type":"text","text":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"},{"type":"tool_result","tool_use_id":"t","content":"ok done \"quoted\" \n new line"}]}"#);
        }
        body.push_str("]}");
        assert!(body.len() > 150_000);
        let per_message = count_text(
            "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore",
        ) + count_text("ok done \"quoted\" \n new line");
        assert_eq!(count(&body), 1 + 400 * per_message);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[ a-z\u{85}\u{a0}\u{3000}\u{1}\t\n\"\\\\/é😀]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z é/]{0,6}", inner), 0..4)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// Pretty-printed JSON with every non-ASCII character, space and slash inside strings written as an escape
    /// (as Python's `json.dumps` or other clients might), to check that `count_json` ignores the escaping.
    fn ascii_json(value: &serde_json::Value) -> String {
        use std::fmt::Write;
        let pretty = serde_json::to_string_pretty(value).unwrap();
        let mut out = String::new();
        let mut in_string = false;
        let mut escaped = false;
        for c in pretty.chars() {
            if in_string && !escaped && c != '"' && c != '\\' && (!c.is_ascii() || c == ' ' || c == '/') {
                if c == '/' {
                    out.push_str("\\/");
                } else {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        write!(out, "\\u{unit:04x}").unwrap();
                    }
                }
                continue;
            }
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = !in_string;
            }
        }
        out
    }

    /// Strings mixing words, JSON-escaped characters, Unicode whitespace and multi-byte characters.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z ]{0,20}",
            "[ a-zA-Z0-9\u{85}\u{a0}\u{3000}\u{2028}\u{1}\u{b}\t\n\r\"\\\\/é日😀]{0,40}",
            any::<String>(),
            "[a-z]{60,140}",
        ]
    }

    /// A JSON object with these members, in this order (`preserve_order` keeps it).
    fn object(members: Vec<(&str, serde_json::Value)>) -> serde_json::Value {
        serde_json::Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A field value that is usually right for `field` and sometimes of another type.
    fn field(good: impl Strategy<Value = serde_json::Value> + 'static) -> BoxedStrategy<serde_json::Value> {
        use serde_json::Value;
        prop_oneof![
            8 => good,
            1 => Just(Value::Null),
            1 => prop_oneof![Just(Value::from(7)), Just(Value::Bool(true)), Just(serde_json::json!({"x": 1})), Just(serde_json::json!([1]))],
        ]
        .boxed()
    }

    /// Content blocks of every kind, with shuffled, sometimes missing, duplicated or mistyped fields.
    fn block_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf_kind = prop_oneof![
            Just("text"),
            Just("thinking"),
            Just("redacted_thinking"),
            Just("tool_use"),
            Just("tool_result"),
            Just("image"),
            Just("document"),
            Just("search_result"),
            Just("content"),
        ];
        let leaf = (leaf_kind, text(), text(), json_value(), any::<u64>(), 0..3usize).prop_map(
            |(kind, a, b, input, seed, source_kind)| {
                let source = match source_kind {
                    0 => serde_json::json!({"type": "text", "media_type": "text/plain", "data": a}),
                    1 => serde_json::json!({"data": b, "type": "base64"}),
                    _ => serde_json::json!({"type": "content", "content": [{"type": "text", "text": b}]}),
                };
                let mut members = vec![
                    ("type", Value::from(kind)),
                    ("text", Value::from(a.clone())),
                    ("thinking", Value::from(b.clone())),
                    ("data", Value::from(a.clone())),
                    ("name", Value::from(b.clone())),
                    ("input", input),
                    ("title", Value::from(a)),
                    ("source", source),
                    ("cache_control", serde_json::json!({"type": "ephemeral"})),
                ];
                // Keep a seeded subset, in a seeded order.
                let mut bits = seed;
                members.retain(|_| {
                    bits = bits.rotate_left(7) ^ 0x9E37_79B9_7F4A_7C15;
                    bits % 3 != 0
                });
                let len = members.len().max(1);
                members.rotate_left(usize::try_from(seed % u64::try_from(len).unwrap()).unwrap());
                if seed % 5 == 0 {
                    members.reverse();
                }
                object(members)
            },
        );
        let odd = prop_oneof![
            field(text().prop_map(Value::from))
                .prop_map(|text| object(vec![("type", Value::from("text")), ("text", text)])),
            field(text().prop_map(Value::from))
                .prop_map(|title| object(vec![("type", Value::from("document")), ("title", title)])),
            field(Just(Value::from("text")))
                .prop_map(|kind| object(vec![("text", Value::from("a b")), ("type", kind)])),
            text().prop_map(Value::from),
            Just(Value::from(12)),
            Just(Value::Null),
        ];
        let leaf = prop_oneof![6 => leaf, 1 => odd];
        leaf.prop_recursive(3, 16, 4, |inner| {
            (proptest::collection::vec(inner, 0..4), any::<bool>(), text()).prop_map(|(blocks, as_string, text)| {
                let content = if as_string {
                    Value::from(text)
                } else {
                    Value::Array(blocks)
                };
                object(vec![
                    ("tool_use_id", Value::from("t")),
                    ("type", Value::from("tool_result")),
                    ("content", content),
                ])
            })
        })
    }

    fn content_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        prop_oneof![
            4 => text().prop_map(Value::from),
            4 => proptest::collection::vec(block_value(), 0..5).prop_map(Value::Array),
            1 => Just(Value::Null),
            1 => Just(Value::Bool(false)),
        ]
    }

    /// Whole request bodies as Claude Code sends them and as odder clients might, serialised compactly, pretty,
    /// or with every non-ASCII character, space and slash escaped.
    fn request_body() -> impl Strategy<Value = Vec<u8>> {
        use serde_json::Value;
        let message = (content_value(), any::<bool>()).prop_map(|(content, system)| {
            object(vec![
                ("role", Value::from(if system { "system" } else { "user" })),
                ("content", content),
            ])
        });
        let tool = (text(), field(text().prop_map(Value::from)), json_value(), any::<bool>()).prop_map(
            |(name, description, schema, schema_first)| {
                let mut members = vec![
                    ("name", Value::from(name)),
                    ("description", description),
                    ("input_schema", schema),
                ];
                if schema_first {
                    members.reverse();
                }
                object(members)
            },
        );
        (
            proptest::option::of(content_value()),
            proptest::collection::vec(message, 0..4),
            proptest::collection::vec(tool, 0..3),
            0..3usize,
        )
            .prop_map(|(system, messages, tools, form)| {
                let mut members = vec![("model", Value::from("claude")), ("max_tokens", Value::from(100))];
                if let Some(system) = system {
                    members.push(("system", system));
                }
                members.push(("messages", Value::Array(messages)));
                members.push(("tools", Value::Array(tools)));
                let value = object(members);
                match form {
                    0 => serde_json::to_vec(&value).unwrap(),
                    1 => serde_json::to_vec_pretty(&value).unwrap(),
                    _ => ascii_json(&value).into_bytes(),
                }
            })
    }

    /// Every outcome of [`count_request`] (count or error message) is the serde implementation's.
    fn assert_same_as_serde(body: &[u8]) -> Result<(), TestCaseError> {
        let fast = walk_request(body);
        let reference = count_request_serde(body);
        if let Some(tokens) = fast {
            prop_assert_eq!(Ok(tokens), reference.clone(), "{}", String::from_utf8_lossy(body));
        }
        prop_assert_eq!(count_request(body), reference);
        Ok(())
    }

    proptest! {
        // Failure seeds live beside this file (`tokens.proptest-regressions`), not in a top-level folder.
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn window_matches_lane_by_lane(phase in 0..4u32, chars in any::<u64>(), seps in any::<u64>(), len in 1..=64usize) {
            let mut counter = Counter { tokens: 0, phase };
            counter.window(chars, seps, len);
            prop_assert_eq!((counter.tokens, counter.phase), window_by_lanes(phase, chars, seps, len));
        }

        #[test]
        fn json_fast_path_matches_lenient_scan(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&value).unwrap() } else { ascii_json(&value) };
            prop_assert_eq!(json_tokens(&mut Cursor::new(text.as_bytes())), Some(count_json_lenient(&text)));
        }

        /// Raw bytes inside counted strings (text and JSON mode, short and window-crossing): invalid UTF-8 and
        /// control characters are rejected exactly where serde rejects them.
        #[test]
        fn string_bytes_match_serde(
            parts in proptest::collection::vec(prop_oneof![
                proptest::collection::vec(0x80..=0xFFu8, 1..4),
                Just(vec![0xE0, 0xA0, 0x80]), Just(vec![0xED, 0x9F, 0xBF]), Just(vec![0xED, 0xA0, 0x80]),
                Just(vec![0xF0, 0x9F, 0x98, 0x80]), Just(vec![0xF4, 0x90, 0x80, 0x80]), Just(vec![0xC3, 0xA9]),
                Just(vec![0xE3, 0x80, 0x80]), Just(b"\\n".to_vec()), Just(b"\\\"".to_vec()), Just(b"\\u00e9".to_vec()),
                Just(vec![0x1F]), Just(b"a".repeat(30)), Just(b" ".to_vec()),
            ], 0..24),
            pad in 0..64usize,
        ) {
            let mut text = b"x".repeat(pad);
            for part in parts {
                text.extend_from_slice(&part);
            }
            let mut body = br#"{"messages":[{"role":"user","content":""#.to_vec();
            body.extend_from_slice(&text);
            body.extend_from_slice(br#""},{"role":"user","content":[{"type":"tool_use","name":"n","input":{"k":""#);
            body.extend_from_slice(&text);
            body.extend_from_slice(br#""}}]}]}"#);
            assert_same_as_serde(&body)?;
        }

        /// Every kind of escape, alone or in runs, at every lane of a window (`pad`), in text and JSON mode:
        /// escaped backslashes, a backslash in the window's last lane, `\u` forms and (sometimes) one broken
        /// escape or lone surrogate all count, or fail, exactly like serde.
        #[test]
        fn escapes_anywhere_match_serde(
            parts in proptest::collection::vec(prop_oneof![
                Just(&br"\\"[..]), Just(&br"\n"[..]), Just(&br"\t"[..]), Just(&br"\r"[..]), Just(&br"\b"[..]),
                Just(&br"\f"[..]), Just(&br"\/"[..]), Just(&br#"\""#[..]), Just(&br"\u0020"[..]),
                Just(&br"\u3000"[..]), Just(&br"\u00e9"[..]), Just(&br"\ud83d\ude00"[..]), Just(&b"abcde"[..]),
                Just(&b" "[..]), Just("é".as_bytes()),
            ], 0..40),
            pad in 0..64usize,
            invalid in proptest::option::weighted(0.2, (any::<prop::sample::Index>(), prop_oneof![
                Just(&br"\q"[..]), Just(&br"\u12"[..]), Just(&br"\ud800"[..]), Just(&br"\"[..]),
            ])),
        ) {
            let mut text = b"x".repeat(pad);
            for part in &parts {
                text.extend_from_slice(part);
            }
            if let Some((at, escape)) = invalid {
                let at = at.index(text.len() + 1);
                text.splice(at..at, escape.iter().copied());
            }
            let mut body = br#"{"system":""#.to_vec();
            body.extend_from_slice(&text);
            body.extend_from_slice(br#"","messages":[{"role":"user","content":[{"type":"x","k":""#);
            body.extend_from_slice(&text);
            body.extend_from_slice(br#""}]}]}"#);
            if invalid.is_none() {
                prop_assert!(walk_request(&body).is_some(), "the walker gave up on valid escapes");
            }
            assert_same_as_serde(&body)?;
        }

        #[test]
        fn requests_match_serde(body in request_body()) {
            assert_same_as_serde(&body)?;
        }

        /// Valid generated requests without the shapes the walker leaves to serde are all counted by the walker.
        #[test]
        fn walker_takes_ordinary_requests(body in request_body()) {
            let text = String::from_utf8_lossy(&body);
            let odd = ["{\"x\":1}", "[1]", ": 7", ":7", "\\u"].iter().any(|odd| text.contains(odd));
            if !odd && count_request_serde(&body).is_ok() {
                prop_assert!(walk_request(&body).is_some(), "{}", text);
            }
        }

        #[test]
        fn mutated_requests_match_serde(body in request_body(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4)) {
            let mut body = body;
            for (at, byte, op) in edits {
                let at = at % (body.len() + 1);
                match op {
                    0 if at < body.len() => body[at] = byte,
                    1 if at < body.len() => { body.remove(at); }
                    _ => body.insert(at, byte),
                }
            }
            assert_same_as_serde(&body)?;
        }

        #[test]
        fn structural_noise_matches_serde(parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just("\"system\""), Just("\"messages\""),
            Just("\"tools\""), Just("\"content\""), Just("\"type\""), Just("\"text\""), Just("\"tool_result\""),
            Just("\"source\""), Just("\"name\""), Just("\"input\""), Just("\"input_schema\""), Just("null"), Just("1e999"),
            Just("\"a b\""), Just("\"\\ud800\""), Just(" "), Just("true"), Just("-0.5"), Just("\"data\""), Just("\"document\""),
        ], 0..40)) {
            let body = format!("{{\"messages\":[{{\"content\":[{}", parts.concat());
            assert_same_as_serde(body.as_bytes())?;
            let body = parts.concat();
            assert_same_as_serde(body.as_bytes())?;
        }
        #[test]
        fn text_matches_reference(text in any::<String>()) {
            prop_assert_eq!(count_text(&text), reference(&text));
        }

        #[test]
        fn ascii_text_matches_reference(text in "[a-zA-Z0-9{}\"\\\\ \t\n\r\u{b}\u{c}\u{1c}\u{1f}\u{7f}]{0,100}") {
            prop_assert_eq!(count_text(&text), reference(&text));
        }

        #[test]
        fn mixed_text_matches_reference(parts in proptest::collection::vec(prop_oneof!["[a-z ]{0,12}", "[é€😀\u{a0}\u{3000}\u{85} ]{0,3}"], 0..12)) {
            let text = parts.concat();
            prop_assert_eq!(count_text(&text), reference(&text));
        }

        #[test]
        fn spacey_text_matches_reference(text in "[a-zé€😀 \t\n\u{a0}\u{3000}\u{2028}]{0,80}") {
            prop_assert_eq!(count_text(&text), reference(&text));
        }

        #[test]
        fn json_equals_text_of_compact_form(s in any::<String>(), key in "[a-z ]{0,8}", n in any::<i64>()) {
            let value = serde_json::json!({ key: [s, n, null, true] });
            let compact = serde_json::to_string(&value).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            prop_assert_eq!(count_json(&compact), count_text(&compact));
            prop_assert_eq!(count_json(&pretty), count_text(&compact));
        }

        #[test]
        fn json_equals_text_of_serialisation_whatever_the_escaping(value in json_value()) {
            let compact = serde_json::to_string(&value).unwrap();
            prop_assert_eq!(count_json(&ascii_json(&value)), count_text(&compact));
        }

        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = count_request(&bytes);
        }

        #[test]
        fn arbitrary_json_bodies_never_panic(
            text in "[{}\\[\\]\",:a-z0-9 ]{0,10}",
            kind in prop_oneof![Just("text"), Just("tool_use"), Just("tool_result"), Just("image"), Just("document"), Just("x")],
        ) {
            let body = format!(r#"{{"messages":[{{"role":"user","content":[{{"type":"{kind}","text":"{text}","content":"{text}"}}]}}]}}"#);
            let _ = count_request(body.as_bytes());
        }
    }
}
