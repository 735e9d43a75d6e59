//! Rust core of `ccop` (claude-code-ollama-proxy).
//!
//! The proxy speaks the Anthropic Messages API to Claude Code and Ollama's native `/api/chat` NDJSON API upstream.
//! Everything on the per-request hot path lives here as plain Rust with no Python dependency:
//!
//! - [`ndjson`]: incremental line splitting of the raw upstream byte stream;
//! - [`ollama_line`]: borrowed parsing of one Ollama `/api/chat` NDJSON line;
//! - [`heal`]: repair of tool-call arguments into a JSON object;
//! - [`schema`]: schema-aware repair of the arguments of offered tools (types, arrays, optional nulls);
//! - [`text_calls`]: tool calls a model wrote as text (`<tool_call>`, fenced or bare JSON, `<function=…>`);
//! - [`sse`]: Anthropic server-sent-event frame encoding;
//! - [`stop`]: the client's stop sequences, matched across deltas;
//! - [`stream`]: the Ollama → Anthropic translation state machine (streaming and non-streaming);
//! - [`tool_use`]: the `tool_use` blocks of one answer: healing counters, schema repair, unique ids;
//! - [`tokens`]: the cheap token estimator used for `count_tokens` and `message_start`;
//! - [`nesting`]: how deeply a request body nests, for the nesting limit;
//! - [`json`]: small serde helpers shared by the parsers;
//! - [`errors`]: the shared [`CoreError`](errors::CoreError).
//!
//! The Python extension module `ccop._core` is a thin layer in `python.rs`, compiled only with the `python`
//! feature (maturin turns it on), so `cargo test` never links libpython.

pub mod errors;
pub mod heal;
pub mod json;
pub mod ndjson;
pub mod nesting;
pub mod ollama_line;
pub mod schema;
pub mod sse;
pub mod stop;
pub mod stream;
pub mod text_calls;
pub mod tokens;
pub mod tool_use;

#[cfg(feature = "python")]
mod python;

pub use errors::CoreError;

/// Default limit for one upstream NDJSON line: 16 MiB.
///
/// An Ollama chunk is normally a few hundred bytes; only a done chunk carrying many large tool calls (native
/// llama-server mode sends them all at once) gets big. 16 MiB bounds memory per stream while leaving room for that.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Rewrite a Cargo (semantic) version as a PEP 440 version.
///
/// Semantic-versioning pre-releases such as `1.2.0-alpha.1`, `1.2.0-beta.2` and `1.2.0-rc.3` become `1.2.0a1`, `1.2.0b2` and
/// `1.2.0rc3`; Python packaging tools reject the Cargo spelling (PEP 440, "Pre-releases"). Any other suffix is
/// kept as a local version label (`+x`), which PEP 440 accepts.
pub fn pep440_version(cargo_version: &str) -> String {
    let Some((release, pre)) = cargo_version.split_once('-') else {
        return cargo_version.to_owned();
    };
    let (tag, number) = pre.split_once('.').unwrap_or((pre, "0"));
    let short = match tag {
        "alpha" | "a" => "a",
        "beta" | "b" => "b",
        "rc" => "rc",
        _ => return format!("{release}+{}", pre.replace('-', ".")),
    };
    format!("{release}{short}{number}")
}

#[cfg(test)]
mod tests {
    use super::pep440_version;

    #[test]
    fn pep440_rewrites() {
        assert_eq!(pep440_version("0.1.0"), "0.1.0");
        assert_eq!(pep440_version("1.2.0-alpha.1"), "1.2.0a1");
        assert_eq!(pep440_version("1.2.0-beta.2"), "1.2.0b2");
        assert_eq!(pep440_version("1.2.0-rc.3"), "1.2.0rc3");
        assert_eq!(pep440_version("1.2.0-alpha"), "1.2.0a0");
        assert_eq!(pep440_version("1.2.0-dev-x"), "1.2.0+dev.x");
    }

    #[test]
    fn crate_version_is_pep440_already() {
        assert_eq!(pep440_version(env!("CARGO_PKG_VERSION")), env!("CARGO_PKG_VERSION"));
    }
}
