//! Storing collection rows in SQLite: one transaction per batch of prepared single-row
//! `INSERT`s (see `certificates::sqlite` for why), JSON as the compact text serde_json
//! produced and `last_updated` as Django's UTC datetime text.

use sqlx::SqlitePool;

use super::CollectionRows;
use crate::util::sqlite_datetime;

pub(super) async fn insert_collection_rows(
    pool: SqlitePool,
    rows: CollectionRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for i in 0..rows.id.len() {
        sqlx::query(
            "INSERT INTO collection_models (id, version, title, category, nodes, \
                 collection_dict, last_updated) \
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
        )
        .bind(rows.id[i].as_str())
        .bind(rows.version[i])
        .bind(rows.title[i].as_str())
        .bind(rows.category[i].as_str())
        .bind(rows.nodes[i].as_str())
        .bind(sqlite_datetime(rows.last_updated_ms[i]))
        .execute(&mut *tx)
        .await?;
    }
    for (id, content) in rows.snapshot_id.iter().zip(&rows.snapshot_content) {
        sqlx::query("INSERT INTO collection_snapshot_contents (id, content) VALUES (?1, ?2)")
            .bind(id.as_str())
            .bind(content.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
