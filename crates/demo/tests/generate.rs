//! Generates both demo data sets into a fresh PostgreSQL database and checks them against
//! the tables. Needs a server at `postgres://postgres@127.0.0.1:5432/postgres` (trust auth)
//! or at `DATABASE_URL`; fails (never skips) when there is none.

mod common;

use common::{
    certificate_counts, collection_counts, with_fresh_database, CERTIFICATES, COLLECTIONS,
};

use backfill_demo::{
    create_certificate_schema, create_collection_schema, generate_certificates,
    generate_collections, program_readable_id,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The prefix of the name of each test's fresh database.
const DATABASE_PREFIX: &str = "backfill_demo_test";

async fn connect(options: PgConnectOptions, search_path: Option<&str>) -> PgPool {
    let options = match search_path {
        Some(schema) => options.options([("search_path", schema)]),
        None => options,
    };
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to test database")
}

async fn count(pool: &PgPool, sql: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    u64::try_from(n).expect("non-negative count")
}

/// Asserts what each query counts: (count, query, what that shows).
async fn assert_counts(pool: &PgPool, expected: &[(u64, &str, &str)]) {
    for &(want, sql, what) in expected {
        assert_eq!(count(pool, sql).await, want, "{what}: {sql}");
    }
}

/// Asserts that each query counts at least one row: (query, what that shows).
async fn assert_some(pool: &PgPool, queries: &[(&str, &str)]) {
    for &(sql, what) in queries {
        assert!(count(pool, sql).await > 0, "{what}: {sql}");
    }
}

async fn fingerprint(pool: &PgPool) -> (String, String) {
    sqlx::query_as(
        "SELECT (SELECT md5(string_agg(id || content::text || created_at::text, '|' ORDER BY id)) \
                   FROM wagtailcore_revision), \
                (SELECT md5(string_agg(concat_ws(',', id, user_id, uuid, issue_date, is_revoked, \
                                       certificate_page_revision_id, program_id), '|' ORDER BY id)) \
                   FROM courses_programcertificate)",
    )
    .fetch_one(pool)
    .await
    .expect("fingerprint")
}

/// Needs PostgreSQL (and RabbitMQ where it says so): the real-service tier,
/// left out by `--skip tier2`.
mod tier2 {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificate_titles_dataset() {
        with_fresh_database(DATABASE_PREFIX, "", |options| async move {
            let pool = connect(options.clone(), None).await;
            create_certificate_schema(&pool).await.expect("schema");
            let params = CERTIFICATES;
            let stats = generate_certificates(&pool, &params)
                .await
                .expect("generate certificates");
            println!("{stats:?}");

            // Stats match the tables.
            assert_eq!(stats.programs, 25);
            assert_counts(&pool, &certificate_counts(&stats)).await;
            assert!(stats.revoked > 0 && stats.without_revision > 0);
            assert!(stats.referenced_revisions > 0 && stats.referenced_revisions < 400);

            const CERT_REVISIONS: &str = "FROM wagtailcore_revision r \
                 JOIN django_content_type ct ON ct.id = r.content_type_id \
                 WHERE ct.app_label = 'cms' AND ct.model = 'certificatepage'";
            assert_counts(
                &pool,
                &[(
                    400,
                    &format!("SELECT count(*) {CERT_REVISIONS}"),
                    "certificate-page revisions",
                )],
            )
            .await;

            // Special programs, identified by readable_id.
            let live_title = |readable: String| {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, String>(
                        "SELECT cp.product_name FROM courses_program p \
                         JOIN cms_programpage pp ON pp.program_id = p.id \
                         JOIN wagtailcore_page prog ON prog.id = pp.page_ptr_id \
                         JOIN wagtailcore_page cert ON cert.path = prog.path || '0001' \
                         JOIN cms_certificatepage cp ON cp.page_ptr_id = cert.id \
                         WHERE p.readable_id = $1",
                    )
                    .bind(readable)
                    .fetch_one(&pool)
                    .await
                    .expect("live certificate title")
                }
            };
            assert!(live_title(program_readable_id(7))
                .await
                .starts_with("PLACEHOLDER - "));
            assert!(live_title(program_readable_id(17))
                .await
                .starts_with("PLACEHOLDER - "));
            assert_eq!(live_title(program_readable_id(8)).await, "");
            assert!(!live_title(program_readable_id(0)).await.is_empty());
            assert_counts(
                &pool,
                &[(
                    1,
                    "SELECT count(*) FROM courses_program p WHERE NOT EXISTS \
                     (SELECT 1 FROM cms_programpage pp WHERE pp.program_id = p.id)",
                    "programs without a program page (index 9)",
                )],
            )
            .await;
            let no_cert_page: Vec<String> = sqlx::query_scalar(
                "SELECT p.readable_id FROM courses_program p \
                 JOIN cms_programpage pp ON pp.program_id = p.id \
                 JOIN wagtailcore_page prog ON prog.id = pp.page_ptr_id \
                 WHERE NOT EXISTS (SELECT 1 FROM wagtailcore_page c \
                                   JOIN cms_certificatepage cp ON cp.page_ptr_id = c.id \
                                   WHERE c.path LIKE prog.path || '____') \
                   AND prog.numchild = 0",
            )
            .fetch_all(&pool)
            .await
            .expect("program pages without certificate page");
            assert_eq!(no_cert_page, vec![program_readable_id(19)]);
            assert_counts(
                &pool,
                &[(
                    1,
                    "SELECT count(*) FROM wagtailcore_page pg \
                     JOIN cms_certificatepage cp ON cp.page_ptr_id = pg.id \
                     WHERE NOT pg.live AND pg.live_revision_id IS NULL",
                    "unpublished certificate page (index 5)",
                )],
            )
            .await;
            // Programs without a certificate page still have certificates, all without revision.
            const NO_CERT_PAGE: &str = "SELECT count(*) FROM courses_programcertificate c \
                 JOIN courses_program p ON p.id = c.program_id \
                 WHERE p.readable_id IN ('program-v1:MITx+DEMO0009', 'program-v1:MITx+DEMO0019')";
            assert_some(&pool, &[(NO_CERT_PAGE, "certificates of programs without a page")]).await;
            assert_counts(
                &pool,
                &[
                    (
                        0,
                        &format!("{NO_CERT_PAGE} AND c.certificate_page_revision_id IS NOT NULL"),
                        "certificates of programs without a page have no revision",
                    ),
                    // Page tree.
                    (
                        2,
                        "SELECT count(*) FROM wagtailcore_page \
                         WHERE (path, depth) IN (('0001', 1), ('00010001', 2))",
                        "root and home pages",
                    ),
                    (
                        0,
                        "SELECT count(*) FROM cms_certificatepage cp \
                         JOIN wagtailcore_page c ON c.id = cp.page_ptr_id \
                         WHERE c.depth <> 4 OR length(c.path) <> 16 OR c.latest_revision_id IS NULL \
                            OR NOT EXISTS (SELECT 1 FROM wagtailcore_page p JOIN cms_programpage pp \
                                           ON pp.page_ptr_id = p.id \
                                           WHERE p.path = left(c.path, 12) AND p.depth = 3)",
                        "certificate pages sit under their program page with revisions set",
                    ),
                ],
            )
            .await;

            // Certificates share revisions and only point at their own program's page.
            assert_some(
                &pool,
                &[(
                    "SELECT count(*) FROM (SELECT certificate_page_revision_id \
                     FROM courses_programcertificate WHERE certificate_page_revision_id IS NOT NULL \
                     GROUP BY 1 HAVING count(*) >= 2) s",
                    "revisions shared by certificates",
                )],
            )
            .await;
            assert_counts(
                &pool,
                &[(
                    0,
                    "SELECT count(*) FROM courses_programcertificate c \
                     JOIN wagtailcore_revision r ON r.id = c.certificate_page_revision_id \
                     JOIN cms_programpage pp ON pp.program_id = c.program_id \
                     JOIN wagtailcore_page prog ON prog.id = pp.page_ptr_id \
                     JOIN wagtailcore_page cert ON cert.id::text = r.object_id \
                     WHERE cert.path <> prog.path || '0001'",
                    "certificates point at their own program's page",
                )],
            )
            .await;
            assert_some(
                &pool,
                &[(
                    "SELECT count(*) FROM courses_programcertificate WHERE is_revoked \
                     AND certificate_page_revision_id IS NOT NULL",
                    "revoked certificates keep their revision",
                )],
            )
            .await;
            assert_counts(
                &pool,
                &[(
                    0,
                    "SELECT count(*) FROM courses_programcertificate c \
                     JOIN wagtailcore_revision r ON r.id = c.certificate_page_revision_id \
                     JOIN django_content_type ct ON ct.id = r.content_type_id \
                     WHERE ct.model <> 'certificatepage'",
                    "program-page revisions are never referenced",
                )],
            )
            .await;
            assert_some(
                &pool,
                &[
                    (
                        "SELECT count(*) FROM wagtailcore_revision r \
                         JOIN django_content_type ct ON ct.id = r.content_type_id \
                         WHERE ct.model = 'programpage'",
                        "program-page revisions",
                    ),
                    // Revision content.
                    (
                        &format!(
                            "SELECT count(*) {CERT_REVISIONS} AND NOT (r.content ? 'product_name')"
                        ),
                        "revisions predating product_name",
                    ),
                ],
            )
            .await;
            let unchanged = count(
                &pool,
                &format!(
                    "SELECT count(*) {CERT_REVISIONS} AND r.content->>'product_name' = \
                     (SELECT product_name FROM cms_certificatepage WHERE page_ptr_id::text = r.object_id)"
                ),
            )
            .await;
            let changed = count(
                &pool,
                &format!(
                    "SELECT count(*) {CERT_REVISIONS} AND r.content->>'product_name' <> \
                     (SELECT product_name FROM cms_certificatepage WHERE page_ptr_id::text = r.object_id)"
                ),
            )
            .await;
            assert!(unchanged > 0 && changed > unchanged, "{unchanged} vs {changed}");
            assert_counts(
                &pool,
                &[
                    (
                        0,
                        "SELECT count(*) FROM wagtailcore_page pg \
                         JOIN cms_certificatepage cp ON cp.page_ptr_id = pg.id \
                         JOIN wagtailcore_revision r ON r.id = pg.latest_revision_id \
                         WHERE r.content->>'product_name' IS NOT DISTINCT FROM cp.product_name \
                            OR r.id = pg.live_revision_id",
                        "the newest revision is a draft with another title",
                    ),
                    (
                        0,
                        &format!(
                            "SELECT count(*) {CERT_REVISIONS} AND (jsonb_typeof(r.content->'overrides') \
                             <> 'string' OR jsonb_typeof(r.content->'signatories') <> 'string' \
                             OR jsonb_typeof((r.content->>'overrides')::jsonb) <> 'array' \
                             OR r.content->>'slug' IS NULL OR (r.content->>'pk')::int::text <> r.object_id)"
                        ),
                        "StreamField values are JSON-encoded strings",
                    ),
                ],
            )
            .await;
            let (min, max): (i32, i32) = sqlx::query_as(&format!(
                "SELECT min(octet_length(r.content::text)), max(octet_length(r.content::text)) \
                 {CERT_REVISIONS}"
            ))
            .fetch_one(&pool)
            .await
            .expect("content sizes");
            println!("certificate revision content: {min}..={max} bytes");
            assert!(min >= 2048 && max <= 6144, "content sizes {min}..={max}");

            // Same seed, same data (generated again into another schema of the same database).
            sqlx::query("CREATE SCHEMA again")
                .execute(&pool)
                .await
                .expect("schema");
            let again = connect(options, Some("again")).await;
            create_certificate_schema(&again).await.expect("schema");
            let stats_again = generate_certificates(&again, &params)
                .await
                .expect("generate again");
            assert_eq!(stats, stats_again);
            assert_eq!(fingerprint(&pool).await, fingerprint(&again).await);
            assert!(
                generate_certificates(&again, &params).await.is_err(),
                "refuses non-empty tables"
            );
            // Identity sequences continue after the generated ids.
            let next: i32 = sqlx::query_scalar(
                "INSERT INTO courses_program (created_on, updated_on, readable_id, title, live) \
                 VALUES (now(), now(), 'program-v1:MITx+EXTRA', 'Extra', true) RETURNING id",
            )
            .fetch_one(&again)
            .await
            .expect("insert with identity");
            assert_eq!(next, 26);
            again.close().await;
            pool.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collections_dataset() {
        with_fresh_database(DATABASE_PREFIX, "", |options| async move {
            let pool = connect(options, None).await;
            create_collection_schema(&pool).await.expect("schema");
            let params = COLLECTIONS;
            let stats = generate_collections(&pool, &params)
                .await
                .expect("generate collections");
            println!("{stats:?}");
            assert_eq!(stats.collections, 10);
            assert_counts(&pool, &collection_counts(&stats)).await;
            assert_counts(
                &pool,
                &[
                    (
                        stats.snapshots,
                        "SELECT sum(version)::int8 FROM collection_models",
                        "snapshots: the sum of the versions",
                    ),
                    (
                        1,
                        "SELECT count(*) FROM collection_models WHERE id = 'col0' AND version = 6",
                        "col0 at version 6",
                    ),
                    (
                        1,
                        "SELECT count(*) FROM collection_models WHERE id = 'col1' AND version = 1",
                        "col1 at version 1",
                    ),
                    (
                        0,
                        "SELECT count(*) FROM collection_models \
                         WHERE collection_dict IS NOT NULL OR jsonb_typeof(nodes) <> 'array'",
                        "models without collection_dict, with a node list",
                    ),
                    // Every version 1..=v has a snapshot, shaped like the model dict, whose nodes grow.
                    (
                        0,
                        "SELECT count(*) FROM collection_models m, generate_series(1, m.version) v \
                         WHERE NOT EXISTS (SELECT 1 FROM collection_snapshot_contents s \
                                           WHERE s.id = m.id || '-' || v)",
                        "every version has a snapshot",
                    ),
                    (
                        0,
                        "SELECT count(*) FROM collection_snapshot_contents \
                         WHERE content ? 'collection_dict' OR content->>'schema_version' <> '3' \
                            OR content->>'language_code' <> 'en' OR NOT (content ?& \
                            array['title', 'category', 'objective', 'tags', 'nodes']) \
                            OR jsonb_typeof(content->'nodes') <> 'array' \
                            OR NOT (content->'nodes'->0 ?& array['exploration_id', \
                                'prerequisite_skill_ids', 'acquired_skill_ids'])",
                        "snapshots shaped like the model dict",
                    ),
                    (
                        0,
                        "SELECT count(*) FROM collection_models m \
                         JOIN collection_snapshot_contents s ON s.id = m.id || '-' || m.version \
                         WHERE s.content->'nodes' <> m.nodes OR s.content->>'title' <> m.title",
                        "current row matches the latest snapshot",
                    ),
                    (
                        0,
                        "SELECT count(*) FROM collection_snapshot_contents a \
                         JOIN collection_snapshot_contents b \
                           ON split_part(b.id, '-', 1) = split_part(a.id, '-', 1) \
                          AND split_part(b.id, '-', 2)::int = split_part(a.id, '-', 2)::int + 1 \
                         WHERE jsonb_array_length(b.content->'nodes') \
                               <= jsonb_array_length(a.content->'nodes')",
                        "versions grow the node list",
                    ),
                ],
            )
            .await;
            pool.close().await;
        })
        .await;
    }
}
