//! Incremental NDJSON line splitting.
//!
//! Ollama streams `/api/chat` as `application/x-ndjson`: one JSON object per `\n`-terminated line. The socket
//! delivers arbitrary byte chunks, so a line (and a multi-byte UTF-8 character inside it) can be split anywhere.
//! [`LineSplitter`] keeps the unterminated tail between calls and hands out whole lines.
//!
//! Rules, chosen to be independent of how the input was chunked:
//! - a line ends at `\n`; one `\r` right before it is dropped too (`\r\n` endings);
//! - blank or whitespace-only lines are skipped (ASCII whitespace; JSON allows nothing else around a value);
//! - [`LineSplitter::finish`] returns a last line that had no newline;
//! - a line longer than the limit (terminator excluded) is reported once as [`CoreError::LineTooLong`] in its
//!   place in the sequence. Its bytes are **dropped, not delivered**, and the rest of that line is discarded up
//!   to its newline; splitting then resumes normally with the next line. The overflow is detected as soon as the
//!   buffered tail passes the limit, so memory never grows past the limit plus one chunk.
//!
//! Lines lying entirely inside one chunk are handed out as slices of that chunk (no copy); only a line spanning
//! chunks is assembled in the internal buffer.

use memchr::memchr_iter;

use crate::errors::CoreError;

/// Incremental splitter of a byte stream into non-blank NDJSON lines. See the module docs for the rules.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The unterminated tail of the stream so far (never longer than `max_line_bytes + 1`, the `+ 1` being a `\r`).
    buf: Vec<u8>,
    /// Longest accepted line, terminator excluded.
    max_line_bytes: usize,
    /// True after an over-long line was reported and before its newline arrived.
    discarding: bool,
}

impl LineSplitter {
    /// Create a splitter that rejects lines longer than `max_line_bytes` (terminator excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_line_bytes,
            discarding: false,
        }
    }

    /// The configured line limit in bytes.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Number of bytes of an incomplete line currently held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed one raw chunk; `on_line` receives every line completed by it, in order.
    ///
    /// Each item is either a complete non-blank line (without `\n`/`\r\n`) or `Err(LineTooLong)` standing in for
    /// an over-long line. The whole chunk is always consumed, whatever the callback does.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_line: F)
    where
        F: FnMut(Result<&[u8], CoreError>),
    {
        let mut start = 0;
        for newline in memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..newline];
            start = newline + 1;
            if self.discarding {
                // The newline that ends an over-long line: its error was already reported.
                self.discarding = false;
                self.buf.clear();
            } else if self.buf.is_empty() {
                // Fast path: the whole line is inside this chunk, hand out a borrowed slice.
                emit(self.max_line_bytes, piece, &mut on_line);
            } else if self.buf.len() + piece.len() > self.max_line_bytes.saturating_add(1) {
                // Too long even before `\r` stripping; do not copy it just to reject it.
                self.buf.clear();
                on_line(Err(CoreError::LineTooLong {
                    limit: self.max_line_bytes,
                }));
            } else {
                self.buf.extend_from_slice(piece);
                emit(self.max_line_bytes, &self.buf, &mut on_line);
                self.buf.clear();
            }
        }
        let tail = &chunk[start..];
        if self.discarding || tail.is_empty() {
            return;
        }
        let len = self.buf.len() + tail.len();
        // The tail may legitimately be one byte over the limit when that byte is the `\r` of a `\r\n` ending.
        let hard_limit = self.max_line_bytes.saturating_add(1);
        let over = len > hard_limit || (len == hard_limit && tail.last() != Some(&b'\r'));
        if over {
            self.buf.clear();
            self.discarding = true;
            on_line(Err(CoreError::LineTooLong {
                limit: self.max_line_bytes,
            }));
        } else {
            self.buf.extend_from_slice(tail);
        }
    }

    /// Signal end of input: hand out a final line that had no newline, and reset for reuse.
    pub fn finish<F>(&mut self, mut on_line: F)
    where
        F: FnMut(Result<&[u8], CoreError>),
    {
        if !self.discarding && !self.buf.is_empty() {
            emit(self.max_line_bytes, &self.buf, &mut on_line);
        }
        self.buf.clear();
        self.discarding = false;
    }
}

/// Strip one trailing `\r`, then deliver the line, its over-long error, or nothing when it is blank.
///
/// Length is checked before blankness so that the outcome matches the early overflow check in `feed`, which
/// cannot know yet whether an over-long tail is blank.
fn emit<F>(max_line_bytes: usize, line: &[u8], on_line: &mut F)
where
    F: FnMut(Result<&[u8], CoreError>),
{
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line_bytes {
        on_line(Err(CoreError::LineTooLong { limit: max_line_bytes }));
    } else if !line.iter().all(u8::is_ascii_whitespace) {
        // `all` stops at the first non-blank byte, which is the first byte of any JSON line.
        on_line(Ok(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Item = Result<Vec<u8>, CoreError>;

    fn run(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
        let mut splitter = LineSplitter::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |line| out.push(line.map(<[u8]>::to_vec)));
        }
        splitter.finish(|line| out.push(line.map(<[u8]>::to_vec)));
        assert_eq!(splitter.buffered(), 0);
        out
    }

    fn lines(items: &[Item]) -> Vec<&[u8]> {
        items
            .iter()
            .map(|item| item.as_deref().expect("no error expected"))
            .collect()
    }

    /// Reference model: split the whole stream at once.
    fn reference(limit: usize, data: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        // `split` yields a final empty piece after a trailing newline; it is the (empty) unterminated tail.
        let tail = pieces.pop().unwrap_or_default();
        pieces.push(tail);
        for piece in pieces {
            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
            if line.len() > limit {
                out.push(Err(CoreError::LineTooLong { limit }));
            } else if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(Ok(line.to_vec()));
            }
        }
        out
    }

    #[test]
    fn whole_lines_in_one_chunk() {
        let out = run(100, &[b"{\"a\":1}\n{\"b\":2}\n"]);
        assert_eq!(lines(&out), [&b"{\"a\":1}"[..], b"{\"b\":2}"]);
    }

    #[test]
    fn line_split_across_chunks() {
        let out = run(100, &[b"{\"a\"", b":1}\n{\"b", b"\":2}\n"]);
        assert_eq!(lines(&out), [&b"{\"a\":1}"[..], b"{\"b\":2}"]);
    }

    #[test]
    fn crlf_and_blank_lines() {
        let out = run(100, &[b"a\r\n\r\n  \t\n\nb\r", b"\n \r\n"]);
        assert_eq!(lines(&out), [&b"a"[..], b"b"]);
    }

    #[test]
    fn only_one_cr_is_stripped() {
        let out = run(100, &[b"a\r\r\n"]);
        assert_eq!(lines(&out), [&b"a\r"[..]]);
    }

    #[test]
    fn last_line_without_newline() {
        let mut splitter = LineSplitter::new(100);
        let mut out = Vec::new();
        splitter.feed(b"one\ntwo", |line| out.push(line.unwrap().to_vec()));
        assert_eq!(out, [b"one".to_vec()]);
        assert_eq!(splitter.buffered(), 3);
        splitter.finish(|line| out.push(line.unwrap().to_vec()));
        assert_eq!(out, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(splitter.buffered(), 0);
    }

    #[test]
    fn blank_tail_is_not_a_line() {
        assert!(run(100, &[b"  \r"]).is_empty());
        assert!(run(100, &[]).is_empty());
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let text = "{\"t\":\"héllo €😀\"}\n".as_bytes();
        for cut in 0..text.len() {
            let out = run(100, &[&text[..cut], &text[cut..]]);
            assert_eq!(lines(&out), [&text[..text.len() - 1]]);
            assert!(std::str::from_utf8(lines(&out)[0]).is_ok());
        }
    }

    #[test]
    fn byte_at_a_time() {
        let data = b"{\"a\":1}\r\n\n{\"b\":[1,2]}\nlast";
        let chunks: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(run(100, &chunks), reference(100, data));
    }

    #[test]
    fn exact_limit_is_accepted() {
        let out = run(4, &[b"abcd\nabcd\r\n"]);
        assert_eq!(lines(&out), [&b"abcd"[..], b"abcd"]);
        // The `\r` of a `\r\n` ending may sit alone in the buffer at the limit.
        let out = run(4, &[b"abcd\r", b"\n"]);
        assert_eq!(lines(&out), [&b"abcd"[..]]);
    }

    #[test]
    fn over_long_line_in_one_chunk() {
        let out = run(4, &[b"ab\nabcde\ncd\n"]);
        assert_eq!(
            out,
            [
                Ok(b"ab".to_vec()),
                Err(CoreError::LineTooLong { limit: 4 }),
                Ok(b"cd".to_vec())
            ]
        );
    }

    #[test]
    fn over_long_line_detected_before_its_newline_and_rest_discarded() {
        let mut splitter = LineSplitter::new(4);
        let mut out = Vec::new();
        splitter.feed(b"ok\nabcdefgh", |line| out.push(line.map(<[u8]>::to_vec)));
        assert_eq!(out, [Ok(b"ok".to_vec()), Err(CoreError::LineTooLong { limit: 4 })]);
        // Memory is released at once; the remainder of the long line is dropped without a second error.
        assert_eq!(splitter.buffered(), 0);
        splitter.feed(b"ijklmnop", |line| out.push(line.map(<[u8]>::to_vec)));
        splitter.feed(b"qr\nnext\n", |line| out.push(line.map(<[u8]>::to_vec)));
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], Ok(b"next".to_vec()));
        splitter.finish(|line| out.push(line.map(<[u8]>::to_vec)));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn over_long_line_built_from_buffered_parts() {
        let out = run(4, &[b"abc", b"de\nxy\n"]);
        assert_eq!(out, [Err(CoreError::LineTooLong { limit: 4 }), Ok(b"xy".to_vec())]);
        let out = run(4, &[b"abc", b"d", b"e"]);
        assert_eq!(out, [Err(CoreError::LineTooLong { limit: 4 })]);
    }

    #[test]
    fn over_long_unterminated_last_line_reported_by_finish_path() {
        let out = run(4, &[b"abcd\r"]);
        assert_eq!(out, [Ok(b"abcd".to_vec())]);
        let out = run(3, &[b"abcd"]);
        assert_eq!(out, [Err(CoreError::LineTooLong { limit: 3 })]);
    }

    #[test]
    fn zero_limit_rejects_everything_but_blank() {
        let out = run(0, &[b"\n\r\na\n"]);
        assert_eq!(out, [Err(CoreError::LineTooLong { limit: 0 })]);
    }

    #[test]
    fn splitter_is_reusable_after_finish() {
        let mut splitter = LineSplitter::new(3);
        let mut count = 0;
        splitter.feed(b"abcdef", |_| count += 1);
        splitter.finish(|_| count += 1);
        splitter.feed(b"ab\n", |line| {
            assert_eq!(line.unwrap(), b"ab");
            count += 1;
        });
        assert_eq!(count, 2);
        assert_eq!(splitter.max_line_bytes(), 3);
    }

    /// Cut `data` at the given (sorted, deduplicated) positions.
    fn chunk_at<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut positions: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        positions.sort_unstable();
        positions.dedup();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for pos in positions {
            chunks.push(&data[prev..pos]);
            prev = pos;
        }
        chunks.push(&data[prev..]);
        chunks
    }

    fn ndjson_stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[ -~]{0,40}".prop_map(|s| format!("{{\"t\":{}}}", serde_json::to_string(&s).unwrap())),
            "\\PC{0,20}".prop_map(|s| format!("{{\"u\":{}}}", serde_json::to_string(&s).unwrap())),
            Just(String::new()),
            Just("  ".to_owned()),
        ];
        let ending = prop_oneof![Just("\n"), Just("\r\n")];
        (proptest::collection::vec((line, ending), 0..20), any::<bool>()).prop_map(|(lines, trailing)| {
            let mut data = String::new();
            for (line, end) in lines {
                data.push_str(&line);
                data.push_str(end);
            }
            if trailing {
                data.push_str("{\"end\":true}");
            }
            data.into_bytes()
        })
    }

    proptest! {
        #[test]
        fn any_chunking_of_valid_ndjson_gives_the_same_lines(
            data in ndjson_stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            let expected = reference(usize::MAX - 1, &data);
            prop_assert!(expected.iter().all(Result::is_ok));
            for line in &expected {
                let line = line.as_ref().unwrap();
                prop_assert!(serde_json::from_slice::<serde_json::Value>(line).is_ok());
            }
            prop_assert_eq!(run(usize::MAX - 1, &chunk_at(&data, &cuts)), expected);
        }

        #[test]
        fn arbitrary_bytes_and_limits_match_the_reference(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
            limit in 0usize..16,
        ) {
            prop_assert_eq!(run(limit, &chunk_at(&data, &cuts)), reference(limit, &data));
        }
    }
}
