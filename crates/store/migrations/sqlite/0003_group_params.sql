-- The run ledger, version 3: each group's parameters in a row of its own.
--
-- A mapper used to read the run's whole plan, every group's parameters,
-- to process any of its shards: its memory grew with the number of groups.
-- Now planning writes one row per planned group here, and a mapper reads
-- the rows of the groups the shard in hand holds. A run planned before
-- this version has no rows here; a mapper reads its plan as before. The
-- parameters are JSON text.
CREATE TABLE backfill_group_params (
    run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    group_key text NOT NULL,
    params text NOT NULL,
    PRIMARY KEY (run_id, group_key)
);
