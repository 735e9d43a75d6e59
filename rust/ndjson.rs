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
mod tests;
