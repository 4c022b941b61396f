//! The rule model: what a spec's `[[targets.rules]]` compile to — an
//! operation on one written column, where it applies (`select`) and when
//! (`when`). Parsed once per run by `spec`, applied by `rules`, journaled
//! by `journal`; no evaluation here.

use serde_json::Value;

use crate::guards::Condition;
use crate::jq::JqFilter;
use crate::select::Selector;
use crate::streamfield::{BlockPath, StreamOperation};

/// Where a `set` takes its value from.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSource {
    /// A literal written in the spec.
    Literal(Value),
    /// A parameter of the row: a column of its group or of its target row.
    Param(String),
    /// A value inside one of the row's documents (this column or another).
    Pointer { column: String, path: String },
}

/// What a `rename` does where the new key is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBoth {
    /// The row is an error naming both keys (the default: which value is
    /// meant cannot be told).
    Error,
    /// The new key keeps its value; the old key is dropped.
    KeepNew,
    /// The old key's value wins: it replaces the new key's value (where
    /// the new key stands), and the old key is dropped.
    Overwrite,
}

/// One operation on one column. Paths are JSON Pointers, relative to the
/// place the rule applies at (the document root without a selector).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Set {
        path: String,
        value: ValueSource,
    },
    Remove {
        path: String,
    },
    /// Moves the object member at `path` to the key `to` of the same
    /// object (a key name, not a pointer), keeping its position.
    Rename {
        path: String,
        to: String,
        on_both: OnBoth,
    },
    /// Writes a copy of the value at `from` to `path`; nothing when the
    /// source is absent. `column`: the column `from` is read in, from its
    /// root; `None` is the rule's own column, relative to the place.
    Copy {
        path: String,
        column: Option<String>,
        from: String,
    },
    /// Replaces the value at `path` with the filter's one output; nothing
    /// when there is no value there.
    Jq {
        path: String,
        filter: JqFilter,
    },
    /// A Wagtail StreamField migration operation on the stream at `path`
    /// (see [`crate::streamrule`]).
    Stream {
        path: String,
        operation: Box<StreamOperation>,
        block_path: BlockPath,
    },
    /// `inner` applied inside the JSON the string at `path` holds, written
    /// back in the string's own style (see [`crate::streamrule`]).
    InString {
        path: String,
        inner: Box<Op>,
    },
}

/// A rule of a target: an operation on one of its written columns, at the
/// document root or at each place `select` picks, where `when` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub column: String,
    pub op: Op,
    /// The places the rule applies at; `None`: the document root.
    pub select: Option<Selector>,
    /// Conditions that must all hold at a place for the rule to apply there.
    pub when: Vec<Condition>,
}
