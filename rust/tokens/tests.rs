//! Tests of [`super`] (`rust/tokens.rs`).

use super::*;
use proptest::prelude::*;

/// Straightforward reference implementation of the counting rule.
fn reference(text: &str) -> usize {
    text.split(char::is_whitespace)
        .map(|word| word.chars().count().div_ceil(4))
        .sum()
}

#[test]
fn text_examples() {
    assert_eq!(count_text("hello world"), 4);
    assert_eq!(count_text("abcdefghij"), 3);
    assert_eq!(count_text(""), 0);
    assert_eq!(count_text("   \t\n "), 0);
    assert_eq!(count_text("a"), 1);
    assert_eq!(count_text("abcd"), 1);
    assert_eq!(count_text("abcde"), 2);
    assert_eq!(count_text("  a  b  "), 2);
    assert_eq!(count_text("one\ntwo\r\nthree"), 1 + 1 + 2);
}

#[test]
fn characters_not_bytes() {
    // 4 chars of 2-4 bytes each: still 1 token.
    assert_eq!(count_text("éé€😀"), 1);
    assert_eq!(count_text("日本語のテキスト"), 2);
}

#[test]
fn unicode_whitespace_separates_words() {
    for space in [
        '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}',
        '\u{3000}', '\u{B}', '\u{C}',
    ] {
        let text = format!("abc{space}def");
        assert_eq!(count_text(&text), 2, "{space:?}");
    }
    // Characters sharing a first byte with whitespace, but not whitespace.
    for c in ['\u{A9}', '\u{2010}', '\u{200B}', '\u{1681}', '\u{3001}', '\u{2060}'] {
        let text = format!("abc{c}def");
        assert_eq!(count_text(&text), 2, "{c:?}");
        assert_eq!(count_text(&text), reference(&text));
    }
}

/// Multi-byte whitespace (and characters sharing its first bytes) at many positions, as plain text and inside
/// a request string.
#[test]
fn unicode_whitespace_in_text_and_requests() {
    for c in [
        '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2028}', '\u{205F}', '\u{3000}', '\u{A9}', '\u{2010}',
        '\u{3001}', 'の',
    ] {
        for before in 56..68 {
            let text = format!("{}{c}{}", "a".repeat(before), "b".repeat(9));
            assert_eq!(count_text(&text), reference(&text), "{c:?} after {before}");
            let body = format!(r#"{{"system":"{text}","messages":[{{"role":"user","content":"x\"{text}"}}]}}"#);
            let decoded = format!("x\"{text}");
            assert_eq!(
                count(&body),
                reference(&text) + reference(&decoded),
                "{c:?} after {before}"
            );
        }
    }
}

#[test]
fn long_ascii_words_across_blocks() {
    let text = format!("{} {} {}", "a".repeat(17), "b".repeat(8), "c".repeat(3));
    assert_eq!(count_text(&text), 5 + 2 + 1);
    assert_eq!(count_text(&"x ".repeat(100)), 100);
    assert_eq!(count_text(&format!("{}é{}", "a".repeat(7), "b".repeat(8))), 4);
}

#[test]
fn json_counting() {
    assert_eq!(count_json(""), 0);
    assert_eq!(count_json("{}"), 1);
    // Compact form `{"a":1}` is one 7-char word.
    assert_eq!(count_json("{ \"a\" : 1 }"), 2);
    assert_eq!(count_json("{\n  \"a\": 1\n}"), 2);
    // Whitespace inside strings separates words: `{"a":"x` + `y"}`.
    assert_eq!(count_json(r#"{"a":"x y"}"#), 2 + 1);
    // Escapes count as written: `"a\"b\nc"` is 10 chars.
    assert_eq!(count_json(r#""a\"b\nc""#), 3);
    // An escaped quote does not end the string, so the space after it still separates.
    assert_eq!(count_json(r#"["\" x"]"#), 1 + 1);
    assert_eq!(count_json(r#"{"k":"é€"}"#), 3);
}

#[test]
fn json_matches_compact_serialisation() {
    let raw = r#"{ "type" : "object",
        "properties": { "file_path": {"type": "string", "description": "The absolute path to the file"},
                        "limit": {"type": ["integer", "null"], "minimum": 1 } },
        "required": ["file_path"], "additionalProperties": false }"#;
    let value: serde_json::Value = serde_json::from_str(raw).unwrap();
    let compact = serde_json::to_string(&value).unwrap();
    assert_eq!(count_json(raw), count_text(&compact));
    assert_eq!(count_json(&compact), count_text(&compact));
}

#[test]
fn json_escapes_count_like_their_serialisation() {
    // `\u00e9` is one character once re-serialised, `\u0020` a space, `\/` a slash.
    assert_eq!(count_json(r#""\u00e9\u00e9\u00e9\u00e9""#), count_text("\"éééé\""));
    assert_eq!(count_json(r#""abc\u0020def""#), 2);
    assert_eq!(count_json(r#""a\/b""#), count_text("\"a/b\""));
    // Surrogate pairs are one character; a lone surrogate counts as one (U+FFFD).
    assert_eq!(count_json(r#""\ud83d\ude00""#), 1);
    assert_eq!(count_json(r#""\ud83dxy""#), count_text("\"\u{FFFD}xy\""));
    // Control characters stay escaped: `\u0001` is six characters, `\u000a` is `\n` (two).
    assert_eq!(count_json(r#""\u0001""#), 2);
    assert_eq!(count_json(r#""\u000a\u000a""#), count_text(r#""\n\n""#));
    assert_eq!(count_json(r#""\u0022""#), count_text(r#""\"""#));
    // Malformed escapes never panic.
    for text in [r#""\u12""#, r#""\uzzzz""#, "\"\\", r#""\ud800\u""#] {
        let _ = count_json(text);
    }
}

#[test]
fn json_never_panics_on_garbage() {
    for text in ["\"", "\\", "\"\\", "{\"a", "\u{A0}", "\"\u{3000}\""] {
        let _ = count_json(text);
    }
    assert_eq!(count_json("\"a\u{3000}b\""), 2);
}

fn count(body: &str) -> usize {
    count_request(body.as_bytes()).unwrap()
}

#[test]
fn system_string_and_blocks() {
    assert_eq!(count(r#"{"system":"You are helpful."}"#), 1 + 1 + 2);
    assert_eq!(
        count(
            r#"{"system":[{"type":"text","text":"You are"},{"type":"text","text":"helpful.","cache_control":{"type":"ephemeral"}}]}"#
        ),
        1 + 1 + 2
    );
    assert_eq!(count(r#"{"system":null,"messages":null,"tools":null}"#), 0);
    assert_eq!(count("{}"), 0);
}

#[test]
fn message_content_forms() {
    let body = r#"{"model":"m","max_tokens":5,"messages":[
        {"role":"user","content":"hello world"},
        {"role":"assistant","content":[{"type":"text","text":"hi there"}]},
        {"role":"system","content":[]},
        {"role":"system","content":"abcdefghij","output_config":{"effort":"medium"}},
        {"role":"user"}
    ]}"#;
    // The empty system list and the message without content add nothing.
    assert_eq!(count(body), 4 + 3 + 3);
}

#[test]
fn escaped_strings_are_counted_unescaped() {
    // `a\nb` is two words once decoded.
    assert_eq!(count(r#"{"messages":[{"role":"user","content":"abcde\nfghij"}]}"#), 4);
    assert_eq!(
        count(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"abcde\u0020fghij"}]}]}"#),
        4
    );
}

#[test]
fn thinking_and_redacted_thinking() {
    let data = "A".repeat(41);
    let body = format!(
        r#"{{"messages":[{{"role":"assistant","content":[
            {{"type":"thinking","thinking":"let me think","signature":"sig"}},
            {{"type":"redacted_thinking","data":"{data}"}}]}}]}}"#
    );
    assert_eq!(count(&body), 1 + 1 + 2 + 11);
}

#[test]
fn tool_use_and_tool_result() {
    let body = r#"{"messages":[
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"Read","input":{ "file_path" : "/a/b.ts" }}]},
        {"role":"user","content":[
            {"tool_use_id":"toolu_1","type":"tool_result","content":"line one","cache_control":{"type":"ephemeral"}},
            {"type":"tool_result","tool_use_id":"toolu_2","is_error":true,"content":[
                {"type":"text","text":"screenshot:"},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]},
            {"type":"tool_result","tool_use_id":"toolu_3"}
        ]}
    ]}"#;
    // `{"file_path":"/a/b.ts"}` is 23 chars → 6; "Read" → 1.
    assert_eq!(count(body), 1 + 6 + 2 + 3 + IMAGE_TOKENS);
}

#[test]
fn images_and_documents() {
    let body = r#"{"messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"url","url":"https://example.com/a.png"}},
        {"type":"document","source":{"type":"text","media_type":"text/plain","data":"plain text doc"},"title":"Notes"},
        {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"}},
        {"type":"document","source":{"type":"content","content":[{"type":"text","text":"inner"}]},"context":"ctx"},
        {"type":"document"}
    ]}]}"#;
    assert_eq!(
        count(body),
        IMAGE_TOKENS + (2 + 1 + 1 + 2) + DOCUMENT_TOKENS + (2 + 1) + DOCUMENT_TOKENS
    );
}

#[test]
fn unknown_blocks_count_as_compact_json() {
    let block = r#"{ "type": "search_result", "title": "T", "source": "https://x", "content": [] }"#;
    let body = format!(r#"{{"messages":[{{"role":"user","content":[{block}]}}]}}"#);
    let compact = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(block).unwrap()).unwrap();
    assert_eq!(count(&body), count_text(&compact));
    // No type at all, a bare string, a number, and a known type with a wrongly typed field.
    let body =
        r#"{"messages":[{"role":"user","content":[{"text":"a b"}, "loose string", 12345, {"type":"text","text":5}]}]}"#;
    assert_eq!(
        count(body),
        count_text(r#"{"text":"a b"}"#) + 4 + 2 + count_text(r#"{"type":"text","text":5}"#)
    );
}

#[test]
fn odd_content_values_count_as_nothing() {
    let body = r#"{"system":5,"messages":[{"role":"user","content":{"type":"text","text":"x"}},{"role":"user","content":true},{"role":"user","content":1.5}]}"#;
    assert_eq!(count(body), 0);
}

#[test]
fn tools_are_counted() {
    let body = r#"{"tools":[
        {"name":"Read","description":"Reads a file from disk","input_schema":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}},
        {"name":"DeferredToolPlaceholder","defer_loading":true,"description":"x","input_schema":{ }},
        {"type":"web_search_20250305","name":"web_search"}
    ]}"#;
    let schema = r#"{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}"#;
    let expected = 1 + count_text("Reads a file from disk") + count_text(schema) + 6 + 1 + 1 + 3;
    assert_eq!(count(body), expected);
}

#[test]
fn deep_tool_result_nesting_is_bounded() {
    let depth = 5000;
    let mut body = String::from(r#"{"messages":[{"role":"user","content":"#);
    for _ in 0..depth {
        body.push_str(r#"[{"type":"tool_result","content":"#);
    }
    body.push_str("\"x\"");
    for _ in 0..depth {
        body.push_str("}]");
    }
    body.push_str("}]}");
    // serde_json's own recursion limit rejects this before our walk even starts, or our depth cap
    // bounds the walk; either way no stack overflow.
    let _ = count_request(body.as_bytes());
    let mut body = String::from(r#"{"messages":[{"role":"user","content":"#);
    for _ in 0..60 {
        body.push_str(r#"[{"type":"tool_result","content":"#);
    }
    body.push_str("\"x\"");
    for _ in 0..60 {
        body.push_str("}]");
    }
    body.push_str("}]}");
    assert!(count_request(body.as_bytes()).unwrap() >= 1);
}

#[test]
fn errors() {
    for body in [
        &b""[..],
        b"nope",
        b"[]",
        b"[null,null,null]",
        b" 5",
        b"\"s\"",
        b"{\"messages\":",
        b"{\"messages\":{}}",
        b"{\"messages\":[1]}",
        b"{\"tools\":[{\"name\":1}]}",
        // A message or tool given as an array, which serde alone would read field by field.
        b"{\"messages\":[[\"hi\"]]}",
        b"{\"messages\":[[\"user\",\"some words here\"]]}",
        b"{\"tools\":[[\"Read\",\"Reads a file\",{}]]}",
        b"\xff",
    ] {
        match count_request(body) {
            Err(CoreError::InvalidJson(msg)) => assert!(!msg.is_empty()),
            other => panic!("{:?} → {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

/// Shapes recorded from Claude Code 2.1.330 (tests/data), trimmed: top-level system blocks with
/// `cache_control`, the mid-conversation `role:"system"` message with `output_config` (as a block list,
/// a replayed plain string, and `--bare`'s empty list), `<system-reminder>` text blocks, a tool round trip
/// with `tool_use_id` before `type`, and tools with `$schema`/`additionalProperties`/`defer_loading`.
const CLAUDE_CODE_FOLLOWUP: &str = r#"{"model":"claude-opus-5-5","messages":[
    {"role":"user","content":[{"type":"text","text":"<system-reminder>As you answer the user's questions, you can use the following context</system-reminder>"},{"type":"text","text":"create the file"}]},
    {"role":"system","content":"Here is useful information about the environment you are running in: cwd /home/user/project","output_config":{"effort":"medium"}},
    {"role":"system","content":[{"type":"text","text":"Today's date is 2026-11-24.","cache_control":{"type":"ephemeral"}}],"output_config":{"effort":"medium"}},
    {"role":"system","content":[],"output_config":{"effort":"medium"}},
    {"role":"assistant","content":[{"type":"text","text":"I will use the Write tool."},{"type":"tool_use","id":"toolu_01AePXTQLpObZnsP4sFqz1o6","name":"Write","input":{"file_path":"/home/user/project/v.txt","content":"v2.1.330"}}]},
    {"role":"user","content":[{"tool_use_id":"toolu_01AePXTQLpObZnsP4sFqz1o6","type":"tool_result","content":"File created successfully at: /home/user/project/v.txt","cache_control":{"type":"ephemeral"}}]}],
  "system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.330.413; cc_entrypoint=sdk-cli;"},{"type":"text","text":"You are a Claude agent, built on Anthropic's Claude Agent SDK.","cache_control":{"type":"ephemeral"}}],
  "tools":[{"name":"Write","description":"Writes a file to the local filesystem.","input_schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"file_path":{"description":"The absolute path to the file to write","type":"string"},"content":{"description":"The content to write to the file","type":"string"}},"required":["file_path","content"],"additionalProperties":false}},
           {"name":"DeferredToolPlaceholder","description":"placeholder","input_schema":{"type":"object","properties":{}},"defer_loading":true}],
  "metadata":{"user_id":"{\"device_id\":\"abc\",\"account_uuid\":\"\",\"session_id\":\"u\"}"},
  "max_tokens":32000,"thinking":{"type":"adaptive","display":"omitted"},"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},"output_config":{"effort":"medium"},"stream":true}"#;

#[test]
fn claude_code_followup_sample() {
    let messages = count_text(
        "<system-reminder>As you answer the user's questions, you can use the following context</system-reminder>",
    ) + count_text("create the file")
        + count_text("Here is useful information about the environment you are running in: cwd /home/user/project")
        + count_text("Today's date is 2026-11-24.")
        + count_text("I will use the Write tool.")
        + count_text("Write")
        + count_text(r#"{"file_path":"/home/user/project/v.txt","content":"v2.1.330"}"#)
        + count_text("File created successfully at: /home/user/project/v.txt");
    let system = count_text("x-anthropic-billing-header: cc_version=2.1.330.413; cc_entrypoint=sdk-cli;")
        + count_text("You are a Claude agent, built on Anthropic's Claude Agent SDK.");
    let tools = count_text("Write")
        + count_text("Writes a file to the local filesystem.")
        + count_text(
            r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"file_path":{"description":"The absolute path to the file to write","type":"string"},"content":{"description":"The content to write to the file","type":"string"}},"required":["file_path","content"],"additionalProperties":false}"#,
        )
        + count_text("DeferredToolPlaceholder")
        + count_text("placeholder")
        + count_text(r#"{"type":"object","properties":{}}"#);
    // Pinned totals (cross-checked with an independent Python implementation) guard against silent changes.
    assert_eq!(messages, 28 + 4 + 24 + 7 + 8 + 2 + 16 + 13);
    assert_eq!(system, 19 + 18);
    assert_eq!(tools, 2 + 11 + 80 + 6 + 3 + 9);
    assert_eq!(count(CLAUDE_CODE_FOLLOWUP), messages + system + tools);
}

/// The `count_tokens` shape: `{"model","messages","tools"}` with no system, content as a plain string.
#[test]
fn claude_code_count_tokens_sample() {
    let body = r#"{"model":"claude-opus-5-5","messages":[{"role":"user","content":"foo"}],"tools":[{"name":"Bash","description":"Executes a given bash command","input_schema":{"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}}]}"#;
    let expected = 1
        + 1
        + count_text("Executes a given bash command")
        + count_text(r#"{"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}"#);
    assert_eq!(count(body), expected);
}

/// The 2.0.77 topic-detection shape: system blocks, an assistant prefill `{`.
#[test]
fn claude_code_prefill_sample() {
    let body = r#"{"model":"claude-haiku","messages":[{"role":"user","content":[{"type":"text","text":"hello there"}]},{"role":"assistant","content":[{"type":"text","text":"{"}]}],"system":[{"type":"text","text":"Analyze if this message indicates a new conversation topic."}],"tools":[],"max_tokens":512,"stream":true}"#;
    assert_eq!(
        count(body),
        4 + 1 + count_text("Analyze if this message indicates a new conversation topic.")
    );
}

#[test]
fn large_request_is_fast_enough_to_not_need_threads() {
    // Not a benchmark, just a smoke check that a ~200 KB body parses and counts.
    let mut body = String::from(r#"{"system":[{"type":"text","text":"sys"}],"messages":["#);
    for i in 0..400 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"role":"user","content":[{"type":"text","text":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"},{"type":"tool_result","tool_use_id":"t","content":"ok done \"quoted\" \n new line"}]}"#);
    }
    body.push_str("]}");
    assert!(body.len() > 150_000);
    let per_message = count_text(
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore",
    ) + count_text("ok done \"quoted\" \n new line");
    assert_eq!(count(&body), 1 + 400 * per_message);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[ a-z\u{85}\u{a0}\u{3000}\u{1}\t\n\"\\\\/é😀]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[a-z é/]{0,6}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Pretty-printed JSON with every non-ASCII character, space and slash inside strings written as an escape
/// (as Python's `json.dumps` or other clients might), to check that `count_json` ignores the escaping.
fn ascii_json(value: &serde_json::Value) -> String {
    use std::fmt::Write;
    let pretty = serde_json::to_string_pretty(value).unwrap();
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in pretty.chars() {
        if in_string && !escaped && c != '"' && c != '\\' && (!c.is_ascii() || c == ' ' || c == '/') {
            if c == '/' {
                out.push_str("\\/");
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
            continue;
        }
        out.push(c);
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    out
}

/// Strings mixing words, JSON-escaped characters, Unicode whitespace and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,20}",
        "[ a-zA-Z0-9\u{85}\u{a0}\u{3000}\u{2028}\u{1}\u{b}\t\n\r\"\\\\/é日😀]{0,40}",
        any::<String>(),
        "[a-z]{60,140}",
    ]
}

/// A JSON object with these members, in this order (`preserve_order` keeps it).
fn object(members: Vec<(&str, serde_json::Value)>) -> serde_json::Value {
    serde_json::Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A field value that is usually right for `field` and sometimes of another type.
fn field(good: impl Strategy<Value = serde_json::Value> + 'static) -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        8 => good,
        1 => Just(Value::Null),
        1 => prop_oneof![Just(Value::from(7)), Just(Value::Bool(true)), Just(serde_json::json!({"x": 1})), Just(serde_json::json!([1]))],
    ]
    .boxed()
}

/// Content blocks of every kind, with shuffled, sometimes missing, duplicated or mistyped fields.
fn block_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf_kind = prop_oneof![
        Just("text"),
        Just("thinking"),
        Just("redacted_thinking"),
        Just("tool_use"),
        Just("tool_result"),
        Just("image"),
        Just("document"),
        Just("search_result"),
        Just("content"),
    ];
    let leaf = (leaf_kind, text(), text(), json_value(), any::<u64>(), 0..3usize).prop_map(
        |(kind, a, b, input, seed, source_kind)| {
            let source = match source_kind {
                0 => serde_json::json!({"type": "text", "media_type": "text/plain", "data": a}),
                1 => serde_json::json!({"data": b, "type": "base64"}),
                _ => serde_json::json!({"type": "content", "content": [{"type": "text", "text": b}]}),
            };
            let mut members = vec![
                ("type", Value::from(kind)),
                ("text", Value::from(a.clone())),
                ("thinking", Value::from(b.clone())),
                ("data", Value::from(a.clone())),
                ("name", Value::from(b.clone())),
                ("input", input),
                ("title", Value::from(a)),
                ("source", source),
                ("cache_control", serde_json::json!({"type": "ephemeral"})),
            ];
            // Keep a seeded subset, in a seeded order.
            let mut bits = seed;
            members.retain(|_| {
                bits = bits.rotate_left(7) ^ 0x9E37_79B9_7F4A_7C15;
                bits % 3 != 0
            });
            let len = members.len().max(1);
            members.rotate_left(usize::try_from(seed % u64::try_from(len).unwrap()).unwrap());
            if seed % 5 == 0 {
                members.reverse();
            }
            object(members)
        },
    );
    let odd = prop_oneof![
        field(text().prop_map(Value::from))
            .prop_map(|text| object(vec![("type", Value::from("text")), ("text", text)])),
        field(text().prop_map(Value::from))
            .prop_map(|title| object(vec![("type", Value::from("document")), ("title", title)])),
        field(Just(Value::from("text"))).prop_map(|kind| object(vec![("text", Value::from("a b")), ("type", kind)])),
        text().prop_map(Value::from),
        Just(Value::from(12)),
        Just(Value::Null),
    ];
    let leaf = prop_oneof![6 => leaf, 1 => odd];
    leaf.prop_recursive(3, 16, 4, |inner| {
        (proptest::collection::vec(inner, 0..4), any::<bool>(), text()).prop_map(|(blocks, as_string, text)| {
            let content = if as_string {
                Value::from(text)
            } else {
                Value::Array(blocks)
            };
            object(vec![
                ("tool_use_id", Value::from("t")),
                ("type", Value::from("tool_result")),
                ("content", content),
            ])
        })
    })
}

fn content_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        4 => text().prop_map(Value::from),
        4 => proptest::collection::vec(block_value(), 0..5).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => Just(Value::Bool(false)),
    ]
}

/// Whole request bodies as Claude Code sends them and as odder clients might, serialised compactly, pretty,
/// or with every non-ASCII character, space and slash escaped.
fn request_body() -> impl Strategy<Value = Vec<u8>> {
    use serde_json::Value;
    let message = (content_value(), any::<bool>()).prop_map(|(content, system)| {
        object(vec![
            ("role", Value::from(if system { "system" } else { "user" })),
            ("content", content),
        ])
    });
    let tool = (text(), field(text().prop_map(Value::from)), json_value(), any::<bool>()).prop_map(
        |(name, description, schema, schema_first)| {
            let mut members = vec![
                ("name", Value::from(name)),
                ("description", description),
                ("input_schema", schema),
            ];
            if schema_first {
                members.reverse();
            }
            object(members)
        },
    );
    (
        proptest::option::of(content_value()),
        proptest::collection::vec(message, 0..4),
        proptest::collection::vec(tool, 0..3),
        0..3usize,
    )
        .prop_map(|(system, messages, tools, form)| {
            let mut members = vec![("model", Value::from("claude")), ("max_tokens", Value::from(100))];
            if let Some(system) = system {
                members.push(("system", system));
            }
            members.push(("messages", Value::Array(messages)));
            members.push(("tools", Value::Array(tools)));
            let value = object(members);
            match form {
                0 => serde_json::to_vec(&value).unwrap(),
                1 => serde_json::to_vec_pretty(&value).unwrap(),
                _ => ascii_json(&value).into_bytes(),
            }
        })
}

proptest! {
    // Failure seeds live beside this file (`tests.proptest-regressions`), not in a top-level folder.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

            #[test]
    fn requests_never_panic(body in request_body()) {
        let _ = count_request(&body);
    }

    #[test]
    fn mutated_requests_never_panic(body in request_body(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4)) {
        let mut body = body;
        for (at, byte, op) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 if at < body.len() => body[at] = byte,
                1 if at < body.len() => { body.remove(at); }
                _ => body.insert(at, byte),
            }
        }
        let _ = count_request(&body);
    }

    #[test]
    fn structural_noise_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just("\"system\""), Just("\"messages\""),
        Just("\"tools\""), Just("\"content\""), Just("\"type\""), Just("\"text\""), Just("\"tool_result\""),
        Just("\"source\""), Just("\"name\""), Just("\"input\""), Just("\"input_schema\""), Just("null"), Just("1e999"),
        Just("\"a b\""), Just("\"\\ud800\""), Just(" "), Just("true"), Just("-0.5"), Just("\"data\""), Just("\"document\""),
    ], 0..40)) {
        let body = format!("{{\"messages\":[{{\"content\":[{}", parts.concat());
        let _ = count_request(body.as_bytes());
        let _ = count_request(parts.concat().as_bytes());
    }
    #[test]
    fn text_matches_reference(text in any::<String>()) {
        prop_assert_eq!(count_text(&text), reference(&text));
    }

    #[test]
    fn ascii_text_matches_reference(text in "[a-zA-Z0-9{}\"\\\\ \t\n\r\u{b}\u{c}\u{1c}\u{1f}\u{7f}]{0,100}") {
        prop_assert_eq!(count_text(&text), reference(&text));
    }

    #[test]
    fn mixed_text_matches_reference(parts in proptest::collection::vec(prop_oneof!["[a-z ]{0,12}", "[é€😀\u{a0}\u{3000}\u{85} ]{0,3}"], 0..12)) {
        let text = parts.concat();
        prop_assert_eq!(count_text(&text), reference(&text));
    }

    #[test]
    fn spacey_text_matches_reference(text in "[a-zé€😀 \t\n\u{a0}\u{3000}\u{2028}]{0,80}") {
        prop_assert_eq!(count_text(&text), reference(&text));
    }

    #[test]
    fn json_equals_text_of_compact_form(s in any::<String>(), key in "[a-z ]{0,8}", n in any::<i64>()) {
        let value = serde_json::json!({ key: [s, n, null, true] });
        let compact = serde_json::to_string(&value).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        prop_assert_eq!(count_json(&compact), count_text(&compact));
        prop_assert_eq!(count_json(&pretty), count_text(&compact));
    }

    #[test]
    fn json_equals_text_of_serialisation_whatever_the_escaping(value in json_value()) {
        let compact = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(count_json(&ascii_json(&value)), count_text(&compact));
    }

    #[test]
    fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = count_request(&bytes);
    }

    #[test]
    fn arbitrary_json_bodies_never_panic(
        text in "[{}\\[\\]\",:a-z0-9 ]{0,10}",
        kind in prop_oneof![Just("text"), Just("tool_use"), Just("tool_result"), Just("image"), Just("document"), Just("x")],
    ) {
        let body = format!(r#"{{"messages":[{{"role":"user","content":[{{"type":"{kind}","text":"{text}","content":"{text}"}}]}}]}}"#);
        let _ = count_request(body.as_bytes());
    }
}
