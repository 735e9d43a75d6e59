//! Tool calls that a model wrote into its answer text instead of making them.
//!
//! Small local models, or models whose Ollama template does not parse their tool-call syntax, often print the call:
//!
//! - `<tool_call>{"name": "Read", "arguments": {"path": "a.txt"}}</tool_call>` (Hermes / Qwen 2.5), several JSON
//!   objects in one tag, or the JSON in a code fence inside the tag;
//! - a fenced ```` ```json ```` (or unlabelled) block holding such an object;
//! - a bare `{"name": …, "arguments"|"parameters": …}` object at the start of the text or of a line (Llama 3.x);
//! - `<function=Read><parameter=path>a.txt</parameter></function>` (Qwen 3 Coder), with or without a surrounding
//!   `<tool_call>…</tool_call>`.
//!
//! [`TextCallScanner`] finds these in the streamed content, only for the names of offered tools, and hands on
//! [`Piece`]s: the text around the calls, and each call as a [`TextCall`] (its arguments healed by
//! [`crate::heal`]; an argument string that heals only to `{"raw": …}` does not count as a call). Anything that does
//! not qualify stays text, byte for byte.
//!
//! Streaming must never show text that later turns out to be a call, so the scanner holds back whatever could still
//! become one, and decides as soon as it can:
//!
//! - a tail that is a proper prefix of `<tool_call>` or `<function=`; after `<tool_call>` the body must start (after
//!   whitespace) with `{`, `<` or a fence, and after `<function=` an offered name and `>` must follow, or the text
//!   is released at once; once the opening is complete, everything up to the closing tag (or the end of the answer);
//! - a fence at the start of a line until its info string and the first non-blank character of its body are known:
//!   held on only for an empty or `json` info string and a body starting with `{`, then up to the closing fence;
//! - a `{` at the start of a line while the text is still a prefix of `{"name":`, then until the object closes
//!   (strings and escapes are tracked) and the rest of its line is known to be blank;
//! - whitespace at the end of the text, so that the whitespace around a recovered call can be removed.
//!
//! No candidate is held beyond [`MAX_HELD`] bytes: past that it is released as text. At the end of the answer
//! ([`TextCallScanner::finish`]) everything held is decided: a `<tool_call>` or fence whose closing never came is
//! still a call if its content is complete. Every byte is examined a bounded number of times, so a long answer
//! costs linear time.

use memchr::{memchr2, memmem};
use serde_json::{Map, Value};

use crate::heal::HealKind;
use crate::schema::ToolSet;

mod parse;
use parse::{call_from_value, parse_functions, parse_json_calls, parse_tool_call_body};

/// The most bytes one candidate may hold back before it is released as text.
pub const MAX_HELD: usize = 64 * 1024;

/// The most whitespace allowed inside an opening (between `{` and `"name"`, after `<tool_call>`, before a fenced
/// body), so that an opening is decided after a bounded look.
const MAX_GAP: usize = 64;

/// The longest tool name read from `<function=NAME>` and the longest fence info string.
const MAX_NAME: usize = 128;

const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAMETER_OPEN: &str = "<parameter=";
const PARAMETER_CLOSE: &str = "</parameter>";
const FENCE: &str = "```";

/// A tool call recovered from text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextCall {
    /// The tool's name (always an offered tool).
    pub name: String,
    /// An `"id"` the model wrote into a JSON call, if any (it still goes through the translator's id rules).
    pub id: Option<String>,
    /// The healed arguments.
    pub arguments: Map<String, Value>,
    /// Which healing step produced them (never [`HealKind::Raw`]).
    pub heal: HealKind,
}

/// What the scanner hands on, in answer order.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece<'a> {
    /// Text that is final: it will never become part of a call.
    Text(&'a str),
    /// A recovered call; the text it was written as is gone.
    Call(TextCall),
}

/// Finds tool calls written as text in a stream of content deltas. See the module docs.
#[derive(Debug, Clone)]
pub struct TextCallScanner {
    /// Undecided text: whitespace held for trimming (`buf[..cand_at]`), then the candidate, if any.
    buf: String,
    /// Where the candidate starts in `buf` (or, with none, where scanning resumes: the end of `buf`).
    cand_at: usize,
    cand: Option<Cand>,
    /// Whether `buf[0]` is at the start of a line: the start of the text, after `\n`, or right after a call.
    line_start: bool,
    /// Whitespace after a recovered call is dropped until the next other character.
    skip_ws: bool,
    /// Inside a fenced code block that is not a call: a line-start `{` is code, and the next line-start fence
    /// closes the block instead of opening one.
    in_code: bool,
}

impl Default for TextCallScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl TextCallScanner {
    /// A scanner at the start of a text.
    pub fn new() -> Self {
        Self {
            buf: String::new(),
            cand_at: 0,
            cand: None,
            line_start: true,
            skip_ws: false,
            in_code: false,
        }
    }

    /// Whether any text is held back.
    pub fn is_holding(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Feed the next content delta; `sink` gets every piece that is decided, in order.
    pub fn push(&mut self, text: &str, tools: &ToolSet, sink: impl FnMut(Piece<'_>)) {
        self.buf.push_str(text);
        self.process(tools, false, sink);
    }

    /// End of the text (the answer ended, or another kind of block follows): decide everything held. The scanner
    /// is then ready for a new text, which starts at the start of a line.
    pub fn finish(&mut self, tools: &ToolSet, sink: impl FnMut(Piece<'_>)) {
        self.process(tools, true, sink);
        self.buf.clear();
        self.cand_at = 0;
        self.cand = None;
        self.line_start = true;
        self.skip_ws = false;
        self.in_code = false;
    }

    fn process(&mut self, tools: &ToolSet, at_end: bool, mut sink: impl FnMut(Piece<'_>)) {
        let len = self.buf.len();
        // Start of the text not handed on yet (held whitespace included).
        let mut text_from = 0;
        let mut i = self.cand_at;
        // A position known to be at the start of a line without a `\n` before it.
        let mut forced = if self.line_start { 0 } else { usize::MAX };
        // Start of the candidate still undecided when the loop ends.
        let mut held_at = None;
        loop {
            if self.skip_ws {
                let rest = &self.buf[i..];
                i += rest.len() - rest.trim_start().len();
                text_from = i;
                forced = i;
                if i == len {
                    break;
                }
                self.skip_ws = false;
            }
            if let Some(cand) = &mut self.cand {
                match cand.advance(&self.buf[i..], tools, at_end) {
                    Step::NeedMore => {
                        held_at = Some(i);
                        break;
                    }
                    Step::Accept(used, calls) => {
                        // The whitespace between the text and the call goes with the call.
                        let end = text_from + self.buf[text_from..i].trim_end().len();
                        if end > text_from {
                            sink(Piece::Text(&self.buf[text_from..end]));
                        }
                        for call in calls {
                            sink(Piece::Call(call));
                        }
                        self.cand = None;
                        i += used;
                        text_from = i;
                        forced = i;
                        self.skip_ws = true;
                        continue;
                    }
                    Step::Reject(used) => {
                        // The candidate's text stays in the pending text.
                        self.cand = None;
                        i += used;
                    }
                    Step::Fence(used, in_code) => {
                        self.cand = None;
                        self.in_code = in_code;
                        i += used;
                    }
                }
            }
            match next_candidate(self.buf.as_bytes(), i, forced, self.in_code) {
                Some(at) => {
                    self.cand = Some(Cand::at(self.buf.as_bytes()[at], self.in_code));
                    i = at;
                }
                None => break,
            }
        }
        if at_end {
            if !self.skip_ws && text_from < len {
                sink(Piece::Text(&self.buf[text_from..]));
            }
            return;
        }
        // Hand on the decided text, keeping its trailing whitespace back.
        let undecided = held_at.unwrap_or(len);
        let keep = text_from + self.buf[text_from..undecided].trim_end().len();
        if keep > text_from {
            sink(Piece::Text(&self.buf[text_from..keep]));
        }
        self.line_start =
            keep == forced || (keep > 0 && self.buf.as_bytes()[keep - 1] == b'\n') || (keep == 0 && self.line_start);
        self.buf.drain(..keep);
        self.cand_at = undecided - keep;
    }
}

/// The next position from `from` where a call could start: any `<`, and a `{` or `` ` `` at the start of a line
/// (inside a code block only a `` ` ``, which may close it).
fn next_candidate(bytes: &[u8], from: usize, forced: usize, in_code: bool) -> Option<usize> {
    let opens_line = |at: usize| match bytes.get(at) {
        Some(b'`') => true,
        Some(b'{') => !in_code,
        _ => false,
    };
    if (from == forced || (from > 0 && bytes.get(from - 1) == Some(&b'\n'))) && opens_line(from) {
        return Some(from);
    }
    let mut i = from;
    while let Some(offset) = memchr2(b'<', b'\n', bytes.get(i..)?) {
        let at = i + offset;
        if bytes[at] == b'<' {
            return Some(at);
        }
        if opens_line(at + 1) {
            return Some(at + 1);
        }
        i = at + 1;
    }
    None
}

/// A candidate being read. Offsets are relative to the candidate's first byte.
#[derive(Debug, Clone)]
enum Cand {
    /// `<`: not yet a complete `<tool_call>` + body start, or `<function=NAME>`.
    Tag,
    /// Inside `<tool_call>`; `searched`: where the search for the closing tag resumes.
    ToolCall { searched: usize },
    /// Inside `<function=NAME>`.
    Function { searched: usize },
    /// `` ` `` at the start of a line: the fence, its info string and the body's first character are not all known.
    FenceOpening,
    /// `` ` `` at the start of a line inside a code block: maybe its closing fence.
    CodeClosing,
    /// A `json` or unlabelled fence whose body starts with `{` at `body`.
    Fence { body: usize, searched: usize },
    /// `{` at the start of a line, still a prefix of `{"name":`.
    JsonOpening,
    /// `{"name":` at the start of a line: scanning for the end of the object.
    Json(JsonScan),
}

/// What [`Cand::advance`] decided.
#[derive(Debug)]
enum Step {
    /// Undecided: hold the candidate and wait for more text.
    NeedMore,
    /// The first `usize` bytes are these calls.
    Accept(usize, Vec<TextCall>),
    /// The first `usize` bytes are text.
    Reject(usize),
    /// The first `usize` bytes are a fence that opens (`true`) or closes (`false`) an ordinary code block.
    Fence(usize, bool),
}

/// How an opening looks so far.
enum Opening {
    /// Could still become a call.
    Partial,
    /// Complete: go on with this state.
    Complete(Cand),
    /// Not a call.
    No,
    /// Not a call: an ordinary code block opens with the first `usize` bytes (inside it, a line-start `{` is code).
    Code(usize),
}

/// The outcome of parsing a candidate's content.
#[derive(Debug)]
enum Parsed {
    Calls(Vec<TextCall>),
    /// Cut short, maybe inside a value: a closing tag or fence seen so far was part of the content.
    Incomplete,
    Invalid,
}

impl Cand {
    fn at(first: u8, in_code: bool) -> Self {
        match first {
            b'<' => Self::Tag,
            b'`' if in_code => Self::CodeClosing,
            b'`' => Self::FenceOpening,
            _ => Self::JsonOpening,
        }
    }

    /// Read the candidate `text` (its first byte is the candidate's) as far as it goes.
    fn advance(&mut self, text: &str, tools: &ToolSet, at_end: bool) -> Step {
        loop {
            let opening = match self {
                Self::Tag => tag_opening(text, tools),
                Self::FenceOpening => fence_opening(text),
                Self::JsonOpening => json_opening(text),
                Self::CodeClosing => {
                    let ticks = text.bytes().take(FENCE.len()).take_while(|&b| b == b'`').count();
                    return match ticks {
                        3 => Step::Fence(FENCE.len(), false),
                        _ if ticks == text.len() && !at_end => Step::NeedMore,
                        _ => Step::Reject(1),
                    };
                }
                Self::ToolCall { searched } => {
                    return until_close(text, searched, TOOL_CALL_CLOSE, at_end, |content, closed| {
                        let end = content.len() - if closed { TOOL_CALL_CLOSE.len() } else { 0 };
                        parse_tool_call_body(&content[TOOL_CALL_OPEN.len()..end], tools)
                    });
                }
                Self::Function { searched } => {
                    return until_close(text, searched, FUNCTION_CLOSE, at_end, |content, closed| {
                        parse_functions(content, tools, !closed)
                    });
                }
                Self::Fence { body, searched } => {
                    let body = *body;
                    return until_close(text, searched, FENCE, at_end, |content, closed| {
                        let end = content.len() - if closed { FENCE.len() } else { 0 };
                        parse_json_calls(&content[body..end], tools, true)
                    });
                }
                Self::Json(scan) => return scan.advance(text, tools, at_end),
            };
            match opening {
                Opening::Complete(next) => *self = next,
                Opening::Partial if !at_end => return Step::NeedMore,
                // Only the first byte is released: what follows may hold a candidate of its own.
                Opening::Partial | Opening::No => return Step::Reject(1),
                Opening::Code(used) => return Step::Fence(used, true),
            }
        }
    }
}

/// Hold a candidate until `close`, then parse the text up to and including it with `parse(content, true)`. At the
/// end of the answer a candidate whose closing never came is parsed too, with `parse(text, false)`.
fn until_close(
    text: &str,
    searched: &mut usize,
    close: &str,
    at_end: bool,
    parse: impl Fn(&str, bool) -> Parsed,
) -> Step {
    let bytes = text.as_bytes();
    while let Some(offset) = memmem::find(bytes.get(*searched..).unwrap_or_default(), close.as_bytes()) {
        let end = *searched + offset + close.len();
        match parse(&text[..end], true) {
            Parsed::Calls(calls) => return Step::Accept(end, calls),
            // The closing was inside a value: look for the next one.
            Parsed::Incomplete => *searched = end - close.len() + 1,
            Parsed::Invalid => return Step::Reject(end),
        }
    }
    *searched = (*searched).max(bytes.len().saturating_sub(close.len() - 1));
    if at_end {
        return match parse(text, false) {
            Parsed::Calls(calls) => Step::Accept(text.len(), calls),
            Parsed::Incomplete | Parsed::Invalid => Step::Reject(text.len()),
        };
    }
    if text.len() > MAX_HELD {
        return Step::Reject(text.len());
    }
    Step::NeedMore
}

/// `<tool_call>` followed by whitespace and `{`, `<` or `` ` ``; or `<function=NAME>` with an offered name.
fn tag_opening(text: &str, tools: &ToolSet) -> Opening {
    let bytes = text.as_bytes();
    if let Some(rest) = text.strip_prefix(TOOL_CALL_OPEN) {
        let body = rest.trim_start();
        let gap = rest.len() - body.len();
        return match body.as_bytes().first() {
            _ if gap > MAX_GAP => Opening::No,
            None => Opening::Partial,
            Some(b'{' | b'<' | b'`') => Opening::Complete(Cand::ToolCall {
                searched: TOOL_CALL_OPEN.len(),
            }),
            Some(_) => Opening::No,
        };
    }
    if let Some(rest) = bytes.strip_prefix(FUNCTION_OPEN.as_bytes()) {
        let window = &rest[..rest.len().min(MAX_NAME + 1)];
        return match window.iter().position(|&b| matches!(b, b'>' | b'\n' | b'<')) {
            Some(at) if window[at] == b'>' => {
                let name = text[FUNCTION_OPEN.len()..FUNCTION_OPEN.len() + at].trim();
                if tools.contains(name) {
                    Opening::Complete(Cand::Function {
                        searched: FUNCTION_OPEN.len() + at + 1,
                    })
                } else {
                    Opening::No
                }
            }
            Some(_) => Opening::No,
            None if window.len() > MAX_NAME => Opening::No,
            None => Opening::Partial,
        };
    }
    if TOOL_CALL_OPEN.as_bytes().starts_with(bytes) || FUNCTION_OPEN.as_bytes().starts_with(bytes) {
        Opening::Partial
    } else {
        Opening::No
    }
}

/// ```` ``` ```` with an empty or `json` info string, then (after blank space) a body starting with `{`.
fn fence_opening(text: &str) -> Opening {
    let bytes = text.as_bytes();
    let ticks = bytes.iter().take(FENCE.len()).take_while(|&&b| b == b'`').count();
    if ticks < FENCE.len() {
        return if ticks == bytes.len() {
            Opening::Partial
        } else {
            Opening::No
        };
    }
    let rest = &text[FENCE.len()..];
    let window = &rest.as_bytes()[..rest.len().min(MAX_NAME + 1)];
    // A fourth backtick makes a longer fence, which a call never uses; it still opens a code block.
    let code = Opening::Code(FENCE.len());
    let Some(line_end) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > MAX_NAME {
            return code;
        }
        // Still reading the info string: it must be on its way to `json`.
        let info = rest.trim().to_ascii_lowercase();
        let trailing_space = rest.len() > rest.trim_end().len();
        return if "json".starts_with(info.as_str()) && !(trailing_space && !info.is_empty() && info != "json") {
            Opening::Partial
        } else {
            code
        };
    };
    let info = rest[..line_end].trim();
    if !(info.is_empty() || info.eq_ignore_ascii_case("json")) {
        return code;
    }
    let after = &rest[line_end + 1..];
    let body = after.trim_start();
    let gap = after.len() - body.len();
    match body.as_bytes().first() {
        _ if gap > MAX_GAP => code,
        None => Opening::Partial,
        Some(b'{') => {
            let at = FENCE.len() + line_end + 1 + gap;
            Opening::Complete(Cand::Fence { body: at, searched: at })
        }
        Some(_) => code,
    }
}

/// `{`, whitespace, `"name"`, whitespace, `:`.
fn json_opening(text: &str) -> Opening {
    let bytes = text.as_bytes();
    let mut at = 1;
    let mut gap = 0;
    for expected in [&b"\"name\""[..], b":"] {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = bytes.get(at) {
            at += 1;
            gap += 1;
        }
        if gap > MAX_GAP {
            return Opening::No;
        }
        let available = &bytes[at.min(bytes.len())..];
        let compared = available.len().min(expected.len());
        if available[..compared] != expected[..compared] {
            return Opening::No;
        }
        if compared < expected.len() {
            return Opening::Partial;
        }
        at += expected.len();
    }
    Opening::Complete(Cand::Json(JsonScan::default()))
}

/// Incremental scan for the end of a JSON object: brace depth, with strings and escapes skipped.
#[derive(Debug, Clone, Default)]
struct JsonScan {
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The end of the object, once found.
    closed: Option<usize>,
}

impl JsonScan {
    fn advance(&mut self, text: &str, tools: &ToolSet, at_end: bool) -> Step {
        let bytes = text.as_bytes();
        if self.closed.is_none() {
            while let Some(&byte) = bytes.get(self.pos) {
                self.pos += 1;
                if self.in_string {
                    match byte {
                        _ if self.escaped => self.escaped = false,
                        b'\\' => self.escaped = true,
                        b'"' => self.in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.closed = Some(self.pos);
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some(end) = self.closed else {
            return if at_end || text.len() > MAX_HELD {
                Step::Reject(text.len())
            } else {
                Step::NeedMore
            };
        };
        // The object must be alone on its line: `{…} and more` is prose.
        let rest = &bytes[end..];
        match rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r')) {
            Some(at) if rest[at] == b'\n' && at <= MAX_GAP => {}
            None if at_end => {}
            None if rest.len() <= MAX_GAP => return Step::NeedMore,
            _ => return Step::Reject(end),
        }
        let call = serde_json::from_str::<Value>(&text[..end])
            .ok()
            .and_then(|value| call_from_value(value, tools, true));
        match call {
            Some(call) => Step::Accept(end, vec![call]),
            None => Step::Reject(end),
        }
    }
}

#[cfg(test)]
mod tests;
