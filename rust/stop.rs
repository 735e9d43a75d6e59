//! The client's stop sequences, matched in the answer text as it streams.
//!
//! Ollama can stop on them too, but it strips the match and cannot say which one matched, while Anthropic reports
//! `stop_reason:"stop_sequence"` with the matched `stop_sequence`; so the proxy matches them itself. Text that
//! could be the start of a match is held back until the next delta decides it, so nothing is ever sent that a
//! match would have cut.

/// Stop-sequence matching across deltas.
#[derive(Debug, Default)]
pub struct StopMatcher {
    /// The client's stop sequences, without empty ones.
    stops: Vec<String>,
    /// Trailing text held back because it could be the start of a stop sequence.
    held: String,
}

impl StopMatcher {
    /// A matcher for these stop sequences; empty strings are ignored.
    pub fn new(mut stops: Vec<String>) -> Self {
        stops.retain(|stop| !stop.is_empty());
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Take one text delta: `pass` gets the text that can be sent now. Returns the stop sequence that matched, if
    /// one did; the text before it was passed and the rest of the answer is to be dropped.
    pub fn push(&mut self, text: &str, mut pass: impl FnMut(&str)) -> Option<&str> {
        if self.stops.is_empty() {
            pass(text);
            return None;
        }
        let mut buffer = std::mem::take(&mut self.held);
        buffer.push_str(text);
        if let Some((start, which)) = find_stop(&buffer, &self.stops) {
            pass(&buffer[..start]);
            return Some(&self.stops[which]);
        }
        let cut = buffer.len() - partial_stop_len(&buffer, &self.stops);
        pass(&buffer[..cut]);
        buffer.drain(..cut);
        self.held = buffer;
        None
    }

    /// The text held back, given up: the text ends here (another kind of block follows, or the answer ends), so it
    /// cannot be part of a match any more.
    pub fn take_held(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The earliest-ending stop-sequence match in `text` as `(start byte, index into stops)`.
///
/// Generation would have stopped where a match first completes, so the earliest end wins; on a tie the longer
/// sequence (earlier start) wins.
fn find_stop(text: &str, stops: &[String]) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize, usize)> = None;
    for (which, stop) in stops.iter().enumerate() {
        if let Some(start) = text.find(stop.as_str()) {
            let end = start + stop.len();
            if best.is_none_or(|(best_end, best_start, _)| end < best_end || (end == best_end && start < best_start)) {
                best = Some((end, start, which));
            }
        }
    }
    best.map(|(_, start, which)| (start, which))
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of a stop sequence.
pub(crate) fn partial_stop_len(text: &str, stops: &[String]) -> usize {
    let bytes = text.as_bytes();
    let mut best = 0;
    for stop in stops {
        let longest = (stop.len() - 1).min(bytes.len());
        for len in (best + 1..=longest).rev() {
            // A char-boundary prefix of the stop sequence starts on a char boundary of `text` too.
            if stop.is_char_boundary(len) && bytes.ends_with(&stop.as_bytes()[..len]) {
                best = len;
                break;
            }
        }
    }
    best
}
