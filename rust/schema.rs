//! Schema-aware repair of tool-call arguments, after the healing of [`crate::heal`].
//!
//! Small local models often get the *types* of arguments wrong while getting their meaning right: `"5"` for an
//! integer, `"true"` for a boolean, a JSON-encoded array inside a string, one path where a list of paths is
//! expected, or `null` for a parameter they meant to leave out. Claude Code validates tool input against the tool's
//! schema and rejects such a call, so the model has to try again (and small models often repeat the mistake).
//!
//! [`ToolSet`] reads the request's Anthropic tool definitions once; [`ToolSet::repair`] then fixes the top-level
//! arguments of one call, by what each property's `input_schema` says:
//!
//! | argument | property type | becomes | counted as |
//! |---|---|---|---|
//! | `"5"` (integer text) | `integer` | `5` | [`Repair::Coerced`] |
//! | `"1.5"` (number text) | `number` | `1.5` | [`Repair::Coerced`] |
//! | `"true"` / `"FALSE"` | `boolean` | `true` / `false` | [`Repair::Coerced`] |
//! | `"[\"a\"]"` / `"{\"x\":1}"` | `array` / `object` | the decoded array / object | [`Repair::Coerced`] |
//! | `"a"` (or any non-array) | `array` | `["a"]` | [`Repair::WrappedInArray`] |
//! | `null` | anything without `null`, not `required` | the key is removed | [`Repair::DroppedNull`] |
//!
//! Only clear mismatches are touched: a value that already fits one of the property's types is kept, as is any
//! value of a property whose schema does not say which simple types it takes (`{}`, a `$ref`, an `anyOf` branch
//! without a `type`). Required values are never invented, unknown keys are never renamed or dropped, and the key
//! order is kept (Ollama's KV cache reuses the replayed history only if it is byte-identical).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::errors::CoreError;

/// The simple JSON Schema types a property accepts, as a bit set; empty means "not known", so nothing is repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Types(u8);

impl Types {
    /// `"string"`.
    pub const STRING: Types = Types(1);
    /// `"integer"`.
    pub const INTEGER: Types = Types(1 << 1);
    /// `"number"`.
    pub const NUMBER: Types = Types(1 << 2);
    /// `"boolean"`.
    pub const BOOLEAN: Types = Types(1 << 3);
    /// `"array"`.
    pub const ARRAY: Types = Types(1 << 4);
    /// `"object"`.
    pub const OBJECT: Types = Types(1 << 5);
    /// `"null"`.
    pub const NULL: Types = Types(1 << 6);

    /// The type named `name`, if it is one of the seven simple types.
    fn named(name: &str) -> Option<Types> {
        Some(match name {
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "boolean" => Self::BOOLEAN,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            "null" => Self::NULL,
            _ => return None,
        })
    }

    /// Whether every type of `other` is in `self`.
    pub fn has(self, other: Types) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether no type is known.
    pub fn is_unknown(self) -> bool {
        self.0 == 0
    }

    fn with(self, other: Types) -> Types {
        Types(self.0 | other.0)
    }

    /// Whether `value` is valid for these types (JSON Schema's rules: an integer is also a number, and `5.0` is an
    /// integer).
    pub fn accepts(self, value: &Value) -> bool {
        match value {
            Value::Null => self.has(Self::NULL),
            Value::Bool(_) => self.has(Self::BOOLEAN),
            Value::Number(number) => self.has(Self::NUMBER) || (self.has(Self::INTEGER) && is_integer(number)),
            Value::String(_) => self.has(Self::STRING),
            Value::Array(_) => self.has(Self::ARRAY),
            Value::Object(_) => self.has(Self::OBJECT),
        }
    }

    /// The types of one property schema: its `type` (a name or an array of names), or else the union of the
    /// `anyOf` / `oneOf` branches' types. Anything that leaves a possibility open (no `type` anywhere, a name
    /// that is not a simple type, a branch without `type`) gives the empty, unknown set.
    fn of_schema(schema: &Value) -> Types {
        Self::of_schema_at(schema, 0)
    }

    fn of_schema_at(schema: &Value, depth: usize) -> Types {
        // Branches nest rarely and shallowly; the bound only keeps hostile schemas from recursing deeply.
        if depth > 4 {
            return Types::default();
        }
        let Some(schema) = schema.as_object() else {
            return Types::default();
        };
        if let Some(kind) = schema.get("type") {
            return Self::of_type_value(kind);
        }
        let mut types = Types::default();
        let mut branches = 0;
        for key in ["anyOf", "oneOf"] {
            let Some(list) = schema.get(key).and_then(Value::as_array) else {
                continue;
            };
            for branch in list {
                let branch_types = Self::of_schema_at(branch, depth + 1);
                if branch_types.is_unknown() {
                    return Types::default();
                }
                types = types.with(branch_types);
                branches += 1;
            }
        }
        if branches == 0 { Types::default() } else { types }
    }

    fn of_type_value(kind: &Value) -> Types {
        match kind {
            Value::String(name) => Self::named(name).unwrap_or_default(),
            Value::Array(names) => {
                let mut types = Types::default();
                for name in names {
                    match name.as_str().and_then(Self::named) {
                        Some(one) => types = types.with(one),
                        None => return Types::default(),
                    }
                }
                types
            }
            _ => Types::default(),
        }
    }
}

fn is_integer(number: &serde_json::Number) -> bool {
    number.is_i64() || number.is_u64() || number.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// One kind of schema repair, counted per repaired field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repair {
    /// A string turned into the integer, number, boolean, array or object it spelled.
    Coerced,
    /// A single value put into a one-element array where the schema wants an array.
    WrappedInArray,
    /// A `null` removed for a property that is optional and does not take `null`.
    DroppedNull,
}

impl Repair {
    /// Every kind, in counter order (for counters indexed by [`Repair::index`]).
    pub const ALL: [Repair; 3] = [Self::Coerced, Self::WrappedInArray, Self::DroppedNull];

    /// Stable `snake_case` name, as exposed to Python: `coerced`, `wrapped_in_array`, `dropped_null`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coerced => "coerced",
            Self::WrappedInArray => "wrapped_in_array",
            Self::DroppedNull => "dropped_null",
        }
    }

    /// Position in [`Repair::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the schema says about one top-level property.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Property {
    types: Types,
    required: bool,
}

/// One offered tool: its top-level properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolSchema {
    properties: HashMap<String, Property>,
}

/// The tools a request offered the model, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolSet {
    tools: HashMap<String, ToolSchema>,
}

impl ToolSet {
    /// Read the JSON array of a request's Anthropic tool definitions (`[{"name", "description"?,
    /// "input_schema"?}, …]`).
    ///
    /// Only tools with an `input_schema` object count as offered: the others are Anthropic server tools, which
    /// the proxy does not pass to Ollama, so the model cannot have been told about them. Entries that are not
    /// objects with a string `name` are skipped; schema parts that are not understood just mean "no repair".
    ///
    /// # Errors
    ///
    /// [`CoreError::InvalidJson`] when `json` is not valid JSON or not an array.
    pub fn from_json(json: &[u8]) -> Result<Self, CoreError> {
        let value: Value = serde_json::from_slice(json)?;
        let Value::Array(entries) = value else {
            return Err(CoreError::InvalidJson("tools must be a JSON array".to_owned()));
        };
        let mut tools = HashMap::with_capacity(entries.len());
        for entry in &entries {
            let Some(name) = entry.get("name").and_then(Value::as_str) else {
                continue;
            };
            let Some(schema) = entry.get("input_schema").filter(|s| s.is_object()) else {
                continue;
            };
            tools.insert(name.to_owned(), ToolSchema::from_input_schema(schema));
        }
        Ok(Self { tools })
    }

    /// Whether no tool was offered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Whether `name` is an offered tool.
    pub fn contains(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    /// Repair the arguments of a call to `name` in place (see the module docs), calling `count` once per repaired
    /// field. Calls to tools that were not offered are left alone.
    pub fn repair(&self, name: &str, arguments: &mut Map<String, Value>, mut count: impl FnMut(Repair)) {
        if let Some(tool) = self.tools.get(name) {
            tool.repair(arguments, &mut count);
        }
    }
}

impl ToolSchema {
    fn from_input_schema(schema: &Value) -> Self {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|properties| {
                properties
                    .iter()
                    .map(|(key, property)| {
                        let types = Types::of_schema(property);
                        let required = required.contains(&key.as_str());
                        (key.clone(), Property { types, required })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { properties }
    }

    fn repair(&self, arguments: &mut Map<String, Value>, count: &mut impl FnMut(Repair)) {
        let mut drop_nulls = false;
        for (key, value) in arguments.iter_mut() {
            let Some(property) = self.properties.get(key) else {
                continue;
            };
            if property.types.is_unknown() || property.types.accepts(value) {
                continue;
            }
            match value {
                // Removed below, in one order-keeping pass (`Map::remove` would swap the last key into its place).
                Value::Null => drop_nulls |= !property.required,
                Value::String(text) => {
                    if let Some(coerced) = coerce_str(text, property.types) {
                        *value = coerced;
                        count(Repair::Coerced);
                    } else if property.types.has(Types::ARRAY) {
                        *value = Value::Array(vec![std::mem::take(value)]);
                        count(Repair::WrappedInArray);
                    }
                }
                _ if property.types.has(Types::ARRAY) => {
                    *value = Value::Array(vec![std::mem::take(value)]);
                    count(Repair::WrappedInArray);
                }
                _ => {}
            }
        }
        if drop_nulls {
            arguments.retain(|key, value| {
                let drop = value.is_null()
                    && self
                        .properties
                        .get(key)
                        .is_some_and(|p| !p.required && !p.types.is_unknown() && !p.types.has(Types::NULL));
                if drop {
                    count(Repair::DroppedNull);
                }
                !drop
            });
        }
    }
}

/// The value a string spells, when that value fits `types`: a number for `integer` / `number`, a boolean for
/// `boolean` (any case), a decoded array or object for `array` / `object`. Surrounding whitespace is ignored.
fn coerce_str(text: &str, types: Types) -> Option<Value> {
    let text = text.trim();
    if types.has(Types::INTEGER) || types.has(Types::NUMBER) {
        // JSON's number grammar, not Rust's: "inf", "NaN", ".5" or "+1" are not numbers a model meant.
        if let Ok(Value::Number(number)) = serde_json::from_str::<Value>(text)
            && (types.has(Types::NUMBER) || is_integer(&number))
        {
            return Some(Value::Number(number));
        }
    }
    if types.has(Types::BOOLEAN) {
        if text.eq_ignore_ascii_case("true") {
            return Some(Value::Bool(true));
        }
        if text.eq_ignore_ascii_case("false") {
            return Some(Value::Bool(false));
        }
    }
    if (types.has(Types::ARRAY) && text.starts_with('[')) || (types.has(Types::OBJECT) && text.starts_with('{')) {
        match serde_json::from_str::<Value>(text) {
            Ok(decoded @ Value::Array(_)) if types.has(Types::ARRAY) => return Some(decoded),
            Ok(decoded @ Value::Object(_)) if types.has(Types::OBJECT) => return Some(decoded),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
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
}
