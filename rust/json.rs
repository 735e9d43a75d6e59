//! JSON helpers shared by the parsers in [`crate::chunk`] and [`crate::tokens`].
//!
//! - [`CowStr`]: a borrowed-when-possible string for serde structs.
//! - `Cursor`: a validating JSON scanner over raw bytes for the hand-written fast paths. It allocates only to
//!   decode an escaped string a caller asks for, and never builds values: callers walk the document themselves
//!   and skip what they do not need.
//! - `Window`: 64 input bytes as SIMD vectors, turned into one bit per byte ("is a quote", "is below 0x20", …).
//!
//! The fast paths are exact on the documents they accept and answer `None` ("not mine") on anything else: invalid
//! JSON, but also valid JSON they choose not to handle (escaped object keys, lone surrogates, very deep nesting, …).
//! Each caller then falls back to its serde implementation, which decides, so results and error messages stay
//! exactly those of serde. A fast path must therefore never accept a document serde would reject.

use std::borrow::Cow;

use serde::Deserialize;
use wide::u8x16;

/// A JSON string that borrows from the input when it has no escapes, and owns its text otherwise.
///
/// serde's `#[serde(borrow)]` trick for `Cow<str>` does not reach through `Option`: an `Option<Cow<'a, str>>`
/// field always allocates. Wrapping the `Cow` in this newtype restores borrowing (`Option<CowStr<'a>>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CowStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl CowStr<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Nesting depth up to which [`Cursor::skip_value`] follows arrays and objects; deeper documents are left to serde.
///
/// It bounds the recursion of the fast paths (and so their stack use), far above what real requests and chunks use.
pub(crate) const MAX_DEPTH: u32 = 100;

/// 64 consecutive input bytes as four 16-byte SIMD vectors (SSE2 on x86-64, NEON on aarch64, plain arrays
/// elsewhere, through the `wide` crate), for computing one-bit-per-byte masks: bit `i` of a mask is byte `i`.
#[derive(Clone, Copy)]
pub(crate) struct Window([u8x16; 4]);

impl Window {
    /// The 64 bytes at `bytes[pos..]`; past the end of `bytes` the window is padded with NUL bytes, which every
    /// scanner treats as a stop (a control character is invalid inside a JSON string).
    #[inline]
    pub(crate) fn load(bytes: &[u8], pos: usize) -> Self {
        let rest = bytes.get(pos..).unwrap_or_default();
        if let Some(chunk) = rest.first_chunk::<64>() {
            return Self::from_array(chunk);
        }
        let mut padded = [0u8; 64];
        padded[..rest.len()].copy_from_slice(rest);
        Self::from_array(&padded)
    }

    #[inline]
    fn from_array(chunk: &[u8; 64]) -> Self {
        let (parts, _) = chunk.as_chunks::<16>();
        Self([
            u8x16::new(parts[0]),
            u8x16::new(parts[1]),
            u8x16::new(parts[2]),
            u8x16::new(parts[3]),
        ])
    }

    /// One bit per byte: bit `i` is bit 7 of `lane(byte i)`.
    #[inline]
    fn mask(self, lane: impl Fn(u8x16) -> u8x16) -> u64 {
        let [a, b, c, d] = self.0.map(|v| u64::from(lane(v).to_bitmask()));
        a | b << 16 | c << 32 | d << 48
    }

    /// Whether any byte is non-ASCII: one vector test, cheaper than [`Window::high`].
    #[inline]
    pub(crate) fn any_high(self) -> bool {
        let [a, b, c, d] = self.0;
        (a | b | c | d).to_bitmask() != 0
    }

    /// Non-ASCII bytes (0x80 and above).
    #[inline]
    pub(crate) fn high(self) -> u64 {
        self.mask(|v| v)
    }

    /// Bytes that end a run of plain string contents: `"`, `\\` and the control characters (below 0x20).
    #[inline]
    pub(crate) fn string_stops(self) -> u64 {
        let quote = u8x16::splat(b'"');
        let backslash = u8x16::splat(b'\\');
        let control = u8x16::splat(0x1F);
        self.mask(|v| v.simd_eq(quote) | v.simd_eq(backslash) | v.min(control).simd_eq(v))
    }
}

/// Bit 7 of every byte of a `u64`.
pub(crate) const SWAR_HIGH: u64 = 0x8080_8080_8080_8080;
/// 1 in every byte of a `u64`.
pub(crate) const SWAR_ONES: u64 = 0x0101_0101_0101_0101;

/// For eight bytes read as a little-endian `u64`: bit 7 set in the first byte that is `"`, `\\` or a control
/// character (below 0x20), if any. Bytes above the first hit may be flagged wrongly (borrows), so only the lowest
/// flag is meaningful; non-ASCII bytes are never flagged.
#[inline]
pub(crate) fn swar_string_stops(word: u64) -> u64 {
    let quote = word ^ (SWAR_ONES * u64::from(b'"'));
    let backslash = word ^ (SWAR_ONES * u64::from(b'\\'));
    let zero_byte = |x: u64| x.wrapping_sub(SWAR_ONES) & !x;
    (zero_byte(quote) | zero_byte(backslash) | (word.wrapping_sub(SWAR_ONES * 0x20) & !word)) & SWAR_HIGH
}

/// The bits below bit `n` (`n` ≤ 64).
#[inline]
pub(crate) const fn below(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The character a two-byte JSON escape (`\n`, `\"`, …) stands for, by the byte after the backslash.
///
/// `const` so the token counter can build its escape tables from the same definition at compile time.
pub(crate) const fn short_escape(byte: u8) -> Option<char> {
    Some(match byte {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// Decode the escape sequence whose backslash is at `bytes[at]`: the character and the sequence's length in bytes
/// (2, 6, or 12 for a surrogate pair).
///
/// `None` for an invalid escape and for a lone surrogate (which serde rejects in strings it decodes).
#[inline]
pub(crate) fn unescape_at(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let byte = *bytes.get(at + 1)?;
    if byte == b'u' {
        return unicode_escape_at(bytes, at);
    }
    Some((short_escape(byte)?, 2))
}

#[cold]
fn unicode_escape_at(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let unit = hex4(bytes, at + 2)?;
    if !(0xD800..0xE000).contains(&unit) {
        return Some((char::from_u32(unit)?, 6));
    }
    if unit >= 0xDC00 || bytes.get(at + 6..at + 8) != Some(b"\\u") {
        return None;
    }
    let low = hex4(bytes, at + 8)?;
    if !(0xDC00..0xE000).contains(&low) {
        return None;
    }
    Some((char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?, 12))
}

/// The value of the four hex digits at `bytes[at..at + 4]`.
pub(crate) fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// The contents of a JSON string as it appears in the input (between the quotes, escapes not decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawStr<'a> {
    /// The bytes between the quotes; valid UTF-8.
    pub raw: &'a [u8],
    /// Whether `raw` contains escape sequences (then it differs from the decoded text).
    pub escaped: bool,
}

/// The text of a JSON string given its raw contents (valid UTF-8, escapes valid): escapes decoded.
fn unescape(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut rest = 0;
    while let Some(offset) = memchr::memchr(b'\\', &bytes[rest..]) {
        let at = rest + offset;
        out.push_str(&raw[rest..at]);
        let (c, len) = unescape_at(bytes, at)?;
        out.push(c);
        rest = at + len;
    }
    out.push_str(&raw[rest..]);
    Some(out)
}

/// A validating JSON scanner over raw bytes (see the module docs).
///
/// Methods that read a value expect the cursor before it (whitespace allowed) and leave it just after it; `None`
/// means invalid or unsupported input, after which the cursor position is meaningless.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    /// The whole input.
    pub bytes: &'a [u8],
    /// The next byte to read.
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over bytes that may not be UTF-8: strings are validated as they are read, and only those with
    /// bytes beyond ASCII need a UTF-8 check (outside strings, anything beyond ASCII is invalid JSON anyway).
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Skip whitespace and return the next byte without consuming it.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        loop {
            let byte = *self.bytes.get(self.pos)?;
            if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(byte);
            }
            self.pos += 1;
        }
    }

    /// Skip whitespace and consume `byte` if it comes next.
    #[inline]
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skip whitespace and consume `byte`, which must come next.
    #[inline]
    pub(crate) fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Succeeds when only whitespace is left.
    pub(crate) fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// After an opening `{` or `[`, or after a member or element: whether another one follows (`,`) or the
    /// container ends (`close`). `first` is true right after the opening bracket, where `close` may come at once.
    #[inline]
    pub(crate) fn next_item(&mut self, close: u8, first: bool) -> Option<bool> {
        match self.peek()? {
            byte if byte == close => {
                self.pos += 1;
                Some(false)
            }
            b',' if !first => {
                self.pos += 1;
                Some(true)
            }
            _ if first => Some(true),
            _ => None,
        }
    }

    /// An object key without escapes, and the `:` after it. `None` for escaped keys too: matching them against
    /// field names would need decoding, and no real client escapes plain field names.
    #[inline]
    pub(crate) fn key(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let RawStr { raw, escaped } = self.string_body()?;
        if escaped {
            return None;
        }
        self.expect(b':')?;
        Some(raw)
    }

    /// A string value (after optional whitespace).
    #[inline]
    pub(crate) fn string(&mut self) -> Option<RawStr<'a>> {
        self.expect(b'"')?;
        self.string_body()
    }

    /// The rest of a string whose opening quote was just consumed: escapes, control characters and UTF-8 are
    /// validated. Scans 64 bytes at a time, and byte by byte near the end of the input (where a 64-byte window
    /// would need a padded copy).
    pub(crate) fn string_body(&mut self) -> Option<RawStr<'a>> {
        let (raw, high) = self.scan_string()?;
        if high {
            std::str::from_utf8(raw.raw).ok()?;
        }
        Some(raw)
    }

    /// [`Cursor::string_body`] without the UTF-8 check: the contents, and whether they hold non-ASCII bytes (which
    /// the caller must then validate, unless the input is known to be text).
    #[inline]
    fn scan_string(&mut self) -> Option<(RawStr<'a>, bool)> {
        let start = self.pos;
        let mut escaped = false;
        let mut high = false;
        // Most strings are short (keys, ids, a few tokens of text): the first bytes go eight at a time, which
        // costs less than setting up a window.
        for _ in 0..4 {
            let Some(word) = self.bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<8>) else {
                break;
            };
            let word = u64::from_le_bytes(*word);
            let stops = swar_string_stops(word);
            if stops == 0 {
                high |= word & SWAR_HIGH != 0;
                self.pos += 8;
                continue;
            }
            let lane = (stops.trailing_zeros() / 8) as usize;
            high |= word & SWAR_HIGH & ((1 << (8 * lane)) - 1) != 0;
            let at = self.pos + lane;
            match self.bytes[at] {
                b'"' => return Some(self.string_end(start, at, escaped, high)),
                b'\\' => {
                    let (_, len) = unescape_at(self.bytes, at)?;
                    escaped = true;
                    self.pos = at + len;
                }
                _ => return None,
            }
        }
        let end = loop {
            if self.bytes.len() - self.pos < 64 {
                break self.string_tail(&mut escaped, &mut high)?;
            }
            let window = Window::load(self.bytes, self.pos);
            let mut stops = window.string_stops();
            let highs = if window.any_high() { window.high() } else { 0 };
            let consumed = loop {
                if stops == 0 {
                    break 64;
                }
                let lane = stops.trailing_zeros() as usize;
                let at = self.pos + lane;
                match self.bytes[at] {
                    b'"' => {
                        high |= highs & below(lane) != 0;
                        break 0;
                    }
                    b'\\' => {
                        let (_, len) = unescape_at(self.bytes, at)?;
                        escaped = true;
                        if lane + len >= 64 {
                            break lane + len;
                        }
                        stops &= !below(lane + len);
                    }
                    _ => return None,
                }
            };
            if consumed == 0 {
                break self.pos + stops.trailing_zeros() as usize;
            }
            high |= highs & below(consumed) != 0;
            self.pos += consumed;
        };
        Some(self.string_end(start, end, escaped, high))
    }

    /// Finish [`Cursor::scan_string`] at the closing quote `end`.
    #[inline]
    fn string_end(&mut self, start: usize, end: usize, escaped: bool, high: bool) -> (RawStr<'a>, bool) {
        self.pos = end + 1;
        let raw = RawStr {
            raw: &self.bytes[start..end],
            escaped,
        };
        (raw, high)
    }

    /// [`Cursor::string_body`] byte by byte: the position of the closing quote.
    fn string_tail(&mut self, escaped: &mut bool, high: &mut bool) -> Option<usize> {
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => return Some(self.pos),
                b'\\' => {
                    let (_, len) = unescape_at(self.bytes, self.pos)?;
                    *escaped = true;
                    self.pos += len;
                }
                0..0x20 => return None,
                byte => {
                    *high |= byte >= 0x80;
                    self.pos += 1;
                }
            }
        }
    }

    /// A string value (after optional whitespace), decoded: borrowed from the input unless it has escapes.
    pub(crate) fn string_value(&mut self) -> Option<Cow<'a, str>> {
        self.expect(b'"')?;
        // Validated here, once: the scan only notes whether there is anything beyond ASCII.
        let (raw, _) = self.scan_string()?;
        let text = std::str::from_utf8(raw.raw).ok()?;
        if raw.escaped {
            unescape(text).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(text))
        }
    }

    /// `true`, `false` or `null`, given its spelling.
    #[inline]
    pub(crate) fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A number (after optional whitespace), validated against the JSON grammar; returns its text.
    pub(crate) fn number(&mut self) -> Option<&'a [u8]> {
        self.peek()?;
        let start = self.pos;
        self.eat_byte(b'-');
        match self.bytes.get(self.pos)? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat_byte(b'.') {
            self.some_digits()?;
        }
        if self.eat_byte(b'e') || self.eat_byte(b'E') {
            let _ = self.eat_byte(b'+') || self.eat_byte(b'-');
            self.some_digits()?;
        }
        Some(&self.bytes[start..self.pos])
    }

    fn eat_byte(&mut self, byte: u8) -> bool {
        let hit = self.bytes.get(self.pos) == Some(&byte);
        self.pos += usize::from(hit);
        hit
    }

    fn digits(&mut self) {
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// Skip any value, validating it.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                self.string_body().map(drop)
            }
            b'{' => {
                self.pos += 1;
                let depth = deeper(depth)?;
                let mut first = true;
                while self.next_item(b'}', first)? {
                    first = false;
                    self.expect(b'"')?;
                    self.string_body()?;
                    self.expect(b':')?;
                    self.skip_nested(depth)?;
                }
                Some(())
            }
            b'[' => {
                self.pos += 1;
                let depth = deeper(depth)?;
                let mut first = true;
                while self.next_item(b']', first)? {
                    first = false;
                    self.skip_nested(depth)?;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }
}

/// One level deeper, if still within [`MAX_DEPTH`].
#[inline]
pub(crate) fn deeper(depth: u32) -> Option<u32> {
    (depth < MAX_DEPTH).then_some(depth + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Deserialize)]
    struct Holder<'a> {
        #[serde(borrow)]
        s: Option<CowStr<'a>>,
    }

    #[test]
    fn borrows_without_escapes_and_owns_with_them() {
        let plain: Holder<'_> = serde_json::from_str(r#"{"s":"abc"}"#).unwrap();
        assert!(matches!(plain.s.as_ref().map(|s| &s.0), Some(Cow::Borrowed("abc"))));
        let escaped: Holder<'_> = serde_json::from_str(r#"{"s":"a\nb"}"#).unwrap();
        assert!(matches!(escaped.s.as_ref().map(|s| &s.0), Some(Cow::Owned(_))));
        assert_eq!(escaped.s.unwrap().as_str(), "a\nb");
        let missing: Holder<'_> = serde_json::from_str("{}").unwrap();
        assert!(missing.s.is_none());
    }

    #[test]
    fn borrows_from_bytes_too() {
        let plain: Holder<'_> = serde_json::from_slice(br#"{"s":"abc"}"#).unwrap();
        assert!(matches!(plain.s.map(|s| s.0), Some(Cow::Borrowed("abc"))));
    }

    #[test]
    fn window_masks() {
        let mut text = [b' '; 64];
        text[..12].copy_from_slice(b"ab\"c\\d\x01e f\xc3\xa9");
        text[63] = b'"';
        let window = Window::load(&text, 0);
        assert_eq!(window.string_stops(), 1 << 2 | 1 << 4 | 1 << 6 | 1 << 63);
        assert_eq!(window.high(), 0b11 << 10);
        // Past the end: NUL padding.
        let window = Window::load(b"xy", 1);
        assert_eq!(window.string_stops(), !1);
        assert_eq!(Window::load(b"xy", 5).string_stops(), u64::MAX);
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_at(br"\n", 0), Some(('\n', 2)));
        assert_eq!(unescape_at(br"\/", 0), Some(('/', 2)));
        assert_eq!(unescape_at(br"\u00e9", 0), Some(('é', 6)));
        assert_eq!(unescape_at(br"\ud83d\ude00", 0), Some(('😀', 12)));
        for bad in [
            &br"\x"[..],
            br"\",
            br"\u12",
            br"\uzzzz",
            br"\ud83d",
            br"\ude00",
            br"\ud83d\n",
        ] {
            assert_eq!(unescape_at(bad, 0), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn skip(json: &str) -> Option<usize> {
        let mut cursor = Cursor::new(json.as_bytes());
        cursor.skip_value()?;
        cursor.end()?;
        Some(cursor.pos)
    }

    #[test]
    fn skips_valid_json() {
        for json in [
            "0",
            "-0",
            "1.5e+3",
            "-12E-2",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"b\\c\u00e9""#,
            "[]",
            "{}",
            r#" { "a" : [ 1 , { "b" : null } ] , "" : "x" } "#,
        ] {
            assert!(skip(json).is_some(), "{json}");
        }
        let long = format!("[\"{}\\n{}é\"]", "x".repeat(100), "y".repeat(70));
        assert!(skip(&long).is_some());
    }

    #[test]
    fn rejects_invalid_json() {
        for json in [
            "",
            "01",
            "1.",
            "-",
            "1e",
            ".5",
            "tru",
            "nul",
            "[1,]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            "[1 2]",
            "\"\t\"",
            r#""\x""#,
            r#""abc"#,
            "[",
            "{\"a\":",
            "\u{1}",
            "'a'",
        ] {
            assert!(skip(json).is_none(), "{json:?}");
        }
        assert!(Cursor::new(b"\"\xff\"").string().is_none());
        let deep = "[".repeat(MAX_DEPTH as usize + 1) + &"]".repeat(MAX_DEPTH as usize + 1);
        assert!(skip(&deep).is_none());
    }

    #[test]
    fn strings_decode() {
        let mut cursor = Cursor::new(br#" "plain" "a\nb\u00e9\/" "#);
        let start = cursor.pos;
        assert_eq!(
            cursor.string(),
            Some(RawStr {
                raw: b"plain",
                escaped: false
            })
        );
        cursor.pos = start;
        assert!(matches!(cursor.string_value(), Some(Cow::Borrowed("plain"))));
        assert_eq!(cursor.string_value().unwrap(), "a\nbé/");
    }

    proptest! {
        /// The cursor never accepts what serde rejects, and accepts what serde accepts unless it holds a `\u`
        /// escape (which could be a lone surrogate: serde accepts those in strings it skips, the cursor does not).
        #[test]
        fn agrees_with_serde(text in "[\\[\\]{}\",:0-9eE.+\\-a-z\\\\ \u{e9}]{0,24}") {
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            let ours = skip(&text).is_some();
            prop_assert!(!ours || serde_ok, "{:?}", text);
            prop_assert!(ours || !serde_ok || text.contains("\\u"), "{:?}", text);
        }

        #[test]
        fn strings_round_trip(s in any::<String>(), pad in 0..80usize) {
            let json = serde_json::to_string(&s).unwrap() + &" ".repeat(pad);
            let mut cursor = Cursor::new(json.as_bytes());
            prop_assert_eq!(cursor.string_value().unwrap(), s.as_str());
            prop_assert_eq!(cursor.pos + pad, json.len());
        }

        #[test]
        fn string_bytes_agree_with_serde(bytes in proptest::collection::vec(prop_oneof![
            Just(b'a'), Just(b'"'), Just(b'\\'), Just(b'n'), Just(b'u'), Just(b'0'), Just(b'd'), Just(b'8'), Just(0x1F),
            0x80..=0xFFu8,
        ], 0..100), pad in 0..80usize) {
            let mut json = b"\"".to_vec();
            json.extend_from_slice(&bytes);
            json.extend_from_slice(b"\"");
            json.extend(std::iter::repeat_n(b' ', pad));
            let ours = Cursor::new(&json).string_value().map(Cow::into_owned);
            if let Ok(theirs) = serde_json::from_slice::<String>(&json) {
                // serde accepts exactly one string here; ours may stop at an earlier quote and leave the rest.
                if ours.as_deref() == Some(theirs.as_str()) {
                    return Ok(());
                }
                prop_assert!(ours.is_none() || !theirs.contains('"'), "{:?}", String::from_utf8_lossy(&json));
            } else if let Some(ours) = ours {
                // We read a valid prefix string; serde failed because of what follows it.
                prop_assert!(serde_json::from_str::<String>(&serde_json::to_string(&ours).unwrap()).is_ok());
            }
        }
    }
}
