//! `pyjson::decode` on any text; what decodes, encoded in the style detected
//! and decoded again, gives the same value and the same style (or one that
//! writes it the same), and encoding that is a fixed point (the same bytes).
//!
//! "Same value" is as Python reads it: integers and strings exactly, other
//! numbers as the float they read as (`encode` writes a float's `repr`).
//! A number beyond the float range is written `Infinity`, as Python writes
//! it, which is not JSON: such values are left out of the round trip.
#![no_main]

use backfill_job::equality::same_number;
use backfill_job::pyjson::{decode, encode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn is_float_text(t: &str) -> bool {
    t.contains(['.', 'e', 'E'])
}

fn has_infinite(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            let t = n.as_str();
            is_float_text(t) && t.parse::<f64>().map_or(true, |x| !x.is_finite())
        }
        Value::Array(items) => items.iter().any(has_infinite),
        Value::Object(m) => m.values().any(has_infinite),
        _ => false,
    }
}

fn same_as_python(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_str(), y.as_str());
            if is_float_text(x) {
                is_float_text(y) && x.parse::<f64>().ok() == y.parse::<f64>().ok()
            } else {
                !is_float_text(y) && same_number(x, y)
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_as_python(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, v), (l, w))| k == l && same_as_python(v, w))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((value, style)) = decode(text) else {
        return;
    };
    let encoded = encode(&value, &style);
    if has_infinite(&value) {
        return;
    }
    let (again, again_style) = match decode(&encoded) {
        Ok(d) => d,
        Err(e) => panic!("{text:?} encodes as {encoded:?}, which does not decode: {e}"),
    };
    assert!(
        same_as_python(&value, &again),
        "{text:?} encodes as {encoded:?}, which decodes to {again}"
    );
    // The same style, or one that writes these bytes the same: a raw
    // non-ASCII character under a duplicate key makes the text's style
    // `ensure_ascii=False` though the value, which keeps the last duplicate,
    // holds none (`json.dumps` never writes duplicate keys).
    assert!(
        style == again_style || encode(&again, &style) == encode(&again, &again_style),
        "{text:?} encodes as {encoded:?}: {style:?}, then {again_style:?}"
    );
    assert_eq!(encode(&again, &style), encoded, "{text:?}");
    assert_eq!(encode(&again, &again_style), encoded, "{text:?}");
});
