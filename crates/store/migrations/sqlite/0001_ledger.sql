-- The run ledger, version 1: every table and column the ledger had when it
-- moved to versioned migrations (see src/migrate.rs). On a fresh database
-- it creates them. A ledger made by a release before versioned migrations
-- has had the columns added over the releases added already, before this
-- runs (SQLite has no `ADD COLUMN IF NOT EXISTS`: see src/migrate.rs); here
-- a table is created only when missing.
--
-- JSON columns are text, as Django stores JSONField on SQLite; times are
-- ISO-8601 text in UTC, which sorts as time does, except the rate
-- schedules, which are seconds since the epoch.

-- Rows that could not be rewritten (a rule error, or their shard failed on
-- every attempt), kept for `backfill retry RUN`.
CREATE TABLE IF NOT EXISTS backfill_quarantine (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    target text NOT NULL,
    key text NOT NULL,
    group_key text NOT NULL,
    refs integer NOT NULL,
    error text NOT NULL,
    retried_by text,
    created_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, target, key)
);

-- One row per run. `revert_of`: the run a revert restores; `sample`: the
-- share of rows a sampled dry run read; `table_rows`: the target tables'
-- row counts when the run was planned and when it finished; `kind`: what
-- the run is for (forward, verify, revert, retry); `retry_of`: the run a
-- retry redoes; `schedule`: run windows given on the command line, as JSON.
CREATE TABLE IF NOT EXISTS backfill_run (
    run_id text PRIMARY KEY,
    job_name text NOT NULL,
    spec_text text NOT NULL,
    spec_hash text NOT NULL,
    mode text NOT NULL,
    scope text NOT NULL,
    state text NOT NULL,
    plan text NOT NULL,
    shards_total integer NOT NULL,
    shards_reduced integer NOT NULL DEFAULT 0,
    tally text NOT NULL,
    summary text,
    created_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at text,
    revert_of text,
    sample real,
    table_rows text,
    kind text,
    retry_of text,
    schedule text
);

-- One row per shard; `started_at` and `lease_until` are its claim, and
-- `elapsed_ms` how long its commit took.
CREATE TABLE IF NOT EXISTS backfill_shard (
    run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
    shard_no integer NOT NULL,
    target text NOT NULL,
    first_key text NOT NULL,
    last_key text NOT NULL,
    rows integer NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    published_at text,
    worker text,
    deliveries integer NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    last_error text,
    result text,
    finished_at text,
    reduced_at text,
    started_at text,
    lease_until text,
    elapsed_ms integer,
    PRIMARY KEY (run_id, shard_no)
);

CREATE TABLE IF NOT EXISTS backfill_item (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    item_no integer NOT NULL,
    key text NOT NULL,
    key_int integer,
    group_key text NOT NULL,
    refs integer NOT NULL,
    PRIMARY KEY (run_id, shard_no, item_no)
);

-- `patch` and `after_version` are kept so a before-image reads the same
-- as on PostgreSQL; SQLite keeps whole values.
CREATE TABLE IF NOT EXISTS backfill_before_image (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    target text NOT NULL,
    key text NOT NULL,
    column_name text NOT NULL,
    before text,
    written_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    patch text,
    after_version text,
    PRIMARY KEY (run_id, target, key, column_name)
);

-- One row per run's steering. `max_wal_bytes_per_sec` is kept so a run's
-- settings read the same; it is never applied on SQLite.
CREATE TABLE IF NOT EXISTS backfill_control (
    run_id text PRIMARY KEY,
    control text NOT NULL DEFAULT 'run',
    priority integer NOT NULL DEFAULT 0,
    rows_per_sec real,
    max_in_flight integer,
    rate_next real,
    shard_sizing text,
    updated_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_by text,
    bytes_per_sec real,
    bytes_next real,
    bytes_per_row real,
    max_wal_bytes_per_sec real
);

CREATE TABLE IF NOT EXISTS backfill_worker (
    worker text PRIMARY KEY,
    role text NOT NULL,
    run_id text,
    shards_done integer NOT NULL DEFAULT 0,
    started_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS backfill_event (
    id integer PRIMARY KEY AUTOINCREMENT,
    run_id text NOT NULL,
    at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    action text NOT NULL,
    operator text NOT NULL,
    detail text
);

-- The ledger's identity; its row is given on connect (src/identity.rs).
CREATE TABLE IF NOT EXISTS backfill_ledger (
    id text PRIMARY KEY,
    database_oid text NOT NULL,
    database_name text NOT NULL,
    created_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
