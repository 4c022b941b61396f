-- The run ledger, version 2: each group's counts in a row of its own.
--
-- Folding a shard result used to read and rewrite the run's whole tally,
-- every group in it: a cost of shards × groups. Now the run's record keeps
-- the totals, and the reducer upserts only the rows of the groups the
-- shard carries. A run folded before this version keeps its groups inside
-- its record; reading a run merges both. The tally is JSON text.
CREATE TABLE backfill_group_tally (
    run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    group_key text NOT NULL,
    tally text NOT NULL,
    PRIMARY KEY (run_id, group_key)
);
