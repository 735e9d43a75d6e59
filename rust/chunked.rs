//! Incremental decoding of an HTTP/1.1 chunked body (RFC 9112, section 7.1).
//!
//! Ollama sends `/api/chat` with `Transfer-Encoding: chunked` and writes every NDJSON line as its own chunk, so a
//! streamed answer has one chunk header per token. Decoding them here keeps the per-token framing work out of
//! Python: the proxy's transport feeds each socket read in and gets the body bytes of all chunks it completed.
//!
//! Rules:
//! - a size line is hex digits, optionally followed by `;extensions` (ignored) and whitespace before them;
//! - chunk data must be followed by exactly `CRLF`;
//! - the last chunk (size 0) is followed by optional trailer lines (ignored) and an empty line;
//! - bytes after that empty line belong to no body: [`ChunkedDecoder::feed`] leaves them unconsumed, so the caller
//!   knows the connection's framing is broken;
//! - a size line or trailer line longer than [`MAX_LINE_BYTES`] is an error, so a peer that is not sending chunked
//!   framing cannot make the decoder buffer without bound.

use memchr::memchr;

use crate::errors::{CoreError, excerpt};

/// Longest size or trailer line accepted, terminator excluded.
pub const MAX_LINE_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: expecting `CRLF`.
    DataEnd,
    /// After the last chunk: reading trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// Incremental decoder of one chunked body. See the module docs for the rules.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// An unterminated size, `CRLF` or trailer line carried over from the previous input.
    line: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            line: Vec::new(),
        }
    }

    /// True once the terminating empty line after the last chunk has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode `input`, appending the body bytes it completes to `out`.
    ///
    /// Returns how many input bytes belong to the body: all of them, unless the body ended inside `input`.
    ///
    /// # Errors
    ///
    /// [`CoreError::InvalidChunkedBody`] when the framing is broken. The decoder must not be fed again after that:
    /// the connection's framing is lost.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, CoreError> {
        let mut position = 0;
        while position < input.len() {
            match self.state {
                State::Done => return Ok(position),
                State::Data(remaining) => {
                    let available = input.len() - position;
                    let take = usize::try_from(remaining).map_or(available, |left| left.min(available));
                    out.extend_from_slice(&input[position..position + take]);
                    position += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                }
                State::Size | State::DataEnd | State::Trailers => {
                    let rest = &input[position..];
                    let Some(newline) = memchr(b'\n', rest) else {
                        self.hold(rest)?;
                        return Ok(input.len());
                    };
                    position += newline + 1;
                    let line = if self.line.is_empty() {
                        &rest[..newline]
                    } else {
                        self.hold(&rest[..newline])?;
                        self.line.as_slice()
                    };
                    let line = line
                        .strip_suffix(b"\r")
                        .ok_or_else(|| bad_framing("a line ends without CR LF", line))?;
                    let next = self.after_line(line)?;
                    self.line.clear();
                    self.state = next;
                }
            }
        }
        Ok(position)
    }

    /// The state a complete line (without its `CRLF`) leads to.
    fn after_line(&self, line: &[u8]) -> Result<State, CoreError> {
        Ok(match self.state {
            State::Size => match parse_size(line)? {
                0 => State::Trailers,
                size => State::Data(size),
            },
            State::DataEnd if line.is_empty() => State::Size,
            State::DataEnd => return Err(bad_framing("chunk data is longer than its size says", line)),
            State::Trailers if line.is_empty() => State::Done,
            other => other,
        })
    }

    /// Keep part of an unterminated line for the next input, within the line limit.
    fn hold(&mut self, part: &[u8]) -> Result<(), CoreError> {
        if self.line.len() + part.len() > MAX_LINE_BYTES + 1 {
            return Err(CoreError::InvalidChunkedBody(format!(
                "a chunk-size or trailer line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }
}

fn parse_size(line: &[u8]) -> Result<u64, CoreError> {
    let digits_end = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    let rest_ok = rest.iter().all(|byte| *byte == b' ' || *byte == b'\t') || {
        let ext = rest.iter().position(|byte| *byte == b';');
        ext.is_some_and(|at| rest[..at].iter().all(|byte| *byte == b' ' || *byte == b'\t'))
    };
    // 16 hex digits hold any u64; more is not a size anyone sends.
    if digits.is_empty() || digits.len() > 16 || !rest_ok {
        return Err(bad_framing("invalid chunk size", line));
    }
    Ok(digits
        .iter()
        .fold(0u64, |size, digit| size << 4 | u64::from(hex_value(*digit))))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

fn bad_framing(what: &str, line: &[u8]) -> CoreError {
    CoreError::InvalidChunkedBody(format!("{what}: {:?}", excerpt(line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), CoreError> {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        let used = decoder.feed(input, &mut out)?;
        Ok((out, used, decoder.is_done()))
    }

    fn encode(pieces: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for piece in pieces.iter().filter(|piece| !piece.is_empty()) {
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    }

    #[test]
    fn ollama_lines() {
        let body = b"1c\r\n{\"message\":{\"content\":\"a\"}}\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (out, used, done) = decode_all(body).unwrap();
        assert_eq!(out, b"{\"message\":{\"content\":\"a\"}}\nhello");
        assert_eq!(used, body.len());
        assert!(done);
    }

    #[test]
    fn extensions_trailers_and_uppercase_hex() {
        let body = b"A;name=value\r\n0123456789\r\n0\r\nExpires: never\r\n\r\n";
        let (out, _, done) = decode_all(body).unwrap();
        assert_eq!(out, b"0123456789");
        assert!(done);
    }

    #[test]
    fn bytes_after_the_end_are_not_consumed() {
        let body = b"1\r\nx\r\n0\r\n\r\nHTTP/1.1 200 OK";
        let (out, used, done) = decode_all(body).unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"x"[..], body.len() - 15, true));
    }

    #[test]
    fn unfinished_body_is_not_done() {
        let (out, _, done) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!(out, b"hel");
        assert!(!done);
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for body in [
            &b"zz\r\nabc\r\n"[..],
            b"\r\n",
            b"3\r\nabcdef\r\n",
            b"3 x\r\nabc\r\n",
            b"3\nabc\r\n",
            b"11112222333344445\r\n",
        ] {
            let err = decode_all(body).unwrap_err();
            assert!(matches!(err, CoreError::InvalidChunkedBody(_)), "{body:?}: {err}");
        }
    }

    #[test]
    fn an_endless_size_line_is_an_error() {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        let line = vec![b'1'; 1000];
        let mut result = Ok(0);
        for _ in 0..5 {
            result = decoder.feed(&line, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert!(result.unwrap_err().to_string().contains("longer than 4096"));
    }

    #[test]
    fn largest_size_parses() {
        assert_eq!(parse_size(b"ffffffffffffffff").unwrap(), u64::MAX);
        assert_eq!(parse_size(b"1a ; ext").unwrap(), 26);
    }

    proptest! {
        /// Any split of the input decodes to the same body as one whole feed.
        #[test]
        fn splitting_never_changes_the_body(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let body = encode(&pieces);
            let mut offsets: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
            offsets.sort_unstable();
            let mut decoder = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut start = 0;
            for end in offsets.into_iter().chain([body.len()]) {
                let used = decoder.feed(&body[start..end], &mut out).unwrap();
                prop_assert_eq!(used, end - start);
                start = end;
            }
            prop_assert!(decoder.is_done());
            prop_assert_eq!(out, pieces.concat());
        }
    }
}
