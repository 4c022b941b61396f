//! The collections data set: an Oppia-style versioned model.
//!
//! Collection `n` (0-based) has id `col{n}` and a current version `v` in
//! `1..=max_versions` (collection 0 always has `max_versions`, collection 1 always has 1).
//! `collection_models` holds the current state (`nodes` = the version-`v` node list,
//! `collection_dict` NULL); `collection_snapshot_contents` holds one row per version
//! `1..=v`, id `col{n}-{version}`, whose content is the model dict at that version:
//! `title`, `category`, `objective`, `language_code`, `tags`, `schema_version` (3) and
//! `nodes` (no `collection_dict` key). Version 1 has 1–3 nodes and every later version
//! appends one node, so node lists only grow.
//!
//! The rows (JSON documents included) are built once, here; the `postgres` and `sqlite`
//! submodules only store finished batches, so both back ends hold the same data.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::mpsc;

use crate::util::{
    analyze, ensure_empty, pipeline, rng_for, send, Db, BATCH_BYTES, BATCH_ROWS, MS_2016, MS_DAY,
    MS_YEAR,
};
use crate::DemoError;

mod postgres;
mod sqlite;

/// The schema of the collection job's tables (`sql/collections.postgres.sql`).
pub const COLLECTIONS_SCHEMA_SQL: &str = include_str!("../sql/collections.postgres.sql");

/// The same tables as a Django model would create them on SQLite
/// (`sql/collections.sqlite.sql`).
pub const COLLECTIONS_SQLITE_SCHEMA_SQL: &str = include_str!("../sql/collections.sqlite.sql");

/// Creates `collection_models` and `collection_snapshot_contents` in the connection's
/// current schema.
pub async fn create_collection_schema(pool: &PgPool) -> Result<(), DemoError> {
    sqlx::raw_sql(COLLECTIONS_SCHEMA_SQL).execute(pool).await?;
    Ok(())
}

/// Creates `collection_models` and `collection_snapshot_contents` in a SQLite database.
pub async fn create_collection_schema_sqlite(pool: &SqlitePool) -> Result<(), DemoError> {
    sqlx::raw_sql(COLLECTIONS_SQLITE_SCHEMA_SQL)
        .execute(pool)
        .await?;
    Ok(())
}

/// What to generate with [`generate_collections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionParams {
    /// Number of `collection_models` rows.
    pub collections: u64,
    /// Highest version a collection reaches (at least 1).
    pub max_versions: u32,
    /// Seed of every random choice; the same parameters give the same data.
    pub seed: u64,
}

impl Default for CollectionParams {
    fn default() -> Self {
        Self {
            collections: 100,
            max_versions: 8,
            seed: 42,
        }
    }
}

/// Exact counts of what [`generate_collections`] inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectionStats {
    /// `collection_models` rows.
    pub collections: u64,
    /// `collection_snapshot_contents` rows (the sum of all versions).
    pub snapshots: u64,
}

/// Id of the collection with 0-based index `n`: `col{n}`.
pub fn collection_id(n: u64) -> String {
    format!("col{n}")
}

const STREAM_COLLECTION: u64 = 101;

const CATEGORIES: &[&str] = &[
    "Mathematics",
    "Algebra",
    "Arithmetic",
    "Physics",
    "Chemistry",
    "Biology",
    "Computing",
    "Programming",
    "Music",
    "Languages",
    "Geography",
    "History",
];

const SUBJECTS: &[&str] = &[
    "Fractions",
    "Negative Numbers",
    "Ratios",
    "Place Values",
    "Linear Equations",
    "Photosynthesis",
    "Newton's Laws",
    "The Periodic Table",
    "Recursion",
    "Binary Search",
    "Music Theory",
    "Spanish Verbs",
    "World Capitals",
    "The Industrial Revolution",
    "Probability",
    "Prime Numbers",
];

const TAGS: &[&str] = &[
    "beginner",
    "intermediate",
    "advanced",
    "practice",
    "quiz",
    "story",
    "exam-prep",
    "visual",
    "interactive",
];

const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn exploration_id(rng: &mut StdRng) -> String {
    let tail: String = (0..9)
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect();
    format!("exp{tail}")
}

/// The `position`-th node of a collection: it needs the skill the previous node teaches
/// (sometimes also an earlier one) and teaches one or two new skills.
fn node(rng: &mut StdRng, position: usize) -> Value {
    let mut prerequisites = Vec::new();
    if position > 0 {
        prerequisites.push(format!("skill{}", position - 1));
        if position > 2 && rng.gen_ratio(1, 3) {
            prerequisites.insert(0, format!("skill{}", rng.gen_range(0..position - 1)));
        }
    }
    let mut acquired = vec![format!("skill{position}")];
    if rng.gen_ratio(1, 4) {
        acquired.push(format!("skill{position}b"));
    }
    json!({
        "exploration_id": exploration_id(rng),
        "prerequisite_skill_ids": prerequisites,
        "acquired_skill_ids": acquired,
    })
}

#[derive(Default)]
struct CollectionRows {
    id: Vec<String>,
    version: Vec<i32>,
    title: Vec<String>,
    category: Vec<String>,
    nodes: Vec<String>,
    last_updated_ms: Vec<i64>,
    snapshot_id: Vec<String>,
    snapshot_content: Vec<String>,
    bytes: usize,
}

async fn insert_collection_rows(db: Db, rows: CollectionRows) -> Result<(), sqlx::Error> {
    let n = rows.id.len();
    match db {
        Db::Postgres(pool) => postgres::insert_collection_rows(pool, rows).await,
        Db::Sqlite(pool) => sqlite::insert_collection_rows(pool, rows).await,
    }?;
    crate::progress::add(n);
    Ok(())
}

fn generate_collection_rows(
    p: CollectionParams,
    tx: &mpsc::Sender<CollectionRows>,
) -> Result<CollectionStats, DemoError> {
    let mut rows = CollectionRows::default();
    let mut stats = CollectionStats::default();
    for n in 0..p.collections {
        let mut rng = rng_for(p.seed, STREAM_COLLECTION, n);
        let versions = match n {
            0 => p.max_versions,
            1 => 1,
            _ => rng.gen_range(1..=p.max_versions),
        };
        let id = collection_id(n);
        let subject = SUBJECTS[rng.gen_range(0..SUBJECTS.len())];
        let category = CATEGORIES[rng.gen_range(0..CATEGORIES.len())];
        let mut title = match rng.gen_range(0..3) {
            0 => format!("Introduction to {subject}"),
            1 => format!("{subject} Practice"),
            _ => format!("Learn {subject}"),
        };
        let objective = format!(
            "Understand {} and apply it to everyday problems.",
            subject.to_lowercase()
        );
        let mut tags: Vec<&str> = Vec::new();
        for _ in 0..rng.gen_range(0..=3) {
            let tag = TAGS[rng.gen_range(0..TAGS.len())];
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let mut nodes: Vec<Value> = Vec::new();
        for position in 0..rng.gen_range(1..=3usize) {
            nodes.push(node(&mut rng, position));
        }
        let mut updated_ms = MS_2016 + rng.gen_range(0..5 * MS_YEAR);
        for version in 1..=versions {
            if version > 1 {
                let position = nodes.len();
                nodes.push(node(&mut rng, position));
                if rng.gen_ratio(1, 5) {
                    title = format!("{title} (Part {version})");
                }
                updated_ms += rng.gen_range(MS_DAY / 24..30 * MS_DAY);
            }
            let content = json!({
                "title": title,
                "category": category,
                "objective": objective,
                "language_code": "en",
                "tags": tags,
                "schema_version": 3,
                "nodes": nodes,
            })
            .to_string();
            rows.bytes += content.len();
            rows.snapshot_id.push(format!("{id}-{version}"));
            rows.snapshot_content.push(content);
            stats.snapshots += 1;
        }
        let nodes_json = Value::Array(nodes).to_string();
        rows.bytes += nodes_json.len();
        rows.id.push(id);
        rows.version.push(
            i32::try_from(versions)
                .map_err(|_| DemoError::InvalidParams("max_versions too large".into()))?,
        );
        rows.title.push(title);
        rows.category.push(category.to_owned());
        rows.nodes.push(nodes_json);
        rows.last_updated_ms.push(updated_ms);
        stats.collections += 1;
        if rows.snapshot_id.len() >= BATCH_ROWS || rows.bytes >= BATCH_BYTES {
            send(tx, std::mem::take(&mut rows))?;
        }
    }
    if !rows.id.is_empty() {
        send(tx, rows)?;
    }
    Ok(stats)
}

/// Fills the (empty) collection tables with `p.collections` collections and one snapshot
/// per version of each; deterministic for a given seed.
pub async fn generate_collections(
    pool: &PgPool,
    p: &CollectionParams,
) -> Result<CollectionStats, DemoError> {
    generate(&Db::Postgres(pool.clone()), p).await
}

/// Fills the (empty) collection tables of a SQLite database (created with
/// [`create_collection_schema_sqlite`]) with the same data as [`generate_collections`]
/// produces for the same parameters. The pool should point at a database file.
pub async fn generate_collections_sqlite(
    pool: &SqlitePool,
    p: &CollectionParams,
) -> Result<CollectionStats, DemoError> {
    generate(&Db::Sqlite(pool.clone()), p).await
}

async fn generate(db: &Db, p: &CollectionParams) -> Result<CollectionStats, DemoError> {
    if p.max_versions == 0 {
        return Err(DemoError::InvalidParams(
            "max_versions must be at least 1".into(),
        ));
    }
    const TABLES: &[&str] = &["collection_models", "collection_snapshot_contents"];
    ensure_empty(db, TABLES).await?;
    let params = *p;
    let stats = pipeline(
        db,
        move |tx| generate_collection_rows(params, tx),
        insert_collection_rows,
    )
    .await?;
    analyze(db, TABLES).await?;
    Ok(stats)
}
