//! The one error type of the pure-Rust core.
//!
//! Nothing here knows about Python: `python.rs` maps each variant onto an exception class
//! (`InvalidJsonError`, or the `CoreError` base, both `ValueError` subclasses).

use std::fmt;

/// Everything the core can fail with.
///
/// The stream translator never returns these for bad upstream data (it turns them into Anthropic `error`
/// events instead); they surface from the stateless helpers and the splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The input is not valid JSON, or not the JSON shape the function needs (e.g. a request body that is not
    /// an object). The payload is the parser's message, which includes a line/column position.
    InvalidJson(String),
    /// An NDJSON line grew past the configured limit before its newline arrived.
    LineTooLong {
        /// The limit in bytes that was exceeded (line terminator not included).
        limit: usize,
    },
    /// An SSE event name was empty or contained a line break, which would corrupt the framing.
    InvalidSseEvent(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson(msg) => write!(f, "invalid JSON: {msg}"),
            Self::LineTooLong { limit } => write!(f, "NDJSON line longer than {limit} bytes"),
            Self::InvalidSseEvent(event) => {
                write!(
                    f,
                    "invalid SSE event name {event:?}: it must be non-empty and contain no line breaks"
                )
            }
        }
    }
}

impl std::error::Error for CoreError {}

impl From<serde_json::Error> for CoreError {
    fn from(err: serde_json::Error) -> Self {
        Self::InvalidJson(err.to_string())
    }
}

/// Longest excerpt of bad input quoted in an error message, in characters.
pub(crate) const EXCERPT_CHARS: usize = 80;

/// The first [`EXCERPT_CHARS`] characters of some input, lossily decoded, with `…` when cut (for error messages).
pub(crate) fn excerpt(line: &[u8]) -> String {
    let head = &line[..line.len().min(EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(head);
    let mut excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
    if excerpt.len() < line.len() {
        excerpt.push('…');
    }
    excerpt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_texts() {
        assert_eq!(CoreError::InvalidJson("x".into()).to_string(), "invalid JSON: x");
        assert_eq!(
            CoreError::LineTooLong { limit: 10 }.to_string(),
            "NDJSON line longer than 10 bytes"
        );
        assert!(
            CoreError::InvalidSseEvent("a\nb".into())
                .to_string()
                .contains("\"a\\nb\"")
        );
    }

    #[test]
    fn from_serde_error_keeps_position() {
        let err: CoreError = serde_json::from_str::<serde_json::Value>("{").unwrap_err().into();
        match err {
            CoreError::InvalidJson(msg) => assert!(msg.contains("line 1"), "{msg}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn is_std_error() {
        fn takes(_: &dyn std::error::Error) {}
        takes(&CoreError::LineTooLong { limit: 1 });
    }
}
