//! Wagtail's StreamField data migrations on raw StreamField data: the nine
//! operations of `wagtail.blocks.migrations.operations` and the walk of
//! `wagtail.blocks.migrations.utils.apply_changes_to_raw_data` that takes an
//! operation to the blocks a block path names.
//!
//! Wagtail's migration reads a revision's StreamField (a JSON string inside
//! the revision's JSON, see [`crate::pyjson`]), applies its operations and
//! writes the result back with `json.dumps`. This module does the middle
//! step on the decoded value, with the same results as Wagtail's own code
//! (the tests compare them with fixtures Wagtail itself wrote, see
//! `tools/wagtail-fixtures`).
//!
//! # Block paths
//!
//! A block path is a dotted list of names from the top-level stream to the
//! block whose value the operation is given, as Wagtail's: `""` is the stream
//! itself, `section.card` the `card` children of every `section` block of the
//! stream, `list1.item.field` the `field` of every item of every `list1` list
//! (a ListBlock's children are always named `item`). Every block the path
//! matches gets the operation; a path that matches nothing changes nothing.
//!
//! # Walking without block definitions
//!
//! Wagtail walks the raw data by the StreamField's block definitions; this
//! walk has only the data, so it tells the kinds of block from the value and
//! the path:
//!
//! - an object is a StructBlock value: the child under the key named next is
//!   walked into, a missing key matches nothing;
//! - a list under any name but `item` is a StreamBlock value: its children
//!   whose `type` is the name are walked into (their `value`);
//! - a list under `item` is a ListBlock value, in either of its two formats:
//!   a list of `{"type": "item", "value": …, "id": …}` (Wagtail 2.16 and
//!   later) or a list of bare values (before). As Wagtail does, the format is
//!   read from the first element only, and a list in the old format comes
//!   out in the new one, every element wrapped in an item. One case is
//!   ambiguous: a StreamBlock with a child block itself named `item`. A list
//!   whose every element is an object with a `type` and a `value` is walked
//!   as a stream (for a list in the new format the two walks are the same);
//!   only an old-format list of StructBlock values that have `type` and
//!   `value` fields would be misread, and then nothing is changed;
//! - any other value cannot be walked into, and is an error.
//!
//! A value of the wrong shape (a struct path that meets a string, a stream
//! child without a `type`) is an error naming where it was met (a JSON
//! Pointer into the data), where Wagtail raises a `KeyError`, `TypeError` or
//! `ValueError`. The data is then left as it was.
//!
//! # Where this differs from Wagtail
//!
//! - **Ids of new blocks.** Wagtail's operations write the blocks they create
//!   without an `id`: the ListBlock of `stream_children_to_list_block`, the
//!   StreamBlock of `stream_children_to_stream_block`, and the items an
//!   old-format list is wrapped into. Wagtail gives such blocks an id only
//!   when the value is next saved through its block definitions (a page's
//!   own field, not the revisions its migration rewrites). Here every block
//!   created gets `"id"` from the caller's id source (a UUID4: random in
//!   [`new_block_id`]; for a job's rules drawn from a hash of the stream as
//!   read, see [`crate::streamrule`]), after its `type` and `value`, as
//!   Wagtail would write it on that save. Blocks that are changed rather than created keep their
//!   id (or lack of one), as in Wagtail: that includes the blocks
//!   `stream_children_to_struct_block` turns into structs, whatever its
//!   docstring says.
//! - **Empty lists.** Wagtail reads the first element of a ListBlock value
//!   before walking it, so an empty list under `item` in a path, or given to
//!   `list_children_to_struct_block`, raises `IndexError` and aborts its
//!   migration. Here an empty list is left empty (unchanged).
//! - **Block definitions.** Wagtail refuses to walk into a block type its
//!   current definitions lack (`InvalidBlockDefError`); without definitions
//!   this walk goes into any block the path names.
//!
//! # Changed, and running twice
//!
//! [`apply_changes_to_raw_data`] reports whether the data changed: the result
//! differs from the input as a JSON value (numbers by decimal value, see
//! [`same_value`]). When it does not, the input is left as it was, byte for
//! byte once written back. What a second run of the same operation does:
//!
//! - `rename_stream_children`, `rename_struct_children`,
//!   `remove_stream_children`, `remove_struct_children`: the second run finds
//!   nothing left to rename or remove → unchanged. (Renaming a struct child
//!   onto a key the struct already has keeps one of the two values, as
//!   Python's dict does: the key's first position, the last value.)
//! - `alter_block_value`: the value already is the new value → unchanged.
//! - `stream_children_to_list_block`, `stream_children_to_stream_block`,
//!   `stream_children_to_struct_block`: the first run moves every child of
//!   the named types into new blocks (with new ids, so it always reports
//!   changed when there was one); the second finds none left → unchanged.
//!   Except when the new block's name is one of the names moved: then every
//!   run nests the blocks one level deeper, and reports changed.
//! - `list_children_to_struct_block`: wraps each item's value in a struct
//!   every time it runs (`{"b": v}`, then `{"b": {"b": v}}`); the raw data
//!   does not say whether it was already applied, so every run on a
//!   non-empty list reports changed. Run it once.
//! - Any path through `item` over an old-format list converts that list to
//!   the new format (with new ids) even when the operation itself finds
//!   nothing to do, so the first run reports changed; the second meets the
//!   new format → unchanged.

use serde_json::{Map, Value};
use std::fmt;

use crate::equality::same_value;

/// One of Wagtail's StreamField migration operations, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOperation {
    /// `RenameStreamChildrenOperation`: stream children of type `old_name`
    /// become `new_name`.
    RenameStreamChildren { old_name: String, new_name: String },
    /// `RenameStructChildrenOperation`: the struct child `old_name` becomes
    /// `new_name`, in the same position.
    RenameStructChildren { old_name: String, new_name: String },
    /// `RemoveStreamChildrenOperation`: stream children of type `name` go.
    RemoveStreamChildren { name: String },
    /// `RemoveStructChildrenOperation`: the struct child `name` goes.
    RemoveStructChildren { name: String },
    /// `StreamChildrenToListBlockOperation`: stream children of type
    /// `block_name` move, as items, into one new ListBlock `list_block_name`
    /// appended to the stream.
    StreamChildrenToListBlock {
        block_name: String,
        list_block_name: String,
    },
    /// `StreamChildrenToStreamBlockOperation`: stream children of the types
    /// `block_names` move into one new StreamBlock `stream_block_name`
    /// appended to the stream.
    StreamChildrenToStreamBlock {
        block_names: Vec<String>,
        stream_block_name: String,
    },
    /// `AlterBlockValueOperation`: the block's value becomes `new_value`.
    AlterBlockValue { new_value: Value },
    /// `StreamChildrenToStructBlockOperation`: each stream child of type
    /// `block_name` becomes a `struct_block_name` block whose value is
    /// `{block_name: old value}`.
    StreamChildrenToStructBlock {
        block_name: String,
        struct_block_name: String,
    },
    /// `ListChildrenToStructBlockOperation`: each list item's value `v`
    /// becomes `{block_name: v}`.
    ListChildrenToStructBlock { block_name: String },
}

/// The operations' names as a spec writes them, in Wagtail's order.
pub const OPERATION_NAMES: [&str; 9] = [
    "rename_stream_children",
    "rename_struct_children",
    "remove_stream_children",
    "remove_struct_children",
    "stream_children_to_list_block",
    "stream_children_to_stream_block",
    "alter_block_value",
    "stream_children_to_struct_block",
    "list_children_to_struct_block",
];

impl StreamOperation {
    /// The operation `name` (snake case, see [`OPERATION_NAMES`]) with its
    /// arguments. Every argument must be given, and no other: the error names
    /// the operation and the argument missing, unknown or of the wrong type.
    pub fn parse(name: &str, args: &Map<String, Value>) -> Result<Self, String> {
        let args = Args { op: name, args };
        let op = match name {
            "rename_stream_children" => {
                args.only(&["old_name", "new_name"])?;
                StreamOperation::RenameStreamChildren {
                    old_name: args.name("old_name")?,
                    new_name: args.name("new_name")?,
                }
            }
            "rename_struct_children" => {
                args.only(&["old_name", "new_name"])?;
                StreamOperation::RenameStructChildren {
                    old_name: args.name("old_name")?,
                    new_name: args.name("new_name")?,
                }
            }
            "remove_stream_children" => {
                args.only(&["name"])?;
                StreamOperation::RemoveStreamChildren {
                    name: args.name("name")?,
                }
            }
            "remove_struct_children" => {
                args.only(&["name"])?;
                StreamOperation::RemoveStructChildren {
                    name: args.name("name")?,
                }
            }
            "stream_children_to_list_block" => {
                args.only(&["block_name", "list_block_name"])?;
                StreamOperation::StreamChildrenToListBlock {
                    block_name: args.name("block_name")?,
                    list_block_name: args.name("list_block_name")?,
                }
            }
            "stream_children_to_stream_block" => {
                args.only(&["block_names", "stream_block_name"])?;
                StreamOperation::StreamChildrenToStreamBlock {
                    block_names: args.names("block_names")?,
                    stream_block_name: args.name("stream_block_name")?,
                }
            }
            "alter_block_value" => {
                args.only(&["new_value"])?;
                StreamOperation::AlterBlockValue {
                    new_value: args.get("new_value")?.clone(),
                }
            }
            "stream_children_to_struct_block" => {
                args.only(&["block_name", "struct_block_name"])?;
                StreamOperation::StreamChildrenToStructBlock {
                    block_name: args.name("block_name")?,
                    struct_block_name: args.name("struct_block_name")?,
                }
            }
            "list_children_to_struct_block" => {
                args.only(&["block_name"])?;
                StreamOperation::ListChildrenToStructBlock {
                    block_name: args.name("block_name")?,
                }
            }
            _ => {
                return Err(format!(
                    "unknown stream operation `{name}` (expected one of {})",
                    OPERATION_NAMES.join(", ")
                ))
            }
        };
        Ok(op)
    }

    /// The operation's name as a spec writes it.
    pub fn name(&self) -> &'static str {
        match self {
            StreamOperation::RenameStreamChildren { .. } => "rename_stream_children",
            StreamOperation::RenameStructChildren { .. } => "rename_struct_children",
            StreamOperation::RemoveStreamChildren { .. } => "remove_stream_children",
            StreamOperation::RemoveStructChildren { .. } => "remove_struct_children",
            StreamOperation::StreamChildrenToListBlock { .. } => "stream_children_to_list_block",
            StreamOperation::StreamChildrenToStreamBlock { .. } => {
                "stream_children_to_stream_block"
            }
            StreamOperation::AlterBlockValue { .. } => "alter_block_value",
            StreamOperation::StreamChildrenToStructBlock { .. } => {
                "stream_children_to_struct_block"
            }
            StreamOperation::ListChildrenToStructBlock { .. } => "list_children_to_struct_block",
        }
    }

    /// The name of Wagtail's class for the operation.
    pub fn wagtail_name(&self) -> &'static str {
        match self {
            StreamOperation::RenameStreamChildren { .. } => "RenameStreamChildrenOperation",
            StreamOperation::RenameStructChildren { .. } => "RenameStructChildrenOperation",
            StreamOperation::RemoveStreamChildren { .. } => "RemoveStreamChildrenOperation",
            StreamOperation::RemoveStructChildren { .. } => "RemoveStructChildrenOperation",
            StreamOperation::StreamChildrenToListBlock { .. } => {
                "StreamChildrenToListBlockOperation"
            }
            StreamOperation::StreamChildrenToStreamBlock { .. } => {
                "StreamChildrenToStreamBlockOperation"
            }
            StreamOperation::AlterBlockValue { .. } => "AlterBlockValueOperation",
            StreamOperation::StreamChildrenToStructBlock { .. } => {
                "StreamChildrenToStructBlockOperation"
            }
            StreamOperation::ListChildrenToStructBlock { .. } => {
                "ListChildrenToStructBlockOperation"
            }
        }
    }
}

/// The arguments of one operation being parsed, for errors that name both.
struct Args<'a> {
    op: &'a str,
    args: &'a Map<String, Value>,
}

impl Args<'_> {
    fn only(&self, expected: &[&str]) -> Result<(), String> {
        match self.args.keys().find(|k| !expected.contains(&k.as_str())) {
            Some(unknown) => Err(format!(
                "stream operation `{}`: unknown argument `{unknown}` (expected {})",
                self.op,
                expected.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Result<&Value, String> {
        self.args
            .get(key)
            .ok_or_else(|| format!("stream operation `{}`: missing argument `{key}`", self.op))
    }

    /// A block name: a non-empty string (no block is named "").
    fn name(&self, key: &str) -> Result<String, String> {
        match self.get(key)? {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(format!(
                "stream operation `{}`: argument `{key}` is empty (a block name)",
                self.op
            )),
            other => Err(format!(
                "stream operation `{}`: argument `{key}` must be a block name (a string), found {}",
                self.op,
                kind(other)
            )),
        }
    }

    /// A non-empty list of block names.
    fn names(&self, key: &str) -> Result<Vec<String>, String> {
        let bad = |what: &str| {
            format!(
                "stream operation `{}`: argument `{key}` must be a non-empty list of block names, {what}",
                self.op
            )
        };
        let Value::Array(items) = self.get(key)? else {
            return Err(bad(&format!("found {}", kind(self.get(key)?))));
        };
        if items.is_empty() {
            return Err(bad("found an empty list"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                Value::String(_) => Err(bad(&format!("element {i} is empty"))),
                other => Err(bad(&format!("element {i} is {}", kind(other)))),
            })
            .collect()
    }
}

/// A block path: the names from the top-level stream to the blocks an
/// operation is applied to (empty: the stream itself).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockPath(Vec<String>);

impl BlockPath {
    /// Wagtail's dotted syntax: `""` is the stream itself, otherwise names
    /// separated by `.`, with `item` for a ListBlock's child. A name may not
    /// be empty (`a..b`, `.a`, `a.`): Wagtail would look for a block named
    /// "" and find none, so such a path is a typo.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(BlockPath(Vec::new()));
        }
        let segments: Vec<String> = s.split('.').map(str::to_owned).collect();
        if let Some(i) = segments.iter().position(String::is_empty) {
            return Err(format!(
                "block path `{s}`: name {} is empty (names are separated by single dots; \
                 the stream itself is the empty path)",
                i + 1
            ));
        }
        Ok(BlockPath(segments))
    }

    /// The names, from the top-level stream down.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// Whether the path is the stream itself.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for BlockPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A fresh block id as Wagtail makes them: a random UUID4, hyphenated.
pub fn new_block_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Applies `op` to every block `path` names in `raw` (a StreamField's raw
/// data: the list of its top-level blocks), as Wagtail's function of the
/// same name does; blocks the operation creates take their `id` from `ids`.
/// Returns whether the data changed (see the module docs); `raw` is only
/// written when it did. A value of the wrong shape is an error naming where
/// it is, and leaves `raw` as it was.
pub fn apply_changes_to_raw_data(
    raw: &mut Value,
    path: &BlockPath,
    op: &StreamOperation,
    ids: &mut dyn FnMut() -> String,
) -> Result<bool, String> {
    let mut walk = Walk {
        op,
        ids,
        at: Vec::new(),
    };
    let new = walk.map_block_value(raw, path.segments())?;
    if same_value(&new, raw) {
        return Ok(false);
    }
    *raw = new;
    Ok(true)
}

/// One application: the operation, the id source and where the walk is (the
/// JSON Pointer tokens from the top, for errors).
struct Walk<'a> {
    op: &'a StreamOperation,
    ids: &'a mut dyn FnMut() -> String,
    at: Vec<String>,
}

impl Walk<'_> {
    fn error(&self, what: String) -> String {
        if self.at.is_empty() {
            return format!("at the top of the StreamField: {what}");
        }
        let pointer: String = self
            .at
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect();
        format!("at {pointer}: {what}")
    }

    /// Runs `f` one level down (`token` in the JSON Pointer).
    fn inside<T>(&mut self, token: String, f: impl FnOnce(&mut Self) -> T) -> T {
        self.at.push(token);
        let out = f(self);
        self.at.pop();
        out
    }

    /// Wagtail's `map_block_value`: the operation at the end of the path,
    /// otherwise one step down by the kind of block the value is.
    fn map_block_value(&mut self, value: &Value, path: &[String]) -> Result<Value, String> {
        let Some(name) = path.first() else {
            return self.apply(value);
        };
        match value {
            Value::Object(fields) => self.map_struct(fields, path),
            Value::Array(items) if name == "item" && !is_stream(items) => {
                self.map_list(items, path)
            }
            Value::Array(items) => self.map_stream(items, path),
            other => Err(self.error(format!(
                "the block path goes on to `{name}` but this is {}, not a StreamBlock, \
                 StructBlock or ListBlock value",
                kind(other)
            ))),
        }
    }

    /// Wagtail's `map_stream_block_value`: children of the type named next
    /// have their value walked; others are kept.
    fn map_stream(&mut self, items: &[Value], path: &[String]) -> Result<Value, String> {
        let mut mapped = Vec::with_capacity(items.len());
        for (i, child) in items.iter().enumerate() {
            let block = self.inside(i.to_string(), |w| w.stream_child(child))?;
            if block.get("type").and_then(Value::as_str) != Some(path[0].as_str()) {
                mapped.push(child.clone());
                continue;
            }
            let Some(value) = block.get("value") else {
                return Err(self.inside(i.to_string(), |w| {
                    w.error(format!("the `{}` block has no `value`", path[0]))
                }));
            };
            let new_value = self.inside(i.to_string(), |w| {
                w.inside("value".into(), |w| w.map_block_value(value, &path[1..]))
            })?;
            let mut block = block.clone();
            block.insert("value".into(), new_value);
            mapped.push(Value::Object(block));
        }
        Ok(Value::Array(mapped))
    }

    /// Wagtail's `map_struct_block_value`: the child under the name next in
    /// the path is walked; others are kept.
    fn map_struct(
        &mut self,
        fields: &Map<String, Value>,
        path: &[String],
    ) -> Result<Value, String> {
        let mut mapped = Map::new();
        for (key, value) in fields {
            let value = if *key == path[0] {
                self.inside(key.clone(), |w| w.map_block_value(value, &path[1..]))?
            } else {
                value.clone()
            };
            mapped.insert(key.clone(), value);
        }
        Ok(Value::Object(mapped))
    }

    /// Wagtail's `map_list_block_value`: every item is walked, whatever the
    /// path names (it names `item`); an old-format list comes out in the new
    /// format. An empty list stays empty (Wagtail raises `IndexError`).
    fn map_list(&mut self, items: &[Value], path: &[String]) -> Result<Value, String> {
        let mut mapped = Vec::with_capacity(items.len());
        let old_format = is_old_list_format(items);
        for (i, child) in items.iter().enumerate() {
            let block = if old_format {
                let value = self.inside(i.to_string(), |w| w.map_block_value(child, &path[1..]))?;
                self.new_item(value)
            } else {
                let block = self.inside(i.to_string(), |w| w.list_item(child))?;
                let new_value = self.inside(i.to_string(), |w| {
                    w.inside("value".into(), |w| {
                        w.map_block_value(&block["value"], &path[1..])
                    })
                })?;
                let mut block = block.clone();
                block.insert("value".into(), new_value);
                Value::Object(block)
            };
            mapped.push(block);
        }
        Ok(Value::Array(mapped))
    }

    /// The operation's `apply` on one block's value.
    fn apply(&mut self, value: &Value) -> Result<Value, String> {
        let op = self.op;
        match op {
            StreamOperation::RenameStreamChildren { old_name, new_name } => self
                .map_children(value, |_, mut block| {
                    if block.get("type").and_then(Value::as_str) == Some(old_name) {
                        block.insert("type".into(), Value::String(new_name.clone()));
                    }
                    Ok(Some(block))
                })
                .map(Value::Array),
            StreamOperation::RenameStructChildren { old_name, new_name } => {
                let fields = self.struct_value(value)?;
                // Python's dict: a key written twice keeps its first position
                // and its last value, as serde_json's ordered map does.
                let mut mapped = Map::new();
                for (key, child) in fields {
                    let key = if key == old_name { new_name } else { key };
                    mapped.insert(key.clone(), child.clone());
                }
                Ok(Value::Object(mapped))
            }
            StreamOperation::RemoveStreamChildren { name } => self
                .map_children(value, |_, block| {
                    let gone = block.get("type").and_then(Value::as_str) == Some(name);
                    Ok((!gone).then_some(block))
                })
                .map(Value::Array),
            StreamOperation::RemoveStructChildren { name } => {
                let fields = self.struct_value(value)?;
                let mapped: Map<String, Value> = fields
                    .iter()
                    .filter(|(key, _)| *key != name)
                    .map(|(key, child)| (key.clone(), child.clone()))
                    .collect();
                Ok(Value::Object(mapped))
            }
            StreamOperation::StreamChildrenToListBlock {
                block_name,
                list_block_name,
            } => {
                let mut items = Vec::new();
                let mapped = self.map_children(value, |_, mut block| {
                    if block.get("type").and_then(Value::as_str) != Some(block_name) {
                        return Ok(Some(block));
                    }
                    block.insert("type".into(), Value::String("item".into()));
                    items.push(Value::Object(block));
                    Ok(None)
                })?;
                Ok(self.append_new_block(mapped, list_block_name, items))
            }
            StreamOperation::StreamChildrenToStreamBlock {
                block_names,
                stream_block_name,
            } => {
                let mut children = Vec::new();
                let mapped = self.map_children(value, |_, block| {
                    let moved = block
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| block_names.iter().any(|n| n == t));
                    if !moved {
                        return Ok(Some(block));
                    }
                    children.push(Value::Object(block));
                    Ok(None)
                })?;
                Ok(self.append_new_block(mapped, stream_block_name, children))
            }
            StreamOperation::AlterBlockValue { new_value } => Ok(new_value.clone()),
            StreamOperation::StreamChildrenToStructBlock {
                block_name,
                struct_block_name,
            } => self
                .map_children(value, |at, mut block| {
                    if block.get("type").and_then(Value::as_str) != Some(block_name) {
                        return Ok(Some(block));
                    }
                    let Some(old) = block.get("value") else {
                        return Err(at(format!("the `{block_name}` block has no `value`")));
                    };
                    let mut fields = Map::new();
                    fields.insert(block_name.clone(), old.clone());
                    block.insert("type".into(), Value::String(struct_block_name.clone()));
                    block.insert("value".into(), Value::Object(fields));
                    Ok(Some(block))
                })
                .map(Value::Array),
            StreamOperation::ListChildrenToStructBlock { block_name } => {
                let Value::Array(items) = value else {
                    return Err(self.error(format!(
                        "{} needs a ListBlock value (a list), found {}",
                        op.name(),
                        kind(value)
                    )));
                };
                let wrap = |v: &Value| {
                    let mut fields = Map::new();
                    fields.insert(block_name.clone(), v.clone());
                    Value::Object(fields)
                };
                let old_format = is_old_list_format(items);
                let mut mapped = Vec::with_capacity(items.len());
                for (i, child) in items.iter().enumerate() {
                    if old_format {
                        let item = self.new_item(wrap(child));
                        mapped.push(item);
                    } else {
                        let mut block = self.inside(i.to_string(), |w| w.list_item(child))?.clone();
                        let new_value = wrap(&block["value"]);
                        block.insert("value".into(), new_value);
                        mapped.push(Value::Object(block));
                    }
                }
                Ok(Value::Array(mapped))
            }
        }
    }

    /// A StreamBlock value's children, each an object with a `type` (Wagtail
    /// reads every child's type), given to `f` with a way to name where it
    /// is; `f` returns the block to keep in its place, or `None`.
    fn map_children(
        &mut self,
        value: &Value,
        mut f: impl FnMut(
            &dyn Fn(String) -> String,
            Map<String, Value>,
        ) -> Result<Option<Map<String, Value>>, String>,
    ) -> Result<Vec<Value>, String> {
        let Value::Array(items) = value else {
            return Err(self.error(format!(
                "{} needs a StreamBlock value (a list of blocks), found {}",
                self.op.name(),
                kind(value)
            )));
        };
        let mut mapped = Vec::with_capacity(items.len());
        for (i, child) in items.iter().enumerate() {
            self.at.push(i.to_string());
            let result = self.stream_child(child).and_then(|block| {
                let at = |what: String| self.error(what);
                f(&at, block.clone())
            });
            self.at.pop();
            if let Some(block) = result? {
                mapped.push(Value::Object(block));
            }
        }
        Ok(mapped)
    }

    /// A StreamBlock child: an object with a `type`.
    fn stream_child<'v>(&self, child: &'v Value) -> Result<&'v Map<String, Value>, String> {
        match child {
            Value::Object(block) if block.contains_key("type") => Ok(block),
            Value::Object(_) => Err(self.error("a StreamBlock child without a `type`".into())),
            other => Err(self.error(format!(
                "a StreamBlock child must be an object with a `type`, found {}",
                kind(other)
            ))),
        }
    }

    /// A ListBlock item in the new format: an object with a `value`.
    fn list_item<'v>(&self, child: &'v Value) -> Result<&'v Map<String, Value>, String> {
        match child {
            Value::Object(block) if block.contains_key("value") => Ok(block),
            other => Err(self.error(format!(
                "a ListBlock item must be an object with a `value` (the list's first item \
                 is in the new format), found {}",
                if other.is_object() {
                    "an object without one"
                } else {
                    kind(other)
                }
            ))),
        }
    }

    fn struct_value<'v>(&self, value: &'v Value) -> Result<&'v Map<String, Value>, String> {
        match value {
            Value::Object(fields) => Ok(fields),
            other => Err(self.error(format!(
                "{} needs a StructBlock value (an object), found {}",
                self.op.name(),
                kind(other)
            ))),
        }
    }

    /// A new-format list item wrapping `value`, with a fresh id.
    fn new_item(&mut self, value: Value) -> Value {
        self.new_block("item", value)
    }

    /// `stream` with a new block `name` holding `children` appended, when
    /// there are any (as Wagtail: no empty block is created).
    fn append_new_block(
        &mut self,
        mut stream: Vec<Value>,
        name: &str,
        children: Vec<Value>,
    ) -> Value {
        if !children.is_empty() {
            let block = self.new_block(name, Value::Array(children));
            stream.push(block);
        }
        Value::Array(stream)
    }

    /// A new block `{"type", "value", "id"}` with a fresh id, keys in the
    /// order Wagtail writes them.
    fn new_block(&mut self, name: &str, value: Value) -> Value {
        let mut block = Map::new();
        block.insert("type".into(), Value::String(name.into()));
        block.insert("value".into(), value);
        block.insert("id".into(), Value::String((self.ids)()));
        Value::Object(block)
    }
}

/// Whether a list's elements all look like StreamBlock children (an object
/// with a `type` and a `value`): how a stream, or a new-format list, is told
/// from an old-format list under an `item` name.
fn is_stream(items: &[Value]) -> bool {
    items.iter().all(|child| {
        child
            .as_object()
            .is_some_and(|b| b.contains_key("type") && b.contains_key("value"))
    })
}

/// Wagtail's `formatted_list_child_generator` test: a ListBlock value is in
/// the old format unless its first element is an object of type `item`.
/// (An empty list has no format; it has nothing to walk either.)
fn is_old_list_format(items: &[Value]) -> bool {
    match items.first() {
        Some(Value::Object(first)) => first.get("type").and_then(Value::as_str) != Some("item"),
        Some(_) => true,
        None => false,
    }
}

/// What a value is, for errors.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    /// Ids `id-1`, `id-2`, … for tests that check where new ids go.
    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id-{n}")
        }
    }

    fn op(name: &str, args: Value) -> StreamOperation {
        let Value::Object(args) = args else {
            panic!("args must be an object")
        };
        StreamOperation::parse(name, &args).unwrap()
    }

    fn path(s: &str) -> BlockPath {
        BlockPath::parse(s).unwrap()
    }

    /// Applies and returns (changed, data).
    fn run(data: Value, p: &str, o: &StreamOperation) -> (bool, Value) {
        let mut data = data;
        let changed = apply_changes_to_raw_data(&mut data, &path(p), o, &mut counter()).unwrap();
        (changed, data)
    }

    fn run_err(data: Value, p: &str, o: &StreamOperation) -> String {
        let mut copy = data.clone();
        let err = apply_changes_to_raw_data(&mut copy, &path(p), o, &mut counter()).unwrap_err();
        assert_eq!(copy, data, "data left as it was on error");
        err
    }

    // --- Wagtail's own results -------------------------------------------

    const FIXTURE: &str = include_str!("../tests/fixtures/streamfield.json");

    /// Cases where Wagtail raises `IndexError` on an empty ListBlock value and
    /// this module leaves the list empty (see the module docs).
    const EMPTY_LIST_CASES: [&str; 2] = ["alter_tags_items_empty", "list_to_struct_empty"];

    /// Cases where every run nests again (the new block is named like the
    /// blocks it takes in).
    const RENESTING_CASES: [&str; 2] = ["to_stream_into_own_name", "to_struct_own_name"];

    /// Removes from `v` every `"id"` whose value is one of `created`, and
    /// counts how often each was met.
    fn strip_created_ids(v: &mut Value, created: &BTreeSet<String>, seen: &mut Vec<String>) {
        match v {
            Value::Object(fields) => {
                if let Some(Value::String(id)) = fields.get("id") {
                    if created.contains(id) {
                        seen.push(id.clone());
                        fields.shift_remove("id");
                    }
                }
                for child in fields.values_mut() {
                    strip_created_ids(child, created, seen);
                }
            }
            Value::Array(items) => {
                for child in items {
                    strip_created_ids(child, created, seen);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn fixture_records_the_wagtail_version() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let version = fixture["wagtail_version"].as_str().unwrap();
        assert!(
            version.starts_with(|c: char| c.is_ascii_digit()),
            "{version}"
        );
        assert!(fixture["cases"].as_array().unwrap().len() > 50);
    }

    #[test]
    fn every_operation_matches_wagtail() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let mut seen_ops = BTreeSet::new();
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let o = StreamOperation::parse(
                case["operation"].as_str().unwrap(),
                case["args"].as_object().unwrap(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(o.wagtail_name(), case["wagtail_operation"], "{name}");
            seen_ops.insert(o.name());
            let p = BlockPath::parse(case["block_path"].as_str().unwrap()).unwrap();
            let input = case["input"].clone();

            let created = std::cell::RefCell::new(Vec::new());
            let mut ids = || {
                let id = new_block_id();
                created.borrow_mut().push(id.clone());
                id
            };
            let mut ours = input.clone();
            let result = apply_changes_to_raw_data(&mut ours, &p, &o, &mut ids);

            if let Some(error) = case.get("wagtail_error") {
                if EMPTY_LIST_CASES.contains(&name) {
                    assert_eq!(result, Ok(false), "{name}: Wagtail raised {error}");
                } else {
                    let ours_err = result.expect_err(name);
                    assert!(ours_err.starts_with("at "), "{name}: {ours_err}");
                }
                assert_eq!(ours, input, "{name}: data untouched");
                continue;
            }
            let changed = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let wagtail = &case["output"];
            assert_eq!(changed, !same_value(&input, wagtail), "{name}: changed");

            // The blocks created carry valid, distinct UUID4s, one each, where
            // Wagtail's carry none; everything else is Wagtail's, key order
            // included.
            let created = created.into_inner();
            let created_set: BTreeSet<String> = created.iter().cloned().collect();
            assert_eq!(created_set.len(), created.len(), "{name}: distinct ids");
            for id in &created {
                let uuid = uuid::Uuid::parse_str(id).unwrap();
                assert_eq!(uuid.get_version_num(), 4, "{name}: {id}");
                assert_eq!(uuid.hyphenated().to_string(), *id);
            }
            let mut stripped = ours.clone();
            let mut seen = Vec::new();
            strip_created_ids(&mut stripped, &created_set, &mut seen);
            seen.sort();
            let mut expected_seen = created.clone();
            expected_seen.sort();
            assert_eq!(seen, expected_seen, "{name}: each new id used once");
            assert_eq!(
                serde_json::to_string(&stripped).unwrap(),
                serde_json::to_string(wagtail).unwrap(),
                "{name}"
            );

            // A second run: see the module docs.
            let renests = RENESTING_CASES.contains(&name)
                || matches!(o, StreamOperation::ListChildrenToStructBlock { .. });
            let mut again = ours.clone();
            let changed_again =
                apply_changes_to_raw_data(&mut again, &p, &o, &mut new_block_id).unwrap();
            assert_eq!(changed_again, changed && renests, "{name}: second run");
        }
        assert_eq!(
            seen_ops.len(),
            OPERATION_NAMES.len(),
            "every operation covered"
        );
    }

    // --- Parsing ------------------------------------------------------------

    #[test]
    fn parses_every_operation_by_name() {
        let cases = [
            (
                "rename_stream_children",
                json!({"old_name": "a", "new_name": "b"}),
            ),
            (
                "rename_struct_children",
                json!({"old_name": "a", "new_name": "b"}),
            ),
            ("remove_stream_children", json!({"name": "a"})),
            ("remove_struct_children", json!({"name": "a"})),
            (
                "stream_children_to_list_block",
                json!({"block_name": "a", "list_block_name": "b"}),
            ),
            (
                "stream_children_to_stream_block",
                json!({"block_names": ["a", "c"], "stream_block_name": "b"}),
            ),
            ("alter_block_value", json!({"new_value": null})),
            (
                "stream_children_to_struct_block",
                json!({"block_name": "a", "struct_block_name": "b"}),
            ),
            ("list_children_to_struct_block", json!({"block_name": "a"})),
        ];
        for (name, args) in &cases {
            assert_eq!(op(name, args.clone()).name(), *name);
        }
        let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, OPERATION_NAMES);
        assert_eq!(
            op("alter_block_value", json!({"new_value": null})),
            StreamOperation::AlterBlockValue {
                new_value: Value::Null
            }
        );
        assert_eq!(
            op(
                "stream_children_to_stream_block",
                json!({"block_names": ["a", "c"], "stream_block_name": "b"})
            ),
            StreamOperation::StreamChildrenToStreamBlock {
                block_names: vec!["a".into(), "c".into()],
                stream_block_name: "b".into()
            }
        );
    }

    fn parse_err(name: &str, args: Value) -> String {
        StreamOperation::parse(name, args.as_object().unwrap()).unwrap_err()
    }

    #[test]
    fn parse_errors_name_the_argument() {
        let e = parse_err("rename_stream_children", json!({"old_name": "a"}));
        assert!(
            e.contains("rename_stream_children") && e.contains("missing argument `new_name`"),
            "{e}"
        );
        let e = parse_err("remove_struct_children", json!({"name": "a", "nmae": "b"}));
        assert!(
            e.contains("unknown argument `nmae`") && e.contains("expected name"),
            "{e}"
        );
        let e = parse_err("remove_struct_children", json!({"name": 3}));
        assert!(e.contains("`name`") && e.contains("a number"), "{e}");
        let e = parse_err("remove_struct_children", json!({"name": ""}));
        assert!(e.contains("`name` is empty"), "{e}");
        let e = parse_err(
            "stream_children_to_stream_block",
            json!({"block_names": "ab", "stream_block_name": "s"}),
        );
        assert!(e.contains("`block_names`") && e.contains("a string"), "{e}");
        let e = parse_err(
            "stream_children_to_stream_block",
            json!({"block_names": [], "stream_block_name": "s"}),
        );
        assert!(e.contains("empty list"), "{e}");
        let e = parse_err(
            "stream_children_to_stream_block",
            json!({"block_names": ["a", 1], "stream_block_name": "s"}),
        );
        assert!(e.contains("element 1 is a number"), "{e}");
        let e = parse_err("alter_block_value", json!({}));
        assert!(e.contains("missing argument `new_value`"), "{e}");
        let e = parse_err("rename_block", json!({}));
        assert!(
            e.contains("unknown stream operation `rename_block`")
                && e.contains("rename_stream_children"),
            "{e}"
        );
    }

    #[test]
    fn block_paths() {
        assert!(path("").is_empty());
        assert_eq!(path("a").segments(), ["a"]);
        assert_eq!(
            path("list1.item.stream1").segments(),
            ["list1", "item", "stream1"]
        );
        assert_eq!(path("list1.item.stream1").to_string(), "list1.item.stream1");
        for bad in [".", "a..b", ".a", "a.", ".."] {
            let e = BlockPath::parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains("empty"),
                "{e}"
            );
        }
        assert!(BlockPath::parse("a..b").unwrap_err().contains("name 2"));
    }

    // --- Behaviours the fixtures pin less directly -------------------------

    #[test]
    fn created_blocks_take_ids_in_order_after_type_and_value() {
        let data = json!([
            {"type": "p", "value": "1", "id": "a"},
            {"type": "h", "value": "H", "id": "b"},
            {"type": "p", "value": "2"},
        ]);
        let o = op(
            "stream_children_to_list_block",
            json!({"block_name": "p", "list_block_name": "ps"}),
        );
        let (changed, out) = run(data, "", &o);
        assert!(changed);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            serde_json::to_string(&json!([
                {"type": "h", "value": "H", "id": "b"},
                {"type": "ps", "value": [
                    {"type": "item", "value": "1", "id": "a"},
                    {"type": "item", "value": "2"},
                ], "id": "id-1"},
            ]))
            .unwrap()
        );

        let data = json!([{"type": "tags", "value": ["x", "y"], "id": "t"}]);
        let o = op(
            "list_children_to_struct_block",
            json!({"block_name": "tag"}),
        );
        let (_, out) = run(data, "tags", &o);
        assert_eq!(
            out,
            json!([{"type": "tags", "value": [
                {"type": "item", "value": {"tag": "x"}, "id": "id-1"},
                {"type": "item", "value": {"tag": "y"}, "id": "id-2"},
            ], "id": "t"}])
        );
    }

    #[test]
    fn unchanged_leaves_the_data_as_it_was() {
        // Equal by value, not by text: the original text is kept.
        let data: Value =
            serde_json::from_str(r#"[{"type": "n", "value": 1.50, "id": "a"}]"#).unwrap();
        let o = op("alter_block_value", json!({"new_value": 1.5}));
        let (changed, out) = run(data.clone(), "n", &o);
        assert!(!changed);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            serde_json::to_string(&data).unwrap()
        );

        let o = op(
            "rename_stream_children",
            json!({"old_name": "x", "new_name": "y"}),
        );
        assert_eq!(run(json!([]), "", &o), (false, json!([])));
        // A path into a block the data does not have.
        assert!(!run(json!([{"type": "a", "value": {}}]), "b.c", &o).0);
        assert!(!run(json!([{"type": "a", "value": {}}]), "a.c", &o).0);
    }

    #[test]
    fn rename_struct_child_keeps_its_position() {
        let o = op(
            "rename_struct_children",
            json!({"old_name": "b", "new_name": "z"}),
        );
        let (_, out) = run(
            json!([{"type": "s", "value": {"a": 1, "b": 2, "c": 3}}]),
            "s",
            &o,
        );
        let keys: Vec<&String> = out[0]["value"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "z", "c"]);
    }

    #[test]
    fn a_stream_child_named_item_is_walked_as_a_stream() {
        // Every element is a block with a type and a value: a stream, whose
        // `item` children alone are walked; the `para` is not touched.
        let data = json!([
            {"type": "para", "value": {"x": "p"}},
            {"type": "item", "value": {"x": "1"}, "id": "i"},
        ]);
        let o = op(
            "rename_struct_children",
            json!({"old_name": "x", "new_name": "y"}),
        );
        let (_, out) = run(data, "item", &o);
        assert_eq!(
            out,
            json!([
                {"type": "para", "value": {"x": "p"}},
                {"type": "item", "value": {"y": "1"}, "id": "i"},
            ])
        );
    }

    #[test]
    fn old_format_list_is_converted_even_when_nothing_else_changes() {
        let data = json!([{"type": "rows", "value": [{"a": 1}, {"a": 2}]}]);
        let o = op("remove_struct_children", json!({"name": "zzz"}));
        let (changed, out) = run(data, "rows.item", &o);
        assert!(changed);
        assert_eq!(
            out,
            json!([{"type": "rows", "value": [
                {"type": "item", "value": {"a": 1}, "id": "id-1"},
                {"type": "item", "value": {"a": 2}, "id": "id-2"},
            ]}])
        );
        let (changed, _) = run(out, "rows.item", &o);
        assert!(!changed);
    }

    #[test]
    fn wrong_shapes_are_errors_naming_where() {
        let rename_struct = op(
            "rename_struct_children",
            json!({"old_name": "a", "new_name": "b"}),
        );
        let e = run_err(json!([{"type": "h", "value": "text"}]), "h", &rename_struct);
        assert_eq!(e, "at /0/value: rename_struct_children needs a StructBlock value (an object), found a string");

        let e = run_err(
            json!([{"type": "h", "value": "text"}]),
            "h.x",
            &rename_struct,
        );
        assert!(
            e.starts_with("at /0/value: the block path goes on to `x`"),
            "{e}"
        );

        let e = run_err(
            json!({"a": 1}),
            "",
            &op("remove_stream_children", json!({"name": "a"})),
        );
        assert!(
            e.starts_with(
                "at the top of the StreamField: remove_stream_children needs a StreamBlock value"
            ),
            "{e}"
        );

        let e = run_err(
            json!([{"type": "s", "value": ["x", 1]}]),
            "s",
            &op("remove_stream_children", json!({"name": "a"})),
        );
        assert!(
            e.starts_with("at /0/value/0: a StreamBlock child must be an object"),
            "{e}"
        );

        let e = run_err(json!([{"type": "s"}]), "s.x", &rename_struct);
        assert_eq!(e, "at /0: the `s` block has no `value`");

        let e = run_err(json!([{"value": 1}]), "s", &rename_struct);
        assert_eq!(e, "at /0: a StreamBlock child without a `type`");

        // A new-format list whose later item is not an item object.
        let e = run_err(
            json!([{"type": "l", "value": [{"type": "item", "value": {}}, "bare"]}]),
            "l.item",
            &rename_struct,
        );
        assert!(
            e.starts_with("at /0/value/1: a ListBlock item must be an object with a `value`"),
            "{e}"
        );

        let e = run_err(
            json!([{"type": "l", "value": "abc"}]),
            "l",
            &op("list_children_to_struct_block", json!({"block_name": "b"})),
        );
        assert!(
            e.starts_with("at /0/value: list_children_to_struct_block needs a ListBlock value"),
            "{e}"
        );

        let e = run_err(
            json!([{"type": "p", "id": "x"}]),
            "",
            &op(
                "stream_children_to_struct_block",
                json!({"block_name": "p", "struct_block_name": "s"}),
            ),
        );
        assert_eq!(e, "at /0: the `p` block has no `value`");

        // JSON Pointer escaping of odd struct keys.
        let e = run_err(
            json!([{"type": "s", "value": {"a/b~c": 1}}]),
            "s.a/b~c.x",
            &rename_struct,
        );
        assert!(e.starts_with("at /0/value/a~1b~0c: "), "{e}");
    }

    #[test]
    fn new_block_ids_are_uuid4() {
        let a = new_block_id();
        let b = new_block_id();
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }
}
