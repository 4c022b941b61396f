//! The plan of a run: which groups are in scope and why some are skipped,
//! and the streaming cut of reference rows into distinct target rows and
//! shards. The coordinator feeds it what the spec's SQL returns and records
//! the result in the ledger; the mappers and the reducer only read it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::run::{Mode, RunKind, Scope};
use crate::spec::{JobSpec, KeyType};
use crate::tally::Tally;

/// Whether a group goes ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum GroupStatus {
    Eligible,
    /// A guard failed; its reason.
    Skipped(String),
    /// The key was asked for but the groups query does not know it.
    Unknown,
}

/// One group of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedGroup {
    pub key: String,
    pub label: Option<String>,
    pub params: Map<String, Value>,
    #[serde(flatten)]
    pub status: GroupStatus,
}

impl PlannedGroup {
    pub fn reason(&self) -> Option<&str> {
        match &self.status {
            GroupStatus::Eligible => None,
            GroupStatus::Skipped(r) => Some(r),
            GroupStatus::Unknown => Some("unknown key"),
        }
    }
}

/// One row the groups query returned.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub key: String,
    pub label: Option<String>,
    pub params: Map<String, Value>,
}

impl GroupRow {
    /// Builds a group row from the query's columns as a JSON object
    /// (`key`, `label`, and parameters).
    pub fn from_object(mut obj: Map<String, Value>) -> Result<GroupRow, String> {
        let key = match obj.remove("key") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Null) | None => {
                return Err("the groups query must return a non-null `key` column".into())
            }
            Some(other) => return Err(format!("group `key` must be text, got {other}")),
        };
        let label = match obj.remove("label") {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        Ok(GroupRow {
            key,
            label,
            // Made anew, to the size of what is left: a run may plan
            // 50,000 groups, and the query's map keeps the room of the
            // columns taken out of it.
            params: obj.into_iter().collect(),
        })
    }
}

/// Decides each group's status: requested keys the query does not know are
/// unknown; the rest pass or fail the spec's guards. Groups come out in
/// key order, unknown ones included.
pub fn evaluate_groups(spec: &JobSpec, scope: &Scope, rows: Vec<GroupRow>) -> Vec<PlannedGroup> {
    let guards = spec
        .groups
        .as_ref()
        .map(|g| g.guards.as_slice())
        .unwrap_or(&[]);
    let mut out: Vec<PlannedGroup> = Vec::with_capacity(rows.len());
    // Sets, not scans of `out`: a run may have tens of thousands of groups.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let asked: Option<std::collections::HashSet<&String>> = match scope {
        Scope::Groups(keys) => Some(keys.iter().collect()),
        Scope::All => None,
    };
    for row in rows {
        if seen.contains(&row.key) {
            continue; // the query returned a key twice; the first wins
        }
        if asked.as_ref().is_some_and(|a| !a.contains(&row.key)) {
            continue;
        }
        seen.insert(row.key.clone());
        let failed = guards
            .iter()
            .find(|g| !g.check.passes(row.params.get(&g.param)));
        out.push(PlannedGroup {
            key: row.key,
            label: row.label,
            params: row.params,
            status: match failed {
                Some(g) => GroupStatus::Skipped(g.reason.clone()),
                None => GroupStatus::Eligible,
            },
        });
    }
    if let Scope::Groups(keys) = scope {
        for k in keys {
            if seen.insert(k.clone()) {
                out.push(PlannedGroup {
                    key: k.clone(),
                    label: None,
                    params: Map::new(),
                    status: GroupStatus::Unknown,
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The plan as the ledger keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub groups: Vec<PlannedGroup>,
    pub targets: Vec<PlannedTarget>,
    pub shards_total: u32,
    /// What the plan itself counted: skipped references and rows of skipped groups.
    pub tally: Tally,
}

impl Plan {
    /// The plan as its run's record is first written, as JSON text: its
    /// list of groups empty (the ledger keeps each group in a row of its
    /// own and makes the list from them) and its tally without the groups'
    /// counts (each group's are a record of their own). Written from the
    /// plan in place, never copied: a plan may hold 50,000 groups.
    pub fn outline_text(&self) -> Result<String, serde_json::Error> {
        /// [`Plan`]'s fields, borrowed.
        #[derive(Serialize)]
        struct Outline<'a> {
            groups: [PlannedGroup; 0],
            targets: &'a [PlannedTarget],
            shards_total: u32,
            tally: &'a Tally,
        }
        serde_json::to_string(&Outline {
            groups: [],
            targets: &self.targets,
            shards_total: self.shards_total,
            tally: &self.tally.without_groups(),
        })
    }

    pub fn group(&self, key: &str) -> Option<&PlannedGroup> {
        self.groups.iter().find(|g| g.key == key)
    }
    pub fn groups_processed(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.status == GroupStatus::Eligible)
            .count() as u64
    }
    pub fn groups_skipped(&self) -> u64 {
        self.groups.len() as u64 - self.groups_processed()
    }
}

/// What a run is, before it is planned.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub spec: &'a JobSpec,
    pub mode: Mode,
    pub scope: &'a Scope,
    pub shard_size: u32,
    /// A sampled dry run: the share of target rows to read (0–1].
    pub sample: Option<f64>,
    /// What the run is for (recorded; runs adopt only their own kind).
    pub kind: RunKind,
    /// The windows given on the command line, recorded with the run's row
    /// so that `status` shows them from the start; `None` keeps the
    /// spec's `[schedule]`.
    pub schedule: Option<&'a crate::schedule::Schedule>,
}

/// Rows and shards planned for one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTarget {
    pub name: String,
    pub rows: u64,
    pub shards: u32,
}

/// A reference row from a target query.
#[derive(Debug, Clone, PartialEq)]
pub struct RefRow {
    /// The target row's key; `None` for a reference with no row.
    pub key: Option<String>,
    pub group: Option<String>,
    pub refs: u64,
    pub skip: Option<String>,
}

/// A distinct target row to send to a mapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub group: String,
    pub refs: u64,
}

/// Folds reference rows, sorted by key, into distinct items: a row referenced
/// many times is sent once with the sum of its references. Skipped references
/// are counted in the plan's tally. Keeps only the current key in memory.
#[derive(Debug)]
pub struct ItemAccumulator {
    target: String,
    default_group: String,
    pending: Option<(Item, Option<String>)>,
}

impl ItemAccumulator {
    /// `default_group` names the group of rows in jobs without groups.
    pub fn new(target: &str, default_group: &str) -> Self {
        ItemAccumulator {
            target: target.to_string(),
            default_group: default_group.to_string(),
            pending: None,
        }
    }

    /// Takes the next reference row (rows must come sorted by key, NULL keys
    /// anywhere). Returns an item when a key is complete.
    pub fn push(&mut self, row: RefRow, tally: &mut Tally) -> Option<Item> {
        let group = row.group.unwrap_or_else(|| self.default_group.clone());
        if let Some(reason) = row.skip {
            tally.record_skipped_refs(&group, &reason, row.refs);
            return None;
        }
        let Some(key) = row.key else {
            tally.record_skipped_refs(&group, "no row", row.refs);
            return None;
        };
        match &mut self.pending {
            Some((item, conflict)) if item.key == key => {
                item.refs += row.refs;
                if item.group != group {
                    let (a, b) = if item.group < group {
                        (item.group.clone(), group)
                    } else {
                        (group, item.group.clone())
                    };
                    *conflict = Some(format!(
                        "referenced by two groups, {a} and {b}; not rewritten"
                    ));
                }
                None
            }
            _ => {
                let done = self.finish_pending(tally);
                self.pending = Some((
                    Item {
                        key,
                        group,
                        refs: row.refs,
                    },
                    None,
                ));
                done
            }
        }
    }

    /// Flushes the last key.
    pub fn finish(mut self, tally: &mut Tally) -> Option<Item> {
        self.finish_pending(tally)
    }

    fn finish_pending(&mut self, tally: &mut Tally) -> Option<Item> {
        match self.pending.take() {
            None => None,
            Some((item, None)) => Some(item),
            Some((item, Some(msg))) => {
                tally.record_planned_error(&self.target, &item.group, &item.key, &msg);
                None
            }
        }
    }
}

/// The canonical text of an integer key: `0100`, `+100` and `100` are the
/// same row of an integer-keyed table (a reference query often reads ids
/// from a text column, as Wagtail's `object_id` varchar), and the ledger
/// must know them as one key, or the row is sent twice. `None` when the
/// text is not a 64-bit integer (blanks included).
pub fn canonical_int_key(key: &str) -> Option<String> {
    key.parse::<i64>().ok().map(|n| n.to_string())
}

impl RefRow {
    /// The reference with its key as the ledger keeps it for `key_type`:
    /// an integer key in canonical form (see [`canonical_int_key`]). A
    /// skipped reference or one without a row keeps what it has: its key is
    /// never used. Fails with the key as returned when it is not an integer.
    pub fn with_canonical_key(mut self, key_type: KeyType) -> Result<RefRow, String> {
        if key_type == KeyType::Text || self.skip.is_some() {
            return Ok(self);
        }
        if let Some(key) = &self.key {
            match canonical_int_key(key) {
                Some(c) => self.key = Some(c),
                None => return Err(key.clone()),
            }
        }
        Ok(self)
    }

    /// Whether a sampled run (`fraction` of the rows, 0–1] reads this row:
    /// decided by a hash of the key, so the same rows are sampled every
    /// time. References without a row cost nothing and are always kept.
    pub fn in_sample(&self, fraction: f64) -> bool {
        let Some(key) = &self.key else { return true };
        // FNV-1a: stable across platforms and releases, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        ((h % 1_000_000) as f64) < fraction * 1_000_000.0
    }
}

/// Reads one row of a target query (its columns as a JSON object):
/// `key`, `group`, optional `refs` and `skip`.
pub fn parse_ref_row(
    mut m: Map<String, Value>,
    field: &str,
    has_groups: bool,
) -> Result<RefRow, String> {
    if !m.contains_key("key") {
        return Err(format!("{field} must return a `key` column"));
    }
    let refs = match m.remove("refs") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{field}: `refs` must be a whole number, got {n}"))?,
        Some(other) => return Err(format!("{field}: `refs` must be a number, got {other}")),
    };
    let text = |v: Option<Value>| match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let r = RefRow {
        key: text(m.remove("key")),
        group: text(m.remove("group")),
        refs,
        skip: text(m.remove("skip")),
    };
    if has_groups && r.group.is_none() && r.skip.is_none() && r.key.is_some() {
        return Err(format!(
            "{field} must return a `group` column naming each row's group"
        ));
    }
    Ok(r)
}

/// A shard cut by [`ShardCutter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutShard {
    pub shard_no: u32,
    pub items: Vec<Item>,
}

/// Cuts the reference rows of one target (sorted by key) into shards of
/// distinct items, numbering shards on from `first_shard_no`. Holds at most
/// one shard in memory.
#[derive(Debug)]
pub struct ShardCutter {
    shard_size: usize,
    next_shard_no: u32,
    acc: ItemAccumulator,
    current: Vec<Item>,
    planned: PlannedTarget,
}

impl ShardCutter {
    pub fn new(target: &str, shard_size: u32, first_shard_no: u32) -> Self {
        ShardCutter {
            shard_size: shard_size.max(1) as usize,
            next_shard_no: first_shard_no,
            acc: ItemAccumulator::new(target, target),
            current: Vec::new(),
            planned: PlannedTarget {
                name: target.to_string(),
                ..PlannedTarget::default()
            },
        }
    }

    /// Takes the next reference row; returns a shard when one is full.
    pub fn push(&mut self, row: RefRow, tally: &mut Tally) -> Option<CutShard> {
        let item = self.acc.push(row, tally)?;
        self.current.push(item);
        if self.current.len() >= self.shard_size {
            return Some(self.cut());
        }
        None
    }

    /// Flushes the last item and shard; returns the last shard, if any, and
    /// what was planned for the target.
    pub fn finish(mut self, tally: &mut Tally) -> (Option<CutShard>, PlannedTarget) {
        let acc = std::mem::replace(&mut self.acc, ItemAccumulator::new("", ""));
        if let Some(i) = acc.finish(tally) {
            self.current.push(i);
        }
        let last = if self.current.is_empty() {
            None
        } else {
            Some(self.cut())
        };
        (last, self.planned)
    }

    /// The shard number the next target starts from.
    pub fn next_shard_no(&self) -> u32 {
        self.next_shard_no
    }

    fn cut(&mut self) -> CutShard {
        let items = std::mem::take(&mut self.current);
        let shard = CutShard {
            shard_no: self.next_shard_no,
            items,
        };
        self.next_shard_no += 1;
        self.planned.rows += shard.items.len() as u64;
        self.planned.shards += 1;
        shard
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn integer_keys_are_canonical() {
        for (text, canonical) in [
            ("100", "100"),
            ("0100", "100"),
            ("+103", "103"),
            ("000", "0"),
            ("-0", "0"),
            ("+0", "0"),
            ("-007", "-7"),
            ("9223372036854775807", "9223372036854775807"),
            ("-9223372036854775808", "-9223372036854775808"),
        ] {
            assert_eq!(
                canonical_int_key(text).as_deref(),
                Some(canonical),
                "{text}"
            );
        }
        for bad in [
            "",
            "abc",
            " 100",
            "100 ",
            "1e3",
            "1.0",
            "0x10",
            "++1",
            "-",
            "1_000",
            "9223372036854775808",
        ] {
            assert_eq!(canonical_int_key(bad), None, "{bad:?}");
        }
    }

    fn reference(key: Option<&str>, skip: Option<&str>) -> RefRow {
        RefRow {
            key: key.map(str::to_string),
            group: None,
            refs: 1,
            skip: skip.map(str::to_string),
        }
    }

    #[test]
    fn references_get_canonical_keys_for_integer_targets_only() {
        let r = reference(Some("0100"), None);
        assert_eq!(
            r.clone()
                .with_canonical_key(KeyType::Integer)
                .unwrap()
                .key
                .as_deref(),
            Some("100")
        );
        assert_eq!(
            r.with_canonical_key(KeyType::Text).unwrap().key.as_deref(),
            Some("0100")
        );
        assert_eq!(
            reference(Some("abc"), None).with_canonical_key(KeyType::Integer),
            Err("abc".to_string())
        );
        // Keys that are never used are not judged.
        assert!(reference(Some("abc"), Some("revoked"))
            .with_canonical_key(KeyType::Integer)
            .is_ok());
        assert!(reference(None, None)
            .with_canonical_key(KeyType::Integer)
            .is_ok());
    }

    #[test]
    fn spellings_of_one_key_fold_into_one_item() {
        // As the planner streams them: in canonical order, then canonical.
        let mut tally = Tally::default();
        let mut cutter = ShardCutter::new("t", 10, 0);
        let mut shards = Vec::new();
        for k in ["0100", "100", "101", "102", "+103", "103", "104"] {
            let r = reference(Some(k), None)
                .with_canonical_key(KeyType::Integer)
                .unwrap();
            shards.extend(cutter.push(r, &mut tally));
        }
        let (last, planned) = cutter.finish(&mut tally);
        shards.extend(last);
        let items: Vec<(String, u64)> = shards
            .iter()
            .flat_map(|s| s.items.iter().map(|i| (i.key.clone(), i.refs)))
            .collect();
        assert_eq!(
            items,
            [("100", 2), ("101", 1), ("102", 1), ("103", 2), ("104", 1)]
                .map(|(k, n)| (k.to_string(), n))
                .to_vec()
        );
        assert_eq!(planned.rows, 5);
    }
}

#[cfg(test)]
mod sample_tests {
    use super::RefRow;

    #[test]
    fn a_sample_keeps_about_its_share_of_rows_and_always_the_same_ones() {
        let rows: Vec<RefRow> = (0..20_000)
            .map(|i| RefRow {
                key: Some(i.to_string()),
                group: None,
                refs: 1,
                skip: None,
            })
            .collect();
        let kept = rows.iter().filter(|r| r.in_sample(0.01)).count();
        assert!((150..=250).contains(&kept), "kept {kept} of 20000 at 1 %");
        let again = rows.iter().filter(|r| r.in_sample(0.01)).count();
        assert_eq!(kept, again);
        assert_eq!(rows.iter().filter(|r| r.in_sample(1.0)).count(), 20_000);
        let keyless = RefRow {
            key: None,
            group: None,
            refs: 1,
            skip: Some("no revision".into()),
        };
        assert!(keyless.in_sample(0.0001));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC: &str = concat!(
        r#"
name = "titles"
[groups]
noun = "program"
query = "SELECT 1"
[[groups.guards]]
param = "page_id"
check = "present"
reason = "no program page"
[[groups.guards]]
param = "title"
check = "not_blank"
reason = "empty live title"
[[groups.guards]]
param = "title"
check = "not_prefix"
prefix = "PLACEHOLDER - "
reason = "placeholder live title""#,
        crate::testing::revisions_target!(),
        r#"[[targets.rules]]
op = "set"
path = "/product_name"
param = "title"
"#
    );

    fn row(key: &str, params: Value) -> GroupRow {
        GroupRow {
            key: key.into(),
            label: Some(format!("Label {key}")),
            params: params.as_object().cloned().unwrap(),
        }
    }

    #[test]
    fn groups_are_guarded_and_unknown_keys_reported() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let rows = vec![
            row("P1", json!({"page_id": 1, "title": "Data"})),
            row("P2", json!({"page_id": 2, "title": "PLACEHOLDER - x"})),
            row("P3", json!({"page_id": 3, "title": ""})),
            row("P4", json!({"page_id": null, "title": null})),
        ];
        let all = evaluate_groups(&spec, &Scope::All, rows.clone());
        let st: Vec<_> = all.iter().map(|g| (g.key.as_str(), g.reason())).collect();
        assert_eq!(
            st,
            vec![
                ("P1", None),
                ("P2", Some("placeholder live title")),
                ("P3", Some("empty live title")),
                ("P4", Some("no program page")),
            ]
        );
        let some = evaluate_groups(
            &spec,
            &Scope::Groups(vec!["P1".into(), "NOPE".into()]),
            rows,
        );
        assert_eq!(some.len(), 2);
        assert_eq!(some[0].key, "NOPE");
        assert_eq!(some[0].status, GroupStatus::Unknown);
        assert_eq!(some[1].status, GroupStatus::Eligible);
        let plan = Plan {
            groups: some,
            ..Plan::default()
        };
        assert_eq!(plan.groups_processed(), 1);
        assert_eq!(plan.groups_skipped(), 1);
    }

    #[test]
    fn group_row_from_object() {
        let g = GroupRow::from_object(
            json!({"key": 7, "label": "L", "t": "x"})
                .as_object()
                .cloned()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(g.key, "7");
        assert_eq!(g.params.len(), 1);
        assert!(
            GroupRow::from_object(json!({"label": "L"}).as_object().cloned().unwrap()).is_err()
        );
    }

    fn r(key: Option<&str>, group: &str, refs: u64, skip: Option<&str>) -> RefRow {
        RefRow {
            key: key.map(Into::into),
            group: Some(group.into()),
            refs,
            skip: skip.map(Into::into),
        }
    }

    #[test]
    fn cutter_numbers_shards_and_counts_rows() {
        let mut tally = Tally::default();
        let mut cut = ShardCutter::new("t", 2, 5);
        let mut shards = Vec::new();
        for k in ["1", "1", "2", "3", "4", "4", "5"] {
            shards.extend(cut.push(r(Some(k), "G", 1, None), &mut tally));
        }
        let (last, planned) = cut.finish(&mut tally);
        shards.extend(last);
        let keys: Vec<Vec<&str>> = shards
            .iter()
            .map(|s| s.items.iter().map(|i| i.key.as_str()).collect())
            .collect();
        assert_eq!(keys, vec![vec!["1", "2"], vec!["3", "4"], vec!["5"]]);
        assert_eq!(
            shards.iter().map(|s| s.shard_no).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(shards[0].items[0].refs, 2);
        assert_eq!(
            planned,
            PlannedTarget {
                name: "t".into(),
                rows: 5,
                shards: 3
            }
        );
        let empty = ShardCutter::new("t", 2, 0);
        assert_eq!(
            empty.finish(&mut tally),
            (
                None,
                PlannedTarget {
                    name: "t".into(),
                    rows: 0,
                    shards: 0
                }
            )
        );
    }

    #[test]
    fn ref_rows_are_parsed_strictly() {
        let obj = |v: Value| v.as_object().cloned().unwrap();
        let r = parse_ref_row(obj(json!({"key": 5, "group": "G", "refs": 3})), "q", true).unwrap();
        assert_eq!(
            r,
            RefRow {
                key: Some("5".into()),
                group: Some("G".into()),
                refs: 3,
                skip: None
            }
        );
        assert!(parse_ref_row(obj(json!({"id": 5})), "q", false)
            .unwrap_err()
            .contains("`key`"));
        assert!(parse_ref_row(obj(json!({"key": 5})), "q", true)
            .unwrap_err()
            .contains("`group`"));
        assert!(parse_ref_row(obj(json!({"key": 5, "refs": "x"})), "q", false).is_err());
        let skip = parse_ref_row(obj(json!({"key": null, "skip": "revoked"})), "q", true).unwrap();
        assert_eq!(skip.skip.as_deref(), Some("revoked"));
    }

    #[test]
    fn accumulator_dedups_shared_rows_and_counts_skipped_refs() {
        let mut tally = Tally::default();
        let mut acc = ItemAccumulator::new("revisions", "revisions");
        let rows = vec![
            r(Some("1"), "P", 1, None),
            r(Some("1"), "P", 1, None),
            r(Some("1"), "P", 1, None),
            r(Some("2"), "P", 1, None),
            r(Some("3"), "P", 1, Some("revoked")),
            r(Some("4"), "P", 1, None),
            r(Some("4"), "Q", 1, None),
            r(None, "P", 2, Some("no revision")),
            r(Some("5"), "Q", 1, None),
        ];
        let mut items: Vec<Item> = rows
            .into_iter()
            .filter_map(|x| acc.push(x, &mut tally))
            .collect();
        items.extend(acc.finish(&mut tally));
        assert_eq!(
            items,
            vec![
                Item {
                    key: "1".into(),
                    group: "P".into(),
                    refs: 3
                },
                Item {
                    key: "2".into(),
                    group: "P".into(),
                    refs: 1
                },
                Item {
                    key: "5".into(),
                    group: "Q".into(),
                    refs: 1
                },
            ]
        );
        assert_eq!(tally.refs_skipped, 3);
        assert_eq!(tally.groups["P"].refs_skipped["revoked"], 1);
        assert_eq!(tally.groups["P"].refs_skipped["no revision"], 2);
        assert_eq!(tally.counts.errors, 1, "row 4 is claimed by two groups");
        assert!(tally.errors.kept["revisions/4"].contains("P and Q"));
    }
}

#[cfg(test)]
mod finish_tests {
    use super::*;
    use crate::fold::{final_state, finish_plan};
    use crate::report::{summary_line, RunView};
    use crate::tally::Recorded;
    use crate::testing::TITLES_SPEC as SPEC;
    use crate::RunState;

    fn new_run<'a>(spec: &'a JobSpec, scope: &'a Scope, kind: RunKind) -> NewRun<'a> {
        NewRun {
            run_id: "r1",
            spec,
            mode: Mode::DryRun,
            scope,
            shard_size: 100,
            sample: None,
            kind,
            schedule: None,
        }
    }

    fn target(rows: u64, shards: u32) -> PlannedTarget {
        PlannedTarget {
            name: "revisions".into(),
            rows,
            shards,
        }
    }

    #[test]
    fn a_plan_with_shards_has_no_summary_yet() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let new = new_run(&spec, &Scope::All, RunKind::Forward);
        let mut tally = Tally::default();
        tally.record_skipped_refs("G", "revoked", 2);
        let (plan, summary) = finish_plan(&new, vec![], vec![target(10, 2)], 2, tally.clone());
        assert_eq!(summary, None);
        assert_eq!(plan.shards_total, 2);
        assert_eq!(plan.targets, vec![target(10, 2)]);
        assert_eq!(plan.tally, tally);
    }

    #[test]
    fn a_plan_is_first_recorded_with_its_totals_and_without_its_groups() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let new = new_run(&spec, &Scope::All, RunKind::Forward);
        let mut tally = Tally::default();
        tally.record_skipped_refs("G", "revoked", 2);
        tally.record_planned_error("revisions", "G", "1", "referenced by two groups");
        let mut params = serde_json::Map::new();
        params.insert("title".into(), "T".into());
        let groups = vec![PlannedGroup {
            key: "G".into(),
            label: Some("Group".into()),
            params,
            status: GroupStatus::Eligible,
        }];
        let (plan, _) = finish_plan(&new, groups, vec![target(10, 2)], 2, tally);
        assert!(!plan.tally.groups.is_empty());
        let read: Plan = serde_json::from_str(&plan.outline_text().unwrap()).unwrap();
        let mut want = plan.clone();
        want.groups.clear();
        want.tally.groups.clear();
        assert_eq!(read, want);
        assert_eq!(plan.tally.without_groups(), want.tally);
        // The same JSON as the whole plan's, with its groups and its
        // tally's groups emptied.
        let mut whole = serde_json::to_value(&plan).unwrap();
        whole["groups"] = serde_json::json!([]);
        whole["tally"]["groups"] = serde_json::json!({});
        assert_eq!(serde_json::to_value(&read).unwrap(), whole);
        // Each group as the plan lists it, in a row of its own.
        let entry: PlannedGroup =
            serde_json::from_str(&serde_json::to_string(&plan.groups[0]).unwrap()).unwrap();
        assert_eq!(entry, plan.groups[0]);
    }

    #[test]
    fn a_plan_with_nothing_to_send_is_summed_up_at_once() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let scope = Scope::Groups(vec!["P1".into(), "P2".into()]);
        let new = new_run(&spec, &scope, RunKind::Forward);
        let (plan, summary) = finish_plan(&new, vec![], vec![target(0, 0)], 0, Tally::default());
        assert_eq!(plan.shards_total, 0);
        let summary = summary.unwrap();
        assert!(
            summary.starts_with("Summary: mode=dry-run shards=0 processed=0 "),
            "{summary}"
        );
        assert!(summary.contains("run=r1"), "{summary}");
        assert_eq!(final_state(&plan.tally), RunState::Done);
    }

    #[test]
    fn planned_errors_fail_a_run_with_nothing_to_send() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let new = new_run(&spec, &Scope::All, RunKind::Retry);
        let mut tally = Tally::default();
        tally.record_planned_error("revisions", "G", "1", "referenced by two groups");
        let (plan, summary) = finish_plan(&new, vec![], vec![], 0, tally);
        assert_eq!(final_state(&plan.tally), RunState::Failed);
        assert!(summary.unwrap().contains("errors=1"));
    }

    #[test]
    fn a_summary_matches_the_plan_it_finishes() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let new = new_run(&spec, &Scope::All, RunKind::Forward);
        let mut tally = Tally::default();
        tally.record_planned_skip("revisions", "G", 4, 4, "placeholder");
        tally.record_row(
            "revisions",
            "G",
            "1",
            1,
            Recorded::Skipped("placeholder"),
            None,
        );
        let (plan, summary) = finish_plan(&new, vec![], vec![], 0, tally);
        let expected = summary_line(&RunView {
            run_id: "r1",
            spec: &spec,
            mode: Mode::DryRun,
            scope: "all",
            plan: &plan,
            tally: &plan.tally,
            cancelled: None,
            state: RunState::Done,
            kind: RunKind::Forward,
            of: None,
            sample: None,
        });
        assert_eq!(summary.as_deref(), Some(expected.as_str()));
    }
}
