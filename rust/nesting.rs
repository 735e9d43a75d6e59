//! How deeply a JSON text nests its arrays and objects.
//!
//! The proxy refuses request bodies nested deeper than a documented limit before anything walks them: the layers
//! after validation each have a limit of their own (`serde_json` stops at 128 levels, orjson serialises at most
//! 254), and a body they cannot take must be a 400 naming the limit, not an internal error halfway through a
//! request. This scan runs on every request body, so it only looks at structure: string contents are skipped with
//! `memchr`, and nothing is decoded or allocated.

use memchr::memchr2;

/// The deepest nesting of arrays and objects in `json`: 0 for a scalar, 1 for `{}` or `[1, 2]`, 2 for `{"a": []}`.
///
/// Brackets inside strings do not count. The text is not validated (the caller has parsed it already); for text
/// that is not JSON the result is still a number, and an unterminated string ends the scan.
pub fn nesting_depth(json: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut pos = 0;
    while let Some(&byte) = json.get(pos) {
        match byte {
            b'"' => match string_end(json, pos + 1) {
                Some(end) => pos = end,
                None => break,
            },
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        pos += 1;
    }
    deepest
}

/// The position of the quote that closes the string whose contents start at `pos`, or None if it never closes.
fn string_end(json: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let found = pos + memchr2(b'"', b'\\', json.get(pos..)?)?;
        if json[found] == b'"' {
            return Some(found);
        }
        // A backslash escapes the next byte, which may be a quote or another backslash.
        pos = found + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scalars_and_containers() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(b"\"[{\""), 0);
        assert_eq!(nesting_depth(b"{}"), 1);
        assert_eq!(nesting_depth(b"[1, [2], {\"a\": [[]]}]"), 4);
        assert_eq!(nesting_depth(b" { \"a\" : { } , \"b\" : [ ] } "), 2);
    }

    #[test]
    fn brackets_in_strings_and_escapes_do_not_count() {
        assert_eq!(nesting_depth(br#"{"a": "[[[{{{"}"#), 1);
        assert_eq!(nesting_depth(br#"{"a": "\"[[", "b": "\\", "c": [["\\\"]"]]}"#), 3);
        assert_eq!(nesting_depth(br#"["\u005b"]"#), 1);
    }

    #[test]
    fn broken_text_still_gives_a_number() {
        assert_eq!(nesting_depth(b"[[\"never closed"), 2);
        assert_eq!(nesting_depth(b"[[\"ends in a backslash\\"), 2);
        assert_eq!(nesting_depth(b"]]]["), 1);
        assert_eq!(nesting_depth(b""), 0);
    }

    #[test]
    fn deep_documents() {
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert_eq!(nesting_depth(deep.as_bytes()), 5000);
        let objects = r#"{"a":"#.repeat(300) + "1" + &"}".repeat(300);
        assert_eq!(nesting_depth(objects.as_bytes()), 300);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(serde_json::Value::from),
            "[\\[\\]{}\"\\\\a-z ]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(8, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[\\[{\"a-z]{0,4}", inner), 0..4)
                    .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    fn tree_depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(tree_depth).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(tree_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        #[test]
        fn depth_of_serialised_values(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            prop_assert_eq!(nesting_depth(&text), tree_depth(&value));
        }
    }
}
