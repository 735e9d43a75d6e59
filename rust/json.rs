//! Small JSON helpers shared by the parsers ([`crate::ollama_line`], [`crate::tokens`]).

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
    fn hex_digits() {
        assert_eq!(hex4(b"00e9", 0), Some(0xE9));
        assert_eq!(hex4(b"xD83D", 1), Some(0xD83D));
        assert_eq!(hex4(b"12g4", 0), None);
        assert_eq!(hex4(b"123", 0), None);
    }
}
