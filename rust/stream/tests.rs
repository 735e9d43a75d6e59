//! Tests of [`super`] (`rust/stream.rs`).

use super::*;
use crate::ollama_line::{MAX_ERROR_TEXT, classify_error, truncate};
use crate::schema::ToolSet;
use crate::sse::parse_frames;
use crate::stop::partial_stop_len;
use proptest::prelude::*;
use serde_json::{Value, json};

fn opts() -> TranslatorOptions {
    TranslatorOptions {
        message_id: "msg_test".into(),
        model: "claude-sonnet-4-5".into(),
        input_tokens_estimate: 100,
        max_tokens: 1000,
        ..TranslatorOptions::default()
    }
}

fn line(value: &Value) -> String {
    let mut text = serde_json::to_string(value).unwrap();
    text.push('\n');
    text
}

fn content(text: &str) -> String {
    line(&json!({"model": "m", "message": {"role": "assistant", "content": text}, "done": false}))
}

fn thinking(text: &str) -> String {
    line(&json!({"model": "m", "message": {"role": "assistant", "content": "", "thinking": text}, "done": false}))
}

fn tools(calls: &Value) -> String {
    line(&json!({"message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": false}))
}

fn done(reason: &str, eval_count: u64) -> String {
    line(
        &json!({"message": {"role": "assistant", "content": ""}, "done": true, "done_reason": reason,
        "prompt_eval_count": 18234, "eval_count": eval_count}),
    )
}

/// Run a translator over `feeds` (one `feed` call each), then `finish`; return the translator and frames.
fn run<S: AsRef<str>>(opts: TranslatorOptions, feeds: &[S]) -> (Translator, Vec<(String, Value)>) {
    let mut translator = Translator::new(opts);
    let mut out = Vec::new();
    translator.start(&mut out);
    for feed in feeds {
        translator.feed(feed.as_ref().as_bytes(), &mut out);
    }
    translator.finish(&mut out);
    let frames = parse_frames(&out);
    (translator, frames)
}

fn events(frames: &[(String, Value)]) -> Vec<&str> {
    frames.iter().map(|(event, _)| event.as_str()).collect()
}

/// Check the event grammar and rebuild the message the way an Anthropic client accumulates it.
///
/// Returns the rebuilt message (comparable with `message_json`) and whether the stream ended in `error`.
#[expect(
    clippy::cognitive_complexity,
    reason = "a test oracle: one flat check per event kind reads best in one place"
)]
fn rebuild(frames: &[(String, Value)]) -> (Value, bool) {
    let mut message = Value::Null;
    let mut open: Option<usize> = None;
    let mut partial_json = String::new();
    let mut finished = false;
    for (i, (event, data)) in frames.iter().enumerate() {
        assert_eq!(data["type"], event.as_str(), "data.type matches the event name");
        assert!(!finished, "nothing after message_stop");
        match event.as_str() {
            "message_start" => {
                assert_eq!(i, 0, "message_start comes first");
                message = data["message"].clone();
            }
            "content_block_start" => {
                assert!(open.is_none(), "previous block closed first");
                let index = usize::try_from(data["index"].as_u64().unwrap()).unwrap();
                let blocks = message["content"].as_array_mut().unwrap();
                assert_eq!(index, blocks.len(), "indices increase by one from 0");
                blocks.push(data["content_block"].clone());
                open = Some(index);
                partial_json.clear();
            }
            "content_block_delta" => {
                let index = usize::try_from(data["index"].as_u64().unwrap()).unwrap();
                assert_eq!(open, Some(index), "delta for the open block");
                let block = &mut message["content"][index];
                let delta = &data["delta"];
                match (block["type"].as_str().unwrap(), delta["type"].as_str().unwrap()) {
                    ("text", "text_delta") => {
                        let text = delta["text"].as_str().unwrap();
                        assert!(!text.is_empty(), "no empty deltas");
                        block["text"] = Value::String(format!("{}{text}", block["text"].as_str().unwrap()));
                    }
                    ("thinking", "thinking_delta") => {
                        let text = delta["thinking"].as_str().unwrap();
                        assert!(!text.is_empty(), "no empty deltas");
                        block["thinking"] = Value::String(format!("{}{text}", block["thinking"].as_str().unwrap()));
                    }
                    ("thinking", "signature_delta") => block["signature"] = delta["signature"].clone(),
                    ("tool_use", "input_json_delta") => {
                        partial_json.push_str(delta["partial_json"].as_str().unwrap());
                    }
                    other => panic!("delta {other:?} does not fit its block"),
                }
            }
            "content_block_stop" => {
                let index = usize::try_from(data["index"].as_u64().unwrap()).unwrap();
                assert_eq!(open, Some(index));
                let block = &mut message["content"][index];
                if block["type"] == "tool_use" {
                    block["input"] = serde_json::from_str(&partial_json).expect("input_json_delta is JSON");
                    assert!(block["input"].is_object());
                }
                if block["type"] == "thinking" {
                    assert!(
                        block["signature"].as_str().unwrap().starts_with("ccop."),
                        "signature sent"
                    );
                }
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none(), "all blocks closed before message_delta");
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                message["usage"] = data["usage"].clone();
            }
            "message_stop" => finished = true,
            "error" => {
                assert_eq!(i, frames.len() - 1, "error is the last event");
                return (message, true);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    (message, false)
}

fn message_of(translator: &Translator) -> Value {
    serde_json::from_slice(&translator.message_json()).expect("message_json is JSON")
}

/// Same input through a non-SSE translator: no frames, same message.
fn assert_non_sse_matches<S: AsRef<str>>(opts: TranslatorOptions, feeds: &[S], expected: &Value) {
    let mut translator = Translator::new(TranslatorOptions {
        emit_sse: false,
        ..opts
    });
    let mut out = Vec::new();
    translator.start(&mut out);
    for feed in feeds {
        translator.feed(feed.as_ref().as_bytes(), &mut out);
    }
    translator.finish(&mut out);
    assert!(out.is_empty(), "no frames without emit_sse");
    assert_eq!(&message_of(&translator), expected);
}

#[test]
fn text_only_stream() {
    let feeds = [content("Hello"), content(", world"), done("stop", 3)];
    let (translator, frames) = run(opts(), &feeds);
    assert_eq!(
        events(&frames),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        frames[0].1,
        json!({"type": "message_start", "message": {"id": "msg_test", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 100, "output_tokens": 0}}})
    );
    assert_eq!(frames[2].1["delta"], json!({"type": "text_delta", "text": "Hello"}));
    assert_eq!(frames[3].1["delta"], json!({"type": "text_delta", "text": ", world"}));
    assert_eq!(
        frames[5].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 18234, "output_tokens": 3}})
    );
    assert!(translator.is_done());
    assert!(!translator.stopped());
    assert!(translator.error().is_none());
    assert_eq!(translator.prompt_eval_count(), Some(18234));
    assert_eq!(translator.eval_count(), Some(3));
    let expected = json!({"id": "msg_test", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello, world"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 18234, "output_tokens": 3}});
    assert_eq!(message_of(&translator), expected);
    assert_eq!(rebuild(&frames), (expected.clone(), false));
    assert_non_sse_matches(opts(), &feeds, &expected);
}

#[test]
fn thinking_then_text() {
    let feeds = [
        thinking("User wants"),
        thinking(" the file."),
        content("Reading it."),
        done("stop", 9),
    ];
    let (translator, frames) = run(opts(), &feeds);
    assert_eq!(
        events(&frames),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        frames[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    let sig = signature("User wants the file.");
    assert_eq!(
        frames[4].1["delta"],
        json!({"type": "signature_delta", "signature": sig})
    );
    assert_eq!(frames[6].1["index"], 1);
    let message = message_of(&translator);
    assert_eq!(
        message["content"],
        json!([{"type": "thinking", "thinking": "User wants the file.", "signature": sig},
               {"type": "text", "text": "Reading it."}])
    );
    assert_eq!(rebuild(&frames).0, message);
    assert_non_sse_matches(opts(), &feeds, &message);
}

#[test]
fn signature_is_stable() {
    assert_eq!(signature("abc"), signature("abc"));
    assert_ne!(signature("abc"), signature("abd"));
    // FNV-1a 64 of the empty string is the offset basis.
    assert_eq!(signature(""), "ccop.cbf29ce484222325");
    assert_eq!(signature("a"), "ccop.af63dc4c8601ec8c");
}

#[test]
fn thinking_after_text_opens_a_new_block() {
    let feeds = [content("a"), thinking("b"), content("c"), done("stop", 3)];
    let (translator, frames) = run(opts(), &feeds);
    let message = message_of(&translator);
    let types: Vec<&str> = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text", "thinking", "text"]);
    assert_eq!(rebuild(&frames).0, message);
}

#[test]
fn tool_calls_mid_stream() {
    let feeds = [
        thinking("User wants the file."),
        content("Let me read it."),
        tools(
            &json!([{"id": "call_k3j9x0qa", "function": {"index": 0, "name": "Read", "arguments": {"file_path": "/src/a.ts"}}}]),
        ),
        done("stop", 57),
    ];
    let (translator, frames) = run(opts(), &feeds);
    let starts: Vec<&Value> = frames
        .iter()
        .filter(|(e, _)| e == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        starts[2],
        &json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "call_k3j9x0qa", "name": "Read", "input": {}}})
    );
    let json_deltas: Vec<&Value> = frames
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(json_deltas.len(), 1, "exactly one input_json_delta");
    assert_eq!(json_deltas[0]["delta"]["partial_json"], "{\"file_path\":\"/src/a.ts\"}");
    let message = message_of(&translator);
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"][2],
        json!({"type": "tool_use", "id": "call_k3j9x0qa", "name": "Read", "input": {"file_path": "/src/a.ts"}})
    );
    assert_eq!(rebuild(&frames).0, message);
    assert_non_sse_matches(opts(), &feeds, &message);
}

#[test]
fn tool_calls_only_in_done_chunk_with_content() {
    let last = line(
        &json!({"message": {"role": "assistant", "content": " tail", "thinking": "",
        "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": "Bash", "arguments": {"command": "ls", "timeout": 5}}},
                       {"id": "call_2", "function": {"index": 1, "name": "Read", "arguments": {"file_path": "/x"}}}]},
        "done": true, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 20}),
    );
    let feeds = [content("Head"), last];
    let (translator, frames) = run(opts(), &feeds);
    let message = message_of(&translator);
    assert_eq!(message["content"][0], json!({"type": "text", "text": "Head tail"}));
    assert_eq!(message["content"][1]["id"], "call_1");
    assert_eq!(
        serde_json::to_string(&message["content"][1]["input"]).unwrap(),
        r#"{"command":"ls","timeout":5}"#
    );
    assert_eq!(message["content"][2]["name"], "Read");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(rebuild(&frames).0, message);
    assert!(translator.is_done());
    assert_non_sse_matches(opts(), &feeds, &message);
}

#[test]
fn content_in_done_chunk() {
    let last = line(
        &json!({"message": {"role": "assistant", "content": "!"}, "done": true, "done_reason": "stop", "eval_count": 2}),
    );
    let feeds = [content("Hi"), last];
    let (translator, frames) = run(opts(), &feeds);
    assert_eq!(
        message_of(&translator)["content"],
        json!([{"type": "text", "text": "Hi!"}])
    );
    // Without a prompt_eval_count the estimate stays.
    assert_eq!(
        message_of(&translator)["usage"],
        json!({"input_tokens": 100, "output_tokens": 2})
    );
    assert_eq!(rebuild(&frames).0, message_of(&translator));
}

#[test]
fn parallel_tool_calls_with_empty_and_duplicate_ids() {
    let calls = json!([
        {"id": "", "function": {"index": 0, "name": "A", "arguments": {}}},
        {"function": {"index": 1, "name": "B", "arguments": {}}},
        {"id": "call_x", "function": {"index": 2, "name": "C", "arguments": {}}},
        {"id": "call_x", "function": {"index": 3, "name": "D", "arguments": {}}},
        {"id": "call_y", "function": {"index": 4, "name": "E", "arguments": null}},
        {"id": "call_z"}
    ]);
    let feeds = [tools(&calls), done("stop", 1)];
    let feeds: Vec<&str> = feeds.iter().map(String::as_str).collect();
    let (translator, frames) = run(opts(), &feeds);
    let message = message_of(&translator);
    let blocks = message["content"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);
    let ids: Vec<&str> = blocks.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "{ids:?}");
    assert_eq!(ids[2], "call_x");
    assert_eq!(ids[4], "call_y");
    assert_eq!(ids[5], "call_z");
    for generated in [ids[0], ids[1], ids[3]] {
        assert_eq!(generated.len(), 30);
        let suffix = generated.strip_prefix("toolu_").unwrap();
        assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{generated}");
    }
    assert_eq!(
        blocks[5],
        json!({"type": "tool_use", "id": "call_z", "name": "", "input": {}})
    );
    assert_eq!(rebuild(&frames).0, message);
    let counts = translator.heal_counts();
    assert_eq!(counts[HealKind::Unchanged.index()], ("unchanged", 6));
}

#[test]
fn string_arguments_are_healed() {
    let calls = json!([
        {"id": "a", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}},
        {"id": "b", "function": {"name": "Bash", "arguments": "\"{\\\"command\\\":\\\"pwd\\\"}\""}},
        {"id": "c", "function": {"name": "Bash", "arguments": "not json"}},
        {"id": "d", "function": {"name": "Bash", "arguments": {"z": 1, "a": 2}}}
    ]);
    let feeds = [tools(&calls), done("stop", 1)];
    let feeds: Vec<&str> = feeds.iter().map(String::as_str).collect();
    let (translator, frames) = run(opts(), &feeds);
    let message = message_of(&translator);
    assert_eq!(message["content"][0]["input"], json!({"command": "ls"}));
    assert_eq!(message["content"][1]["input"], json!({"command": "pwd"}));
    assert_eq!(message["content"][2]["input"], json!({"raw": "not json"}));
    let partial: Vec<&str> = frames
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(partial[3], r#"{"z":1,"a":2}"#, "key order kept");
    assert_eq!(
        translator.heal_counts(),
        [
            ("unchanged", 1),
            ("parsed_string", 1),
            ("unescaped", 1),
            ("raw", 1),
            ("coerced", 0),
            ("wrapped_in_array", 0),
            ("dropped_null", 0),
            ("text_call", 0)
        ]
    );
}

#[test]
fn error_line_mid_stream() {
    let feeds = [
        content("Partial"),
        "{\"error\":\"an error was encountered while running the model: oops\"}\n".to_owned(),
        content("ignored"),
        done("stop", 1),
    ];
    let (translator, frames) = run(opts(), &feeds);
    assert_eq!(
        events(&frames),
        ["message_start", "content_block_start", "content_block_delta", "error"]
    );
    assert_eq!(
        frames[3].1,
        json!({"type": "error", "error": {"type": "api_error",
            "message": "Ollama reported an error: an error was encountered while running the model: oops"}})
    );
    assert_eq!(
        translator.error(),
        Some((
            "api_error",
            "Ollama reported an error: an error was encountered while running the model: oops"
        ))
    );
    assert!(!translator.is_done());
    let (rebuilt, errored) = rebuild(&frames);
    assert!(errored);
    assert_eq!(rebuilt["content"], json!([{"type": "text", "text": "Partial"}]));
    assert_eq!(message_of(&translator)["stop_reason"], Value::Null);
}

#[test]
fn error_in_same_feed_keeps_earlier_text() {
    let feed = format!(
        "{}{}",
        content("abc"),
        "{\"error\":\"server busy, please try again.  maximum pending requests exceeded\"}\n"
    );
    let (translator, frames) = run(opts(), &[&feed]);
    assert_eq!(
        events(&frames),
        ["message_start", "content_block_start", "content_block_delta", "error"]
    );
    assert_eq!(translator.error().unwrap().0, "overloaded_error");
}

#[test]
fn error_classification() {
    assert_eq!(
        classify_error("server busy, please try again.  maximum pending requests exceeded"),
        "overloaded_error"
    );
    assert_eq!(classify_error("Model is Overloaded"), "overloaded_error");
    assert_eq!(
        classify_error("request (9000 tokens) exceeds the available context size (4096 tokens), try increasing it"),
        "invalid_request_error"
    );
    assert_eq!(classify_error("prompt is too long"), "invalid_request_error");
    assert_eq!(classify_error("context deadline exceeded"), "api_error");
    assert_eq!(classify_error("context canceled"), "api_error");
    assert_eq!(classify_error("model runner has unexpectedly stopped"), "api_error");
}

#[test]
fn non_string_error_values() {
    let (translator, frames) = run(
        opts(),
        &["{\"error\":{\"message\":\"exceeds the available context size\"}}\n"],
    );
    assert_eq!(translator.error().unwrap().0, "invalid_request_error");
    assert_eq!(events(&frames), ["message_start", "error"]);
    let (translator, _) = run(opts(), &["{\"error\":500}"]);
    assert_eq!(translator.error(), Some(("api_error", "Ollama reported an error: 500")));
}

#[test]
fn malformed_line() {
    let (translator, frames) = run(
        opts(),
        &[content("ok"), "{\"message\": nope}\n".to_owned(), content("ignored")],
    );
    assert_eq!(events(&frames).last(), Some(&"error"));
    let (kind, message) = translator.error().unwrap();
    assert_eq!(kind, "api_error");
    assert!(message.starts_with("Ollama sent a malformed line ("), "{message}");
    assert!(message.ends_with(r#": "{\"message\": nope}""#), "{message}");
    assert_eq!(frames.last().unwrap().1["error"]["message"], message);
}

#[test]
fn invalid_utf8_line_and_long_excerpt() {
    let mut bad = b"{\"message\":{\"content\":\"\xff\xfe\"}}".to_vec();
    bad.extend_from_slice(&[b'x'; 500]);
    bad.push(b'\n');
    let mut translator = Translator::new(opts());
    let mut out = Vec::new();
    translator.feed(&bad, &mut out);
    let frames = parse_frames(&out);
    assert_eq!(events(&frames), ["error"]);
    let message = translator.error().unwrap().1;
    assert!(message.contains('\u{FFFD}'), "{message}");
    assert!(message.len() < 400, "excerpt is short: {}", message.len());
    assert!(message.ends_with("…\""));
}

#[test]
fn line_too_long() {
    let options = TranslatorOptions {
        max_line_bytes: 128,
        ..opts()
    };
    let long = content(&"x".repeat(200));
    let (translator, frames) = run(options, &[content("a"), long[..50].to_owned(), long[50..].to_owned()]);
    assert_eq!(
        events(&frames),
        ["message_start", "content_block_start", "content_block_delta", "error"]
    );
    assert_eq!(
        translator.error(),
        Some(("api_error", "Ollama sent a line longer than 128 bytes"))
    );
}

#[test]
fn eof_without_done() {
    let (translator, frames) = run(opts(), &[content("Hello")]);
    assert_eq!(
        events(&frames),
        ["message_start", "content_block_start", "content_block_delta", "error"]
    );
    assert_eq!(translator.error(), Some(("api_error", EARLY_EOF_MESSAGE)));
    let (translator, frames) = run::<&str>(opts(), &[]);
    assert_eq!(events(&frames), ["message_start", "error"]);
    assert!(translator.error().is_some());
}

#[test]
fn done_line_without_trailing_newline_is_processed_at_eof() {
    let last = done("stop", 1);
    let (translator, frames) = run(opts(), &[content("x"), last.trim_end().to_owned()]);
    assert!(translator.is_done());
    assert!(translator.error().is_none());
    assert_eq!(events(&frames).last(), Some(&"message_stop"));
}

#[test]
fn finish_twice_and_feed_after_finish_do_nothing() {
    let mut translator = Translator::new(opts());
    let mut out = Vec::new();
    translator.feed(done("stop", 1).as_bytes(), &mut out);
    let len = out.len();
    translator.finish(&mut out);
    translator.finish(&mut out);
    translator.feed(content("late").as_bytes(), &mut out);
    assert_eq!(out.len(), len);
}

#[test]
fn start_is_idempotent_and_implied() {
    let mut translator = Translator::new(opts());
    let mut out = Vec::new();
    translator.feed(content("x").as_bytes(), &mut out);
    translator.start(&mut out);
    translator.feed(done("stop", 1).as_bytes(), &mut out);
    let frames = parse_frames(&out);
    assert_eq!(events(&frames).iter().filter(|e| **e == "message_start").count(), 1);
    assert_eq!(rebuild(&frames).0, message_of(&translator));
}

fn stop_opts(stops: &[&str]) -> TranslatorOptions {
    TranslatorOptions {
        stop_sequences: stops.iter().map(|s| (*s).to_owned()).collect(),
        ..opts()
    }
}

#[test]
fn stop_sequence_spanning_chunks() {
    let feeds = [
        content("Hello wor"),
        content("ld\n\nHu"),
        content("man: more"),
        content("ignored"),
    ];
    let (translator, frames) = run(stop_opts(&["\n\nHuman:"]), &feeds);
    let message = message_of(&translator);
    assert_eq!(message["content"], json!([{"type": "text", "text": "Hello world"}]));
    assert_eq!(message["stop_reason"], "stop_sequence");
    assert_eq!(message["stop_sequence"], "\n\nHuman:");
    assert!(translator.stopped());
    assert!(translator.is_done());
    assert!(translator.error().is_none(), "no early-EOF error after a stop sequence");
    // Held-back text was never sent and retracted: the deltas are exactly the kept text.
    let deltas: Vec<&str> = frames.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(deltas, ["Hello wor", "ld"]);
    let last_delta = &frames.iter().find(|(e, _)| e == "message_delta").unwrap().1;
    assert_eq!(
        last_delta["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:"})
    );
    assert_eq!(rebuild(&frames).0, message);
    assert_non_sse_matches(stop_opts(&["\n\nHuman:"]), &feeds, &message);
}

#[test]
fn stop_sequence_at_the_very_start_gives_no_text_block() {
    let (translator, frames) = run(stop_opts(&["STOP"]), &[content("ST"), content("OP and more")]);
    assert_eq!(events(&frames), ["message_start", "message_delta", "message_stop"]);
    assert_eq!(message_of(&translator)["content"], json!([]));
    assert_eq!(translator.stop_reason(), Some("stop_sequence"));
}

#[test]
fn earliest_ending_stop_sequence_wins() {
    let (translator, _) = run(stop_opts(&["abcd", "bc"]), &[content("xxabcd")]);
    assert_eq!(message_of(&translator)["stop_sequence"], "bc");
    assert_eq!(message_of(&translator)["content"][0]["text"], "xxa");
    let (translator, _) = run(stop_opts(&["c", "abc"]), &[content("xxabc")]);
    assert_eq!(message_of(&translator)["stop_sequence"], "abc");
}

#[test]
fn stop_sequence_never_matched_flushes_held_text() {
    let feeds = [content("Hello \n\nHu"), done("stop", 4)];
    let (translator, frames) = run(stop_opts(&["\n\nHuman:", ""]), &feeds);
    let message = message_of(&translator);
    assert_eq!(message["content"], json!([{"type": "text", "text": "Hello \n\nHu"}]));
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["stop_sequence"], Value::Null);
    assert!(!translator.stopped());
    let deltas: Vec<&str> = frames.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(deltas, ["Hello ", "\n\nHu"]);
    assert_eq!(rebuild(&frames).0, message);
}

#[test]
fn held_text_is_released_before_a_tool_call() {
    let feeds = [
        content("run: ST"),
        tools(&json!([{"id": "t", "function": {"name": "Bash", "arguments": {}}}])),
        done("stop", 4),
    ];
    let (translator, frames) = run(stop_opts(&["STOP"]), &feeds);
    let message = message_of(&translator);
    assert_eq!(message["content"][0], json!({"type": "text", "text": "run: ST"}));
    assert_eq!(message["content"][1]["type"], "tool_use");
    assert_eq!(rebuild(&frames).0, message);
}

#[test]
fn stop_sequence_with_multibyte_characters() {
    let (translator, _) = run(stop_opts(&["é€"]), &[content("aé"), content("€b")]);
    assert_eq!(message_of(&translator)["content"][0]["text"], "a");
    assert!(translator.stopped());
    assert_eq!(partial_stop_len("xé", &["é€".to_owned()]), 2);
    assert_eq!(partial_stop_len("x\u{e9}", &["\u{e9}".to_owned()]), 0);
}

#[test]
fn length_as_max_tokens_or_context_window() {
    let options = TranslatorOptions {
        max_tokens: 50,
        ..opts()
    };
    let (translator, frames) = run(options.clone(), &[content("x"), done("length", 50)]);
    assert_eq!(translator.stop_reason(), Some("max_tokens"));
    assert_eq!(
        frames.iter().find(|(e, _)| e == "message_delta").unwrap().1["delta"]["stop_reason"],
        "max_tokens"
    );
    let (translator, _) = run(options, &[content("x"), done("length", 7)]);
    assert_eq!(translator.stop_reason(), Some("model_context_window_exceeded"));
    // Other or missing done reasons end the turn.
    for reason in ["load", "", "weird"] {
        let (translator, _) = run(opts(), &[done(reason, 1)]);
        assert_eq!(translator.stop_reason(), Some("end_turn"));
    }
    let (translator, _) = run(opts(), &["{\"message\":{\"content\":\"\"},\"done\":true}\n"]);
    assert_eq!(translator.stop_reason(), Some("end_turn"));
}

#[test]
fn cached_prompt_tokens() {
    let last = line(&json!({"message": {"content": ""}, "done": true, "done_reason": "stop",
        "prompt_eval_count": 1000, "prompt_eval_cached_count": 900, "eval_count": 5}));
    let (translator, frames) = run(opts(), &[content("x"), last]);
    let usage = json!({"input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 5});
    assert_eq!(
        frames.iter().find(|(e, _)| e == "message_delta").unwrap().1["usage"],
        usage
    );
    assert_eq!(message_of(&translator)["usage"], usage);
    assert_eq!(translator.prompt_eval_count(), Some(1000));
    assert_eq!(translator.prompt_eval_cached_count(), Some(900));
}

#[test]
fn output_estimate_without_eval_count() {
    let (translator, _) = run(stop_opts(&["END"]), &[content("one two three END")]);
    // "one two three " → 1 + 1 + 2 tokens.
    assert_eq!(
        message_of(&translator)["usage"],
        json!({"input_tokens": 100, "output_tokens": 4})
    );
}

#[test]
fn coalescing_within_one_feed() {
    let one_feed = format!(
        "{}{}{}{}{}",
        thinking("a"),
        thinking("b"),
        content("c"),
        content("d"),
        content("e")
    );
    let (translator, frames) = run(opts(), &[one_feed, done("stop", 5)]);
    let deltas: Vec<&Value> = frames
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| &d["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"type": "thinking_delta", "thinking": "ab"}),
            &json!({"type": "signature_delta", "signature": signature("ab")}),
            &json!({"type": "text_delta", "text": "cde"})
        ]
    );
    assert_eq!(rebuild(&frames).0, message_of(&translator));
}

#[test]
fn empty_strings_emit_nothing() {
    let feeds = [content(""), thinking(""), done("stop", 0)];
    let (translator, frames) = run(opts(), &feeds);
    assert_eq!(events(&frames), ["message_start", "message_delta", "message_stop"]);
    assert_eq!(message_of(&translator)["content"], json!([]));
}

#[test]
fn utf8_split_across_feeds() {
    let text = "héllo wörld 😀 日本";
    let stream = format!("{}{}", content(text), done("stop", 3));
    let bytes = stream.as_bytes();
    for cut in 1..bytes.len() {
        let mut translator = Translator::new(opts());
        let mut out = Vec::new();
        translator.start(&mut out);
        translator.feed(&bytes[..cut], &mut out);
        translator.feed(&bytes[cut..], &mut out);
        translator.finish(&mut out);
        let frames = parse_frames(&out);
        assert_eq!(rebuild(&frames).0["content"][0]["text"], text);
        assert!(translator.is_done());
    }
}

#[test]
fn crlf_and_blank_lines_upstream() {
    let stream = format!(
        "\r\n{}\r\n\n{}",
        content("a").trim_end(),
        done("stop", 1).replace('\n', "\r\n")
    );
    let (translator, _) = run(opts(), &[&stream]);
    assert!(translator.is_done());
    assert_eq!(message_of(&translator)["content"][0]["text"], "a");
}

#[test]
fn escaping_in_ids_models_and_text() {
    let options = TranslatorOptions {
        message_id: "msg_\"x\"".into(),
        model: "we\\ird\nmodel".into(),
        ..opts()
    };
    let feeds = [
        content("quote \" backslash \\ newline \n tab \t ctl \u{1}"),
        done("stop", 1),
    ];
    let (translator, frames) = run(options, &feeds);
    let message = message_of(&translator);
    assert_eq!(message["id"], "msg_\"x\"");
    assert_eq!(message["model"], "we\\ird\nmodel");
    assert_eq!(
        message["content"][0]["text"],
        "quote \" backslash \\ newline \n tab \t ctl \u{1}"
    );
    assert_eq!(rebuild(&frames).0, message);
}

#[test]
fn truncate_and_excerpt_helpers() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("héllo", 3), "hé");
    assert_eq!(truncate("abc", 10), "abc");
    assert_eq!(excerpt(b"short"), "short");
    assert_eq!(excerpt(&[b'a'; 100]).chars().count(), crate::errors::EXCERPT_CHARS + 1);
}

#[test]
fn huge_error_text_is_bounded() {
    let error = line(&json!({"error": "é".repeat(5000)}));
    let (translator, _) = run(opts(), &[&error]);
    assert!(translator.error().unwrap().1.len() <= MAX_ERROR_TEXT + 64);
}

fn tool_opts() -> TranslatorOptions {
    let tools = json!([
        {"name": "Read", "input_schema": {"type": "object", "properties": {
            "path": {"type": "string"}, "limit": {"type": "integer"}, "offset": {"type": "integer"}},
            "required": ["path"]}},
        {"name": "Bash", "input_schema": {"type": "object", "properties": {
            "command": {"type": "string"}, "background": {"type": "boolean"}}, "required": ["command"]}},
        {"name": "MultiRead", "input_schema": {"type": "object", "properties": {
            "paths": {"type": "array", "items": {"type": "string"}}}, "required": ["paths"]}},
    ]);
    TranslatorOptions {
        tools: Some(ToolSet::from_json(&serde_json::to_vec(&tools).unwrap()).unwrap()),
        ..opts()
    }
}

/// The counters that are not zero.
fn counts(translator: &Translator) -> Vec<(&'static str, u64)> {
    translator.heal_counts().into_iter().filter(|(_, n)| *n > 0).collect()
}

/// All text of the `text_delta`s, in order.
fn streamed_text(frames: &[(String, Value)]) -> String {
    frames.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect()
}

/// The message without tool ids (generated ones differ between runs).
fn without_ids(mut message: Value) -> Value {
    for block in message["content"].as_array_mut().unwrap() {
        if block["type"] == "tool_use" {
            block["id"] = Value::Null;
        }
    }
    message
}

const TEXT_CALLS: [&str; 5] = [
    "Let me read it.\n<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}\n</tool_call>",
    "Let me read it.\n```json\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}\n```",
    "Let me read it.\n{\"name\": \"Read\", \"parameters\": {\"path\": \"a.txt\"}}",
    "Let me read it.\n<tool_call>\n<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>\n</tool_call>",
    "Let me read it.\n<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>",
];

#[test]
fn text_calls_become_tool_use_at_every_split() {
    for text in TEXT_CALLS {
        let expected = json!([
            {"type": "text", "text": "Let me read it."},
            {"type": "tool_use", "id": null, "name": "Read", "input": {"path": "a.txt"}}
        ]);
        for cut in (0..=text.len()).filter(|&cut| text.is_char_boundary(cut)) {
            let feeds = [content(&text[..cut]), content(&text[cut..]), done("stop", 9)];
            let (translator, frames) = run(tool_opts(), &feeds);
            let message = message_of(&translator);
            assert_eq!(without_ids(message.clone())["content"], expected, "{text:?} at {cut}");
            assert_eq!(message["stop_reason"], "tool_use");
            assert_eq!(rebuild(&frames).0, message, "{text:?} at {cut}");
            assert_eq!(
                streamed_text(&frames),
                "Let me read it.",
                "nothing withdrawn: {text:?} at {cut}"
            );
            assert_eq!(counts(&translator), [("unchanged", 1), ("text_call", 1)]);
            assert!(message["content"][1]["id"].as_str().unwrap().starts_with("toolu_"));
            let mut non_sse = Translator::new(TranslatorOptions {
                emit_sse: false,
                ..tool_opts()
            });
            let mut out = Vec::new();
            for feed in &feeds {
                non_sse.feed(feed.as_bytes(), &mut out);
            }
            assert!(out.is_empty());
            assert_eq!(without_ids(message_of(&non_sse)), without_ids(message));
        }
    }
}

#[test]
fn text_calls_need_offered_tools() {
    let text = "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}</tool_call>";
    for options in [
        opts(),
        TranslatorOptions {
            tools: Some(ToolSet::default()),
            ..opts()
        },
    ] {
        let (translator, frames) = run(options, &[content(text), done("stop", 1)]);
        assert_eq!(
            message_of(&translator)["content"],
            json!([{"type": "text", "text": text}])
        );
        assert_eq!(streamed_text(&frames), text);
        assert_eq!(translator.stop_reason(), Some("end_turn"));
    }
    let unknown = "<tool_call>{\"name\": \"Delete\", \"arguments\": {\"path\": \"/\"}}</tool_call>";
    let (translator, _) = run(tool_opts(), &[content(unknown), done("stop", 1)]);
    assert_eq!(
        message_of(&translator)["content"],
        json!([{"type": "text", "text": unknown}])
    );
    assert_eq!(counts(&translator), []);
}

#[test]
fn schema_repair_of_structured_and_text_calls() {
    let calls = json!([
        {"id": "a", "function": {"name": "Read", "arguments": {"path": "x", "limit": "5", "offset": null}}},
        {"id": "b", "function": {"name": "MultiRead", "arguments": "{\"paths\": \"x\"}"}},
        {"id": "c", "function": {"name": "Bash", "arguments": {"command": "ls", "background": "TRUE"}}},
        {"id": "d", "function": {"name": "Other", "arguments": {"limit": "5"}}},
        {"id": "e", "function": {"name": "Read", "arguments": "limit: 5"}}
    ]);
    let xml = "<function=Read><parameter=path>b</parameter><parameter=limit>\n20\n</parameter></function>";
    let (translator, frames) = run(tool_opts(), &[tools(&calls), content(xml), done("stop", 1)]);
    let message = message_of(&translator);
    let inputs: Vec<&Value> = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["input"])
        .collect();
    assert_eq!(
        inputs,
        [
            &json!({"path": "x", "limit": 5}),
            &json!({"paths": ["x"]}),
            &json!({"command": "ls", "background": true}),
            &json!({"limit": "5"}),
            &json!({"raw": "limit: 5"}),
            &json!({"path": "b", "limit": 20}),
        ]
    );
    assert_eq!(rebuild(&frames).0, message);
    assert_eq!(
        translator.heal_counts(),
        [
            ("unchanged", 4),
            ("parsed_string", 1),
            ("unescaped", 0),
            ("raw", 1),
            ("coerced", 3),
            ("wrapped_in_array", 1),
            ("dropped_null", 1),
            ("text_call", 1)
        ]
    );
    // Without tools nothing is repaired.
    let (translator, _) = run(opts(), &[tools(&calls), done("stop", 1)]);
    assert_eq!(
        message_of(&translator)["content"][0]["input"],
        json!({"path": "x", "limit": "5", "offset": null})
    );
}

#[test]
fn text_call_ids_follow_the_same_rules() {
    let text = "<tool_call>{\"id\": \"call_1\", \"name\": \"Read\", \"arguments\": {\"path\": \"1\"}}</tool_call>\n\
                <tool_call>{\"id\": \"call_1\", \"name\": \"Read\", \"arguments\": {\"path\": \"2\"}}</tool_call>\n\
                <tool_call>{\"id\": \"\", \"name\": \"Bash\", \"arguments\": {\"command\": \"ls\"}}</tool_call>";
    let structured = json!([{"id": "call_1", "function": {"name": "Bash", "arguments": {"command": "pwd"}}}]);
    let (translator, frames) = run(tool_opts(), &[content(text), tools(&structured), done("stop", 1)]);
    let message = message_of(&translator);
    let blocks = message["content"].as_array().unwrap();
    let names: Vec<&str> = blocks.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Read", "Read", "Bash", "Bash"], "order kept, text calls first");
    let ids: Vec<&str> = blocks.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], "call_1");
    assert!(ids[1..].iter().all(|id| id.starts_with("toolu_")), "{ids:?}");
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 4);
    assert_eq!(rebuild(&frames).0, message);
    assert_eq!(counts(&translator), [("unchanged", 4), ("text_call", 3)]);
}

#[test]
fn text_calls_and_stop_sequences() {
    // The stop sequence cuts the closing tag off: the unclosed call is still complete, so it is a call.
    let options = TranslatorOptions {
        stop_sequences: vec!["</tool_call>".into()],
        ..tool_opts()
    };
    let feeds = [
        content("Reading.\n<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}</tool"),
        content("_call> never sent"),
    ];
    let (translator, frames) = run(options, &feeds);
    let message = message_of(&translator);
    assert_eq!(
        without_ids(message.clone())["content"],
        json!([{"type": "text", "text": "Reading."},
               {"type": "tool_use", "id": null, "name": "Read", "input": {"path": "a"}}])
    );
    assert_eq!(message["stop_reason"], "tool_use");
    assert!(translator.stopped());
    assert_eq!(rebuild(&frames).0, message);
    // Text held for a stop sequence and text held for a call are both released, in order, never withdrawn.
    let options = TranslatorOptions {
        stop_sequences: vec!["\n\nHuman:".into()],
        ..tool_opts()
    };
    let feeds = [
        content("a <tool"),
        content("box> b\n\nHu"),
        content("mble\n{\"na"),
        content("me\": 1}"),
        done("stop", 1),
    ];
    let (translator, frames) = run(options, &feeds);
    let text = "a <toolbox> b\n\nHumble\n{\"name\": 1}";
    assert_eq!(
        message_of(&translator)["content"],
        json!([{"type": "text", "text": text}])
    );
    assert_eq!(streamed_text(&frames), text);
}

#[test]
fn held_text_is_settled_before_other_blocks_and_errors() {
    let feeds = [
        content("Look: <tool"),
        tools(&json!([{"id": "t", "function": {"name": "Bash", "arguments": {"command": "ls"}}}])),
        thinking("hmm"),
        content("\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}"),
        thinking("more"),
        done("stop", 1),
    ];
    let (translator, frames) = run(tool_opts(), &feeds);
    let message = message_of(&translator);
    let types: Vec<&str> = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text", "tool_use", "thinking", "tool_use", "thinking"]);
    assert_eq!(message["content"][0]["text"], "Look: <tool");
    assert_eq!(message["content"][3]["input"], json!({"path": "a"}));
    assert_eq!(rebuild(&frames).0, message);
    // An error still delivers the held text first.
    let feeds = [
        content("Hi <tool_call>{\"name\": \"Re"),
        "{\"error\": \"boom\"}\n".to_owned(),
    ];
    let (translator, frames) = run(tool_opts(), &feeds);
    assert_eq!(streamed_text(&frames), "Hi <tool_call>{\"name\": \"Re");
    assert_eq!(events(&frames).last(), Some(&"error"));
    assert!(translator.error().is_some());
    // So does an early end of the stream; a complete call in an unclosed tag is still a call.
    let feeds = [content(
        "Hi\n<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}",
    )];
    let (translator, frames) = run(tool_opts(), &feeds);
    assert_eq!(streamed_text(&frames), "Hi");
    assert_eq!(message_of(&translator)["content"][1]["name"], "Read");
    assert_eq!(translator.error().unwrap().1, EARLY_EOF_MESSAGE);
}

/// A stream whose content carries text calls among ordinary text, thinking and a structured call.
fn text_call_stream(parts: &[&str], pieces: usize) -> String {
    let content_text = parts.join("\n");
    let mut lines = vec![thinking("Plan.")];
    // The content in `pieces` chunks of about equal size (on char boundaries).
    let step = content_text.len() / pieces.max(1) + 1;
    let mut start = 0;
    while start < content_text.len() {
        let mut end = (start + step).min(content_text.len());
        while !content_text.is_char_boundary(end) {
            end += 1;
        }
        lines.push(content(&content_text[start..end]));
        start = end;
    }
    lines.push(tools(
        &json!([{"id": "s", "function": {"name": "Bash", "arguments": {"command": "ls"}}}]),
    ));
    lines.push(content("After."));
    lines.push(done("stop", 5));
    lines.concat()
}

proptest! {
    #[test]
    fn text_calls_are_the_same_in_any_chunking_and_never_streamed(
        parts in proptest::collection::vec(prop_oneof![
            proptest::sample::select(TEXT_CALLS.to_vec()),
            Just("Plain words é😀."),
            Just("```python\nx = {'name': 'Read'}\n```"),
            Just("<b>bold</b> and {braces}"),
            Just("{\"name\": \"Alice\", \"arguments\": {}}"),
        ], 1..6),
        pieces in 1usize..40,
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        emit_sse in any::<bool>(),
    ) {
        let stream = text_call_stream(&parts, pieces);
        let bytes = stream.as_bytes();
        let options = TranslatorOptions { emit_sse, ..tool_opts() };
        let mut reference = Translator::new(options.clone());
        let mut out = Vec::new();
        reference.feed(bytes, &mut out);
        reference.finish(&mut out);
        let expected = without_ids(message_of(&reference));

        let mut positions: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        positions.sort_unstable();
        positions.dedup();
        let mut translator = Translator::new(options);
        let mut out = Vec::new();
        translator.start(&mut out);
        let mut prev = 0;
        for pos in positions.into_iter().chain([bytes.len()]) {
            translator.feed(&bytes[prev..pos], &mut out);
            prev = pos;
        }
        translator.finish(&mut out);
        let message = message_of(&translator);
        prop_assert_eq!(without_ids(message.clone()), expected);
        let calls = parts.iter().filter(|p| TEXT_CALLS.contains(p)).count();
        let reads = message["content"].as_array().unwrap().iter().filter(|b| b["name"] == "Read").count();
        prop_assert_eq!(reads, calls);
        prop_assert_eq!(message["stop_reason"].as_str(), Some("tool_use"));
        if emit_sse {
            let frames = parse_frames(&out);
            let (rebuilt, errored) = rebuild(&frames);
            prop_assert!(!errored);
            prop_assert_eq!(rebuilt, message);
            let streamed = streamed_text(&frames);
            prop_assert!(!streamed.contains("a.txt") && !streamed.contains("\"Read\""), "{:?}", streamed);
        } else {
            prop_assert!(out.is_empty());
        }
    }
}

/// A representative stream exercising every kind of chunk.
fn full_stream() -> String {
    [
        thinking("Plan: read the file, then answer."),
        thinking(" Ünïcödé 😀"),
        content("I'll read "),
        content("it now.\n"),
        tools(&json!([{"id": "call_1", "function": {"index": 0, "name": "Read", "arguments": {"file_path": "/a b/c.ts", "n": [1, 2]}}}])),
        content("Done: \"quoted\"\t"),
        line(&json!({"message": {"content": " end", "tool_calls": [{"id": "", "function": {"index": 1, "name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 321, "eval_count": 45})),
    ]
    .concat()
}

proptest! {
    #[test]
    fn any_chunking_gives_a_valid_stream_and_the_same_message(
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        stop in prop_oneof![Just(None), Just(Some("\"\t end")), Just(Some("now.")), Just(Some("never"))],
    ) {
        let stream = full_stream();
        let bytes = stream.as_bytes();
        let mut positions: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        positions.sort_unstable();
        positions.dedup();
        let stops: Vec<&str> = stop.into_iter().collect();
        let mut reference = Translator::new(stop_opts(&stops));
        let mut out = Vec::new();
        reference.feed(bytes, &mut out);
        reference.finish(&mut out);
        let expected = message_of(&reference);

        let mut translator = Translator::new(stop_opts(&stops));
        let mut out = Vec::new();
        translator.start(&mut out);
        let mut prev = 0;
        for pos in positions.into_iter().chain([bytes.len()]) {
            translator.feed(&bytes[prev..pos], &mut out);
            prev = pos;
        }
        translator.finish(&mut out);
        let frames = parse_frames(&out);
        let (rebuilt, errored) = rebuild(&frames);
        prop_assert!(!errored);
        prop_assert!(translator.is_done());
        let message = message_of(&translator);
        prop_assert_eq!(&rebuilt, &message);
        // Generated tool ids differ between runs; everything else must not depend on the chunking.
        let strip_ids = |mut v: Value| {
            for block in v["content"].as_array_mut().unwrap() {
                if block["type"] == "tool_use" { block["id"] = Value::Null; }
            }
            v
        };
        prop_assert_eq!(strip_ids(message), strip_ids(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_end_cleanly(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        emit_sse in any::<bool>(),
    ) {
        let mut translator = Translator::new(TranslatorOptions { emit_sse, max_line_bytes: 100, ..stop_opts(&["x"]) });
        let mut out = Vec::new();
        translator.start(&mut out);
        for chunk in &chunks {
            translator.feed(chunk, &mut out);
        }
        translator.finish(&mut out);
        prop_assert!(translator.is_done() || translator.error().is_some());
        if emit_sse {
            let frames = parse_frames(&out);
            let (_, errored) = rebuild(&frames);
            prop_assert_eq!(errored, translator.error().is_some());
        } else {
            prop_assert!(out.is_empty());
        }
        let _: Value = serde_json::from_slice(&translator.message_json()).unwrap();
    }

    #[test]
    fn arbitrary_ndjson_chunks_never_panic(
        lines in proptest::collection::vec(prop_oneof![
            "[ -~]{0,30}".prop_map(|s| content(&s)),
            "[ -~]{0,30}".prop_map(|s| thinking(&s)),
            Just(tools(&json!([{"id": "", "function": {"name": "X", "arguments": "{\\\"a\\\":1}"}}]))),
            Just(done("length", 3)),
            Just("{\"error\": \"boom\"}\n".to_owned()),
            Just("garbage\n".to_owned()),
        ], 0..10),
    ) {
        let (translator, frames) = run(stop_opts(&["ab", "zz"]), &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let (rebuilt, errored) = rebuild(&frames);
        prop_assert_eq!(errored, translator.error().is_some());
        if !errored {
            prop_assert_eq!(rebuilt, message_of(&translator));
        }
    }
}
