-- The run ledger, version 4: a run is published while it is planned.
--
-- On PostgreSQL a run being planned has a row here, from the commit of its
-- row and groups to that of its plan; each shard is committed on its own
-- in between and published at once, and the reducer does not end a run
-- that has a row here. SQLite serves one process (the embedded mode plans
-- in one transaction and publishes afterwards), so no run of it ever has
-- a row here; the table keeps one ledger shape.
CREATE TABLE backfill_planning (
    run_id text PRIMARY KEY REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    shard_size integer NOT NULL
);
