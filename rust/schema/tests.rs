//! Tests of [`super`] (`rust/schema.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn tools() -> ToolSet {
    let tools = json!([
        {"name": "Read", "description": "Read a file", "input_schema": {"type": "object",
            "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}, "offset": {"type": "integer"}},
            "required": ["path"]}},
        {"name": "Bash", "input_schema": {"type": "object", "properties": {
            "command": {"type": "string"}, "timeout": {"type": "number"}, "background": {"type": "boolean"}},
            "required": ["command"]}},
        {"name": "Multi", "input_schema": {"type": "object", "properties": {
            "paths": {"type": "array", "items": {"type": "string"}}, "options": {"type": "object"},
            "either": {"type": ["integer", "null"]}, "any_of": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
            "loose": {"anyOf": [{"type": "integer"}, {"$ref": "#/x"}]}, "untyped": {"description": "anything"},
            "list_or_text": {"type": ["array", "string"]}, "odd": {"type": ["integer", "decimal"]},
            "nested": {"oneOf": [{"anyOf": [{"type": "number"}]}, {"type": "null"}]}},
            "required": ["paths", "required_null"]}},
        {"name": "web_search", "type": "web_search_20250305"},
        {"description": "no name"},
        "not an object",
    ]);
    ToolSet::from_json(&serde_json::to_vec(&tools).unwrap()).unwrap()
}

/// Repair `arguments` for `tool`; return the result and the repairs in order.
fn repaired(tool: &str, arguments: Value) -> (Value, Vec<Repair>) {
    let Value::Object(mut map) = arguments else {
        panic!("not an object")
    };
    let mut repairs = Vec::new();
    tools().repair(tool, &mut map, |repair| repairs.push(repair));
    (Value::Object(map), repairs)
}

#[test]
fn reads_names_and_skips_server_tools() {
    let set = tools();
    assert!(set.contains("Read") && set.contains("Bash") && set.contains("Multi"));
    assert!(
        !set.contains("web_search"),
        "server tools (no input_schema) are not offered to the model"
    );
    assert!(!set.contains("read"));
    assert!(!set.is_empty());
    assert!(ToolSet::from_json(b"[]").unwrap().is_empty());
    assert!(ToolSet::from_json(b"{}").is_err());
    assert!(ToolSet::from_json(b"[").is_err());
}

#[test]
fn property_types() {
    let of = |schema: Value| Types::of_schema(&schema);
    assert_eq!(of(json!({"type": "string"})), Types::STRING);
    assert_eq!(
        of(json!({"type": ["integer", "null"]})),
        Types::INTEGER.with(Types::NULL)
    );
    assert_eq!(
        of(json!({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})),
        Types::INTEGER.with(Types::BOOLEAN)
    );
    assert_eq!(
        of(json!({"oneOf": [{"type": "array"}], "anyOf": [{"type": "null"}]})),
        Types::ARRAY.with(Types::NULL)
    );
    for unknown in [
        json!({}),
        json!({"type": "decimal"}),
        json!({"type": ["string", 5]}),
        json!({"type": 5}),
        json!({"anyOf": [{"type": "string"}, {}]}),
        json!({"anyOf": []}),
        json!({"$ref": "#/defs/x"}),
        json!("string"),
    ] {
        assert!(of(unknown.clone()).is_unknown(), "{unknown}");
    }
    let deep = (0..10).fold(json!({"type": "string"}), |inner, _| json!({"anyOf": [inner]}));
    assert!(of(deep).is_unknown(), "nesting is bounded");
}

#[test]
fn coerces_scalars() {
    assert_eq!(
        repaired("Read", json!({"path": "a", "limit": "5"})),
        (json!({"path": "a", "limit": 5}), vec![Repair::Coerced])
    );
    assert_eq!(repaired("Read", json!({"limit": " -12 "})).0, json!({"limit": -12}));
    assert_eq!(repaired("Read", json!({"limit": "1e3"})).0, json!({"limit": 1000.0}));
    assert_eq!(
        repaired("Bash", json!({"command": "ls", "background": "TRUE", "timeout": "1.5"})),
        (
            json!({"command": "ls", "background": true, "timeout": 1.5}),
            vec![Repair::Coerced, Repair::Coerced]
        )
    );
    assert_eq!(
        repaired("Bash", json!({"background": "False"})).0,
        json!({"background": false})
    );
    assert_eq!(repaired("Bash", json!({"timeout": "30"})).0, json!({"timeout": 30}));
    assert_eq!(repaired("Multi", json!({"any_of": "7"})).0, json!({"any_of": 7}));
    assert_eq!(repaired("Multi", json!({"any_of": "true"})).0, json!({"any_of": true}));
    assert_eq!(repaired("Multi", json!({"nested": "2.5"})).0, json!({"nested": 2.5}));
}

#[test]
fn leaves_what_is_not_clearly_a_mismatch() {
    for (tool, arguments) in [
        ("Read", json!({"path": "a", "limit": "5x"})),
        ("Read", json!({"limit": "1.5"})), // not an integer
        ("Read", json!({"limit": "05"})),
        ("Read", json!({"limit": "inf"})),
        ("Read", json!({"limit": "+1"})),
        ("Read", json!({"limit": ""})),
        ("Read", json!({"limit": 5.0})), // already an integer for JSON Schema
        ("Read", json!({"limit": true})),
        ("Read", json!({"path": 5})),    // number for a string: not listed, not guessed
        ("Read", json!({"path": null})), // required: never invented, never dropped
        ("Read", json!({"file": "a.txt", "LIMIT": "5"})), // unknown keys: never renamed
        ("Bash", json!({"background": "yes"})),
        ("Bash", json!({"timeout": "1.5s"})),
        ("Multi", json!({"options": "[1]"})), // an array is not an object
        ("Multi", json!({"options": "{bad"})),
        ("Multi", json!({"either": null})),      // null allowed
        ("Multi", json!({"loose": "5"})),        // a branch takes anything
        ("Multi", json!({"untyped": null})),     // no type known
        ("Multi", json!({"list_or_text": "a"})), // a string is fine
        ("Multi", json!({"odd": "5"})),          // unknown type name: no repair
        ("Unknown", json!({"limit": "5", "x": null})),
    ] {
        assert_eq!(
            repaired(tool, arguments.clone()),
            (arguments.clone(), vec![]),
            "{tool} {arguments}"
        );
    }
}

#[test]
fn arrays_and_objects() {
    assert_eq!(
        repaired("Multi", json!({"paths": "[\"a\", \"b\"]"})),
        (json!({"paths": ["a", "b"]}), vec![Repair::Coerced])
    );
    assert_eq!(
        repaired("Multi", json!({"paths": "a"})),
        (json!({"paths": ["a"]}), vec![Repair::WrappedInArray])
    );
    assert_eq!(
        repaired("Multi", json!({"paths": "[not json"})).0,
        json!({"paths": ["[not json"]})
    );
    assert_eq!(repaired("Multi", json!({"paths": 3})).0, json!({"paths": [3]}));
    assert_eq!(
        repaired("Multi", json!({"paths": {"a": 1}})).0,
        json!({"paths": [{"a": 1}]})
    );
    assert_eq!(
        repaired("Multi", json!({"paths": null})).0,
        json!({"paths": null}),
        "required null kept"
    );
    assert_eq!(
        repaired("Multi", json!({"paths": ["a"], "options": " {\"x\": 1} "})),
        (json!({"paths": ["a"], "options": {"x": 1}}), vec![Repair::Coerced])
    );
}

#[test]
fn drops_optional_nulls_in_order() {
    let (value, repairs) = repaired(
        "Read",
        json!({"z": null, "offset": null, "path": "a", "limit": null, "extra": 1}),
    );
    assert_eq!(repairs, [Repair::DroppedNull, Repair::DroppedNull]);
    assert_eq!(
        serde_json::to_string(&value).unwrap(),
        r#"{"z":null,"path":"a","extra":1}"#
    );
}

#[test]
fn keeps_key_order() {
    let (value, _) = repaired("Bash", json!({"timeout": "2", "command": "ls", "background": "true"}));
    assert_eq!(
        serde_json::to_string(&value).unwrap(),
        r#"{"timeout":2,"command":"ls","background":true}"#
    );
}

#[test]
fn repair_names_and_indices() {
    let names: Vec<&str> = Repair::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["coerced", "wrapped_in_array", "dropped_null"]);
    for (i, repair) in Repair::ALL.iter().enumerate() {
        assert_eq!(repair.index(), i);
    }
}

proptest! {
    #[test]
    fn never_panics_and_never_loses_keys(
        pairs in proptest::collection::vec((
            prop_oneof![Just("path".to_owned()), Just("limit".to_owned()), Just("offset".to_owned()), "[a-z]{1,3}"],
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::String),
                "[0-9 .eE+-]{0,6}".prop_map(Value::String),
            ],
        ), 0..6),
        tool in prop_oneof![Just("Read"), Just("Bash"), Just("Multi")],
    ) {
        let map: Map<String, Value> = pairs.into_iter().collect();
        let (value, repairs) = repaired(tool, Value::Object(map.clone()));
        let repaired_map = value.as_object().unwrap();
        let dropped = repairs.iter().filter(|r| **r == Repair::DroppedNull).count();
        prop_assert_eq!(repaired_map.len() + dropped, map.len());
        // Remaining keys keep their relative order.
        let kept: Vec<&String> = map.keys().filter(|k| repaired_map.contains_key(*k)).collect();
        prop_assert_eq!(repaired_map.keys().collect::<Vec<_>>(), kept);
    }
}
