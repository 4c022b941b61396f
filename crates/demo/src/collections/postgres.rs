//! Storing collection rows in PostgreSQL: one `INSERT ... SELECT FROM unnest(...)` per
//! table and batch, JSON cast to `jsonb` and timestamps computed server-side.

use sqlx::PgPool;

use super::CollectionRows;

pub(super) async fn insert_collection_rows(
    pool: PgPool,
    rows: CollectionRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !rows.id.is_empty() {
        sqlx::query(
            "INSERT INTO collection_models (id, version, title, category, nodes, \
                 collection_dict, last_updated) \
             SELECT id, v, t, c, n::jsonb, NULL, timestamptz 'epoch' + u * interval '1 millisecond' \
             FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[], \
                         $6::int8[]) AS x(id, v, t, c, n, u)",
        )
        .bind(&rows.id)
        .bind(&rows.version)
        .bind(&rows.title)
        .bind(&rows.category)
        .bind(&rows.nodes)
        .bind(&rows.last_updated_ms)
        .execute(&mut *tx)
        .await?;
    }
    if !rows.snapshot_id.is_empty() {
        sqlx::query(
            "INSERT INTO collection_snapshot_contents (id, content) \
             SELECT id, c::jsonb FROM unnest($1::text[], $2::text[]) AS x(id, c)",
        )
        .bind(&rows.snapshot_id)
        .bind(&rows.snapshot_content)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
