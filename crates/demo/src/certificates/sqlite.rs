//! Storing the certificate-titles rows in SQLite, encoded as Django stores them there:
//! timestamps as `YYYY-MM-DD HH:MM:SS[.ffffff]` UTC text, booleans as 0/1, UUIDs as 32 hex
//! digits, `"CEUs"` bound as decimal text (the `decimal` column's NUMERIC affinity turns it
//! into a number, as it does for Django's `str(Decimal)`) and JSON as compact text.
//!
//! Each batch is one transaction of single-row `INSERT`s: SQLite runs in-process, so a
//! statement costs microseconds, sqlx prepares each SQL text once per connection and
//! reuses it, and the commit (the only disk sync) happens once per batch. Column-wise
//! `unnest` has no SQLite equivalent, and multi-row `VALUES` would only save the per-row
//! round trip to sqlx's connection thread. The deferred foreign keys are checked at each
//! commit, so every transaction only references rows stored by it or before it.

use sqlx::SqlitePool;

use super::{
    CertificateRows, ContentTypes, PageBatch, PageRevisionUpdate, Plan, RevisionRows, CONTENT_TYPES,
};
use crate::util::{sqlite_datetime, uuid_hex, BATCH_ROWS};
use crate::DemoError;

/// Registers [`CONTENT_TYPES`] in order (existing rows are kept; on a fresh database the
/// ids are 1, 2, ... as on PostgreSQL) and returns the ids the data set uses.
pub(super) async fn content_types(pool: &SqlitePool) -> Result<ContentTypes, DemoError> {
    let mut tx = pool.begin().await?;
    for (app, model) in CONTENT_TYPES {
        sqlx::query(
            "INSERT INTO django_content_type (app_label, model) VALUES (?1, ?2) \
             ON CONFLICT (app_label, model) DO NOTHING",
        )
        .bind(app)
        .bind(model)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let id = |app: &'static str, model: &'static str| async move {
        sqlx::query_scalar::<_, i32>(
            "SELECT id FROM django_content_type WHERE app_label = ?1 AND model = ?2",
        )
        .bind(app)
        .bind(model)
        .fetch_one(pool)
        .await
    };
    Ok(ContentTypes {
        page: id("wagtailcore", "page").await?,
        program_page: id("cms", "programpage").await?,
        certificate_page: id("cms", "certificatepage").await?,
    })
}

pub(super) async fn insert_programs(pool: &SqlitePool, plans: &[Plan]) -> Result<(), DemoError> {
    for chunk in plans.chunks(BATCH_ROWS) {
        let mut tx = pool.begin().await?;
        for p in chunk {
            sqlx::query(
                "INSERT INTO courses_program (id, created_on, updated_on, readable_id, title, \
                     live) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1)",
            )
            .bind(p.id)
            .bind(sqlite_datetime(p.created_ms))
            .bind(sqlite_datetime(p.updated_ms))
            .bind(p.readable_id.as_str())
            .bind(p.title.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Inserts the `wagtailcore_page`, `cms_programpage` and `cms_certificatepage` rows of
/// `batch` in one transaction. The derived columns (`has_unpublished_changes = NOT live`,
/// `show_in_menus = depth = 3`, `draft_title = title`) are computed by the same SQL
/// expressions as on PostgreSQL.
pub(super) async fn insert_pages(pool: &SqlitePool, batch: PageBatch<'_>) -> Result<(), DemoError> {
    let mut tx = pool.begin().await?;
    let pages = &batch.pages;
    for i in 0..pages.id.len() {
        sqlx::query(
            "INSERT INTO wagtailcore_page (id, path, depth, numchild, title, slug, live, \
                 has_unpublished_changes, url_path, seo_title, show_in_menus, \
                 search_description, expired, content_type_id, owner_id, locked, draft_title, \
                 translation_key, locale_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NOT ?7, ?8, '', ?3 = 3, '', 0, ?9, ?10, 0, \
                     ?5, ?11, 1)",
        )
        .bind(pages.id[i])
        .bind(pages.path[i].as_str())
        .bind(pages.depth[i])
        .bind(pages.numchild[i])
        .bind(pages.title[i].as_str())
        .bind(pages.slug[i].as_str())
        .bind(pages.live[i])
        .bind(pages.url_path[i].as_str())
        .bind(pages.content_type_id[i])
        .bind(pages.owner_id[i])
        .bind(uuid_hex(&pages.translation_key[i]))
        .execute(&mut *tx)
        .await?;
    }
    let program = &batch.program_pages;
    for i in 0..program.id.len() {
        sqlx::query(
            "INSERT INTO cms_programpage (page_ptr_id, description, program_id) \
             VALUES (?1, ?2, ?3)",
        )
        .bind(program.id[i])
        .bind(program.description[i])
        .bind(program.program_id[i])
        .execute(&mut *tx)
        .await?;
    }
    let cert = &batch.certificate_pages;
    for i in 0..cert.id.len() {
        sqlx::query(
            "INSERT INTO cms_certificatepage (page_ptr_id, product_name, institute_text, \
                 \"CEUs\", partner_logo_placement, signatories, overrides, partner_logo_id) \
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, NULL)",
        )
        .bind(cert.id[i])
        .bind(cert.product_name[i])
        .bind(cert.institute_text[i])
        .bind(cert.ceus[i])
        .bind(cert.signatories[i].as_str())
        .bind(cert.overrides[i].as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn insert_revisions(
    pool: SqlitePool,
    rows: RevisionRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for i in 0..rows.id.len() {
        sqlx::query(
            "INSERT INTO wagtailcore_revision (id, created_at, content, approved_go_live_at, \
                 object_id, user_id, content_type_id, base_content_type_id, object_str) \
             VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, \
                     (SELECT id FROM django_content_type \
                       WHERE app_label = 'wagtailcore' AND model = 'page'), \
                     ?7)",
        )
        .bind(rows.id[i])
        .bind(sqlite_datetime(rows.created_ms[i]))
        .bind(rows.content[i].as_str())
        .bind(rows.object_id[i].as_str())
        .bind(rows.user_id[i])
        .bind(rows.content_type_id[i])
        .bind(rows.object_str[i].as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

pub(super) async fn update_page_revisions(
    pool: &SqlitePool,
    updates: &[PageRevisionUpdate],
) -> Result<(), DemoError> {
    for chunk in updates.chunks(BATCH_ROWS) {
        let mut tx = pool.begin().await?;
        for u in chunk {
            // `IS NOT` is SQLite's `IS DISTINCT FROM`.
            sqlx::query(
                "UPDATE wagtailcore_page SET \
                     live_revision_id = ?2, \
                     latest_revision_id = ?3, \
                     has_unpublished_changes = (?2 IS NOT ?3), \
                     first_published_at = ?4, \
                     last_published_at = ?5, \
                     latest_revision_created_at = ?6 \
                 WHERE id = ?1",
            )
            .bind(u.page_id)
            .bind(u.live_revision_id)
            .bind(u.latest_revision_id)
            .bind(sqlite_datetime(u.first_published_ms))
            .bind(sqlite_datetime(u.last_published_ms))
            .bind(sqlite_datetime(u.latest_revision_ms))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

pub(super) async fn insert_certificate_rows(
    pool: SqlitePool,
    rows: CertificateRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for i in 0..rows.id.len() {
        // issue_date is the creation time, as on PostgreSQL (?2 twice).
        sqlx::query(
            "INSERT INTO courses_programcertificate (id, created_on, updated_on, user_id, \
                 is_revoked, uuid, issue_date, certificate_page_revision_id, program_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?2, ?7, ?8)",
        )
        .bind(rows.id[i])
        .bind(sqlite_datetime(rows.issued_ms[i]))
        .bind(sqlite_datetime(rows.updated_ms[i]))
        .bind(rows.user_id[i])
        .bind(rows.revoked[i])
        .bind(uuid_hex(&rows.uuid[i]))
        .bind(rows.revision_id[i])
        .bind(rows.program_id[i])
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
