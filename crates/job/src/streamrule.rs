//! Rules over StreamFields and over JSON held inside strings: the
//! `op = "streamfield"` rule and the `json_string = true` form of any rule.
//!
//! - [`Op::Stream`] applies one of Wagtail's StreamField migration
//!   operations ([`crate::streamfield`]) to the stream at a JSON Pointer of
//!   the column's document (`""`: the whole column, as in a page table's
//!   `jsonb` StreamField column).
//! - [`Op::InString`] applies a rule inside the JSON a string holds (a
//!   StreamField inside a Wagtail revision, which `json.dumps` wrote into the
//!   revision's JSON): the string is decoded with [`crate::pyjson`], the
//!   inner rule applied to the decoded value, and the value encoded back in
//!   the style the string was written in. When the decoded value does not
//!   change (compared as JSON values), the string is left as it was, byte
//!   for byte.
//!
//! Both are compiled once, when the spec is loaded: the operation and its
//! block path are parsed then, so a typo is a load-time error naming the
//! rule's field. A value of the wrong shape met while running (a string that
//! is not JSON, a block path meeting a string) is an error of that row only.
//!
//! Blocks an operation creates get UUID4 ids derived from the stream as read
//! (drawn from a hash of the stream, the operation and the block's place
//! among those created), so that evaluating a row twice gives the same result.
//!
//! A missing value (the pointer names nothing) or a JSON null is nothing to
//! migrate: the row is unchanged by the rule, as Wagtail's own migration
//! leaves a revision that lacks the field.

use serde_json::{Map, Value};

use crate::edit::{remove, set};
use crate::equality::same_value;
use crate::pyjson;
use crate::rule::Op;
use crate::spec_error::SpecError;
use crate::streamfield::{apply_changes_to_raw_data, BlockPath, StreamOperation};

/// The rule fields that carry a stream operation's arguments.
pub const ARGUMENT_FIELDS: [&str; 9] = [
    "old_name",
    "new_name",
    "name",
    "block_name",
    "list_block_name",
    "block_names",
    "stream_block_name",
    "new_value",
    "struct_block_name",
];

/// Compiles an `op = "streamfield"` rule at `path`: `operation` (one of
/// [`crate::streamfield::OPERATION_NAMES`]), `block_path` (Wagtail's dotted
/// syntax) and the operation's arguments. Errors name the rule's field
/// (`field` is the rule's, e.g. `targets[0].rules[1]`).
pub fn compile(
    field: &str,
    path: &str,
    operation: Option<&str>,
    block_path: Option<&str>,
    args: &Map<String, Value>,
) -> Result<Op, SpecError> {
    let operation = operation.ok_or_else(|| {
        SpecError::new(
            format!("{field}.operation"),
            format!(
                "op `streamfield` needs an `operation` (one of {})",
                crate::streamfield::OPERATION_NAMES.join(", ")
            ),
        )
    })?;
    let operation = StreamOperation::parse(operation, args).map_err(|m| {
        // Name the argument the message is about, else the operation.
        let arg = ARGUMENT_FIELDS
            .iter()
            .find(|a| m.contains(&format!("argument `{a}`")));
        let at = arg.map_or("operation", |a| *a);
        SpecError::new(format!("{field}.{at}"), m)
    })?;
    let block_path = BlockPath::parse(block_path.unwrap_or(""))
        .map_err(|m| SpecError::new(format!("{field}.block_path"), m))?;
    Ok(Op::Stream {
        path: path.to_string(),
        operation: Box::new(operation),
        block_path,
    })
}

/// Wraps a compiled rule for `json_string = true`: the rule's `path` names
/// the string, and the rule itself runs inside the decoded value at
/// `inner_path` (for a `streamfield` rule, the stream's pointer inside it).
pub fn in_string(field: &str, op: Op, inner_path: &str) -> Result<Op, SpecError> {
    let (path, inner) = match op {
        Op::Set { path, value } => (
            path,
            Op::Set {
                path: inner_path.to_string(),
                value,
            },
        ),
        Op::Remove { path } => {
            if inner_path.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.inner_path"),
                    "cannot remove the whole JSON the string holds; use op `set` with a value",
                ));
            }
            (
                path,
                Op::Remove {
                    path: inner_path.to_string(),
                },
            )
        }
        Op::Stream {
            path,
            operation,
            block_path,
        } => (
            path,
            Op::Stream {
                path: inner_path.to_string(),
                operation,
                block_path,
            },
        ),
        Op::Rename { path, to, on_both } => {
            if inner_path.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.inner_path"),
                    "a rename inside a JSON string needs `inner_path`, the key to rename",
                ));
            }
            (
                path,
                Op::Rename {
                    path: inner_path.to_string(),
                    to,
                    on_both,
                },
            )
        }
        Op::Copy { path, column, from } => {
            if column.is_some() {
                return Err(SpecError::new(
                    format!("{field}.from_column"),
                    "a copy inside a JSON string reads the same JSON: leave out `from_column`",
                ));
            }
            // `path` names the string; `from` and `inner_path` are inside it.
            (
                path,
                Op::Copy {
                    path: inner_path.to_string(),
                    column: None,
                    from,
                },
            )
        }
        Op::Jq { path, filter } => (
            path,
            Op::Jq {
                path: inner_path.to_string(),
                filter,
            },
        ),
        Op::InString { .. } => {
            return Err(SpecError::new(
                format!("{field}.json_string"),
                "JSON inside a string inside a string is not supported",
            ))
        }
    };
    Ok(Op::InString {
        path,
        inner: Box::new(inner),
    })
}

/// Applies a stream operation to the stream at `path` of `doc`.
pub fn apply_stream(
    doc: &mut Value,
    path: &str,
    operation: &StreamOperation,
    block_path: &BlockPath,
) -> Result<(), String> {
    let Some(raw) = doc.pointer_mut(path) else {
        return Ok(());
    };
    if raw.is_null() {
        return Ok(());
    }
    let mut ids = block_ids(raw, operation);
    apply_changes_to_raw_data(raw, block_path, operation, &mut ids)
        .map(|_| ())
        .map_err(|e| format!("`{path}`: {e}"))
}

/// The ids of the blocks an operation creates in a stream: UUID4s (random
/// bits, version 4) whose bits are drawn from a hash of the stream as read,
/// the operation, and the block's place among those created. The same
/// stream gets the same ids on every evaluation: a dry run shows the ids the
/// commit writes, a revert that replays the run on a whole before-image
/// finds what the run wrote, and a page and its revisions holding the same
/// stream get the same new blocks. Blocks of one stream never share an id.
fn block_ids<'a>(raw: &Value, operation: &StreamOperation) -> impl FnMut() -> String + 'a {
    use sha2::{Digest, Sha256};
    let seed: [u8; 32] = Sha256::new()
        .chain_update(operation.name().as_bytes())
        .chain_update([0])
        .chain_update(raw.to_string().as_bytes())
        .finalize()
        .into();
    let mut n: u64 = 0;
    move || {
        n += 1;
        let digest = Sha256::new()
            .chain_update(seed)
            .chain_update(n.to_le_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// Applies `inner` to the JSON the string at `path` of `doc` holds; `value`
/// is what an inner `set` writes (resolved by the caller, which sees the
/// row's other documents and parameters).
pub fn apply_in_string(
    doc: &mut Value,
    path: &str,
    inner: &Op,
    value: Option<Value>,
) -> Result<(), String> {
    let Some(at) = doc.pointer_mut(path) else {
        return Ok(());
    };
    let text = match at {
        Value::Null => return Ok(()),
        Value::String(s) => s,
        other => {
            return Err(format!(
                "`{path}` should be a string holding JSON, found {}",
                kind(other)
            ))
        }
    };
    let (decoded, style) = pyjson::decode(text).map_err(|e| format!("`{path}`: {e}"))?;
    let mut new = decoded.clone();
    let inside = |e: String| format!("inside the JSON string at `{path}`: {e}");
    match inner {
        Op::Set { path: p, .. } => {
            let v = value.ok_or_else(|| inside("no value to set".into()))?;
            set(&mut new, p, v).map_err(inside)?
        }
        Op::Remove { path: p } => remove(&mut new, p).map_err(inside)?,
        Op::Stream {
            path: p,
            operation,
            block_path,
        } => apply_stream(&mut new, p, operation, block_path).map_err(inside)?,
        Op::Rename {
            path: p,
            to,
            on_both,
        } => crate::edit::rename(&mut new, p, to, *on_both).map_err(inside)?,
        Op::Copy { path: p, from, .. } => {
            if let Some(v) = new.pointer(from).cloned() {
                set(&mut new, p, v).map_err(inside)?
            }
        }
        Op::Jq { path: p, filter } => {
            if let Some(old) = new.pointer(p) {
                let v = filter
                    .run(old)
                    .map_err(|e| inside(format!("jq at `{p}`: {e}")))?;
                set(&mut new, p, v).map_err(inside)?
            }
        }
        Op::InString { .. } => return Err(inside("nested JSON strings are not supported".into())),
    }
    if !same_value(&decoded, &new) {
        *text = pyjson::encode(&new, &style);
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::{evaluate_revert, evaluate_row, BeforeImage, RowOutcome};
    use crate::spec::JobSpec;
    use crate::testing::{doc_image, rows_spec, Row};
    use serde_json::{json, Value};

    fn spec(rule: &str) -> Result<JobSpec, crate::spec::SpecError> {
        JobSpec::parse(&rows_spec("", &format!("[[targets.rules]]\n{rule}")))
    }

    const RENAME: &str = r#"op = "streamfield"
path = ""
operation = "rename_struct_children"
block_path = "signatory"
old_name = "title_2"
new_name = "affiliation""#;

    fn eval(spec: &JobSpec, doc: &str, normalised: bool) -> RowOutcome {
        let row = Row::doc(doc).normalised(if normalised { &["doc"] } else { &[] });
        evaluate_row(&spec.targets[0], &row.input(), None).outcome
    }

    fn changed(o: RowOutcome) -> Value {
        match o {
            RowOutcome::Changed(m) => serde_json::from_str(m["doc"].as_deref().unwrap()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    const STREAM: &str = r#"[{"type": "signatory", "value": {"name": "Ana", "title_1": "Dean", "title_2": "MIT", "organization": "MITx"}, "id": "a1"}, {"type": "other", "value": {"title_2": "keep"}, "id": "b2"}]"#;

    #[test]
    fn a_streamfield_rule_renames_struct_children_of_a_column() {
        let s = spec(RENAME).unwrap();
        for normalised in [true, false] {
            let after = changed(eval(&s, STREAM, normalised));
            assert_eq!(
                after[0]["value"],
                json!({"name": "Ana", "title_1": "Dean", "affiliation": "MIT", "organization": "MITx"})
            );
            assert_eq!(after[1]["value"], json!({"title_2": "keep"}));
            assert_eq!(after[0]["id"], "a1");
            let again = serde_json::to_string(&after).unwrap();
            assert_eq!(eval(&s, &again, normalised), RowOutcome::Unchanged);
        }
    }

    #[test]
    fn rename_copy_and_jq_run_inside_a_json_string() {
        let doc = json!({"settings": r#"{"colour": "red", "size": 2}"#}).to_string();
        let rename = spec(
            "op = \"rename\"\npath = \"/settings\"\njson_string = true\ninner_path = \"/colour\"\nto = \"color\"",
        )
        .unwrap();
        let after = changed(eval(&rename, &doc, true));
        assert_eq!(after["settings"], r#"{"color": "red", "size": 2}"#);
        let again = serde_json::to_string(&after).unwrap();
        assert_eq!(eval(&rename, &again, true), RowOutcome::Unchanged);
        let copy = spec(
            "op = \"copy\"\npath = \"/settings\"\njson_string = true\ninner_path = \"/was\"\nfrom = \"/colour\"",
        )
        .unwrap();
        let after = changed(eval(&copy, &doc, true));
        assert_eq!(
            after["settings"],
            r#"{"colour": "red", "size": 2, "was": "red"}"#
        );
        let jq = spec(
            "op = \"jq\"\npath = \"/settings\"\njson_string = true\ninner_path = \"/size\"\nfilter = \". * 10\"",
        )
        .unwrap();
        let after = changed(eval(&jq, &doc, true));
        assert_eq!(after["settings"], r#"{"colour": "red", "size": 20}"#);
        let e = spec("op = \"rename\"\npath = \"/settings\"\njson_string = true\nto = \"x\"")
            .unwrap_err();
        assert!(e.field.ends_with(".inner_path"), "{e}");
    }

    #[test]
    fn a_json_string_keeps_its_python_style_and_is_not_rewritten_unchanged() {
        let s = spec(&format!(
            "{}\njson_string = true",
            RENAME.replace("path = \"\"", "path = \"/signatories\"")
        ))
        .unwrap();
        let inner = r#"[{"type": "signatory", "value": {"name": "Jos\u00e9", "title_2": "MIT"}, "id": "a1"}]"#;
        let doc = json!({"title": "T", "signatories": inner}).to_string();
        let after = changed(eval(&s, &doc, true));
        assert_eq!(
            after["signatories"],
            r#"[{"type": "signatory", "value": {"name": "Jos\u00e9", "affiliation": "MIT"}, "id": "a1"}]"#
        );
        assert_eq!(after["title"], "T");
        // Unchanged: the string is left as it was, whatever its style.
        let done = json!({"signatories": "[{\"type\":\"signatory\",\"value\":{\"name\":\"x\"}}]"})
            .to_string();
        assert_eq!(eval(&s, &done, false), RowOutcome::Unchanged);
        // Absent or null: nothing to migrate.
        assert_eq!(eval(&s, r#"{"title": "T"}"#, false), RowOutcome::Unchanged);
        assert_eq!(
            eval(&s, r#"{"signatories": null}"#, false),
            RowOutcome::Unchanged
        );
    }

    #[test]
    fn a_string_that_is_not_json_or_the_wrong_shape_is_a_row_error() {
        let s = spec(&format!(
            "{}\njson_string = true",
            RENAME.replace("path = \"\"", "path = \"/signatories\"")
        ))
        .unwrap();
        match eval(&s, r#"{"signatories": "not json"}"#, true) {
            RowOutcome::Error(e) => {
                assert!(e.contains("/signatories") && e.contains("not JSON"), "{e}")
            }
            o => panic!("{o:?}"),
        }
        match eval(&s, r#"{"signatories": 5}"#, true) {
            RowOutcome::Error(e) => assert!(e.contains("should be a string"), "{e}"),
            o => panic!("{o:?}"),
        }
        match eval(
            &s,
            r#"{"signatories": "[{\"type\": \"signatory\", \"value\": \"flat\"}]"}"#,
            true,
        ) {
            RowOutcome::Error(e) => assert!(e.contains("/signatories"), "{e}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn set_and_remove_run_inside_a_json_string() {
        let s = spec(
            r#"op = "set"
path = "/s"
json_string = true
inner_path = "/a/b"
value = "é""#,
        )
        .unwrap();
        let after = changed(eval(&s, r#"{"s": "{\"x\": [1, 2]}"}"#, false));
        assert_eq!(after["s"], r#"{"x": [1, 2], "a": {"b": "\u00e9"}}"#);
        let r = spec(
            r#"op = "remove"
path = "/s"
json_string = true
inner_path = "/x""#,
        )
        .unwrap();
        let after = changed(eval(&r, r#"{"s": "{\"x\":1,\"y\":2}"}"#, false));
        assert_eq!(after["s"], r#"{"y":2}"#);
        assert_eq!(
            eval(&r, r#"{"s": "{\"y\": 2}"}"#, false),
            RowOutcome::Unchanged
        );
    }

    #[test]
    fn streamfield_rules_are_checked_at_load_naming_the_field() {
        let field = |rule: &str| spec(rule).unwrap_err().field;
        assert_eq!(
            field(&RENAME.replace("rename_struct_children", "rename_things")),
            "targets[0].rules[0].operation"
        );
        assert_eq!(
            field(&RENAME.replace("new_name = \"affiliation\"", "")),
            "targets[0].rules[0].new_name"
        );
        assert_eq!(
            field(&format!("{RENAME}\nname = \"x\"")),
            "targets[0].rules[0].name"
        );
        assert_eq!(
            field(&RENAME.replace("block_path = \"signatory\"", "block_path = \"a..b\"")),
            "targets[0].rules[0].block_path"
        );
        assert_eq!(
            field(&RENAME.replace("operation = \"rename_struct_children\"", "")),
            "targets[0].rules[0].operation"
        );
        assert_eq!(
            field("op = \"set\"\npath = \"/a\"\nvalue = 1\nold_name = \"x\""),
            "targets[0].rules[0].old_name"
        );
        assert_eq!(
            field("op = \"set\"\npath = \"/a\"\nvalue = 1\ninner_path = \"/x\""),
            "targets[0].rules[0].inner_path"
        );
        assert_eq!(
            field("op = \"remove\"\npath = \"/a\"\njson_string = true"),
            "targets[0].rules[0].inner_path"
        );
        // Every operation parses with its arguments.
        for (op, args) in [
            (
                "rename_stream_children",
                "old_name = \"a\"\nnew_name = \"b\"",
            ),
            ("remove_stream_children", "name = \"a\""),
            ("remove_struct_children", "name = \"a\""),
            (
                "stream_children_to_list_block",
                "block_name = \"a\"\nlist_block_name = \"l\"",
            ),
            (
                "stream_children_to_stream_block",
                "block_names = [\"a\", \"b\"]\nstream_block_name = \"s\"",
            ),
            ("alter_block_value", "new_value = { x = 1 }"),
            (
                "stream_children_to_struct_block",
                "block_name = \"a\"\nstruct_block_name = \"s\"",
            ),
            ("list_children_to_struct_block", "block_name = \"a\""),
        ] {
            let s = spec(&format!(
                "op = \"streamfield\"\npath = \"\"\noperation = \"{op}\"\n{args}"
            ));
            assert!(s.is_ok(), "{op}: {s:?}");
        }
    }

    #[test]
    fn created_blocks_get_uuid4_ids_the_same_on_every_evaluation_and_a_revert_replays_them() {
        let s = spec(
            r#"op = "streamfield"
path = ""
operation = "stream_children_to_list_block"
block_name = "signatory"
list_block_name = "signatories""#,
        )
        .unwrap();
        let after = changed(eval(&s, STREAM, true));
        let id = after[1]["id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_eq!(changed(eval(&s, STREAM, false)), after);
        let other = STREAM.replace("Ana", "Bo");
        assert_ne!(changed(eval(&s, &other, true))[1]["id"], after[1]["id"]);

        // A revert from the whole before-image finds what the run wrote.
        let image = doc_image(BeforeImage::Value(Some(STREAM.to_string())));
        let revert = evaluate_revert(
            &s.targets[0],
            &Row::doc(&after.to_string()).input(),
            Some(&image),
            None,
            None,
        );
        match revert.outcome {
            RowOutcome::Changed(m) => assert_eq!(m["doc"].as_deref(), Some(STREAM)),
            o => panic!("{o:?}"),
        }
    }
}
