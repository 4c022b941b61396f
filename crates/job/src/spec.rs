//! The job spec: a TOML file that says which rows to rewrite and how.
//!
//! A job is data, not code. The spec names one or more *targets* (a table, its
//! key column, the JSON columns the rules may write and read, and the SQL that
//! finds the rows), optional *groups* (the unit the report speaks of, e.g.
//! programs, with guards that skip a whole group), and *rules* that rewrite a
//! document. Parsing is strict: unknown fields are refused, and every semantic
//! check names the field it is about (`targets[0].rules[1].path`).
//!
//! SQL in the spec is run as written with values bound as parameters; user
//! input (group keys) is never spliced into it. Table and column names are
//! validated as identifiers and always quoted when the store builds SQL.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

use crate::edit::unescape_token;
use crate::guards::{Check, Condition};
use crate::jq::JqFilter;
use crate::rule::{OnBoth, Op, Rule, ValueSource};
use crate::select::Selector;

/// Default number of rows a shard holds when the spec does not say.
pub const DEFAULT_SHARD_SIZE: u32 = 500;
/// Upper bound on rows per shard: a shard is one transaction, keep it short.
pub const MAX_SHARD_SIZE: u32 = 50_000;

// ---- caps -------------------------------------------------------------------
//
// A spec is data from a file, and every row of a run evaluates all of it:
// without bounds, a spec with a million rules took minutes and gigabytes per
// shard, and a pointer of 20,000 segments wrote a document nesting deeper
// than the next run could read. The caps are far above any real job.

/// The most bytes a spec file may hold (4 MiB).
pub const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;
/// The most targets a spec may name.
pub const MAX_TARGETS: usize = 64;
/// The most rules a target may hold.
pub const MAX_RULES: usize = 10_000;
/// The most guards a target, or the groups, may hold.
pub const MAX_GUARDS: usize = 1_000;
/// The most segments a JSON Pointer may have: with [`MAX_VALUE_DEPTH`], a
/// value set at the deepest path stays within the 128 levels serde_json
/// reads back.
pub const MAX_POINTER_SEGMENTS: usize = 64;
/// The most bytes a JSON Pointer may hold.
pub const MAX_POINTER_BYTES: usize = 1024;
/// The most bytes a literal value may take as compact JSON (1 MiB): every
/// changed row carries a copy.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The most levels a literal value may nest.
pub const MAX_VALUE_DEPTH: usize = 64;
/// The most bytes a rule's `select` query may hold.
pub const MAX_SELECT_BYTES: usize = 4096;
/// The most bytes a rule's jq `filter` may hold (64 KiB).
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Refuses a spec file longer than [`MAX_SPEC_BYTES`].
pub fn check_size(len: usize) -> Result<(), SpecError> {
    if len > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            "(file)",
            format!(
                "the spec holds more than {MAX_SPEC_BYTES} bytes (4 MiB), the most a spec may hold"
            ),
        ));
    }
    Ok(())
}

pub use crate::spec_error::SpecError;

/// The SQL dialects the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// SQL text, either one statement for every dialect or one per dialect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SqlText {
    Any(String),
    PerDialect {
        postgres: Option<String>,
        sqlite: Option<String>,
    },
}

impl SqlText {
    /// The statement for `dialect`, or an error naming the field.
    pub fn for_dialect(&self, field: &str, dialect: Dialect) -> Result<&str, SpecError> {
        let sql = match (self, dialect) {
            (SqlText::Any(s), _) => Some(s.as_str()),
            (SqlText::PerDialect { postgres, .. }, Dialect::Postgres) => postgres.as_deref(),
            (SqlText::PerDialect { sqlite, .. }, Dialect::Sqlite) => sqlite.as_deref(),
        };
        sql.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            SpecError::new(
                field,
                format!("no SQL for the {} back end", dialect.as_str()),
            )
        })
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        match self {
            SqlText::Any(s) if s.trim().is_empty() => Err(SpecError::new(field, "is empty")),
            SqlText::PerDialect {
                postgres: None,
                sqlite: None,
            } => Err(SpecError::new(
                field,
                "give the SQL as a string, or as { postgres = \"...\", sqlite = \"...\" }",
            )),
            _ => Ok(()),
        }
    }
}

/// What happens to a row edited concurrently (its compare-and-set failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Leave it as the application wrote it and report it as a conflict.
    #[default]
    Report,
    /// Leave the application's edit in place, read the row again under a
    /// row lock and apply the rules to what the application wrote.
    Retry,
}

/// How a target's key column is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Integer,
    Text,
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    description: String,
    shard_size: Option<u32>,
    on_conflict: Option<String>,
    pushdown: Option<bool>,
    groups: Option<RawGroups>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    report: Option<RawReport>,
    throttle: Option<RawThrottle>,
    health: Option<RawHealth>,
    sizing: Option<RawSizing>,
    requires: Option<String>,
    #[serde(default)]
    versioned: bool,
    notify: Option<RawNotify>,
    schedule: Option<RawSchedule>,
    /// Checked and resolved by `params` before this parse.
    #[allow(dead_code)]
    params: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default)]
    windows: Vec<String>,
    time_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    urls: Vec<String>,
    format: Option<String>,
    stall_after_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    rows_per_sec: Option<f64>,
    bytes_per_sec: Option<f64>,
    max_in_flight: Option<u32>,
    priority: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    max_replication_lag_seconds: Option<f64>,
    max_replication_lag_bytes: Option<i64>,
    max_wal_bytes_per_sec: Option<f64>,
    max_active_backends: Option<u32>,
    sql: Option<SqlText>,
    check_every_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSizing {
    #[serde(default)]
    adaptive: bool,
    target_shard_seconds: Option<f64>,
    min_shard_size: Option<u32>,
    max_shard_size: Option<u32>,
    max_growth: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroups {
    #[serde(default = "default_group_noun")]
    noun: String,
    query: SqlText,
    #[serde(default)]
    guards: Vec<RawGuard>,
}

fn default_group_noun() -> String {
    "group".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    param: Option<String>,
    column: Option<String>,
    path: Option<String>,
    check: String,
    prefix: Option<String>,
    value: Option<toml::Value>,
    reason: Option<String>,
}

/// One of a rule's `when` conditions as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    path: String,
    check: String,
    prefix: Option<String>,
    value: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    table: String,
    key: String,
    key_type: KeyType,
    columns: Vec<String>,
    #[serde(default)]
    read_columns: Vec<String>,
    query: SqlText,
    #[serde(default)]
    guards: Vec<RawGuard>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    column: Option<String>,
    op: String,
    path: Option<String>,
    select: Option<String>,
    /// One condition (`when = { ... }`) or several (`[[targets.rules.when]]`).
    when: Option<toml::Value>,
    value: Option<toml::Value>,
    param: Option<String>,
    from: Option<String>,
    from_column: Option<String>,
    to: Option<String>,
    on_both: Option<String>,
    filter: Option<String>,
    /// The value at `path` is a string holding JSON; the rule runs inside it.
    json_string: Option<bool>,
    /// With `json_string`: where inside the decoded JSON the rule runs.
    inner_path: Option<String>,
    /// `op = "streamfield"`: the operation and the block path.
    operation: Option<String>,
    block_path: Option<String>,
    /// `op = "streamfield"`: the operation's arguments.
    old_name: Option<toml::Value>,
    new_name: Option<toml::Value>,
    name: Option<toml::Value>,
    block_name: Option<toml::Value>,
    list_block_name: Option<toml::Value>,
    block_names: Option<toml::Value>,
    stream_block_name: Option<toml::Value>,
    new_value: Option<toml::Value>,
    struct_block_name: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    #[serde(default = "default_row_noun")]
    row_noun: String,
    #[serde(default = "default_ref_noun")]
    ref_noun: String,
    current: Option<RawCurrent>,
    target_param: Option<String>,
}

fn default_row_noun() -> String {
    "row".to_string()
}
fn default_ref_noun() -> String {
    "reference".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCurrent {
    target: String,
    column: String,
    path: String,
}

// ---- the validated spec --------------------------------------------------

/// A validated job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub description: String,
    pub shard_size: u32,
    /// What a mapper does with a row the application edited between its read
    /// and its write.
    pub on_conflict: OnConflict,
    /// Whether PostgreSQL may apply rules it can say in SQL itself, each
    /// row as it is at the write (`backfill_job::pushdown`); `false` keeps
    /// every row on the read-rewrite-write path, compare-and-set and its
    /// conflicts included. `true` unless the spec says otherwise.
    pub pushdown: bool,
    pub groups: Option<GroupsSpec>,
    pub targets: Vec<TargetSpec>,
    pub report: ReportSpec,
    pub throttle: ThrottleSpec,
    pub health: HealthSpec,
    pub sizing: SizingSpec,
    /// A job that must be committed and verified (a passed `backfill
    /// verify` after its last commit) before this one may commit.
    pub requires: Option<String>,
    /// The target tables hold versions of records: a run must not add or
    /// remove rows, and `verify` checks the row counts the ledger recorded
    /// before and after the job's last commit.
    pub versioned: bool,
    /// Webhooks told when a run starts, ends, fails, is cancelled,
    /// dead-letters a shard or stalls.
    pub notify: NotifySpec,
    /// When the run may start shards (`[schedule]`); always, when `None`.
    pub schedule: Option<crate::schedule::Schedule>,
    /// The parameters (`[params]`) with the values the run uses.
    pub params: Vec<crate::params::Param>,
    /// The file's text with its parameters resolved (see `params`); the
    /// ledger keeps it so mappers use the run's spec.
    pub source: String,
    /// SHA-256 of `source`, hex.
    pub hash: String,
}

/// How the job finds its groups and which of them it skips.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupsSpec {
    pub noun: String,
    /// Returns `key`, `label` and parameter columns; `$1`/`?1` is a JSON array
    /// of the requested keys, or NULL for `--all`.
    pub query: SqlText,
    pub guards: Vec<GroupGuard>,
}

/// A check on a group parameter that skips the whole group when it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupGuard {
    pub param: String,
    pub check: Check,
    pub reason: String,
}

/// A check on a row's document that skips the row when it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGuard {
    pub column: String,
    pub path: String,
    pub check: Check,
    pub reason: String,
}

/// One table the job rewrites.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub name: String,
    pub table: String,
    pub key: String,
    pub key_type: KeyType,
    /// JSON columns the rules write. Nothing else is ever written.
    pub columns: Vec<String>,
    /// JSON columns the rules and guards only read.
    pub read_columns: Vec<String>,
    /// Returns `key` (NULL for a reference with no row), and when the job has
    /// groups, `group`; optionally `refs` (references the row stands for) and
    /// `skip` (a reason to skip the reference). `$1`/`?1` is a JSON array of
    /// the group keys that passed the guards (NULL for jobs without groups).
    pub query: SqlText,
    pub guards: Vec<RowGuard>,
    pub rules: Vec<Rule>,
}

impl TargetSpec {
    /// Every JSON column fetched for a row: written ones first, then read-only.
    pub fn all_columns(&self) -> impl Iterator<Item = &String> {
        self.columns.iter().chain(self.read_columns.iter())
    }
}

/// How fast a run may go: the starting values, changeable while it runs
/// with `backfill throttle`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ThrottleSpec {
    /// Rows per second across all mappers; `None` is unlimited.
    pub rows_per_sec: Option<f64>,
    /// Bytes of rewritten documents per second across all mappers; `None`
    /// is unlimited.
    pub bytes_per_sec: Option<f64>,
    /// PostgreSQL: the server's WAL write rate (bytes per second, measured
    /// from `pg_current_wal_lsn()`) above which the run starts no shard.
    /// Written in the spec's `[health]` section (`max_wal_bytes_per_sec`);
    /// `None` is unlimited. Not applied on SQLite.
    pub max_wal_bytes_per_sec: Option<f64>,
    /// Shards being worked on at once across all mappers; `None` is unlimited.
    pub max_in_flight: Option<u32>,
    /// Higher runs first: a run waits while a running run of higher priority
    /// has shards left.
    pub priority: i32,
}

/// Where and how a run's notifications go (`[notify]`); the command line's
/// `--notify` adds to `urls`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySpec {
    /// `http://` or `https://` webhooks, each POSTed every notification.
    pub urls: Vec<String>,
    pub format: NotifyFormat,
    /// A running, unpaused run with no shard finished for this long is
    /// reported stalled (once per stall).
    pub stall_after_seconds: f64,
}

impl Default for NotifySpec {
    fn default() -> Self {
        NotifySpec {
            urls: Vec::new(),
            format: NotifyFormat::Json,
            stall_after_seconds: 1800.0,
        }
    }
}

/// The body of a notification: the documented JSON document, or a
/// Slack-compatible `{"text": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyFormat {
    #[default]
    Json,
    Slack,
}

impl std::str::FromStr for NotifyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(NotifyFormat::Json),
            "slack" => Ok(NotifyFormat::Slack),
            other => Err(format!("must be \"json\" or \"slack\", got \"{other}\"")),
        }
    }
}

/// Checks a webhook URL: `http://` or `https://` with a host.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("names no host".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds a space or a control character".into());
    }
    Ok(())
}

/// The database health check that pauses a run's mappers while it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// PostgreSQL: pause while a standby's replay lag exceeds this; `0` turns the check off.
    pub max_replication_lag_seconds: f64,
    /// PostgreSQL: pause while a standby's replay position is more than this
    /// many bytes of WAL behind the primary's; `0` (the default) turns the
    /// check off.
    pub max_replication_lag_bytes: u64,
    /// PostgreSQL: pause while more client backends than this are active; `0` turns it off.
    pub max_active_backends: u32,
    /// The job's own check: one row, one boolean column, true when healthy.
    pub sql: Option<SqlText>,
    /// How often a mapper re-evaluates the check.
    pub check_every_seconds: f64,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            max_replication_lag_seconds: 30.0,
            max_replication_lag_bytes: 0,
            max_active_backends: 100,
            sql: None,
            check_every_seconds: 2.0,
        }
    }
}

/// Adaptive shard sizing: the coordinator sizes a new run's shards from the
/// shard durations measured in the job's earlier runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizingSpec {
    pub adaptive: bool,
    /// The duration a shard should take.
    pub target_shard_seconds: f64,
    pub min_shard_size: u32,
    pub max_shard_size: u32,
    /// At most this factor larger (or smaller) than the size measured.
    pub max_growth: f64,
}

impl Default for SizingSpec {
    fn default() -> Self {
        SizingSpec {
            adaptive: false,
            target_shard_seconds: 5.0,
            min_shard_size: 50,
            max_shard_size: 5_000,
            max_growth: 2.0,
        }
    }
}

/// What the report shows per group.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSpec {
    pub row_noun: String,
    pub ref_noun: String,
    pub current: Option<CurrentValue>,
    pub target_param: Option<String>,
}

/// Where the report reads a row's current value from.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentValue {
    pub target: String,
    pub column: String,
    pub path: String,
}

impl JobSpec {
    /// Parses and validates a spec from TOML text.
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        Self::parse_with_params(text, &[])
    }

    /// Parses a spec whose parameters take the given `NAME=VALUE` values
    /// (`--param`) over those recorded in it and its defaults.
    pub fn parse_with_params(
        text: &str,
        overrides: &[(String, String)],
    ) -> Result<JobSpec, SpecError> {
        check_size(text.len())?;
        let (resolved, params) = crate::params::resolve(text, overrides)?;
        let text = resolved.as_str();
        check_size(text.len())?;
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            // toml names unknown/missing fields in its message; keep its span too.
            let field = field_from_toml_error(&msg);
            let line = e
                .span()
                .map(|s| format!(" (line {})", line_of(text, s.start)))
                .unwrap_or_default();
            SpecError::new(field, format!("{msg}{line}"))
        })?;
        let hash = hex(&Sha256::digest(text.as_bytes()));
        let mut spec = validate(raw, text.to_string(), hash)?;
        spec.params = params;
        Ok(spec)
    }

    pub fn target(&self, name: &str) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn group_noun(&self) -> &str {
        self.groups
            .as_ref()
            .map(|g| g.noun.as_str())
            .unwrap_or("target")
    }
}

fn field_from_toml_error(msg: &str) -> String {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next() {
                return name.to_string();
            }
        }
    }
    "(file)".to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A table or column name: letters, digits and underscores, optionally
/// schema-qualified (`public.wagtailcore_revision`). Mixed case is fine
/// (`"CEUs"`): the store always quotes.
pub fn is_identifier(s: &str) -> bool {
    let part_ok = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    let parts: Vec<&str> = s.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| part_ok(p))
}

/// Quotes a validated identifier for SQL (`schema.table` → `"schema"."table"`).
pub fn quote_ident(s: &str) -> String {
    s.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks a JSON Pointer (RFC 6901): empty (the whole document) or `/`-led,
/// with `~` only as `~0` or `~1`.
pub fn validate_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    let segments = p.matches('/').count();
    if segments > MAX_POINTER_SEGMENTS {
        return Err(format!(
            "the pointer has {segments} segments, more than the {MAX_POINTER_SEGMENTS} a pointer may have"
        ));
    }
    if p.len() > MAX_POINTER_BYTES {
        return Err(format!(
            "the pointer holds {} bytes, more than the {MAX_POINTER_BYTES} a pointer may hold",
            p.len()
        ));
    }
    if !p.starts_with('/') {
        return Err(format!(
            "`{p}` is not a JSON Pointer: it must be empty or start with `/`"
        ));
    }
    let bytes = p.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0') | Some(b'1')) {
            return Err(format!(
                "`{p}` is not a JSON Pointer: `~` must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

fn is_job_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.len() <= 100
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(toml_to_json).collect())
        }
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// A literal value, within [`MAX_VALUE_BYTES`] and [`MAX_VALUE_DEPTH`].
fn literal(field: &str, v: toml::Value) -> Result<serde_json::Value, SpecError> {
    let v = toml_to_json(v);
    let depth = crate::splice::value_depth(&v);
    if depth > MAX_VALUE_DEPTH {
        return Err(SpecError::new(
            field,
            format!("the value nests {depth} levels, more than the {MAX_VALUE_DEPTH} a value may"),
        ));
    }
    let bytes = serde_json::to_string(&v).map_or(usize::MAX, |t| t.len());
    if bytes > MAX_VALUE_BYTES {
        return Err(SpecError::new(
            field,
            format!(
                "the value takes {bytes} bytes as JSON, more than the {MAX_VALUE_BYTES} (1 MiB) a value may"
            ),
        ));
    }
    Ok(v)
}

const CHECKS: &str = "present, not_blank, not_prefix, exists, absent, null, equals or not_equals";

fn parse_check(
    field: &str,
    check: &str,
    prefix: Option<String>,
    value: Option<toml::Value>,
) -> Result<Check, SpecError> {
    let known = [
        "present",
        "not_blank",
        "not_prefix",
        "exists",
        "absent",
        "null",
        "equals",
        "not_equals",
    ];
    if !known.contains(&check) {
        return Err(SpecError::new(
            format!("{field}.check"),
            format!("unknown check `{check}` (expected {CHECKS})"),
        ));
    }
    if prefix.is_some() && check != "not_prefix" {
        return Err(SpecError::new(
            format!("{field}.prefix"),
            format!("`prefix` only goes with check `not_prefix`, not `{check}`"),
        ));
    }
    if value.is_some() && !matches!(check, "equals" | "not_equals") {
        return Err(SpecError::new(
            format!("{field}.value"),
            format!("`value` only goes with checks `equals` and `not_equals`, not `{check}`"),
        ));
    }
    let compared = |value: Option<toml::Value>| match value {
        Some(v) => literal(&format!("{field}.value"), v),
        None => Err(SpecError::new(
            format!("{field}.value"),
            format!("check `{check}` needs a `value` (for JSON null, use check `null`)"),
        )),
    };
    Ok(match check {
        "present" => Check::Present,
        "not_blank" => Check::NotBlank,
        "exists" => Check::Exists,
        "absent" => Check::Absent,
        "null" => Check::Null,
        "equals" => Check::Equals(compared(value)?),
        "not_equals" => Check::NotEquals(compared(value)?),
        _ => match prefix {
            Some(p) if !p.is_empty() => Check::NotPrefix(p),
            _ => {
                return Err(SpecError::new(
                    format!("{field}.prefix"),
                    "check `not_prefix` needs a non-empty `prefix`",
                ))
            }
        },
    })
}

fn default_reason(check: &Check, what: &str) -> String {
    match check {
        Check::Present | Check::Exists => format!("{what} missing"),
        Check::NotBlank => format!("{what} blank"),
        Check::NotPrefix(p) => format!("{what} starts with {p:?}"),
        Check::Absent => format!("{what} present"),
        Check::Null => format!("{what} not null"),
        Check::Equals(v) => format!("{what} is not {v}"),
        Check::NotEquals(v) => format!("{what} is {v}"),
    }
}

/// A rule's `when`: one inline table or a list of them.
fn parse_when(field: &str, raw: Option<toml::Value>) -> Result<Vec<Condition>, SpecError> {
    let field = format!("{field}.when");
    let tables = match raw {
        None => return Ok(Vec::new()),
        Some(t @ toml::Value::Table(_)) => vec![(field.clone(), t)],
        Some(toml::Value::Array(list)) => {
            if list.len() > MAX_GUARDS {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{} conditions, more than the {MAX_GUARDS} a rule may hold",
                        list.len()
                    ),
                ));
            }
            list.into_iter()
                .enumerate()
                .map(|(i, t)| (format!("{field}[{i}]"), t))
                .collect()
        }
        Some(_) => {
            return Err(SpecError::new(
                field,
                "give a condition `{ path = \"/x\", check = \"exists\" }` or a list of them",
            ))
        }
    };
    let mut out = Vec::new();
    for (f, t) in tables {
        let c: RawCondition = t
            .try_into()
            .map_err(|e: toml::de::Error| SpecError::new(f.clone(), e.message().to_string()))?;
        validate_pointer(&c.path).map_err(|m| SpecError::new(format!("{f}.path"), m))?;
        let check = parse_check(&f, &c.check, c.prefix, c.value)?;
        out.push(Condition {
            path: c.path,
            check,
        });
    }
    Ok(out)
}

fn validate(raw: RawSpec, source: String, hash: String) -> Result<JobSpec, SpecError> {
    if !is_job_name(&raw.name) {
        return Err(SpecError::new(
            "name",
            format!(
                "`{}` is not a job name: use letters, digits, `-` and `_`",
                raw.name
            ),
        ));
    }
    let shard_size = raw.shard_size.unwrap_or(DEFAULT_SHARD_SIZE);
    if shard_size == 0 || shard_size > MAX_SHARD_SIZE {
        return Err(SpecError::new(
            "shard_size",
            format!("must be between 1 and {MAX_SHARD_SIZE}, got {shard_size}"),
        ));
    }

    let on_conflict = match raw.on_conflict.as_deref() {
        None | Some("report") => OnConflict::Report,
        Some("retry") => OnConflict::Retry,
        Some(other) => {
            return Err(SpecError::new(
                "on_conflict",
                format!("unknown value `{other}` (expected report or retry)"),
            ))
        }
    };
    let groups = match raw.groups {
        None => None,
        Some(g) => {
            g.query.validate("groups.query")?;
            if g.guards.len() > MAX_GUARDS {
                return Err(SpecError::new(
                    "groups.guards",
                    format!(
                        "{} guards, more than the {MAX_GUARDS} the groups may hold",
                        g.guards.len()
                    ),
                ));
            }
            let mut guards = Vec::new();
            for (i, rg) in g.guards.into_iter().enumerate() {
                let field = format!("groups.guards[{i}]");
                if rg.column.is_some() || rg.path.is_some() {
                    return Err(SpecError::new(
                        field,
                        "a group guard checks a group parameter: give `param`, not `column`/`path`",
                    ));
                }
                let param = rg
                    .param
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| SpecError::new(format!("{field}.param"), "is required"))?;
                let check = parse_check(&field, &rg.check, rg.prefix, rg.value)?;
                let reason = rg.reason.unwrap_or_else(|| default_reason(&check, &param));
                guards.push(GroupGuard {
                    param,
                    check,
                    reason,
                });
            }
            Some(GroupsSpec {
                noun: g.noun,
                query: g.query,
                guards,
            })
        }
    };

    if raw.targets.is_empty() {
        return Err(SpecError::new(
            "targets",
            "a job needs at least one [[targets]] table",
        ));
    }
    if raw.targets.len() > MAX_TARGETS {
        return Err(SpecError::new(
            "targets",
            format!(
                "{} targets, more than the {MAX_TARGETS} a spec may name",
                raw.targets.len()
            ),
        ));
    }
    let mut names = BTreeSet::new();
    let mut targets = Vec::new();
    for (ti, t) in raw.targets.into_iter().enumerate() {
        let tf = format!("targets[{ti}]");
        if !is_job_name(&t.name) {
            return Err(SpecError::new(
                format!("{tf}.name"),
                format!(
                    "`{}` is not a valid name: use letters, digits, `-` and `_`",
                    t.name
                ),
            ));
        }
        if !names.insert(t.name.clone()) {
            return Err(SpecError::new(
                format!("{tf}.name"),
                format!("target name `{}` is used twice", t.name),
            ));
        }
        for (what, v) in [("table", &t.table), ("key", &t.key)] {
            if !is_identifier(v) {
                return Err(SpecError::new(
                    format!("{tf}.{what}"),
                    format!("`{v}` is not a table/column identifier"),
                ));
            }
        }
        if t.columns.is_empty() {
            return Err(SpecError::new(
                format!("{tf}.columns"),
                "name at least one JSON column the rules write",
            ));
        }
        let mut seen = BTreeSet::new();
        for (list, cols) in [("columns", &t.columns), ("read_columns", &t.read_columns)] {
            for (ci, c) in cols.iter().enumerate() {
                if !is_identifier(c) || c.contains('.') {
                    return Err(SpecError::new(
                        format!("{tf}.{list}[{ci}]"),
                        format!("`{c}` is not a column name"),
                    ));
                }
                if c == &t.key {
                    return Err(SpecError::new(
                        format!("{tf}.{list}[{ci}]"),
                        format!("`{c}` is the key column; it is never rewritten"),
                    ));
                }
                if !seen.insert(c.clone()) {
                    return Err(SpecError::new(
                        format!("{tf}.{list}[{ci}]"),
                        format!("column `{c}` is listed twice"),
                    ));
                }
            }
        }
        t.query.validate(&format!("{tf}.query"))?;

        let known_column = |c: &str| t.columns.iter().chain(&t.read_columns).any(|x| x == c);

        at_most(&tf, &t.name, "guards", t.guards.len(), MAX_GUARDS)?;
        let mut guards = Vec::new();
        for (gi, rg) in t.guards.into_iter().enumerate() {
            let field = format!("{tf}.guards[{gi}]");
            if rg.param.is_some() {
                return Err(SpecError::new(
                    field,
                    "a row guard checks a document: give `column` and `path`, not `param`",
                ));
            }
            let column = rg.column.unwrap_or_else(|| t.columns[0].clone());
            if !known_column(&column) {
                return Err(SpecError::new(
                    format!("{field}.column"),
                    format!("`{column}` is not in this target's columns or read_columns"),
                ));
            }
            let path = rg
                .path
                .ok_or_else(|| SpecError::new(format!("{field}.path"), "is required"))?;
            validate_pointer(&path).map_err(|m| SpecError::new(format!("{field}.path"), m))?;
            let check = parse_check(&field, &rg.check, rg.prefix, rg.value)?;
            let reason = rg
                .reason
                .unwrap_or_else(|| default_reason(&check, &format!("{column}{path}")));
            guards.push(RowGuard {
                column,
                path,
                check,
                reason,
            });
        }

        if t.rules.is_empty() {
            return Err(SpecError::new(
                format!("{tf}.rules"),
                "a target needs at least one [[targets.rules]] rule",
            ));
        }
        at_most(&tf, &t.name, "rules", t.rules.len(), MAX_RULES)?;
        let mut rules = Vec::new();
        for (ri, r) in t.rules.into_iter().enumerate() {
            let field = format!("{tf}.rules[{ri}]");
            rules.push(validate_rule(&field, r, &t.columns, &t.read_columns)?);
        }

        targets.push(TargetSpec {
            name: t.name,
            table: t.table,
            key: t.key,
            key_type: t.key_type,
            columns: t.columns,
            read_columns: t.read_columns,
            query: t.query,
            guards,
            rules,
        });
    }

    let report = match raw.report {
        None => ReportSpec {
            row_noun: default_row_noun(),
            ref_noun: default_ref_noun(),
            current: None,
            target_param: None,
        },
        Some(r) => {
            let current = match r.current {
                None => None,
                Some(c) => {
                    let Some(t) = targets.iter().find(|t| t.name == c.target) else {
                        return Err(SpecError::new(
                            "report.current.target",
                            format!("no target named `{}`", c.target),
                        ));
                    };
                    if !t.all_columns().any(|x| x == &c.column) {
                        return Err(SpecError::new(
                            "report.current.column",
                            format!("`{}` is not a column of target `{}`", c.column, t.name),
                        ));
                    }
                    validate_pointer(&c.path)
                        .map_err(|m| SpecError::new("report.current.path", m))?;
                    Some(CurrentValue {
                        target: c.target,
                        column: c.column,
                        path: c.path,
                    })
                }
            };
            if r.target_param.is_some() && groups.is_none() {
                return Err(SpecError::new(
                    "report.target_param",
                    "a target value is a group parameter, and this job has no [groups]",
                ));
            }
            ReportSpec {
                row_noun: r.row_noun,
                ref_noun: r.ref_noun,
                current,
                target_param: r.target_param,
            }
        }
    };

    let mut throttle = validate_throttle(raw.throttle)?;
    throttle.max_wal_bytes_per_sec = positive(
        "health.max_wal_bytes_per_sec",
        raw.health.as_ref().and_then(|h| h.max_wal_bytes_per_sec),
    )?;
    let notify = validate_notify(raw.notify)?;
    let schedule = match raw.schedule {
        None => None,
        Some(s) => Some(
            crate::schedule::Schedule::new(&s.windows, s.time_zone.as_deref().unwrap_or("UTC"))
                .map_err(|(i, e)| match i {
                    Some(i) => SpecError::new(format!("schedule.windows[{i}]"), e),
                    None if s.windows.is_empty() => SpecError::new("schedule.windows", e),
                    None => SpecError::new("schedule.time_zone", e),
                })?,
        ),
    };
    let health = validate_health(raw.health)?;
    let sizing = validate_sizing(raw.sizing)?;

    let requires = match raw.requires {
        Some(r) if r.trim().is_empty() => {
            return Err(SpecError::new("requires", "must name a job"));
        }
        Some(r) if r == raw.name => {
            return Err(SpecError::new("requires", "a job cannot require itself"));
        }
        other => other,
    };
    Ok(JobSpec {
        name: raw.name,
        description: raw.description,
        shard_size,
        on_conflict,
        pushdown: raw.pushdown.unwrap_or(true),
        groups,
        targets,
        report,
        throttle,
        health,
        sizing,
        requires,
        versioned: raw.versioned,
        notify,
        schedule,
        params: Vec::new(),
        source,
        hash,
    })
}

/// Validates one rule: its column, op and the fields the op takes, its
/// selector and conditions (parsed here, once per run) and its jq filter
/// (compiled here).
/// Refuses target `name` (its field `tf`) holding `count` of `what`
/// (guards, rules) when a target may hold at most `max`.
fn at_most(tf: &str, name: &str, what: &str, count: usize, max: usize) -> Result<(), SpecError> {
    if count > max {
        return Err(SpecError::new(
            format!("{tf}.{what}"),
            format!("target `{name}` has {count} {what}, more than the {max} a target may hold"),
        ));
    }
    Ok(())
}

fn validate_rule(
    field: &str,
    r: RawRule,
    columns: &[String],
    read_columns: &[String],
) -> Result<Rule, SpecError> {
    let known_column = |c: &str| columns.iter().chain(read_columns).any(|x| x == c);
    let column = r.column.unwrap_or_else(|| columns[0].clone());
    if !columns.contains(&column) {
        return Err(SpecError::new(
            format!("{field}.column"),
            format!("`{column}` is not one of this target's written `columns`"),
        ));
    }
    let select = match r.select {
        None => None,
        Some(q) => {
            if q.len() > MAX_SELECT_BYTES {
                return Err(SpecError::new(
                    format!("{field}.select"),
                    format!(
                        "the query holds {} bytes, more than the {MAX_SELECT_BYTES} a query may hold",
                        q.len()
                    ),
                ));
            }
            Some(Selector::parse(&q).map_err(|m| SpecError::new(format!("{field}.select"), m))?)
        }
    };
    // With a selector, `path` is relative to each selected place and may
    // be left out (the place itself).
    let path = match (r.path, &select) {
        (Some(p), _) => p,
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(SpecError::new(
                format!("{field}.path"),
                "is required (or give `select`)",
            ))
        }
    };
    validate_pointer(&path).map_err(|m| SpecError::new(format!("{field}.path"), m))?;
    if path.split('/').any(|tok| tok == "-") {
        return Err(SpecError::new(
            format!("{field}.path"),
            "`-` (append) is not allowed: it would add again on every run",
        ));
    }
    let when = parse_when(field, r.when)?;
    let json_string = r.json_string.unwrap_or(false);
    if let Some(inner) = &r.inner_path {
        if !json_string {
            return Err(SpecError::new(
                format!("{field}.inner_path"),
                "`inner_path` is only for a rule with `json_string = true`",
            ));
        }
        validate_pointer(inner).map_err(|m| SpecError::new(format!("{field}.inner_path"), m))?;
    }
    let mut stream_args = serde_json::Map::new();
    for (name, v) in [
        ("old_name", r.old_name),
        ("new_name", r.new_name),
        ("name", r.name),
        ("block_name", r.block_name),
        ("list_block_name", r.list_block_name),
        ("block_names", r.block_names),
        ("stream_block_name", r.stream_block_name),
        ("new_value", r.new_value),
        ("struct_block_name", r.struct_block_name),
    ] {
        if let Some(v) = v {
            stream_args.insert(name.into(), literal(&format!("{field}.{name}"), v)?);
        }
    }
    if r.op != "streamfield" {
        let stray = (r.operation.as_ref().map(|_| "operation"))
            .or(r.block_path.as_ref().map(|_| "block_path"))
            .or(stream_args.keys().next().map(String::as_str));
        if let Some(name) = stray {
            return Err(SpecError::new(
                format!("{field}.{name}"),
                format!("`{name}` is for op `streamfield`, not `{}`", r.op),
            ));
        }
    }

    // Each op names the fields it takes; any other is refused, named.
    let op_name = r.op.as_str();
    let given: [(&str, bool); 7] = [
        ("value", r.value.is_some()),
        ("param", r.param.is_some()),
        ("from", r.from.is_some()),
        ("from_column", r.from_column.is_some()),
        ("to", r.to.is_some()),
        ("on_both", r.on_both.is_some()),
        ("filter", r.filter.is_some()),
    ];
    let takes: &[&str] = match op_name {
        "set" => &["value", "param", "from", "from_column"],
        "remove" => &[],
        "rename" => &["to", "on_both"],
        "copy" => &["from", "from_column"],
        "jq" => &["filter"],
        // Its arguments are fields of the rule, checked by the operation.
        "streamfield" => &[],
        other => {
            return Err(SpecError::new(
                format!("{field}.op"),
                format!(
                    "unknown op `{other}` (expected set, remove, rename, copy, jq or streamfield)"
                ),
            ))
        }
    };
    if let Some((name, _)) = given.iter().find(|(n, g)| *g && !takes.contains(n)) {
        return Err(match op_name {
            "remove" => SpecError::new(field, "op `remove` takes no value source"),
            _ => SpecError::new(
                format!("{field}.{name}"),
                format!("op `{op_name}` does not take `{name}`"),
            ),
        });
    }

    let op = match op_name {
        "set" => {
            let sources = [
                r.value.is_some(),
                r.param.is_some(),
                r.from.is_some() || r.from_column.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(SpecError::new(
                    field,
                    "op `set` takes exactly one value source: `value`, `param`, or `from`/`from_column`",
                ));
            }
            let value = if let Some(v) = r.value {
                ValueSource::Literal(literal(&format!("{field}.value"), v)?)
            } else if let Some(p) = r.param {
                if p.is_empty() {
                    return Err(SpecError::new(format!("{field}.param"), "is empty"));
                }
                ValueSource::Param(p)
            } else {
                let from = r.from.unwrap_or_default();
                validate_pointer(&from).map_err(|m| SpecError::new(format!("{field}.from"), m))?;
                let col = r.from_column.unwrap_or_else(|| column.clone());
                if !known_column(&col) {
                    return Err(SpecError::new(
                        format!("{field}.from_column"),
                        format!("`{col}` is not in this target's columns or read_columns"),
                    ));
                }
                if col == column && from.is_empty() {
                    return Err(SpecError::new(
                        format!("{field}.from"),
                        "copying a document onto itself: give a `from` pointer",
                    ));
                }
                ValueSource::Pointer {
                    column: col,
                    path: from,
                }
            };
            Op::Set { path, value }
        }
        "streamfield" => crate::streamrule::compile(
            field,
            &path,
            r.operation.as_deref(),
            r.block_path.as_deref(),
            &stream_args,
        )?,
        "remove" => {
            if path.is_empty() && select.is_none() && !json_string {
                return Err(SpecError::new(
                    format!("{field}.path"),
                    "cannot remove the whole document; use op `set` with path \"\" and a value",
                ));
            }
            Op::Remove { path }
        }
        "rename" => {
            let to = r.to.ok_or_else(|| {
                SpecError::new(
                    format!("{field}.to"),
                    "op `rename` needs `to`, the new key name",
                )
            })?;
            if to.is_empty() {
                return Err(SpecError::new(format!("{field}.to"), "is empty"));
            }
            if path.is_empty() && select.is_none() {
                return Err(SpecError::new(
                    format!("{field}.path"),
                    "a rename needs the pointer of the key to rename",
                ));
            }
            if let Some(cut) = path.rfind('/') {
                if unescape_token(&path[cut + 1..]) == to {
                    return Err(SpecError::new(
                        format!("{field}.to"),
                        format!("renames `{to}` to itself"),
                    ));
                }
            }
            let on_both = match r.on_both.as_deref() {
                None | Some("error") => OnBoth::Error,
                Some("keep_new") => OnBoth::KeepNew,
                Some("overwrite") => OnBoth::Overwrite,
                Some(other) => {
                    return Err(SpecError::new(
                        format!("{field}.on_both"),
                        format!("unknown value `{other}` (expected error, keep_new or overwrite)"),
                    ))
                }
            };
            Op::Rename { path, to, on_both }
        }
        "copy" => {
            if r.from.is_none() && r.from_column.is_none() {
                return Err(SpecError::new(
                    format!("{field}.from"),
                    "op `copy` needs `from` (a pointer) or `from_column`",
                ));
            }
            let from = r.from.unwrap_or_default();
            validate_pointer(&from).map_err(|m| SpecError::new(format!("{field}.from"), m))?;
            let source_column = match r.from_column {
                None => None,
                Some(c) if !known_column(&c) => {
                    return Err(SpecError::new(
                        format!("{field}.from_column"),
                        format!("`{c}` is not in this target's columns or read_columns"),
                    ))
                }
                Some(c) => Some(c),
            };
            if source_column.as_deref().unwrap_or(&column) == column
                && from == path
                && (source_column.is_none() || select.is_none())
            {
                return Err(SpecError::new(
                    format!("{field}.from"),
                    "copies a value onto itself",
                ));
            }
            Op::Copy {
                path,
                column: source_column,
                from,
            }
        }
        _ => {
            let source = r.filter.ok_or_else(|| {
                SpecError::new(format!("{field}.filter"), "op `jq` needs a `filter`")
            })?;
            if source.len() > MAX_FILTER_BYTES {
                return Err(SpecError::new(
                    format!("{field}.filter"),
                    format!(
                        "the filter holds {} bytes, more than the {MAX_FILTER_BYTES} a filter may hold",
                        source.len()
                    ),
                ));
            }
            let filter = JqFilter::compile(&source)
                .map_err(|m| SpecError::new(format!("{field}.filter"), m))?;
            Op::Jq { path, filter }
        }
    };
    let op = if json_string {
        crate::streamrule::in_string(field, op, r.inner_path.as_deref().unwrap_or(""))?
    } else {
        op
    };
    Ok(Rule {
        column,
        op,
        select,
        when,
    })
}

fn validate_notify(raw: Option<RawNotify>) -> Result<NotifySpec, SpecError> {
    let d = NotifySpec::default();
    let Some(n) = raw else { return Ok(d) };
    for (i, url) in n.urls.iter().enumerate() {
        check_webhook_url(url).map_err(|e| SpecError::new(format!("notify.urls[{i}]"), e))?;
    }
    let format = match n.format {
        Some(f) => f
            .parse()
            .map_err(|e: String| SpecError::new("notify.format", e))?,
        None => d.format,
    };
    let stall = positive("notify.stall_after_seconds", n.stall_after_seconds)?
        .unwrap_or(d.stall_after_seconds);
    Ok(NotifySpec {
        urls: n.urls,
        format,
        stall_after_seconds: stall,
    })
}

fn positive(field: &str, v: Option<f64>) -> Result<Option<f64>, SpecError> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => Err(SpecError::new(
            field,
            format!("must be a positive number, got {x}"),
        )),
        other => Ok(other),
    }
}

fn validate_throttle(raw: Option<RawThrottle>) -> Result<ThrottleSpec, SpecError> {
    let Some(t) = raw else {
        return Ok(ThrottleSpec::default());
    };
    if t.max_in_flight == Some(0) {
        return Err(SpecError::new(
            "throttle.max_in_flight",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(ThrottleSpec {
        rows_per_sec: positive("throttle.rows_per_sec", t.rows_per_sec)?,
        bytes_per_sec: positive("throttle.bytes_per_sec", t.bytes_per_sec)?,
        max_in_flight: t.max_in_flight,
        priority: t.priority.unwrap_or(0),
        // From `[health]`: set by the caller.
        max_wal_bytes_per_sec: None,
    })
}

fn validate_health(raw: Option<RawHealth>) -> Result<HealthSpec, SpecError> {
    let d = HealthSpec::default();
    let Some(h) = raw else { return Ok(d) };
    let lag = h
        .max_replication_lag_seconds
        .unwrap_or(d.max_replication_lag_seconds);
    if !(lag.is_finite() && lag >= 0.0) {
        return Err(SpecError::new(
            "health.max_replication_lag_seconds",
            format!("must be 0 (off) or a positive number of seconds, got {lag}"),
        ));
    }
    let lag_bytes = match h.max_replication_lag_bytes {
        None => d.max_replication_lag_bytes,
        Some(b) => u64::try_from(b).map_err(|_| {
            SpecError::new(
                "health.max_replication_lag_bytes",
                format!("must be 0 (off) or a positive number of bytes, got {b}"),
            )
        })?,
    };
    if let Some(sql) = &h.sql {
        sql.validate("health.sql")?;
    }
    Ok(HealthSpec {
        max_replication_lag_seconds: lag,
        max_replication_lag_bytes: lag_bytes,
        max_active_backends: h.max_active_backends.unwrap_or(d.max_active_backends),
        sql: h.sql,
        check_every_seconds: positive("health.check_every_seconds", h.check_every_seconds)?
            .unwrap_or(d.check_every_seconds),
    })
}

fn validate_sizing(raw: Option<RawSizing>) -> Result<SizingSpec, SpecError> {
    let d = SizingSpec::default();
    let Some(s) = raw else { return Ok(d) };
    let min = s.min_shard_size.unwrap_or(d.min_shard_size);
    let max = s.max_shard_size.unwrap_or(d.max_shard_size);
    if min == 0 || min > max || max > MAX_SHARD_SIZE {
        return Err(SpecError::new(
            "sizing",
            format!("need 1 <= min_shard_size <= max_shard_size <= {MAX_SHARD_SIZE}, got {min} and {max}"),
        ));
    }
    let growth = positive("sizing.max_growth", s.max_growth)?.unwrap_or(d.max_growth);
    if growth < 1.0 {
        return Err(SpecError::new(
            "sizing.max_growth",
            format!("must be at least 1, got {growth}"),
        ));
    }
    Ok(SizingSpec {
        adaptive: s.adaptive,
        target_shard_seconds: positive("sizing.target_shard_seconds", s.target_shard_seconds)?
            .unwrap_or(d.target_shard_seconds),
        min_shard_size: min,
        max_shard_size: max,
        max_growth: growth,
    })
}

/// The next shard size from a measured one: aim at the target duration,
/// change by at most `max_growth` either way, stay within the bounds.
pub fn adapt_shard_size(sizing: &SizingSpec, measured_size: u32, measured_ms_per_row: f64) -> u32 {
    let current = measured_size.max(1) as f64;
    let ideal = if measured_ms_per_row > 0.0 && measured_ms_per_row.is_finite() {
        sizing.target_shard_seconds * 1000.0 / measured_ms_per_row
    } else {
        current * sizing.max_growth
    };
    let bounded = ideal.clamp(current / sizing.max_growth, current * sizing.max_growth);
    (bounded.round() as u32).clamp(sizing.min_shard_size, sizing.max_shard_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = concat!(
        "\nname = \"demo\"",
        crate::testing::revisions_target!("SELECT id AS key FROM wagtailcore_revision"),
        r#"[[targets.rules]]
op = "set"
path = "/product_name"
value = "x"
"#
    );

    fn err(text: &str) -> SpecError {
        JobSpec::parse(text).expect_err("spec should be refused")
    }

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let s = JobSpec::parse(MINIMAL).unwrap();
        assert_eq!(s.name, "demo");
        assert_eq!(s.shard_size, DEFAULT_SHARD_SIZE);
        assert_eq!(s.targets[0].rules[0].column, "content");
        assert_eq!(s.hash.len(), 64);
        assert!(s.groups.is_none());
        assert_eq!(s.group_noun(), "target");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&MINIMAL.replace("key_type", "colour = 1\nkey_type"));
        assert_eq!(e.field, "colour");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let e = err(&MINIMAL.replace("table = \"wagtailcore_revision\"\n", ""));
        assert_eq!(e.field, "table");
    }

    #[test]
    fn bad_identifiers_are_refused() {
        let e = err(&MINIMAL.replace(
            "table = \"wagtailcore_revision\"",
            "table = \"x; DROP TABLE y\"",
        ));
        assert_eq!(e.field, "targets[0].table");
        let e = err(&MINIMAL.replace("columns = [\"content\"]", "columns = [\"id\"]"));
        assert_eq!(e.field, "targets[0].columns[0]");
        let e = err(&MINIMAL.replace("columns = [\"content\"]", "columns = []"));
        assert_eq!(e.field, "targets[0].columns");
    }

    #[test]
    fn identifiers_allow_mixed_case_and_schema() {
        assert!(is_identifier("CEUs"));
        assert!(is_identifier("public.wagtailcore_revision"));
        assert!(!is_identifier("a.b.c"));
        assert!(!is_identifier("1abc"));
        assert!(!is_identifier("a-b"));
        assert_eq!(quote_ident("public.CEUs"), "\"public\".\"CEUs\"");
    }

    #[test]
    fn rule_errors_name_the_rule() {
        let e = err(&MINIMAL.replace("path = \"/product_name\"", "path = \"product_name\""));
        assert_eq!(e.field, "targets[0].rules[0].path");
        let e = err(&MINIMAL.replace("op = \"set\"", "op = \"frobnicate\""));
        assert_eq!(e.field, "targets[0].rules[0].op");
        let e = err(&MINIMAL.replace("value = \"x\"", "value = \"x\"\nparam = \"t\""));
        assert_eq!(e.field, "targets[0].rules[0]");
        let e = err(&MINIMAL.replace("value = \"x\"", ""));
        assert_eq!(e.field, "targets[0].rules[0]");
        let e = err(&MINIMAL.replace("path = \"/product_name\"", "path = \"/list/-\""));
        assert_eq!(e.field, "targets[0].rules[0].path");
        let e = err(&MINIMAL.replace("op = \"set\"", "column = \"other\"\nop = \"set\""));
        assert_eq!(e.field, "targets[0].rules[0].column");
        let e = err(&MINIMAL.replace("value = \"x\"", "from = \"/a\"\nfrom_column = \"nope\""));
        assert_eq!(e.field, "targets[0].rules[0].from_column");
    }

    #[test]
    fn notify_urls_and_format_are_checked_and_named() {
        let ok = JobSpec::parse(&format!(
            "{MINIMAL}\n[notify]\nurls = [\"https://hooks.example/T/B/x\"]\nformat = \"slack\"\nstall_after_seconds = 60\n"
        ))
        .unwrap();
        assert_eq!(ok.notify.urls, ["https://hooks.example/T/B/x"]);
        assert_eq!(ok.notify.format, NotifyFormat::Slack);
        assert_eq!(ok.notify.stall_after_seconds, 60.0);
        assert_eq!(
            JobSpec::parse(MINIMAL).unwrap().notify,
            NotifySpec::default()
        );
        let e = err(&format!(
            "{MINIMAL}\n[notify]\nurls = [\"http://a/\", \"ftp://b/\"]\n"
        ));
        assert_eq!(e.field, "notify.urls[1]");
        let e = err(&format!("{MINIMAL}\n[notify]\nurls = [\"http:///x\"]\n"));
        assert_eq!(e.field, "notify.urls[0]");
        let e = err(&format!("{MINIMAL}\n[notify]\nformat = \"teams\"\n"));
        assert_eq!(e.field, "notify.format");
        let e = err(&format!("{MINIMAL}\n[notify]\nstall_after_seconds = 0\n"));
        assert_eq!(e.field, "notify.stall_after_seconds");
        let e = err(&format!("{MINIMAL}\n[notify]\nurl = \"http://a/\"\n"));
        assert!(e.to_string().contains("url"), "{e}");
    }

    #[test]
    fn schedule_windows_and_zone_are_checked_and_named() {
        let ok = JobSpec::parse(&format!(
            "{MINIMAL}\n[schedule]\nwindows = [\"Mon-Fri 01:00-05:00\"]\ntime_zone = \"Europe/Berlin\"\n"
        ))
        .unwrap();
        let s = ok.schedule.unwrap();
        assert_eq!(s.describe(), "Mon-Fri 01:00-05:00 (Europe/Berlin)");
        assert!(JobSpec::parse(MINIMAL).unwrap().schedule.is_none());
        let e = err(&format!(
            "{MINIMAL}\n[schedule]\nwindows = [\"01:00-02:00\", \"Mon 9-5\"]\n"
        ));
        assert_eq!(e.field, "schedule.windows[1]");
        let e = err(&format!("{MINIMAL}\n[schedule]\nwindows = []\n"));
        assert_eq!(e.field, "schedule.windows");
        let e = err(&format!(
            "{MINIMAL}\n[schedule]\nwindows = [\"01:00-02:00\"]\ntime_zone = \"Berlin\"\n"
        ));
        assert_eq!(e.field, "schedule.time_zone");
    }

    #[test]
    fn remove_takes_no_value_and_not_root() {
        let e = err(&MINIMAL.replace("op = \"set\"", "op = \"remove\""));
        assert_eq!(e.field, "targets[0].rules[0]");
        let e = err(&MINIMAL
            .replace("op = \"set\"", "op = \"remove\"")
            .replace("value = \"x\"", "")
            .replace("path = \"/product_name\"", "path = \"\""));
        assert_eq!(e.field, "targets[0].rules[0].path");
    }

    #[test]
    fn guards_are_checked() {
        let with_groups = format!(
            "{}\n[groups]\nquery = \"SELECT 1\"\n[[groups.guards]]\nparam = \"t\"\ncheck = \"not_prefix\"\n",
            MINIMAL
        );
        let e = err(&with_groups);
        assert_eq!(e.field, "groups.guards[0].prefix");
        let ok = with_groups.replace(
            "check = \"not_prefix\"",
            "check = \"not_prefix\"\nprefix = \"PLACEHOLDER - \"",
        );
        let s = JobSpec::parse(&ok).unwrap();
        let g = s.groups.unwrap();
        assert_eq!(g.guards[0].check, Check::NotPrefix("PLACEHOLDER - ".into()));
        assert!(g.guards[0].reason.contains("PLACEHOLDER"));
        let e = err(&with_groups.replace("check = \"not_prefix\"", "check = \"shiny\""));
        assert_eq!(e.field, "groups.guards[0].check");
    }

    #[test]
    fn on_conflict_is_report_or_retry() {
        assert_eq!(
            JobSpec::parse(MINIMAL).unwrap().on_conflict,
            OnConflict::Report
        );
        let s = JobSpec::parse(&format!("on_conflict = \"retry\"\n{MINIMAL}")).unwrap();
        assert_eq!(s.on_conflict, OnConflict::Retry);
        assert!(
            s.pushdown,
            "the database applies what it can unless told not to"
        );
        let s = JobSpec::parse(&format!("pushdown = false\n{MINIMAL}")).unwrap();
        assert!(!s.pushdown);
        assert_eq!(
            err(&format!("on_conflict = \"clobber\"\n{MINIMAL}")).field,
            "on_conflict"
        );
    }

    #[test]
    fn shard_size_is_bounded() {
        let e = err(&format!("shard_size = 0\n{MINIMAL}"));
        assert_eq!(e.field, "shard_size");
        let s = JobSpec::parse(&format!("shard_size = 7\n{MINIMAL}")).unwrap();
        assert_eq!(s.shard_size, 7);
    }

    #[test]
    fn steering_sections_default_and_validate() {
        let s = JobSpec::parse(MINIMAL).unwrap();
        assert_eq!(s.throttle, ThrottleSpec::default());
        assert_eq!(s.health, HealthSpec::default());
        assert!(!s.sizing.adaptive);
        let text = format!(
            "{MINIMAL}\n[throttle]\nrows_per_sec = 1500\nmax_in_flight = 3\npriority = -1\n\n[health]\nmax_active_backends = 0\nsql = \"SELECT true\"\n\n[sizing]\nadaptive = true\ntarget_shard_seconds = 2\n"
        );
        let s = JobSpec::parse(&text).unwrap();
        assert_eq!(s.throttle.rows_per_sec, Some(1500.0));
        assert_eq!(s.throttle.max_in_flight, Some(3));
        assert_eq!(s.throttle.priority, -1);
        assert_eq!(s.health.max_active_backends, 0);
        assert_eq!(s.health.max_replication_lag_seconds, 30.0);
        assert!(s.health.sql.is_some());
        assert!(s.sizing.adaptive);
        assert_eq!(s.sizing.target_shard_seconds, 2.0);
        let e = err(&format!("{MINIMAL}\n[throttle]\nrows_per_sec = 0\n"));
        assert_eq!(e.field, "throttle.rows_per_sec");
        let e = err(&format!("{MINIMAL}\n[throttle]\nmax_in_flight = 0\n"));
        assert_eq!(e.field, "throttle.max_in_flight");
        let e = err(&format!(
            "{MINIMAL}\n[sizing]\nmin_shard_size = 10\nmax_shard_size = 5\n"
        ));
        assert_eq!(e.field, "sizing");
        let e = err(&format!("{MINIMAL}\n[health]\nbogus = 1\n"));
        assert_eq!(e.field, "bogus");
    }

    #[test]
    fn wal_and_byte_limits_parse_and_validate() {
        let s = JobSpec::parse(MINIMAL).unwrap();
        assert_eq!(s.throttle.bytes_per_sec, None);
        assert_eq!(s.throttle.max_wal_bytes_per_sec, None);
        assert_eq!(s.health.max_replication_lag_bytes, 0, "off by default");
        let text = format!(
            "{MINIMAL}\n[throttle]\nbytes_per_sec = 250000\n\n[health]\nmax_wal_bytes_per_sec = 8000000\nmax_replication_lag_bytes = 16777216\n"
        );
        let s = JobSpec::parse(&text).unwrap();
        assert_eq!(s.throttle.bytes_per_sec, Some(250_000.0));
        assert_eq!(s.throttle.max_wal_bytes_per_sec, Some(8_000_000.0));
        assert_eq!(s.health.max_replication_lag_bytes, 16_777_216);
        assert_eq!(s.health.max_replication_lag_seconds, 30.0);
        let s = JobSpec::parse(&format!(
            "{MINIMAL}\n[health]\nmax_replication_lag_bytes = 0\n"
        ))
        .unwrap();
        assert_eq!(s.health.max_replication_lag_bytes, 0);
        for (text, field) in [
            ("[throttle]\nbytes_per_sec = 0", "throttle.bytes_per_sec"),
            ("[throttle]\nbytes_per_sec = -5", "throttle.bytes_per_sec"),
            ("[throttle]\nbytes_per_sec = nan", "throttle.bytes_per_sec"),
            (
                "[health]\nmax_wal_bytes_per_sec = 0",
                "health.max_wal_bytes_per_sec",
            ),
            (
                "[health]\nmax_wal_bytes_per_sec = -1.5",
                "health.max_wal_bytes_per_sec",
            ),
            (
                "[health]\nmax_wal_bytes_per_sec = inf",
                "health.max_wal_bytes_per_sec",
            ),
            (
                "[health]\nmax_replication_lag_bytes = -1",
                "health.max_replication_lag_bytes",
            ),
        ] {
            let e = err(&format!("{MINIMAL}\n{text}\n"));
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn adaptive_size_aims_at_the_target_with_bounded_steps() {
        let s = SizingSpec {
            adaptive: true,
            target_shard_seconds: 5.0,
            min_shard_size: 50,
            max_shard_size: 5_000,
            max_growth: 2.0,
        };
        // 1 ms per row: 5,000 rows would take 5 s, but one step at most doubles.
        assert_eq!(adapt_shard_size(&s, 500, 1.0), 1_000);
        // 2 ms per row from 1,500 rows: 2,500 is within a doubling.
        assert_eq!(adapt_shard_size(&s, 1_500, 2.0), 2_500);
        // Slow rows (100 ms): 50 rows ideal; one step at most halves.
        assert_eq!(adapt_shard_size(&s, 500, 100.0), 250);
        // Clamped at both ends.
        assert_eq!(adapt_shard_size(&s, 4_000, 0.01), 5_000);
        assert_eq!(adapt_shard_size(&s, 60, 1_000.0), 50);
        // No measurement: grow by one step.
        assert_eq!(adapt_shard_size(&s, 500, 0.0), 1_000);
    }

    #[test]
    fn per_dialect_sql() {
        let text = MINIMAL.replace(
            "query = \"SELECT id AS key FROM wagtailcore_revision\"",
            "query = { postgres = \"SELECT 1\" }",
        );
        let s = JobSpec::parse(&text).unwrap();
        let q = &s.targets[0].query;
        assert_eq!(q.for_dialect("q", Dialect::Postgres).unwrap(), "SELECT 1");
        let e = q
            .for_dialect("targets[0].query", Dialect::Sqlite)
            .unwrap_err();
        assert_eq!(e.field, "targets[0].query");
        assert!(e.message.contains("sqlite"));
    }

    #[test]
    fn report_refers_to_real_targets() {
        let text = format!("{MINIMAL}\n[report]\ncurrent = {{ target = \"nope\", column = \"content\", path = \"/a\" }}\n");
        assert_eq!(err(&text).field, "report.current.target");
        let text = format!("{MINIMAL}\n[report]\ntarget_param = \"t\"\n");
        assert_eq!(err(&text).field, "report.target_param");
    }

    #[test]
    fn duplicate_target_names_refused() {
        let twice = format!(
            "{MINIMAL}{}",
            &MINIMAL[MINIMAL.find("[[targets]]").unwrap()..]
        );
        assert_eq!(err(&twice).field, "targets[1].name");
    }

    #[test]
    fn pointers() {
        assert!(validate_pointer("").is_ok());
        assert!(validate_pointer("/a~0b/~1c").is_ok());
        assert!(validate_pointer("/a~2").is_err());
        assert!(validate_pointer("a").is_err());
    }

    /// MINIMAL with `n` more rules, each given by `rule(i)`.
    fn with_rules(n: usize, rule: impl Fn(usize) -> String) -> String {
        let mut text = MINIMAL.to_string();
        for i in 0..n {
            text.push_str(&format!("[[targets.rules]]\n{}\n", rule(i)));
        }
        text
    }

    #[test]
    fn rules_per_target_are_capped() {
        let remove = |i: usize| format!("op = \"remove\"\npath = \"/k{i}\"");
        assert!(JobSpec::parse(&with_rules(MAX_RULES - 1, remove)).is_ok());
        let e = err(&with_rules(MAX_RULES, remove));
        assert_eq!(e.field, "targets[0].rules");
        assert!(
            e.message.contains("10001 rules") && e.message.contains("10000"),
            "{e}"
        );
        assert!(e.message.contains("`revisions`"), "{e}");
    }

    #[test]
    fn guards_and_targets_are_capped() {
        let mut text = MINIMAL.to_string();
        for _ in 0..=MAX_GUARDS {
            text.push_str("[[targets.guards]]\npath = \"/a\"\ncheck = \"present\"\n");
        }
        let e = err(&text);
        assert_eq!(e.field, "targets[0].guards");
        assert!(e.message.contains("1000"), "{e}");

        let target = MINIMAL
            .split_once("[[targets]]")
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        let mut text = MINIMAL.to_string();
        for i in 0..MAX_TARGETS {
            text.push_str(&format!(
                "[[targets]]{}",
                target.replace("name = \"revisions\"", &format!("name = \"t{i}\""))
            ));
        }
        let e = err(&text);
        assert_eq!(e.field, "targets");
        assert!(
            e.message.contains("65 targets") && e.message.contains("64"),
            "{e}"
        );
    }

    #[test]
    fn pointers_are_capped_in_segments_and_bytes() {
        let deep = "/a".repeat(MAX_POINTER_SEGMENTS);
        assert!(validate_pointer(&deep).is_ok());
        let too_deep = "/a".repeat(MAX_POINTER_SEGMENTS + 1);
        let m = validate_pointer(&too_deep).unwrap_err();
        assert!(m.contains("65 segments") && m.contains("64"), "{m}");
        let long = format!("/{}", "x".repeat(MAX_POINTER_BYTES));
        let m = validate_pointer(&long).unwrap_err();
        assert!(m.contains("1025 bytes") && m.contains("1024"), "{m}");
        // Named by the field in a spec: rule path, from, guard path.
        let e = err(&MINIMAL.replace(
            "path = \"/product_name\"",
            &format!("path = \"{too_deep}\""),
        ));
        assert_eq!(e.field, "targets[0].rules[0].path");
        let e = err(&with_rules(1, |_| {
            format!("op = \"set\"\npath = \"/b\"\nfrom = \"{too_deep}\"")
        }));
        assert_eq!(e.field, "targets[0].rules[1].from");
        let e = err(&format!(
            "{MINIMAL}[[targets.guards]]\npath = \"{long}\"\ncheck = \"present\"\n"
        ));
        assert_eq!(e.field, "targets[0].guards[0].path");
    }

    #[test]
    fn literal_values_are_capped_in_size_and_depth() {
        let big = "x".repeat(MAX_VALUE_BYTES);
        let e = err(&MINIMAL.replace("value = \"x\"", &format!("value = \"{big}\"")));
        assert_eq!(e.field, "targets[0].rules[0].value");
        assert!(e.message.contains("1 MiB"), "{e}");
        let fits = "x".repeat(MAX_VALUE_BYTES - 2);
        assert!(
            JobSpec::parse(&MINIMAL.replace("value = \"x\"", &format!("value = \"{fits}\"")))
                .is_ok()
        );
        // 65 levels of arrays (TOML's own parser stops at 80).
        let nested = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        let e = err(&MINIMAL.replace("value = \"x\"", &format!("value = {nested}")));
        assert_eq!(e.field, "targets[0].rules[0].value");
        assert!(
            e.message.contains("65 levels") && e.message.contains("64"),
            "{e}"
        );
    }

    #[test]
    fn spec_files_are_capped_in_size() {
        let padded = format!("{MINIMAL}#{}\n", "x".repeat(MAX_SPEC_BYTES));
        let e = err(&padded);
        assert_eq!(e.field, "(file)");
        assert!(e.message.contains("4 MiB"), "{e}");
        assert!(check_size(MAX_SPEC_BYTES).is_ok());
    }
}
