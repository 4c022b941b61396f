//! Selectors: the places of a document a rule applies at, chosen by a
//! JSONPath query (RFC 9535, through `serde_json_path`).
//!
//! A selector is parsed once, when the spec is loaded. Run on a document it
//! gives the JSON Pointer of every node it selects: only nodes that exist
//! (a selector never invents a place). The places come in an order safe to
//! write in one after another: deepest and last first, so that removing an
//! array element never moves a place still to come, and a place inside
//! another is handled before the one around it.

use serde_json::Value;
use serde_json_path::JsonPath;
use std::cmp::Reverse;

/// A parsed JSONPath query with its source text (by which it compares).
#[derive(Clone)]
pub struct Selector {
    source: String,
    path: JsonPath,
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Selector").field(&self.source).finish()
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The deepest a selector may nest `[…]` and `(…)`. The JSONPath parser
/// takes time exponential in the nesting of filters (in a fuzzing build,
/// twelve nested filters took over a second, sixteen took sixteen seconds),
/// and a real selector nests two or three.
const MAX_NESTING: usize = 8;

/// How deep `source` nests brackets and parentheses outside string
/// literals, and the quote of a string literal left open at its end.
fn shape(source: &str) -> (usize, Option<char>) {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote = None;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | ')') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    (deepest, quote)
}

/// One step of a selected place, ordered so that array indices compare
/// as numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Index(usize),
    Name(String),
}

impl Selector {
    /// Parses `source`; the error says why it is not a JSONPath query.
    pub fn parse(source: &str) -> Result<Selector, String> {
        let (depth, open_quote) = shape(source);
        if let Some(q) = open_quote {
            // serde_json_path 0.7 panics on a query that ends inside a
            // string's escape (`"\u`); no query ends inside a string.
            return Err(format!(
                "`{source}` is not a JSONPath query (RFC 9535): a string opened with {q} is not closed"
            ));
        }
        if depth > MAX_NESTING {
            return Err(format!(
                "`{source}` nests brackets and parentheses {depth} deep, \
                 more than the {MAX_NESTING} a selector may"
            ));
        }
        let path = JsonPath::parse(source)
            .map_err(|e| format!("`{source}` is not a JSONPath query (RFC 9535): {e}"))?;
        Ok(Selector {
            source: source.to_string(),
            path,
        })
    }

    /// The query as written in the spec.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The JSON Pointers of the places selected in `doc`, each once,
    /// deepest and last first.
    pub fn places(&self, doc: &Value) -> Vec<String> {
        let mut found: Vec<(Vec<Step>, String)> = self
            .path
            .query_located(doc)
            .dedup()
            .into_iter()
            .map(|node| {
                let loc = node.location();
                let steps = loc
                    .iter()
                    .map(|e| match e {
                        serde_json_path::PathElement::Index(i) => Step::Index(*i),
                        serde_json_path::PathElement::Name(n) => Step::Name((*n).to_string()),
                    })
                    .collect();
                (steps, loc.to_json_pointer())
            })
            .collect();
        found.sort_by(|a, b| Reverse(&a.0).cmp(&Reverse(&b.0)));
        found.into_iter().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_existing_places_deepest_and_last_first() {
        let doc = json!({"nodes": [
            {"type": "x", "title": "a"},
            {"type": "y", "title": "b"},
            {"type": "x"},
            {"type": "x", "title": "d"},
        ]});
        let s = Selector::parse("$.nodes[?@.type == 'x'].title").unwrap();
        assert_eq!(s.places(&doc), ["/nodes/3/title", "/nodes/0/title"]);
        let s = Selector::parse("$.nodes[*]").unwrap();
        assert_eq!(
            s.places(&doc),
            ["/nodes/3", "/nodes/2", "/nodes/1", "/nodes/0"]
        );
        let s = Selector::parse("$..title").unwrap();
        assert_eq!(s.places(&doc).len(), 3);
        let s = Selector::parse("$.nodes[10]").unwrap();
        assert!(s.places(&doc).is_empty());
    }

    #[test]
    fn nested_places_come_before_their_parents_and_indices_compare_as_numbers() {
        let doc = json!({"a": {"b": {"c": 1}}, "l": (0..12).collect::<Vec<_>>()});
        let s = Selector::parse("$..*").unwrap();
        let places = s.places(&doc);
        let pos = |p: &str| places.iter().position(|x| x == p).unwrap();
        assert!(pos("/a/b/c") < pos("/a/b") && pos("/a/b") < pos("/a"));
        assert!(pos("/l/11") < pos("/l/2"));
    }

    #[test]
    fn wildcards_over_object_members_escape_their_names() {
        let doc = json!({"m": {"a/b": {"v": 1}, "c~d": {"v": 2}}});
        let s = Selector::parse("$.m.*").unwrap();
        let mut places = s.places(&doc);
        places.sort();
        assert_eq!(places, ["/m/a~1b", "/m/c~0d"]);
        for p in places {
            assert!(doc.pointer(&p).is_some(), "{p}");
        }
    }

    #[test]
    fn a_query_that_does_not_parse_is_refused() {
        assert!(Selector::parse("nodes[*]").is_err());
        assert!(Selector::parse("$.nodes[?@.type ==]").is_err());
    }

    #[test]
    fn a_deeply_nested_query_is_refused_without_parsing() {
        // Sixteen nested filters, as the fuzzer found: parsing this took
        // sixteen seconds before the nesting was bounded.
        let nested = format!("$.l{}", "[?$..[?@.t".repeat(8));
        let e = Selector::parse(&nested).unwrap_err();
        assert!(e.contains("16 deep"), "{e}");
        let closed = format!("$.l{}{}", "[?@.t".repeat(9), "]".repeat(9));
        assert!(Selector::parse(&closed).is_err());
        // Brackets inside string literals do not count.
        let s = Selector::parse("$.l[?@.n == '[[[[[[[[[[' && @.m == \"((((((((((\\\"\"]");
        assert!(s.is_ok(), "{s:?}");
        let s = Selector::parse(&format!("$.l{}{}", "[?@.t".repeat(8), "]".repeat(8)));
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn a_query_ending_inside_a_string_escape_is_refused_not_a_panic() {
        // As the fuzzer found: serde_json_path panics on this one.
        let e = Selector::parse("$..[?\", \\u").unwrap_err();
        assert!(e.contains("not closed"), "{e}");
        assert!(Selector::parse("$['a").is_err());
        assert!(Selector::parse("$[?@.a == 'x\\'']").is_ok());
    }

    #[test]
    fn filters_compare_numbers_by_value() {
        let doc: Value =
            serde_json::from_str(r#"{"l":[{"n":1},{"n":2},{"n":1.0},{"n":"1"}]}"#).unwrap();
        let s = Selector::parse("$.l[?@.n == 1]").unwrap();
        assert_eq!(s.places(&doc), ["/l/2", "/l/0"]);
        let s = Selector::parse("$.l[?@.n > 1]").unwrap();
        assert_eq!(s.places(&doc), ["/l/1"]);
    }
}
