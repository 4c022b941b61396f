//! Storing collection rows in SQLite: one transaction of multi-row `INSERT`s per batch
//! ([`sqlite_insert_rows`]), JSON as the compact text serde_json produced and
//! `last_updated` as Django's UTC datetime text.

use sqlx::SqlitePool;

use super::CollectionRows;
use crate::util::{sqlite_datetime, sqlite_insert_rows};

pub(super) async fn insert_collection_rows(
    pool: SqlitePool,
    rows: CollectionRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO collection_models (id, version, title, category, nodes, collection_dict, \
             last_updated)",
        rows.id.len(),
        |row, i| {
            row.push_bind(rows.id[i].as_str())
                .push_bind(rows.version[i])
                .push_bind(rows.title[i].as_str())
                .push_bind(rows.category[i].as_str())
                .push_bind(rows.nodes[i].as_str())
                .push("NULL")
                .push_bind(sqlite_datetime(rows.last_updated_ms[i]));
        },
    )
    .await?;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO collection_snapshot_contents (id, content)",
        rows.snapshot_id.len(),
        |row, i| {
            row.push_bind(rows.snapshot_id[i].as_str())
                .push_bind(rows.snapshot_content[i].as_str());
        },
    )
    .await?;
    tx.commit().await
}
