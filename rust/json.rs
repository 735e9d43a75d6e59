//! Small JSON helpers shared by the parsers ([`crate::ollama_line`], [`crate::tokens`]) and the SSE writer.

use std::borrow::Cow;

use serde::Deserialize;

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

/// The value of the four hex digits at `bytes[at..at + 4]`.
pub(crate) fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn string_stops() {
        let stops = |bytes: &[u8; 8]| swar_string_stops(u64::from_le_bytes(*bytes)).trailing_zeros() / 8;
        assert_eq!(stops(b"abc\"defg"), 3);
        assert_eq!(stops(b"ab\\cdefg"), 2);
        assert_eq!(stops(b"abcdefg\x01"), 7);
        assert_eq!(stops(b"abcdefgh"), 8);
        assert_eq!(stops("é日本".as_bytes().try_into().unwrap()), 8);
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex4(b"00e9", 0), Some(0xE9));
        assert_eq!(hex4(b"xD83D", 1), Some(0xD83D));
        assert_eq!(hex4(b"12g4", 0), None);
        assert_eq!(hex4(b"123", 0), None);
    }
}
