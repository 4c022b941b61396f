//! Storing the certificate-titles rows in PostgreSQL: one `INSERT ... SELECT FROM
//! unnest(...)` per column-wise batch, with timestamps, UUIDs and JSON converted
//! server-side. The rows themselves come from the shared generator in the parent module.

use sqlx::PgPool;

use super::{CertificateRows, PageBatch, PageRevisionUpdate, Plan, RevisionRows, CONTENT_TYPES};
use crate::util::{reset_identity, BATCH_ROWS};
use crate::DemoError;

/// Registers [`CONTENT_TYPES`] in order (existing rows are kept).
pub(super) async fn register_content_types(pool: &PgPool) -> Result<(), DemoError> {
    let (apps, models): (Vec<&str>, Vec<&str>) = CONTENT_TYPES.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO django_content_type (app_label, model) \
         SELECT a, m FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(a, m, n) \
         ORDER BY n ON CONFLICT (app_label, model) DO NOTHING",
    )
    .bind(&apps)
    .bind(&models)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn insert_programs(pool: &PgPool, plans: &[Plan]) -> Result<(), DemoError> {
    for chunk in plans.chunks(BATCH_ROWS) {
        let ids: Vec<i32> = chunk.iter().map(|p| p.id).collect();
        let created: Vec<i64> = chunk.iter().map(|p| p.created_ms).collect();
        let updated: Vec<i64> = chunk.iter().map(|p| p.updated_ms).collect();
        let readable: Vec<&str> = chunk.iter().map(|p| p.readable_id.as_str()).collect();
        let titles: Vec<&str> = chunk.iter().map(|p| p.title.as_str()).collect();
        sqlx::query(
            "INSERT INTO courses_program (id, created_on, updated_on, readable_id, title, live) \
             SELECT id, timestamptz 'epoch' + c * interval '1 millisecond', \
                    timestamptz 'epoch' + u * interval '1 millisecond', r, t, true \
             FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::text[], $5::text[]) \
                  AS x(id, c, u, r, t)",
        )
        .bind(&ids)
        .bind(&created)
        .bind(&updated)
        .bind(&readable)
        .bind(&titles)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Inserts the `wagtailcore_page` rows of `batch`, then its `cms_programpage` and
/// `cms_certificatepage` rows (whose pages are in this or an earlier batch).
pub(super) async fn insert_pages(pool: &PgPool, batch: PageBatch<'_>) -> Result<(), DemoError> {
    let pages = batch.pages;
    if !pages.id.is_empty() {
        sqlx::query(
            "INSERT INTO wagtailcore_page (id, path, depth, numchild, title, slug, live, \
                 has_unpublished_changes, url_path, seo_title, show_in_menus, \
                 search_description, expired, content_type_id, owner_id, locked, draft_title, \
                 translation_key, locale_id) \
             SELECT id, path, depth, numchild, title, slug, live, NOT live, url_path, '', \
                    depth = 3, '', false, ct, owner, false, title, tk::uuid, 1 \
             FROM unnest($1::int4[], $2::text[], $3::int4[], $4::int4[], $5::text[], \
                         $6::text[], $7::bool[], $8::text[], $9::int4[], $10::int4[], \
                         $11::text[]) \
                  AS x(id, path, depth, numchild, title, slug, live, url_path, ct, owner, tk)",
        )
        .bind(&pages.id)
        .bind(&pages.path)
        .bind(&pages.depth)
        .bind(&pages.numchild)
        .bind(&pages.title)
        .bind(&pages.slug)
        .bind(&pages.live)
        .bind(&pages.url_path)
        .bind(&pages.content_type_id)
        .bind(&pages.owner_id)
        .bind(&pages.translation_key)
        .execute(pool)
        .await?;
    }
    let program = batch.program_pages;
    if !program.id.is_empty() {
        sqlx::query(
            "INSERT INTO cms_programpage (page_ptr_id, description, program_id) \
             SELECT * FROM unnest($1::int4[], $2::text[], $3::int4[])",
        )
        .bind(&program.id)
        .bind(&program.description)
        .bind(&program.program_id)
        .execute(pool)
        .await?;
    }
    let cert = batch.certificate_pages;
    if !cert.id.is_empty() {
        sqlx::query(
            "INSERT INTO cms_certificatepage (page_ptr_id, product_name, institute_text, \
                 \"CEUs\", partner_logo_placement, signatories, overrides, partner_logo_id) \
             SELECT id, name, inst, ceus::numeric, NULL, sig::jsonb, ovr::jsonb, NULL \
             FROM unnest($1::int4[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[]) AS x(id, name, inst, ceus, sig, ovr)",
        )
        .bind(&cert.id)
        .bind(&cert.product_name)
        .bind(&cert.institute_text)
        .bind(&cert.ceus)
        .bind(&cert.signatories)
        .bind(&cert.overrides)
        .execute(pool)
        .await?;
    }
    Ok(())
}

pub(super) async fn insert_revisions(pool: PgPool, rows: RevisionRows) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO wagtailcore_revision (id, created_at, content, approved_go_live_at, \
             object_id, user_id, content_type_id, base_content_type_id, object_str) \
         SELECT id, timestamptz 'epoch' + c * interval '1 millisecond', content::jsonb, NULL, \
                oid, uid, ct, \
                (SELECT id FROM django_content_type \
                  WHERE app_label = 'wagtailcore' AND model = 'page'), \
                ostr \
         FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::int4[], $6::int4[], \
                     $7::text[]) AS x(id, c, content, oid, uid, ct, ostr)",
    )
    .bind(&rows.id)
    .bind(&rows.created_ms)
    .bind(&rows.content)
    .bind(&rows.object_id)
    .bind(&rows.user_id)
    .bind(&rows.content_type_id)
    .bind(&rows.object_str)
    .execute(&pool)
    .await?;
    Ok(())
}

pub(super) async fn update_page_revisions(
    pool: &PgPool,
    updates: &[PageRevisionUpdate],
) -> Result<(), DemoError> {
    for chunk in updates.chunks(BATCH_ROWS) {
        let id: Vec<i32> = chunk.iter().map(|u| u.page_id).collect();
        let live: Vec<Option<i32>> = chunk.iter().map(|u| u.live_revision_id).collect();
        let latest: Vec<i32> = chunk.iter().map(|u| u.latest_revision_id).collect();
        let first: Vec<i64> = chunk.iter().map(|u| u.first_published_ms).collect();
        let last: Vec<i64> = chunk.iter().map(|u| u.last_published_ms).collect();
        let latest_at: Vec<i64> = chunk.iter().map(|u| u.latest_revision_ms).collect();
        sqlx::query(
            "UPDATE wagtailcore_page p SET \
                 live_revision_id = u.live, \
                 latest_revision_id = u.latest, \
                 has_unpublished_changes = (u.live IS DISTINCT FROM u.latest), \
                 first_published_at = timestamptz 'epoch' + u.first * interval '1 millisecond', \
                 last_published_at = timestamptz 'epoch' + u.last * interval '1 millisecond', \
                 latest_revision_created_at = \
                     timestamptz 'epoch' + u.latest_at * interval '1 millisecond' \
             FROM unnest($1::int4[], $2::int4[], $3::int4[], $4::int8[], $5::int8[], \
                         $6::int8[]) AS u(id, live, latest, first, last, latest_at) \
             WHERE p.id = u.id",
        )
        .bind(&id)
        .bind(&live)
        .bind(&latest)
        .bind(&first)
        .bind(&last)
        .bind(&latest_at)
        .execute(pool)
        .await?;
    }
    Ok(())
}

pub(super) async fn insert_certificate_rows(
    pool: PgPool,
    rows: CertificateRows,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO courses_programcertificate (id, created_on, updated_on, user_id, \
             is_revoked, uuid, issue_date, certificate_page_revision_id, program_id) \
         SELECT id, timestamptz 'epoch' + i * interval '1 millisecond', \
                timestamptz 'epoch' + u * interval '1 millisecond', uid, revoked, uuid::uuid, \
                timestamptz 'epoch' + i * interval '1 millisecond', rev, pid \
         FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::int4[], $5::bool[], $6::text[], \
                     $7::int4[], $8::int4[]) AS x(id, i, u, uid, revoked, uuid, rev, pid)",
    )
    .bind(&rows.id)
    .bind(&rows.issued_ms)
    .bind(&rows.updated_ms)
    .bind(&rows.user_id)
    .bind(&rows.revoked)
    .bind(&rows.uuid)
    .bind(&rows.revision_id)
    .bind(&rows.program_id)
    .execute(&pool)
    .await?;
    Ok(())
}

/// Identity sequences continue after the explicitly assigned ids.
pub(super) async fn finish(pool: &PgPool) -> Result<(), DemoError> {
    for table in [
        "courses_program",
        "wagtailcore_page",
        "wagtailcore_revision",
        "courses_programcertificate",
    ] {
        reset_identity(pool, table).await?;
    }
    Ok(())
}
