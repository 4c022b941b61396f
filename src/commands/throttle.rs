//! `backfill throttle RUN`: change a run's limits or priority while it
//! runs (see `steer`).

use crate::cli::parse::limit_flag;
use crate::connect::connect_store;
use crate::exit::{usage, Exit};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id.
    pub run: String,
    /// Most rows per second across all mappers, or `off`.
    #[arg(long, value_name = "N|off")]
    pub rows_per_sec: Option<String>,
    /// Most bytes of rewritten documents per second across all mappers, or `off`.
    #[arg(long, value_name = "N|off")]
    pub bytes_per_sec: Option<String>,
    /// PostgreSQL: the server's WAL write rate cap in bytes per second, or `off`.
    #[arg(long, value_name = "N|off")]
    pub max_wal_bytes_per_sec: Option<String>,
    /// Most shards worked on at once across all mappers, or `off`.
    #[arg(long, value_name = "N|off")]
    pub max_in_flight: Option<String>,
    /// Priority against other runs: higher goes first.
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub priority: Option<i32>,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let change = backfill_store::ThrottleChange {
        rows_per_sec: limit_flag::<f64>("--rows-per-sec", &a.rows_per_sec)?,
        bytes_per_sec: limit_flag::<f64>("--bytes-per-sec", &a.bytes_per_sec)?,
        max_wal_bytes_per_sec: limit_flag::<f64>(
            "--max-wal-bytes-per-sec",
            &a.max_wal_bytes_per_sec,
        )?,
        max_in_flight: limit_flag::<u32>("--max-in-flight", &a.max_in_flight)?,
        priority: a.priority,
    };
    for (flag, v) in [
        ("--rows-per-sec", change.rows_per_sec),
        ("--bytes-per-sec", change.bytes_per_sec),
        ("--max-wal-bytes-per-sec", change.max_wal_bytes_per_sec),
    ] {
        if let Some(Some(r)) = v {
            if !(r.is_finite() && r > 0.0) {
                return Err(usage(format!("{flag} must be a positive number or `off`")));
            }
        }
    }
    if change.max_in_flight == Some(Some(0)) {
        return Err(usage("--max-in-flight must be at least 1 or `off`"));
    }
    if change.is_empty() {
        return Err(usage(
            "give --rows-per-sec, --bytes-per-sec, --max-wal-bytes-per-sec, --max-in-flight or --priority to change",
        ));
    }
    let store = connect_store(settings, 2).await?;
    crate::steer::throttle(&store, &a.run, &change, &settings.operator).await
}
