//! Job parameters: `[params.NAME]` declared in a spec, with a type and an
//! optional default, given values with `--param NAME=VALUE`, and put into
//! the spec's text wherever it says `${NAME}`.
//!
//! Resolution happens on the text, before the spec is parsed, so a
//! parameter can stand anywhere: in a table name of a query, in a rule's
//! path, in a StreamField block name. What it yields is the spec as it will
//! run: every `${NAME}` replaced, and each parameter's `value` written into
//! its `[params.NAME]` table. That text is what the ledger records and what
//! the spec hash is taken of, so:
//! - mappers on other hosts run with the same values without being told;
//! - a dry run with other values is another spec to the review gate, and a
//!   commit relies only on a dry run of the same values;
//! - resolving a resolved text again changes nothing (its values are in it,
//!   and no `${` is left), so a recorded spec keeps its hash.
//!
//! Values are checked against their type before they go into the text. An
//! `identifier` is a plain SQL/JSON name (`[A-Za-z_][A-Za-z0-9_]*`); a
//! `string` holds no quote, backslash, `$`, backtick or control character,
//! so it can sit inside a TOML string and an SQL literal unescaped. Neither
//! can break out of where the spec puts it.

use std::collections::BTreeMap;

use serde_json::Value;
use toml_edit::{DocumentMut, Item};

use crate::spec_error::SpecError;

/// The kinds of value a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A plain name: a table, a column, a JSON key, a block name.
    Identifier,
    /// Text without quotes, backslashes, `$`, backticks or control characters.
    String,
    Integer,
    Number,
    Boolean,
}

impl ParamType {
    fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "identifier" => ParamType::Identifier,
            "string" => ParamType::String,
            "integer" => ParamType::Integer,
            "number" => ParamType::Number,
            "boolean" => ParamType::Boolean,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Identifier => "identifier",
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }

    /// A value given on the command line, as this type.
    fn value_of_text(self, text: &str) -> Result<Value, String> {
        let v = match self {
            ParamType::Identifier | ParamType::String => Value::String(text.to_string()),
            ParamType::Integer => Value::from(
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("`{text}` is not an integer"))?,
            ),
            ParamType::Number => {
                let n = text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| format!("`{text}` is not a number"))?;
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| format!("`{text}` is not a number"))?
            }
            ParamType::Boolean => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("`{text}` is not a boolean (true or false)")),
            },
        };
        self.check(&v)?;
        Ok(v)
    }

    /// A value written in the spec (a default, or a recorded value).
    fn value_of_toml(self, item: &toml_edit::Value) -> Result<Value, String> {
        let v = match (self, item) {
            (ParamType::Identifier | ParamType::String, toml_edit::Value::String(s)) => {
                Value::String(s.value().clone())
            }
            (ParamType::Integer, toml_edit::Value::Integer(i)) => Value::from(*i.value()),
            (ParamType::Number, toml_edit::Value::Integer(i)) => Value::from(*i.value()),
            (ParamType::Number, toml_edit::Value::Float(f)) => {
                serde_json::Number::from_f64(*f.value())
                    .map(Value::Number)
                    .ok_or_else(|| "is not a finite number".to_string())?
            }
            (ParamType::Boolean, toml_edit::Value::Boolean(b)) => Value::Bool(*b.value()),
            _ => return Err(format!("is not of type {}", self.as_str())),
        };
        self.check(&v)?;
        Ok(v)
    }

    fn check(self, v: &Value) -> Result<(), String> {
        match (self, v) {
            (ParamType::Identifier, Value::String(s)) => {
                let mut chars = s.chars();
                let ok = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok || s.len() > 63 {
                    return Err(format!(
                        "`{s}` is not an identifier (a letter or `_`, then letters, digits or `_`, at most 63)"
                    ));
                }
            }
            (ParamType::String, Value::String(s)) => {
                if let Some(c) = s
                    .chars()
                    .find(|c| matches!(c, '\'' | '"' | '\\' | '$' | '`') || c.is_control())
                {
                    return Err(format!(
                        "`{}` holds {c:?}, which a string parameter may not hold (no quotes, backslashes, `$`, backticks or control characters)",
                        s.escape_debug()
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One parameter of a resolved spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: ParamType,
    pub value: Value,
    pub description: String,
}

impl Param {
    /// The value as it goes into the spec's text and into `status`.
    pub fn text(&self) -> String {
        match &self.value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// `NAME=VALUE`, as given to `--param`.
pub fn parse_assignment(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.to_string())),
        _ => Err(format!("--param takes NAME=VALUE, got `{s}`")),
    }
}

/// The `name=value` pairs of a spec's parameters, for one line of output.
pub fn describe(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| format!("{}={}", p.name, p.text()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name=value` pairs of parameters as the ledger's documents hold them
/// (`status --json`, the report's JSON), for one line of output.
pub fn describe_values(values: &BTreeMap<String, Value>) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={}", text_of(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resolves a spec's parameters: the values from `overrides` (`--param`),
/// else those recorded in the text, else the defaults. Returns the text the
/// run will use, and the parameters with their values.
pub fn resolve(
    text: &str,
    overrides: &[(String, String)],
) -> Result<(String, Vec<Param>), SpecError> {
    let declares = text.contains("params");
    if !declares && !text.contains("${") && overrides.is_empty() {
        return Ok((text.to_string(), Vec::new()));
    }
    // A text that is not TOML is for the spec's own parser to refuse,
    // with its own message and line.
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        return Ok((text.to_string(), Vec::new()));
    };
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (n, v) in overrides {
        if given.insert(n.as_str(), v.as_str()).is_some() {
            return Err(SpecError::new(
                format!("--param {n}"),
                "is given more than once",
            ));
        }
    }
    let mut params = Vec::new();
    let mut changed = false;
    match doc.get_mut("params") {
        None => {}
        Some(Item::Table(table)) => {
            for (name, item) in table.iter_mut() {
                let name = name.get().to_string();
                let field = format!("params.{name}");
                let p = resolve_one(&name, &field, item, given.remove(name.as_str()))?;
                changed |= p.1;
                params.push(p.0);
            }
        }
        Some(_) => {
            return Err(SpecError::new(
                "params",
                "must be a table of parameters, e.g. [params.table] with type = \"identifier\"",
            ))
        }
    }
    if let Some((n, _)) = given.into_iter().next() {
        let declared = if params.is_empty() {
            "it declares none".to_string()
        } else {
            format!(
                "it declares {}",
                params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(SpecError::new(
            format!("--param {n}"),
            format!("the job has no parameter `{n}` ({declared})"),
        ));
    }
    let text = if changed {
        doc.to_string()
    } else {
        text.to_string()
    };
    Ok((substitute(&text, &params)?, params))
}

/// One `[params.NAME]` table: its value, and whether the text must change
/// to record it.
fn resolve_one(
    name: &str,
    field: &str,
    item: &mut Item,
    given: Option<&str>,
) -> Result<(Param, bool), SpecError> {
    ParamType::Identifier
        .check(&Value::String(name.to_string()))
        .map_err(|m| SpecError::new(field, format!("the parameter's name: {m}")))?;
    let Some(table) = item.as_table_like_mut() else {
        return Err(SpecError::new(
            field,
            "must be a table with `type` and optionally `default` and `description`",
        ));
    };
    for (k, _) in table.iter() {
        if !matches!(k, "type" | "default" | "description" | "value") {
            return Err(SpecError::new(
                format!("{field}.{k}"),
                "unknown field (expected type, default, description)",
            ));
        }
    }
    let ty = match table.get("type").and_then(Item::as_str) {
        Some(t) => ParamType::parse(t).ok_or_else(|| {
            SpecError::new(
                format!("{field}.type"),
                format!(
                    "unknown type `{t}` (expected identifier, string, integer, number or boolean)"
                ),
            )
        })?,
        None => {
            return Err(SpecError::new(
                format!("{field}.type"),
                "is missing (identifier, string, integer, number or boolean)",
            ))
        }
    };
    let description = table
        .get("description")
        .and_then(Item::as_str)
        .unwrap_or_default()
        .to_string();
    let typed = |key: &str| -> Result<Option<Value>, SpecError> {
        match table.get(key) {
            None => Ok(None),
            Some(i) => match i.as_value() {
                Some(v) => ty
                    .value_of_toml(v)
                    .map(Some)
                    .map_err(|m| SpecError::new(format!("{field}.{key}"), m)),
                None => Err(SpecError::new(
                    format!("{field}.{key}"),
                    format!("is not of type {}", ty.as_str()),
                )),
            },
        }
    };
    let default = typed("default")?;
    let recorded = typed("value")?;
    let given = given
        .map(|t| {
            ty.value_of_text(t)
                .map_err(|m| SpecError::new(format!("--param {name}"), m))
        })
        .transpose()?;
    if let (Some(g), Some(r)) = (&given, &recorded) {
        if g != r {
            return Err(SpecError::new(
                format!("--param {name}"),
                format!(
                    "the run was planned with {name}={}; its parameters cannot change",
                    text_of(r)
                ),
            ));
        }
    }
    let value = match given.or(recorded.clone()).or(default) {
        Some(v) => v,
        None => {
            return Err(SpecError::new(
                field,
                format!("has no default: give --param {name}=VALUE"),
            ))
        }
    };
    let changed = recorded.as_ref() != Some(&value);
    if changed {
        let v: toml_edit::Value = match &value {
            Value::String(s) => s.as_str().into(),
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap_or_default().into(),
            },
            _ => text_of(&value).into(),
        };
        table.insert("value", Item::Value(v));
    }
    Ok((
        Param {
            name: name.to_string(),
            ty,
            value,
            description,
        },
        changed,
    ))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `${NAME}` with its parameter's value.
fn substitute(text: &str, params: &[Param]) -> Result<String, SpecError> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(SpecError::new(
                "params",
                format!(
                    "`${{` without a closing `}}` (line {})",
                    line_of(text, text.len() - after.len())
                ),
            ));
        };
        let name = after[..end].trim();
        let Some(p) = params.iter().find(|p| p.name == name) else {
            return Err(SpecError::new(
                format!("${{{name}}}"),
                format!(
                    "names no parameter (line {}): declare it as [params.{name}] with a type",
                    line_of(text, text.len() - after.len())
                ),
            ));
        };
        out.push_str(&p.text());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"name = "rename-${old}"
query = "SELECT id FROM ${table} LIMIT ${limit}"

[params.table]
type = "identifier"
default = "wagtailcore_revision"
description = "the table"

[params.old]
type = "identifier"

[params.limit]
type = "integer"
default = 10
"#;

    fn over(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn values_go_into_the_text_and_are_recorded_in_it() {
        let (text, params) = resolve(SPEC, &over(&[("old", "institute_text")])).unwrap();
        assert!(text.contains("name = \"rename-institute_text\""), "{text}");
        assert!(text.contains("SELECT id FROM wagtailcore_revision LIMIT 10"));
        assert!(!text.contains("${"));
        assert_eq!(
            describe(&params),
            "table=wagtailcore_revision old=institute_text limit=10"
        );
        assert_eq!(params[1].ty, ParamType::Identifier);
        assert_eq!(params[0].description, "the table");
        // The recorded text resolves to itself: its hash never changes.
        let (again, same) = resolve(&text, &[]).unwrap();
        assert_eq!(again, text);
        assert_eq!(same, params);
        // Given the same value again (a resume, a revert) is fine; another is not.
        assert_eq!(
            resolve(&text, &over(&[("old", "institute_text")]))
                .unwrap()
                .0,
            text
        );
        let e = resolve(&text, &over(&[("old", "other")])).unwrap_err();
        assert_eq!(e.field, "--param old");
        assert!(e.message.contains("planned with old=institute_text"), "{e}");
    }

    #[test]
    fn other_values_make_another_text() {
        let a = resolve(SPEC, &over(&[("old", "a")])).unwrap().0;
        let b = resolve(SPEC, &over(&[("old", "b")])).unwrap().0;
        let c = resolve(SPEC, &over(&[("old", "a"), ("limit", "11")]))
            .unwrap()
            .0;
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_spec_without_parameters_is_left_as_it_is() {
        let text = "name = \"x\"\n# a comment\n";
        assert_eq!(resolve(text, &[]).unwrap(), (text.to_string(), vec![]));
        let e = resolve(text, &over(&[("x", "1")])).unwrap_err();
        assert_eq!(e.field, "--param x");
        assert!(e.message.contains("declares none"), "{e}");
    }

    #[test]
    fn bad_input_names_the_parameter() {
        let err = |o: &[(&str, &str)]| resolve(SPEC, &over(o)).unwrap_err();
        let e = err(&[]);
        assert_eq!(e.field, "params.old");
        assert!(e.message.contains("--param old=VALUE"), "{e}");
        let e = err(&[("old", "a b")]);
        assert_eq!(e.field, "--param old");
        assert!(e.message.contains("not an identifier"), "{e}");
        let e = err(&[("old", "x; DROP TABLE t")]);
        assert_eq!(e.field, "--param old");
        let e = err(&[("old", "a"), ("limit", "ten")]);
        assert_eq!(e.field, "--param limit");
        let e = err(&[("old", "a"), ("nope", "1")]);
        assert_eq!(e.field, "--param nope");
        assert!(e.message.contains("declares table, old, limit"), "{e}");
        let e = err(&[("old", "a"), ("old", "b")]);
        assert!(e.message.contains("more than once"), "{e}");
        let e = resolve("x = \"${nobody}\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "${nobody}");
        assert!(e.message.contains("line 1"), "{e}");
        let e = resolve("[params.a]\ntype = \"text\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "params.a.type");
        let e = resolve("[params.a]\ntype = \"integer\"\ndefault = \"1\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "params.a.default");
        let e = resolve("[params.a]\ntype = \"integer\"\nbogus = 1\n", &[]).unwrap_err();
        assert_eq!(e.field, "params.a.bogus");
        let e = resolve(
            "x = \"${a\"\n[params.a]\ntype = \"string\"\n",
            &over(&[("a", "v")]),
        )
        .unwrap_err();
        assert!(e.message.contains("without a closing"), "{e}");
    }

    #[test]
    fn strings_cannot_break_out_of_a_literal() {
        let spec = "[params.s]\ntype = \"string\"\n";
        for bad in ["it's", "say \"hi\"", "a\\b", "$1", "a`b", "a\nb"] {
            let e = resolve(spec, &over(&[("s", bad)])).unwrap_err();
            assert_eq!(e.field, "--param s", "{bad}");
        }
        let (text, p) = resolve(spec, &over(&[("s", "Data Science – MicroMasters")])).unwrap();
        assert_eq!(p[0].text(), "Data Science – MicroMasters");
        assert!(
            text.contains("value = \"Data Science – MicroMasters\""),
            "{text}"
        );
    }

    #[test]
    fn numbers_and_booleans() {
        let spec = "[params.n]\ntype = \"number\"\ndefault = 1.5\n[params.b]\ntype = \"boolean\"\ndefault = false\n";
        let (_, p) = resolve(spec, &over(&[("b", "true")])).unwrap();
        assert_eq!(describe(&p), "n=1.5 b=true");
        assert!(resolve(spec, &over(&[("n", "inf")])).is_err());
        assert!(resolve(spec, &over(&[("b", "yes")])).is_err());
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert_eq!(
            parse_assignment("a=").unwrap(),
            ("a".to_string(), String::new())
        );
        assert!(parse_assignment("=b").is_err());
        assert!(parse_assignment("ab").is_err());
    }
}
