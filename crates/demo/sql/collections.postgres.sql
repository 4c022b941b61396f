-- Demo schema for the collection-nodes job: an Oppia-style versioned model. The current
-- state of each collection lives in collection_models; every committed version is kept as
-- a full snapshot of the model dict in collection_snapshot_contents, keyed
-- '<collection id>-<version>'. Object names are not schema-qualified, so the tables are
-- created in the first schema of the connection's search_path. Run once against an empty
-- schema.

CREATE TABLE collection_models (
    id text PRIMARY KEY,
    version integer NOT NULL,
    title text NOT NULL,
    category text NOT NULL,
    nodes jsonb NOT NULL,
    collection_dict jsonb NULL,
    last_updated timestamptz NOT NULL
);

CREATE TABLE collection_snapshot_contents (
    id text PRIMARY KEY,
    content jsonb NOT NULL
);
