//! Equality of JSON values as the database sees them: numbers are equal
//! when their decimal values are equal, whatever their notation.
//!
//! serde_json keeps a number's text as written (the workspace builds it with
//! `arbitrary_precision`, so that a document's numbers survive a rewrite
//! digit for digit), and its `==` compares that text: `1.5e-7` differs from
//! `0.00000015`. PostgreSQL's `jsonb` stores numbers as `numeric`, so what a
//! run writes as `1.5e-7` is read back as `0.00000015`, `1e20` as
//! `100000000000000000000`; compared as text, a rule would never be seen as
//! applied and every run would write the row again. Comparing by value is
//! jsonb's own equality (`'1.0'::jsonb = '1'::jsonb`), and it is also the
//! right notion of "the rule already holds" for `json` and text columns,
//! which keep whatever text they were given.
//!
//! The comparison is exact, on the decimal digits: no `f64` rounding, so
//! `0.1` and `0.1000000000000000055` (the same `f64`) stay different.

use serde_json::Value;

/// Deep equality of two JSON values where numbers compare by decimal value;
/// everything else as serde_json compares it (object key order ignored).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x.as_str(), y.as_str()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// Whether two JSON number texts denote the same decimal value
/// (`1.5e-7` = `0.00000015`, `1e20` = `100000000000000000000`, `1.0` = `1`,
/// `-0` = `0`). A text that is not a JSON number is only equal to itself.
pub fn same_number(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Decimal::parse(a), Decimal::parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A decimal number normalised so that equal values are equal structs:
/// `digits × 10^exponent`, digits without leading or trailing zeros; zero is
/// no digits, exponent 0 and never negative.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i128,
}

/// Exponents longer than this are refused (compared as text): no real
/// document has one, and it keeps the arithmetic below far from overflow.
const MAX_EXPONENT_DIGITS: usize = 30;

impl Decimal {
    /// Parses JSON's number grammar: `-? int (. frac)? ([eE] [+-]? exp)?`.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp_text) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        if mantissa.contains('.') && frac.is_empty() {
            return None;
        }
        let mut exponent: i128 = match exp_text {
            None => 0,
            Some(e) => {
                let (neg, digits) = match e.as_bytes().first() {
                    Some(b'-') => (true, &e[1..]),
                    Some(b'+') => (false, &e[1..]),
                    _ => (false, e),
                };
                if digits.is_empty() || !all_digits(digits) {
                    return None;
                }
                let digits = digits.trim_start_matches('0');
                if digits.len() > MAX_EXPONENT_DIGITS {
                    return None;
                }
                let n: i128 = if digits.is_empty() {
                    0
                } else {
                    digits.parse().ok()?
                };
                if neg {
                    -n
                } else {
                    n
                }
            }
        };
        // The fraction's digits shift the exponent down.
        exponent -= frac.len() as i128;
        let mut digits: Vec<u8> = int
            .bytes()
            .chain(frac.bytes())
            .skip_while(|b| *b == b'0')
            .collect();
        let kept = digits.iter().rposition(|b| *b != b'0').map_or(0, |i| i + 1);
        exponent += (digits.len() - kept) as i128;
        digits.truncate(kept);
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Decimal {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn equal_decimal_values_in_any_notation() {
        for (a, b) in [
            ("1.5e-7", "0.00000015"),
            ("1e20", "100000000000000000000"),
            ("1E20", "1e+20"),
            ("1.0", "1"),
            ("1.000", "1.0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0e10", "0"),
            ("0.0e-5", "-0"),
            ("10", "1e1"),
            ("100", "1.00e2"),
            ("0.0025", "25e-4"),
            ("-1.5e-7", "-0.00000015"),
            ("12345678901234567890", "1.234567890123456789e19"),
            ("0.1000", "1e-1"),
            ("1e-0", "1"),
            ("1e007", "10000000"),
            ("123.456", "123456e-3"),
        ] {
            assert!(same_number(a, b), "{a} = {b}");
            assert!(same_number(b, a), "{b} = {a}");
            assert!(same_value(&v(a), &v(b)), "{a} = {b} as values");
        }
    }

    #[test]
    fn different_values_stay_different() {
        for (a, b) in [
            ("1", "-1"),
            ("1.5e-7", "1.5e-8"),
            ("1e20", "1e21"),
            ("0.1", "0.1000000000000000055"),
            ("9007199254740993", "9007199254740992"),
            ("10", "1"),
            ("0.01", "0.1"),
            ("100", "1000"),
            ("1.5", "15"),
            ("-0.00000015", "0.00000015"),
            ("0", "1e-400"),
            ("1e400", "1e401"),
        ] {
            assert!(!same_number(a, b), "{a} != {b}");
            assert!(!same_number(b, a), "{b} != {a}");
        }
    }

    #[test]
    fn huge_exponents_compare_exactly_or_as_text() {
        assert!(same_number("1e999999999", "10e999999998"));
        assert!(!same_number("1e999999999", "1e999999998"));
        let long = format!("1e{}", "9".repeat(40));
        assert!(same_number(&long, &long));
        assert!(!same_number(&long, "1"));
    }

    #[test]
    fn texts_that_are_not_numbers_only_equal_themselves() {
        for bad in [
            "", "-", "1.", ".5", "1e", "1e+", "abc", "1.2.3", "0x10", "+1",
        ] {
            assert!(same_number(bad, bad), "{bad:?}");
            assert!(!same_number(bad, "1"), "{bad:?}");
        }
        // A leading `+` is not JSON; `+1` is not read as 1.
        assert!(!same_number("+1", "1"));
    }

    #[test]
    fn documents_compare_deeply_by_value() {
        assert!(same_value(
            &v(r#"{"a": 1.5e-7, "b": [1e20, {"c": 1.0}], "d": "x"}"#),
            &v(r#"{"d": "x", "b": [100000000000000000000, {"c": 1}], "a": 0.00000015}"#),
        ));
        // Strings holding numbers are strings: compared as text.
        assert!(!same_value(&json!("1.0"), &json!("1")));
        assert!(!same_value(&v(r#"[1, 2]"#), &v(r#"[2, 1]"#)));
        assert!(!same_value(&v(r#"[1]"#), &v(r#"[1, 1]"#)));
        assert!(!same_value(&v(r#"{"a": 1}"#), &v(r#"{"a": 1, "b": 1}"#)));
        assert!(!same_value(&v(r#"{"a": 1}"#), &v(r#"{"b": 1}"#)));
        assert!(!same_value(&v("1"), &v(r#""1""#)));
        assert!(!same_value(&v("0"), &v("false")));
        assert!(!same_value(&v("null"), &v("0")));
        assert!(same_value(&v("null"), &v("null")));
        assert!(same_value(&v("true"), &v("true")));
        assert!(same_value(&v("{}"), &v("{}")));
    }
}
