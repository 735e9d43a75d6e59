//! Tests of [`super`] (`rust/ndjson.rs`).

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
