//! What the crate's unit tests share: jobs of one target, and a row to
//! evaluate (its columns, parameters and normalised columns, owned), lent
//! to the rules as the [`RowInput`] of row `k`.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use crate::rules::{BeforeImage, RowInput};

/// The TOML of a target `revisions` over `wagtailcore_revision` (integer
/// key `id`, its `content` column) read by `$query` (`SELECT 1` if none),
/// up to its rules: a literal, for `concat!`.
macro_rules! revisions_target {
    () => {
        $crate::testing::revisions_target!("SELECT 1")
    };
    ($query:literal) => {
        concat!(
            r#"
[[targets]]
name = "revisions"
table = "wagtailcore_revision"
key = "id"
key_type = "integer"
columns = ["content"]
query = ""#,
            $query,
            "\"\n"
        )
    };
}
pub(crate) use revisions_target;

/// A job without groups whose one target, `revisions`, sets
/// `/product_name` to `"x"`.
pub(crate) const TITLES_SPEC: &str = concat!(
    "\nname = \"titles\"",
    revisions_target!(),
    r#"[[targets.rules]]
op = "set"
path = "/product_name"
value = "x"
"#
);

/// The text of a job whose one target, `rows`, reads the text-keyed table
/// `t` and writes its `doc` column: `columns` adds to the target (such as
/// `read_columns`), `rules` follows it.
pub(crate) fn rows_spec(columns: &str, rules: &str) -> String {
    format!(
        r#"
name = "t"
[[targets]]
name = "rows"
table = "t"
key = "id"
key_type = "text"
columns = ["doc"]
{columns}
query = "SELECT 1"
{rules}
"#
    )
}

/// A row as a test builds it.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub columns: BTreeMap<String, Option<String>>,
    pub params: Map<String, Value>,
    pub normalised: BTreeSet<String>,
}

impl Row {
    /// A row whose `doc` column holds `text`.
    pub fn doc(text: &str) -> Row {
        Row::with(&[("doc", Some(text))])
    }

    /// A row with these columns (`None`: SQL NULL).
    pub fn with(columns: &[(&str, Option<&str>)]) -> Row {
        Row {
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            ..Row::default()
        }
    }

    /// The same row with the parameters of `params` (a JSON object).
    pub fn params(mut self, params: Value) -> Row {
        self.params = params.as_object().cloned().unwrap_or_default();
        self
    }

    /// The same row, its database normalising `columns` (`jsonb`).
    pub fn normalised(mut self, columns: &[&str]) -> Row {
        self.normalised = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// The row as the rules read it.
    pub fn input(&self) -> RowInput<'_> {
        RowInput {
            key: "k",
            columns: &self.columns,
            params: &self.params,
            normalised: &self.normalised,
        }
    }
}

/// The before-images of a run that wrote the `doc` column only.
pub(crate) fn doc_image(image: BeforeImage) -> BTreeMap<String, BeforeImage> {
    [("doc".to_string(), image)].into()
}
