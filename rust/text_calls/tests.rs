//! Tests of [`super`] (`rust/text_calls.rs`).

use super::parse::trim_parameter;
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn tools() -> ToolSet {
    let tools = json!([
        {"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
        {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
        {"name": "Ping", "input_schema": {"type": "object", "properties": {}}},
    ]);
    ToolSet::from_json(&serde_json::to_vec(&tools).unwrap()).unwrap()
}

/// A piece as owned data, for comparisons.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Text(String),
    Call(String, Value),
}

/// Feed `parts` one by one, then finish; return the pieces (adjacent texts merged) and what was handed on
/// before each push returned (to check nothing is retracted).
fn scan_parts(parts: &[&str]) -> Vec<Out> {
    let tools = tools();
    let mut scanner = TextCallScanner::new();
    let mut pieces = Vec::new();
    let mut sink = |piece: Piece<'_>| match piece {
        Piece::Text(text) => {
            assert!(!text.is_empty(), "no empty text pieces");
            if let Some(Out::Text(last)) = pieces.last_mut() {
                last.push_str(text);
            } else {
                pieces.push(Out::Text(text.to_owned()));
            }
        }
        Piece::Call(call) => pieces.push(Out::Call(call.name, Value::Object(call.arguments))),
    };
    for part in parts {
        scanner.push(part, &tools, &mut sink);
    }
    scanner.finish(&tools, &mut sink);
    assert!(!scanner.is_holding());
    pieces
}

fn scan(text: &str) -> Vec<Out> {
    scan_parts(&[text])
}

fn text(s: &str) -> Out {
    Out::Text(s.to_owned())
}

fn call(name: &str, arguments: Value) -> Out {
    Out::Call(name.to_owned(), arguments)
}

/// Every form, with text around it.
const FORMS: [&str; 10] = [
    "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}</tool_call>",
    "<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}\n</tool_call>",
    "<tool_call>\n```json\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}\n```\n</tool_call>",
    "```json\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a.txt\"}}\n```",
    "```\n\n{\"name\": \"Read\", \"parameters\": {\"path\": \"a.txt\"}}\n```",
    "{\"name\": \"Read\", \"parameters\": {\"path\": \"a.txt\"}}",
    "{\n  \"name\": \"Read\",\n  \"arguments\": \"{\\\"path\\\": \\\"a.txt\\\"}\"\n}",
    "<tool_call>\n<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>\n</tool_call>",
    "<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>",
    "<function=Read><parameter=path> a.txt </parameter></function>",
];

#[test]
fn every_form_alone_and_between_text() {
    for form in FORMS {
        assert_eq!(scan(form), [call("Read", json!({"path": "a.txt"}))], "{form}");
        let around = format!("Let me read it.\n{form}\nDone.");
        assert_eq!(
            scan(&around),
            [
                text("Let me read it."),
                call("Read", json!({"path": "a.txt"})),
                text("Done.")
            ],
            "{form}"
        );
        let trailing_newlines = format!("Let me read it.\n\n{form}\n\n");
        assert_eq!(
            scan(&trailing_newlines),
            [text("Let me read it."), call("Read", json!({"path": "a.txt"}))],
            "{form}"
        );
    }
}

#[test]
fn every_form_split_at_every_byte() {
    for form in FORMS {
        let whole = format!("Let me read it.\n{form}\nDone. é😀");
        let expected = scan(&whole);
        for cut in (1..whole.len()).filter(|&cut| whole.is_char_boundary(cut)) {
            assert_eq!(
                scan_parts(&[&whole[..cut], &whole[cut..]]),
                expected,
                "{whole:?} at {cut}"
            );
        }
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let parts: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(scan_parts(&parts), expected, "{whole:?} char by char");
    }
}

#[test]
fn several_calls_keep_their_order() {
    let text = "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"1\"}}</tool_call>\n\
                <tool_call>{\"name\": \"Bash\", \"arguments\": {\"command\": \"ls\"}}</tool_call>";
    assert_eq!(
        scan(text),
        [
            call("Read", json!({"path": "1"})),
            call("Bash", json!({"command": "ls"}))
        ]
    );
    // Several objects in one tag, and several functions in one tag.
    let one_tag = "<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"path\": \"1\"}}\n\
                   {\"name\": \"Bash\", \"arguments\": {\"command\": \"ls\"}}\n</tool_call>";
    assert_eq!(scan(one_tag).len(), 2);
    let functions = "<tool_call><function=Read><parameter=path>1</parameter></function>\
                     <function=Bash><parameter=command>ls</parameter></function></tool_call>";
    assert_eq!(
        scan(functions),
        [
            call("Read", json!({"path": "1"})),
            call("Bash", json!({"command": "ls"}))
        ]
    );
    // A bare object right after a call is at the start of a "line".
    let back_to_back = "<tool_call>{\"name\": \"Ping\"}</tool_call>{\"name\": \"Read\", \"arguments\": {}}";
    assert_eq!(scan(back_to_back), [call("Ping", json!({})), call("Read", json!({}))]);
}

#[test]
fn ordinary_text_is_left_alone() {
    for text in [
        "",
        "plain text",
        "   ",
        "a\n\n",
        "\n\nb",
        "<tool_call>{\"name\": \"Delete\", \"arguments\": {\"path\": \"/\"}}</tool_call>",
        "Here is JSON: {\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}} inside a sentence.",
        "{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}} and more on the line",
        "```python\nprint({'name': 'Read'})\n```",
        "```json\n{\"key\": 1}\n```",
        "```json\n[1, 2]\n```",
        "````json\n{\"name\": \"Read\", \"arguments\": {}}\n````",
        "```jsonc\n{\"name\": \"Read\", \"arguments\": {}}\n```",
        "Use <b>bold</b> and {braces} freely.",
        "{braces at the start}",
        "{\"name\": \"Alice\", \"age\": 3}",
        "{\"name\": \"Read\"}",                              // bare: arguments required
        "{\"name\": \"Read\", \"arguments\": \"not json\"}", // heals only to raw
        "{\"name\": \"Read\", \"arguments\": [1]}",
        "{\"name\": 5, \"arguments\": {}}",
        "{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}",
        "{\"name\": \"Read\", \"arguments\": {}} }",
        "  {\"name\": \"Read\", \"arguments\": {}}", // indented
        "<tool_call> is the tag models use",
        "<tool_call>\n\n",
        "<tool_call>{\"name\": \"Read\", \"arguments\": {}}\nand then prose",
        "<tool_call>{\"name\": \"Read\"</tool_call>",
        "<tool_call></tool_call>",
        "<function=Delete><parameter=path>/</parameter></function>",
        "<function=Read><parameter=path>a</parameter>oops</function>",
        "<function=Read><parameter=path>a</function>",
        "<function=Read>\n<parameter=>a</parameter></function>",
        "<function=\nRead>",
        "<function=Read",
        "<function",
        "<",
        "a < b and c<d",
        "`code` and ``more``",
        "```",
        "```json",
        "```json\n",
        "```json\n{\"name\": \"Read\"",
        "{",
        "{\"na",
        "x\n{\"name\" is a key}\n",
        "é<tool_call>😀</tool_call>",
    ] {
        let expected = if text.is_empty() {
            vec![]
        } else {
            vec![Out::Text(text.to_owned())]
        };
        assert_eq!(scan(text), expected, "{text:?}");
        // And byte for byte in any split.
        for cut in (1..text.len()).filter(|&cut| text.is_char_boundary(cut)) {
            assert_eq!(scan_parts(&[&text[..cut], &text[cut..]]), expected, "{text:?} at {cut}");
        }
    }
}

#[test]
fn unclosed_calls_at_the_end() {
    assert_eq!(
        scan("Reading.\n<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}\n"),
        [text("Reading."), call("Read", json!({"path": "a"}))]
    );
    assert_eq!(
        scan("```json\n{\"name\": \"Read\", \"arguments\": {\"path\": \"a\"}}"),
        [call("Read", json!({"path": "a"}))]
    );
    assert_eq!(
        scan("<function=Read>\n<parameter=path>\na\n</parameter>\n"),
        [call("Read", json!({"path": "a"}))]
    );
    // A missing </function> inside a closed <tool_call> is forgiven.
    assert_eq!(
        scan("<tool_call><function=Read><parameter=path>a</parameter></tool_call>"),
        [call("Read", json!({"path": "a"}))]
    );
}

#[test]
fn closing_tags_inside_values() {
    let json_in_tag =
        "<tool_call>{\"name\": \"Bash\", \"arguments\": {\"command\": \"echo </tool_call>\"}}</tool_call>";
    assert_eq!(
        scan(json_in_tag),
        [call("Bash", json!({"command": "echo </tool_call>"}))]
    );
    let xml = "<function=Bash><parameter=command>echo </function> ```</parameter></function>";
    assert_eq!(scan(xml), [call("Bash", json!({"command": "echo </function> ```"}))]);
    let fence = "```json\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"echo ```\"}}\n```";
    assert_eq!(scan(fence), [call("Bash", json!({"command": "echo ```"}))]);
    let bare = "{\"name\": \"Bash\", \"arguments\": {\"command\": \"}\\\"{\"}}";
    assert_eq!(scan(bare), [call("Bash", json!({"command": "}\"{"}))]);
}

#[test]
fn ids_and_healing() {
    let tools = tools();
    let mut scanner = TextCallScanner::new();
    let mut calls = Vec::new();
    let text =
        "<tool_call>{\"id\": \"call_9\", \"name\": \"Read\", \"arguments\": \"{\\\"path\\\": \\\"a\\\"}\"}</tool_call>";
    scanner.push(text, &tools, |piece| {
        if let Piece::Call(call) = piece {
            calls.push(call);
        }
    });
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id.as_deref(), Some("call_9"));
    assert_eq!(calls[0].heal, HealKind::ParsedString);
    assert_eq!(Value::Object(calls[0].arguments.clone()), json!({"path": "a"}));
}

#[test]
fn parameter_values() {
    assert_eq!(trim_parameter("\na.txt\n"), "a.txt");
    assert_eq!(trim_parameter("  a.txt  "), "a.txt");
    assert_eq!(trim_parameter("\r\n20\r\n"), "20");
    assert_eq!(trim_parameter("\n  def f():\n    pass\n"), "  def f():\n    pass");
    assert_eq!(trim_parameter("\n\nx\n\n"), "\nx\n");
    assert_eq!(trim_parameter(""), "");
    let xml = "<function=Bash>\n<parameter=command>\nfor i in 1 2; do\n  echo $i\ndone\n</parameter>\n</function>";
    assert_eq!(
        scan(xml),
        [call("Bash", json!({"command": "for i in 1 2; do\n  echo $i\ndone"}))]
    );
}

#[test]
fn text_is_handed_on_as_soon_as_it_is_decided() {
    let tools = tools();
    let mut scanner = TextCallScanner::new();
    let mut seen = String::new();
    let mut push = |text: &str| {
        scanner.push(text, &tools, |piece| {
            if let Piece::Text(text) = piece {
                seen.push_str(text);
            }
        });
        seen.clone()
    };
    assert_eq!(push("Hello <b>"), "Hello <b>");
    assert_eq!(
        push("x <tool"),
        "Hello <b>x",
        "a possible tag and the space before it are held"
    );
    assert_eq!(push("s>"), "Hello <b>x <tools>");
    assert_eq!(push("\n```py"), "Hello <b>x <tools>\n```py");
    assert_eq!(
        push("\n{x\n``"),
        "Hello <b>x <tools>\n```py\n{x",
        "inside a code block: `{{` is code"
    );
    assert_eq!(push("`"), "Hello <b>x <tools>\n```py\n{x\n```", "the closing fence");
    assert_eq!(
        push("\n{\"name\" "),
        "Hello <b>x <tools>\n```py\n{x\n```",
        "a line-start object is held"
    );
    assert_eq!(
        push("is x}\nok"),
        "Hello <b>x <tools>\n```py\n{x\n```\n{\"name\" is x}\nok"
    );
}

#[test]
fn held_text_is_bounded() {
    let tools = tools();
    let mut scanner = TextCallScanner::new();
    let mut seen = 0;
    let mut sink = |piece: Piece<'_>| {
        if let Piece::Text(text) = piece {
            seen += text.len();
        }
    };
    scanner.push(
        "<tool_call>{\"name\": \"Read\", \"arguments\": {\"path\": \"",
        &tools,
        &mut sink,
    );
    let filler = "é".repeat(1000);
    for _ in 0..40 {
        scanner.push(&filler, &tools, &mut sink);
    }
    assert!(seen > 0, "released past the bound");
    assert!(scanner.buf.len() <= MAX_HELD + filler.len());
    // The JSON scan and the fence are bounded the same way.
    for opening in ["{\"name\": \"", "```json\n{\"a\": \""] {
        let mut scanner = TextCallScanner::new();
        let mut seen = 0;
        scanner.push(opening, &tools, |_| {});
        for _ in 0..40 {
            scanner.push(&filler, &tools, |piece| {
                if let Piece::Text(text) = piece {
                    seen += text.len();
                }
            });
        }
        assert!(seen > 0 && scanner.buf.len() <= MAX_HELD + filler.len(), "{opening}");
    }
}

#[test]
fn many_candidates_stay_linear() {
    // Thousands of openings that each fail: decided quickly, with no quadratic rescans.
    let text = "<a{\n{\"x\n```py\n<tool\n".repeat(5000);
    assert_eq!(scan(&text), [Out::Text(text.clone())]);
    let text = format!(
        "{{\"name\": \"Read\", \"arguments\": {{\"path\": \"{}\"}}}}",
        "x".repeat(60_000)
    );
    assert!(matches!(scan(&text)[..], [Out::Call(..)]));
}

#[test]
fn code_blocks_are_tracked() {
    // The closing fence of an ordinary block is not taken for an opening, so a call after it is found.
    let text =
        "```python\nx = {}\n{\"name\": \"Read\", \"arguments\": {}}\n```\n{\"name\": \"Read\", \"arguments\": {}}";
    assert_eq!(
        scan(text),
        [
            text_of("```python\nx = {}\n{\"name\": \"Read\", \"arguments\": {}}\n```"),
            call("Read", json!({}))
        ]
    );
    let unlabelled = "```\nls -la\n```\n<tool_call>{\"name\": \"Ping\"}</tool_call>";
    assert_eq!(scan(unlabelled), [text_of("```\nls -la\n```"), call("Ping", json!({}))]);
    // A tag is still a call inside a code block.
    assert_eq!(
        scan("```xml\n<tool_call>{\"name\": \"Ping\"}</tool_call>\n```"),
        [text_of("```xml"), call("Ping", json!({})), text_of("```")]
    );
}

fn text_of(s: &str) -> Out {
    text(s)
}

/// Text that holds no call and closes whatever it opens.
fn closed_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z .é]{0,12}",
        Just("```python\nx = {}\n```".to_owned()),
        Just("```json\n{\"key\": [1, {}]}\n```".to_owned()),
        Just("<tool_call>{\"name\": \"Nope\", \"arguments\": {}}</tool_call>".to_owned()),
        Just("Use <b>bold</b> and {braces}; a < b".to_owned()),
        Just("{\"name\": \"Alice\"}".to_owned()),
        Just("`x` and ``y``".to_owned()),
    ]
}

/// Split `whole` at the char boundaries among `cuts` (taken modulo its length).
fn chunks<'t>(whole: &'t str, cuts: &[usize]) -> Vec<&'t str> {
    let mut positions: Vec<usize> = cuts
        .iter()
        .map(|c| c % (whole.len() + 1))
        .filter(|&c| whole.is_char_boundary(c))
        .collect();
    positions.sort_unstable();
    positions.dedup();
    let mut parts = Vec::new();
    let mut prev = 0;
    for pos in positions.into_iter().chain([whole.len()]) {
        parts.push(&whole[prev..pos]);
        prev = pos;
    }
    parts
}

proptest! {
    #[test]
    fn any_chunking_finds_every_call_and_shows_none_as_text(
        parts in proptest::collection::vec(
            prop_oneof![proptest::sample::select(FORMS.to_vec()).prop_map(str::to_owned), closed_text()],
            0..8,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = parts.join("\n");
        let expected = scan(&whole);
        prop_assert_eq!(&scan_parts(&chunks(&whole, &cuts)), &expected);
        let forms = parts.iter().filter(|p| FORMS.contains(&p.as_str())).count();
        let calls = expected.iter().filter(|p| matches!(p, Out::Call(..))).count();
        prop_assert_eq!(calls, forms);
        for piece in &expected {
            if let Out::Text(text) = piece {
                prop_assert!(!text.contains("a.txt") && !text.contains("Read"), "{:?}", text);
            }
        }
        if forms == 0 {
            prop_assert_eq!(scan(&whole), if whole.is_empty() { vec![] } else { vec![Out::Text(whole.clone())] });
        }
    }

    #[test]
    fn any_chunking_of_anything_gives_the_same_pieces(
        parts in proptest::collection::vec(prop_oneof![
            proptest::sample::select(FORMS.to_vec()).prop_map(str::to_owned),
            closed_text(),
            "[a-z <>{}`\n\"é:=_/]{0,12}",
        ], 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = parts.join("\n");
        prop_assert_eq!(scan_parts(&chunks(&whole, &cuts)), scan(&whole));
    }

    #[test]
    fn arbitrary_text_never_panics(parts in proptest::collection::vec(any::<String>(), 0..6)) {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let _ = scan_parts(&refs);
    }

    #[test]
    fn tag_like_text_never_panics(parts in proptest::collection::vec("[<>/=a-z_{}\":`\n ]{0,16}", 0..8)) {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let _ = scan_parts(&refs);
    }
}
