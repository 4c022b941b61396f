//! Guards: checks that skip a whole group (evaluated by the coordinator on the
//! group's parameters) or a single row (evaluated by the mapper on the row's
//! documents). A guard that fails skips, with its reason; it never errors.
//! The same checks decide a rule's `when` conditions (see [`Condition`]).
//!
//! JSON `null` and an absent key are different things to some checks and
//! the same to others, on purpose: `present` (and `not_blank`,
//! `not_prefix`) want a usable value, so `null` fails them as absence does;
//! `exists` counts any value, `null` included; `absent` wants the key gone;
//! `null` wants the key there holding `null`.

use serde_json::Value;

use crate::equality::same_value;

/// What a guard requires of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The value exists and is not null.
    Present,
    /// The value exists (`null` included).
    Exists,
    /// There is no value (the key or element is missing).
    Absent,
    /// The value exists and is `null`.
    Null,
    /// The value exists and equals this one (numbers by decimal value,
    /// object keys in any order).
    Equals(Value),
    /// The value is absent or differs from this one.
    NotEquals(Value),
    /// The value exists, is not null, and is not a blank string.
    NotBlank,
    /// As `NotBlank`, and it does not start with the prefix (a placeholder
    /// default such as `PLACEHOLDER - `).
    NotPrefix(String),
}

impl Check {
    /// True when `value` passes. `None` is a missing value.
    pub fn passes(&self, value: Option<&Value>) -> bool {
        match self {
            Check::Exists => return value.is_some(),
            Check::Absent => return value.is_none(),
            Check::Null => return matches!(value, Some(Value::Null)),
            Check::Equals(x) => return value.is_some_and(|v| same_value(v, x)),
            Check::NotEquals(x) => return !value.is_some_and(|v| same_value(v, x)),
            Check::Present | Check::NotBlank | Check::NotPrefix(_) => {}
        }
        let v = match value {
            None | Some(Value::Null) => return false,
            Some(v) => v,
        };
        match self {
            Check::NotBlank => !is_blank(v),
            Check::NotPrefix(p) => {
                !is_blank(v)
                    && !matches!(v, Value::String(s) if s.trim_start().starts_with(p.trim_start()))
            }
            _ => true,
        }
    }
}

/// A rule's condition: `check` on the value at `path` of the rule's
/// column, relative to each place the rule applies at (the document root
/// without a selector). A rule applies at a place only when all of its
/// conditions pass there.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub path: String,
    pub check: Check,
}

impl Condition {
    /// Whether the condition holds at `place` (a JSON Pointer) of `doc`.
    pub fn holds(&self, doc: &Value, place: &str) -> bool {
        let at = if place.is_empty() {
            doc.pointer(&self.path)
        } else {
            doc.pointer(&format!("{place}{}", self.path))
        };
        self.check.passes(at)
    }
}

fn is_blank(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn present() {
        assert!(!Check::Present.passes(None));
        assert!(!Check::Present.passes(Some(&Value::Null)));
        assert!(Check::Present.passes(Some(&json!(""))));
        assert!(Check::Present.passes(Some(&json!(0))));
    }

    #[test]
    fn null_and_absence_are_told_apart() {
        let null = Some(&Value::Null);
        assert!(Check::Exists.passes(null) && !Check::Exists.passes(None));
        assert!(Check::Absent.passes(None) && !Check::Absent.passes(null));
        assert!(Check::Null.passes(null) && !Check::Null.passes(None));
        assert!(!Check::Null.passes(Some(&json!(0))));
        assert!(
            !Check::Present.passes(null),
            "present means present and not null"
        );
        assert!(Check::Exists.passes(Some(&json!(false))));
    }

    #[test]
    fn equals_compares_by_value() {
        let one: Value = serde_json::from_str("1.0").unwrap();
        let eq = Check::Equals(json!(1));
        assert!(eq.passes(Some(&one)));
        assert!(!eq.passes(None) && !eq.passes(Some(&json!("1"))));
        let ne = Check::NotEquals(json!({"a": 1, "b": 2}));
        assert!(!ne.passes(Some(&json!({"b": 2, "a": 1}))));
        assert!(ne.passes(None), "an absent value differs");
        assert!(ne.passes(Some(&Value::Null)));
    }

    #[test]
    fn a_condition_reads_relative_to_its_place() {
        let doc = json!({"nodes": [{"type": "x", "t": null}, {"type": "y"}]});
        let c = Condition {
            path: "/type".into(),
            check: Check::Equals(json!("x")),
        };
        assert!(c.holds(&doc, "/nodes/0") && !c.holds(&doc, "/nodes/1"));
        let c = Condition {
            path: "/nodes/0/t".into(),
            check: Check::Null,
        };
        assert!(c.holds(&doc, ""));
    }

    #[test]
    fn not_blank() {
        assert!(!Check::NotBlank.passes(Some(&json!(""))));
        assert!(!Check::NotBlank.passes(Some(&json!("   \t"))));
        assert!(!Check::NotBlank.passes(None));
        assert!(Check::NotBlank.passes(Some(&json!("Data Science"))));
        assert!(Check::NotBlank.passes(Some(&json!([]))));
    }

    #[test]
    fn not_prefix_catches_placeholders() {
        let c = Check::NotPrefix("PLACEHOLDER - ".into());
        assert!(!c.passes(Some(&json!("PLACEHOLDER - Certificate"))));
        assert!(!c.passes(Some(&json!("  PLACEHOLDER - Certificate"))));
        assert!(!c.passes(Some(&json!(""))), "blank is refused too");
        assert!(c.passes(Some(&json!("Placeholder theory"))));
        assert!(c.passes(Some(&json!("Real title"))));
    }
}
