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
mod tests;
