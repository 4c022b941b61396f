//! JSON stored inside a JSON string, written back as Python's `json.dumps`
//! wrote it.
//!
//! Wagtail keeps a revision's StreamFields as strings inside the revision's
//! JSON: the field's raw data, written by `json.dumps` (see the `signatories`
//! of a certificate page revision). Rewriting such a field means decoding
//! the string, changing the value and encoding it again; encoded in
//! serde_json's style (`[{"type":"x"}]`, raw UTF-8) the string would differ
//! from what Wagtail writes in every byte of layout, and every untouched
//! field would look rewritten. So [`decode`] also reads the string's
//! [`Style`] and [`encode`] writes exactly what
//! `json.dumps(value, ensure_ascii=…, separators=…)` writes:
//!
//! - separators `", "` / `": "` (Python's default) or `","` / `":"`;
//! - strings escaped as Python does: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
//!   `\f`, other control characters as `\u00XX`; with `ensure_ascii` (the
//!   default) also DEL and every non-ASCII character as `\uXXXX` in
//!   lowercase hex, characters beyond the BMP as a surrogate pair;
//! - keys in their order (the workspace builds serde_json with
//!   `preserve_order`); empty containers as `[]` and `{}`;
//! - integers with their digits (Python's ints are unbounded; `-0` is `0`);
//!   other numbers as Python's `repr` of the float they read as: shortest
//!   digits that read back as the same float (between two equally close,
//!   the even one), `1.0` for a whole number,
//!   exponent form below 1e-4 and from 1e16 up (`1e-07`, `1.5e+300`).
//!   A number Python wrote keeps its text; one written otherwise (`1E5`,
//!   `1.50`) comes out as Python would write it (`100000.0`, `1.5`), and one
//!   beyond the float range (`1e400`) as `Infinity`, as Python does.
//!
//! Not kept: `indent` (a multi-line `json.dumps`), and a text mixing both
//! separator styles or both ways of writing non-ASCII, which `json.dumps`
//! never writes (the first separator of each kind and any raw non-ASCII
//! character decide). Python reads `NaN`, `Infinity` and unpaired surrogate
//! escapes (`"\ud800"`), which are not JSON; [`decode`] refuses them.

use serde_json::{Map, Value};

/// How `json.dumps` was called: its separators and `ensure_ascii`.
/// The default is Python's: `", "`, `": "`, `ensure_ascii=True`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Items separated by `", "` rather than `","`.
    pub space_after_comma: bool,
    /// Keys followed by `": "` rather than `":"`.
    pub space_after_colon: bool,
    /// Non-ASCII characters (and DEL) written as `\uXXXX` escapes.
    pub ensure_ascii: bool,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            space_after_comma: true,
            space_after_colon: true,
            ensure_ascii: true,
        }
    }
}

impl Style {
    /// Python's `separators=(", ", ": ")` / `(",", ":")` with `ensure_ascii`.
    pub fn python(separators: (&str, &str), ensure_ascii: bool) -> Result<Style, String> {
        let space = |sep: &str, c: &str| match sep.strip_prefix(c) {
            Some("") => Ok(false),
            Some(" ") => Ok(true),
            _ => Err(format!(
                "separator {sep:?} is not one json.dumps writes here (\"{c}\" or \"{c} \")"
            )),
        };
        Ok(Style {
            space_after_comma: space(separators.0, ",")?,
            space_after_colon: space(separators.1, ":")?,
            ensure_ascii,
        })
    }

    /// The separator between items of a list or members of an object.
    pub fn item_separator(&self) -> &'static str {
        if self.space_after_comma {
            ", "
        } else {
            ","
        }
    }

    /// The separator between a key and its value.
    pub fn key_separator(&self) -> &'static str {
        if self.space_after_colon {
            ": "
        } else {
            ":"
        }
    }

    /// The style a JSON text was written in. What the text does not show
    /// (no comma, no colon, nothing beyond ASCII) is Python's default, which
    /// writes that text the same either way.
    pub fn detect(text: &str) -> Style {
        let bytes = text.as_bytes();
        let mut comma = None;
        let mut colon = None;
        let mut raw_non_ascii = false;
        let mut escaped_non_ascii = false;
        let mut in_string = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if in_string {
                match b {
                    b'"' => in_string = false,
                    b'\\' => {
                        if bytes.get(i + 1) == Some(&b'u') {
                            let code = text
                                .get(i + 2..i + 6)
                                .and_then(|hex| u32::from_str_radix(hex, 16).ok());
                            if code.is_some_and(|c| c > 0x7e) {
                                escaped_non_ascii = true;
                            }
                        }
                        i += 1; // the escaped character is not a quote
                    }
                    0x7f.. => raw_non_ascii = true,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b',' if comma.is_none() => comma = Some(bytes.get(i + 1) == Some(&b' ')),
                    b':' if colon.is_none() => colon = Some(bytes.get(i + 1) == Some(&b' ')),
                    0x7f.. => raw_non_ascii = true,
                    _ => {}
                }
            }
            i += 1;
        }
        let default = Style::default();
        Style {
            space_after_comma: comma.unwrap_or(default.space_after_comma),
            space_after_colon: colon.unwrap_or(default.space_after_colon),
            ensure_ascii: if raw_non_ascii {
                false
            } else {
                escaped_non_ascii || default.ensure_ascii
            },
        }
    }
}

/// The value a JSON text holds, and the style it was written in. A text that
/// is not JSON is an error saying where it stops being JSON.
pub fn decode(text: &str) -> Result<(Value, Style), String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the string is not JSON: {e}"))?;
    Ok((value, Style::detect(text)))
}

/// The text `json.dumps` writes for `value` in `style`.
pub fn encode(value: &Value, style: &Style) -> String {
    let mut out = String::new();
    write_value(&mut out, value, style);
    out
}

fn write_value(out: &mut String, value: &Value, style: &Style) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&python_number(&n.to_string())),
        Value::String(s) => write_string(out, s, style.ensure_ascii),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item_separator());
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Value::Object(fields) => write_object(out, fields, style),
    }
}

fn write_object(out: &mut String, fields: &Map<String, Value>, style: &Style) {
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(style.item_separator());
        }
        write_string(out, key, style.ensure_ascii);
        out.push_str(style.key_separator());
        write_value(out, value, style);
    }
    out.push('}');
}

/// A string as Python's `encode_basestring(_ascii)` writes it.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x20 || ensure_ascii => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The text Python writes for the number serde_json read as `text`: an
/// integer keeps its digits, anything else is the `repr` of a float.
fn python_number(text: &str) -> String {
    if !text.contains(['.', 'e', 'E']) {
        // Python reads it as an int; `-0` is the int 0.
        return if text == "-0" {
            "0".to_string()
        } else {
            text.to_string()
        };
    }
    match text.parse::<f64>() {
        Ok(x) => python_float_repr(x),
        // Not a number text (serde_json only holds valid ones): keep it.
        Err(_) => text.to_string(),
    }
}

/// The significant digits of a finite positive `x` and the exponent of the
/// first, as Python's repr chooses them: the fewest digits that read back as
/// `x`, and of those the closest to `x`; a tie goes to the even last digit.
///
/// Rust's `{:e}` finds the same fewest digits but breaks a tie upwards:
/// `1698325736085074.25` (a double exactly) is `…074.3` to Rust and
/// `…074.2` to Python. Two different decimals of 15 digits or fewer never
/// read as the same double, so ties only need checking from 16 digits on,
/// against the double's exact expansion (at most 767 significant digits).
fn shortest_digits(x: f64) -> (String, i32) {
    let split = |sci: &str| -> (String, i32) {
        let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci, "0"));
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        (digits, exponent.parse().unwrap_or(0))
    };
    let (digits, exponent) = split(&format!("{x:e}"));
    if digits.len() < 16 {
        return (digits, exponent);
    }
    let (exact, exact_exponent) = split(&format!("{x:.767e}"));
    let exact = exact.trim_end_matches('0');
    let n = digits.len();
    let tie = exact_exponent == exponent && exact.len() == n + 1 && exact.ends_with('5');
    if !tie {
        return (digits, exponent);
    }
    let lower = &exact[..n];
    let lower_is_even = lower.ends_with(['0', '2', '4', '6', '8']);
    let reads_back = format!("{}.{}e{exponent}", &lower[..1], &lower[1..])
        .parse::<f64>()
        .is_ok_and(|y| y == x);
    if lower != digits && lower_is_even && reads_back {
        let lower = lower.trim_end_matches('0');
        let lower = if lower.is_empty() { "0" } else { lower };
        return (lower.to_string(), exponent);
    }
    (digits, exponent)
}

/// Python's `repr(float)` as `json.dumps` writes it (`float.__repr__`, with
/// `Infinity`, `-Infinity` and `NaN` for the non-finite).
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let (digits, exponent) = shortest_digits(x.abs());
    let sign = if x < 0.0 { "-" } else { "" };
    if !(-4..16).contains(&exponent) {
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        let mantissa = match digits.split_at(1) {
            (first, "") => first.to_string(),
            (first, rest) => format!("{first}.{rest}"),
        };
        return format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs());
    }
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exponent as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streamfield::{apply_changes_to_raw_data, BlockPath, StreamOperation};

    const FIXTURE: &str = include_str!("../tests/fixtures/pyjson.json");

    #[test]
    fn encode_writes_what_python_writes() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() > 100);
        for case in cases {
            let text = case["value"].as_str().unwrap();
            let python = case["python_output"].as_str().unwrap();
            let seps = case["separators"].as_array().unwrap();
            let style = Style::python(
                (seps[0].as_str().unwrap(), seps[1].as_str().unwrap()),
                case["ensure_ascii"].as_bool().unwrap(),
            )
            .unwrap();
            let (value, _) = decode(text).unwrap();
            assert_eq!(encode(&value, &style), python, "{text} in {style:?}");

            // Reading Python's text back: the same value, and a style that
            // writes the same bytes again.
            if python.contains("Infinity") {
                assert!(decode(python).is_err(), "{python}");
                continue;
            }
            // (Same value as Python reads it: the same text in one style;
            // by decimal value `123456789012345678.0` is not the float.)
            let (again, detected) = decode(python).unwrap();
            assert_eq!(encode(&again, &style), encode(&value, &style), "{python}");
            assert_eq!(
                encode(&again, &detected),
                python,
                "{python} as {detected:?}"
            );
        }
    }

    #[test]
    fn a_wagtail_streamfield_string_round_trips_byte_for_byte() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let signatories = fixture["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["value"].as_str().unwrap())
            .find(|t| t.contains("signatory"))
            .unwrap();
        let (value, style) = decode(signatories).unwrap();
        assert_eq!(style, Style::default());
        assert_eq!(encode(&value, &style), signatories);
        assert_eq!(value.as_array().unwrap().len(), 4);
    }

    #[test]
    fn detects_each_part_of_the_style() {
        let d = |t: &str| decode(t).unwrap().1;
        let compact = Style {
            space_after_comma: false,
            space_after_colon: false,
            ensure_ascii: true,
        };
        assert_eq!(d(r#"{"a":[1,2]}"#), compact);
        assert_eq!(
            d(r#"{"a": [1,2]}"#),
            Style {
                space_after_colon: true,
                ..compact
            }
        );
        assert!(!d(r#"["é"]"#).ensure_ascii);
        assert!(d(r#"["\u00e9"]"#).ensure_ascii);
        assert!(!d("[\"\u{7f}\"]").ensure_ascii);
        // Separators inside strings are not separators.
        assert_eq!(d(r#"["a,b", "c:d"]"#), Style::default());
        assert!(
            !d(r#"["a, b\", x",1]"#).space_after_comma,
            "an escaped quote does not end the string"
        );
        // Nothing to tell by: Python's defaults.
        assert_eq!(d("[]"), Style::default());
        assert_eq!(d("\"x\""), Style::default());
    }

    #[test]
    fn python_styles_by_separators() {
        assert_eq!(Style::python((", ", ": "), true), Ok(Style::default()));
        let e = Style::python((";", ":"), true).unwrap_err();
        assert!(e.contains("\";\""), "{e}");
        assert!(Style::python((",", ":  "), true).is_err());
        let s = Style::python((",", ": "), false).unwrap();
        assert_eq!((s.item_separator(), s.key_separator()), (",", ": "));
    }

    #[test]
    fn float_repr_as_python() {
        for (text, python) in [
            ("1.0", "1.0"),
            ("100.0", "100.0"),
            ("1e-07", "1e-07"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1e16", "1e+16"),
            ("9999999999999998.0", "9999999999999998.0"),
            ("1e15", "1000000000000000.0"),
            ("-2.5E-10", "-2.5e-10"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("-0.0", "-0.0"),
            ("0e5", "0.0"),
            ("1e400", "Infinity"),
            ("-1e400", "-Infinity"),
            ("123456789.123456789", "123456789.12345679"),
            ("-0", "0"),
            // Ties between two shortest candidates go to the even digit.
            ("1698325736085074.25", "1698325736085074.2"),
            ("-1698325736085074.25", "-1698325736085074.2"),
            ("1698325736085074.75", "1698325736085074.8"),
            ("1698325736085075.25", "1698325736085075.2"),
            ("918292537280588.25", "918292537280588.2"),
            ("4503599627370497.5", "4503599627370498.0"),
            ("2.5e-310", "2.5e-310"),
            ("-12", "-12"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
        ] {
            assert_eq!(python_number(text), python, "{text}");
        }
        assert_eq!(python_float_repr(f64::NAN), "NaN");
    }

    #[test]
    fn escapes_as_python() {
        let ascii = Style::default();
        let raw = Style {
            ensure_ascii: false,
            ..ascii
        };
        let s = Value::String("a\"\\\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é😀/".into());
        assert_eq!(
            encode(&s, &ascii),
            r#""a\"\\\n\r\t\b\f\u0000\u001f\u007f\u00e9\ud83d\ude00/""#
        );
        assert_eq!(
            encode(&s, &raw),
            "\"a\\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u001f\u{7f}é😀/\""
        );
    }

    #[test]
    fn not_json_is_an_error() {
        for text in [
            "",
            "[1,",
            "{'a': 1}",
            "NaN",
            "[Infinity]",
            "\"\\ud800\"",
            "[1] x",
        ] {
            let e = decode(text).unwrap_err();
            assert!(e.starts_with("the string is not JSON: "), "{text}: {e}");
        }
    }

    /// A deterministic xorshift: the same "random" inputs on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Byte strings of three kinds: any bytes, JSON-ish tokens, and a real
    /// StreamField text with bytes changed, inserted or cut.
    fn random_inputs() -> Vec<Vec<u8>> {
        const TOKENS: &[&str] = &[
            "[", "]", "{", "}", "\"", ":", ",", " ", "\\", "\\u", "\\ud83d", "\\ude00", "00e9",
            "type", "value", "item", "id", "1", "-0", "1e400", "1.5", "true", "null", ".", "é",
            "😀", "\u{7f}", "\u{0}",
        ];
        let base = br#"[{"type": "signatory", "value": {"name": "Sarah", "title_1": "Director"}, "id": "b6d5"}, {"type": "tags", "value": ["a", {"type": "item", "value": "b"}]}]"#;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut inputs = Vec::new();
        for n in 0..600 {
            let len = rng.below(48);
            let bytes = match n % 3 {
                0 => (0..len).map(|_| rng.next() as u8).collect(),
                1 => (0..len)
                    .flat_map(|_| TOKENS[rng.below(TOKENS.len())].bytes())
                    .collect(),
                _ => {
                    let mut b = base.to_vec();
                    for _ in 0..1 + rng.below(3) {
                        let at = rng.below(b.len());
                        match rng.below(3) {
                            0 => b[at] = rng.next() as u8,
                            1 => b.insert(at, TOKENS[rng.below(TOKENS.len())].as_bytes()[0]),
                            _ => b.truncate(at.max(1)),
                        }
                    }
                    b
                }
            };
            inputs.push(bytes);
        }
        inputs
    }

    #[test]
    fn no_input_panics() {
        let ops: Vec<StreamOperation> = [
            (
                "rename_stream_children",
                r#"{"old_name": "signatory", "new_name": "p"}"#,
            ),
            (
                "rename_struct_children",
                r#"{"old_name": "name", "new_name": "n"}"#,
            ),
            ("remove_stream_children", r#"{"name": "tags"}"#),
            ("remove_struct_children", r#"{"name": "id"}"#),
            (
                "stream_children_to_list_block",
                r#"{"block_name": "signatory", "list_block_name": "l"}"#,
            ),
            (
                "stream_children_to_stream_block",
                r#"{"block_names": ["tags"], "stream_block_name": "s"}"#,
            ),
            ("alter_block_value", r#"{"new_value": [1]}"#),
            (
                "stream_children_to_struct_block",
                r#"{"block_name": "tags", "struct_block_name": "s"}"#,
            ),
            ("list_children_to_struct_block", r#"{"block_name": "t"}"#),
        ]
        .iter()
        .map(|(name, args)| {
            let args: Map<String, Value> = serde_json::from_str(args).unwrap();
            StreamOperation::parse(name, &args).unwrap()
        })
        .collect();
        let paths: Vec<BlockPath> = [
            "",
            "signatory",
            "tags",
            "tags.item",
            "signatory.name",
            "item.item",
        ]
        .iter()
        .map(|p| BlockPath::parse(p).unwrap())
        .collect();
        let mut decoded = 0;
        for bytes in random_inputs() {
            let text = String::from_utf8_lossy(&bytes);
            let _ = BlockPath::parse(&text);
            let _ = Style::detect(&text);
            let Ok((value, style)) = decode(&text) else {
                continue;
            };
            decoded += 1;
            let written = encode(&value, &style);
            if let Ok((again, again_style)) = decode(&written) {
                assert_eq!(encode(&again, &again_style), written, "{text}");
            }
            for op in &ops {
                for path in &paths {
                    let mut v = value.clone();
                    let _ = apply_changes_to_raw_data(&mut v, path, op, &mut || "x".into());
                }
            }
        }
        assert!(decoded > 20, "only {decoded} inputs were JSON");
    }
}
