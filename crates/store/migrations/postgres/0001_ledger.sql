-- The run ledger, version 1: every table and column the ledger had when it
-- moved to versioned migrations (see src/migrate.rs). On a fresh database
-- it creates them. A ledger made by a release before versioned migrations
-- (which created and upgraded its tables on every connect) is adopted as it
-- is: a table is created only when missing, and a column added over the
-- releases is added only when missing.

-- Releases before versioned migrations made their tables under this lock:
-- take it too, so that this never runs beside one of them starting. (sqlx's
-- migrator holds an advisory lock of its own while it runs, which keeps the
-- workers of this release and later ones to one migrator at a time.)
SELECT pg_advisory_xact_lock(hashtext('backfill ledger migration'));

-- Rows that could not be rewritten (a rule error, or their shard failed on
-- every attempt), kept for `backfill retry RUN`.
CREATE TABLE IF NOT EXISTS backfill_quarantine (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    target text NOT NULL,
    key text NOT NULL,
    group_key text NOT NULL,
    refs bigint NOT NULL,
    error text NOT NULL,
    retried_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, target, key)
);

-- One row per run. `revert_of`: the run a revert restores; `sample`: the
-- share of rows a sampled dry run read; `table_rows`: the target tables'
-- row counts when the run was planned and when it finished; `kind`: what
-- the run is for (forward, verify, revert, retry), so a coordinator adopts
-- only a run of its own kind; `retry_of`: the run a retry redoes;
-- `schedule`: run windows given on the command line (`--window`), as JSON
-- (the spec's `[schedule]` applies when NULL).
CREATE TABLE IF NOT EXISTS backfill_run (
    run_id text PRIMARY KEY,
    job_name text NOT NULL,
    spec_text text NOT NULL,
    spec_hash text NOT NULL,
    mode text NOT NULL,
    scope jsonb NOT NULL,
    state text NOT NULL,
    plan jsonb NOT NULL,
    shards_total integer NOT NULL,
    shards_reduced integer NOT NULL DEFAULT 0,
    tally jsonb NOT NULL,
    summary text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    revert_of text,
    sample double precision,
    table_rows jsonb,
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
    published_at timestamptz,
    worker text,
    deliveries integer NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    last_error text,
    result jsonb,
    finished_at timestamptz,
    reduced_at timestamptz,
    started_at timestamptz,
    lease_until timestamptz,
    elapsed_ms integer,
    PRIMARY KEY (run_id, shard_no)
);

CREATE TABLE IF NOT EXISTS backfill_item (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    item_no integer NOT NULL,
    key text NOT NULL,
    key_int bigint,
    group_key text NOT NULL,
    refs bigint NOT NULL,
    PRIMARY KEY (run_id, shard_no, item_no)
);

-- A jsonb column's before-image may be the inverse patch of what the run
-- changed (`patch`), with the row version (xmin) the run's write left
-- (`after_version`).
CREATE TABLE IF NOT EXISTS backfill_before_image (
    run_id text NOT NULL,
    shard_no integer NOT NULL,
    target text NOT NULL,
    key text NOT NULL,
    column_name text NOT NULL,
    before text,
    written_at timestamptz NOT NULL DEFAULT now(),
    patch text,
    after_version text,
    PRIMARY KEY (run_id, target, key, column_name)
);

-- One row per run's steering. The bytes-per-second limit and its
-- schedule; the WAL rate cap and its token bucket (tokens in bytes,
-- refilled at the cap, emptied by the server's WAL as measured between two
-- samples of its LSN).
CREATE TABLE IF NOT EXISTS backfill_control (
    run_id text PRIMARY KEY,
    control text NOT NULL DEFAULT 'run',
    priority integer NOT NULL DEFAULT 0,
    rows_per_sec double precision,
    max_in_flight integer,
    rate_next timestamptz,
    shard_sizing text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text,
    bytes_per_sec double precision,
    bytes_next timestamptz,
    bytes_per_row double precision,
    max_wal_bytes_per_sec double precision,
    wal_tokens double precision,
    wal_lsn pg_lsn,
    wal_at timestamptz
);

CREATE TABLE IF NOT EXISTS backfill_worker (
    worker text PRIMARY KEY,
    role text NOT NULL,
    run_id text,
    shards_done bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS backfill_event (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL,
    operator text NOT NULL,
    detail text
);

-- The ledger's identity; its row is given on connect (src/identity.rs).
CREATE TABLE IF NOT EXISTS backfill_ledger (
    id text PRIMARY KEY,
    database_oid text NOT NULL,
    database_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The columns added to tables of earlier releases, for a ledger that
-- predates them. `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes an ACCESS
-- EXCLUSIVE lock on its table even when the column is there, and holding it
-- while workers of the earlier release use the ledger can deadlock with
-- them: so each column is added only when the catalog shows it missing, and
-- a ledger that has them all is adopted without locking any of its tables.
DO $adopt$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('backfill_shard', 'started_at', 'timestamptz'),
            ('backfill_shard', 'lease_until', 'timestamptz'),
            ('backfill_shard', 'elapsed_ms', 'integer'),
            ('backfill_run', 'revert_of', 'text'),
            ('backfill_run', 'sample', 'double precision'),
            ('backfill_run', 'table_rows', 'jsonb'),
            ('backfill_run', 'kind', 'text'),
            ('backfill_run', 'retry_of', 'text'),
            ('backfill_run', 'schedule', 'text'),
            ('backfill_before_image', 'patch', 'text'),
            ('backfill_before_image', 'after_version', 'text'),
            ('backfill_control', 'bytes_per_sec', 'double precision'),
            ('backfill_control', 'bytes_next', 'timestamptz'),
            ('backfill_control', 'bytes_per_row', 'double precision'),
            ('backfill_control', 'max_wal_bytes_per_sec', 'double precision'),
            ('backfill_control', 'wal_tokens', 'double precision'),
            ('backfill_control', 'wal_lsn', 'pg_lsn'),
            ('backfill_control', 'wal_at', 'timestamptz')
        ) AS added (table_name, column_name, column_type)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = to_regclass(c.table_name)
              AND attname = c.column_name
              AND NOT attisdropped
        ) THEN
            EXECUTE format(
                'ALTER TABLE %I ADD COLUMN IF NOT EXISTS %I %s',
                c.table_name, c.column_name, c.column_type
            );
        END IF;
    END LOOP;
END
$adopt$;
