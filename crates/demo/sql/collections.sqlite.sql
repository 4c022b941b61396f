-- Demo schema for the collection-nodes job on SQLite: the same tables and columns as
-- collections.postgres.sql, as Django would create them there. The ids are the model's
-- own text keys ('<collection id>' and '<collection id>-<version>'), not AutoFields, so
-- they stay `text` primary keys. JSON columns are `text` with the `JSON_VALID` check
-- Django's JSONField adds on SQLite, and `last_updated` holds Django's UTC datetime text.
-- Run once against an empty database.

CREATE TABLE "collection_models" (
    "id" text NOT NULL PRIMARY KEY,
    "version" integer NOT NULL,
    "title" text NOT NULL,
    "category" text NOT NULL,
    "nodes" text NOT NULL CHECK ((JSON_VALID("nodes") OR "nodes" IS NULL)),
    "collection_dict" text NULL
        CHECK ((JSON_VALID("collection_dict") OR "collection_dict" IS NULL)),
    "last_updated" datetime NOT NULL
);

CREATE TABLE "collection_snapshot_contents" (
    "id" text NOT NULL PRIMARY KEY,
    "content" text NOT NULL CHECK ((JSON_VALID("content") OR "content" IS NULL))
);
