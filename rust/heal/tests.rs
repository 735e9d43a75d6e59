//! Tests of [`super`] (`rust/heal.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn object_is_unchanged_and_keeps_key_order() {
    let value: Value = serde_json::from_str(r#"{"z":1,"a":{"y":2,"b":3}}"#).unwrap();
    let (map, kind) = heal_value(value);
    assert_eq!(kind, HealKind::Unchanged);
    assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"z":1,"a":{"y":2,"b":3}}"#);
}

#[test]
fn null_means_no_arguments() {
    assert_eq!(heal_value(Value::Null), (Map::new(), HealKind::Unchanged));
    assert_eq!(heal_str(""), (Map::new(), HealKind::ParsedString));
    assert_eq!(heal_str("  \n"), (Map::new(), HealKind::ParsedString));
    assert_eq!(heal_str("null"), (Map::new(), HealKind::ParsedString));
}

#[test]
fn other_values_become_raw_json_text() {
    assert_eq!(heal_value(json!(5)), (obj(json!({"raw": "5"})), HealKind::Raw));
    assert_eq!(heal_value(json!(true)), (obj(json!({"raw": "true"})), HealKind::Raw));
    assert_eq!(
        heal_value(json!([1, "a"])),
        (obj(json!({"raw": "[1,\"a\"]"})), HealKind::Raw)
    );
}

#[test]
fn string_with_object_text_is_parsed() {
    let (map, kind) = heal_value(json!("{\"file_path\": \"/a.ts\", \"limit\": 5}"));
    assert_eq!(kind, HealKind::ParsedString);
    assert_eq!(
        serde_json::to_string(&map).unwrap(),
        r#"{"file_path":"/a.ts","limit":5}"#
    );
    // Surrounding whitespace is fine for a JSON parser, so it is still step (b).
    assert_eq!(heal_str("  {\"a\":1}\n").1, HealKind::ParsedString);
}

#[test]
fn double_encoded_string_is_unescaped() {
    let (map, kind) = heal_str(r#""{\"a\":1,\"b\":\"x\\ny\"}""#);
    assert_eq!(kind, HealKind::Unescaped);
    assert_eq!(map, obj(json!({"a": 1, "b": "x\ny"})));
    // Triple encoding.
    let twice = serde_json::to_string(&serde_json::to_string(r#"{"a":[1,2]}"#).unwrap()).unwrap();
    assert_eq!(heal_str(&twice), (obj(json!({"a": [1, 2]})), HealKind::Unescaped));
}

#[test]
fn backslash_escaped_quotes_without_outer_quotes() {
    let (map, kind) = heal_str(r#"{\"command\": \"ls -la\", \"timeout\": 5}"#);
    assert_eq!(kind, HealKind::Unescaped);
    assert_eq!(map, obj(json!({"command": "ls -la", "timeout": 5})));
    assert_eq!(
        serde_json::to_string(&map).unwrap(),
        r#"{"command":"ls -la","timeout":5}"#
    );
}

#[test]
fn quoted_escaped_text_with_raw_newlines() {
    // Not a valid JSON string (raw newlines), but clearly an escaped object.
    let text = "\"{\n  \\\"a\\\": \\\"q\\\\\\\"uote\\\"\n}\"";
    let (map, kind) = heal_str(text);
    assert_eq!(kind, HealKind::Unescaped);
    assert_eq!(map, obj(json!({"a": "q\"uote"})));
}

#[test]
fn code_fences() {
    for text in [
        "```json\n{\"a\": 1}\n```",
        "```JSON\n{\"a\": 1}```",
        "```\n{\"a\": 1}\n```\n",
        "  ```json {\"a\": 1} ```  ",
        "```json\n{\\\"a\\\": 1}\n```",
        "```json\n{\"a\": 1}",
    ] {
        assert_eq!(heal_str(text), (obj(json!({"a": 1})), HealKind::Unescaped), "{text:?}");
    }
    assert_eq!(heal_str("```json\n```"), (Map::new(), HealKind::Unescaped));
}

#[test]
fn unicode_escapes() {
    let (map, kind) = heal_str(r#"{\"s\": \"\u00e9\ud83d\ude00\ud800x\"}"#);
    assert_eq!(kind, HealKind::Unescaped);
    // The inner text still holds `\u` escapes, which the JSON parser decodes (lone surrogate: not valid JSON
    // for serde_json, so this must have gone through the lenient unescaper).
    assert_eq!(map.get("s").and_then(Value::as_str), Some("é😀\u{FFFD}x"));
    assert_eq!(unescape(r"\u12"), r"\u12");
    assert_eq!(unescape(r"\u00zz"), r"\u00zz");
    assert_eq!(unescape(r"\q\"), r"\q\");
    assert_eq!(unescape(r"\ud83dabc"), "\u{FFFD}abc");
    assert_eq!(unescape(r"\ud83d\u0041"), "\u{FFFD}A");
}

#[test]
fn unrecoverable_keeps_the_original_text() {
    for text in [
        "not json",
        "{\"a\": 1",
        "[1, 2]",
        "42",
        "\"just a string\"",
        "{\\\"a\\\": }",
        "\\",
        "\"\\\"",
    ] {
        let (map, kind) = heal_str(text);
        assert_eq!(kind, HealKind::Raw, "{text:?}");
        assert_eq!(map, obj(json!({"raw": text})), "{text:?}");
    }
    let (map, kind) = heal_value(json!("oops"));
    assert_eq!((map, kind), (obj(json!({"raw": "oops"})), HealKind::Raw));
}

#[test]
fn unwrap_depth_is_bounded() {
    let mut text = r#"{"a":1}"#.to_owned();
    for _ in 0..MAX_UNWRAP {
        text = serde_json::to_string(&text).unwrap();
    }
    assert_eq!(heal_str(&text).1, HealKind::Unescaped);
    text = serde_json::to_string(&text).unwrap();
    assert_eq!(heal_str(&text).1, HealKind::Raw);
}

#[test]
fn deep_nesting_does_not_overflow() {
    let deep = "[".repeat(100_000);
    assert_eq!(heal_str(&deep).1, HealKind::Raw);
    let deep_obj = format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    assert_eq!(heal_str(&deep_obj).1, HealKind::Raw);
}

#[test]
fn bytes_input() {
    assert_eq!(heal_bytes(b"{\"a\":1}"), (obj(json!({"a": 1})), HealKind::ParsedString));
    assert_eq!(
        heal_bytes(b"{\"a\":\"\xff\"}"),
        (obj(json!({"raw": "{\"a\":\"\u{FFFD}\"}"})), HealKind::Raw)
    );
}

#[test]
fn kind_names_and_indices() {
    let names: Vec<&str> = HealKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ["unchanged", "parsed_string", "unescaped", "raw"]);
    for (i, kind) in HealKind::ALL.iter().enumerate() {
        assert_eq!(kind.index(), i);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((any::<String>(), json_value()), 0..6).prop_map(|pairs| pairs.into_iter().collect())
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let (map, kind) = heal_str(&text);
        if kind == HealKind::Raw {
            prop_assert_eq!(map.len(), 1);
            prop_assert_eq!(map.get("raw").and_then(Value::as_str), Some(text.as_str()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = heal_str(&text);
        let _ = heal_value(Value::String(text.into_owned()));
    }

    #[test]
    fn json_like_text_never_panics(text in "[{}\\[\\]\"\\\\:, a-f0-9u`\n]{0,60}") {
        let _ = heal_str(&text);
    }

    #[test]
    fn object_text_round_trips(map in json_object()) {
        let text = serde_json::to_string(&map).unwrap();
        let (healed, kind) = heal_str(&text);
        prop_assert_eq!(kind, HealKind::ParsedString);
        prop_assert_eq!(serde_json::to_string(&healed).unwrap(), text);
    }

    #[test]
    fn any_object_value_is_unchanged(map in json_object()) {
        let (healed, kind) = heal_value(Value::Object(map.clone()));
        prop_assert_eq!(kind, HealKind::Unchanged);
        prop_assert_eq!(healed, map);
    }

    #[test]
    fn double_encoded_object_round_trips(map in json_object(), quoted in any::<bool>()) {
        let text = serde_json::to_string(&serde_json::to_string(&map).unwrap()).unwrap();
        // Either the full JSON string literal, or its body without the outer quotes.
        let text = if quoted { text } else { text[1..text.len() - 1].to_owned() };
        let (healed, kind) = heal_str(&text);
        if map.is_empty() && !quoted {
            // `{}` needs no unescaping at all.
            prop_assert_eq!(kind, HealKind::ParsedString);
        } else {
            prop_assert_eq!(kind, HealKind::Unescaped);
        }
        prop_assert_eq!(healed, map);
    }
}
