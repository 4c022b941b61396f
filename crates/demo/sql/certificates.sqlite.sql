-- Demo schema for the program-certificate-titles job on SQLite: the same tables, columns
-- (in the same order), keys, indexes and foreign keys as certificates.postgres.sql, written
-- the way Django 5.2's SQLite backend creates them, for the embedded mode where a small
-- Django/Wagtail site runs on SQLite:
--
-- * AutoField ids are `integer NOT NULL PRIMARY KEY AUTOINCREMENT` (a rowid alias whose
--   next value follows the largest id ever inserted, explicit ones included);
-- * CharField is `varchar(N)`, TextField `text`, BooleanField `bool` (stored 0/1),
--   DateTimeField `datetime` (stored as UTC text `YYYY-MM-DD HH:MM:SS[.ffffff]`),
--   DecimalField `decimal` (NUMERIC affinity), UUIDField `char(32)` (hex, no hyphens),
--   PositiveIntegerField `integer unsigned` with a `>= 0` check;
-- * JSONField (and Wagtail's StreamField, which is one) is `text` holding the JSON document,
--   with the `JSON_VALID` check Django adds on SQLite;
-- * `unique=True` is an inline UNIQUE, `unique_together` a `CREATE UNIQUE INDEX` named like
--   the PostgreSQL constraint, foreign keys are inline
--   `REFERENCES ... DEFERRABLE INITIALLY DEFERRED` (checked at commit; Django turns
--   `PRAGMA foreign_keys` on, and so does sqlx). Foreign keys to tables outside this subset
--   (users, locales, images) are plain indexed integers, as in the PostgreSQL file.
--
-- Not carried over: PostgreSQL's `*_like` (varchar_pattern_ops) indexes, which Django only
-- creates on PostgreSQL, and `COLLATE "C"` on wagtailcore_page.path, because SQLite's
-- default BINARY collation already orders bytewise. Run once against an empty database.

CREATE TABLE "django_content_type" (
    "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    "app_label" varchar(100) NOT NULL,
    "model" varchar(100) NOT NULL
);

CREATE TABLE "courses_program" (
    "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    "created_on" datetime NOT NULL,
    "updated_on" datetime NOT NULL,
    "readable_id" varchar(255) NOT NULL UNIQUE,
    "title" varchar(255) NOT NULL,
    "live" bool NOT NULL
);

CREATE TABLE "wagtailcore_page" (
    "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    "path" varchar(255) NOT NULL UNIQUE,
    "depth" integer unsigned NOT NULL CHECK ("depth" >= 0),
    "numchild" integer unsigned NOT NULL CHECK ("numchild" >= 0),
    "title" varchar(255) NOT NULL,
    "slug" varchar(255) NOT NULL,
    "live" bool NOT NULL,
    "has_unpublished_changes" bool NOT NULL,
    "url_path" text NOT NULL,
    "seo_title" varchar(255) NOT NULL,
    "show_in_menus" bool NOT NULL,
    "search_description" text NOT NULL,
    "go_live_at" datetime NULL,
    "expire_at" datetime NULL,
    "expired" bool NOT NULL,
    "content_type_id" integer NOT NULL
        REFERENCES "django_content_type" ("id") DEFERRABLE INITIALLY DEFERRED,
    "owner_id" integer NULL,
    "locked" bool NOT NULL,
    "latest_revision_created_at" datetime NULL,
    "first_published_at" datetime NULL,
    "live_revision_id" integer NULL
        REFERENCES "wagtailcore_revision" ("id") DEFERRABLE INITIALLY DEFERRED,
    "last_published_at" datetime NULL,
    "draft_title" varchar(255) NOT NULL,
    "locked_at" datetime NULL,
    "locked_by_id" integer NULL,
    "translation_key" char(32) NOT NULL,
    "locale_id" integer NOT NULL,
    "alias_of_id" integer NULL
        REFERENCES "wagtailcore_page" ("id") DEFERRABLE INITIALLY DEFERRED,
    "latest_revision_id" integer NULL
        REFERENCES "wagtailcore_revision" ("id") DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE "wagtailcore_revision" (
    "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    "created_at" datetime NOT NULL,
    "content" text NOT NULL CHECK ((JSON_VALID("content") OR "content" IS NULL)),
    "approved_go_live_at" datetime NULL,
    "object_id" varchar(255) NOT NULL,
    "user_id" integer NULL,
    "content_type_id" integer NOT NULL
        REFERENCES "django_content_type" ("id") DEFERRABLE INITIALLY DEFERRED,
    "base_content_type_id" integer NOT NULL
        REFERENCES "django_content_type" ("id") DEFERRABLE INITIALLY DEFERRED,
    "object_str" text NOT NULL
);

CREATE TABLE "cms_programpage" (
    "page_ptr_id" integer NOT NULL PRIMARY KEY
        REFERENCES "wagtailcore_page" ("id") DEFERRABLE INITIALLY DEFERRED,
    "description" text NOT NULL,
    "program_id" integer NULL UNIQUE
        REFERENCES "courses_program" ("id") DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE "cms_certificatepage" (
    "page_ptr_id" integer NOT NULL PRIMARY KEY
        REFERENCES "wagtailcore_page" ("id") DEFERRABLE INITIALLY DEFERRED,
    "product_name" varchar(250) NOT NULL,
    "institute_text" varchar(255) NULL,
    "CEUs" decimal NULL,
    "partner_logo_placement" integer NULL,
    "signatories" text NOT NULL CHECK ((JSON_VALID("signatories") OR "signatories" IS NULL)),
    "overrides" text NOT NULL CHECK ((JSON_VALID("overrides") OR "overrides" IS NULL)),
    "partner_logo_id" integer NULL
);

CREATE TABLE "courses_programcertificate" (
    "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    "created_on" datetime NOT NULL,
    "updated_on" datetime NOT NULL,
    "user_id" integer NOT NULL,
    "is_revoked" bool NOT NULL,
    "uuid" char(32) NOT NULL UNIQUE,
    "issue_date" datetime NULL,
    "certificate_page_revision_id" integer NULL
        REFERENCES "wagtailcore_revision" ("id") DEFERRABLE INITIALLY DEFERRED,
    "program_id" integer NOT NULL
        REFERENCES "courses_program" ("id") DEFERRABLE INITIALLY DEFERRED
);

-- unique_together constraints (Django creates them as unique indexes on SQLite).
CREATE UNIQUE INDEX "django_content_type_app_label_model_76bd3d3b_uniq"
    ON "django_content_type" ("app_label", "model");
CREATE UNIQUE INDEX "wagtailcore_page_translation_key_locale_id_9b041bad_uniq"
    ON "wagtailcore_page" ("translation_key", "locale_id");
CREATE UNIQUE INDEX "courses_programcertificate_user_id_program_id_7e1b8faa_uniq"
    ON "courses_programcertificate" ("user_id", "program_id");

-- Indexes (db_index, foreign keys and Meta.indexes), named as on PostgreSQL.
CREATE INDEX "base_content_object_idx"
    ON "wagtailcore_revision" ("base_content_type_id", "object_id");
CREATE INDEX "content_object_idx" ON "wagtailcore_revision" ("content_type_id", "object_id");
CREATE INDEX "cms_certificatepage_partner_logo_id_57ba2bb9"
    ON "cms_certificatepage" ("partner_logo_id");
CREATE INDEX "courses_programcertificate_certificate_page_revision__c5e6d470"
    ON "courses_programcertificate" ("certificate_page_revision_id");
CREATE INDEX "courses_programcertificate_program_id_79aefb1b"
    ON "courses_programcertificate" ("program_id");
CREATE INDEX "courses_programcertificate_user_id_b745e0cd"
    ON "courses_programcertificate" ("user_id");
CREATE INDEX "wagtailcore_page_alias_of_id_12945502" ON "wagtailcore_page" ("alias_of_id");
CREATE INDEX "wagtailcore_page_content_type_id_c28424df"
    ON "wagtailcore_page" ("content_type_id");
CREATE INDEX "wagtailcore_page_first_published_at_2b5dd637"
    ON "wagtailcore_page" ("first_published_at");
CREATE INDEX "wagtailcore_page_latest_revision_id_e60fef51"
    ON "wagtailcore_page" ("latest_revision_id");
CREATE INDEX "wagtailcore_page_live_revision_id_930bd822"
    ON "wagtailcore_page" ("live_revision_id");
CREATE INDEX "wagtailcore_page_locale_id_3c7e30a6" ON "wagtailcore_page" ("locale_id");
CREATE INDEX "wagtailcore_page_locked_by_id_bcb86245" ON "wagtailcore_page" ("locked_by_id");
CREATE INDEX "wagtailcore_page_owner_id_fbf7c332" ON "wagtailcore_page" ("owner_id");
CREATE INDEX "wagtailcore_page_slug_e7c11b8f" ON "wagtailcore_page" ("slug");
CREATE INDEX "wagtailcore_pagerevision_approved_go_live_at_e56afc67"
    ON "wagtailcore_revision" ("approved_go_live_at");
CREATE INDEX "wagtailcore_pagerevision_created_at_66954e3b"
    ON "wagtailcore_revision" ("created_at");
CREATE INDEX "wagtailcore_pagerevision_user_id_2409d2f4" ON "wagtailcore_revision" ("user_id");
CREATE INDEX "wagtailcore_revision_base_content_type_id_5b4ef7bd"
    ON "wagtailcore_revision" ("base_content_type_id");
CREATE INDEX "wagtailcore_revision_content_type_id_c8cb69c0"
    ON "wagtailcore_revision" ("content_type_id");
