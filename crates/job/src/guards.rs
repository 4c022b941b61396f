//! Guards: checks that skip a whole group (evaluated by the coordinator on the
//! group's parameters) or a single row (evaluated by the mapper on the row's
//! documents). A guard that fails skips, with its reason; it never errors.

use serde_json::Value;

/// What a guard requires of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The value exists and is not null.
    Present,
    /// The value exists, is not null, and is not a blank string.
    NotBlank,
    /// As `NotBlank`, and it does not start with the prefix (a placeholder
    /// default such as `PLACEHOLDER - `).
    NotPrefix(String),
}

impl Check {
    /// True when `value` passes. `None` is a missing value.
    pub fn passes(&self, value: Option<&Value>) -> bool {
        let v = match value {
            None | Some(Value::Null) => return false,
            Some(v) => v,
        };
        match self {
            Check::Present => true,
            Check::NotBlank => !is_blank(v),
            Check::NotPrefix(p) => {
                !is_blank(v)
                    && !matches!(v, Value::String(s) if s.trim_start().starts_with(p.trim_start()))
            }
        }
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
