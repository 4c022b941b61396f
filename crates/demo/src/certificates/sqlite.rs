//! Storing the certificate-titles rows in SQLite, encoded as Django stores them there:
//! timestamps as `YYYY-MM-DD HH:MM:SS[.ffffff]` UTC text, booleans as 0/1, UUIDs as 32 hex
//! digits, `"CEUs"` bound as decimal text (the `decimal` column's NUMERIC affinity turns it
//! into a number, as it does for the `str(Decimal)` Django binds) and JSON as compact text.
//!
//! Each batch is one transaction of multi-row `INSERT`s ([`sqlite_insert_rows`]); the
//! commit, the only disk sync, happens once per batch. Column-wise `unnest` has no SQLite
//! equivalent. The deferred foreign keys are checked at each commit, so every transaction
//! only references rows stored by it or before it.

use sqlx::SqlitePool;

use super::{CertificateRows, PageBatch, PageRevisionUpdate, Plan, RevisionRows, CONTENT_TYPES};
use crate::util::{sqlite_datetime, sqlite_insert_rows, uuid_hex, BATCH_ROWS};
use crate::DemoError;

/// Registers [`CONTENT_TYPES`] in order (existing rows are kept; on a fresh database the
/// ids are 1, 2, ... as on PostgreSQL).
pub(super) async fn register_content_types(pool: &SqlitePool) -> Result<(), DemoError> {
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
    Ok(())
}

pub(super) async fn insert_programs(pool: &SqlitePool, plans: &[Plan]) -> Result<(), DemoError> {
    for chunk in plans.chunks(BATCH_ROWS) {
        let mut tx = pool.begin().await?;
        sqlite_insert_rows(
            &mut tx,
            "INSERT INTO courses_program (id, created_on, updated_on, readable_id, title, live)",
            chunk.len(),
            |row, i| {
                let p = &chunk[i];
                row.push_bind(p.id)
                    .push_bind(sqlite_datetime(p.created_ms))
                    .push_bind(sqlite_datetime(p.updated_ms))
                    .push_bind(p.readable_id.as_str())
                    .push_bind(p.title.as_str())
                    .push("1");
            },
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Inserts the `wagtailcore_page`, `cms_programpage` and `cms_certificatepage` rows of
/// `batch` in one transaction. The derived page columns get the values PostgreSQL's insert
/// computes: `has_unpublished_changes = NOT live`, `show_in_menus = (depth = 3)`,
/// `draft_title = title`.
pub(super) async fn insert_pages(pool: &SqlitePool, batch: PageBatch<'_>) -> Result<(), DemoError> {
    let mut tx = pool.begin().await?;
    let pages = &batch.pages;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO wagtailcore_page (id, path, depth, numchild, title, slug, live, \
             has_unpublished_changes, url_path, seo_title, show_in_menus, search_description, \
             expired, content_type_id, owner_id, locked, draft_title, translation_key, \
             locale_id)",
        pages.id.len(),
        |row, i| {
            row.push_bind(pages.id[i])
                .push_bind(pages.path[i].as_str())
                .push_bind(pages.depth[i])
                .push_bind(pages.numchild[i])
                .push_bind(pages.title[i].as_str())
                .push_bind(pages.slug[i].as_str())
                .push_bind(pages.live[i])
                .push_bind(!pages.live[i])
                .push_bind(pages.url_path[i].as_str())
                .push("''")
                .push_bind(pages.depth[i] == 3)
                .push("''")
                .push("0")
                .push_bind(pages.content_type_id[i])
                .push_bind(pages.owner_id[i])
                .push("0")
                .push_bind(pages.title[i].as_str())
                .push_bind(uuid_hex(&pages.translation_key[i]))
                .push("1");
        },
    )
    .await?;
    let program = &batch.program_pages;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO cms_programpage (page_ptr_id, description, program_id)",
        program.id.len(),
        |row, i| {
            row.push_bind(program.id[i])
                .push_bind(program.description[i])
                .push_bind(program.program_id[i]);
        },
    )
    .await?;
    let cert = &batch.certificate_pages;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO cms_certificatepage (page_ptr_id, product_name, institute_text, \"CEUs\", \
             partner_logo_placement, signatories, overrides, partner_logo_id)",
        cert.id.len(),
        |row, i| {
            row.push_bind(cert.id[i])
                .push_bind(cert.product_name[i])
                .push_bind(cert.institute_text[i])
                .push_bind(cert.ceus[i])
                .push("NULL")
                .push_bind(cert.signatories[i].as_str())
                .push_bind(cert.overrides[i].as_str())
                .push("NULL");
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn insert_revisions(
    pool: SqlitePool,
    rows: RevisionRows,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // base_content_type_id is looked up in SQL, as on PostgreSQL.
    let (base,): (i32,) = sqlx::query_as(
        "SELECT id FROM django_content_type WHERE app_label = 'wagtailcore' AND model = 'page'",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO wagtailcore_revision (id, created_at, content, approved_go_live_at, \
             object_id, user_id, content_type_id, base_content_type_id, object_str)",
        rows.id.len(),
        |row, i| {
            row.push_bind(rows.id[i])
                .push_bind(sqlite_datetime(rows.created_ms[i]))
                .push_bind(rows.content[i].as_str())
                .push("NULL")
                .push_bind(rows.object_id[i].as_str())
                .push_bind(rows.user_id[i])
                .push_bind(rows.content_type_id[i])
                .push_bind(base)
                .push_bind(rows.object_str[i].as_str());
        },
    )
    .await?;
    tx.commit().await
}

pub(super) async fn update_page_revisions(
    pool: &SqlitePool,
    updates: &[PageRevisionUpdate],
) -> Result<(), DemoError> {
    // One UPDATE per page (a few per program): there is no multi-row UPDATE worth the
    // complexity at this size.
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
    sqlite_insert_rows(
        &mut tx,
        "INSERT INTO courses_programcertificate (id, created_on, updated_on, user_id, \
             is_revoked, uuid, issue_date, certificate_page_revision_id, program_id)",
        rows.id.len(),
        |row, i| {
            // issue_date is the creation time, as on PostgreSQL.
            let issued = sqlite_datetime(rows.issued_ms[i]);
            row.push_bind(rows.id[i])
                .push_bind(issued.clone())
                .push_bind(sqlite_datetime(rows.updated_ms[i]))
                .push_bind(rows.user_id[i])
                .push_bind(rows.revoked[i])
                .push_bind(uuid_hex(&rows.uuid[i]))
                .push_bind(issued)
                .push_bind(rows.revision_id[i])
                .push_bind(rows.program_id[i]);
        },
    )
    .await?;
    tx.commit().await
}
