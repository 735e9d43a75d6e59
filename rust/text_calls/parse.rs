//! Reading the calls out of a candidate the scanner ([`super::TextCallScanner`]) isolated: JSON call objects
//! (optionally fenced) and Qwen 3 Coder's `<function=…><parameter=…>` XML.

use serde_json::{Map, Value};

use super::{FENCE, FUNCTION_CLOSE, FUNCTION_OPEN, PARAMETER_CLOSE, PARAMETER_OPEN, Parsed, TextCall};
use crate::heal::{HealKind, heal_value};
use crate::schema::ToolSet;

/// The content of a `<tool_call>`: XML functions (a missing last `</function>` is forgiven: the tag's own
/// closing, or the end of the answer, ends it), or JSON calls, optionally in a code fence.
pub(super) fn parse_tool_call_body(body: &str, tools: &ToolSet) -> Parsed {
    let body = body.trim();
    if body.starts_with(FUNCTION_OPEN) {
        return parse_functions(body, tools, true);
    }
    parse_json_calls(strip_fence(body), tools, false)
}

/// ```` ```json\n…\n``` ```` → `…` (the closing fence may be missing).
pub(super) fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix(FENCE) else {
        return text;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix(FENCE).unwrap_or(rest).trim()
}

/// One or more JSON call objects separated by whitespace. `need_arguments`: an object without `arguments` or
/// `parameters` is not a call (outside a `<tool_call>` tag it is too likely to be ordinary data).
pub(super) fn parse_json_calls(text: &str, tools: &ToolSet, need_arguments: bool) -> Parsed {
    let mut calls = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value {
            Ok(value) => match call_from_value(value, tools, need_arguments) {
                Some(call) => calls.push(call),
                None => return Parsed::Invalid,
            },
            Err(err) if err.is_eof() => return Parsed::Incomplete,
            Err(_) => return Parsed::Invalid,
        }
    }
    if calls.is_empty() {
        Parsed::Invalid
    } else {
        Parsed::Calls(calls)
    }
}

/// `{"name": <offered tool>, "arguments"|"parameters": {…}|"<JSON text>"|null, "id"?: "…", …}` as a call.
pub(super) fn call_from_value(value: Value, tools: &ToolSet, need_arguments: bool) -> Option<TextCall> {
    let Value::Object(mut object) = value else {
        return None;
    };
    let name = object.get("name")?.as_str()?;
    if !tools.contains(name) {
        return None;
    }
    let name = name.to_owned();
    let arguments = match (object.shift_remove("arguments"), object.shift_remove("parameters")) {
        (Some(arguments), _) | (None, Some(arguments)) => arguments,
        (None, None) if need_arguments => return None,
        (None, None) => Value::Null,
    };
    if !matches!(arguments, Value::Object(_) | Value::String(_) | Value::Null) {
        return None;
    }
    let (arguments, heal) = heal_value(arguments);
    if heal == HealKind::Raw {
        return None;
    }
    let id = object.get("id").and_then(Value::as_str).map(str::to_owned);
    Some(TextCall {
        name,
        id,
        arguments,
        heal,
    })
}

/// One or more `<function=NAME>…</function>` separated by whitespace. `open_end`: the last `</function>` may be
/// missing (the end of the answer, or a closed `<tool_call>`).
pub(super) fn parse_functions(text: &str, tools: &ToolSet, open_end: bool) -> Parsed {
    let mut calls = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        match parse_function(rest, tools, open_end) {
            Ok((call, after)) => {
                calls.push(call);
                rest = after.trim_start();
            }
            Err(parsed) => return parsed,
        }
    }
    if calls.is_empty() {
        Parsed::Invalid
    } else {
        Parsed::Calls(calls)
    }
}

/// `<function=NAME>`, then `<parameter=KEY>VALUE</parameter>` repeated with only whitespace between, then
/// `</function>`. Values are strings here; the tool's schema gives them their types later.
pub(super) fn parse_function<'t>(
    text: &'t str,
    tools: &ToolSet,
    open_end: bool,
) -> Result<(TextCall, &'t str), Parsed> {
    let rest = text.strip_prefix(FUNCTION_OPEN).ok_or(Parsed::Invalid)?;
    let (name, mut rest) = rest.split_once('>').ok_or(Parsed::Invalid)?;
    let name = name.trim();
    if !tools.contains(name) {
        return Err(Parsed::Invalid);
    }
    let mut arguments = Map::new();
    loop {
        rest = rest.trim_start();
        let end = if let Some(after) = rest.strip_prefix(FUNCTION_CLOSE) {
            Some(after)
        } else if rest.is_empty() {
            // Either the `</function>` seen was inside a value, or it never came.
            if open_end {
                Some(rest)
            } else {
                return Err(Parsed::Incomplete);
            }
        } else {
            None
        };
        if let Some(after) = end {
            let call = TextCall {
                name: name.to_owned(),
                id: None,
                arguments,
                heal: HealKind::Unchanged,
            };
            return Ok((call, after));
        }
        let parameter = rest.strip_prefix(PARAMETER_OPEN).ok_or(Parsed::Invalid)?;
        let (key, value_and_rest) = parameter.split_once('>').ok_or(Parsed::Invalid)?;
        let key = key.trim();
        if key.is_empty() || key.contains(['\n', '<']) {
            return Err(Parsed::Invalid);
        }
        // A value without its closing tag may continue past the `</function>` seen so far.
        let (value, after) = value_and_rest.split_once(PARAMETER_CLOSE).ok_or(Parsed::Incomplete)?;
        arguments.insert(key.to_owned(), Value::String(trim_parameter(value).to_owned()));
        rest = after;
    }
}

/// A parameter value without the line break (and the spaces around it) that follows its opening tag and the one
/// before its closing tag; a value on one line is trimmed entirely. The indentation inside a multi-line value
/// (code, say) is kept.
pub(super) fn trim_parameter(value: &str) -> &str {
    let mut value = value;
    let start = value.trim_start_matches([' ', '\t']);
    if let Some(rest) = start.strip_prefix("\r\n").or_else(|| start.strip_prefix('\n')) {
        value = rest;
    }
    let end = value.trim_end_matches([' ', '\t']);
    if let Some(rest) = end.strip_suffix("\r\n").or_else(|| end.strip_suffix('\n')) {
        value = rest;
    }
    if value.contains('\n') { value } else { value.trim() }
}
