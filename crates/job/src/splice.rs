//! The new text of a document whose column keeps the text it is given
//! (PostgreSQL `json` and `text`, SQLite): the original bytes of everything
//! no rule touched, with only the changed values written anew.
//!
//! Re-serialising the whole document would change parts no rule touched:
//! serde_json writes `1e400` as `1e+400`, `"\u00e9"` as `"é"`, keeps only
//! the last of duplicate keys and drops whitespace. Instead the original
//! text is scanned into byte spans and walked alongside the new document:
//!
//! - a value equal to its original (by value, as [`same_value`] compares)
//!   keeps its bytes exactly;
//! - an object is spliced member by member: a removed key drops its member
//!   with its comma, a kept key keeps its key, colon and whitespace, an added
//!   key is appended after the last member (value as compact JSON), except
//!   one at the same index of the new object as a removed key of the old:
//!   it takes that member's place (a renamed key stays where it stood);
//! - an array of the same length is spliced element by element; otherwise
//!   the elements equal at its start and at its end keep their bytes and the
//!   ones between are written anew;
//! - anything else (a changed scalar, a value of another type) is written as
//!   compact JSON.
//!
//! Duplicate keys are kept as they are while their value is untouched. When
//! a rule changes the value under a key the original object holds more than
//! once, readers that take the first and readers that take the last
//! occurrence would see different documents, so the splice is refused
//! ([`SpliceError::DuplicateKey`]) and the row is left unchanged. A removed
//! duplicated key drops every occurrence (no reader sees it any more).
//!
//! The spliced text is parsed back and compared with the new document (by
//! value); a text that does not read back as that document is refused
//! ([`SpliceError::Mismatch`]) rather than written.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::ops::Range;

use crate::equality::same_value;

/// serde_json's own nesting limit: a document deeper than this could not be
/// read back, so neither the original nor the new text may exceed it.
pub const MAX_DEPTH: usize = 128;

/// Why the original text could not keep its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    #[error("the document cannot be scanned at byte {at}: {reason}")]
    Scan { at: usize, reason: &'static str },
    #[error("the document nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the object at `{pointer}` holds key `{key}` more than once and a rule changes it; readers would disagree on its value")]
    DuplicateKey { pointer: String, key: String },
    #[error("the new value cannot be written as JSON: {0}")]
    Serialise(String),
    #[error("the spliced text does not read back as the new document")]
    Mismatch,
}

/// The text of `new` that keeps the bytes of `original` wherever `new`
/// holds what `original` held. The result always parses to `new` (numbers
/// compared by value, object key order ignored).
pub fn splice(original: &str, new: &Value) -> Result<String, SpliceError> {
    let parsed: Value = serde_json::from_str(original).map_err(|_| {
        if nesting_depth(original) > MAX_DEPTH {
            SpliceError::TooDeep
        } else {
            SpliceError::Scan {
                at: 0,
                reason: "not JSON",
            }
        }
    })?;
    splice_parsed(original, &parsed, new)
}

/// [`splice`] with `original` already parsed (as `parsed`, by serde_json:
/// of duplicate keys, the last occurrence's value).
pub fn splice_parsed(original: &str, parsed: &Value, new: &Value) -> Result<String, SpliceError> {
    let mut scanner = Scanner {
        text: original.as_bytes(),
        pos: 0,
    };
    scanner.skip_ws();
    let start = scanner.pos;
    let root = scanner.value(0)?;
    let end = scanner.pos;
    scanner.skip_ws();
    if scanner.pos != original.len() {
        return Err(scanner.fail("trailing characters"));
    }
    let s = Splicer { text: original };
    let out = match s.node(&root, parsed, new, &mut String::new())? {
        None => original.to_string(),
        Some(body) => format!("{}{body}{}", &original[..start], &original[end..]),
    };
    // What is written must read back as the new document: a splice that
    // does not is refused rather than written.
    match serde_json::from_str::<Value>(&out) {
        Ok(back) if same_value(&back, new) => Ok(out),
        _ => Err(SpliceError::Mismatch),
    }
}

/// A scanned value: its byte span and, for containers, their parts.
#[derive(Debug)]
enum Node {
    Scalar(Range<usize>),
    Object {
        members: Vec<Member>,
        /// The whitespace before `}`: after the last member's value, or all
        /// of the inside of an empty object.
        closing: Range<usize>,
        span: Range<usize>,
    },
    Array {
        elems: Vec<Elem>,
        closing: Range<usize>,
        span: Range<usize>,
    },
}

impl Node {
    fn span(&self) -> Range<usize> {
        match self {
            Node::Scalar(s) => s.clone(),
            Node::Object { span, .. } | Node::Array { span, .. } => span.clone(),
        }
    }
}

/// `lead "key" colon value trail` of an object member, where `colon` is the
/// bytes from the key's end to the value's start (`: ` and whitespace) and
/// `trail` the whitespace before the next comma (empty for the last member,
/// whose trailing whitespace is the object's `closing`).
#[derive(Debug)]
struct Member {
    lead: Range<usize>,
    key: Range<usize>,
    colon: Range<usize>,
    value: Node,
    trail: Range<usize>,
}

/// `lead value trail` of an array element (as for [`Member`]).
#[derive(Debug)]
struct Elem {
    lead: Range<usize>,
    value: Node,
    trail: Range<usize>,
}

/// A scanner of byte spans over text serde_json accepts (it never decodes:
/// keys and scalars are decoded by serde_json where they are compared).
struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn fail(&self, reason: &'static str) -> SpliceError {
        SpliceError::Scan {
            at: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) -> Range<usize> {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
        start..self.pos
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), SpliceError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail(reason))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SpliceError> {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(SpliceError::TooDeep);
                }
                self.object(depth + 1)
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(SpliceError::TooDeep);
                }
                self.array(depth + 1)
            }
            Some(b'"') => {
                self.string()?;
                Ok(Node::Scalar(start..self.pos))
            }
            Some(b'-' | b'0'..=b'9') => {
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                Ok(Node::Scalar(start..self.pos))
            }
            Some(b't' | b'f' | b'n') => {
                for word in [&b"true"[..], b"false", b"null"] {
                    if self.text[self.pos..].starts_with(word) {
                        self.pos += word.len();
                        return Ok(Node::Scalar(start..self.pos));
                    }
                }
                Err(self.fail("not a JSON literal"))
            }
            _ => Err(self.fail("expected a JSON value")),
        }
    }

    /// A string with its quotes; escapes are skipped, not decoded.
    fn string(&mut self) -> Result<(), SpliceError> {
        self.expect(b'"', "expected a string")?;
        loop {
            match self.peek() {
                None => return Err(self.fail("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                // Escapes are ASCII (`\n`, `\u00e9`…): every span ends on
                // a character boundary.
                Some(b'\\') => match self.text.get(self.pos + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                        self.pos += 2
                    }
                    _ => return Err(self.fail("an invalid escape")),
                },
                Some(_) => self.pos += 1,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node, SpliceError> {
        let start = self.pos;
        self.expect(b'{', "expected `{`")?;
        let mut members = Vec::new();
        let first = self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Object {
                members,
                closing: first,
                span: start..self.pos,
            });
        }
        let mut lead = first;
        loop {
            let key_start = self.pos;
            self.string()?;
            let key = key_start..self.pos;
            self.skip_ws();
            self.expect(b':', "expected `:`")?;
            self.skip_ws();
            let colon = key.end..self.pos;
            let value = self.value(depth)?;
            let trail = self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    members.push(Member {
                        lead,
                        key,
                        colon,
                        value,
                        trail,
                    });
                    lead = self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    let at = trail.start;
                    members.push(Member {
                        lead,
                        key,
                        colon,
                        value,
                        trail: at..at,
                    });
                    return Ok(Node::Object {
                        members,
                        closing: trail,
                        span: start..self.pos,
                    });
                }
                _ => return Err(self.fail("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Node, SpliceError> {
        let start = self.pos;
        self.expect(b'[', "expected `[`")?;
        let mut elems = Vec::new();
        let first = self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node::Array {
                elems,
                closing: first,
                span: start..self.pos,
            });
        }
        let mut lead = first;
        loop {
            let value = self.value(depth)?;
            let trail = self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    elems.push(Elem { lead, value, trail });
                    lead = self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    let at = trail.start;
                    elems.push(Elem {
                        lead,
                        value,
                        trail: at..at,
                    });
                    return Ok(Node::Array {
                        elems,
                        closing: trail,
                        span: start..self.pos,
                    });
                }
                _ => return Err(self.fail("expected `,` or `]`")),
            }
        }
    }
}

/// One part of a rebuilt container: its leading whitespace (`None`: the
/// container's usual spacing), its body (key, colon and value, or the
/// element) and its whitespace before the comma.
struct Piece<'t> {
    lead: Option<&'t str>,
    body: String,
    trail: &'t str,
}

/// How a container spaces its parts: the whitespace after its opening
/// bracket, after each comma, and before its closing bracket.
struct Spacing<'t> {
    opening: &'t str,
    separator: &'t str,
    closing: &'t str,
}

impl<'t> Spacing<'t> {
    /// The original's spacing; the separator is the last part's leading
    /// whitespace (the first part's when there is only one).
    fn of(leads: &[&'t str], closing: &'t str) -> Spacing<'t> {
        Spacing {
            opening: leads.first().copied().unwrap_or(""),
            separator: leads.last().copied().unwrap_or(""),
            closing,
        }
    }
}

/// `open pieces… closing close`, the pieces joined by commas; the first
/// piece leads with the opening whitespace whichever part it is. An empty
/// container is written `{}` / `[]`.
fn assemble(open: char, pieces: &[Piece<'_>], spacing: &Spacing<'_>, close: char) -> String {
    let mut out = String::new();
    out.push(open);
    if pieces.is_empty() {
        out.push(close);
        return out;
    }
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.push(',');
            out.push_str(p.lead.unwrap_or(spacing.separator));
        } else {
            out.push_str(spacing.opening);
        }
        out.push_str(&p.body);
        out.push_str(p.trail);
    }
    out.push_str(spacing.closing);
    out.push(close);
    out
}

fn compact(v: &Value) -> Result<String, SpliceError> {
    serde_json::to_string(v).map_err(|e| SpliceError::Serialise(e.to_string()))
}

/// A JSON Pointer token (`~` and `/` escaped), for naming where a splice
/// was refused.
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

struct Splicer<'t> {
    text: &'t str,
}

impl<'t> Splicer<'t> {
    fn at(&self, r: &Range<usize>) -> &'t str {
        &self.text[r.clone()]
    }

    /// A member's key as text: its bytes between the quotes, or decoded
    /// when it holds escapes.
    fn key(&self, m: &Member) -> Result<std::borrow::Cow<'t, str>, SpliceError> {
        let raw = self.at(&m.key);
        let inner = &raw[1..raw.len() - 1];
        if !inner.contains('\\') {
            return Ok(inner.into());
        }
        serde_json::from_str::<String>(raw)
            .map(Into::into)
            .map_err(|_| SpliceError::Scan {
                at: m.key.start,
                reason: "a key that is not a JSON string",
            })
    }

    /// The new text of `node` (whose value is `old`) when `new` differs
    /// from it (`None`: it keeps its bytes). `pointer` is where `node`
    /// sits, for errors.
    fn node(
        &self,
        node: &Node,
        old: &Value,
        new: &Value,
        pointer: &mut String,
    ) -> Result<Option<String>, SpliceError> {
        if same_value(old, new) {
            return Ok(None);
        }
        match (node, old, new) {
            (
                Node::Object {
                    members, closing, ..
                },
                Value::Object(old),
                Value::Object(new),
            ) => self.object(members, closing, old, new, pointer).map(Some),
            (Node::Array { elems, closing, .. }, Value::Array(old), Value::Array(new))
                if old.len() == elems.len() =>
            {
                self.array(elems, closing, old, new, pointer).map(Some)
            }
            // A changed scalar, or a value of another type: written anew.
            _ => compact(new).map(Some),
        }
    }

    fn object(
        &self,
        members: &[Member],
        closing: &Range<usize>,
        old: &Map<String, Value>,
        map: &Map<String, Value>,
        pointer: &mut String,
    ) -> Result<String, SpliceError> {
        let keys = members
            .iter()
            .map(|m| self.key(m))
            .collect::<Result<Vec<_>, _>>()?;
        // The last occurrence of each key is the one serde_json (and
        // PostgreSQL's `json` operators) read.
        let last = |k: &str| keys.iter().rposition(|x| x == k);
        let mut pieces = Vec::with_capacity(map.len());
        // An added key at the index in the new object where a removed key
        // stood in the old one takes that member's place (a rename keeps
        // its position); every other added key is appended.
        let mut slotted: BTreeMap<usize, (&String, &Value)> = map
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| !keys.iter().any(|x| x == *k))
            .collect();
        let mut in_place: Vec<&String> = Vec::new();
        for (i, (m, k)) in members.iter().zip(&keys).enumerate() {
            let Some(v) = map.get(k.as_ref()) else {
                // Removed: the member goes, with its comma; an added key
                // may stand in its place.
                let taken = old
                    .keys()
                    .position(|x| x == k)
                    .and_then(|at| slotted.remove(&at));
                if let Some((new_key, new_value)) = taken {
                    in_place.push(new_key);
                    pieces.push(Piece {
                        lead: (i > 0).then(|| self.at(&m.lead)),
                        body: format!(
                            "{}{}{}",
                            compact(&Value::String(new_key.clone()))?,
                            self.at(&m.colon),
                            compact(new_value)?
                        ),
                        trail: self.at(&m.trail),
                    });
                }
                continue;
            };
            let body = match (last(k) == Some(i), old.get(k.as_ref())) {
                (true, Some(was)) => {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&pointer_token(k));
                    let new = self.node(&m.value, was, v, pointer);
                    pointer.truncate(len);
                    let new = new?;
                    if new.is_some() && keys.iter().filter(|x| *x == k).count() > 1 {
                        return Err(SpliceError::DuplicateKey {
                            pointer: if pointer.is_empty() {
                                "/".to_string()
                            } else {
                                pointer.clone()
                            },
                            key: k.to_string(),
                        });
                    }
                    new
                }
                // An earlier occurrence of a duplicated key: kept as it is
                // when the last one is untouched (checked there).
                (false, Some(_)) => None,
                (_, None) => {
                    return Err(SpliceError::Scan {
                        at: m.key.start,
                        reason: "a key the parsed document does not hold",
                    })
                }
            };
            let value = body.unwrap_or_else(|| self.at(&m.value.span()).to_string());
            pieces.push(Piece {
                // The first member's lead is the opening whitespace.
                lead: (i > 0).then(|| self.at(&m.lead)),
                body: format!("{}{}{value}", self.at(&m.key), self.at(&m.colon)),
                trail: self.at(&m.trail),
            });
        }
        // Added keys, after the last member, spaced like it.
        let colon = members.last().map_or(":", |m| self.at(&m.colon));
        for (k, v) in map {
            if keys.iter().any(|x| x == k) || in_place.contains(&k) {
                continue;
            }
            pieces.push(Piece {
                lead: None,
                body: format!(
                    "{}{colon}{}",
                    compact(&Value::String(k.clone()))?,
                    compact(v)?
                ),
                trail: "",
            });
        }
        let leads: Vec<&str> = members.iter().map(|m| self.at(&m.lead)).collect();
        let spacing = Spacing::of(&leads, self.at(closing));
        Ok(assemble('{', &pieces, &spacing, '}'))
    }

    fn array(
        &self,
        elems: &[Elem],
        closing: &Range<usize>,
        old: &[Value],
        items: &[Value],
        pointer: &mut String,
    ) -> Result<String, SpliceError> {
        let piece = |i: usize, body: Option<String>| Piece {
            lead: (i > 0).then(|| self.at(&elems[i].lead)),
            body: body.unwrap_or_else(|| self.at(&elems[i].value.span()).to_string()),
            trail: self.at(&elems[i].trail),
        };
        let mut pieces = Vec::with_capacity(items.len());
        if elems.len() == items.len() {
            for (i, v) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                let body = self.node(&elems[i].value, &old[i], v, pointer);
                pointer.truncate(len);
                pieces.push(piece(i, body?));
            }
        } else {
            // Elements inserted or removed: those equal at the start and at
            // the end keep their bytes, the ones between are written anew.
            let shortest = elems.len().min(items.len());
            let head = (0..shortest)
                .take_while(|&i| same_value(&old[i], &items[i]))
                .count();
            let tail = (0..shortest - head)
                .take_while(|&j| same_value(&old[old.len() - 1 - j], &items[items.len() - 1 - j]))
                .count();
            for i in 0..head {
                pieces.push(piece(i, None));
            }
            for v in &items[head..items.len() - tail] {
                pieces.push(Piece {
                    lead: None,
                    body: compact(v)?,
                    trail: "",
                });
            }
            for i in elems.len() - tail..elems.len() {
                pieces.push(piece(i, None));
            }
        }
        let leads: Vec<&str> = elems.iter().map(|e| self.at(&e.lead)).collect();
        let spacing = Spacing::of(&leads, self.at(closing));
        Ok(assemble('[', &pieces, &spacing, ']'))
    }
}

/// How deep a JSON text nests (objects and arrays), counted without
/// parsing it — for naming why serde_json refused a document.
pub fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// How deep a JSON value nests (a scalar is 0), without recursion.
pub fn value_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Object(m) => {
                deepest = deepest.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Applies `edit` to the parsed `original` and splices the result.
    fn edited(original: &str, edit: impl FnOnce(&mut Value)) -> Result<String, SpliceError> {
        let mut new = v(original);
        edit(&mut new);
        splice(original, &new)
    }

    fn ok(original: &str, edit: impl FnOnce(&mut Value)) -> String {
        edited(original, edit).unwrap_or_else(|e| panic!("{original}: {e}"))
    }

    fn obj(v: &mut Value) -> &mut Map<String, Value> {
        v.as_object_mut().unwrap_or_else(|| panic!("not an object"))
    }

    #[test]
    fn untouched_numbers_keep_their_notation() {
        let doc = r#"{"big": 1e400, "one": 1.0, "neg": -0, "exp": 2.5E-3, "x": 1}"#;
        let out = ok(doc, |d| d["x"] = json!(2));
        assert_eq!(
            out,
            r#"{"big": 1e400, "one": 1.0, "neg": -0, "exp": 2.5E-3, "x": 2}"#
        );
        // serde_json alone would write `1e+400` and `2.5e-3`.
        assert!(serde_json::to_string(&v(doc)).unwrap().contains("1e+400"));
    }

    #[test]
    fn a_value_equal_by_value_keeps_its_text() {
        // `1` for `1.0`, `0` for `-0`: the original's bytes stay.
        let doc = r#"{"a": 1.0, "b": -0, "c": [1e2], "d": "x"}"#;
        let new = json!({"a": 1, "b": 0, "c": [100], "d": "y"});
        assert_eq!(
            splice(doc, &new).unwrap(),
            r#"{"a": 1.0, "b": -0, "c": [1e2], "d": "y"}"#
        );
    }

    #[test]
    fn untouched_escapes_keep_their_bytes() {
        let doc =
            r#"{"name": "caf\u00e9", "smile": "\ud83d\ude00", "q": "a\"b\\c\/d", "x": "old"}"#;
        let out = ok(doc, |d| d["x"] = json!("new"));
        assert_eq!(out, doc.replace(r#""old""#, r#""new""#));
        // A key written with escapes is found by its decoded text.
        let doc = r#"{"caf\u00e9": 1, "other": 2}"#;
        assert_eq!(
            ok(doc, |d| d["café"] = json!(3)),
            r#"{"caf\u00e9": 3, "other": 2}"#
        );
        assert_eq!(
            ok(doc, |d| {
                obj(d).remove("café");
            }),
            r#"{"other": 2}"#
        );
    }

    #[test]
    fn a_changed_string_is_written_anew() {
        let out = ok(r#"{"s": "\u00e9"}"#, |d| d["s"] = json!("é!"));
        assert_eq!(out, r#"{"s": "é!"}"#);
    }

    #[test]
    fn pretty_printed_whitespace_is_kept() {
        let doc = "{\n  \"title\": \"Old\",\n  \"nested\": {\n    \"keep\": [1, 2,\n      3],\n    \"n\": 1e400\n  }\n}\n";
        let out = ok(doc, |d| d["title"] = json!("New"));
        assert_eq!(out, doc.replace("\"Old\"", "\"New\""));
        // Around the root too.
        let doc = "  \t{\"a\" :\r\n 1 }  \n";
        assert_eq!(ok(doc, |d| d["a"] = json!(2)), "  \t{\"a\" :\r\n 2 }  \n");
    }

    #[test]
    fn nested_changes_touch_only_their_value() {
        let doc =
            r#"{"a": {"b": {"c": 1, "d": 1e400}, "e": "\u00e9"}, "f": [ {"g": 1}, {"g": 2} ]}"#;
        let out = ok(doc, |d| {
            d["a"]["b"]["c"] = json!(5);
            d["f"][1]["g"] = json!(7);
        });
        assert_eq!(
            out,
            r#"{"a": {"b": {"c": 5, "d": 1e400}, "e": "\u00e9"}, "f": [ {"g": 1}, {"g": 7} ]}"#
        );
    }

    #[test]
    fn removed_members_go_with_their_comma() {
        let doc = r#"{"a": 1, "b": 2, "c": 3}"#;
        let rm = |k: &'static str| {
            ok(doc, move |d| {
                obj(d).remove(k);
            })
        };
        assert_eq!(rm("a"), r#"{"b": 2, "c": 3}"#);
        assert_eq!(rm("b"), r#"{"a": 1, "c": 3}"#);
        assert_eq!(rm("c"), r#"{"a": 1, "b": 2}"#);
        let pretty = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3\n}";
        let rm = |k: &'static str| {
            ok(pretty, move |d| {
                obj(d).remove(k);
            })
        };
        assert_eq!(rm("a"), "{\n  \"b\": 2,\n  \"c\": 3\n}");
        assert_eq!(rm("b"), "{\n  \"a\": 1,\n  \"c\": 3\n}");
        assert_eq!(rm("c"), "{\n  \"a\": 1,\n  \"b\": 2\n}");
        assert_eq!(
            ok(r#"{"only": 1}"#, |d| {
                obj(d).remove("only");
            }),
            "{}"
        );
    }

    #[test]
    fn added_members_are_appended() {
        assert_eq!(
            ok("{}", |d| d["k"] = json!({"x": [1]})),
            r#"{"k":{"x":[1]}}"#
        );
        assert_eq!(ok("{ }", |d| d["k"] = json!(1)), r#"{"k":1 }"#);
        assert_eq!(
            ok(r#"{"a": 1e400}"#, |d| d["b"] = json!(2)),
            r#"{"a": 1e400,"b": 2}"#
        );
        assert_eq!(
            ok("{\n  \"a\": 1\n}", |d| d["b"] = json!("x")),
            "{\n  \"a\": 1,\n  \"b\": \"x\"\n}"
        );
        // Into an empty nested object, the rest untouched.
        assert_eq!(
            ok(r#"{"n": 1.0, "m": {}}"#, |d| d["m"]["k"] = json!(true)),
            r#"{"n": 1.0, "m": {"k":true}}"#
        );
        // Removal and addition together.
        assert_eq!(
            ok(r#"{"a": 1, "b": 2}"#, |d| {
                obj(d).remove("a");
                d["c"] = json!(3);
            }),
            r#"{"b": 2, "c": 3}"#
        );
    }

    #[test]
    fn a_key_added_where_one_was_removed_takes_its_place() {
        // A renamed key, rebuilt in place, keeps the old one's place and
        // the document's spacing.
        let renamed = |d: &mut Value| {
            let m = std::mem::take(obj(d));
            *obj(d) = m
                .into_iter()
                .map(|(k, v)| (if k == "old" { "new".into() } else { k }, v))
                .collect();
        };
        assert_eq!(
            ok("{\n  \"a\": 1,\n  \"old\": [1.0],\n  \"z\": 2\n}", renamed),
            "{\n  \"a\": 1,\n  \"new\": [1.0],\n  \"z\": 2\n}"
        );
        assert_eq!(
            ok(r#"{"old": 1, "z": 2}"#, renamed),
            r#"{"new": 1, "z": 2}"#
        );
        // Not so at another index: appended, as a key `set` adds.
        assert_eq!(
            ok(r#"{"a": 1, "old": 2}"#, |d| {
                let m = obj(d);
                m.shift_remove("a");
                m.insert("new".into(), json!(3));
            }),
            r#"{"old": 2, "new": 3}"#
        );
    }

    #[test]
    fn a_renamed_key_keeps_its_place() {
        let rename = |d: &mut Value| {
            let old = obj(d).clone();
            *obj(d) = old
                .into_iter()
                .map(|(k, v)| (if k == "b" { "z".into() } else { k }, v))
                .collect();
        };
        assert_eq!(
            ok(r#"{"a": 1, "b": [2, 3], "c": 3}"#, rename),
            r#"{"a": 1, "z": [2,3], "c": 3}"#
        );
        assert_eq!(ok(r#"{"b": 2, "c": 3}"#, rename), r#"{"z": 2, "c": 3}"#);
        assert_eq!(ok(r#"{"a": 1, "b": 2}"#, rename), r#"{"a": 1, "z": 2}"#);
    }

    #[test]
    fn duplicate_keys_in_untouched_parts_are_kept() {
        let doc = r#"{"meta": {"k": 1, "k": 2}, "x": 1}"#;
        assert_eq!(
            ok(doc, |d| d["x"] = json!(2)),
            r#"{"meta": {"k": 1, "k": 2}, "x": 2}"#
        );
        // A duplicated key untouched while a sibling changes.
        let doc = r#"{"k": 1, "y": 1, "k": 2}"#;
        assert_eq!(
            ok(doc, |d| d["y"] = json!(5)),
            r#"{"k": 1, "y": 5, "k": 2}"#
        );
        // Removed: every occurrence goes.
        assert_eq!(
            ok(doc, |d| {
                obj(d).remove("k");
            }),
            r#"{"y": 1}"#
        );
    }

    #[test]
    fn a_change_under_a_duplicated_key_is_refused() {
        let doc = r#"{"a": {"k": 1, "k": 2}}"#;
        assert_eq!(
            edited(doc, |d| d["a"]["k"] = json!(3)),
            Err(SpliceError::DuplicateKey {
                pointer: "/a".into(),
                key: "k".into()
            })
        );
        let doc = r#"{"k": {"x": 1}, "k": {"x": 2}}"#;
        let err = edited(doc, |d| d["k"]["x"] = json!(3)).unwrap_err();
        assert_eq!(
            err,
            SpliceError::DuplicateKey {
                pointer: "/".into(),
                key: "k".into()
            }
        );
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn arrays_of_the_same_length_are_spliced_element_wise() {
        let doc = "[1e400, \"\\u00e9\",\n 3, {\"a\": 1.0}]";
        assert_eq!(
            ok(doc, |d| d[2] = json!(4)),
            "[1e400, \"\\u00e9\",\n 4, {\"a\": 1.0}]"
        );
        assert_eq!(
            ok(doc, |d| d[3]["b"] = json!(null)),
            "[1e400, \"\\u00e9\",\n 3, {\"a\": 1.0,\"b\": null}]"
        );
    }

    #[test]
    fn arrays_that_grow_or_shrink_keep_their_equal_ends() {
        let doc = "[1e400, 2, 3.0]";
        let push = |v: Value| {
            ok(doc, move |d| {
                d.as_array_mut().unwrap_or_else(|| panic!("array")).push(v)
            })
        };
        assert_eq!(push(json!(4)), "[1e400, 2, 3.0, 4]");
        assert_eq!(
            ok(doc, |d| {
                d.as_array_mut()
                    .unwrap_or_else(|| panic!("array"))
                    .remove(1);
            }),
            "[1e400, 3.0]"
        );
        assert_eq!(
            ok(doc, |d| {
                d.as_array_mut()
                    .unwrap_or_else(|| panic!("array"))
                    .remove(0);
            }),
            "[2, 3.0]"
        );
        assert_eq!(
            ok(doc, |d| d
                .as_array_mut()
                .unwrap_or_else(|| panic!("array"))
                .insert(0, json!("x"))),
            "[\"x\", 1e400, 2, 3.0]"
        );
        assert_eq!(
            ok("[]", |d| d
                .as_array_mut()
                .unwrap_or_else(|| panic!("array"))
                .push(json!(1))),
            "[1]"
        );
        assert_eq!(
            ok("[1]", |d| d
                .as_array_mut()
                .unwrap_or_else(|| panic!("array"))
                .clear()),
            "[]"
        );
    }

    #[test]
    fn a_value_of_another_type_is_written_compactly() {
        assert_eq!(
            ok(r#"{"a": [1, 2], "b": 1e400}"#, |d| d["a"] = json!({"x": 1})),
            r#"{"a": {"x":1}, "b": 1e400}"#
        );
        assert_eq!(ok(r#" "s" "#, |d| *d = json!({"t": 1})), r#" {"t":1} "#);
        assert_eq!(ok("null", |d| *d = json!([1])), "[1]");
    }

    #[test]
    fn the_result_always_reads_back_as_the_new_document() {
        let docs = [
            r#"{"a": [1, {"b": 1e400}], "c": "\ud83d\ude00", "d": {"d": {"d": -0.0}}}"#,
            "{\n\t\"x\" : [ ] ,\n\t\"y\" : { }\n}",
            r#"[{"k": 1, "k": 2}, [], "", 0]"#,
        ];
        for doc in docs {
            for new in [
                json!({}),
                json!([]),
                json!({"a": [1], "x": {"y": [null, true]}}),
                json!([{"k": 2}, [], "", 0, 1]),
                json!([{"k": 2}, [1], "", 0]),
            ] {
                match splice(doc, &new) {
                    Ok(out) => assert!(same_value(&v(&out), &new), "{doc} → {out}"),
                    Err(SpliceError::DuplicateKey { .. }) => {}
                    Err(e) => panic!("{doc} → {new}: {e}"),
                }
            }
        }
    }

    #[test]
    fn text_that_is_not_json_is_refused() {
        for bad in ["", "{", "[1,", r#"{"a" 1}"#, "tru", "{} x", r#""abc"#] {
            assert!(
                matches!(splice(bad, &json!(1)), Err(SpliceError::Scan { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn documents_deeper_than_serde_json_reads_are_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(splice(&deep, &json!(1)), Err(SpliceError::TooDeep));
        assert_eq!(nesting_depth(&deep), 200);
        assert_eq!(nesting_depth(r#"{"a": "[[[{{", "b": [{}]}"#), 3);
        assert_eq!(value_depth(&json!({"a": [[1]], "b": 2})), 3);
        assert_eq!(value_depth(&json!(1)), 0);
    }

    #[test]
    fn a_text_that_would_not_read_back_as_the_new_document_is_refused() {
        // The parsed original disagrees with the text: what the splice
        // keeps is not what the new document holds, and the check says so.
        assert_eq!(
            splice_parsed(r#"{"a": 2}"#, &json!({"a": 1}), &json!({"a": 1})),
            Err(SpliceError::Mismatch)
        );
        assert!(matches!(
            splice_parsed(r#"{"a": 1}"#, &json!({"b": 1}), &json!({"a": 2})),
            Err(SpliceError::Scan { .. })
        ));
        // An escape that is not JSON's never splits a character.
        assert!(matches!(
            splice_parsed("\"\\é\"", &json!("x"), &json!("y")),
            Err(SpliceError::Scan { .. })
        ));
    }
}
