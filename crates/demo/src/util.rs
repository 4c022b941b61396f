//! Small deterministic helpers shared by the generators: seeded random streams, Django-style
//! timestamps, UUIDs, slugs, Wagtail tree paths, the target database ([`Db`]) and a
//! bulk-insert pipeline.

use std::future::Future;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::query_builder::Separated;
use sqlx::{PgPool, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::DemoError;

/// Milliseconds since the Unix epoch for 2016-01-01T00:00:00Z.
pub(crate) const MS_2016: i64 = 1_451_606_400_000;
/// Milliseconds since the Unix epoch for 2025-06-01T00:00:00Z (the "now" of the demo data).
pub(crate) const MS_END: i64 = 1_748_736_000_000;
pub(crate) const MS_DAY: i64 = 86_400_000;
pub(crate) const MS_YEAR: i64 = 365 * MS_DAY;

/// Rows per bulk `INSERT ... SELECT FROM unnest(...)` statement.
pub(crate) const BATCH_ROWS: usize = 5_000;
/// Upper bound on the JSON text carried by one batch, to keep memory bounded.
pub(crate) const BATCH_BYTES: usize = 16 << 20;
/// PostgreSQL connections inserting batches concurrently while one thread generates the
/// next ones.
pub(crate) const INSERT_WORKERS: usize = 2;

/// The database a generator writes into.
///
/// Every generator builds its rows once, in Rust, independently of the database (plans,
/// page tree, revision content, certificates, collections); only the step that stores a
/// finished batch matches on this enum. That is what makes the SQLite data identical to the
/// PostgreSQL data for the same parameters: there is a single source of every value, and
/// the back ends differ only in how a value is encoded (see the `sqlite` submodules).
#[derive(Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Db {
    /// Connections inserting batches concurrently. SQLite has a single writer per database
    /// file, so a second inserting connection would only wait for the lock; one writer
    /// still overlaps with the generating thread.
    fn insert_workers(&self) -> usize {
        match self {
            Db::Postgres(_) => INSERT_WORKERS,
            Db::Sqlite(_) => 1,
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An independent, reproducible random stream for (`seed`, `stream`, `index`), so that any
/// part of the data set can be regenerated without replaying the parts before it.
pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ index))
}

/// A random (version 4 shaped) UUID drawn from `rng`, hyphenated lower case.
pub(crate) fn uuid_from(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // month is in 1..=12 and day in 1..=31 by construction.
    (year, month as u32, day as u32)
}

/// Calendar year (UTC) of a millisecond timestamp.
pub(crate) fn year_of(ms: i64) -> i64 {
    civil_from_days(ms.div_euclid(MS_DAY)).0
}

/// The UTC date (`YYYY-MM-DD`), time of day (`HH:MM:SS`) and milliseconds of a
/// millisecond timestamp.
fn date_time_ms(ms: i64) -> (String, String, i64) {
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_DAY));
    let in_day = ms.rem_euclid(MS_DAY);
    let (h, m, s) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
    );
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{h:02}:{m:02}:{s:02}"),
        in_day % 1_000,
    )
}

/// A timestamp as Django's `DjangoJSONEncoder` writes it into revision content:
/// `2019-03-04T12:34:56.789Z` (no fraction when it is zero).
pub(crate) fn django_iso(ms: i64) -> String {
    let (date, time, frac) = date_time_ms(ms);
    if frac == 0 {
        format!("{date}T{time}Z")
    } else {
        format!("{date}T{time}.{frac:03}Z")
    }
}

/// Django's `slugify` for the ASCII titles the generators produce.
pub(crate) fn slugify(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    let mut dash = false;
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !slug.is_empty() {
                slug.push('-');
            }
            dash = false;
            slug.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
    }
    slug
}

/// One step of a Wagtail (treebeard `MP_Node`) materialised path: 4 base-36 digits.
pub(crate) fn path_step(n: u32) -> Option<String> {
    const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    if n == 0 || n >= 36u32.pow(4) {
        return None;
    }
    let mut out = [b'0'; 4];
    let mut v = n as usize;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[v % 36];
        v /= 36;
    }
    Some(out.iter().map(|&b| char::from(b)).collect())
}

/// A JSON string literal (with quotes and escapes) for `s`.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `json` re-serialised compactly (serde_json's `,`/`:` separators, key order kept).
///
/// The generators write some column values in Python `json.dumps` style because the same
/// text is embedded, as a string, in revision content. Stored as a column value only the
/// JSON document matters: PostgreSQL's `jsonb` normalises it anyway, and SQLite keeps the
/// text as given, so both back ends get the compact form. Text that does not parse is kept
/// as is (the database then rejects it with a clear error rather than this crate panicking).
pub(crate) fn compact_json(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| json.to_owned())
}

/// A timestamp as Django stores a `DateTimeField` in SQLite: `str()` of the naive UTC
/// datetime, i.e. `2019-03-04 12:34:56.789000` (no fraction when it is zero). SQLite has no
/// timestamp type; Django parses this text back, and SQLite's date functions accept it.
pub(crate) fn sqlite_datetime(ms: i64) -> String {
    let (date, time, frac) = date_time_ms(ms);
    if frac == 0 {
        format!("{date} {time}")
    } else {
        format!("{date} {time}.{frac:03}000")
    }
}

/// A UUID as Django stores a `UUIDField` in SQLite (`char(32)`): 32 lower-case hex digits
/// without hyphens (`uuid.hex`).
pub(crate) fn uuid_hex(hyphenated: &str) -> String {
    hyphenated.chars().filter(|&c| c != '-').collect()
}

/// Runs `generate` on a blocking thread, sending batches through a bounded channel to
/// insert tasks ([`INSERT_WORKERS`] for PostgreSQL, one for SQLite) that each insert them
/// with `insert` on their own connection.
/// Memory stays bounded by the channel capacity; the first error stops everything.
pub(crate) async fn pipeline<B, S, G, F, Fut>(
    db: &Db,
    generate: G,
    insert: F,
) -> Result<S, DemoError>
where
    B: Send + 'static,
    S: Send + 'static,
    G: FnOnce(&mpsc::Sender<B>) -> Result<S, DemoError> + Send + 'static,
    F: Fn(Db, B) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
{
    let worker_count = db.insert_workers();
    let (tx, rx) = mpsc::channel::<B>(worker_count);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = JoinSet::new();
    for _ in 0..worker_count {
        let rx = Arc::clone(&rx);
        let db = db.clone();
        workers.spawn(async move {
            loop {
                let batch = rx.lock().await.recv().await;
                match batch {
                    Some(batch) => insert(db.clone(), batch).await?,
                    None => return Ok::<(), sqlx::Error>(()),
                }
            }
        });
    }
    let producer = tokio::task::spawn_blocking(move || generate(&tx));

    let mut failure: Option<DemoError> = None;
    while let Some(joined) = workers.join_next().await {
        let err = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => DemoError::Database(e),
            Err(e) if e.is_cancelled() => continue,
            Err(e) => DemoError::Task(e.to_string()),
        };
        if failure.is_none() {
            failure = Some(err);
            workers.abort_all();
        }
    }
    // All workers are gone: dropping the last receiver makes a still-running producer stop.
    drop(rx);
    let produced = producer
        .await
        .map_err(|e| DemoError::Task(e.to_string()))
        .and_then(|r| r);
    match failure {
        Some(err) => Err(err),
        None => produced,
    }
}

/// Rows per multi-row SQLite `INSERT` (at most 9 bound values per row, far below SQLite's
/// 32766 variables per statement).
pub(crate) const SQLITE_ROWS_PER_INSERT: usize = 200;

/// Inserts rows `0..len` with `INSERT ... VALUES (...), (...)` statements of
/// [`SQLITE_ROWS_PER_INSERT`] rows: `head` is the statement up to `VALUES`, and
/// `push_row(row, i)` pushes the values of row `i` (binds or SQL literals).
///
/// sqlx runs each SQLite connection on its own thread and hands every statement over a
/// channel, so one statement per row spends most of its time waking threads; a few hundred
/// rows per statement remove that. Full chunks share one SQL text, which sqlx prepares once
/// per connection and then reuses.
pub(crate) async fn sqlite_insert_rows<'r, F>(
    conn: &mut SqliteConnection,
    head: &str,
    len: usize,
    mut push_row: F,
) -> Result<(), sqlx::Error>
where
    F: FnMut(&mut Separated<'_, 'r, Sqlite, &'static str>, usize) + Send,
{
    let mut start = 0;
    while start < len {
        let end = (start + SQLITE_ROWS_PER_INSERT).min(len);
        let mut query = QueryBuilder::<Sqlite>::new(head);
        query.push(' ');
        query.push_values(start..end, |mut row, i| push_row(&mut row, i));
        query.build().execute(&mut *conn).await?;
        start = end;
    }
    Ok(())
}

/// Sends `batch` to the insert workers; fails only when they have stopped on an error.
pub(crate) fn send<B>(tx: &mpsc::Sender<B>, batch: B) -> Result<(), DemoError> {
    tx.blocking_send(batch).map_err(|_| DemoError::Aborted)
}

/// Resets the identity sequence of `table.id` after rows were inserted with explicit ids.
pub(crate) async fn reset_identity(pool: &PgPool, table: &str) -> Result<(), DemoError> {
    let sql = format!(
        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(max(id), 0) + 1, false) \
         FROM {table}"
    );
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}

/// Fails with [`DemoError::NotEmpty`] when any of `tables` already holds rows.
pub(crate) async fn ensure_empty(db: &Db, tables: &[&'static str]) -> Result<(), DemoError> {
    for table in tables {
        // The same statement in both dialects; only whether a row comes back matters.
        let sql = format!("SELECT 1 FROM {table} LIMIT 1");
        let row = match db {
            Db::Postgres(pool) => sqlx::query(&sql).fetch_optional(pool).await?.is_some(),
            Db::Sqlite(pool) => sqlx::query(&sql).fetch_optional(pool).await?.is_some(),
        };
        if row {
            return Err(DemoError::NotEmpty(table));
        }
    }
    Ok(())
}

/// Refreshes the planner statistics of `tables` after a bulk load.
pub(crate) async fn analyze(db: &Db, tables: &[&str]) -> Result<(), DemoError> {
    match db {
        Db::Postgres(pool) => {
            sqlx::raw_sql(&format!("ANALYZE {}", tables.join(", ")))
                .execute(pool)
                .await?;
        }
        // SQLite's ANALYZE takes one table at a time.
        Db::Sqlite(pool) => {
            let sql: String = tables.iter().map(|t| format!("ANALYZE {t};")).collect();
            sqlx::raw_sql(&sql).execute(pool).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps() {
        assert_eq!(django_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(django_iso(MS_2016), "2016-01-01T00:00:00Z");
        assert_eq!(django_iso(MS_END + 1_234), "2025-06-01T00:00:01.234Z");
        assert_eq!(django_iso(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(year_of(MS_END - 1), 2025);
    }

    #[test]
    fn sqlite_encodings() {
        assert_eq!(sqlite_datetime(MS_2016), "2016-01-01 00:00:00");
        assert_eq!(
            sqlite_datetime(MS_END + 1_234),
            "2025-06-01 00:00:01.234000"
        );
        assert_eq!(
            uuid_hex("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"),
            "0f1e2d3c4b5a49788695a4b3c2d1e0f0"
        );
        assert_eq!(
            compact_json(r#"[{"type": "x", "value": {"a": 1}}]"#),
            r#"[{"type":"x","value":{"a":1}}]"#
        );
    }

    #[test]
    fn paths_and_slugs() {
        assert_eq!(path_step(1).as_deref(), Some("0001"));
        assert_eq!(path_step(36).as_deref(), Some("0010"));
        assert_eq!(path_step(36u32.pow(4) - 1).as_deref(), Some("ZZZZ"));
        assert_eq!(path_step(0), None);
        assert_eq!(
            slugify("Supply Chain & Logistics 2"),
            "supply-chain-logistics-2"
        );
    }

    #[test]
    fn streams_are_reproducible() {
        let a: u64 = rng_for(7, 1, 2).gen();
        let b: u64 = rng_for(7, 1, 2).gen();
        let c: u64 = rng_for(7, 1, 3).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
