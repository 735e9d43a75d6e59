//! Tests of [`super`] (`rust/sse.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn one(buf: &[u8]) -> (String, serde_json::Value) {
    let mut frames = parse_frames(buf);
    assert_eq!(frames.len(), 1);
    frames.pop().unwrap()
}

#[test]
fn generic_frame() {
    let mut out = Vec::new();
    write_frame(&mut out, "ping", b"{\"type\":\"ping\"}");
    assert_eq!(out, b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    assert_eq!(frame_len("ping", b"{\"type\":\"ping\"}"), out.len());
}

#[test]
fn multi_line_data_becomes_several_data_fields() {
    let data = b"{\n  \"a\": 1,\r\n  \"b\": 2\r}";
    let mut out = Vec::new();
    write_frame(&mut out, "x", data);
    assert_eq!(
        out,
        b"event: x\ndata: {\ndata:   \"a\": 1,\ndata:   \"b\": 2\ndata: }\n\n"
    );
    assert_eq!(frame_len("x", data), out.len());
    // An SSE client joins data lines with "\n": still the same JSON.
    let joined: Vec<&str> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let value: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
    assert_eq!(value, json!({"a": 1, "b": 2}));
}

#[test]
fn empty_data_and_trailing_newline() {
    let mut out = Vec::new();
    write_frame(&mut out, "e", b"");
    assert_eq!(out, b"event: e\ndata: \n\n");
    out.clear();
    write_frame(&mut out, "e", b"{}\n");
    assert_eq!(out, b"event: e\ndata: {}\ndata: \n\n");
}

#[test]
fn write_into_slice_matches_vec() {
    for data in [&b"{}"[..], b"a\nb\r\nc\rd", b"", b"\n"] {
        let mut vec = Vec::new();
        write_frame(&mut vec, "evt", data);
        let mut slice = vec![0u8; frame_len("evt", data)];
        write_frame_into(&mut slice, "evt", data);
        assert_eq!(vec, slice);
    }
}

#[test]
fn event_validation() {
    assert!(validate_event("message_start").is_ok());
    assert!(validate_event("").is_err());
    assert!(validate_event("a\nb").is_err());
    assert!(validate_event("a\r").is_err());
}

#[test]
fn frames_append_to_one_buffer() {
    let mut out = Vec::new();
    ping(&mut out);
    message_stop(&mut out);
    let frames = parse_frames(&out);
    assert_eq!(
        frames,
        [
            ("ping".into(), json!({"type": "ping"})),
            ("message_stop".into(), json!({"type": "message_stop"}))
        ]
    );
}

#[test]
fn message_start_frame() {
    let mut out = Vec::new();
    let usage = Usage {
        input_tokens: 42,
        output_tokens: 0,
        cache_read_input_tokens: None,
    };
    message_start(&mut out, "msg_\"1", "qwen3:8b", &usage);
    let (event, data) = one(&out);
    assert_eq!(event, "message_start");
    assert_eq!(
        data,
        json!({"type": "message_start", "message": {"id": "msg_\"1", "type": "message", "role": "assistant",
            "model": "qwen3:8b", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 42, "output_tokens": 0}}})
    );
}

#[test]
fn block_start_frames() {
    let mut out = Vec::new();
    text_block_start(&mut out, 0);
    thinking_block_start(&mut out, 1);
    tool_use_block_start(&mut out, 2, "toolu_x", "Read\n");
    let frames = parse_frames(&out);
    assert!(frames.iter().all(|(event, _)| event == "content_block_start"));
    assert_eq!(
        frames[0].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        frames[1].1,
        json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
    );
    assert_eq!(
        frames[2].1,
        json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_x", "name": "Read\n", "input": {}}})
    );
}

#[test]
fn delta_frames() {
    let mut out = Vec::new();
    text_delta(&mut out, 3, "he said \"hi\"\n");
    thinking_delta(&mut out, 4, "hmm\t");
    signature_delta(&mut out, 4, "ccop.0123");
    input_json_delta(&mut out, 5, "{\"a\":\"b\\n\"}");
    content_block_stop(&mut out, 5);
    let frames = parse_frames(&out);
    let expected = [
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "he said \"hi\"\n"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 4, "delta": {"type": "thinking_delta", "thinking": "hmm\t"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 4, "delta": {"type": "signature_delta", "signature": "ccop.0123"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 5, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":\"b\\n\"}"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 5})),
    ];
    assert_eq!(frames.len(), expected.len());
    for ((event, data), (want_event, want)) in frames.iter().zip(expected) {
        assert_eq!(event, want_event);
        assert_eq!(data, &want);
    }
}

#[test]
fn message_delta_frames() {
    let mut out = Vec::new();
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 5,
        cache_read_input_tokens: Some(7),
    };
    message_delta(&mut out, "stop_sequence", Some("\n\nHuman:"), &usage);
    message_delta(
        &mut out,
        "end_turn",
        None,
        &Usage {
            input_tokens: 1,
            output_tokens: 2,
            ..Usage::default()
        },
    );
    let frames = parse_frames(&out);
    assert_eq!(
        frames[0].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "\n\nHuman:"},
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 7, "output_tokens": 5}})
    );
    assert_eq!(
        frames[1].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 1, "output_tokens": 2}})
    );
}

#[test]
fn error_frame() {
    let mut out = Vec::new();
    error(&mut out, "api_error", "boom: \"x\"\n");
    let (event, data) = one(&out);
    assert_eq!(event, "error");
    assert_eq!(
        data,
        json!({"type": "error", "error": {"type": "api_error", "message": "boom: \"x\"\n"}})
    );
}

proptest! {
    #[test]
    fn any_text_delta_round_trips(s in any::<String>(), index in 0usize..1000) {
        let mut out = Vec::new();
        text_delta(&mut out, index, &s);
        let (event, data) = one(&out);
        prop_assert_eq!(event, "content_block_delta");
        prop_assert_eq!(data, json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": s}}));
    }

    #[test]
    fn frame_len_is_exact(event in "[a-z_]{1,20}", data in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut out = Vec::new();
        write_frame(&mut out, &event, &data);
        prop_assert_eq!(out.len(), frame_len(&event, &data));
    }
}
