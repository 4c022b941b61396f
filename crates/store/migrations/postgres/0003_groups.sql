-- The run ledger, version 3: each planned group in a row of its own.
--
-- A mapper used to read the run's whole plan, every group's parameters,
-- to process any of its shards, and the coordinator wrote the plan, every
-- group in it, as one text: the memory of both grew with the number of
-- groups. Now planning writes each group as the plan lists it (key, label,
-- parameters and status: `entry`, in the plan's order `n`) in a row here,
-- a batch at a time; the database makes the plan's list of groups from
-- these rows, and a mapper reads the rows of the groups the shard in hand
-- holds. A run planned before this version has no rows here: its plan
-- alone lists its groups, and a mapper reads its plan as before.
CREATE TABLE backfill_group (
    run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    group_key text NOT NULL,
    n integer NOT NULL,
    entry jsonb NOT NULL,
    PRIMARY KEY (run_id, group_key)
);
