//! Edits of one JSON document at a JSON Pointer — set (creating missing
//! parents), remove, rename within an object — each doing nothing where
//! there is nothing to do, which is what makes the rules idempotent.

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

use crate::equality::same_value;
use crate::rule::OnBoth;

/// A JSON Pointer token as the key it names (RFC 6901 unescaping).
pub fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Renames the object member at `path` to `to`, keeping its position in
/// the object (the workspace builds serde_json with `preserve_order`).
/// Nothing happens when there is no member at `path`; a value at `path`
/// that is an array element cannot be renamed.
pub fn rename(doc: &mut Value, path: &str, to: &str, on_both: OnBoth) -> Result<(), String> {
    let Some(cut) = path.rfind('/') else {
        return Err("cannot rename the whole document".into());
    };
    let (parent, old) = (&path[..cut], unescape_token(&path[cut + 1..]));
    let obj = match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if path[cut + 1..].parse::<usize>().is_ok_and(|i| i < a.len()) => {
            return Err(format!(
                "`{path}` is an array element; rename moves object members"
            ))
        }
        _ => return Ok(()),
    };
    if !obj.contains_key(&old) || old == to {
        return Ok(());
    }
    let shown = if parent.is_empty() { "" } else { parent };
    if obj.contains_key(to) {
        match on_both {
            OnBoth::Error => {
                return Err(format!(
                    "both `{shown}/{old}` and `{shown}/{to}` are present; rename does not choose between them (see `on_both`)"
                ))
            }
            OnBoth::KeepNew => {
                obj.shift_remove(&old);
                return Ok(());
            }
            OnBoth::Overwrite => {
                // In the new key's place (so a text column's splice and a
                // compact rewrite agree on the order).
                if let Some(v) = obj.shift_remove(&old) {
                    obj.insert(to.to_string(), v);
                }
                return Ok(());
            }
        }
    }
    // Rebuilt in order, the renamed member where the old one stood.
    let members = std::mem::take(obj);
    for (k, v) in members {
        if k == old {
            obj.insert(to.to_string(), v);
        } else {
            obj.insert(k, v);
        }
    }
    Ok(())
}

fn pointer_buf(p: &str) -> Result<json_patch::jsonptr::PointerBuf, String> {
    json_patch::jsonptr::PointerBuf::parse(p).map_err(|e| format!("bad pointer `{p}`: {e}"))
}

/// Sets `value` at `path`, creating missing parent objects (a null document
/// becomes an object). Fails when a parent exists but is not a container.
pub fn set(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    if doc.is_null() {
        *doc = Value::Object(Map::new());
    }
    let mut ops = Vec::new();
    // Walk the parents; each missing one is added as an empty object.
    let tokens: Vec<&str> = path[1..].split('/').collect();
    let mut prefix = String::new();
    let mut missing = false;
    for tok in &tokens[..tokens.len() - 1] {
        prefix.push('/');
        prefix.push_str(tok);
        if missing || doc.pointer(&prefix).is_none() {
            missing = true;
            ops.push(PatchOperation::Add(AddOperation {
                path: pointer_buf(&prefix)?,
                value: Value::Object(Map::new()),
            }));
        } else if let Some(Value::Null) = doc.pointer(&prefix) {
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: pointer_buf(&prefix)?,
                value: Value::Object(Map::new()),
            }));
        }
    }
    let exists = !missing && doc.pointer(path).is_some();
    if exists {
        // Already holding the value (in any notation of its numbers): the
        // document keeps its own text.
        if doc.pointer(path).is_some_and(|v| same_value(v, &value)) {
            return Ok(());
        }
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer_buf(path)?,
            value,
        }));
    } else {
        ops.push(PatchOperation::Add(AddOperation {
            path: pointer_buf(path)?,
            value,
        }));
    }
    json_patch::patch(doc, &Patch(ops)).map_err(|e| format!("cannot set `{path}`: {e}"))
}

/// Removes `path` when it exists; a missing path is already removed.
pub fn remove(doc: &mut Value, path: &str) -> Result<(), String> {
    if doc.pointer(path).is_none() {
        return Ok(());
    }
    let ops = vec![PatchOperation::Remove(RemoveOperation {
        path: pointer_buf(path)?,
    })];
    json_patch::patch(doc, &Patch(ops)).map_err(|e| format!("cannot remove `{path}`: {e}"))
}
