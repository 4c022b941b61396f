//! The two contenders that are not backfill, and the row set they share
//! with it.
//!
//! The row set is derived from the job's own SQL, as the coordinator derives
//! it: the spec's groups query (all groups), evaluated with the job model's
//! own guard evaluation ([`backfill_job::plan::evaluate_groups`]), then the
//! spec's target query bound to the eligible groups' keys, keeping the
//! references that are not skipped, one row per key, and — like the planner —
//! leaving out a row referenced by two groups. The new value of a row is its
//! group's parameter named by the job's one `set` rule.
//!
//! - `limit`: one `UPDATE … SET col = jsonb_set(col, path, value) FROM (row
//!   set) WHERE col #> path IS DISTINCT FROM value` — one statement, one
//!   transaction, all server side.
//! - `per-row`: the row set read once, then per row one `SELECT col::text`
//!   and, when the document changes, one `UPDATE … SET col = $2::jsonb`, each
//!   in its own transaction (autocommit), over one connection; the document
//!   is rewritten in Rust with serde_json.

use anyhow::{bail, Context};
use backfill_job::plan::{evaluate_groups, GroupRow};
use backfill_job::rules::{Op, ValueSource};
use backfill_job::spec::{quote_ident, Dialect};
use backfill_job::{JobSpec, KeyType, Scope};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection, Row};
use std::time::{Duration, Instant};

use crate::{Contender, Outcome};

/// A statement over a [`RowSet`]: `format!` of `sql`, where `{cte}` stands for the
/// row set's `WITH` clause and `{table}`, `{key}` and `{col}` for the target's
/// quoted table, key and document column.
macro_rules! over_rows {
    ($set:expr, $sql:literal $(,)?) => {
        format!(
            $sql,
            cte = $set.cte,
            col = $set.column,
            table = $set.table,
            key = $set.key,
        )
    };
}

/// The rows the job rewrites and the value each gets.
pub struct RowSet {
    /// `WITH … rows(key, grp)` over the spec's target query; `$1` = eligible
    /// group keys (JSON array text), `$2` = `{group: new value}` (JSON text).
    cte: String,
    eligible: String,
    values: String,
    table: String,
    key: String,
    key_type: KeyType,
    column: String,
    path: Vec<String>,
    /// Eligible groups / all groups.
    pub groups: (usize, usize),
}

impl RowSet {
    /// Runs the groups query and evaluates its guards, as the coordinator does.
    pub async fn prepare(conn: &mut PgConnection, spec: &JobSpec) -> anyhow::Result<RowSet> {
        let Some(groups) = &spec.groups else {
            bail!("the bench's SQL contenders need a job with [groups]");
        };
        let [target] = spec.targets.as_slice() else {
            bail!("the bench's SQL contenders need a job with exactly one target");
        };
        let [rule] = target.rules.as_slice() else {
            bail!("the bench's SQL contenders need a target with exactly one rule");
        };
        if rule.select.is_some() || !rule.when.is_empty() {
            bail!("the bench's SQL contenders do not evaluate selectors or conditions");
        }
        let (path, param) = match &rule.op {
            Op::Set {
                path,
                value: ValueSource::Param(p),
            } => (path, p),
            _ => bail!("the bench's SQL contenders need a `set` rule taking a group parameter"),
        };
        if !target.guards.is_empty() {
            bail!("the bench's SQL contenders do not evaluate row guards");
        }
        let path = pointer_segments(path)?;
        if path.is_empty() {
            bail!("the bench's SQL contenders need a rule path below the document root");
        }

        let group_sql = groups
            .query
            .for_dialect("groups.query", Dialect::Postgres)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({group_sql}) q");
        let mut q = sqlx::query(&wrapped);
        if group_sql.contains("$1") {
            q = q.bind(Option::<String>::None);
        }
        let rows = q
            .fetch_all(&mut *conn)
            .await
            .context("the job's groups query")?;
        let mut group_rows = Vec::with_capacity(rows.len());
        for r in rows {
            let text: String = r.get(0);
            let obj = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                _ => bail!("the groups query returned a row that is not an object"),
            };
            group_rows.push(GroupRow::from_object(obj).map_err(|e| anyhow::anyhow!(e))?);
        }
        let all = evaluate_groups(spec, &Scope::All, group_rows);
        let mut eligible = Vec::new();
        let mut values = Map::new();
        for g in all.iter().filter(|g| g.reason().is_none()) {
            eligible.push(Value::String(g.key.clone()));
            if let Some(v) = g.params.get(param) {
                values.insert(g.key.clone(), v.clone());
            }
        }
        let target_sql = target
            .query
            .for_dialect("targets[0].query", Dialect::Postgres)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cte = format!(
            "WITH bench_params AS (SELECT $1::text AS eligible, $2::jsonb AS vals),
             refs AS ({target_sql}),
             rows AS (
                 SELECT refs.key AS key, min(refs.\"group\") AS grp
                 FROM refs
                 WHERE refs.key IS NOT NULL AND refs.skip IS NULL
                 GROUP BY refs.key
                 HAVING count(DISTINCT refs.\"group\") = 1)"
        );
        Ok(RowSet {
            cte,
            eligible: Value::Array(eligible).to_string(),
            values: Value::Object(values).to_string(),
            table: quote_ident(&target.table),
            key: quote_ident(&target.key),
            key_type: target.key_type,
            column: quote_ident(&rule.column),
            path,
            groups: (
                all.iter().filter(|g| g.reason().is_none()).count(),
                all.len(),
            ),
        })
    }

    /// `sql` with the row set's parameters bound: `$1` the eligible group
    /// keys, `$2` their new values, `$3` the rule's path.
    fn bound<'q>(
        &'q self,
        sql: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.eligible)
            .bind(&self.values)
            .bind(&self.path)
    }

    /// (target rows, rows whose document changes, bytes of their documents).
    pub async fn count(&self, conn: &mut PgConnection) -> anyhow::Result<(u64, u64, i64)> {
        let q = over_rows!(
            self,
            "{cte}
             SELECT count(*)::int8,
                    (count(*) FILTER (WHERE (t.{col} #> $3::text[]) IS DISTINCT FROM
                        ((SELECT vals FROM bench_params) -> rows.grp)))::int8,
                    coalesce(sum(octet_length(t.{col}::text)), 0)::int8
             FROM rows JOIN {table} t ON t.{key} = rows.key",
        );
        let r = self
            .bound(&q)
            .fetch_one(&mut *conn)
            .await
            .context("count the job's rows")?;
        Ok((
            r.get::<i64, _>(0).max(0) as u64,
            r.get::<i64, _>(1).max(0) as u64,
            r.get(2),
        ))
    }

    /// The limit: one UPDATE, one transaction. Returns rows written.
    pub async fn update_all(&self, conn: &mut PgConnection) -> anyhow::Result<u64> {
        let q = over_rows!(
            self,
            "{cte}
             UPDATE {table} AS t
             SET {col} = jsonb_set(coalesce(t.{col}, '{{}}'::jsonb), $3::text[],
                                   (SELECT vals FROM bench_params) -> rows.grp, true)
             FROM rows
             WHERE t.{key} = rows.key
               AND (t.{col} #> $3::text[]) IS DISTINCT FROM ((SELECT vals FROM bench_params) -> rows.grp)",
        );
        let r = self
            .bound(&q)
            .execute(&mut *conn)
            .await
            .context("the set-based UPDATE")?;
        Ok(r.rows_affected())
    }

    /// The per-row script. Returns (rows, rows written).
    pub async fn per_row(&self, conn: &mut PgConnection) -> anyhow::Result<(u64, u64)> {
        let list_q = format!(
            "{cte}
             SELECT rows.key::text, ((SELECT vals FROM bench_params) -> rows.grp)::text
             FROM rows ORDER BY rows.key",
            cte = self.cte,
        );
        let list: Vec<(String, Option<String>)> = sqlx::query(&list_q)
            .bind(&self.eligible)
            .bind(&self.values)
            .fetch(&mut *conn)
            .map_ok(|r| (r.get(0), r.get(1)))
            .try_collect()
            .await
            .context("read the job's rows")?;
        let select = format!(
            "SELECT {col}::text FROM {table} WHERE {key} = $1",
            col = self.column,
            table = self.table,
            key = self.key
        );
        let update = format!(
            "UPDATE {table} SET {col} = $2::jsonb WHERE {key} = $1",
            col = self.column,
            table = self.table,
            key = self.key
        );
        let (mut rows, mut written) = (0u64, 0u64);
        for (key, value) in list {
            let value: Value = match value {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("the new value for row {key}"))?,
                None => continue, // the group has no such parameter: nothing to set
            };
            let key_bind = KeyBind::new(self.key_type, &key)?;
            let doc: Option<Option<String>> = key_bind
                .bind(sqlx::query_scalar(&select))
                .fetch_optional(&mut *conn)
                .await
                .with_context(|| format!("read row {key}"))?;
            rows += 1;
            let Some(doc) = doc else { continue };
            let mut doc: Value = match doc {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("row {key} is not valid JSON"))?,
                None => Value::Object(Map::new()),
            };
            if set_path(&mut doc, &self.path, value)
                .with_context(|| format!("rewrite row {key}"))?
            {
                key_bind
                    .bind_query(sqlx::query(&update))
                    .bind(doc.to_string())
                    .execute(&mut *conn)
                    .await
                    .with_context(|| format!("write row {key}"))?;
                written += 1;
            }
        }
        Ok((rows, written))
    }
}

/// A key bound with the column's type.
enum KeyBind {
    Int(i64),
    Text(String),
}

impl KeyBind {
    fn new(t: KeyType, key: &str) -> anyhow::Result<KeyBind> {
        Ok(match t {
            KeyType::Integer => KeyBind::Int(
                key.parse()
                    .with_context(|| format!("key `{key}` is not an integer"))?,
            ),
            KeyType::Text => KeyBind::Text(key.to_string()),
        })
    }

    fn bind<'q, O>(
        &self,
        q: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        match self {
            KeyBind::Int(i) => q.bind(*i),
            KeyBind::Text(s) => q.bind(s.clone()),
        }
    }

    fn bind_query<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            KeyBind::Int(i) => q.bind(*i),
            KeyBind::Text(s) => q.bind(s.clone()),
        }
    }
}

/// Sets `value` at `path` (object keys), creating missing parent objects;
/// true when the document changed.
fn set_path(doc: &mut Value, path: &[String], value: Value) -> anyhow::Result<bool> {
    if doc.is_null() {
        *doc = Value::Object(Map::new());
    }
    let Some((last, parents)) = path.split_last() else {
        bail!("empty path");
    };
    let mut cur = doc;
    for seg in parents {
        let Value::Object(m) = cur else {
            bail!("`{seg}`'s parent is not an object");
        };
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(m) = cur else {
        bail!("`{last}`'s parent is not an object");
    };
    if m.get(last) == Some(&value) {
        return Ok(false);
    }
    m.insert(last.clone(), value);
    Ok(true)
}

/// `/a/b~1c` → `["a", "b/c"]`.
fn pointer_segments(p: &str) -> anyhow::Result<Vec<String>> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        bail!("JSON pointer `{p}` does not start with /");
    };
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// Runs `limit` or `per-row` against the database at `url`. The limit's
/// time is the groups query (with guard evaluation) plus the UPDATE; its row
/// count is the template's (`target_rows`).
pub async fn run_contender(
    c: Contender,
    url: &str,
    spec: &JobSpec,
    target_rows: u64,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut conn = crate::conn::connect(url).await?;
    let started = Instant::now();
    let work = async {
        let set = RowSet::prepare(&mut conn, spec).await?;
        match c {
            Contender::Limit => {
                let written = set.update_all(&mut conn).await?;
                Ok::<_, anyhow::Error>((target_rows, written))
            }
            _ => set.per_row(&mut conn).await,
        }
    };
    let (rows, changed) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("{} took longer than {timeout:?}", c.label()))??;
    let wall = started.elapsed();
    conn.close().await.ok();
    Ok(Outcome {
        contender: c,
        wall,
        rows,
        changed,
        growth_bytes: 0,
        before_image_bytes: None,
        ledger_bytes: None,
        checksum: String::new(),
        rss: Vec::new(),
        notes: Vec::new(),
        phases: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_path_creates_replaces_and_reports_no_change() {
        let p = pointer_segments("/product_name").unwrap();
        let mut d = json!({"a": 1});
        assert!(set_path(&mut d, &p, json!("T")).unwrap());
        assert_eq!(d, json!({"a": 1, "product_name": "T"}));
        assert!(!set_path(&mut d, &p, json!("T")).unwrap());
        let mut n = Value::Null;
        assert!(set_path(&mut n, &p, json!("T")).unwrap());
        assert_eq!(n, json!({"product_name": "T"}));
        let deep = pointer_segments("/a~1b/c").unwrap();
        assert_eq!(deep, vec!["a/b".to_string(), "c".to_string()]);
    }
}
