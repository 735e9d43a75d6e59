//! Small JSON helpers shared by the borrowed parsers in [`crate::chunk`] and [`crate::tokens`].

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
}
