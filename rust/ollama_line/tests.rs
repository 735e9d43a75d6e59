//! Tests of [`super`] (`rust/ollama_line.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

#[test]
fn content_chunk() {
    let line = br#"{"model":"qwen3:30b","created_at":"2026-08-01T10:00:00.2Z","message":{"role":"assistant","content":"Let me read it."},"done":false}"#;
    let chunk = parse_chunk(line).unwrap();
    assert!(chunk.error.is_none());
    assert!(!chunk.done);
    let message = chunk.message.unwrap();
    assert_eq!(message.content.unwrap().as_str(), "Let me read it.");
    assert!(message.thinking.is_none());
    assert!(message.tool_calls.is_none());
}

#[test]
fn strings_borrow_when_unescaped() {
    let line = br#"{"message":{"content":"plain","thinking":"a\nb"}}"#;
    let chunk = parse_chunk(line).unwrap();
    let message = chunk.message.unwrap();
    assert!(matches!(message.content.unwrap().0, Cow::Borrowed("plain")));
    assert!(matches!(message.thinking.unwrap().0, Cow::Owned(ref s) if s == "a\nb"));
}

#[test]
fn thinking_chunk() {
    let line = br#"{"message":{"role":"assistant","content":"","thinking":"User wants the file."},"done":false}"#;
    let message = parse_chunk(line).unwrap().message.unwrap();
    assert_eq!(message.thinking.unwrap().as_str(), "User wants the file.");
    assert_eq!(message.content.unwrap().as_str(), "");
}

#[test]
fn tool_call_chunk_keeps_argument_order() {
    let line = br#"{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_k3j9x0qa","function":{"index":0,"name":"Read","arguments":{"z":1,"file_path":"/src/a.ts"}}},{"function":{"index":1,"name":"Bash","arguments":"{\"command\":\"ls\"}"}}]},"done":false}"#;
    let calls = parse_chunk(line).unwrap().message.unwrap().tool_calls.unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id.as_ref().unwrap().as_str(), "call_k3j9x0qa");
    let function = calls[0].function.as_ref().unwrap();
    assert_eq!(function.name.as_ref().unwrap().as_str(), "Read");
    assert_eq!(function.index, Some(0));
    let args = function.arguments.as_ref().unwrap();
    assert_eq!(
        serde_json::to_string(args).unwrap(),
        r#"{"z":1,"file_path":"/src/a.ts"}"#
    );
    assert!(calls[1].id.is_none());
    assert_eq!(
        calls[1].function.as_ref().unwrap().arguments,
        Some(json!("{\"command\":\"ls\"}"))
    );
}

#[test]
fn done_chunk_with_metrics() {
    let line = br#"{"model":"m","created_at":"t","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":1043000000,"load_duration":21000000,"prompt_eval_count":18234,"prompt_eval_cached_count":18000,"prompt_eval_duration":512000000,"eval_count":57,"eval_duration":498000000}"#;
    let chunk = parse_chunk(line).unwrap();
    assert!(chunk.done);
    assert_eq!(chunk.done_reason.unwrap().as_str(), "stop");
    assert_eq!(chunk.prompt_eval_count, Some(18234));
    assert_eq!(chunk.prompt_eval_cached_count, Some(18000));
    assert_eq!(chunk.eval_count, Some(57));
    assert_eq!(chunk.total_duration, Some(1_043_000_000));
    assert_eq!(chunk.load_duration, Some(21_000_000));
    assert_eq!(chunk.prompt_eval_duration, Some(512_000_000));
    assert_eq!(chunk.eval_duration, Some(498_000_000));
}

#[test]
fn unknown_fields_are_ignored() {
    let line = br#"{"remote_model":"x","logprobs":[{"token":"a","logprob":-0.1}],"_debug_info":{},"message":{"content":"a","images":null,"tool_name":"t"},"done":false}"#;
    assert_eq!(
        parse_chunk(line).unwrap().message.unwrap().content.unwrap().as_str(),
        "a"
    );
}

#[test]
fn error_lines() {
    let chunk = parse_chunk(br#"{"error":"model runner has unexpectedly stopped"}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), "model runner has unexpectedly stopped");
    let chunk = parse_chunk(br#"{"error":"quote \" and\nnewline"}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), "quote \" and\nnewline");
    let chunk = parse_chunk(br#"{"error":{"message":"nested","code":500}}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), "nested");
    let chunk = parse_chunk(br#"{"error":{"code":500}}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), r#"{"code":500}"#);
    let chunk = parse_chunk(br#"{"error":42}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), "42");
}

#[test]
fn error_is_found_even_when_the_rest_is_odd() {
    // `message` as a string and `done` as a string would fail the full parse.
    let chunk = parse_chunk(br#"{"message":"x","done":"yes","error":"boom"}"#).unwrap();
    assert_eq!(chunk.error.unwrap().text(), "boom");
    assert!(chunk.message.is_none());
}

#[test]
fn null_error_is_no_error() {
    let chunk = parse_chunk(br#"{"error":null,"message":{"content":"x"},"done":false}"#).unwrap();
    assert!(chunk.error.is_none());
    assert!(parse_chunk(br#"{"error":null,"done":"x"}"#).is_err());
}

#[test]
fn malformed_lines_are_errors() {
    for line in [
        &b""[..],
        b"not json",
        b"{\"message\":",
        b"[1,2]",
        b"[null,{\"content\":\"x\"},true]",
        b"  7",
        b"\"s\"",
        b"{\"done\":\"yes\"}",
        b"{\"message\":{\"content\":\"\xff\"}}",
        b"\xff\xfe",
    ] {
        assert!(parse_chunk(line).is_err(), "{:?}", String::from_utf8_lossy(line));
    }
}

/// Chunk lines as Ollama writes them, with now and then an odd field: duplicated, null, of the wrong type, a
/// non-integer count, an error, tool calls, unknown fields.
fn chunk_line() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof!["[a-z ]{0,12}", any::<String>(), "[ a\"\\\\/\n\t\u{1}é😀]{0,8}"];
    let value = prop_oneof![
        3 => text.clone().prop_map(|s| json!(s)),
        1 => Just(json!(null)),
        1 => Just(json!(true)),
        1 => Just(json!(false)),
        1 => prop_oneof![Just(json!(0)), Just(json!(18234)), Just(json!(u64::MAX)), Just(json!(-1)), Just(json!(1.5)), Just(json!(1e30))],
        1 => Just(json!({"content": "x"})),
        1 => Just(json!([{"function": {"name": "Read", "arguments": {"a": 1}}}])),
    ];
    let key = prop_oneof![
        Just("model"),
        Just("created_at"),
        Just("message"),
        Just("done"),
        Just("done_reason"),
        Just("error"),
        Just("prompt_eval_count"),
        Just("eval_count"),
        Just("total_duration"),
        Just("eval_duration"),
        Just("x"),
    ];
    let message_key = prop_oneof![
        Just("role"),
        Just("content"),
        Just("thinking"),
        Just("tool_calls"),
        Just("images")
    ];
    let message = proptest::collection::vec((message_key, value.clone()), 0..4);
    let members = proptest::collection::vec((key, value, message, any::<bool>()), 0..7);
    (members, any::<bool>()).prop_map(|(members, pretty)| {
        use std::fmt::Write;
        let mut line = String::from("{");
        for (i, (key, value, message, as_message)) in members.into_iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let value = if key == "message" && as_message {
                let fields: Vec<String> = message.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            } else {
                value.to_string()
            };
            write!(line, "{key:?}:{value}").unwrap();
            if pretty {
                line.push_str(" \n");
            }
        }
        line.push('}');
        line.into_bytes()
    })
}

proptest! {
    #[test]
    fn chunk_lines_never_panic(line in chunk_line()) {
        let _ = parse_chunk(&line);
    }

    #[test]
    fn mutated_chunk_lines_never_panic(line in chunk_line(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4)) {
        let mut line = line;
        for (at, byte, op) in edits {
            let at = at % (line.len() + 1);
            match op {
                0 if at < line.len() => line[at] = byte,
                1 if at < line.len() => { line.remove(at); }
                _ => line.insert(at, byte),
            }
        }
        let _ = parse_chunk(&line);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_chunk(&bytes);
    }

    #[test]
    fn content_round_trips(content in any::<String>(), thinking in any::<String>()) {
        let line = serde_json::to_vec(&json!({"message": {"content": content, "thinking": thinking}, "done": false})).unwrap();
        let chunk = parse_chunk(&line).unwrap();
        let message = chunk.message.unwrap();
        let (got_content, got_thinking) = (message.content.unwrap(), message.thinking.unwrap());
        prop_assert_eq!(got_content.as_str(), content.as_str());
        prop_assert_eq!(got_thinking.as_str(), thinking.as_str());
    }
}
