-- The run ledger, version 4: a run is published while it is planned.
--
-- The plan used to be written in one transaction, and its first task
-- published only once every target row had been read, cut and recorded
-- (about 3.5 s at 1,000,000 target rows). Now the run's row and groups are
-- committed first, with a row here, then each shard in a transaction of
-- its own, published as soon as it is committed; the plan and its totals
-- come last, in one transaction that deletes the row here. While a run has
-- a row here the reducer does not end it. A coordinator that dies while
-- planning leaves the row; the next coordinator of the same command
-- carries the planning on from the shards recorded, cut `shard_size` rows
-- at a time as the run began. (A table of its own, not a column of
-- `backfill_run`: adding a column would lock that table against the
-- workers of an earlier release while the ledger is upgraded.)
CREATE TABLE backfill_planning (
    run_id text PRIMARY KEY REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    shard_size integer NOT NULL
);
